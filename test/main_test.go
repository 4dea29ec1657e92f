package test

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// testDir is the test binary's own temporary directory: Caddy's config
// and data directories (see testenv.IsolateCaddyDirs), the gateway binary
// and caddyLog. It is removed when the tests are done.
var testDir string

// caddyLog is where the in-process Caddy logs, instead of stderr, so a
// test run prints only failures. A test that fails shows the part of it
// written while it ran (showCaddyLogOnFailure). Key-shaped strings in URIs
// are replaced, as the README's log filter does.
var caddyLog string

// caddyLogOption is the global option that sends Caddy's default log to
// caddyLog, and caddyLogging the same in JSON (the config's "logging").
// Every config the tests load has one or the other, unless it sets the
// default log itself (see globalOptions): a config without them would put
// Caddy's log back on stderr.
var (
	caddyLogOption string
	caddyLogging   string
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	testDir, err = testenv.IsolateCaddyDirs()
	if err != nil {
		fmt.Fprintln(os.Stderr, "making the tests' Caddy directories:", err)
		return 2
	}
	defer os.RemoveAll(testDir)
	testenv.QuietRedis()
	if err := choosePorts(); err != nil {
		fmt.Fprintln(os.Stderr, "choosing test ports:", err)
		return 2
	}
	stdLog, err := startCaddy()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the in-process Caddy:", err)
		return 2
	}
	defer stdLog.Close()
	code := m.Run()
	if err := caddy.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the in-process Caddy:", err)
	}
	return code
}

// startCaddy starts the in-process Caddy that caddytest drives, logging to
// caddyLog from its first line. (caddytest finds its admin endpoint up and
// uses it rather than starting its own, which would log to stderr.) It
// returns the file Go's standard logger now writes to.
func startCaddy() (*os.File, error) {
	caddyLog = filepath.Join(testDir, "caddy.log")
	caddyLogOption = fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat filter {\n\t\t\twrap json\n\t\t\t%s\n\t\t}\n\t}\n", caddyLog, keyLogFilter)
	out, err := adapt("{\n" + caddyLogOption + "}\n")
	if err != nil {
		return nil, fmt.Errorf("adapting the log option: %v", err)
	}
	var cfg struct {
		Logging json.RawMessage `json:"logging"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil || len(cfg.Logging) == 0 {
		return nil, fmt.Errorf("no logging in the adapted log option %s (%v)", out, err)
	}
	caddyLogging = string(cfg.Logging)
	if err := testenv.LoadCaddy([]byte(emptyConfig())); err != nil {
		return nil, err
	}
	// Lines of Go's standard logger (caddytest's own, among others) go
	// there too. Caddy points it at stderr when its package starts.
	f, err := os.OpenFile(caddyLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	log.SetOutput(f)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	return f, nil
}

// emptyConfig is a config with nothing but the admin endpoint caddytest
// expects (and the log): what runs between tests.
func emptyConfig() string {
	return `{"admin":{"listen":"` + adminAddr + `"},"logging":` + caddyLogging + `}`
}

// setsDefaultLog tells whether global options set Caddy's default log (an
// unnamed `log` block); Caddy refuses two of them.
var setsDefaultLog = regexp.MustCompile(`(?m)^\s*log\s*\{`).MatchString

// showCaddyLogOnFailure shows, if t fails, what Caddy logged from now on
// until t's cleanup, the config's unloading included.
func showCaddyLogOnFailure(t *testing.T) {
	t.Helper()
	if showingLog[t] {
		return
	}
	showingLog[t] = true
	from := int64(0)
	if fi, err := os.Stat(caddyLog); err == nil {
		from = fi.Size()
	}
	t.Cleanup(func() {
		delete(showingLog, t)
		if !t.Failed() {
			return
		}
		f, err := os.Open(caddyLog)
		if err != nil {
			t.Logf("Caddy's log: %v", err)
			return
		}
		defer f.Close()
		b, err := io.ReadAll(io.NewSectionReader(f, from, 1<<40))
		if err != nil {
			t.Logf("Caddy's log: %v", err)
		}
		t.Logf("Caddy's log while the test ran:\n%s", b)
	})
}

// showingLog holds the tests that will show Caddy's log if they fail (the
// tests run one at a time: see doc.go).
var showingLog = map[*testing.T]bool{}
