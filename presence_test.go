package postscale

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestConfigAdmin: the warning of a second gateway on a store names the
// first one's admin address, read from its config. Caddy keeps the config
// unexported, so this catches a Caddy whose layout no longer lets it be
// read.
func TestConfigAdmin(t *testing.T) {
	for _, c := range []struct {
		admin *caddy.AdminConfig
		want  string
	}{
		{&caddy.AdminConfig{Listen: "127.0.0.1:2999"}, "127.0.0.1:2999"},
		{&caddy.AdminConfig{Listen: "unix//run/caddy-admin.sock"}, "unix//run/caddy-admin.sock"},
		{&caddy.AdminConfig{}, caddy.DefaultAdminListen},
		{nil, caddy.DefaultAdminListen},
		{&caddy.AdminConfig{Disabled: true}, "disabled"},
	} {
		ctx, err := caddy.ProvisionContext(&caddy.Config{Admin: c.admin})
		if err != nil {
			t.Fatal(err)
		}
		if got := configAdmin(ctx); got != c.want {
			t.Errorf("admin %+v: got %q, want %q", c.admin, got, c.want)
		}
	}
}

// TestPresenceInProcess: a process's own entry is never taken for another
// process's, a rewrite replaces it, and releasing it leaves nothing
// beside the store. (Other processes, and crashed ones, are tested with
// real processes: test/presence_test.go.)
func TestPresenceInProcess(t *testing.T) {
	store := filepath.Join(t.TempDir(), "keys.db")
	p, others, err := registerPresence(store, "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if len(others) != 0 {
		t.Errorf("got others %v, want none", others)
	}
	// A stale entry (its process gone: nobody holds it) is removed.
	stale := filepath.Join(presenceDir(store), "999999999-deadbeef")
	if err := os.WriteFile(stale, []byte(`{"pid":999999999}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.setAdmin("127.0.0.1:2"); err != nil {
		t.Fatal(err)
	}
	if others, err := gatewaysOf(store, true); err != nil || len(others) != 0 {
		t.Errorf("gatewaysOf: %v, %v; want none", others, err)
	}
	entries, _ := os.ReadDir(presenceDir(store))
	if len(entries) != 1 {
		t.Fatalf("%d entries, want this process's alone", len(entries))
	}
	if b, _ := os.ReadFile(filepath.Join(presenceDir(store), entries[0].Name())); !strings.Contains(string(b), `"admin":"127.0.0.1:2"`) {
		t.Errorf("entry %s, want the new admin address", b)
	}
	p.release()
	if _, err := os.Stat(presenceDir(store)); !os.IsNotExist(err) {
		t.Errorf("after release, %s is still there", presenceDir(store))
	}
}
