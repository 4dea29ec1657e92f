package test

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// What the README's "Operating the gateway" section promises: the example
// JSON config runs as it is, the example Caddyfiles adapt, and the first
// start names the store it opened, once.

// TestExampleJSONRuns loads examples/gateway.json into the in-process
// Caddy with only its addresses moved to this run's free ports and its
// default store into a temporary data directory, and uses it as the README
// does: the health check without a key, 401 without one, a live key to the
// mail stand-in, a test key to the sandbox, a scoped key refused where its
// scope does not reach, and the plan the file adds.
func TestExampleJSONRuns(t *testing.T) {
	raw, err := os.ReadFile("../examples/gateway.json")
	if err != nil {
		t.Fatal(err)
	}
	config := string(raw)
	mailPort, sandboxPort := freePort(t), freePort(t)
	for _, r := range []struct{ old, new string }{
		{`"127.0.0.1:2019"`, strconv.Quote(adminAddr)},
		{`":8080"`, strconv.Quote(gatewayListen)},
		{`127.0.0.1:8091`, fmt.Sprintf("127.0.0.1:%d", mailPort)},
		{`127.0.0.1:8092`, fmt.Sprintf("127.0.0.1:%d", sandboxPort)},
	} {
		if !strings.Contains(config, r.old) {
			t.Fatalf("examples/gateway.json no longer contains %s; update this test along with the README", r.old)
		}
		config = strings.ReplaceAll(config, r.old, r.new)
	}
	// The file names no store path: the store is keys.db in Caddy's data
	// directory, here a temporary one.
	dataDir := t.TempDir()
	t.Setenv("XDG_DATA_HOME", dataDir)
	loadConfig(t, config, "json")
	if _, err := os.Stat(filepath.Join(dataDir, "caddy", "postscale", "keys.db")); err != nil {
		t.Errorf("the default store was not created in the data directory: %v", err)
	}

	if r := get(t, "/healthz"); r.status != http.StatusOK || string(r.body) != "ok" {
		t.Errorf("/healthz without a key: got %d %q, want 200 \"ok\"", r.status, r.body)
	}
	if r := request(t, http.MethodPost, "/v1/emails", "{}"); r.status != http.StatusUnauthorized || !strings.Contains(string(r.body), `"missing_api_key"`) {
		t.Errorf("POST /v1/emails without a key: got %d %s, want 401 missing_api_key", r.status, r.body)
	}

	createAccount(t, "acme", "growth")
	live := createKey(t, "acme", "server", "live")
	r := request(t, http.MethodPost, "/v1/emails", `{"to":"ada@example.com"}`, bearer(live.Key))
	for _, want := range []string{`"service":"mail"`, `"mode":"live"`, `"account":"acme"`, `"key_id":"` + live.ID + `"`, `"plan":"growth"`, `"authorization":""`} {
		if r.status != http.StatusAccepted || !strings.Contains(string(r.body), want) {
			t.Errorf("a live key: got %d %s, want 202 with %s", r.status, r.body, want)
		}
	}
	test := createKey(t, "acme", "ci", "test")
	r = request(t, http.MethodPost, "/v1/emails", "{}", bearer(test.Key))
	if r.status != http.StatusAccepted || !strings.Contains(string(r.body), `"service":"sandbox"`) {
		t.Errorf("a test key: got %d %s, want 202 from the sandbox", r.status, r.body)
	}
	sender := postKey(t, map[string]any{"account": "acme", "name": "sender", "mode": "live", "scopes": []string{"emails:send"}})
	if r := get(t, "/v1/emails", bearer(sender.Key)); r.status != http.StatusForbidden {
		t.Errorf("GET /v1/emails with an emails:send key: got %d %s, want 403", r.status, r.body)
	}
	createAccount(t, "newbie", "trial") // refused unless the running config knows the plan
	r = request(t, http.MethodPost, "/v1/emails", "{}", bearer(createKey(t, "newbie", "server", "live").Key))
	if got := r.header.Get("RateLimit-Policy"); got != `"trial";q=5;w=10` {
		t.Errorf("the example's trial plan: RateLimit-Policy %q, want \"trial\";q=5;w=10", got)
	}
}

// TestExampleCaddyfilesAdapt: every Caddyfile under examples/ adapts, so
// what the README shows from them is a config Caddy takes.
func TestExampleCaddyfilesAdapt(t *testing.T) {
	files, err := filepath.Glob("../examples/*.Caddyfile")
	if err != nil || len(files) == 0 {
		t.Fatalf("no Caddyfiles in examples/ (%v)", err)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			if _, err := adapt(readCaddyfile(t, path)); err != nil {
				t.Errorf("%s does not adapt: %v", path, err)
			}
		})
	}
}

// TestStoreOpenedLogged: a gateway's first start logs one line naming the
// SQLite file it opened; a reload on the same file says nothing more; a
// reload onto another file names that one.
func TestStoreOpenedLogged(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "first.db"), filepath.Join(dir, "second.db")
	site := func(store, extra string) string {
		return procGlobals + fmt.Sprintf(`:{$POSTSCALE_LISTEN_PORT} {
	postscale {
		store sqlite %s
		%s
	}
	respond "ok"
}
`, store, extra)
	}
	p := startProc(t, "G", site(first, ""))
	const opened = `"msg":"key store opened"`
	if n := p.logLines(opened); n != 1 {
		t.Fatalf("after the first start: %d lines %s, want 1\n%s", n, opened, p.logs.String())
	}
	if n := p.logLines(`"path":` + strconv.Quote(first)); n != 1 {
		t.Errorf("the line does not name the store file %s\n%s", first, p.logs.String())
	}

	p.load(t, site(first, "plan trial 1"))
	if n := p.logLines(opened); n != 1 {
		t.Errorf("after a reload on the same file: %d lines %s, want still 1", n, opened)
	}
	p.load(t, site(second, ""))
	if n := p.logLines(opened); n != 2 {
		t.Errorf("after a reload onto another file: %d lines %s, want 2", n, opened)
	}
	if n := p.logLines(`"path":` + strconv.Quote(second)); n != 1 {
		t.Errorf("no line names the second store file %s\n%s", second, p.logs.String())
	}
}

// TestPostgresStoreOpenedLogged: the same line for PostgreSQL names the
// database as postgres://user@host:port/dbname, never the password.
func TestPostgresStoreOpenedLogged(t *testing.T) {
	dsn := testenv.Postgres(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "G", procGlobals+`:{$POSTSCALE_LISTEN_PORT} {
	postscale {
		store postgres {env.PS_DSN}
	}
	respond "ok"
}
`, "PS_DSN="+dsn)
	identity := fmt.Sprintf("postgres://%s@%s%s", u.User.Username(), u.Host, u.Path)
	if n := p.logLines(`"msg":"key store opened","store":"` + identity + `"`); n != 1 {
		t.Errorf("want one line %q naming %s\n%s", "key store opened", identity, p.logs.String())
	}
	if pw, ok := u.User.Password(); ok && strings.Contains(p.logs.String(), pw) {
		t.Errorf("the log shows the DSN's password")
	}
}

// load replaces the process's config with caddyfile through its admin
// endpoint's /load, as `caddy reload` does, and fails the test unless it
// is taken.
func (p *proc) load(t *testing.T, caddyfile string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+p.adminAddr+"/load", strings.NewReader(caddyfile))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, b := send(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("gateway %s: POST /load: HTTP %d %s", p.name, resp.StatusCode, b)
	}
}
