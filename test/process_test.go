package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// ---- the gateway as a process ----
//
// caddytest runs one Caddy per test binary, so tests of several replicas,
// restarts and shipped Caddyfiles run the gateway as processes: the
// module's cmd/caddy (Caddy's standard modules plus this plugin, what
// ./xcaddy.sh builds), built once per test run.

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// gatewayBinary builds cmd/caddy once and returns its path.
func gatewayBinary(t *testing.T) string {
	t.Helper()
	binaryOnce.Do(func() {
		binaryPath = filepath.Join(testDir, "bin", "caddy")
		cmd := exec.Command("go", "build", "-o", binaryPath, "../cmd/caddy")
		// The user's environment, not the tests': the go command reads
		// its settings (go env -w) from the user's config directory.
		cmd.Env = append(slices.Clip(testenv.UserEnv), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binaryErr = fmt.Errorf("go build ../cmd/caddy: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	port, err := freeLoopbackPort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// proc is one gateway process. Its Caddyfile reads its admin address and
// HTTP port from {$POSTSCALE_ADMIN} and {$POSTSCALE_LISTEN_PORT}, which the
// harness sets, beside whatever env the test gives.
type proc struct {
	name      string
	config    string // Caddyfile path
	env       []string
	adminAddr string
	httpPort  int

	cmd  *exec.Cmd
	logs *syncBuffer
	done chan error
}

// procSite is the global options every test Caddyfile of a process starts
// with.
const procGlobals = `{
	admin {$POSTSCALE_ADMIN}
	http_port {$POSTSCALE_LISTEN_PORT}
	auto_https off
	grace_period 2s
}
`

// startProc writes caddyfile and runs a gateway process on it with env
// ("NAME=value"), waits until its admin endpoint answers, and stops it
// when the test ends. Its log is printed only if the test fails.
func startProc(t *testing.T, name, caddyfile string, env ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, config: path, env: env}
	p.adminAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p.httpPort = freePort(t)
	p.env = append(p.env,
		"POSTSCALE_ADMIN="+p.adminAddr,
		"POSTSCALE_LISTEN_PORT="+strconv.Itoa(p.httpPort),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
		"HOME="+dir,
	)
	p.start(t)
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("log of gateway %s:\n%s", p.name, p.logs.String())
		}
	})
	return p
}

// start runs the process (again, after stop) on the same ports.
func (p *proc) start(t *testing.T) {
	t.Helper()
	p.logs = new(syncBuffer)
	p.cmd = exec.Command(gatewayBinary(t), "run", "--config", p.config, "--adapter", "caddyfile")
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting gateway %s: %v", p.name, err)
	}
	p.done = make(chan error, 1)
	go func() { p.done <- p.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := httpClient.Get("http://" + p.adminAddr + "/config/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("gateway %s exited while starting: %v\n%s", p.name, err, p.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway %s: admin endpoint not up after 30s\n%s", p.name, p.logs.String())
		}
	}
}

// stop stops the process gracefully (SIGINT, as Ctrl-C), killing it if it
// has not exited within 15 s.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case err := <-p.done: // already gone
		p.done <- err
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Errorf("gateway %s did not stop within 15s of SIGINT", p.name)
		<-p.done
	}
}

// url is the gateway's HTTP URL of path.
func (p *proc) url(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", p.httpPort, path)
}

// send makes one request to the gateway with key (none when empty).
func (p *proc) send(t *testing.T, method, path, key string) response {
	t.Helper()
	req, err := http.NewRequest(method, p.url(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, b := send(t, req)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// admin sends a JSON request to the process's admin endpoint, fails the
// test unless the answer has status want, and decodes it into out.
func (p *proc) admin(t *testing.T, method, path string, in any, want int, out any) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+p.adminAddr+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, b := send(t, req)
	if resp.StatusCode != want {
		t.Fatalf("gateway %s: %s %s: got HTTP %d %s, want %d", p.name, method, path, resp.StatusCode, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("gateway %s: %s %s: decoding %s: %v", p.name, method, path, b, err)
		}
	}
}

// createAccount creates an account through the process's admin API.
func (p *proc) createAccount(t *testing.T, id, plan string) {
	t.Helper()
	p.admin(t, http.MethodPost, "/postscale/accounts", map[string]any{"id": id, "plan": plan}, http.StatusCreated, nil)
}

// createKey creates a key through the process's admin API.
func (p *proc) createKey(t *testing.T, account, mode string) createdKey {
	t.Helper()
	var k createdKey
	p.admin(t, http.MethodPost, "/postscale/keys", map[string]any{"account": account, "name": "replica test", "mode": mode}, http.StatusCreated, &k)
	if k.Key == "" {
		t.Fatalf("gateway %s: key creation answered no key", p.name)
	}
	return k
}

// logLines counts the lines of the process's log that contain s.
func (p *proc) logLines(s string) int {
	n := 0
	for _, line := range strings.Split(p.logs.String(), "\n") {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test
// reading.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond every few milliseconds until it holds or d passes,
// and reports how long it took.
func waitFor(d time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(2 * time.Millisecond)
	}
}
