package test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/postscale/caddy-postscale"
)

// The in-process Caddy's admin endpoint and HTTP port, chosen free when
// the test binary starts (TestMain), so that test runs in several
// checkouts on one machine never load configs into each other's Caddy.
// Caddyfiles listen on :{$POSTSCALE_TEST_HTTP_PORT}; JSON configs use
// gatewayListen.
var (
	adminAddr     string
	adminURL      string
	gatewayURL    string
	gatewayListen string
	gatewayHost   string // localhost:<port>, for raw requests
	httpsPort     string
)

// choosePorts picks the in-process Caddy's ports and tells caddytest and
// the Caddyfile adapter about them.
func choosePorts() error {
	admin, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	http, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	https, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	httpsPort = strconv.Itoa(https)
	caddytest.Default.AdminPort = admin
	adminAddr = fmt.Sprintf("localhost:%d", admin)
	adminURL = "http://" + adminAddr
	gatewayListen = fmt.Sprintf(":%d", http)
	gatewayHost = fmt.Sprintf("localhost:%d", http)
	gatewayURL = "http://" + gatewayHost
	return os.Setenv("POSTSCALE_TEST_HTTP_PORT", strconv.Itoa(http))
}

// globalOptions starts every Caddyfile the tests load: the admin endpoint
// caddytest expects, the test's own ports, Caddy's log to caddyLog (unless
// extra sets the default log), and extra global options.
func globalOptions(extra string) string {
	logOption := caddyLogOption
	if setsDefaultLog(extra) {
		logOption = ""
	}
	return `{
	admin ` + adminAddr + `
	http_port {$POSTSCALE_TEST_HTTP_PORT}
	https_port ` + httpsPort + `
	auto_https off
	grace_period 1s
` + logOption + extra + `
}
`
}

// loadCaddyfile makes the in-process Caddy run the global options followed
// by sites, and unloads it when the test ends (before t.TempDir is removed,
// so the store file is closed first).
func loadCaddyfile(t *testing.T, sites string) {
	t.Helper()
	loadConfig(t, globalOptions("")+sites, "caddyfile")
}

// loadConfig loads a config of the given type ("caddyfile" or "json").
func loadConfig(t *testing.T, config, configType string) {
	t.Helper()
	showCaddyLogOnFailure(t)
	tester := caddytest.NewTester(t)
	// Registered before InitServer, so it runs after caddytest's own
	// cleanup (which prints the running config when a test failed).
	t.Cleanup(func() { unloadConfig(t) })
	tester.InitServer(config, configType)
	if t.Failed() {
		t.FailNow()
	}
}

func unloadConfig(t *testing.T) {
	resp, err := httpClient.Post(adminURL+"/load", "application/json", strings.NewReader(emptyConfig()))
	if err != nil {
		t.Errorf("unloading the config: %v", err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Errorf("unloading the config: HTTP %d: %s", resp.StatusCode, b)
	}
}

// storePath returns a fresh SQLite store path for this test only.
func storePath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "keys.db")
}

// gatewaySite is the plain gateway: postscale with the given store and
// extra subdirectives, then reverse_proxy to upstream.
func gatewaySite(store, upstream, extra string) string {
	return fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	postscale {
		store sqlite %s
		%s
	}
	reverse_proxy %s
}
`, store, extra, upstream)
}

// startGateway runs gatewaySite in front of a new recorder, on a new store.
func startGateway(t *testing.T, extra string) (*recorder, string) {
	t.Helper()
	rec := newRecorder(t, "mail")
	store := storePath(t)
	loadCaddyfile(t, gatewaySite(store, rec.addr(), extra))
	return rec, store
}

// ---- the recording backend ----

// recorded is one request as the backend received it.
type recorded struct {
	Method string
	URI    string
	Header http.Header
	Body   string
}

// recorder is a backend that records every request it receives and
// answers 200 with its name.
type recorder struct {
	name string
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

func newRecorder(t *testing.T, name string) *recorder {
	r := &recorder{name: name}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.reqs = append(r.reqs, recorded{Method: req.Method, URI: req.RequestURI, Header: req.Header.Clone(), Body: string(body)})
		r.mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, r.name)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// addr is the recorder's host:port, for reverse_proxy.
func (r *recorder) addr() string { return r.srv.Listener.Addr().String() }

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

// last returns the most recent request, failing the test if there is none.
func (r *recorder) last(t *testing.T) recorded {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reqs) == 0 {
		t.Fatalf("backend %s received no request", r.name)
	}
	return r.reqs[len(r.reqs)-1]
}

// ---- requests to the gateway ----

var httpClient = &http.Client{Timeout: 10 * time.Second}

type response struct {
	status int
	header http.Header
	body   []byte
}

// request sends method to the gateway's path with the given headers, each
// "Name: value" (added, so a name may repeat), and an optional body.
func request(t *testing.T, method, path, body string, headers ...string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, gatewayURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			t.Fatalf("bad test header %q", h)
		}
		req.Header.Add(name, strings.TrimLeft(value, " "))
	}
	resp, b := send(t, req)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func get(t *testing.T, path string, headers ...string) response {
	t.Helper()
	return request(t, http.MethodGet, path, "", headers...)
}

// sha256Hex is the SHA-256 of a key in hex, the form legacy imports take.
func sha256Hex(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// bearer is the Authorization header for a key.
func bearer(key string) string { return "Authorization: Bearer " + key }

// ---- the contract's error table (SPEC §5) ----

const (
	challenge        = `Bearer realm="postscale"`
	challengeInvalid = `Bearer realm="postscale", error="invalid_token"`
	challengeRequest = `Bearer realm="postscale", error="invalid_request"`
)

// rejection is one row of SPEC §5. An empty wwwAuth means the response
// must not carry WWW-Authenticate; retryAfter means it must carry
// Retry-After.
type rejection struct {
	status     int
	wwwAuth    string
	errType    string
	code       string
	retryAfter bool
}

var (
	missingKey       = rejection{401, challenge, "authentication_error", "missing_api_key", false}
	invalidKey       = rejection{401, challengeInvalid, "authentication_error", "invalid_api_key", false}
	revokedKey       = rejection{401, challengeInvalid, "authentication_error", "revoked_api_key", false}
	expiredKey       = rejection{401, challengeInvalid, "authentication_error", "expired_api_key", false}
	invalidRequest   = rejection{400, challengeRequest, "invalid_request_error", "invalid_request", false}
	credentialsInURL = rejection{400, challengeRequest, "invalid_request_error", "credentials_in_url", false}
	storeUnavailable = rejection{503, "", "api_error", "store_unavailable", true}
)

// assertRejected checks that r is the error response of row want: status,
// WWW-Authenticate, Content-Type, Retry-After and the JSON error body.
func assertRejected(t *testing.T, r response, want rejection) {
	t.Helper()
	if r.status != want.status {
		t.Errorf("status: got %d, want %d (body %s)", r.status, want.status, r.body)
	}
	gotAuth := r.header.Values("WWW-Authenticate")
	switch {
	case want.wwwAuth == "" && len(gotAuth) != 0:
		t.Errorf("WWW-Authenticate: got %q, want none", gotAuth)
	case want.wwwAuth != "" && (len(gotAuth) != 1 || gotAuth[0] != want.wwwAuth):
		t.Errorf("WWW-Authenticate: got %q, want [%q]", gotAuth, want.wwwAuth)
	}
	if got := r.header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type: got %q, want %q", got, "application/json")
	}
	if want.retryAfter {
		ra := r.header.Get("Retry-After")
		if n, err := strconv.Atoi(ra); err != nil || n < 1 {
			t.Errorf("Retry-After: got %q, want whole seconds >= 1", ra)
		}
	}
	var doc struct {
		Error struct {
			Type    string `json:"type"`
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(r.body, &doc); err != nil {
		t.Fatalf("body is not the JSON error document: %v: %s", err, r.body)
	}
	if doc.Error.Type != want.errType || doc.Error.Code != want.code {
		t.Errorf("error type/code: got %s/%s, want %s/%s", doc.Error.Type, doc.Error.Code, want.errType, want.code)
	}
	if doc.Error.Message == "" {
		t.Errorf("error message is empty; want one a developer can act on")
	}
}

// expectRejected sends a GET that must be rejected as want, and checks that
// nothing reached the backend.
func expectRejected(t *testing.T, backend *recorder, want rejection, path string, headers ...string) response {
	t.Helper()
	return expectRejectedMethod(t, backend, want, http.MethodGet, path, headers...)
}

// expectRejectedMethod is expectRejected for a request with any method.
func expectRejectedMethod(t *testing.T, backend *recorder, want rejection, method, path string, headers ...string) response {
	t.Helper()
	before := backend.count()
	r := request(t, method, path, "", headers...)
	assertRejected(t, r, want)
	if n := backend.count() - before; n != 0 {
		t.Errorf("%s %s: backend received %d request(s) for a rejected request; want none", method, path, n)
	}
	return r
}

// expectAdmitted sends a GET with key that must reach backend, and returns
// what the backend received.
func expectAdmitted(t *testing.T, backend *recorder, key, path string, headers ...string) recorded {
	t.Helper()
	return expectPassed(t, backend, path, append([]string{bearer(key)}, headers...)...)
}

// expectPassed sends a GET with exactly the given headers that must reach
// backend (and only once), and returns what the backend received.
func expectPassed(t *testing.T, backend *recorder, path string, headers ...string) recorded {
	t.Helper()
	got, _ := expectPassedMethod(t, backend, http.MethodGet, path, headers...)
	return got
}

// expectPassedMethod is expectPassed for a request with any method; it
// also returns the gateway's response.
func expectPassedMethod(t *testing.T, backend *recorder, method, path string, headers ...string) (recorded, response) {
	t.Helper()
	before := backend.count()
	r := request(t, method, path, "", headers...)
	if r.status != http.StatusOK || string(r.body) != backend.name {
		t.Fatalf("%s %s: got %d %q, want 200 %q from backend %s", method, path, r.status, r.body, backend.name, backend.name)
	}
	if n := backend.count() - before; n != 1 {
		t.Fatalf("%s %s: backend %s received %d requests, want 1", method, path, backend.name, n)
	}
	return backend.last(t), r
}

// ---- management through the admin API ----

// adminCall sends a JSON request to the admin endpoint, fails the test
// unless the answer has status want, and decodes the answer into out.
func adminCall(t *testing.T, method, path string, in any, want int, out any) {
	t.Helper()
	resp, b := adminDo(t, method, path, in)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: got HTTP %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
}

// adminDo sends a request to the admin endpoint with in as its JSON body
// (none when nil; a string is sent as it is), and returns the answer.
func adminDo(t *testing.T, method, path string, in any) (*http.Response, []byte) {
	t.Helper()
	var body io.Reader
	switch in := in.(type) {
	case nil:
	case string:
		body = strings.NewReader(in)
	default:
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, adminURL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	return send(t, req)
}

// send sends req and reads the whole answer.
func send(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", req.Method, req.URL.Path, err)
	}
	return resp, b
}

// adminError sends a request that the admin endpoint must refuse with
// status want and Caddy's JSON error body {"error": "…"}, and returns the
// message.
func adminError(t *testing.T, method, path string, in any, want int) string {
	t.Helper()
	resp, b := adminDo(t, method, path, in)
	if resp.StatusCode != want {
		t.Errorf("%s %s: got HTTP %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s %s: body %s is not a JSON object: %v", method, path, b, err)
	}
	msg, ok := doc["error"].(string)
	if !ok || msg == "" || len(doc) != 1 {
		t.Errorf("%s %s: body %s, want {\"error\": \"<message>\"}", method, path, b)
	}
	return msg
}

func createAccount(t *testing.T, id, plan string) {
	t.Helper()
	adminCall(t, http.MethodPost, "/postscale/accounts", map[string]any{"id": id, "plan": plan}, http.StatusCreated, nil)
}

// keyRecord is a key's record as the admin API and the CLI show it.
type keyRecord struct {
	ID           string     `json:"id"`
	Account      string     `json:"account"`
	Name         string     `json:"name"`
	Mode         string     `json:"mode"`
	Scopes       []string   `json:"scopes"`
	Redacted     string     `json:"redacted"`
	Legacy       bool       `json:"legacy"`
	CreatedAt    time.Time  `json:"created_at"`
	ExpiresAt    *time.Time `json:"expires_at"`
	RevokedAt    *time.Time `json:"revoked_at"`
	LastUsedAt   *time.Time `json:"last_used_at"`
	DeprecatedAt *time.Time `json:"deprecated_at"`
	Requests     int64      `json:"requests"`
}

// createdKey is the answer to a key creation or roll.
type createdKey struct {
	keyRecord
	Key string `json:"key"`
	// Replaces is the rolled key's record (rolls only).
	Replaces *keyRecord `json:"replaces"`
}

func createKey(t *testing.T, account, name, mode string) createdKey {
	t.Helper()
	return postKey(t, map[string]any{"account": account, "name": name, "mode": mode})
}

func postKey(t *testing.T, req map[string]any) createdKey {
	t.Helper()
	var k createdKey
	adminCall(t, http.MethodPost, "/postscale/keys", req, http.StatusCreated, &k)
	if k.ID == "" || k.Key == "" {
		t.Fatalf("POST /postscale/keys answered no id or key: %+v", k)
	}
	return k
}

func revokeKey(t *testing.T, id string) {
	t.Helper()
	adminCall(t, http.MethodDelete, "/postscale/keys/"+id, nil, http.StatusOK, nil)
}

// rollKey rolls a key through the admin API with the given grace period
// and returns the replacement, with the old record under Replaces.
func rollKey(t *testing.T, id, expiresIn string) createdKey {
	t.Helper()
	var k createdKey
	adminCall(t, http.MethodPost, "/postscale/keys/"+id+"/roll", map[string]any{"expires_in": expiresIn}, http.StatusCreated, &k)
	if k.ID == "" || k.Key == "" || k.Replaces == nil {
		t.Fatalf("POST /postscale/keys/%s/roll answered no id, key or replaces: %+v", id, k)
	}
	return k
}

// getKey returns a key's record through the admin API.
func getKey(t *testing.T, id string) keyRecord {
	t.Helper()
	var k keyRecord
	adminCall(t, http.MethodGet, "/postscale/keys/"+id, nil, http.StatusOK, &k)
	return k
}

// ---- the `caddy postscale` command, in-process ----

// runCLI runs `caddy postscale args…` and returns what it printed.
func runCLI(args ...string) (stdout, stderr string, err error) {
	return runCLIIn("", args...)
}

// cli runs the command and fails the test if it fails; it returns stdout.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, err := runCLI(args...)
	if err != nil {
		t.Fatalf("caddy postscale %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr)
	}
	return stdout
}

// cliFails runs a command that must fail without printing anything on
// stdout, and returns its error message.
func cliFails(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, err := runCLI(args...)
	if err == nil {
		t.Errorf("caddy postscale %s succeeded (stdout %q, stderr %q); want an error", strings.Join(args, " "), stdout, stderr)
		return ""
	}
	if stdout != "" {
		t.Errorf("caddy postscale %s failed but printed %q on stdout; want nothing a script could take for a result", strings.Join(args, " "), stdout)
	}
	return err.Error()
}
