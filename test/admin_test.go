package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	postscale "github.com/postscale/caddy-postscale"
)

// TestAdminAPI: the management calls of README, Managing keys that exist, as an operator
// uses them: records come back without secrets or hashes, and mistakes get
// 4xx answers instead of doing something.
func TestAdminAPI(t *testing.T) {
	startGateway(t, "")
	createAccount(t, "acme", "growth")

	var acct struct {
		ID   string `json:"id"`
		Plan string `json:"plan"`
	}
	adminCall(t, http.MethodGet, "/postscale/accounts/acme", nil, http.StatusOK, &acct)
	if acct.ID != "acme" || acct.Plan != "growth" {
		t.Errorf("GET /postscale/accounts/acme: got %+v, want id acme, plan growth", acct)
	}

	k := createKey(t, "acme", "production server", "live")
	if k.Account != "acme" || k.Name != "production server" || k.Mode != "live" || !strings.HasPrefix(k.ID, "key_") || !issuedKey.MatchString(k.Key) {
		t.Errorf("POST /postscale/keys: got %+v", k)
	}

	// Listing and showing never return the key or its hash.
	for _, path := range []string{"/postscale/keys?account=acme", "/postscale/keys/" + k.ID} {
		var raw rawJSON
		adminCall(t, http.MethodGet, path, nil, http.StatusOK, &raw)
		if strings.Contains(string(raw), k.Key[len("ps_live_"):len(k.Key)-4]) {
			t.Errorf("GET %s returned the key: %s", path, raw)
		}
		if strings.Contains(string(raw), `"hash"`) || strings.Contains(string(raw), `"key"`) {
			t.Errorf("GET %s returned a hash or key field: %s", path, raw)
		}
		if !strings.Contains(string(raw), `"redacted":"ps_live_…`+k.Key[len(k.Key)-4:]+`"`) {
			t.Errorf("GET %s: no redacted form ps_live_…%s in %s", path, k.Key[len(k.Key)-4:], raw)
		}
	}

	var first, second struct {
		RevokedAt *time.Time `json:"revoked_at"`
	}
	adminCall(t, http.MethodDelete, "/postscale/keys/"+k.ID, nil, http.StatusOK, &first)
	adminCall(t, http.MethodDelete, "/postscale/keys/"+k.ID, nil, http.StatusOK, &second)
	if first.RevokedAt == nil || second.RevokedAt == nil || !first.RevokedAt.Equal(*second.RevokedAt) {
		t.Errorf("revoking twice: revoked_at %v then %v, want the first revocation time kept", first.RevokedAt, second.RevokedAt)
	}

	// An account changes plan, to enterprise with its own rate, and back:
	// the custom limits go with the enterprise plan.
	for _, c := range []struct {
		update      map[string]any
		plan        string
		rate, burst float64
	}{
		{map[string]any{"plan": "scale"}, "scale", 0, 0},
		{map[string]any{"plan": "enterprise", "rate": 50}, "enterprise", 50, 50},
		{map[string]any{"burst": 80}, "enterprise", 50, 80},
		{map[string]any{"plan": "growth"}, "growth", 0, 0},
	} {
		var got, read map[string]any
		adminCall(t, http.MethodPatch, "/postscale/accounts/acme", c.update, http.StatusOK, &got)
		adminCall(t, http.MethodGet, "/postscale/accounts/acme", nil, http.StatusOK, &read)
		for what, a := range map[string]map[string]any{"PATCH answer": got, "GET afterwards": read} {
			rate, _ := a["rate"].(float64)
			burst, _ := a["burst"].(float64)
			if a["id"] != "acme" || a["plan"] != c.plan || rate != c.rate || burst != c.burst {
				t.Errorf("PATCH %v, %s: got %v, want plan %s, rate %v, burst %v", c.update, what, a, c.plan, c.rate, c.burst)
			}
		}
	}

	// An account without keys lists as [], not null.
	createAccount(t, "empty", "starter")
	var raw rawJSON
	adminCall(t, http.MethodGet, "/postscale/keys?account=empty", nil, http.StatusOK, &raw)
	if string(raw) != "[]" {
		t.Errorf("GET /postscale/keys?account=empty: got %s, want []", raw)
	}
}

// TestAdminAPIErrors: every management call refuses what it cannot do with
// its status (400 naming the field, 404, 405, 409) and Caddy's JSON error
// body {"error": "…"}, and a refused call changes nothing.
func TestAdminAPIErrors(t *testing.T) {
	startGateway(t, "")
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "production server", "live")
	revoked := createKey(t, "acme", "old server", "live")
	revokeKey(t, revoked.ID)
	adminCall(t, http.MethodPost, "/postscale/keys/import", map[string]any{"keys": []map[string]any{
		{"account": "acme", "name": "legacy", "key": "ps_live_abc123xyz"},
	}}, http.StatusCreated, nil)
	var before rawJSON
	adminCall(t, http.MethodGet, "/postscale/keys?account=acme", nil, http.StatusOK, &before)

	const secret = "ps_live_secret0123456789" // a plaintext no answer may show
	imp := func(keys ...map[string]any) map[string]any { return map[string]any{"keys": keys} }
	for _, c := range []struct {
		name         string
		method, path string
		body         any
		status       int
		want         string // in the message; "<field>: " starts it
	}{
		{"create account: bad id", "POST", "/postscale/accounts", map[string]any{"id": "has space", "plan": "growth"}, 400, "id: "},
		{"create account: no id", "POST", "/postscale/accounts", map[string]any{"plan": "growth"}, 400, "id: "},
		{"create account: id of 65 characters", "POST", "/postscale/accounts", map[string]any{"id": strings.Repeat("a", 65), "plan": "growth"}, 400, "id: "},
		{"create account: bad plan name", "POST", "/postscale/accounts", map[string]any{"id": "x", "plan": "Gold!"}, 400, "plan: "},
		{"create account: enterprise without rate", "POST", "/postscale/accounts", map[string]any{"id": "bigco", "plan": "enterprise"}, 400, "rate: "},
		{"create account: rate on growth", "POST", "/postscale/accounts", map[string]any{"id": "x", "plan": "growth", "rate": 5}, 400, "rate: "},
		{"create account: unknown field", "POST", "/postscale/accounts", map[string]any{"id": "x", "plan": "growth", "colour": "red"}, 400, "body: "},
		{"create account: not JSON", "POST", "/postscale/accounts", "id=x", 400, "body: "},
		{"create account: duplicate", "POST", "/postscale/accounts", map[string]any{"id": "acme", "plan": "scale"}, 409, "acme"},
		{"show account: unknown", "GET", "/postscale/accounts/nobody", nil, 404, "nobody"},
		{"update account: rate on growth", "PATCH", "/postscale/accounts/acme", map[string]any{"rate": 5}, 400, "rate: "},
		{"update account: enterprise without rate", "PATCH", "/postscale/accounts/acme", map[string]any{"plan": "enterprise"}, 400, "rate: "},
		{"update account: bad plan name", "PATCH", "/postscale/accounts/acme", map[string]any{"plan": "Gold!"}, 400, "plan: "},
		{"update account: unknown", "PATCH", "/postscale/accounts/nobody", map[string]any{"plan": "scale"}, 404, "nobody"},
		{"create key: no name", "POST", "/postscale/keys", map[string]any{"account": "acme", "mode": "live"}, 400, "name: "},
		{"create key: blank name", "POST", "/postscale/keys", map[string]any{"account": "acme", "name": "  ", "mode": "live"}, 400, "name: "},
		{"create key: no account", "POST", "/postscale/keys", map[string]any{"name": "n", "mode": "live"}, 400, "account: "},
		{"create key: bad mode", "POST", "/postscale/keys", map[string]any{"account": "acme", "name": "n", "mode": "prod"}, 400, "mode: "},
		{"create key: bad scope", "POST", "/postscale/keys", map[string]any{"account": "acme", "name": "n", "mode": "live", "scopes": []string{"emails send"}}, 400, "scopes: "},
		{"create key: expires_at in the past", "POST", "/postscale/keys", map[string]any{"account": "acme", "name": "n", "mode": "live", "expires_at": time.Now().Add(-time.Hour)}, 400, "expires_at: "},
		{"create key: unknown account", "POST", "/postscale/keys", map[string]any{"account": "nobody", "name": "n", "mode": "live"}, 404, "nobody"},
		{"list keys: no account", "GET", "/postscale/keys", nil, 400, "account: "},
		{"list keys: empty account", "GET", "/postscale/keys?account=", nil, 400, "account: "},
		{"list keys: unknown account", "GET", "/postscale/keys?account=nobody", nil, 404, "nobody"},
		{"show key: unknown", "GET", "/postscale/keys/key_doesnotexist", nil, 404, "key_doesnotexist"},
		{"revoke key: unknown", "DELETE", "/postscale/keys/key_doesnotexist", nil, 404, "key_doesnotexist"},
		{"roll key: bad expires_in", "POST", "/postscale/keys/" + k.ID + "/roll", map[string]any{"expires_in": "soon"}, 400, "expires_in: "},
		{"roll key: negative expires_in", "POST", "/postscale/keys/" + k.ID + "/roll", map[string]any{"expires_in": "-1h"}, 400, "expires_in: "},
		{"roll key: unknown", "POST", "/postscale/keys/key_doesnotexist/roll", map[string]any{"expires_in": "1h"}, 404, "key_doesnotexist"},
		{"roll key: revoked", "POST", "/postscale/keys/" + revoked.ID + "/roll", map[string]any{"expires_in": "1h"}, 409, "revoked"},
		{"import: no keys", "POST", "/postscale/keys/import", imp(), 400, "keys: "},
		{"import: second entry's hash", "POST", "/postscale/keys/import", imp(
			map[string]any{"account": "acme", "name": "a", "key": secret},
			map[string]any{"account": "acme", "name": "b", "mode": "live", "hash": "abc"},
		), 400, "keys[1].hash: "},
		{"import: hash without mode", "POST", "/postscale/keys/import", imp(map[string]any{"account": "acme", "name": "a", "hash": strings.Repeat("ab", 32)}), 400, "keys[0].mode: "},
		{"import: key and hash", "POST", "/postscale/keys/import", imp(map[string]any{"account": "acme", "name": "a", "key": secret, "hash": strings.Repeat("ab", 32)}), 400, "keys[0].key: "},
		{"import: not a ps key", "POST", "/postscale/keys/import", imp(map[string]any{"account": "acme", "name": "a", "key": "sk_live_secret0123456789"}), 400, "keys[0].key: "},
		{"import: mode does not match the key", "POST", "/postscale/keys/import", imp(map[string]any{"account": "acme", "name": "a", "mode": "test", "key": secret}), 400, "keys[0].mode: "},
		{"import: no name", "POST", "/postscale/keys/import", imp(map[string]any{"account": "acme", "key": secret}), 400, "keys[0].name: "},
		{"import: unknown account", "POST", "/postscale/keys/import", imp(map[string]any{"account": "nobody", "name": "a", "key": secret}), 404, "nobody"},
		{"import: duplicate, all or none", "POST", "/postscale/keys/import", imp(
			map[string]any{"account": "acme", "name": "new", "key": secret},
			map[string]any{"account": "acme", "name": "again", "key": "ps_live_abc123xyz"},
		), 409, "already exists"},
		{"delete all accounts", "DELETE", "/postscale/accounts", nil, 405, "DELETE"},
		{"replace account", "PUT", "/postscale/accounts/acme", map[string]any{"plan": "scale"}, 405, "PUT"},
		{"delete account", "DELETE", "/postscale/accounts/acme", nil, 405, "DELETE"},
		{"replace keys", "PUT", "/postscale/keys", nil, 405, "PUT"},
		{"delete all keys", "DELETE", "/postscale/keys", nil, 405, "DELETE"},
		{"patch key", "PATCH", "/postscale/keys/" + k.ID, map[string]any{"name": "x"}, 405, "PATCH"},
		{"GET roll", "GET", "/postscale/keys/" + k.ID + "/roll", nil, 405, "GET"},
		{"GET import", "GET", "/postscale/keys/import", nil, 405, "GET"},
		{"unknown path: root", "GET", "/postscale/", nil, 404, "/postscale/"},
		{"unknown path: collection", "GET", "/postscale/plans", nil, 404, "/postscale/plans"},
		{"unknown path: account sub-resource", "GET", "/postscale/accounts/acme/keys", nil, 404, "/postscale/accounts/acme/keys"},
		{"unknown path: key action", "POST", "/postscale/keys/" + k.ID + "/unroll", nil, 404, "unroll"},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg := adminError(t, c.method, c.path, c.body, c.status)
			if field, ok := strings.CutSuffix(c.want, ": "); ok && !strings.HasPrefix(msg, c.want) {
				t.Errorf("%s %s: error %q, want it to start with the field %s", c.method, c.path, msg, field)
			} else if !strings.Contains(msg, c.want) {
				t.Errorf("%s %s: error %q, want it to name %q", c.method, c.path, msg, c.want)
			}
			if strings.Contains(msg, "secret0123456789") {
				t.Errorf("%s %s: error %q shows a plaintext key", c.method, c.path, msg)
			}
		})
	}

	// Nothing a refused call asked for happened.
	var acct map[string]any
	adminCall(t, http.MethodGet, "/postscale/accounts/acme", nil, http.StatusOK, &acct)
	if acct["plan"] != "growth" || acct["rate"] != nil {
		t.Errorf("account acme after refused calls: %v, want plan growth, no rate", acct)
	}
	var after rawJSON
	adminCall(t, http.MethodGet, "/postscale/keys?account=acme", nil, http.StatusOK, &after)
	if string(after) != string(before) {
		t.Errorf("acme's keys changed through refused calls:\nbefore %s\nafter  %s", before, after)
	}
	for _, id := range []string{"bigco", "x"} {
		adminError(t, http.MethodGet, "/postscale/accounts/"+id, nil, http.StatusNotFound)
	}
}

// rawJSON keeps a JSON answer as it came.
type rawJSON []byte

func (r *rawJSON) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}

// TestAdminNeverEchoesAKey: a key pasted where an id, account, name,
// scope or plan belongs gets 400 naming its redacted form only, from every
// call; no answer and no log line of ours holds it. Caddy's admin log
// records the URI of every request before any handler runs, so a key put
// in a URL is in its "received request" line, and only there, unless the
// operator filters the uri field (keyLogFilter, as the README shows):
// then it is nowhere.
func TestAdminNeverEchoesAKey(t *testing.T) {
	for _, filtered := range []bool{false, true} {
		t.Run(map[bool]string{false: "Caddy's log as it is", true: "with the README's log filter"}[filtered], func(t *testing.T) {
			backend, _, logFile := startGatewayLogged(t, "legacy_keys", filtered)
			createAccount(t, "acme", "growth")
			k := createKey(t, "acme", "production server", "live")
			const legacy = "ps_live_legacy0123456789"
			adminCall(t, http.MethodPost, "/postscale/keys/import", map[string]any{"keys": []map[string]any{
				{"account": "acme", "name": "legacy", "key": legacy},
			}}, http.StatusCreated, nil)
			unknown := "ps_test_" + k.Key[len("ps_test_"):len(k.Key)-6] + "000000" // bad checksum
			keys := []string{k.Key, legacy, unknown}

			for _, key := range keys {
				key := key
				for _, c := range []struct {
					method, path string
					body         any
					status       int
				}{
					{"GET", "/postscale/keys/" + key, nil, 400},
					{"DELETE", "/postscale/keys/" + key, nil, 400},
					{"PUT", "/postscale/keys/" + key, nil, 400},
					{"POST", "/postscale/keys/" + key + "/roll", map[string]any{"expires_in": "1h"}, 400},
					{"GET", "/postscale/keys/" + key + "/anything", nil, 400},
					{"GET", "/postscale/accounts/" + key, nil, 400},
					{"PATCH", "/postscale/accounts/" + key, map[string]any{"plan": "scale"}, 400},
					{"GET", "/postscale/keys?account=" + key, nil, 400},
					{"GET", "/postscale/accounts/acme?store=" + key, nil, 400},
					{"GET", "/postscale/" + key, nil, 400},
					{"POST", "/postscale/accounts", map[string]any{"id": key, "plan": "growth"}, 400},
					{"POST", "/postscale/accounts", map[string]any{"id": "x", "plan": key}, 400},
					{"POST", "/postscale/keys", map[string]any{"account": key, "name": "n"}, 400},
					{"POST", "/postscale/keys", map[string]any{"account": "acme", "name": "the key is " + key}, 400},
					{"POST", "/postscale/keys", map[string]any{"account": "acme", "name": "n", "scopes": []string{key}}, 400},
					{"POST", "/postscale/keys", map[string]any{"account": "acme", "name": "n", "expires_at": key}, 400},
					{"POST", "/postscale/keys/import", map[string]any{"keys": []map[string]any{{"account": key, "name": "n", "key": "ps_live_fine12345"}}}, 400},
					{"POST", "/postscale/accounts", `{"id":"y","plan":"growth"}` + key, 400},
					{"POST", "/postscale/accounts", `{"id":"` + key, 400},
					{"POST", "/postscale/keys/import", `{"keys":[{"account":"acme","name":"n","key":"` + key + `","hash":"` + key + `"}]}`, 400},
				} {
					msg := adminError(t, c.method, c.path, c.body, c.status)
					if what := showsKey(msg, keys...); what != "" {
						t.Errorf("%s %s: error %q shows the key %s", c.method, postscale.Redact(key), msg, what)
					}
				}
			}
			// The key of a key-shaped path is named by its redacted form.
			if msg := adminError(t, "DELETE", "/postscale/keys/"+k.Key, nil, 400); !strings.Contains(msg, postscale.Redact(k.Key)) || !strings.Contains(msg, "/postscale/keys/revoke") {
				t.Errorf("DELETE /postscale/keys/<key>: %q, want the redacted form %s and the way to revoke by key", msg, postscale.Redact(k.Key))
			}
			// Revoking an unknown key by the key: 404, the key not repeated.
			other, _ := postscale.NewKey(postscale.ModeLive)
			keys = append(keys, other)
			for _, key := range []string{other, "ps_live_neverimported99"} {
				msg := adminError(t, "POST", "/postscale/keys/revoke", map[string]any{"key": key}, 404)
				if what := showsKey(msg, key); what != "" {
					t.Errorf("revoking an unknown key: %q shows it", msg)
				}
			}
			// Nothing was revoked or changed.
			expectAdmitted(t, backend, k.Key, "/v1/emails")
			expectAdmitted(t, backend, legacy, "/v1/emails")

			inURL, redacted := 0, 0
			for _, line := range readLog(t, logFile) {
				if strings.Contains(line, "ps_REDACTED") {
					redacted++
				}
				if what := showsKey(line, keys...); what != "" {
					if filtered || !strings.Contains(line, `"logger":"admin.api"`) || !strings.Contains(line, `"msg":"received request"`) {
						t.Errorf("log line shows the key %s: %s", what, line)
					}
					inURL++
				}
			}
			t.Logf("log lines with a key (Caddy's \"received request\" of a key in a URL): %d", inURL)
			if !filtered && inURL == 0 || filtered && redacted == 0 {
				t.Errorf("%d log lines hold a key put in a URL, %d its filtered form: did the log capture work?", inURL, redacted)
			}
		})
	}
}

// TestRevokeByKeyThroughAdmin: POST /postscale/keys/revoke {"key"} revokes
// a leaked key whose id nobody knows, issued or legacy (even with
// legacy_keys off), answering its record like DELETE /postscale/keys/{id};
// the instance rejects the key on the very next request.
func TestRevokeByKeyThroughAdmin(t *testing.T) {
	backend, _ := startGateway(t, "legacy_keys")
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "leaked", "live")
	other := createKey(t, "acme", "other", "live")
	const legacy = "ps_test_legacy_leak42"
	adminCall(t, http.MethodPost, "/postscale/keys/import", map[string]any{"keys": []map[string]any{
		{"account": "acme", "name": "legacy", "key": legacy},
	}}, http.StatusCreated, nil)
	expectAdmitted(t, backend, k.Key, "/v1/emails") // cached now
	expectAdmitted(t, backend, legacy, "/v1/emails")

	for _, key := range []string{k.Key, legacy} {
		var raw rawJSON
		adminCall(t, http.MethodPost, "/postscale/keys/revoke", map[string]any{"key": key}, http.StatusOK, &raw)
		var rec keyRecord
		if err := json.Unmarshal(raw, &rec); err != nil || rec.RevokedAt == nil || rec.Account != "acme" || rec.Redacted != postscale.Redact(key) {
			t.Errorf("revoke %s: answered %s, want its record with revoked_at", postscale.Redact(key), raw)
		}
		if what := showsKey(string(raw), key); what != "" || strings.Contains(string(raw), `"key"`) {
			t.Errorf("revoke %s: the answer shows the key: %s", postscale.Redact(key), raw)
		}
		expectRejected(t, backend, revokedKey, "/v1/emails", bearer(key))
	}
	// Revoking again keeps the first time, like DELETE.
	var again keyRecord
	adminCall(t, http.MethodPost, "/postscale/keys/revoke", map[string]any{"key": k.Key}, http.StatusOK, &again)
	if first := getKey(t, k.ID); again.RevokedAt == nil || !again.RevokedAt.Equal(*first.RevokedAt) {
		t.Errorf("revoking twice: %v then %v", first.RevokedAt, again.RevokedAt)
	}
	expectAdmitted(t, backend, other.Key, "/v1/emails")

	for _, c := range []struct {
		method string
		body   any
		status int
		want   string
	}{
		{"POST", map[string]any{}, 400, "key: "},
		{"POST", map[string]any{"key": "sk_live_notours"}, 400, "key: "},
		{"POST", map[string]any{"key": 12}, 400, "key: "},
		{"POST", map[string]any{"key": k.Key, "id": k.ID}, 400, "body: "},
		{"GET", nil, 405, "POST"},
		{"DELETE", nil, 405, "POST"},
	} {
		msg := adminError(t, c.method, "/postscale/keys/revoke", c.body, c.status)
		if !strings.HasPrefix(msg, c.want) && !strings.Contains(msg, c.want) {
			t.Errorf("%s /postscale/keys/revoke %v: %q, want %q", c.method, c.body, msg, c.want)
		}
		if what := showsKey(msg, k.Key); what != "" {
			t.Errorf("%q shows the key", msg)
		}
	}
}

// TestAdminBodies: a body is one JSON object, nothing after it; an import
// of the documented maximum of 10,000 keys fits the body limit even with
// rows of the largest realistic kind, one key more is refused naming the
// limit, and a body over the byte limit gets 413.
func TestAdminBodies(t *testing.T) {
	backend, _ := startGateway(t, "legacy_keys")
	account := strings.Repeat("a", 64) // the longest account id
	createAccount(t, account, "growth")

	for _, body := range []string{`{"id":"x","plan":"growth"}garbage`, `{"id":"x","plan":"growth"}{"id":"y"}`, `{"id":"x","plan":"growth"}]`} {
		msg := adminError(t, "POST", "/postscale/accounts", body, 400)
		if !strings.HasPrefix(msg, "body: has more after the JSON object") {
			t.Errorf("%s: %q, want body: has more after the JSON object", body, msg)
		}
	}
	adminError(t, "GET", "/postscale/accounts/x", nil, 404) // nothing was made
	adminError(t, "POST", "/postscale/keys/"+createKey(t, account, "n", "live").ID+"/roll", `{"expires_in":"1h"} x`, 400)

	// Rows as a migration script writes them with Python's json.dumps
	// (non-ASCII as \u escapes), indented: a 200-character name, a
	// 136-character legacy key, four scopes.
	name := strings.Repeat(`\u6e2c`, 200)
	row := func(i int) string {
		return fmt.Sprintf("\n  {\n    \"account\": %q,\n    \"name\": \"%s\",\n    \"mode\": \"live\",\n    \"key\": \"ps_live_%08d%s\",\n    \"scopes\": [\"emails:send\", \"emails:read\", \"domains:read\", \"webhooks:write\"]\n  }",
			account, name, i, strings.Repeat("x", 120))
	}
	importOf := func(n int) string {
		var b strings.Builder
		b.WriteString(`{"keys": [`)
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(row(i))
		}
		b.WriteString("\n]}\n")
		return b.String()
	}
	const maxImport, maxImportBody = 10000, 10000*2048 + 1<<20 // as the README states
	body := importOf(maxImport)
	t.Logf("an import of %d keys: %d bytes (%d a row; the limit is %d)", maxImport, len(body), len(body)/maxImport, maxImportBody)
	if len(body)/maxImport < 1500 || len(body) > maxImportBody {
		t.Fatalf("the test's rows are %d bytes; want realistic maximal rows (over 1500 bytes) that fit %d", len(body)/maxImport, maxImportBody)
	}
	start := time.Now()
	var res struct {
		Imported []keyRecord `json:"imported"`
	}
	// Slow under the race detector: a client that waits longer than 10s.
	req, err := http.NewRequest(http.MethodPost, adminURL+"/postscale/keys/import", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /postscale/keys/import of %d keys: HTTP %d %.300s (%v)", maxImport, resp.StatusCode, answer, err)
	}
	if err := json.Unmarshal(answer, &res); err != nil {
		t.Fatal(err)
	}
	t.Logf("imported %d keys through the admin API in %v", len(res.Imported), time.Since(start).Round(time.Millisecond))
	if len(res.Imported) != maxImport {
		t.Fatalf("imported %d keys, want %d", len(res.Imported), maxImport)
	}
	for _, i := range []int{0, maxImport - 1} {
		expectAdmitted(t, backend, fmt.Sprintf("ps_live_%08d%s", i, strings.Repeat("x", 120)), "/v1/emails")
	}

	// One key more: refused, naming the limit.
	small := make([]map[string]any, maxImport+1)
	for i := range small {
		small[i] = map[string]any{"account": account, "name": "n", "key": fmt.Sprintf("ps_live_more%06d", i)}
	}
	if msg := adminError(t, "POST", "/postscale/keys/import", map[string]any{"keys": small}, 400); !strings.Contains(msg, "keys: must list 1 to 10000 keys") {
		t.Errorf("an import of %d keys: %q, want keys: must list 1 to 10000 keys", maxImport+1, msg)
	}
	// Over the byte limit: 413, naming it.
	huge := `{"keys": [` + strings.Repeat(" ", maxImportBody) + `]}`
	if msg := adminError(t, "POST", "/postscale/keys/import", huge, 413); !strings.Contains(msg, fmt.Sprint(maxImportBody)) {
		t.Errorf("an import over the limit: %q, want it to name %d bytes", msg, maxImportBody)
	}
	if msg := adminError(t, "POST", "/postscale/accounts", `{"id":"x"`+strings.Repeat(" ", 1<<20)+`}`, 413); !strings.Contains(msg, "1048576") {
		t.Errorf("an account over the limit: %q, want it to name 1048576 bytes", msg)
	}
	// None of the refused imports stored a key.
	var after []keyRecord
	adminCall(t, http.MethodGet, "/postscale/keys?account="+account, nil, http.StatusOK, &after)
	if len(after) != maxImport+1 {
		t.Errorf("%d keys after the refused imports, want %d", len(after), maxImport+1)
	}
}

// TestAdminRefusesUndefinedPlans: an account is created or moved only
// onto a plan that a postscale handler of the running config defines (or
// enterprise, with its own rate); the error names the plans there are.
// (Before, such an account got 503 for every request.)
func TestAdminRefusesUndefinedPlans(t *testing.T) {
	rec := newRecorder(t, "mail")
	store := storePath(t)
	loadCaddyfile(t, fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	handle /a/* {
		postscale {
			store sqlite %[1]s
			plan pro 5
		}
		reverse_proxy %[2]s
	}
	handle {
		postscale {
			store sqlite %[1]s
			plan max 50
		}
		reverse_proxy %[2]s
	}
}
`, store, rec.addr()))
	const known = "enterprise, growth, max, pro, scale, starter"
	for _, c := range []struct {
		method, path string
		body         map[string]any
	}{
		{"POST", "/postscale/accounts", map[string]any{"id": "gold", "plan": "gold"}},
		{"PATCH", "/postscale/accounts/acme", map[string]any{"plan": "gold"}},
	} {
		if c.method == "PATCH" {
			createAccount(t, "acme", "pro")
		}
		msg := adminError(t, c.method, c.path, c.body, 400)
		if !strings.HasPrefix(msg, "plan: ") || !strings.Contains(msg, `"gold"`) || !strings.Contains(msg, known) {
			t.Errorf("%s %s on plan gold: %q, want plan: naming gold and %s", c.method, c.path, msg, known)
		}
	}
	adminError(t, "GET", "/postscale/accounts/gold", nil, 404)
	var acct map[string]any
	adminCall(t, "GET", "/postscale/accounts/acme", nil, 200, &acct)
	if acct["plan"] != "pro" {
		t.Errorf("a refused update moved acme to %v", acct["plan"])
	}
	for _, plan := range []map[string]any{{"plan": "max"}, {"plan": "starter"}, {"plan": "enterprise", "rate": 7}, {"plan": "pro"}} {
		adminCall(t, "PATCH", "/postscale/accounts/acme", plan, 200, nil)
	}
	createAccount(t, "maxed", "max")
	k := createKey(t, "maxed", "n", "live")
	if got := expectAdmitted(t, rec, k.Key, "/v1/emails"); got.Header.Get("Postscale-Plan") != "max" {
		t.Errorf("plan %q, want max", got.Header.Get("Postscale-Plan"))
	}
}
