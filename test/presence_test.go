package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// sharedStoreWarning starts the log line of a gateway that finds another
// process serving its store.
const sharedStoreWarning = "another gateway process on this host serves the same store"

// warnings returns the decoded log lines of p that warn of another
// process serving its store.
func (p *proc) sharedStoreWarnings(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(p.logs.String(), "\n") {
		if !strings.Contains(line, sharedStoreWarning) {
			continue
		}
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Errorf("gateway %s: log line is not JSON: %s", p.name, line)
			continue
		}
		out = append(out, entry)
	}
	return out
}

// serving waits until p has started its config (Caddy logs "serving
// initial configuration" once every app has started).
func (p *proc) serving(t *testing.T) {
	t.Helper()
	if _, ok := waitFor(20*time.Second, func() bool { return p.logLines("serving initial configuration") > 0 }); !ok {
		t.Fatalf("gateway %s: not serving after 20s\n%s", p.name, p.logs.String())
	}
}

// TestSecondGatewayOnSameStore: a second gateway process on this host
// that serves the same SQLite store (here on the very same HTTP port, as
// a second ./xcaddy.sh run would) starts, but warns, naming the first by
// pid and admin address. The first does not warn, nor does a reload of
// it; a process that crashed is not named; the CLI beside them registers
// nothing; and once all have stopped, nothing is left beside the store.
func TestSecondGatewayOnSameStore(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "keys.db")
	port := freePort(t)
	site := func(extra string) string {
		return procGlobals + fmt.Sprintf(`:%d {
	postscale {
		store sqlite %s
		%s
	}
	respond ok
}
`, port, store, extra)
	}
	registry := store + ".gateways"
	entries := func() int {
		es, _ := os.ReadDir(registry)
		return len(es)
	}

	a := startProc(t, "A", site(""))
	a.serving(t)
	b := startProc(t, "B", site(""))
	b.serving(t)
	if w := a.sharedStoreWarnings(t); len(w) != 0 {
		t.Errorf("the first gateway warned: %v", w)
	}
	w := b.sharedStoreWarnings(t)
	if len(w) != 1 {
		t.Fatalf("the second gateway logged %d warnings of another process on its store, want 1\n%s", len(w), b.logs.String())
	}
	if w[0]["level"] != "warn" || w[0]["other_pid"] != float64(a.cmd.Process.Pid) || w[0]["other_admin"] != a.adminAddr ||
		w[0]["store"] != store || w[0]["processes"] != float64(2) {
		t.Errorf("warning %v; want level warn, other_pid %d, other_admin %s, store %s, processes 2", w[0], a.cmd.Process.Pid, a.adminAddr, store)
	}
	msg, _ := w[0]["msg"].(string)
	for _, want := range []string{"pid " + strconv.Itoa(a.cmd.Process.Pid), "admin endpoint " + a.adminAddr, "up to 2 times", "limiter redis"} {
		if !strings.Contains(msg, want) {
			t.Errorf("warning %q does not say %q", msg, want)
		}
	}
	if n := entries(); n != 2 {
		t.Errorf("%d entries in %s, want one per gateway (2)", n, registry)
	}

	// The CLI opens the store beside them, registers nothing, and says
	// which gateways serve the store and how to go through one.
	for _, args := range [][]string{
		{"--store", store, "account", "create", "acme", "--plan", "growth"},
		{"--store", store, "key", "list", "--account", "acme"},
	} {
		_, stderr, err := runCLI(args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.Contains(stderr, "Note: a running gateway serves this store (pid "+strconv.Itoa(a.cmd.Process.Pid)) ||
			!strings.Contains(stderr, "pid "+strconv.Itoa(b.cmd.Process.Pid)) || !strings.Contains(stderr, "give --address ") {
			t.Errorf("%v: stderr %q, want a note naming A and B and --address", args, stderr)
		}
	}
	if n := entries(); n != 2 {
		t.Errorf("after CLI commands, %d entries in %s, want 2", n, registry)
	}

	// Nor does caddy validate, which provisions the config without
	// serving it.
	cfgFile := filepath.Join(dir, "Caddyfile")
	writeFile(t, cfgFile, site(""))
	validate := exec.Command(gatewayBinary(t), "validate", "--config", cfgFile, "--adapter", "caddyfile")
	validate.Env = append(os.Environ(), "POSTSCALE_ADMIN=127.0.0.1:1", "POSTSCALE_LISTEN_PORT=1", "HOME="+dir)
	out, err := validate.CombinedOutput()
	if err != nil || strings.Contains(string(out), sharedStoreWarning) {
		t.Errorf("caddy validate: %v\n%s\nwant it valid, without a warning", err, out)
	}
	if n := entries(); n != 2 {
		t.Errorf("after caddy validate, %d entries in %s, want 2", n, registry)
	}

	// A reload in the same process keeps its registration: no warning.
	loads := a.logLines(`"load complete"`)
	req, err := http.NewRequest(http.MethodPost, "http://"+a.adminAddr+"/load", strings.NewReader(site("cache_ttl 4m")))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	if resp, body := send(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("reloading A: HTTP %d %s", resp.StatusCode, body)
	}
	if _, ok := waitFor(10*time.Second, func() bool { return a.logLines(`"load complete"`) > loads }); !ok {
		t.Fatalf("A did not finish the reload\n%s", a.logs.String())
	}
	if w := a.sharedStoreWarnings(t); len(w) != 0 {
		t.Errorf("a reload warned of another process: %v", w)
	}

	// A crashes; a third process names B alone.
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-a.done
	a.done <- nil
	c := startProc(t, "C", site(""))
	c.serving(t)
	w = c.sharedStoreWarnings(t)
	if len(w) != 1 || w[0]["other_pid"] != float64(b.cmd.Process.Pid) || w[0]["processes"] != float64(2) {
		t.Errorf("after A crashed, C warned %v; want one warning naming B (pid %d) alone", w, b.cmd.Process.Pid)
	}
	if n := entries(); n != 2 {
		t.Errorf("after A crashed and C started, %d entries in %s, want 2 (B and C; A's removed)", n, registry)
	}

	b.stop(t)
	c.stop(t)
	if _, err := os.Stat(registry); !os.IsNotExist(err) {
		es, _ := os.ReadDir(registry)
		t.Errorf("after every gateway stopped, %s is still there (%d entries)", registry, len(es))
	}
	d := startProc(t, "D", site(""))
	d.serving(t)
	if w := d.sharedStoreWarnings(t); len(w) != 0 {
		t.Errorf("a gateway alone on the store warned: %v", w)
	}
}

// TestReplicasOnPostgresDoNotWarn: several gateways sharing a PostgreSQL
// store are the intended design: none warns of the others.
func TestReplicasOnPostgresDoNotWarn(t *testing.T) {
	dsn := testenv.Postgres(t)
	site := replicaSite("127.0.0.1:1", "")
	a := startProc(t, "A", site, "PS_DSN="+dsn)
	b := startProc(t, "B", site, "PS_DSN="+dsn)
	a.serving(t)
	b.serving(t)
	for _, p := range []*proc{a, b} {
		if w := p.sharedStoreWarnings(t); len(w) != 0 {
			t.Errorf("gateway %s on PostgreSQL warned: %v", p.name, w)
		}
	}
}
