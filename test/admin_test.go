package test

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAdminAPI: the management calls of SPEC §6 that exist, as an operator
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
		{"list accounts: no such call", "GET", "/postscale/accounts", nil, 405, "GET"},
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
