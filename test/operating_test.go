package test

import (
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// What the README's "Operating the gateway" section promises: the first
// start names the store it opened, once.

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
