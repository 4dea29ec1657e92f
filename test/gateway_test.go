package test

import (
	"database/sql"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	postscale "github.com/postscale/caddy-postscale"

	_ "modernc.org/sqlite"
)

// TestErrorTable walks every row of README, Errors the gateway implements through
// the real server: each rejection has its exact status, WWW-Authenticate,
// JSON error, and never reaches the backend.
func TestErrorTable(t *testing.T) {
	backend, _ := startGateway(t, "")
	createAccount(t, "acme", "growth")
	live := createKey(t, "acme", "production server", "live")
	revoked := createKey(t, "acme", "old server", "live")
	expiresAt := time.Now().Add(2 * time.Second)
	expiring := postKey(t, map[string]any{"account": "acme", "name": "short-lived", "mode": "live", "expires_at": expiresAt})

	// Each key works first (and is cached), so the rejections below are
	// about what happened to it, not about a key that never worked.
	for _, k := range []createdKey{live, revoked, expiring} {
		expectAdmitted(t, backend, k.Key, "/v1/emails")
	}
	revokeKey(t, revoked.ID)

	unknown, err := postscale.NewKey(postscale.ModeLive)
	if err != nil {
		t.Fatal(err)
	}
	badChecksum := live.Key[:len(live.Key)-1] + otherBase62(live.Key[len(live.Key)-1])
	basic := "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("acme:"+live.Key))

	for _, c := range []struct {
		name    string
		path    string
		headers []string
		want    rejection
	}{
		{"no Authorization header", "/v1/emails", nil, missingKey},
		{"Basic scheme", "/v1/emails", []string{basic}, missingKey},
		{"Bearer with empty key", "/v1/emails", []string{"Authorization: Bearer "}, invalidKey},
		{"Bearer alone", "/v1/emails", []string{"Authorization: Bearer"}, invalidKey},
		{"malformed key", "/v1/emails", []string{bearer("not-a-postscale-key")}, invalidKey},
		{"malformed key with wrong mode", "/v1/emails", []string{bearer("ps_prod_" + live.Key[len("ps_live_"):])}, invalidKey},
		{"bad checksum", "/v1/emails", []string{bearer(badChecksum)}, invalidKey},
		{"unknown well-formed key", "/v1/emails", []string{bearer(unknown)}, invalidKey},
		{"legacy key with legacy_keys off", "/v1/emails", []string{bearer("ps_live_abc123xyz")}, invalidKey},
		{"revoked key", "/v1/emails", []string{bearer(revoked.Key)}, revokedKey},
		{"two Authorization headers", "/v1/emails", []string{bearer(live.Key), bearer(live.Key)}, invalidRequest},
		{"two Authorization headers, one Basic", "/v1/emails", []string{bearer(live.Key), basic}, invalidRequest},
		{"api_key in query", "/v1/emails?api_key=" + live.Key, []string{bearer(live.Key)}, credentialsInURL},
		{"access_token in query", "/v1/emails?access_token=" + live.Key, []string{bearer(live.Key)}, credentialsInURL},
		{"key in query after another parameter", "/v1/emails?to=a%40example.com&key=" + live.Key, []string{bearer(live.Key)}, credentialsInURL},
		{"key in query without Authorization", "/v1/emails?key=" + live.Key, nil, credentialsInURL},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := expectRejected(t, backend, c.want, c.path, c.headers...)
			if strings.Contains(string(r.body), live.Key) {
				t.Errorf("error body contains the key: %s", r.body)
			}
		})
	}

	t.Run("expired key", func(t *testing.T) {
		time.Sleep(time.Until(expiresAt) + 100*time.Millisecond)
		expectRejected(t, backend, expiredKey, "/v1/emails", bearer(expiring.Key))
	})

	for _, scheme := range []string{"bearer", "BEARER"} {
		t.Run("scheme "+scheme, func(t *testing.T) {
			got := expectPassed(t, backend, "/v1/emails", "Authorization: "+scheme+" "+live.Key)
			if id := got.Header.Get("Postscale-Key-Id"); id != live.ID {
				t.Errorf("Postscale-Key-Id: got %q, want %q", id, live.ID)
			}
		})
	}
}

// otherBase62 returns a base62 character other than c.
func otherBase62(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}

// TestStoreUnavailable: a key the cache does not hold, while the store
// cannot answer, gets 503 with Retry-After, never 401 — and nothing reaches
// the backend. A cached key keeps working (README, Errors).
//
// An already-open SQLite pool is hard to make fail from outside: chmod
// does not stop root, and removing or replacing the file leaves the open
// descriptors on the old inode working. What reliably fails every lookup
// is a schema change by another connection: with the keys table renamed
// away, the gateway's lookup query fails ("no such table"), exactly as it
// would on a broken or half-migrated store.
func TestStoreUnavailable(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	// Keys made the way an operator without a running server would make
	// them: straight in the store, so none is in the gateway's cache.
	cli(t, "--store", store, "account", "create", "acme", "--plan", "growth")
	cached := cliCreateKey(t, "--store", store, "--account", "acme", "--name", "warm")
	uncached := cliCreateKey(t, "--store", store, "--account", "acme", "--name", "cold")
	loadCaddyfile(t, gatewaySite(store, backend.addr(), ""))
	expectAdmitted(t, backend, cached, "/v1/emails")

	restore := breakStore(t, store)
	unknown, err := postscale.NewKey(postscale.ModeLive)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("uncached key", func(t *testing.T) {
		expectRejected(t, backend, storeUnavailable, "/v1/emails", bearer(uncached))
	})
	t.Run("unknown key", func(t *testing.T) {
		expectRejected(t, backend, storeUnavailable, "/v1/emails", bearer(unknown))
	})
	t.Run("cached key keeps working", func(t *testing.T) {
		expectAdmitted(t, backend, cached, "/v1/emails")
	})
	t.Run("bad checksum needs no store", func(t *testing.T) {
		// Rejected before any lookup, so the outage does not show.
		bad := uncached[:len(uncached)-1] + otherBase62(uncached[len(uncached)-1])
		expectRejected(t, backend, invalidKey, "/v1/emails", bearer(bad))
		expectRejected(t, backend, invalidKey, "/v1/emails", bearer("ps_live_abc123xyz"))
	})

	restore()
	t.Run("after the store recovers", func(t *testing.T) {
		// The outage answer was not cached: the key works at once.
		expectAdmitted(t, backend, uncached, "/v1/emails")
		expectRejected(t, backend, invalidKey, "/v1/emails", bearer(unknown))
	})
}

// breakStore makes every key lookup in the SQLite store at path fail, and
// returns the function that repairs it.
func breakStore(t *testing.T, path string) (restore func()) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	exec := func(q string) {
		t.Helper()
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`ALTER TABLE keys RENAME TO keys_unavailable`)
	return func() { exec(`ALTER TABLE keys_unavailable RENAME TO keys`) }
}

// TestBackendHeaders: an admitted request reaches the backend tagged with
// mode, account, key id and plan; whatever the client sent under those
// names is gone; Authorization is removed; the key appears nowhere.
func TestBackendHeaders(t *testing.T) {
	backend, _ := startGateway(t, "")
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "production server", "live")

	r := request(t, http.MethodPost, "/v1/emails?to=someone%40example.com", `{"subject":"hi"}`,
		bearer(k.Key),
		"Content-Type: application/json",
		"Postscale-Mode: test",
		"Postscale-Account-Id: mallory",
		"Postscale-Key-Id: key_forged",
		"Postscale-Plan: enterprise",
		"postscale-plan: scale",
	)
	if r.status != http.StatusOK {
		t.Fatalf("status: got %d %s, want 200", r.status, r.body)
	}
	got := backend.last(t)
	if got.Method != http.MethodPost || got.URI != "/v1/emails?to=someone%40example.com" || got.Body != `{"subject":"hi"}` {
		t.Errorf("backend got %s %s %q, want the client's request unchanged", got.Method, got.URI, got.Body)
	}
	want := map[string]string{
		"Postscale-Mode":       "live",
		"Postscale-Account-Id": "acme",
		"Postscale-Key-Id":     k.ID,
		"Postscale-Plan":       "growth",
	}
	assertPostscaleHeaders(t, got.Header, want)
	if v, ok := got.Header["Authorization"]; ok {
		t.Errorf("backend got Authorization %q; want it removed", v)
	}
	assertKeyAbsent(t, got, k.Key)
}

// TestClientHeaderSpellingsDropped: CGI-style backends read Postscale_Mode
// (and PHP also Postscale.Mode) as Postscale-Mode. Caddy drops header
// names with '_' or '.' by default; an operator who lets such names
// through (expected_underscore_headers, expected_dot_headers) must still
// not let a client choose its own mode, account, key or plan.
func TestClientHeaderSpellingsDropped(t *testing.T) {
	backend := newRecorder(t, "mail")
	loadConfig(t, globalOptions(`	servers {
		expected_underscore_headers postscale_* x_probe
		expected_dot_headers postscale.* x.probe
	}`)+gatewaySite(storePath(t), backend.addr(), ""), "caddyfile")
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "server", "live")

	for _, sep := range []string{"_", "."} {
		t.Run("separator "+sep, func(t *testing.T) {
			if sep == "." {
			}
			h := func(s string) string { return strings.ReplaceAll(s, "-", sep) }
			got := expectAdmitted(t, backend, k.Key, "/v1/emails",
				h("X-Probe: passes"),
				h("Postscale-Mode: test"),
				h("Postscale-Account-Id: mallory"),
				h("Postscale-Key-Id: key_forged"),
				h("Postscale-Plan: enterprise"),
			)
			// The control header shows this spelling does reach the backend.
			if v := got.Header.Get(h("X-Probe")); v != "passes" {
				t.Fatalf("backend got %s %q, want %q: Caddy did not let this spelling through, so the test proves nothing", h("X-Probe"), v, "passes")
			}
			assertPostscaleHeaders(t, got.Header, map[string]string{
				"Postscale-Mode":       "live",
				"Postscale-Account-Id": "acme",
				"Postscale-Key-Id":     k.ID,
				"Postscale-Plan":       "growth",
			})
		})
	}
}

// assertPostscaleHeaders checks that the only Postscale headers (in any
// spelling: case, '-', '_' or '.') the backend got are want, one value
// each.
func assertPostscaleHeaders(t *testing.T, h map[string][]string, want map[string]string) {
	t.Helper()
	for name, vals := range h {
		norm := strings.ToLower(strings.NewReplacer("_", "-", ".", "-").Replace(name))
		if !strings.HasPrefix(norm, "postscale-") {
			continue
		}
		w, ok := want[name]
		if !ok {
			t.Errorf("backend got header %s: %q; want no such header", name, vals)
			continue
		}
		if len(vals) != 1 || vals[0] != w {
			t.Errorf("backend got %s: %q, want [%q]", name, vals, w)
		}
	}
	for name, w := range want {
		if _, ok := h[name]; !ok {
			t.Errorf("backend got no %s header, want %q", name, w)
		}
	}
}

// assertKeyAbsent checks that the key appears nowhere in what the backend
// received.
func assertKeyAbsent(t *testing.T, got recorded, key string) {
	t.Helper()
	body := key[len("ps_live_"):] // the secret part, whatever surrounds it
	if strings.Contains(got.URI, body) || strings.Contains(got.Body, body) {
		t.Errorf("backend received the key in the URI or body")
	}
	for name, vals := range got.Header {
		for _, v := range vals {
			if strings.Contains(v, body) {
				t.Errorf("backend received the key in header %s", name)
			}
		}
	}
}

// TestForwardAuthorization: with forward_authorization the backend gets
// the client's Authorization header as it was sent.
func TestForwardAuthorization(t *testing.T) {
	backend, _ := startGateway(t, "forward_authorization")
	createAccount(t, "acme", "starter")
	k := createKey(t, "acme", "legacy backend", "live")
	got := expectAdmitted(t, backend, k.Key, "/v1/emails")
	if v := got.Header.Values("Authorization"); len(v) != 1 || v[0] != "Bearer "+k.Key {
		t.Errorf("backend got Authorization %q, want [\"Bearer <the key>\"]", v)
	}
	assertPostscaleHeaders(t, got.Header, map[string]string{
		"Postscale-Mode":       "live",
		"Postscale-Account-Id": "acme",
		"Postscale-Key-Id":     k.ID,
		"Postscale-Plan":       "starter",
	})
}

// TestSandboxRouting is the README's test-mode routing: a matcher on
// {postscale.mode} sends test keys to the sandbox, live keys to the mail
// service, and neither sees the other's traffic.
func TestSandboxRouting(t *testing.T) {
	mail := newRecorder(t, "mail")
	sandbox := newRecorder(t, "sandbox")
	loadCaddyfile(t, fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	postscale {
		store sqlite %s
	}
	@test vars {postscale.mode} test
	handle @test {
		reverse_proxy %s
	}
	handle {
		reverse_proxy %s
	}
}
`, storePath(t), sandbox.addr(), mail.addr()))
	createAccount(t, "acme", "growth")
	live := createKey(t, "acme", "production", "live")
	test := createKey(t, "acme", "ci", "test")

	got := expectAdmitted(t, sandbox, test.Key, "/v1/emails")
	if m := got.Header.Get("Postscale-Mode"); m != "test" {
		t.Errorf("sandbox got Postscale-Mode %q, want test", m)
	}
	if n := mail.count(); n != 0 {
		t.Errorf("mail service received %d request(s) for a test key, want 0", n)
	}
	got = expectAdmitted(t, mail, live.Key, "/v1/emails")
	if m := got.Header.Get("Postscale-Mode"); m != "live" {
		t.Errorf("mail service got Postscale-Mode %q, want live", m)
	}
	if n := sandbox.count(); n != 1 {
		t.Errorf("sandbox received %d request(s), want only the test key's 1", n)
	}
	// A client claiming test mode with a live key still reaches the mail
	// service as live: the mode comes from the key.
	got = expectAdmitted(t, mail, live.Key, "/v1/emails", "Postscale-Mode: test")
	if m := got.Header.Values("Postscale-Mode"); len(m) != 1 || m[0] != "live" {
		t.Errorf("mail service got Postscale-Mode %q, want [live]", m)
	}
}

// TestPlaceholders: the {postscale.*} placeholders and {http.auth.user.id}
// hold the admitted key's values for the handlers after postscale, in a
// response body and in a (deferred) response header.
func TestPlaceholders(t *testing.T) {
	loadCaddyfile(t, fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	postscale {
		store sqlite %s
	}
	header >X-Postscale-Account {postscale.account_id}
	respond "mode={postscale.mode} account={postscale.account_id} key_id={postscale.key_id} key_name={postscale.key_name} plan={postscale.plan} user={http.auth.user.id}" 200
}
`, storePath(t)))
	createAccount(t, "acme-eu", "scale")
	k := createKey(t, "acme-eu", "billing worker", "test")

	r := get(t, "/whoami", bearer(k.Key))
	want := fmt.Sprintf("mode=test account=acme-eu key_id=%s key_name=billing worker plan=scale user=%s", k.ID, k.ID)
	if r.status != http.StatusOK || string(r.body) != want {
		t.Errorf("got %d %q\nwant 200 %q", r.status, r.body, want)
	}
	if got := r.header.Get("X-Postscale-Account"); got != "acme-eu" {
		t.Errorf("X-Postscale-Account: got %q, want %q", got, "acme-eu")
	}
}

// TestNoOrderNeeded: with postscale in a site next to top-level handle,
// route, respond and reverse_proxy, and no `order` option anywhere, none
// of them can be reached without a key (README, The `postscale` directive).
func TestNoOrderNeeded(t *testing.T) {
	backend := newRecorder(t, "mail")
	loadCaddyfile(t, fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	handle /handle {
		respond "from handle"
	}
	route /route {
		respond "from route"
	}
	respond /respond "from respond"
	reverse_proxy %s
	postscale {
		store sqlite %s
	}
}
`, backend.addr(), storePath(t)))
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "server", "live")

	for path, body := range map[string]string{
		"/handle":  "from handle",
		"/route":   "from route",
		"/respond": "from respond",
		"/proxied": "mail",
	} {
		t.Run(path, func(t *testing.T) {
			expectRejected(t, backend, missingKey, path)
			expectRejected(t, backend, invalidKey, path, bearer("ps_live_nope"))
			if r := get(t, path, bearer(k.Key)); r.status != http.StatusOK || string(r.body) != body {
				t.Errorf("with a key: got %d %q, want 200 %q", r.status, r.body, body)
			}
		})
	}
}

// TestMatcherLeavesPathsOpen: like basic_auth, postscale takes a matcher;
// requests it does not match need no key, all others still do.
func TestMatcherLeavesPathsOpen(t *testing.T) {
	backend := newRecorder(t, "mail")
	loadCaddyfile(t, fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	@needs_key not path /healthz
	postscale @needs_key {
		store sqlite %s
	}
	handle /healthz {
		respond "ok" 200
	}
	handle {
		reverse_proxy %s
	}
}
`, storePath(t), backend.addr()))
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "server", "live")

	if r := get(t, "/healthz"); r.status != http.StatusOK || string(r.body) != "ok" {
		t.Errorf("/healthz without a key: got %d %q, want 200 \"ok\"", r.status, r.body)
	}
	for _, path := range []string{"/", "/v1/emails", "/healthz/x", "/healthzz", "/v1/healthz"} {
		expectRejected(t, backend, missingKey, path)
	}
	expectAdmitted(t, backend, k.Key, "/v1/emails")
}

// jsonGateway is the test gateway written in Caddy's JSON: the postscale
// handler on the given store, with extra handler fields (a JSON object's
// members, e.g. `"cache_ttl": 60000000000`), in front of upstream.
func jsonGateway(store, extra, upstream string) string {
	return fmt.Sprintf(`{
	"admin": {"listen": %q},
	"logging": %s,
	"apps": {
		"http": {
			"grace_period": 1000000000,
			"servers": {
				"gateway": {
					"listen": ["`+gatewayListen+`"],
					"automatic_https": {"disable": true},
					"routes": [{
						"handle": [
							{"handler": "postscale", "store": {"backend": "sqlite", "path": %q}, %s},
							{"handler": "reverse_proxy", "upstreams": [{"dial": %q}]}
						]
					}]
				}
			}
		}
	}
}`, adminAddr, caddyLogging, store, extra, upstream)
}

// TestJSONConfig: the same gateway written in Caddy's JSON works.
func TestJSONConfig(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	loadConfig(t, jsonGateway(store, `"cache_ttl": 60000000000`, backend.addr()), "json")
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "server", "test")

	expectRejected(t, backend, missingKey, "/v1/emails")
	expectRejected(t, backend, invalidKey, "/v1/emails", bearer("ps_test_nope"))
	got := expectAdmitted(t, backend, k.Key, "/v1/emails")
	assertPostscaleHeaders(t, got.Header, map[string]string{
		"Postscale-Mode":       "test",
		"Postscale-Account-Id": "acme",
		"Postscale-Key-Id":     k.ID,
		"Postscale-Plan":       "growth",
	})
	if _, ok := got.Header["Authorization"]; ok {
		t.Errorf("backend got Authorization; want it removed")
	}
}

// TestReloadKeepsWarmCache: a config reload that keeps the store keeps the
// key cache (README, Rate limits): with the store unable to answer, a key cached before
// the reload still works after it, while an uncached one gets 503.
func TestReloadKeepsWarmCache(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	cli(t, "--store", store, "account", "create", "acme", "--plan", "growth")
	warm := cliCreateKey(t, "--store", store, "--account", "acme", "--name", "warm")
	cold := cliCreateKey(t, "--store", store, "--account", "acme", "--name", "cold")
	loadCaddyfile(t, gatewaySite(store, backend.addr(), ""))
	expectAdmitted(t, backend, warm, "/v1/emails")

	breakStore(t, store)
	// A different config (a new cache_ttl) on the same store.
	loadCaddyfile(t, gatewaySite(store, backend.addr(), "cache_ttl 10m"))
	expectAdmitted(t, backend, warm, "/v1/emails")
	expectRejected(t, backend, storeUnavailable, "/v1/emails", bearer(cold))
}
