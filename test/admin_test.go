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

	for _, c := range []struct {
		method, path string
		body         any
		want         int
	}{
		{http.MethodPost, "/postscale/accounts", map[string]any{"id": "acme", "plan": "growth"}, http.StatusConflict},
		{http.MethodPost, "/postscale/accounts", map[string]any{"id": "has space", "plan": "growth"}, http.StatusBadRequest},
		{http.MethodPost, "/postscale/accounts", map[string]any{"id": "x", "plan": "growth", "colour": "red"}, http.StatusBadRequest},
		{http.MethodGet, "/postscale/accounts/nobody", nil, http.StatusNotFound},
		{http.MethodPost, "/postscale/keys", map[string]any{"account": "nobody", "name": "n", "mode": "live"}, http.StatusNotFound},
		{http.MethodPost, "/postscale/keys", map[string]any{"account": "acme", "name": "n", "mode": "prod"}, http.StatusBadRequest},
		{http.MethodPost, "/postscale/keys", map[string]any{"account": "acme", "name": "", "mode": "live"}, http.StatusBadRequest},
		{http.MethodPost, "/postscale/keys", map[string]any{"account": "acme", "name": "n", "mode": "live", "expires_at": time.Now().Add(-time.Hour)}, http.StatusBadRequest},
		{http.MethodGet, "/postscale/keys/key_doesnotexist", nil, http.StatusNotFound},
		{http.MethodDelete, "/postscale/keys/key_doesnotexist", nil, http.StatusNotFound},
		{http.MethodGet, "/postscale/keys?account=nobody", nil, http.StatusNotFound},
	} {
		adminCall(t, c.method, c.path, c.body, c.want, nil)
	}
}

// rawJSON keeps a JSON answer as it came.
type rawJSON []byte

func (r *rawJSON) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}
