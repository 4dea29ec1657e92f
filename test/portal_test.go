package test

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// ---- a stand-in for the legacy application ----

// legacyApp stands in for the site's own application: it signs customers
// in (a form at /login that sets a session cookie) and answers
// forward_auth's /session with the signed-in account in X-Account-Id (and
// 200 without it for a visitor who is not signed in, as a site with
// public pages does).
type legacyApp struct {
	srv      *httptest.Server
	mu       sync.Mutex
	sessions map[string]string // session cookie → account
}

func newLegacyApp(t *testing.T) *legacyApp {
	a := &legacyApp{sessions: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/session", func(w http.ResponseWriter, r *http.Request) {
		if account := a.accountOf(r); account != "" {
			w.Header().Set("X-Account-Id", account)
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, `<!doctype html><title>Sign in</title>
<form method="post" action="/login">
<label>Account <input name="account" id="login-account"></label>
<button type="submit" id="login-submit">Sign in</button>
</form>`)
	})
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		account := r.PostFormValue("account")
		if account == "" {
			http.Error(w, "who are you?", http.StatusBadRequest)
			return
		}
		http.SetCookie(w, &http.Cookie{Name: "sid", Value: a.signIn(account), Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
		http.Redirect(w, r, "/settings/api-keys/", http.StatusSeeOther)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<!doctype html><title>Legacy</title><p>legacy app: %s</p>", html.EscapeString(r.URL.Path))
	})
	a.srv = httptest.NewServer(mux)
	t.Cleanup(a.srv.Close)
	return a
}

func (a *legacyApp) addr() string { return a.srv.Listener.Addr().String() }

// signIn starts a session for account and returns its cookie value.
func (a *legacyApp) signIn(account string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	sid := hex.EncodeToString(b[:])
	a.mu.Lock()
	a.sessions[sid] = account
	a.mu.Unlock()
	return sid
}

func (a *legacyApp) accountOf(r *http.Request) string {
	c, err := r.Cookie("sid")
	if err != nil {
		return ""
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sessions[c.Value]
}

// ---- the site under test ----

// portalHost is the customers' site, beside the gateway on the same port
// (Chromium resolves every *.localhost name to the loopback address).
func portalHost() string {
	return "app.localhost:" + strings.TrimPrefix(gatewayListen, ":")
}

// portalSite is the product's Caddyfile for the customers' site: the
// legacy application signs customers in, forward_auth asks it who is
// signed in, and postscale_portal serves the API keys page.
func portalSite(legacy, store string) string {
	return fmt.Sprintf(`http://%s {
	forward_auth %s {
		uri /session
		copy_headers X-Account-Id
	}
	handle_path /settings/api-keys* {
		postscale_portal {
			account {http.request.header.X-Account-Id}
			store sqlite %s
		}
	}
	reverse_proxy %s
}
`, portalHost(), legacy, store, legacy)
}

// portalEnv is a running customers' site and gateway on one store.
type portalEnv struct {
	mail   *recorder
	legacy *legacyApp
	store  string
}

// startPortal runs the customers' site and the gateway (any other host)
// on one store, with the accounts acme and globex.
func startPortal(t *testing.T) *portalEnv {
	t.Helper()
	env := &portalEnv{mail: newRecorder(t, "mail"), legacy: newLegacyApp(t), store: storePath(t)}
	loadCaddyfile(t, portalSite(env.legacy.addr(), env.store)+gatewaySite(env.store, env.mail.addr(), ""))
	createAccount(t, "acme", "growth")
	createAccount(t, "globex", "growth")
	return env
}

// portalCall is a call to the customers' site as the page makes it: from
// the site itself, with the CSRF header, signed in as account ("" for
// nobody). Extra headers ("Name: value") are set over those.
func portalCall(t *testing.T, env *portalEnv, account, method, path string, body any, headers ...string) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, gatewayURL+"/settings/api-keys/"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = portalHost()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Postscale-CSRF", "1")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	if method != http.MethodGet {
		req.Header.Set("Origin", "http://"+portalHost())
	}
	if account != "" {
		req.AddCookie(&http.Cookie{Name: "sid", Value: env.legacy.signIn(account)})
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		value = strings.TrimSpace(value)
		if value == "" {
			req.Header.Del(name)
		} else {
			req.Header.Set(name, value)
		}
	}
	resp, b := send(t, req)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// portalJSON makes a portal call that must answer want, decoding into out.
func portalJSON(t *testing.T, env *portalEnv, account, method, path string, body any, want int, out any) response {
	t.Helper()
	r := portalCall(t, env, account, method, path, body)
	if r.status != want {
		t.Fatalf("%s %s as %s: HTTP %d %s, want %d", method, path, account, r.status, r.body, want)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			t.Fatalf("%s %s: decoding %s: %v", method, path, r.body, err)
		}
	}
	return r
}

type portalKeyList struct {
	Account string      `json:"account"`
	Keys    []keyRecord `json:"keys"`
}

// TestPortalScoping: a signed-in customer lists, creates, rolls and
// revokes their own account's keys, and gets 404 for another account's,
// whatever id they send; what the portal changes, the gateway enforces at
// once.
func TestPortalScoping(t *testing.T) {
	env := startPortal(t)
	theirs := createKey(t, "globex", "globex prod", "live")
	mine := createKey(t, "acme", "acme prod", "live")

	var list portalKeyList
	portalJSON(t, env, "acme", http.MethodGet, "api/keys", nil, http.StatusOK, &list)
	if list.Account != "acme" || len(list.Keys) != 1 || list.Keys[0].ID != mine.ID {
		t.Fatalf("acme's list: %+v, want acme's one key %s only", list, mine.ID)
	}

	// Signed in as acme, a client that sends X-Account-Id: globex itself
	// still gets acme's keys: forward_auth replaces the header.
	var forged portalKeyList
	r0 := portalCall(t, env, "acme", http.MethodGet, "api/keys", nil, "X-Account-Id: globex")
	if err := json.Unmarshal(r0.body, &forged); err != nil || r0.status != http.StatusOK || forged.Account != "acme" || len(forged.Keys) != 1 || forged.Keys[0].ID != mine.ID {
		t.Fatalf("acme sending X-Account-Id: globex: HTTP %d %s, want acme's keys", r0.status, r0.body)
	}

	// Another account's key, by its id: not found, in every call, and
	// nothing happens to it.
	notFound := portalCall(t, env, "acme", http.MethodGet, "api/keys/"+theirs.ID, nil).body
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "api/keys/" + theirs.ID},
		{http.MethodPost, "api/keys/" + theirs.ID + "/roll"},
		{http.MethodPost, "api/keys/" + theirs.ID + "/revoke"},
		{http.MethodGet, "api/keys/key_doesnotexist"},
	} {
		r := portalCall(t, env, "acme", c.method, c.path, nil)
		if r.status != http.StatusNotFound {
			t.Errorf("%s %s as acme: HTTP %d %s, want 404", c.method, c.path, r.status, r.body)
		}
		if strings.Contains(string(r.body), "globex") {
			t.Errorf("%s %s: the answer %s names the other account", c.method, c.path, r.body)
		}
	}
	if !strings.Contains(string(notFound), theirs.ID) {
		t.Errorf("404 body %s, want it to say which id was not found", notFound)
	}
	if k := getKey(t, theirs.ID); k.RevokedAt != nil || k.DeprecatedAt != nil {
		t.Errorf("globex's key after acme's attempts: %+v, want untouched", k)
	}
	expectAdmitted(t, env.mail, theirs.Key, "/v1/emails")

	// A key created in the portal belongs to the signed-in account, and
	// is shown in that answer only.
	var created createdKey
	portalJSON(t, env, "acme", http.MethodPost, "api/keys", map[string]any{"name": "staging", "mode": "test"}, http.StatusCreated, &created)
	if created.Account != "acme" || !issuedKey.MatchString(created.Key) || created.Mode != "test" {
		t.Fatalf("created: %+v", created)
	}
	secret := created.Key[len("ps_test_"):]
	for _, path := range []string{"api/keys", "api/keys/" + created.ID} {
		r := portalJSON(t, env, "acme", http.MethodGet, path, nil, http.StatusOK, nil)
		if strings.Contains(string(r.body), secret[:20]) || strings.Contains(string(r.body), `"key"`) {
			t.Errorf("GET %s shows the key again: %s", path, r.body)
		}
	}
	// Naming another account in the body does not create a key there.
	r := portalCall(t, env, "acme", http.MethodPost, "api/keys", map[string]any{"account": "globex", "name": "sneaky"})
	if r.status != http.StatusBadRequest {
		t.Errorf("create naming globex as acme: HTTP %d %s, want 400", r.status, r.body)
	}
	var globexList portalKeyList
	portalJSON(t, env, "globex", http.MethodGet, "api/keys", nil, http.StatusOK, &globexList)
	if len(globexList.Keys) != 1 || globexList.Keys[0].ID != theirs.ID {
		t.Errorf("globex's list: %+v, want its one key", globexList)
	}

	// Roll acme's key at once, then revoke the new one: the gateway,
	// which has both cached, refuses them from the next request on.
	expectAdmitted(t, env.mail, mine.Key, "/v1/emails")
	var rolled createdKey
	portalJSON(t, env, "acme", http.MethodPost, "api/keys/"+mine.ID+"/roll", map[string]any{"expires_in": "0s"}, http.StatusCreated, &rolled)
	if !issuedKey.MatchString(rolled.Key) || rolled.Replaces == nil || rolled.Replaces.ID != mine.ID {
		t.Fatalf("roll: %+v", rolled)
	}
	expectRejected(t, env.mail, expiredKey, "/v1/emails", bearer(mine.Key))
	expectAdmitted(t, env.mail, rolled.Key, "/v1/emails")
	var revoked keyRecord
	portalJSON(t, env, "acme", http.MethodPost, "api/keys/"+rolled.ID+"/revoke", nil, http.StatusOK, &revoked)
	if revoked.RevokedAt == nil {
		t.Errorf("revoke answered %+v, want revoked_at set", revoked)
	}
	expectRejected(t, env.mail, revokedKey, "/v1/emails", bearer(rolled.Key))

	// Usage is acme's: the admitted requests of its keys, not globex's.
	var usage struct {
		Account string `json:"account"`
		Plan    string `json:"plan"`
		Hours   []struct {
			Admitted int64 `json:"admitted"`
			Refused  int64 `json:"refused"`
		} `json:"hours"`
	}
	portalJSON(t, env, "acme", http.MethodGet, "api/usage", nil, http.StatusOK, &usage)
	var admitted, refused int64
	for _, h := range usage.Hours {
		admitted += h.Admitted
		refused += h.Refused
	}
	if usage.Account != "acme" || usage.Plan != "growth" || len(usage.Hours) != 48 || admitted != 2 || refused != 2 {
		t.Errorf("acme's usage: %s %s, %d hours, %d admitted, %d refused; want acme growth, 48 hours, 2 admitted, 2 refused",
			usage.Account, usage.Plan, len(usage.Hours), admitted, refused)
	}
}

// TestPortalSignedOut: without a session the portal answers 401 with an
// empty body, and a visitor cannot claim an account by sending
// X-Account-Id: forward_auth replaces it with what the application says.
func TestPortalSignedOut(t *testing.T) {
	env := startPortal(t)
	createKey(t, "acme", "acme prod", "live")
	for _, path := range []string{"", "api/keys", "app.js"} {
		for _, spoof := range []string{"", "X-Account-Id: acme"} {
			r := portalCall(t, env, "", http.MethodGet, path, nil, spoof)
			if r.status != http.StatusUnauthorized || len(r.body) != 0 {
				t.Errorf("GET %q signed out (%q): HTTP %d %q, want 401 and an empty body", path, spoof, r.status, r.body)
			}
		}
	}
	// The rest of the site is the legacy application's.
	r := portalCall(t, env, "", http.MethodGet, "../pricing", nil)
	if r.status != http.StatusOK || !strings.Contains(string(r.body), "legacy app") {
		t.Errorf("GET /pricing: HTTP %d %s, want the legacy app", r.status, r.body)
	}
}

// TestPortalCrossSite: calls that do not come from the page on its own
// site are refused with 403 and change nothing: a cross-site Origin, a
// browser's Sec-Fetch-Site other than same-origin, or the custom header
// missing (which a cross-site form cannot add).
func TestPortalCrossSite(t *testing.T) {
	env := startPortal(t)
	k := createKey(t, "acme", "acme prod", "live")
	create := map[string]any{"name": "from elsewhere"}
	for _, c := range []struct {
		name    string
		method  string
		path    string
		body    any
		headers []string
	}{
		{"create without the CSRF header", http.MethodPost, "api/keys", create, []string{"X-Postscale-CSRF:"}},
		{"create with CSRF header 0", http.MethodPost, "api/keys", create, []string{"X-Postscale-CSRF: 0"}},
		{"create from another origin", http.MethodPost, "api/keys", create, []string{"Origin: http://evil.example"}},
		{"create from a sibling site", http.MethodPost, "api/keys", create, []string{"Origin: http://evil.localhost:" + strings.TrimPrefix(gatewayListen, ":"), "Sec-Fetch-Site: same-site"}},
		{"create, Sec-Fetch-Site cross-site", http.MethodPost, "api/keys", create, []string{"Sec-Fetch-Site: cross-site", "Origin:"}},
		{"revoke without the CSRF header", http.MethodPost, "api/keys/" + k.ID + "/revoke", nil, []string{"X-Postscale-CSRF:"}},
		{"revoke from another origin", http.MethodPost, "api/keys/" + k.ID + "/revoke", nil, []string{"Origin: https://evil.example", "Sec-Fetch-Site:"}},
		{"roll cross-site", http.MethodPost, "api/keys/" + k.ID + "/roll", nil, []string{"Sec-Fetch-Site: cross-site"}},
		{"list without the CSRF header", http.MethodGet, "api/keys", nil, []string{"X-Postscale-CSRF:"}},
	} {
		r := portalCall(t, env, "acme", c.method, c.path, c.body, c.headers...)
		if r.status != http.StatusForbidden {
			t.Errorf("%s: HTTP %d %s, want 403", c.name, r.status, r.body)
		}
	}
	if got := getKey(t, k.ID); got.RevokedAt != nil || got.DeprecatedAt != nil {
		t.Errorf("the key after refused calls: %+v, want untouched", got)
	}
	var list portalKeyList
	portalJSON(t, env, "acme", http.MethodGet, "api/keys", nil, http.StatusOK, &list)
	if len(list.Keys) != 1 {
		t.Errorf("after refused creates acme has %d keys, want 1", len(list.Keys))
	}
	// The same calls from the page itself, and from a client that is not a
	// browser (no Origin, no Sec-Fetch-Site) but sends the header, work.
	portalJSON(t, env, "acme", http.MethodPost, "api/keys", create, http.StatusCreated, nil)
	r := portalCall(t, env, "acme", http.MethodPost, "api/keys/"+k.ID+"/revoke", nil, "Origin:", "Sec-Fetch-Site:")
	if r.status != http.StatusOK {
		t.Errorf("revoke without Origin and Sec-Fetch-Site: HTTP %d %s, want 200", r.status, r.body)
	}
}

// TestPortalHeaders: every answer of the portal, page and API, forbids
// framing, inline script and caching, and the page's URL ends in a slash
// so that its files load.
func TestPortalHeaders(t *testing.T) {
	env := startPortal(t)
	k := createKey(t, "acme", "acme prod", "live")
	check := func(what string, r response) {
		t.Helper()
		want := map[string]string{
			"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
			"X-Frame-Options":         "DENY",
			"Cache-Control":           "no-store",
			"X-Content-Type-Options":  "nosniff",
		}
		for name, v := range want {
			if got := r.header.Get(name); got != v {
				t.Errorf("%s: %s %q, want %q", what, name, got, v)
			}
		}
	}
	page := portalCall(t, env, "acme", http.MethodGet, "", nil)
	check("the page", page)
	if page.status != http.StatusOK || !strings.Contains(string(page.body), `<script type="module" src="app.js">`) || !strings.Contains(string(page.body), `data-mode="customer"`) {
		t.Errorf("the page: HTTP %d %s", page.status, page.body)
	}
	if strings.Contains(string(page.body), "<style") || strings.Contains(string(page.body), "<script>") || strings.Contains(string(page.body), " style=") {
		t.Errorf("the page has inline style or script, which its CSP blocks")
	}
	for path, ctype := range map[string]string{"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"} {
		r := portalCall(t, env, "acme", http.MethodGet, path, nil)
		check(path, r)
		if r.status != http.StatusOK || r.header.Get("Content-Type") != ctype {
			t.Errorf("%s: HTTP %d, Content-Type %q, want 200 %s", path, r.status, r.header.Get("Content-Type"), ctype)
		}
	}
	check("the key list", portalJSON(t, env, "acme", http.MethodGet, "api/keys", nil, http.StatusOK, nil))
	check("a new key", portalJSON(t, env, "acme", http.MethodPost, "api/keys", map[string]any{"name": "n"}, http.StatusCreated, nil))
	check("a rolled key", portalJSON(t, env, "acme", http.MethodPost, "api/keys/"+k.ID+"/roll", nil, http.StatusCreated, nil))
	check("a refused call", portalCall(t, env, "acme", http.MethodPost, "api/keys", nil, "X-Postscale-CSRF:"))
	check("usage", portalJSON(t, env, "acme", http.MethodGet, "api/usage", nil, http.StatusOK, nil))

	// /settings/api-keys, without the slash, leads to the page.
	req, _ := http.NewRequest(http.MethodGet, gatewayURL+"/settings/api-keys", nil)
	req.Host = portalHost()
	req.AddCookie(&http.Cookie{Name: "sid", Value: env.legacy.signIn("acme")})
	resp, err := (&http.Transport{}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusFound || loc != "/settings/api-keys/" {
		t.Errorf("GET /settings/api-keys: HTTP %d Location %q, want 302 to /settings/api-keys/", resp.StatusCode, loc)
	}
}

// TestUIOperatorRoute: the operators' page is served on the admin
// endpoint with the same headers, in operator mode.
func TestUIOperatorRoute(t *testing.T) {
	startGateway(t, "")
	req, _ := http.NewRequest(http.MethodGet, adminURL+"/postscale/ui/", nil)
	resp, b := send(t, req)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `data-mode="operator"`) {
		t.Fatalf("GET /postscale/ui/: HTTP %d %s", resp.StatusCode, b)
	}
	for name, v := range map[string]string{"X-Frame-Options": "DENY", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"} {
		if got := resp.Header.Get(name); got != v {
			t.Errorf("%s %q, want %q", name, got, v)
		}
	}
	if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Errorf("CSP %q", resp.Header.Get("Content-Security-Policy"))
	}
	req, _ = http.NewRequest(http.MethodGet, adminURL+"/postscale/ui/nothing.js", nil)
	if resp, _ := send(t, req); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /postscale/ui/nothing.js: HTTP %d, want 404", resp.StatusCode)
	}
}
