package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// exists reports whether path exists.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestCLIFallsBackToStoreFile: only when nothing listens at the admin
// address (connection refused) does the command use a store directly,
// and it says on stderr which one and why: the default store without
// --config, creating it for a command that writes.
func TestCLIFallsBackToStoreFile(t *testing.T) {
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	const closed = "localhost:1" // nothing listens there
	store := filepath.Join(data, "caddy", "postscale", "keys.db")
	stdout, stderr, err := runCLI("--address", closed, "account", "create", "acme", "--plan", "growth")
	if err != nil {
		t.Fatalf("account create: %v\nstderr: %s", err, stderr)
	}
	want := "No Caddy admin endpoint at " + closed + " (connection refused); using the store at " + store +
		" (the default store; --config or --store names another) directly.\nCreated a new store at " + store + ".\n"
	if stderr != want {
		t.Errorf("stderr: got %q, want %q", stderr, want)
	}
	if !strings.Contains(stdout, `"id": "acme"`) {
		t.Errorf("stdout: got %q, want the account", stdout)
	}
	// The next command finds the store there, and says so again.
	stdout, stderr, err = runCLI("--address", closed, "account", "show", "acme")
	if err != nil || !strings.Contains(stdout, `"plan": "growth"`) {
		t.Errorf("account show: %v, stdout %q; want the account", err, stdout)
	}
	if want := "No Caddy admin endpoint at " + closed + " (connection refused); using the store at " + store; !strings.HasPrefix(stderr, want) || strings.Contains(stderr, "Created") {
		t.Errorf("account show: stderr %q, want it to start with %q and create nothing", stderr, want)
	}
}

// TestCLIReadOnlyNeverCreatesAStore: key list, key show and account show
// on a store that does not exist fail, saying there is no store at that
// path, and leave no file behind; before, they created an empty database
// and answered "not found".
func TestCLIReadOnlyNeverCreatesAStore(t *testing.T) {
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	dir := t.TempDir()
	missing := filepath.Join(dir, "typo.db")
	defaultStore := filepath.Join(data, "caddy", "postscale", "keys.db")
	for _, c := range []struct {
		args []string
		path string
	}{
		{[]string{"--store", missing, "key", "list", "--account", "acme"}, missing},
		{[]string{"--store", missing, "key", "show", "key_abc"}, missing},
		{[]string{"--store", missing, "account", "show", "acme"}, missing},
		{[]string{"--address", "localhost:1", "key", "list", "--account", "acme"}, defaultStore},
		{[]string{"--address", "localhost:1", "account", "show", "acme"}, defaultStore},
	} {
		msg := cliFails(t, c.args...)
		if !strings.Contains(msg, "no store at "+c.path) || !strings.Contains(msg, "Nothing was created") {
			t.Errorf("%v: error %q, want it to say there is no store at %s and nothing was created", c.args, msg, c.path)
		}
		if exists(c.path) {
			t.Errorf("%v created %s", c.args, c.path)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("read-only commands left %d file(s) in %s, want none", len(entries), dir)
	}
	if exists(filepath.Join(data, "caddy")) {
		t.Errorf("read-only commands created Caddy's data directory %s", filepath.Join(data, "caddy"))
	}
	// A file that is no store is not taken for an empty one.
	empty := fileIn(t, dir, "empty.db", "")
	if msg := cliFails(t, "--store", empty, "key", "list", "--account", "acme"); !strings.Contains(msg, "no store at "+empty) {
		t.Errorf("key list on an empty file: error %q, want no store at %s", msg, empty)
	}
	if fi, err := os.Stat(empty); err != nil || fi.Size() != 0 {
		t.Errorf("key list changed the empty file %s: %v", empty, err)
	}
}

// TestCLIStoreFromConfig: with no instance running, the command uses the
// store that the postscale handler of --config uses (adapted as caddy run
// adapts it), not the default one, and checks plans against that config.
func TestCLIStoreFromConfig(t *testing.T) {
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	defaultStore := filepath.Join(data, "caddy", "postscale", "keys.db")
	dir := t.TempDir()
	store := filepath.Join(dir, "gateway-keys.db")
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens there
	caddyfile := fileIn(t, dir, "Caddyfile", fmt.Sprintf(`{
	admin %s
}
:%d {
	postscale {
		store sqlite %s
		plan pro 5
	}
	respond ok
}
`, admin, freePort(t), store))
	conf := []string{"--config", caddyfile, "--adapter", "caddyfile"}
	run := func(args ...string) (string, string) {
		t.Helper()
		stdout, stderr, err := runCLI(append(append([]string{}, conf...), args...)...)
		if err != nil {
			t.Fatalf("%v: %v\nstderr: %s", args, err, stderr)
		}
		return stdout, stderr
	}
	_, stderr := run("account", "create", "acme", "--plan", "pro")
	want := "No Caddy admin endpoint at " + admin + " (connection refused); using the store at " + store + " (the store of " + caddyfile + ") directly.\n"
	if !strings.HasPrefix(stderr, want) {
		t.Errorf("account create: stderr %q, want it to start with %q", stderr, want)
	}
	key := cliCreateKey(t, append(append([]string{}, conf...), "--account", "acme", "--name", "web")...)
	stdout, _ := run("key", "list", "--account", "acme")
	var keys []keyRecord
	if err := json.Unmarshal([]byte(stdout), &keys); err != nil || len(keys) != 1 || keys[0].Redacted[len(keys[0].Redacted)-4:] != key[len(key)-4:] {
		t.Errorf("key list: %s (%v), want the one key", stdout, err)
	}
	if exists(defaultStore) {
		t.Errorf("the default store %s was created; want the config's store only", defaultStore)
	}
	if out := cli(t, "--store", store, "account", "show", "acme"); !strings.Contains(out, `"plan": "pro"`) {
		t.Errorf("the config's store %s does not hold the account: %s", store, out)
	}
	// Plans are those of the config (item 2): gold is refused, naming them.
	msg := cliFails(t, append(append([]string{}, conf...), "account", "update", "acme", "--plan", "gold")...)
	if !strings.Contains(msg, `no postscale handler defines the plan "gold"`) || !strings.Contains(msg, "enterprise, growth, pro, scale, starter") {
		t.Errorf("account update --plan gold: error %q, want it refused naming the plans", msg)
	}

	// A config whose handlers use two stores, or none, names no one store.
	two := fileIn(t, dir, "two.caddyfile", fmt.Sprintf(`{
	admin %s
}
:%d {
	postscale {
		store sqlite %s
	}
	respond ok
}
:%d {
	postscale {
		store sqlite %s
	}
	respond ok
}
`, admin, freePort(t), store, freePort(t), filepath.Join(dir, "other.db")))
	none := fileIn(t, dir, "none.caddyfile", fmt.Sprintf("{\n\tadmin %s\n}\n:%d {\n\trespond ok\n}\n", admin, freePort(t)))
	for file, want := range map[string]string{two: "uses 2 stores", none: "has no postscale handler"} {
		msg := cliFails(t, "--config", file, "account", "show", "acme")
		if !strings.Contains(msg, want) || !strings.Contains(msg, "--store") {
			t.Errorf("--config %s: error %q, want %q and a pointer to --store", filepath.Base(file), msg, want)
		}
	}
}

// TestCLINoFallbackWhenUnsure: an admin address that cannot be reached for
// another reason than a refused connection (here, a port that does not
// exist) is an error, and no store is opened or created; before, the
// command silently used the default store.
func TestCLINoFallbackWhenUnsure(t *testing.T) {
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	for _, addr := range []string{"localhost:99999", "localhost:20l9"} {
		_, stderr, err := runCLI("--address", addr, "account", "create", "acme", "--plan", "growth")
		if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "--store") {
			t.Errorf("--address %s: error %v, want one naming the address and --store", addr, err)
		}
		if strings.Contains(stderr, "using the store") {
			t.Errorf("--address %s: stderr %q; want no store used", addr, stderr)
		}
	}
	if exists(filepath.Join(data, "caddy")) {
		t.Errorf("a store was created under %s", data)
	}
}
