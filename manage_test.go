package postscale

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// inputErrorOn fails the test unless err is an input error on field.
func inputErrorOn(t *testing.T, err error, field string) *InputError {
	t.Helper()
	var in *InputError
	if !errors.As(err, &in) || in.Field != field {
		t.Fatalf("got %v, want an input error on %s", err, field)
	}
	return in
}

// TestExpiresAtBounds: an expiry is refused unless it is in the future and
// before 2200, so that no store is handed a time it cannot keep; one just
// inside the bounds is stored and read back exactly, and the key then
// works (SQLite keeps nanoseconds since 1970 in 64 bits, which would turn
// 9999 into a time long past).
func TestExpiresAtBounds(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		now := t0
		m, _ := openManager(t, &now)
		testExpiresAtBounds(t, m)
	})
	// PostgreSQL's timestamptz would keep year 9999; the bounds are the
	// same for every store, and what is inside them is kept exactly.
	t.Run("postgres", func(t *testing.T) {
		now := t0
		m := storeManager{store: openTestPostgres(t, testenv.Postgres(t)), now: func() time.Time { return now }}
		if _, err := m.CreateAccount(context.Background(), AccountRequest{ID: "acme", Plan: "growth"}); err != nil {
			t.Fatal(err)
		}
		testExpiresAtBounds(t, m)
	})
}

func testExpiresAtBounds(t *testing.T, m storeManager) {
	ctx := context.Background()
	s, now := m.store, m.now()
	at := func(v time.Time) *time.Time { return &v }
	for _, c := range []struct {
		name    string
		expires time.Time
		ok      bool
	}{
		{"year 9999", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), false},
		{"year 2262, past int64 nanoseconds", time.Date(2262, 4, 12, 0, 0, 0, 0, time.UTC), false},
		{"2200-01-01 exactly", time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), false},
		{"just before 2200", time.Date(2199, 12, 31, 23, 59, 59, 0, time.UTC), true},
		{"in a second", t0.Add(time.Second), true},
		{"now", t0, false},
		{"an hour ago", t0.Add(-time.Hour), false},
		{"year 1", time.Time{}.Add(time.Hour), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, err := m.CreateKey(ctx, KeyRequest{Account: "acme", Name: "n", ExpiresAt: at(c.expires)})
			if !c.ok {
				in := inputErrorOn(t, err, "expires_at")
				if !strings.Contains(in.Message, "future") && !strings.Contains(in.Message, "2200-01-01T00:00:00Z") {
					t.Errorf("message %q names neither bound", in.Message)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rec, _, err := s.LookupKey(ctx, HashKey(k.Key))
			if err != nil {
				t.Fatal(err)
			}
			if rec.ExpiresAt == nil || !rec.ExpiresAt.Equal(c.expires) {
				t.Fatalf("stored expires_at %v, want %v", rec.ExpiresAt, c.expires)
			}
			if e := newEntry(rec.Hash, rec, Account{ID: "acme", Plan: "growth"}, now); !now.Before(e.expiresAt) {
				t.Errorf("the key answers expired at %v, though it expires at %v", now, e.expiresAt)
			}
		})
	}
}

// TestKeyRequestTimes: expires_at in JSON is RFC 3339; anything else is an
// input error on expires_at that does not repeat the value, including the
// forms Go's parser would misread or accept beyond RFC 3339.
func TestKeyRequestTimes(t *testing.T) {
	for _, c := range []struct {
		name, json string
		want       string // RFC 3339 in UTC; "" for an error; "-" for none
	}{
		{"UTC", `"2030-01-31T00:00:00Z"`, "2030-01-31T00:00:00Z"},
		{"offset", `"2030-01-31T09:30:00+05:30"`, "2030-01-31T04:00:00Z"},
		{"largest offset", `"2030-01-31T00:00:00+23:59"`, "2030-01-30T00:01:00Z"},
		{"unknown local offset", `"2030-01-31T00:00:00-00:00"`, "2030-01-31T00:00:00Z"},
		{"lower-case t and z", `"2030-01-31t00:00:00z"`, "2030-01-31T00:00:00Z"},
		{"fraction", `"2030-01-31T00:00:00.123456789Z"`, "2030-01-31T00:00:00.123456789Z"},
		{"null", `null`, "-"},
		{"leap second", `"2030-12-31T23:59:60Z"`, ""},
		{"offset of 24 hours", `"2030-01-31T00:00:00+24:00"`, ""},
		{"no offset", `"2031-05-17T00:00:00"`, ""},
		{"space for T", `"2030-01-31 00:00:00Z"`, ""},
		{"30 February", `"2030-02-30T00:00:00Z"`, ""},
		{"date only", `"2031-05-17"`, ""},
		{"five-digit year", `"10000-01-01T00:00:00Z"`, ""},
		{"a number", `1893456000`, ""},
		{"empty", `""`, ""},
		{"a key", `"ps_live_abcdefghijklmnopqrstuvwxyz0123456789AB"`, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			var req KeyRequest
			err := json.Unmarshal([]byte(`{"account":"acme","name":"n","expires_at":`+c.json+`}`), &req)
			switch c.want {
			case "":
				in := inputErrorOn(t, err, "expires_at")
				if v := strings.Trim(c.json, `"`); len(v) > 4 && strings.Contains(in.Message, v) {
					t.Errorf("message %q repeats the value", in.Message)
				}
			case "-":
				if err != nil || req.ExpiresAt != nil {
					t.Fatalf("got %v, %v; want no expiry", req.ExpiresAt, err)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if got := req.ExpiresAt.UTC().Format(time.RFC3339Nano); got != c.want {
					t.Errorf("got %s, want %s", got, c.want)
				}
			}
			if c.want != "" && (req.Account != "acme" || req.Name != "n") {
				t.Errorf("the other fields were not read: %+v", req)
			}
		})
	}
	var req KeyRequest
	if err := json.Unmarshal([]byte(`{"account":"acme","name":"n","colour":"red"}`), &req); err == nil {
		t.Error("an unknown field was accepted")
	}
}

// TestRollGraceBounds: a roll's expires_in is a duration from 0s to 365d;
// a longer one (which once overflowed into an old key expired at once), a
// negative one, or one that is no duration is refused, and nothing rolls.
func TestRollGraceBounds(t *testing.T) {
	ctx := context.Background()
	now := t0
	m, _ := openManager(t, &now)
	k, err := m.CreateKey(ctx, KeyRequest{Account: "acme", Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"366d", "8761h", "1000000h", "2562047h", "9999999999h", "-1s", "-0.5h", "soon", "24", "1y"} {
		_, err := m.RollKey(ctx, k.ID, RollRequest{ExpiresIn: bad})
		inputErrorOn(t, err, "expires_in")
	}
	if rec, err := m.GetKey(ctx, k.ID); err != nil || rec.DeprecatedAt != nil {
		t.Fatalf("a refused roll rolled the key: %+v, %v", rec, err)
	}
	for in, want := range map[string]time.Duration{"365d": 365 * 24 * time.Hour, "8760h": 365 * 24 * time.Hour, "0s": 0} {
		k, err := m.CreateKey(ctx, KeyRequest{Account: "acme", Name: "n"})
		if err != nil {
			t.Fatal(err)
		}
		rolled, err := m.RollKey(ctx, k.ID, RollRequest{ExpiresIn: in})
		if err != nil {
			t.Fatalf("expires_in %s: %v", in, err)
		}
		if got := rolled.Replaces.ExpiresAt; got == nil || !got.Equal(now.Add(want)) {
			t.Errorf("expires_in %s: the old key expires at %v, want %v", in, got, now.Add(want))
		}
	}
}

// TestRevokeByKey: a key is revoked by the key itself, issued or legacy;
// an unknown, mistyped or malformed key is refused; no error shows more
// than the redacted form.
func TestRevokeByKey(t *testing.T) {
	ctx := context.Background()
	now := t0
	m, s := openManager(t, &now)
	issued, err := m.CreateKey(ctx, KeyRequest{Account: "acme", Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	const legacy = "ps_test_oldsystem42"
	if _, err := m.ImportKeys(ctx, ImportRequest{Keys: []ImportedKey{{Account: "acme", Name: "old", Key: legacy}}}); err != nil {
		t.Fatal(err)
	}
	var changed []Change
	m.changed = func(c Change) { changed = append(changed, c) }
	for _, key := range []string{issued.Key, legacy + "\n"} {
		rec, err := m.RevokeByKey(ctx, key)
		if err != nil {
			t.Fatalf("revoking %s: %v", Redact(key), err)
		}
		stored, _, err := s.LookupKey(ctx, HashKey(strings.TrimSpace(key)))
		if err != nil || rec.RevokedAt == nil || stored.RevokedAt == nil || stored.ID != rec.ID {
			t.Errorf("revoking %s: answered %+v, store holds %+v (%v)", Redact(key), rec, stored, err)
		}
	}
	if len(changed) != 2 || changed[0].KeyHash != HashKey(issued.Key) {
		t.Errorf("the revocations notified %+v, want the two keys", changed)
	}

	unknown, _ := NewKey(ModeLive)
	flipped := byte('0')
	if issued.Key[len(issued.Key)-1] == '0' {
		flipped = '1'
	}
	badSum := issued.Key[:len(issued.Key)-1] + string(flipped) // one checksum character changed
	for _, c := range []struct {
		name, key string
		notFound  bool
	}{
		{"unknown issued key", unknown, true},
		{"unknown legacy key", "ps_live_neverimported", true},
		{"bad checksum", badSum, false},
		{"not a key", "sk_live_0123456789abcdef", false},
		{"empty", " ", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := m.RevokeByKey(ctx, c.key)
			if c.notFound {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("got %v, want ErrNotFound", err)
				}
			} else {
				inputErrorOn(t, err, "key")
			}
			if body := strings.TrimSpace(c.key); len(body) > 12 && strings.Contains(err.Error(), body[8:len(body)-4]) {
				t.Errorf("error %q shows the key", err)
			}
		})
	}
}

// TestKeyWhereAnIDBelongs: a key given as an id, an account, a name, a
// scope or a plan is refused as such, showing its redacted form only;
// other ids that no record can have are refused without being repeated.
func TestKeyWhereAnIDBelongs(t *testing.T) {
	ctx := context.Background()
	now := t0
	m, _ := openManager(t, &now)
	for _, key := range []string{"ps_live_abcdefghijklmnopqrstuvwxyz0123456789AB", "ps_test_shortlegacy9", "ps_live_"} {
		secret := key[len("ps_live_"):]
		for _, c := range []struct {
			name  string
			field string
			call  func() error
		}{
			{"show key", "id", func() error { _, err := m.GetKey(ctx, key); return err }},
			{"revoke key", "id", func() error { _, err := m.RevokeKey(ctx, key); return err }},
			{"roll key", "id", func() error { _, err := m.RollKey(ctx, key, RollRequest{}); return err }},
			{"show account", "id", func() error { _, err := m.GetAccount(ctx, key); return err }},
			{"update account", "id", func() error { _, err := m.UpdateAccount(ctx, key, AccountUpdate{}); return err }},
			{"create account", "id", func() error { _, err := m.CreateAccount(ctx, AccountRequest{ID: key, Plan: "growth"}); return err }},
			{"create account: plan", "plan", func() error { _, err := m.CreateAccount(ctx, AccountRequest{ID: "x", Plan: key}); return err }},
			{"list keys", "account", func() error { _, err := m.ListKeys(ctx, key); return err }},
			{"create key: account", "account", func() error { _, err := m.CreateKey(ctx, KeyRequest{Account: key, Name: "n"}); return err }},
			{"create key: name", "name", func() error {
				_, err := m.CreateKey(ctx, KeyRequest{Account: "acme", Name: "copy of " + key})
				return err
			}},
			{"create key: scope", "scopes", func() error {
				_, err := m.CreateKey(ctx, KeyRequest{Account: "acme", Name: "n", Scopes: []string{key}})
				return err
			}},
			{"import: account", "keys[0].account", func() error {
				_, err := m.ImportKeys(ctx, ImportRequest{Keys: []ImportedKey{{Account: key, Name: "n", Key: "ps_live_fine1234"}}})
				return err
			}},
		} {
			in := inputErrorOn(t, c.call(), c.field)
			if !strings.Contains(in.Message, Redact(key)) || !strings.Contains(in.Message, "/postscale/keys/revoke") {
				t.Errorf("%s with %s: message %q, want the redacted form and the way to revoke by key", c.name, Redact(key), in.Message)
			}
			if len(secret) > 4 && strings.Contains(in.Message, secret[:len(secret)-4]) {
				t.Errorf("%s: message %q shows the key", c.name, in.Message)
			}
		}
	}
	// An id no record can have is refused, not repeated.
	for _, id := range []string{"has space", "Bearer x", strings.Repeat("k", 80)} {
		in := inputErrorOn(t, func() error { _, err := m.GetKey(ctx, id); return err }(), "id")
		in2 := inputErrorOn(t, func() error { _, err := m.GetAccount(ctx, id); return err }(), "id")
		if strings.Contains(in.Message, id) || strings.Contains(in2.Message, id) {
			t.Errorf("%q repeated: %q, %q", id, in, in2)
		}
	}
	// An account id merely containing ps_test_ is an account id.
	if _, err := m.CreateAccount(ctx, AccountRequest{ID: "ops_test_team", Plan: "growth"}); err != nil {
		t.Errorf("account ops_test_team: %v", err)
	}
}

// TestPlanMustBeDefined: with the handlers' plans known, an account is
// created or moved only onto one of them, the error naming them all;
// without them (the CLI on a store alone), nothing is checked.
func TestPlanMustBeDefined(t *testing.T) {
	ctx := context.Background()
	now := t0
	m, _ := openManager(t, &now)
	m.plans = planNames(map[string]bool{"pro": true})
	_, err := m.CreateAccount(ctx, AccountRequest{ID: "gold", Plan: "gold"})
	in := inputErrorOn(t, err, "plan")
	if want := "enterprise, growth, pro, scale, starter"; !strings.Contains(in.Message, want) || !strings.Contains(in.Message, `"gold"`) {
		t.Errorf("message %q, want it to name the plan and the known plans %s", in.Message, want)
	}
	for _, req := range []AccountRequest{{ID: "p", Plan: "pro"}, {ID: "s", Plan: "starter"}, {ID: "e", Plan: "enterprise", Rate: 5}} {
		if _, err := m.CreateAccount(ctx, req); err != nil {
			t.Errorf("plan %s: %v", req.Plan, err)
		}
	}
	gold, pro := "gold", "pro"
	_, err = m.UpdateAccount(ctx, "acme", AccountUpdate{Plan: &gold})
	inputErrorOn(t, err, "plan")
	if a, _ := m.GetAccount(ctx, "acme"); a.Plan != "growth" {
		t.Errorf("a refused update changed the plan to %s", a.Plan)
	}
	if a, err := m.UpdateAccount(ctx, "acme", AccountUpdate{Plan: &pro}); err != nil || a.Plan != "pro" {
		t.Errorf("update to pro: %+v, %v", a, err)
	}
	m.plans = nil
	if _, err := m.CreateAccount(ctx, AccountRequest{ID: "gold", Plan: "gold"}); err != nil {
		t.Errorf("without known plans: %v", err)
	}
}

func TestScrubKeys(t *testing.T) {
	key, _ := NewKey(ModeLive)
	for in, want := range map[string]string{
		"key " + key + " not found":               "key " + Redact(key) + " not found",
		`"ps_test_abc123xyz" and ps_live_zz`:      `"ps_test_…yz" and ps_live_…`,
		"/postscale/keys/" + key:                  "/postscale/keys/" + Redact(key),
		"account ops_test_team and xps_live_1234": "account ops_test_team and xps_live_1234",
		"nothing here":                            "nothing here",
		"key ps_live_…wxyz and ps_test_…":         "key ps_live_…wxyz and ps_test_…",
	} {
		if got := scrubKeys(in); got != want {
			t.Errorf("scrubKeys(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestListAccounts: the accounts come a page at a time in id order, the
// last page with no next; q keeps those whose ids start with it, however
// the ids around them sort; limits out of bounds are refused.
func TestListAccounts(t *testing.T) {
	ctx := context.Background()
	now := t0
	m, _ := openManager(t, &now) // holds acme
	for _, id := range []string{"ab", "ab-2", "ab_1", "abc", "aa", "ac", "Ab", "b"} {
		if _, err := m.CreateAccount(ctx, AccountRequest{ID: id, Plan: "growth"}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(p AccountPage) []string {
		var out []string
		for _, a := range p.Accounts {
			out = append(out, a.ID)
		}
		return out
	}
	var all []string
	after := ""
	for range 10 {
		p, err := m.ListAccounts(ctx, after, "", 4)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, ids(p)...)
		if p.Next == "" {
			break
		}
		if p.Next != p.Accounts[len(p.Accounts)-1].ID {
			t.Fatalf("next %q, want the page's last id %q", p.Next, p.Accounts[len(p.Accounts)-1].ID)
		}
		after = p.Next
	}
	if want := []string{"Ab", "aa", "ab", "ab-2", "ab_1", "abc", "ac", "acme", "b"}; !slices.Equal(all, want) {
		t.Errorf("pages of 4: %v, want %v", all, want)
	}
	// A page that holds exactly the rest is the last: no next.
	p, err := m.ListAccounts(ctx, "ab_1", "", 4)
	if err != nil || p.Next != "" || !slices.Equal(ids(p), []string{"abc", "ac", "acme", "b"}) {
		t.Errorf("last page: %v next %q, %v", ids(p), p.Next, err)
	}

	for _, c := range []struct {
		q, after string
		limit    int
		want     []string
		next     string
	}{
		{"ab", "", 0, []string{"ab", "ab-2", "ab_1", "abc"}, ""},
		{"ab", "", 2, []string{"ab", "ab-2"}, "ab-2"},
		{"ab", "ab-2", 2, []string{"ab_1", "abc"}, ""},
		{"ac", "", 0, []string{"ac", "acme"}, ""},
		{"A", "", 0, []string{"Ab"}, ""},
		{"a-", "", 0, nil, ""},
		{"zz", "", 0, nil, ""},
	} {
		p, err := m.ListAccounts(ctx, c.after, c.q, c.limit)
		if err != nil {
			t.Fatalf("q=%s: %v", c.q, err)
		}
		if !slices.Equal(ids(p), c.want) || p.Next != c.next {
			t.Errorf("q=%s after=%s limit=%d: %v next %q, want %v next %q", c.q, c.after, c.limit, ids(p), p.Next, c.want, c.next)
		}
	}

	for _, limit := range []int{-1, MaxAccountPage + 1} {
		_, err := m.ListAccounts(ctx, "", "", limit)
		inputErrorOn(t, err, "limit")
	}
	if p, err := m.ListAccounts(ctx, "", "", MaxAccountPage); err != nil || len(p.Accounts) != 9 {
		t.Errorf("limit %d: %d accounts, %v", MaxAccountPage, len(p.Accounts), err)
	}
	_, err = m.ListAccounts(ctx, "", "no spaces", 0)
	inputErrorOn(t, err, "q")
}
