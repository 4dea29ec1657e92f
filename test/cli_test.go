package test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
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
// server within 1 second, though the server had it cached (SPEC §6).
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
