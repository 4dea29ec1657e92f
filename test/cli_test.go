package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	postscale "github.com/postscale/caddy-postscale"
	"github.com/postscale/caddy-postscale/internal/testenv"
)

var issuedKey = regexp.MustCompile(`^ps_(live|test)_[0-9A-Za-z]{38}$`)

// cliCreateKey runs `caddy postscale key create args…`, checks that it
// printed the key alone on stdout, and returns the key.
func cliCreateKey(t *testing.T, args ...string) string {
	t.Helper()
	out := cli(t, append([]string{"key", "create"}, args...)...)
	key := strings.TrimSuffix(out, "\n")
	if !issuedKey.MatchString(key) {
		t.Fatalf("key create printed %q on stdout, want the key alone on one line", out)
	}
	return key
}

// cliCreateKeyJSON runs `caddy postscale key create --json args…` and
// returns the record with the key.
func cliCreateKeyJSON(t *testing.T, args ...string) createdKey {
	t.Helper()
	out := cli(t, append([]string{"key", "create", "--json"}, args...)...)
	var k createdKey
	if err := json.Unmarshal([]byte(out), &k); err != nil {
		t.Fatalf("key create --json printed %q: %v", out, err)
	}
	if k.ID == "" || !issuedKey.MatchString(k.Key) {
		t.Fatalf("key create --json printed no id or key: %s", out)
	}
	return k
}

// TestRevokeThroughStoreFile: a key revoked by a process that writes the
// store directly (here the CLI with --store) stops working on the running
// server within 1 second, though the server had it cached (README, Managing keys).
func TestRevokeThroughStoreFile(t *testing.T) {
	backend, store := startGateway(t, "")
	cli(t, "--store", store, "account", "create", "acme", "--plan", "growth")
	k := cliCreateKeyJSON(t, "--store", store, "--account", "acme", "--name", "server")
	expectAdmitted(t, backend, k.Key, "/v1/emails") // now cached

	cli(t, "--store", store, "key", "revoke", k.ID)
	revoked := time.Now()
	for {
		r := get(t, "/v1/emails", bearer(k.Key))
		if r.status != http.StatusOK {
			assertRejected(t, r, revokedKey)
			t.Logf("rejected %v after the revocation", time.Since(revoked).Round(time.Millisecond))
			break
		}
		if time.Since(revoked) > time.Second {
			t.Fatalf("key still admitted %v after it was revoked in the store; want rejected within 1s", time.Since(revoked))
		}
		time.Sleep(10 * time.Millisecond)
	}
	expectRejected(t, backend, revokedKey, "/v1/emails", bearer(k.Key))
}

// TestRevokeThroughAdmin: a key revoked through the running instance (the
// CLI with --address) is rejected on the very next request.
func TestRevokeThroughAdmin(t *testing.T) {
	backend, _ := startGateway(t, "")
	cli(t, "--address", adminAddr, "account", "create", "acme", "--plan", "growth")
	k := cliCreateKeyJSON(t, "--address", adminAddr, "--account", "acme", "--name", "server")
	other := cliCreateKeyJSON(t, "--address", adminAddr, "--account", "acme", "--name", "other server")
	expectAdmitted(t, backend, k.Key, "/v1/emails") // now cached
	expectAdmitted(t, backend, other.Key, "/v1/emails")

	out := cli(t, "--address", adminAddr, "key", "revoke", k.ID)
	expectRejected(t, backend, revokedKey, "/v1/emails", bearer(k.Key))

	var rec struct {
		ID        string     `json:"id"`
		RevokedAt *time.Time `json:"revoked_at"`
	}
	if err := json.Unmarshal([]byte(out), &rec); err != nil || rec.ID != k.ID || rec.RevokedAt == nil {
		t.Errorf("key revoke printed %q; want the record of %s with revoked_at set", out, k.ID)
	}
	// Revoking one key leaves the account's other keys alone.
	expectAdmitted(t, backend, other.Key, "/v1/emails")
}

// TestCLIThroughRunningInstance: `caddy postscale` finds the running
// instance by --address or by the admin address in --config; key create
// prints the key alone (the record goes to stderr), list and show never
// print it, and the key works at once.
func TestCLIThroughRunningInstance(t *testing.T) {
	backend, _ := startGateway(t, "")
	caddyfile := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(globalOptions("")), 0o600); err != nil {
		t.Fatal(err)
	}
	cli(t, "--config", caddyfile, "--adapter", "caddyfile", "account", "create", "acme", "--plan", "scale")

	stdout, stderr, err := runCLI("--address", adminAddr, "key", "create", "--account", "acme", "--name", "ci runner", "--mode", "test")
	if err != nil {
		t.Fatalf("key create: %v\nstderr: %s", err, stderr)
	}
	key := strings.TrimSuffix(stdout, "\n")
	if !issuedKey.MatchString(key) || !strings.HasPrefix(key, "ps_test_") {
		t.Fatalf("key create printed %q on stdout, want a ps_test_ key alone on one line", stdout)
	}
	if strings.Contains(stderr, key[len("ps_test_"):]) {
		t.Errorf("key create printed the key on stderr too: %q", stderr)
	}

	list := cli(t, "--address", adminAddr, "key", "list", "--account", "acme")
	var keys []struct {
		ID       string `json:"id"`
		Name     string `json:"name"`
		Mode     string `json:"mode"`
		Redacted string `json:"redacted"`
	}
	if err := json.Unmarshal([]byte(list), &keys); err != nil {
		t.Fatalf("key list printed %q: %v", list, err)
	}
	if len(keys) != 1 || keys[0].Name != "ci runner" || keys[0].Mode != "test" || keys[0].Redacted != "ps_test_…"+key[len(key)-4:] {
		t.Fatalf("key list: got %+v, want the one test key %q, redacted %q", keys, "ci runner", "ps_test_…"+key[len(key)-4:])
	}
	show := cli(t, "--address", adminAddr, "key", "show", keys[0].ID)
	for what, out := range map[string]string{"key list": list, "key show": show} {
		if strings.Contains(out, key[len("ps_test_"):len(key)-4]) {
			t.Errorf("%s printed the key: %s", what, out)
		}
	}
	if !strings.Contains(show, `"id": "`+keys[0].ID+`"`) {
		t.Errorf("key show %s printed %s, want that key's record", keys[0].ID, show)
	}

	got := expectAdmitted(t, backend, key, "/v1/emails")
	if id := got.Header.Get("Postscale-Key-Id"); id != keys[0].ID {
		t.Errorf("Postscale-Key-Id: got %q, want %q", id, keys[0].ID)
	}
	if plan := got.Header.Get("Postscale-Plan"); plan != "scale" {
		t.Errorf("Postscale-Plan: got %q, want scale", plan)
	}

	// Errors of the running instance come back as errors of the command.
	if _, stderr, err := runCLI("--address", adminAddr, "key", "revoke", "key_doesnotexist"); err == nil {
		t.Errorf("revoking an unknown key succeeded (stderr %q); want an error", stderr)
	}
}

// cliKeys are the keys a CLI session made, for checking them at the gateway.
type cliKeys struct {
	rolledOld, rolledNew string // a live key of acme rolled for 1h, and its replacement
	testNew              string // the replacement of a test key of acme
	revoked              string
	legacy               map[string]string // imported plaintext -> account
}

// TestCLISubcommands: every `caddy postscale` subcommand as an operator
// runs it, through the running instance and straight on the store file:
// the result on stdout (the key alone for create and roll), notes on
// stderr, never a key in a list or record, errors naming the problem; and
// what it made works at the gateway.
func TestCLISubcommands(t *testing.T) {
	t.Run("through the running instance", func(t *testing.T) {
		backend, _ := startGateway(t, "legacy_keys")
		checkCLIKeys(t, backend, cliSession(t, "--address", adminAddr))
	})
	t.Run("straight on the store file", func(t *testing.T) {
		store := storePath(t)
		keys := cliSession(t, "--store", store)
		backend := newRecorder(t, "mail")
		loadCaddyfile(t, gatewaySite(store, backend.addr(), "legacy_keys"))
		checkCLIKeys(t, backend, keys)
	})
	t.Run("straight on a PostgreSQL store", func(t *testing.T) {
		dsn := testenv.Postgres(t)
		keys := cliSession(t, "--store", dsn)
		backend := newRecorder(t, "mail")
		loadCaddyfile(t, fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	postscale {
		store postgres %q
		legacy_keys
	}
	reverse_proxy %s
}
`, dsn, backend.addr()))
		checkCLIKeys(t, backend, keys)
	})
}

// cliSession runs every subcommand with the connection flags conn, checks
// what each prints, and returns the keys it made.
func cliSession(t *testing.T, conn ...string) cliKeys {
	t.Helper()
	args := func(a ...string) []string { return append(append([]string{}, conn...), a...) }
	run := func(a ...string) (stdout, stderr string) {
		t.Helper()
		stdout, stderr, err := runCLI(args(a...)...)
		if err != nil {
			t.Fatalf("caddy postscale %s: %v\nstderr: %s", strings.Join(a, " "), err, stderr)
		}
		return stdout, stderr
	}
	decode := func(what, out string, v any) {
		t.Helper()
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("%s printed %q, want JSON: %v", what, out, err)
		}
	}
	// noSecret checks that out shows none of the keys' secret parts.
	noSecret := func(what, out string, keys ...string) {
		t.Helper()
		for _, k := range keys {
			if body := k[len("ps_live_"):]; strings.Contains(out, body[:len(body)-4]) {
				t.Errorf("%s printed the key %s: %s", what, postscale.Redact(k), out)
			}
		}
	}
	// keyAlone checks that stdout is one issued key on one line.
	keyAlone := func(what, stdout, mode string) string {
		t.Helper()
		key := strings.TrimSuffix(stdout, "\n")
		if !issuedKey.MatchString(key) || !strings.HasPrefix(key, "ps_"+mode+"_") {
			t.Fatalf("%s printed %q on stdout, want a ps_%s_ key alone on one line", what, stdout, mode)
		}
		return key
	}

	// account create, show, update
	type account struct {
		ID    string  `json:"id"`
		Plan  string  `json:"plan"`
		Rate  float64 `json:"rate"`
		Burst int     `json:"burst"`
	}
	for _, c := range []struct {
		args []string
		want account
	}{
		{[]string{"account", "create", "acme", "--plan", "growth"}, account{"acme", "growth", 0, 0}},
		{[]string{"account", "create", "bigco", "--plan", "enterprise", "--rate", "50"}, account{"bigco", "enterprise", 50, 50}},
		{[]string{"account", "show", "acme"}, account{"acme", "growth", 0, 0}},
		{[]string{"account", "update", "acme", "--plan", "scale"}, account{"acme", "scale", 0, 0}},
		{[]string{"account", "update", "bigco", "--burst", "70"}, account{"bigco", "enterprise", 50, 70}},
		{[]string{"account", "show", "acme"}, account{"acme", "scale", 0, 0}},
	} {
		out, _ := run(c.args...)
		var got account
		decode(strings.Join(c.args, " "), out, &got)
		if got != c.want {
			t.Errorf("%s: got %+v, want %+v", strings.Join(c.args, " "), got, c.want)
		}
	}

	// key create: the key alone on stdout, what it is on stderr.
	stdout, stderr := run("key", "create", "--account", "acme", "--name", "production server")
	live := keyAlone("key create", stdout, "live")
	liveID := regexp.MustCompile(`key_[0-9A-Za-z]+`).FindString(stderr)
	if liveID == "" || !strings.Contains(stderr, `Created live key `+liveID+` "production server" for account acme`) {
		t.Errorf("key create: stderr %q, want a note naming the mode, id, name and account", stderr)
	}
	noSecret("key create on stderr", stderr, live)
	// --json: the whole record, key included.
	test := cliCreateKeyJSON(t, args("--account", "acme", "--name", "ci", "--mode", "test", "--scope", "emails:send", "--scope", "emails:read")...)
	if test.Account != "acme" || test.Name != "ci" || test.Mode != "test" || strings.Join(test.Scopes, " ") != "emails:send emails:read" ||
		!strings.HasPrefix(test.Key, "ps_test_") || test.Redacted != postscale.Redact(test.Key) || test.CreatedAt.IsZero() {
		t.Errorf("key create --json: got %+v", test)
	}
	stdout, _ = run("key", "create", "--account", "acme", "--name", "to revoke", "--expires-at", time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	toRevoke := keyAlone("key create --expires-at", stdout, "live")

	// key list and show: records, never a key or a hash.
	stdout, _ = run("key", "list", "--account", "acme")
	noSecret("key list", stdout, live, test.Key, toRevoke)
	if strings.Contains(stdout, `"hash"`) || strings.Contains(stdout, `"key"`) {
		t.Errorf("key list printed a hash or key field: %s", stdout)
	}
	var list []keyRecord
	decode("key list", stdout, &list)
	var names []string
	for _, k := range list {
		names = append(names, k.Name)
	}
	if got, want := strings.Join(names, ","), "production server,ci,to revoke"; got != want || list[0].ID != liveID || list[1].ID != test.ID {
		t.Errorf("key list: got %s (ids %v), want %s (ids %s, %s, …)", got, list, want, liveID, test.ID)
	} else if list[2].ExpiresAt == nil {
		t.Errorf("key list: the key made with --expires-at has no expires_at: %+v", list[2])
	}
	stdout, _ = run("key", "show", liveID)
	noSecret("key show", stdout, live)
	var shown keyRecord
	decode("key show", stdout, &shown)
	if shown.ID != liveID || shown.Name != "production server" || shown.Redacted != postscale.Redact(live) || shown.RevokedAt != nil {
		t.Errorf("key show %s: got %+v", liveID, shown)
	}

	// key roll: the new key alone on stdout, the old key's end on stderr.
	rolled := time.Now()
	stdout, stderr = run("key", "roll", liveID, "--expires-in", "1h")
	liveNew := keyAlone("key roll", stdout, "live")
	noSecret("key roll on stderr", stderr, live, liveNew)
	m := regexp.MustCompile(`^Rolled (key_\S+): the replacement is (key_\S+)\. The old key works until (\S+)\. `).FindStringSubmatch(stderr)
	if m == nil || m[1] != liveID || m[2] == liveID {
		t.Errorf("key roll: stderr %q, want a note naming the old key, its replacement and when the old one stops", stderr)
	} else if until, err := time.Parse(time.RFC3339, m[3]); err != nil || until.Before(rolled.Add(time.Hour-time.Second)) || until.After(time.Now().Add(time.Hour)) {
		t.Errorf("key roll --expires-in 1h: the old key works until %q, want an hour from now", m[3])
	}
	stdout, _ = run("key", "roll", test.ID, "--expires-in", "2h", "--json")
	var testRolled createdKey
	decode("key roll --json", stdout, &testRolled)
	if !issuedKey.MatchString(testRolled.Key) || testRolled.ID == test.ID || testRolled.Name != "ci" || testRolled.Mode != "test" ||
		strings.Join(testRolled.Scopes, " ") != "emails:send emails:read" ||
		testRolled.Replaces == nil || testRolled.Replaces.ID != test.ID || testRolled.Replaces.ExpiresAt == nil || testRolled.Replaces.DeprecatedAt == nil {
		t.Errorf("key roll --json: got %s, want the replacement with its key and the old record under replaces", stdout)
	}

	// key revoke: the revoked record.
	var revoked keyRecord
	stdout, _ = run("key", "revoke", list[2].ID)
	decode("key revoke", stdout, &revoked)
	if revoked.ID != list[2].ID || revoked.RevokedAt == nil {
		t.Errorf("key revoke: got %s, want the record of %s with revoked_at", stdout, list[2].ID)
	}
	noSecret("key revoke", stdout, toRevoke)

	// key import, from CSV (plaintext and hash) and from JSON (a list, and
	// {"keys": […]}).
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	legacy := map[string]string{
		"ps_live_abc123xyz":    "acme",
		"ps_test_zzci4567":     "acme",
		"ps_live_oldworker789": "acme",
		"ps_live_bigcolegacy1": "bigco",
	}
	imports := []struct {
		file  string
		names []string
	}{
		{write("keys.csv", "account,name,mode,key,hash\n"+
			"acme,old production,live,ps_live_abc123xyz,\n"+
			"acme,old ci,test,,"+sha256Hex("ps_test_zzci4567")+"\n"), []string{"old production", "old ci"}},
		{write("list.json", `[{"account":"acme","name":"old worker","key":"ps_live_oldworker789","scopes":["emails:send"]}]`), []string{"old worker"}},
		{write("object.json", `{"keys":[{"account":"bigco","name":"old bigco","mode":"live","hash":"`+sha256Hex("ps_live_bigcolegacy1")+`"}]}`), []string{"old bigco"}},
	}
	for _, imp := range imports {
		stdout, stderr = run("key", "import", imp.file)
		if want := fmt.Sprintf("Imported %d keys.\n", len(imp.names)); !strings.HasSuffix(stderr, want) {
			t.Errorf("key import %s: stderr %q, want it to end with %q", filepath.Base(imp.file), stderr, want)
		}
		for k := range legacy {
			noSecret("key import", stdout, k)
		}
		var got []keyRecord
		decode("key import", stdout, &got)
		if len(got) != len(imp.names) {
			t.Fatalf("key import %s: printed %d records, want %d: %s", filepath.Base(imp.file), len(got), len(imp.names), stdout)
		}
		for i, r := range got {
			if r.Name != imp.names[i] || !r.Legacy || !strings.HasPrefix(r.ID, "key_") {
				t.Errorf("key import %s: record %d is %+v, want legacy key %q", filepath.Base(imp.file), i, r, imp.names[i])
			}
		}
	}

	// Every mistake is an error that says what is wrong, and prints nothing.
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"account", "create", "has space"}, []string{"id: "}},
		{[]string{"account", "create", "x", "--plan", "enterprise"}, []string{"rate: "}},
		{[]string{"account", "create", "acme", "--plan", "growth"}, []string{"acme", "already exists"}},
		{[]string{"account", "show", "nobody"}, []string{"nobody", "not found"}},
		{[]string{"account", "update", "acme", "--rate", "5"}, []string{"rate: "}},
		{[]string{"account", "update", "nobody", "--plan", "scale"}, []string{"nobody", "not found"}},
		{[]string{"key", "create", "--account", "acme"}, []string{"name: "}},
		{[]string{"key", "create", "--name", "n"}, []string{"account: "}},
		{[]string{"key", "create", "--account", "acme", "--name", "n", "--mode", "prod"}, []string{"mode: "}},
		{[]string{"key", "create", "--account", "acme", "--name", "n", "--scope", "emails send"}, []string{"scopes: "}},
		{[]string{"key", "create", "--account", "acme", "--name", "n", "--expires-at", "2001-01-01T00:00:00Z"}, []string{"expires_at: "}},
		{[]string{"key", "create", "--account", "acme", "--name", "n", "--expires-at", "tomorrow"}, []string{"--expires-at", "RFC 3339"}},
		{[]string{"key", "create", "--account", "acme", "--name", "n", "--expires-at", "9999-12-31T23:59:59Z"}, []string{"expires_at: ", "2200-01-01T00:00:00Z"}},
		{[]string{"key", "create", "--account", "acme", "--name", "n", "--expires-at", "2030-12-31T23:59:60Z"}, []string{"--expires-at: ", "leap second"}},
		{[]string{"key", "roll", "key_nope", "--expires-in", "1000000h"}, []string{"expires_in: ", "365d"}},
		{[]string{"key", "create", "--account", "nobody", "--name", "n"}, []string{"nobody", "not found"}},
		{[]string{"key", "list"}, []string{"account: "}},
		{[]string{"key", "list", "--account", "nobody"}, []string{"nobody", "not found"}},
		{[]string{"key", "show", "key_nope"}, []string{"key_nope", "not found"}},
		{[]string{"key", "revoke", "key_nope"}, []string{"key_nope", "not found"}},
		{[]string{"key", "roll", "key_nope"}, []string{"key_nope", "not found"}},
		{[]string{"key", "roll", testRolled.ID, "--expires-in", "soon"}, []string{"expires_in: "}},
		{[]string{"key", "roll", list[2].ID}, []string{"revoked"}},
		{[]string{"key", "import", write("bad.csv", "account,name,mode,key,hash\nacme,a,live,ps_live_fresh123,\nacme,b,live,,abc\n")}, []string{"keys[1].hash: "}},
		{[]string{"key", "import", write("nobody.json", `[{"account":"nobody","name":"a","key":"ps_live_fresh123"}]`)}, []string{"nobody", "not found"}},
		{[]string{"key", "import", write("dup.json", `[{"account":"acme","name":"a","key":"ps_live_fresh123"},{"account":"acme","name":"b","key":"ps_live_abc123xyz"}]`)}, []string{"already exists"}},
		{[]string{"key", "import", write("broken.json", `[{"account":`)}, []string{"broken.json"}},
		{[]string{"key", "import", filepath.Join(dir, "missing.csv")}, []string{"missing.csv"}},
	} {
		msg := cliFails(t, args(c.args...)...)
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("caddy postscale %s: error %q, want it to name %q", strings.Join(c.args, " "), msg, w)
			}
		}
		for k := range legacy {
			noSecret("an error", msg, k)
		}
	}
	// The refused import stored nothing: its first key does not exist.
	stdout, _ = run("key", "list", "--account", "acme")
	if strings.Contains(stdout, `"a"`) || strings.Contains(stdout, `"b"`) {
		t.Errorf("a refused import stored keys: %s", stdout)
	}

	return cliKeys{rolledOld: live, rolledNew: liveNew, testNew: testRolled.Key, revoked: toRevoke, legacy: legacy}
}

// checkCLIKeys checks at the gateway that the keys of a CLI session work
// as the session left them.
func checkCLIKeys(t *testing.T, backend *recorder, k cliKeys) {
	t.Helper()
	_, r := expectPassedMethod(t, backend, http.MethodGet, "/v1/emails", bearer(k.rolledOld))
	if r.header.Get("Deprecation") == "" || r.header.Get("Sunset") == "" {
		t.Errorf("rolled key: Deprecation %q, Sunset %q, want both", r.header.Get("Deprecation"), r.header.Get("Sunset"))
	}
	for _, key := range []string{k.rolledNew, k.testNew} {
		got := expectAdmitted(t, backend, key, "/v1/emails")
		if got.Header.Get("Postscale-Plan") != "scale" || got.Header.Get("Postscale-Mode") != key[3:7] {
			t.Errorf("%s: backend got plan %q, mode %q, want scale, %s", postscale.Redact(key), got.Header.Get("Postscale-Plan"), got.Header.Get("Postscale-Mode"), key[3:7])
		}
	}
	expectRejected(t, backend, revokedKey, "/v1/emails", bearer(k.revoked))
	for key, account := range k.legacy {
		got := expectAdmitted(t, backend, key, "/v1/emails")
		if a, m := got.Header.Get("Postscale-Account-Id"), got.Header.Get("Postscale-Mode"); a != account || m != key[3:7] {
			t.Errorf("imported %s: backend got account %q, mode %q, want %s, %s", postscale.Redact(key), a, m, account, key[3:7])
		}
	}
}

// A keyword/value DSN given to --store is a PostgreSQL database, never a
// SQLite file named after it (with the password in its name).
func TestCLIStoreKeywordDSN(t *testing.T) {
	dsn := testenv.Postgres(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	kv := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", cfg.Host, cfg.Port, cfg.User, cfg.Database)
	dir := t.TempDir()
	t.Chdir(dir)
	cli(t, "--store", kv, "account", "create", "acme", "--plan", "growth")
	if out := cli(t, "--store", dsn, "account", "show", "acme"); !strings.Contains(out, `"plan": "growth"`) {
		t.Errorf("the account is not in the PostgreSQL database: %s", out)
	}
	if files, _ := os.ReadDir(dir); len(files) != 0 {
		t.Errorf("--store with a keyword/value DSN created %d file(s) in the working directory, want none", len(files))
	}
}

// TestCLIRefusesKeyArguments: `caddy postscale key revoke ps_live_…` (the
// natural thing to type when a key has leaked), and any command given a
// key where an id, account, name or plan belongs, fails before sending
// anything: the admin endpoint receives no request, and neither the
// error, stdout, stderr nor Caddy's log shows more than the redacted
// form. The error says to use key revoke --key -.
func TestCLIRefusesKeyArguments(t *testing.T) {
	backend, store, logFile := startGatewayLogged(t, "legacy_keys", false)
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "leaked", "live")
	const legacy = "ps_live_abc123xyz"
	received := func() int {
		n := 0
		for _, line := range readLog(t, logFile) {
			if strings.Contains(line, `"msg":"received request"`) {
				n++
			}
		}
		return n
	}
	before := received()
	for _, key := range []string{k.Key, legacy, "ps_test_"} {
		for _, conn := range [][]string{{"--address", adminAddr}, {"--store", store}} {
			for _, c := range []struct {
				args []string
				// advice: the error is the CLI's own, with the way to
				// revoke by key (not a flag parser's, only scrubbed)
				advice bool
			}{
				{[]string{"key", "revoke", key}, true},
				{[]string{"key", "show", key}, true},
				{[]string{"key", "roll", key, "--expires-in", "1h"}, true},
				{[]string{"key", "revoke", "--key", key}, true},
				{[]string{"account", "show", key}, true},
				{[]string{"account", "update", key, "--plan", "scale"}, true},
				{[]string{"account", "create", key}, true},
				{[]string{"account", "create", "x", "--plan", key}, true},
				{[]string{"key", "list", "--account", key}, true},
				{[]string{"key", "create", "--account", "acme", "--name", "copy of " + key}, true},
				{[]string{"key", "create", "--account", "acme", "--name", "n", "--scope", "emails:send," + key}, true},
				{[]string{"key", "revoke", "--" + key}, false},
				{[]string{"account", "create", "y", "--rate", key}, false},
			} {
				args := append(append([]string{}, conn...), c.args...)
				stdout, stderr, err := runCLI(args...)
				shown := strings.ReplaceAll(strings.Join(args, " "), key, postscale.Redact(key))
				if err == nil {
					t.Errorf("caddy postscale %s succeeded", shown)
					continue
				}
				// (A flag parser's error comes with the usage on stdout here;
				// caddy's own root command silences it.)
				if c.advice && stdout != "" {
					t.Errorf("caddy postscale %s printed %q on stdout", shown, stdout)
				}
				for what, out := range map[string]string{"error": err.Error(), "stdout": stdout, "stderr": stderr} {
					if len(key) > len("ps_live_") && showsKey(out, key) != "" {
						t.Errorf("caddy postscale %s: the %s shows the key: %s", shown, what, out)
					}
				}
				if c.advice && (!strings.Contains(err.Error(), postscale.Redact(key)) || !strings.Contains(err.Error(), "key revoke --key -") || !strings.Contains(err.Error(), "nothing was sent")) {
					t.Errorf("caddy postscale %s: error %q, want the redacted form %s, nothing was sent and key revoke --key -", shown, err, postscale.Redact(key))
				}
			}
		}
	}
	if n := received() - before; n != 0 {
		t.Errorf("the admin endpoint received %d requests from refused commands; want none", n)
	}
	for _, line := range readLog(t, logFile) {
		if what := showsKey(line, k.Key, legacy); what != "" {
			t.Errorf("Caddy's log shows the key %s: %s", what, line)
		}
	}
	expectAdmitted(t, backend, k.Key, "/v1/emails") // nothing was revoked
}

// TestCLIRevokeByKey: `caddy postscale key revoke --key -` reads the key
// from stdin and revokes it, through the running instance (which rejects
// it on the very next request) and straight on the store; nothing it
// prints, and nothing in Caddy's log, shows the key.
func TestCLIRevokeByKey(t *testing.T) {
	t.Run("through the running instance", func(t *testing.T) {
		backend, _, logFile := startGatewayLogged(t, "legacy_keys", false)
		createAccount(t, "acme", "growth")
		k := createKey(t, "acme", "leaked", "live")
		other := createKey(t, "acme", "other", "live")
		const legacy = "ps_test_legacyleak77"
		adminCall(t, http.MethodPost, "/postscale/keys/import", map[string]any{"keys": []map[string]any{{"account": "acme", "name": "old", "key": legacy}}}, http.StatusCreated, nil)
		for _, key := range []string{k.Key, legacy} {
			expectAdmitted(t, backend, key, "/v1/emails") // cached
			stdout, stderr, err := runCLIIn(key+"\n", "--address", adminAddr, "key", "revoke", "--key", "-")
			if err != nil {
				t.Fatalf("key revoke --key -: %v\nstderr: %s", err, stderr)
			}
			var rec keyRecord
			if err := json.Unmarshal([]byte(stdout), &rec); err != nil || rec.RevokedAt == nil || rec.Redacted != postscale.Redact(key) {
				t.Errorf("key revoke --key - printed %q; want the revoked record", stdout)
			}
			if what := showsKey(stdout+stderr, key); what != "" {
				t.Errorf("key revoke --key - shows the key: %s %s", stdout, stderr)
			}
			expectRejected(t, backend, revokedKey, "/v1/emails", bearer(key))
		}
		expectAdmitted(t, backend, other.Key, "/v1/emails")

		unknown, _ := postscale.NewKey(postscale.ModeLive)
		for _, c := range []struct {
			stdin string
			args  []string
			want  string
		}{
			// the redacted form, as the instance wrote it (not redacted again)
			{unknown + "\n", []string{"key", "revoke", "--key", "-"}, "key " + postscale.Redact(unknown) + ": no key in the store matches it"},
			{"", []string{"key", "revoke", "--key", "-"}, "stdin holds no key"},
			{"sk_live_123\n", []string{"key", "revoke", "--key", "-"}, "key: is not a ps_live_"},
			{unknown, []string{"key", "revoke", "--key", "leaked.txt"}, "--key takes -"},
			{unknown, []string{"key", "revoke", k.ID, "--key", "-"}, "not both"},
			{"", []string{"key", "revoke"}, "--key -"},
		} {
			_, stderr, err := runCLIIn(c.stdin, append([]string{"--address", adminAddr}, c.args...)...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%v with stdin %q: error %v, want %q", c.args, postscale.Redact(c.stdin), err, c.want)
			}
			if err != nil && showsKey(err.Error()+stderr, unknown) != "" {
				t.Errorf("%v: shows the key: %v %s", c.args, err, stderr)
			}
		}
		for _, line := range readLog(t, logFile) {
			if what := showsKey(line, k.Key, legacy, unknown); what != "" {
				t.Errorf("Caddy's log shows the key %s: %s", what, line)
			}
		}
	})
	t.Run("straight on the store", func(t *testing.T) {
		store := storePath(t)
		cli(t, "--store", store, "account", "create", "acme", "--plan", "growth")
		k := cliCreateKeyJSON(t, "--store", store, "--account", "acme", "--name", "leaked")
		stdout, stderr, err := runCLIIn("  "+k.Key+"\r\n", "--store", store, "key", "revoke", "--key", "-")
		if err != nil {
			t.Fatalf("key revoke --key -: %v\nstderr: %s", err, stderr)
		}
		if !strings.Contains(stdout, `"id": "`+k.ID+`"`) || !strings.Contains(stdout, `"revoked_at"`) || showsKey(stdout+stderr, k.Key) != "" {
			t.Errorf("key revoke --key - printed %q, %q; want the revoked record of %s and no key", stdout, stderr, k.ID)
		}
		backend := newRecorder(t, "mail")
		loadCaddyfile(t, gatewaySite(store, backend.addr(), ""))
		expectRejected(t, backend, revokedKey, "/v1/emails", bearer(k.Key))
	})
}

// TestCLIPlanCheck: a plan no postscale handler defines is refused through
// the running instance and, straight on a store, when --config names the
// gateway's config; without one, a plan that is not built in is stored
// with a warning on stderr that it could not be checked.
func TestCLIPlanCheck(t *testing.T) {
	const known = "enterprise, growth, pro, scale, starter"
	t.Run("through the running instance", func(t *testing.T) {
		startGateway(t, "plan pro 5")
		msg := cliFails(t, "--address", adminAddr, "account", "create", "a", "--plan", "gold")
		if !strings.Contains(msg, `plan: no postscale handler defines the plan`) || !strings.Contains(msg, "gold") || !strings.Contains(msg, known) {
			t.Errorf("error %q, want the plan refused naming %s", msg, known)
		}
		_, stderr, err := runCLI("--address", adminAddr, "account", "create", "a", "--plan", "pro")
		if err != nil || strings.Contains(stderr, "Warning") {
			t.Errorf("plan pro: %v, stderr %q", err, stderr)
		}
		if msg := cliFails(t, "--address", adminAddr, "account", "update", "a", "--plan", "gold"); !strings.Contains(msg, known) {
			t.Errorf("update to gold: %q, want the known plans", msg)
		}
	})
	t.Run("straight on a store", func(t *testing.T) {
		dir := t.TempDir()
		store := filepath.Join(dir, "keys.db")
		withPlans := filepath.Join(dir, "Caddyfile")
		noPostscale := filepath.Join(dir, "other.caddyfile")
		for path, content := range map[string]string{
			withPlans:   gatewaySite(store, "localhost:1", "plan pro 5"),
			noPostscale: ":9080 {\n\trespond ok\n}\n",
		} {
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range []struct {
			args    []string
			fails   string // in the error
			warning string // in stderr; "" for none
		}{
			{[]string{"account", "create", "a", "--plan", "gold"}, "", `Warning: the plan "gold" is not built in and could not be checked: no running instance answered, and no --config`},
			{[]string{"account", "create", "b", "--plan", "growth"}, "", ""},
			{[]string{"account", "update", "b", "--plan", "silver"}, "", `Warning: the plan "silver"`},
			{[]string{"--config", withPlans, "account", "create", "c", "--plan", "pro"}, "", ""},
			{[]string{"--config", withPlans, "account", "create", "d", "--plan", "gold"}, known, ""},
			{[]string{"--config", withPlans, "account", "update", "b", "--plan", "gold"}, known, ""},
			{[]string{"--config", noPostscale, "--adapter", "caddyfile", "account", "create", "e", "--plan", "gold"}, "", "has no postscale handler"},
		} {
			args := append([]string{"--store", store}, c.args...)
			stdout, stderr, err := runCLI(args...)
			switch {
			case c.fails != "":
				if err == nil || !strings.Contains(err.Error(), c.fails) || stdout != "" {
					t.Errorf("%v: error %v, stdout %q; want an error naming %s", c.args, err, stdout, c.fails)
				}
			case err != nil:
				t.Errorf("%v: %v\nstderr: %s", c.args, err, stderr)
			case c.warning == "" && strings.Contains(stderr, "Warning"):
				t.Errorf("%v: stderr %q, want no warning", c.args, stderr)
			case c.warning != "" && !strings.Contains(stderr, c.warning):
				t.Errorf("%v: stderr %q, want the warning %q", c.args, stderr, c.warning)
			}
		}
	})
}

// TestCLIBinaryNeverPrintsAKey: the built caddy binary, as an operator
// runs it: a key given as an argument or a flag value fails (exit status
// 1) without anything on stdout and with only its redacted form on
// stderr, and `key revoke --key -` revokes the key piped to it.
func TestCLIBinaryNeverPrintsAKey(t *testing.T) {
	bin := gatewayBinary(t)
	store := storePath(t)
	cli(t, "--store", store, "account", "create", "acme", "--plan", "growth")
	k := cliCreateKeyJSON(t, "--store", store, "--account", "acme", "--name", "leaked")
	run := func(stdin string, args ...string) (stdout, stderr string, code int) {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"postscale", "--store", store}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		cmd.Stdin = strings.NewReader(stdin)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
	}
	for _, args := range [][]string{
		{"key", "revoke", k.Key},
		{"key", "show", k.Key},
		{"key", "revoke", "--key", k.Key},
		{"account", "create", "x", "--rate", k.Key},
		{"key", "revoke", "--" + k.Key},
	} {
		stdout, stderr, code := run("", args...)
		shown := strings.ReplaceAll(strings.Join(args, " "), k.Key, postscale.Redact(k.Key))
		if code != 1 || stdout != "" || showsKey(stderr, k.Key) != "" || !strings.Contains(stderr, postscale.Redact(k.Key)) {
			t.Errorf("caddy postscale %s: exit %d, stdout %q, stderr %q; want exit 1, nothing on stdout, the redacted form %s alone on stderr",
				shown, code, stdout, strings.ReplaceAll(stderr, k.Key, "<the key>"), postscale.Redact(k.Key))
		}
	}
	stdout, stderr, code := run(k.Key+"\n", "key", "revoke", "--key", "-")
	if code != 0 || !strings.Contains(stdout, `"revoked_at"`) || showsKey(stdout+stderr, k.Key) != "" {
		t.Errorf("key revoke --key -: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
