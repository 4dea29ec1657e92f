package postscale

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDecodeBody: a body is one JSON object of the documented fields and
// nothing more; whatever is wrong, the error names where, not what (the
// body may hold a key).
func TestDecodeBody(t *testing.T) {
	const secret = "ps_live_topsecret123456"
	decode := func(body string, limit int64) error {
		r := httptest.NewRequest(http.MethodPost, "/postscale/accounts", strings.NewReader(body))
		r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, limit)
		var req AccountRequest
		return decodeBody(r, &req)
	}
	for _, c := range []struct {
		name, body string
		want       string // start of the message; "" for no error
	}{
		{"one object", `{"id":"acme","plan":"growth"}`, ""},
		{"white space after", "{\"id\":\"acme\"}\n\t \r\n", ""},
		{"trailing garbage", `{"id":"acme"}` + secret, "body: has more after the JSON object (from byte 13)"},
		{"a second object", `{"id":"acme"}{"id":"` + secret + `"}`, "body: has more after the JSON object"},
		{"a stray brace", `{"id":"acme"}}`, "body: has more after the JSON object"},
		{"empty", ``, "body: is empty"},
		{"cut short", `{"id":"` + secret, "body: ends inside the JSON object"},
		{"not JSON", secret, "body: is not valid JSON"},
		{"unknown field", `{"` + secret + `":1}`, "body: has a field this call does not take"},
		{"wrong type", `{"id":["` + secret + `"]}`, "id: has the wrong type"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := decode(c.body, maxAdminBody)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), c.want) {
				t.Fatalf("got %v, want %q…", err, c.want)
			}
			if strings.Contains(err.Error(), "topsecret") {
				t.Errorf("error %q repeats the body", err)
			}
			if errorStatus(err) != http.StatusBadRequest {
				t.Errorf("status %d, want 400", errorStatus(err))
			}
		})
	}
	// Over the limit, in the object or after it: 413, naming the limit.
	for _, body := range []string{`{"id":"` + strings.Repeat("a", 200) + `"}`, `{"id":"acme"}` + strings.Repeat(" ", 200) + "x"} {
		err := decode(body, 100)
		if !errors.As(err, &errTooLarge{}) || errorStatus(err) != http.StatusRequestEntityTooLarge || !strings.Contains(err.Error(), "100 bytes") {
			t.Errorf("a body over the limit: got %v (status %d), want 413 naming 100 bytes", err, errorStatus(err))
		}
	}
}

// TestKeyInURL: a key anywhere in the path or query of a management call
// is refused with its redacted form only.
func TestKeyInURL(t *testing.T) {
	key, _ := NewKey(ModeLive)
	for _, target := range []string{
		"/postscale/keys/" + key,
		"/postscale/keys/" + key + "/roll",
		"/postscale/accounts/" + key,
		"/postscale/keys?account=" + key,
		"/postscale/keys?" + key,
		"/postscale/keys/ps_test_legacy12",
		"/postscale/keys/%70s_live_encoded1234",
	} {
		err := keyInURL(httptest.NewRequest(http.MethodGet, target, nil))
		if err == nil {
			t.Errorf("%s: accepted", target)
			continue
		}
		if strings.Contains(err.Error(), key[8:40]) || strings.Contains(err.Error(), "legacy12") || strings.Contains(err.Error(), "encoded1234") {
			t.Errorf("%s: error %q shows the key", target, err)
		}
	}
	for _, target := range []string{"/postscale/keys/key_abc", "/postscale/accounts/ops_test_team", "/postscale/keys?account=acme"} {
		if err := keyInURL(httptest.NewRequest(http.MethodGet, target, nil)); err != nil {
			t.Errorf("%s: %v", target, err)
		}
	}
}

// TestPlanNames: what the App gives the admin API for a store: the
// default plans, enterprise, and the plans of every handler on that store.
func TestPlanNames(t *testing.T) {
	a := new(App)
	k1 := &keyring{store: namedStore{id: "one"}}
	a.register(k1, map[string]Plan{"pro": {Rate: 5}})
	a.register(k1, map[string]Plan{"max": {Rate: 50}, "growth": {Rate: 1}})
	a.register(&keyring{store: namedStore{id: "two"}}, nil)
	if got, want := strings.Join(a.plans("one"), ","), "enterprise,growth,max,pro,scale,starter"; got != want {
		t.Errorf("plans of store one: %s, want %s", got, want)
	}
	if got, want := strings.Join(a.plans("two"), ","), "enterprise,growth,scale,starter"; got != want {
		t.Errorf("plans of store two: %s, want %s", got, want)
	}
}

// namedStore is a Store with an identity and nothing else.
type namedStore struct {
	Store
	id string
}

func (s namedStore) Identity() string { return s.id }
