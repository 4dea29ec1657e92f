package test

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	postscale "github.com/postscale/caddy-postscale"
)

// fileIn writes content to name in dir and returns its path.
func fileIn(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	writeFile(t, p, content)
	return p
}

// errorMessage returns the message of a gateway error body, failing the
// test unless the body ends with a newline and shows < and > as they are.
func errorMessage(t *testing.T, what string, body []byte) string {
	t.Helper()
	if !strings.HasSuffix(string(body), "}\n") {
		t.Errorf("%s: body %q does not end with a newline", what, body)
	}
	if strings.Contains(string(body), `\u003c`) || strings.Contains(string(body), `\u003e`) || strings.Contains(string(body), `\u0026`) {
		t.Errorf("%s: body %s escapes <, > or &", what, body)
	}
	var doc struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("%s: body %q: %v", what, body, err)
	}
	return doc.Error.Message
}

// TestErrorMessages: what a developer reads in the gateway's errors: a key
// sent without the word Bearer gets the contract's 401 missing_api_key
// with a message that says the scheme is wrong and shows the right form;
// the duplicate-header message shows <key> as written; every error body,
// scope 403s included, ends with a newline.
func TestErrorMessages(t *testing.T) {
	backend, _ := startGateway(t, `require_scope emails:send {
			method POST
		}`)
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "web", "live")
	scoped := postKey(t, map[string]any{"account": "acme", "name": "reader", "mode": "live", "scopes": []string{"emails:read"}})

	for _, h := range []string{"Authorization: " + k.Key, "Authorization: Basic dXNlcjpwYXNz"} {
		r := expectRejected(t, backend, missingKey, "/v1/emails", h)
		msg := errorMessage(t, h, r.body)
		if !strings.Contains(msg, "does not use the Bearer scheme") || !strings.Contains(msg, "'Authorization: Bearer ps_live_…'") {
			t.Errorf("%s: message %q, want it to say the scheme is wrong and show 'Authorization: Bearer ps_live_…'", postscale.Redact(k.Key), msg)
		}
		if strings.Contains(string(r.body), k.Key[len("ps_live_"):]) {
			t.Errorf("the error shows the key: %s", r.body)
		}
	}
	r := expectRejected(t, backend, missingKey, "/v1/emails")
	if msg := errorMessage(t, "no header", r.body); !strings.HasPrefix(msg, "No API key provided") {
		t.Errorf("no header: message %q, want No API key provided", msg)
	}
	r = expectRejected(t, backend, invalidRequest, "/v1/emails", bearer(k.Key), bearer(k.Key))
	if msg := errorMessage(t, "two headers", r.body); !strings.Contains(msg, "'Authorization: Bearer <key>'") {
		t.Errorf("two Authorization headers: message %q, want it to show 'Authorization: Bearer <key>'", msg)
	}
	for what, r := range map[string]response{
		"invalid key":   get(t, "/v1/emails", bearer("ps_live_nope")),
		"key in query":  get(t, "/v1/emails?api_key=x"),
		"missing scope": request(t, http.MethodPost, "/v1/emails", "{}", bearer(scoped.Key)),
	} {
		if r.status < 400 {
			t.Fatalf("%s: got %d, want an error", what, r.status)
		}
		errorMessage(t, what, r.body)
	}
}

// TestAdminErrorBodies: the admin API's errors are Caddy's {"error": "…"}
// ending with a newline, with < and > as written (a path is echoed as
// sent); and its answers show names as written.
func TestAdminErrorBodies(t *testing.T) {
	startGateway(t, "")
	createAccount(t, "acme", "growth")
	k := postKey(t, map[string]any{"account": "acme", "name": "ci <eu> & us", "mode": "test"})
	for _, c := range []struct {
		method, path string
		body         any
		status       int
		want         string
	}{
		{http.MethodPost, "/postscale/accounts", `{"id":`, 400, "body: "},
		{http.MethodGet, "/postscale/keys/key_nope", nil, 404, `key "key_nope"`},
		{http.MethodPut, "/postscale/accounts/acme", nil, 405, "takes GET or PATCH"},
		{http.MethodPost, "/postscale/accounts", map[string]any{"id": "acme", "plan": "growth"}, 409, "already exists"},
		{http.MethodGet, "/postscale/%3Cx%3E", nil, 404, "no such endpoint: /postscale/<x>"},
	} {
		resp, b := adminDo(t, c.method, c.path, c.body)
		if resp.StatusCode != c.status {
			t.Errorf("%s %s: HTTP %d %s, want %d", c.method, c.path, resp.StatusCode, b, c.status)
		}
		if !strings.HasSuffix(string(b), "\"}\n") || strings.Contains(string(b), `\u00`) {
			t.Errorf("%s %s: body %q, want {\"error\":\"…\"} as written, ending with a newline", c.method, c.path, b)
		}
		if msg := adminError(t, c.method, c.path, c.body, c.status); !strings.Contains(msg, c.want) {
			t.Errorf("%s %s: message %q, want %q", c.method, c.path, msg, c.want)
		}
	}
	resp, b := adminDo(t, http.MethodGet, "/postscale/keys/"+k.ID, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"name":"ci <eu> & us"`) || !strings.HasSuffix(string(b), "}\n") {
		t.Errorf("GET the key: %d %s, want its name as written", resp.StatusCode, b)
	}
	if out := cli(t, "--address", adminAddr, "key", "show", k.ID); !strings.Contains(out, `"name": "ci <eu> & us"`) {
		t.Errorf("key show printed %s, want the name as written", out)
	}
}

// TestCLIErrorsReadable: an error of the running instance comes out of
// the CLI as its message, not as the admin API's raw JSON wrapped in
// "caddy responded with error: HTTP 400: {…}", and the command still
// exits non-zero.
func TestCLIErrorsReadable(t *testing.T) {
	startGateway(t, "")
	createAccount(t, "acme", "growth")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"account", "create", "b", "--plan", "gold"}, `plan: no postscale handler defines the plan "gold", so every request`},
		{[]string{"account", "create", "acme", "--plan", "growth"}, `account "acme": already exists`},
		{[]string{"key", "show", "key_nope"}, `key "key_nope": not found`},
	} {
		msg := cliFails(t, append([]string{"--address", adminAddr}, c.args...)...)
		if !strings.HasPrefix(msg, c.want) {
			t.Errorf("%v: error %q, want it to start with %q", c.args, msg, c.want)
		}
		for _, raw := range []string{"caddy responded", "HTTP 4", `{"error"`, `\"`} {
			if strings.Contains(msg, raw) {
				t.Errorf("%v: error %q shows %s; want the message alone", c.args, msg, raw)
				break
			}
		}
	}
	// The built binary: exit status 1, and the message after "Error: ".
	cmd := exec.Command(gatewayBinary(t), "postscale", "--address", adminAddr, "account", "update", "acme", "--plan", "platinum")
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); err == nil || code != 1 {
		t.Errorf("account update --plan platinum: exit %d (%v), want 1", code, err)
	}
	if !strings.Contains(string(out), `Error: plan: no postscale handler defines the plan "platinum"`) || strings.Contains(string(out), `{"error"`) {
		t.Errorf("account update --plan platinum printed %q, want the message after Error:", out)
	}
}

// TestCLIImportClash: an import that clashes with a key already in the
// store, or repeats a key, is refused naming the CSV line (or the JSON
// index) and the existing key's id, through the running instance and
// straight on the store, never showing the key.
func TestCLIImportClash(t *testing.T) {
	const existing = "ps_live_abc123xyz"
	check := func(t *testing.T, conn ...string) {
		t.Helper()
		dir := t.TempDir()
		first := fileIn(t, dir, "first.csv", "account,name,mode,key\nacme,old production,live,"+existing+"\n")
		out := cli(t, append(conn, "key", "import", first)...)
		var imported []keyRecord
		if err := json.Unmarshal([]byte(out), &imported); err != nil || len(imported) != 1 {
			t.Fatalf("first import printed %s (%v)", out, err)
		}
		// Line 1 is the header, line 2 blank, the clash is on line 4.
		again := fileIn(t, dir, "again.csv", "account,name,mode,key\n\nacme,new one,live,ps_live_fresh999\nacme,old production again,live,"+existing+"\n")
		dupCSV := fileIn(t, dir, "dup.csv", "account,name,mode,key\nacme,a,live,ps_live_twice777\nacme,b,live,ps_live_other888\nacme,c,live,ps_live_twice777\n")
		againJSON := fileIn(t, dir, "again.json", `[{"account":"acme","name":"x","key":"ps_live_fresh999"},{"account":"acme","name":"y","hash":"`+sha256Hex(existing)+`","mode":"live"}]`)
		for _, c := range []struct {
			file string
			want []string
		}{
			{again, []string{again + ", line 4: keys[1].key: is already in the store, as " + imported[0].ID + ` of account "acme"`, "nothing was imported"}},
			{dupCSV, []string{dupCSV + ", line 4: keys[2].key: is the same key as keys[0]"}},
			{againJSON, []string{"keys[1].hash: is already in the store, as " + imported[0].ID}},
		} {
			msg := cliFails(t, append(conn, "key", "import", c.file)...)
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("import %s: error %q, want %q", filepath.Base(c.file), msg, w)
				}
			}
			for _, key := range []string{existing, "ps_live_fresh999", "ps_live_twice777"} {
				if strings.Contains(msg, key[len("ps_live_"):]) {
					t.Errorf("import %s: the error shows a key: %s", filepath.Base(c.file), msg)
				}
			}
		}
		// Nothing of the refused imports was stored.
		if out := cli(t, append(conn, "key", "list", "--account", "acme")...); strings.Contains(out, "new one") || strings.Contains(out, `"x"`) {
			t.Errorf("a refused import stored keys: %s", out)
		}
	}
	t.Run("through the running instance", func(t *testing.T) {
		startGateway(t, "legacy_keys")
		createAccount(t, "acme", "growth")
		check(t, "--address", adminAddr)
	})
	t.Run("straight on the store", func(t *testing.T) {
		store := storePath(t)
		cli(t, "--store", store, "account", "create", "acme", "--plan", "growth")
		check(t, "--store", store)
	})
}
