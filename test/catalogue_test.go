package test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	postscale "github.com/postscale/caddy-postscale"
)

// The bad-input catalogue: what a hostile or careless client can send, each
// case with the answer the contract documents (README, Errors; the server's own
// refusal where a request never reaches the gateway), checking that nothing
// unverified reaches the backend and that the gateway keeps serving a
// well-behaved client throughout (one in the background, and a cached key
// between cases). The closing note of the hardening issue lists these cases
// with their answers; keep the two in step.

// catalogueSite is the gateway of the catalogue: /open* needs no key (so
// trailers and forged headers can be tried on an open path too), and a
// plan large enough that no case is rate-limited. It speaks HTTP/1.1 and
// cleartext HTTP/2 (h2c).
func catalogueSite(store, upstream string) string {
	return globalOptions(`	servers {
		protocols h1 h2c
	}`) + fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	@protected not path /open*
	postscale @protected {
		store sqlite %s
		plan bulk 100000
	}
	reverse_proxy %s
}
`, store, upstream)
}

// catBackend is the catalogue's backend: it records every request with its
// trailers and body size, and says when a request has arrived (before its
// body is read), so a test can tell streaming from buffering.
type catBackend struct {
	srv     *http.Server
	ln      net.Listener
	mu      sync.Mutex
	reqs    []catRecord
	arrived chan struct{}
	// ignore is the key id of the well-behaved client, whose requests
	// since leaves out.
	ignore atomic.Value // string
}

// catRecord is one request as the backend received it.
type catRecord struct {
	URI      string
	Header   http.Header
	Trailer  http.Header
	BodySize int64
	ignored  bool
}

func newCatBackend(t *testing.T) *catBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &catBackend{ln: ln, arrived: make(chan struct{}, 16)}
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Postscale-Key-Id") == b.ignored() {
			_, _ = io.Copy(io.Discard, r.Body)
			b.mu.Lock()
			b.reqs = append(b.reqs, catRecord{ignored: true})
			b.mu.Unlock()
			_, _ = io.WriteString(w, "mail")
			return
		}
		select {
		case b.arrived <- struct{}{}:
		default:
		}
		n, _ := io.Copy(io.Discard, r.Body)
		b.mu.Lock()
		b.reqs = append(b.reqs, catRecord{URI: r.RequestURI, Header: r.Header.Clone(), Trailer: r.Trailer.Clone(), BodySize: n})
		b.mu.Unlock()
		_, _ = io.WriteString(w, "mail")
	})}
	go func() { _ = b.srv.Serve(ln) }()
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func (b *catBackend) addr() string { return b.ln.Addr().String() }

func (b *catBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.reqs)
}

func (b *catBackend) ignored() string { s, _ := b.ignore.Load().(string); return s }

// since returns the requests received after the first n, but the
// well-behaved client's.
func (b *catBackend) since(n int) []catRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []catRecord
	for _, r := range b.reqs[n:] {
		if !r.ignored {
			out = append(out, r)
		}
	}
	return out
}

// ---- ways of sending ----

// rawHTTP sends raw bytes to the gateway over one TCP connection (for what
// Go's client refuses to send: control characters, repeated or folded
// headers, trailers) and reads one response. The bytes go out from a
// goroutine, so a server that answers and closes before reading them all
// still gives its answer.
func rawHTTP(t *testing.T, raw string) response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", gatewayHost, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	go func() { _, _ = io.WriteString(conn, raw) }()
	return readRaw(t, conn)
}

func readRaw(t *testing.T, conn net.Conn) response {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// rawGET is a raw HTTP/1.1 GET of /v1/emails with the given header lines.
func rawGET(headerLines ...string) string {
	return "GET /v1/emails HTTP/1.1\r\nHost: " + gatewayHost + "\r\n" + strings.Join(headerLines, "\r\n") + "\r\nConnection: close\r\n\r\n"
}

// chunked is a raw chunked POST to path with the given header lines, body
// and trailer lines.
func chunked(path string, headerLines []string, body string, trailerLines ...string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "POST %s HTTP/1.1\r\nHost: "+gatewayHost+"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n", path)
	for _, h := range headerLines {
		sb.WriteString(h + "\r\n")
	}
	sb.WriteString("\r\n")
	fmt.Fprintf(&sb, "%x\r\n%s\r\n0\r\n", len(body), body)
	for _, tr := range trailerLines {
		sb.WriteString(tr + "\r\n")
	}
	sb.WriteString("\r\n")
	return sb.String()
}

// h2cClient speaks cleartext HTTP/2 with prior knowledge.
func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &p}}
}

// h2c20KB is a fresh HTTP/2 client (the server ends its connection) and
// a GET with key.
func h2c20KB(t *testing.T, key string) (*http.Client, *http.Request) {
	req, err := http.NewRequest(http.MethodGet, gatewayURL+"/v1/emails", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	return h2cClient(), req
}

// h2cRequest sends req with c and reads the answer.
func h2cRequest(c *http.Client, req *http.Request) (response, error) {
	resp, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// viaH2C sends a GET over HTTP/2 with the given headers ("Name: value",
// repeatable) and checks that HTTP/2 was spoken.
func viaH2C(t *testing.T, c *http.Client, path string, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, gatewayURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Add(name, strings.TrimLeft(value, " "))
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("h2c GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.ProtoMajor != 2 {
		t.Fatalf("h2c GET %s: answered over %s, want HTTP/2", path, resp.Proto)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// ---- expectations ----

// want is the answer a case must get: the gateway's JSON rejection, the
// HTTP server's own refusal (status only: the request never reached the
// gateway), or admission (passed to the backend, tagged by the gateway).
// orReject allows a rejection besides admission where the contract leaves
// the choice to the implementation.
type want struct {
	reject   *rejection
	server   int
	admitted bool
	orReject *rejection
	// open: an open path; passed on without any Postscale-* field.
	open bool
}

func rejectedAs(r rejection) want { return want{reject: &r} }

// serverRefuses is the HTTP server's own answer, before the gateway; 0
// means it ends the connection without a status.
func serverRefuses(status int) want {
	if status == 0 {
		return want{server: -1}
	}
	return want{server: status}
}

var (
	admittedWant = want{admitted: true}
	openWant     = want{open: true}
)

func (w want) String() string {
	switch {
	case w.reject != nil:
		return fmt.Sprintf("%d %s", w.reject.status, w.reject.code)
	case w.server > 0:
		return fmt.Sprintf("%d from the HTTP server", w.server)
	case w.server < 0:
		return "the connection ended by the HTTP server"
	case w.orReject != nil:
		return "200 (passed on) or " + fmt.Sprintf("%d %s", w.orReject.status, w.orReject.code)
	case w.open:
		return "200 (open path, untagged)"
	}
	return "200 (passed on, tagged)"
}

// catCase is one row of the catalogue.
type catCase struct {
	name string
	send func(t *testing.T) response
	want want
}

// TestBadInputCatalogue runs every row of the catalogue against a real
// Caddy.
func TestBadInputCatalogue(t *testing.T) {
	backend := newCatBackend(t)
	store := storePath(t)
	loadConfig(t, catalogueSite(store, backend.addr()), "caddyfile")
	createAccount(t, "acme", "bulk")
	health := createKey(t, "acme", "health", "live")
	k := createKey(t, "acme", "catalogue", "live")
	tk := createKey(t, "acme", "catalogue test", "test")
	for _, key := range []string{health.Key, k.Key, tk.Key} {
		if r := get(t, "/v1/emails", bearer(key)); r.status != http.StatusOK {
			t.Fatalf("warming the cache: %d %s", r.status, r.body)
		}
	}
	backend.ignore.Store(health.ID)
	keyIDs := map[string]string{k.Key: k.ID, tk.Key: tk.ID}

	// A well-behaved client in the background the whole time.
	bg := startBackgroundClient(health.Key)
	defer func() {
		n, failed, worst := bg.stop()
		t.Logf("background client: %d requests during the catalogue, %d not 200, slowest %v", n, failed, worst)
		if failed != 0 {
			t.Errorf("the background client's cached key got %d answers other than 200 during the catalogue (first: %s)", failed, bg.firstFailure())
		}
	}()

	h2 := h2cClient()
	key := k.Key
	long := func(n int) string { return "ps_live_" + strings.Repeat("a", n) }
	q := url.QueryEscape
	// queryCase is a GET of /v1/emails with the query (sent as it is) and a
	// valid key in the header, so only the query can be what is refused.
	queryCase := func(query string) func(t *testing.T) response {
		return func(t *testing.T) response {
			return rawHTTP(t, "GET /v1/emails?"+query+" HTTP/1.1\r\nHost: "+gatewayHost+"\r\n"+bearer(key)+"\r\nConnection: close\r\n\r\n")
		}
	}

	cases := []catCase{
		// -- the key's length --
		{name: "key of 39 body characters (one too many)", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer(key+"x")) }, want: rejectedAs(invalidKey)},
		{name: "key of 200 characters", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer(long(200))) }, want: rejectedAs(invalidKey)},
		// Caddy reads at most 16 KB of request headers (max_header_size).
		{name: "key of 8 KB", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer(long(8<<10))) }, want: rejectedAs(invalidKey)},
		{name: "Authorization of 15 KB (under Caddy's 16 KB header limit)", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer(long(15<<10))) }, want: rejectedAs(invalidKey)},
		{name: "Authorization of 20 KB (over the header limit)", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(long(20<<10)))) }, want: serverRefuses(http.StatusRequestHeaderFieldsTooLarge)},
		{name: "Authorization of 2 MB", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(long(2<<20)))) }, want: serverRefuses(http.StatusRequestHeaderFieldsTooLarge)},
		// Over HTTP/2 the header block is refused while it is decoded: the
		// server ends the connection (GOAWAY COMPRESSION_ERROR); no status.
		{name: "Authorization of 20 KB over HTTP/2", send: func(t *testing.T) response {
			_, err := h2cRequest(h2c20KB(t, long(20<<10)))
			if err == nil {
				return response{status: http.StatusOK}
			}
			return response{status: 0, body: []byte(err.Error())}
		}, want: serverRefuses(0)},
		{name: "valid key beside 2 MB of other headers", send: func(t *testing.T) response {
			return rawHTTP(t, rawGET(bearer(key), "X-Pad: "+strings.Repeat("p", 2<<20)))
		}, want: serverRefuses(http.StatusRequestHeaderFieldsTooLarge)},
		{name: "valid key beside 500 other headers", send: func(t *testing.T) response {
			hs := []string{bearer(key)}
			for i := range 500 {
				hs = append(hs, fmt.Sprintf("X-Pad-%d: %d", i, i))
			}
			return get(t, "/v1/emails", hs...)
		}, want: admittedWant},

		// -- what the key is made of --
		{name: "non-ASCII key (UTF-8)", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer("ps_live_"+strings.Repeat("é", 19))) }, want: rejectedAs(invalidKey)},
		{name: "valid key with a UTF-8 character appended", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer(key+"é")) }, want: rejectedAs(invalidKey)},
		{name: "Latin-1 byte in the key", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(key[:20]+"\xe9"+key[21:]))) }, want: rejectedAs(invalidKey)},
		{name: "NUL in the key", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(key[:20]+"\x00"+key[21:]))) }, want: serverRefuses(http.StatusBadRequest)},
		{name: "NUL after a valid key", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(key+"\x00"))) }, want: serverRefuses(http.StatusBadRequest)},
		{name: "control character (0x01) in the key", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(key[:20]+"\x01"+key[21:]))) }, want: serverRefuses(http.StatusBadRequest)},
		{name: "DEL (0x7f) after a valid key", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(key+"\x7f"))) }, want: serverRefuses(http.StatusBadRequest)},
		{name: "bare CR in the key", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(key[:20]+"\r"+key[21:]))) }, want: serverRefuses(http.StatusBadRequest)},
		{name: "tab inside the key", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer(key[:20]+"\t"+key[21:])) }, want: rejectedAs(invalidKey)},
		{name: "space inside the key", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer(key[:20]+" "+key[21:])) }, want: rejectedAs(invalidKey)},
		{name: "quoted key", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer(`"`+key+`"`)) }, want: rejectedAs(invalidKey)},
		{name: "percent-encoded key", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer(strings.ReplaceAll(key, "_", "%5F"))) }, want: rejectedAs(invalidKey)},
		{name: "test key with the live prefix", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer("ps_live_"+tk.Key[len("ps_test_"):])) }, want: rejectedAs(invalidKey)},
		{name: "key in lower case", send: func(t *testing.T) response { return get(t, "/v1/emails", bearer(strings.ToLower(key))) }, want: rejectedAs(invalidKey)},
		// Go's server replaces an obs-fold with a space, as RFC 9112 §5.2
		// allows: the gateway then sees "Bearer <key>".
		{name: "key folded onto a continuation line (obs-fold)", send: func(t *testing.T) response {
			return rawHTTP(t, rawGET("Authorization: Bearer\r\n "+key))
		}, want: admittedWant},

		// -- several Authorization headers --
		{name: "two Authorization headers (HTTP/1.1)", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(key), bearer(key))) }, want: rejectedAs(invalidRequest)},
		{name: "two Authorization headers, second empty (HTTP/1.1)", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(key), "Authorization:")) }, want: rejectedAs(invalidRequest)},
		{name: "Authorization and authorization (HTTP/1.1)", send: func(t *testing.T) response { return rawHTTP(t, rawGET(bearer(key), "authorization: Bearer "+key)) }, want: rejectedAs(invalidRequest)},
		{name: "two keys in one header, comma-separated", send: func(t *testing.T) response { return get(t, "/v1/emails", "Authorization: Bearer "+key+", Bearer "+key) }, want: rejectedAs(invalidKey)},
		{name: "one Authorization header over HTTP/2", send: func(t *testing.T) response { return viaH2C(t, h2, "/v1/emails", bearer(key)) }, want: admittedWant},
		{name: "two Authorization headers over HTTP/2", send: func(t *testing.T) response { return viaH2C(t, h2, "/v1/emails", bearer(key), bearer(key)) }, want: rejectedAs(invalidRequest)},
		{name: "Bearer and Basic over HTTP/2", send: func(t *testing.T) response {
			return viaH2C(t, h2, "/v1/emails", bearer(key), "Authorization: Basic "+base64.StdEncoding.EncodeToString([]byte("acme:x")))
		}, want: rejectedAs(invalidRequest)},
		{name: "no key over HTTP/2", send: func(t *testing.T) response { return viaH2C(t, h2, "/v1/emails") }, want: rejectedAs(missingKey)},
		{name: "forged Postscale-Account-Id over HTTP/2", send: func(t *testing.T) response {
			return viaH2C(t, h2, "/v1/emails", bearer(key), "Postscale-Account-Id: mallory", "Postscale-Mode: test")
		}, want: admittedWant},

		// -- spacing and the scheme --
		{name: "Bearer, two spaces", send: func(t *testing.T) response { return get(t, "/v1/emails", "Authorization: Bearer  "+key) }, want: admittedWant},
		{name: "Bearer, tab", send: func(t *testing.T) response { return get(t, "/v1/emails", "Authorization: Bearer\t"+key) }, want: want{admitted: true, orReject: &invalidKey}},
		{name: "leading and trailing spaces", send: func(t *testing.T) response { return rawHTTP(t, rawGET("Authorization:    Bearer "+key+"   ")) }, want: admittedWant},
		{name: "trailing tab", send: func(t *testing.T) response { return rawHTTP(t, rawGET("Authorization: Bearer "+key+"\t")) }, want: admittedWant},
		{name: "scheme bearer", send: func(t *testing.T) response { return get(t, "/v1/emails", "Authorization: bearer "+key) }, want: admittedWant},
		{name: "scheme BEARER", send: func(t *testing.T) response { return get(t, "/v1/emails", "Authorization: BEARER "+key) }, want: admittedWant},
		{name: "scheme bEaReR", send: func(t *testing.T) response { return get(t, "/v1/emails", "Authorization: bEaReR "+key) }, want: admittedWant},
		{name: "Bearer without a space", send: func(t *testing.T) response { return get(t, "/v1/emails", "Authorization: Bearer"+key) }, want: rejectedAs(missingKey)},
		// "Bearer:" is no scheme name, but a client that wrote it meant
		// Bearer: tell it its credential is malformed rather than missing.
		{name: "Bearer with a colon", send: func(t *testing.T) response { return get(t, "/v1/emails", "Authorization: Bearer: "+key) }, want: rejectedAs(invalidKey)},
		{name: "key without a scheme", send: func(t *testing.T) response { return get(t, "/v1/emails", "Authorization: "+key) }, want: rejectedAs(missingKey)},
		{name: "Basic with the key as password", send: func(t *testing.T) response {
			return get(t, "/v1/emails", "Authorization: Basic "+base64.StdEncoding.EncodeToString([]byte("acme:"+key)))
		}, want: rejectedAs(missingKey)},
		{name: "Bearer, key, then another word", send: func(t *testing.T) response { return get(t, "/v1/emails", "Authorization: Bearer "+key+" extra") }, want: rejectedAs(invalidKey)},
		{name: "Bearer and spaces only", send: func(t *testing.T) response { return rawHTTP(t, rawGET("Authorization: Bearer    ")) }, want: rejectedAs(invalidKey)},
		{name: "empty Authorization", send: func(t *testing.T) response { return rawHTTP(t, rawGET("Authorization:")) }, want: rejectedAs(missingKey)},

		// -- keys in the query --
		{name: "query api_key", send: queryCase("api_key=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query access_token", send: queryCase("access_token=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query key", send: queryCase("key=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query apikey", send: queryCase("apikey=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query API_KEY", send: queryCase("API_KEY=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query Access_Token", send: queryCase("Access_Token=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query KEY", send: queryCase("KEY=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query key without a value", send: queryCase("key"), want: rejectedAs(credentialsInURL)},
		{name: "query key, empty value", send: queryCase("key="), want: rejectedAs(credentialsInURL)},
		{name: "query key after other parameters", send: queryCase("to=a%40example.com&page=2&key=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query key after empty pairs", send: queryCase("&&api_key=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query api_key after ;", send: queryCase("a=1;api_key=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query access_token[]", send: queryCase("access_token[]=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query api_key[] percent-encoded", send: queryCase("api_key%5B%5D=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query api%5Fkey", send: queryCase("api%5Fkey=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query %61pi_key", send: queryCase("%61pi_key=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query access%5ftoken", send: queryCase("access%5ftoken=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query %6B%65%79", send: queryCase("%6B%65%79=" + key), want: rejectedAs(credentialsInURL)},
		{name: "query key, value percent-encoded", send: queryCase("key=" + q(key)), want: rejectedAs(credentialsInURL)},
		{name: "query key without Authorization", send: func(t *testing.T) response { return get(t, "/v1/emails?api_key="+key) }, want: rejectedAs(credentialsInURL)},
		{name: "query key over HTTP/2", send: func(t *testing.T) response { return viaH2C(t, h2, "/v1/emails?access_token="+key, bearer(key)) }, want: rejectedAs(credentialsInURL)},
		{name: "query parameters that only contain key", send: queryCase("monkey=1&key_id=2&keys=3&a=key"), want: admittedWant},

		// -- keys where the gateway does not look --
		{name: "key in a cookie", send: func(t *testing.T) response { return get(t, "/v1/emails", "Cookie: api_key="+key) }, want: rejectedAs(missingKey)},
		{name: "key in a form body", send: func(t *testing.T) response {
			return request(t, http.MethodPost, "/v1/emails", "api_key="+key+"&access_token="+key, "Content-Type: application/x-www-form-urlencoded")
		}, want: rejectedAs(missingKey)},
		{name: "key in a JSON body", send: func(t *testing.T) response {
			return request(t, http.MethodPost, "/v1/emails", `{"api_key":"`+key+`"}`, "Content-Type: application/json")
		}, want: rejectedAs(missingKey)},
		{name: "key in X-Api-Key", send: func(t *testing.T) response { return get(t, "/v1/emails", "X-Api-Key: "+key) }, want: rejectedAs(missingKey)},
		{name: "key in Proxy-Authorization", send: func(t *testing.T) response { return get(t, "/v1/emails", "Proxy-Authorization: Bearer "+key) }, want: rejectedAs(missingKey)},
		{name: "key in the path", send: func(t *testing.T) response { return get(t, "/v1/emails/"+key) }, want: rejectedAs(missingKey)},

		// -- trailers --
		{name: "chunked, Postscale-Account-Id trailer", send: func(t *testing.T) response {
			return rawHTTP(t, chunked("/v1/emails", []string{bearer(key), "Trailer: Postscale-Account-Id"}, "hello", "Postscale-Account-Id: mallory"))
		}, want: admittedWant},
		{name: "chunked, Postscale-Mode and Postscale-Plan trailers", send: func(t *testing.T) response {
			return rawHTTP(t, chunked("/v1/emails", []string{bearer(tk.Key), "Trailer: Postscale-Mode, Postscale-Plan"}, "hello", "Postscale-Mode: live", "Postscale-Plan: enterprise"))
		}, want: admittedWant},
		{name: "chunked, undeclared Postscale-Key-Id trailer", send: func(t *testing.T) response {
			return rawHTTP(t, chunked("/v1/emails", []string{bearer(key)}, "hello", "Postscale-Key-Id: key_forged"))
		}, want: admittedWant},
		{name: "chunked on an open path, Postscale-Account-Id trailer", send: func(t *testing.T) response {
			return rawHTTP(t, chunked("/open/hook", []string{"Trailer: Postscale-Account-Id"}, "hello", "Postscale-Account-Id: mallory"))
		}, want: openWant},
		{name: "key only in a trailer", send: func(t *testing.T) response {
			return rawHTTP(t, chunked("/v1/emails", []string{"Trailer: Authorization"}, "hello", bearer(key)))
		}, want: rejectedAs(missingKey)},
		{name: "forged Postscale-* headers on an open path", send: func(t *testing.T) response {
			return get(t, "/open/hook", "Postscale-Account-Id: mallory", "Postscale-Mode: live", "postscale-plan: scale")
		}, want: openWant},

		// -- bodies --
		{name: "huge declared body without a key (rejected before it is read)", send: func(t *testing.T) response {
			return bodyNeverSent(t, "")
		}, want: rejectedAs(missingKey)},
		{name: "huge declared body with an unknown key", send: func(t *testing.T) response {
			unknown, _ := postscale.NewKey(postscale.ModeLive)
			return bodyNeverSent(t, bearer(unknown))
		}, want: rejectedAs(invalidKey)},
		{name: "Expect: 100-continue without a key (no 100 sent)", send: func(t *testing.T) response {
			return rawHTTP(t, "POST /v1/emails HTTP/1.1\r\nHost: "+gatewayHost+"\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
		}, want: rejectedAs(missingKey)},
		{name: "64 MB body with a valid key (streamed, not buffered)", send: func(t *testing.T) response {
			return streamedBody(t, backend, key, 64<<20, 0)
		}, want: admittedWant},
		{name: "slow body with a valid key (1 KB every 100 ms)", send: func(t *testing.T) response {
			return streamedBody(t, backend, key, 10<<10, 100*time.Millisecond)
		}, want: admittedWant},
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := backend.count()
			r := c.send(t)
			got := backend.since(before)
			t.Logf("answer: %d %s", r.status, firstLine(r.body))
			checkCatalogueAnswer(t, c.want, r, got, keyIDs)
			// The gateway still serves a cached key.
			if h := get(t, "/v1/emails", bearer(health.Key)); h.status != http.StatusOK {
				t.Fatalf("after this case, the cached key got %d %s, want 200", h.status, h.body)
			}
		})
	}

	t.Run("admin", func(t *testing.T) { adminCatalogue(t, health.Key) })
}

// bodyNeverSent declares a 1 GB body and sends none of it: a gateway that
// rejects before reading the body answers at once.
func bodyNeverSent(t *testing.T, authLine string) response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", gatewayHost, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	head := "POST /v1/emails HTTP/1.1\r\nHost: " + gatewayHost + "\r\nContent-Type: application/octet-stream\r\nContent-Length: 1073741824\r\n"
	if authLine != "" {
		head += authLine + "\r\n"
	}
	start := time.Now()
	if _, err := io.WriteString(conn, head+"\r\n"); err != nil {
		t.Fatal(err)
	}
	r := readRaw(t, conn)
	t.Logf("answered %v after the headers, with none of the 1 GB body sent", time.Since(start).Round(time.Millisecond))
	return r
}

// streamedBody POSTs size bytes with key, in 1 KB pieces every pause (or
// all at once). The rest of the body is sent only once the backend has
// seen the request arrive, which it cannot if the gateway buffers bodies.
func streamedBody(t *testing.T, backend *catBackend, key string, size int, pause time.Duration) response {
	t.Helper()
	for len(backend.arrived) > 0 {
		<-backend.arrived
	}
	pr, pw := io.Pipe()
	go func() {
		piece := bytes.Repeat([]byte("m"), 1<<10)
		sent := 0
		write := func(n int) bool {
			for n > 0 {
				m := min(n, len(piece))
				if _, err := pw.Write(piece[:m]); err != nil {
					return false
				}
				n -= m
				sent += m
				if pause > 0 {
					time.Sleep(pause)
				}
			}
			return true
		}
		if !write(1 << 10) {
			return
		}
		select {
		case <-backend.arrived:
		case <-time.After(10 * time.Second):
			pw.CloseWithError(fmt.Errorf("the backend has not seen the request 10s after its first 1 KB: the body is buffered, not streamed"))
			return
		}
		if write(size - sent) {
			pw.Close()
		}
	}()
	req, err := http.NewRequest(http.MethodPost, gatewayURL+"/v1/emails", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/octet-stream")
	start := time.Now()
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST of %d bytes: %v", size, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	t.Logf("%d bytes passed on in %v", size, time.Since(start).Round(time.Millisecond))
	backend.mu.Lock()
	for i := len(backend.reqs) - 1; i >= 0; i-- {
		if r := backend.reqs[i]; !r.ignored {
			if r.BodySize != int64(size) {
				t.Errorf("the backend received %d bytes of the %d-byte body", r.BodySize, size)
			}
			break
		}
	}
	backend.mu.Unlock()
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// checkCatalogueAnswer checks r and what the backend received (got)
// against w.
func checkCatalogueAnswer(t *testing.T, w want, r response, got []catRecord, keyIDs map[string]string) {
	t.Helper()
	switch {
	case w.reject != nil:
		assertRejected(t, r, *w.reject)
	case w.server < 0:
		if r.status != 0 {
			t.Errorf("status: got %d %s, want %s", r.status, firstLine(r.body), w)
		}
	case w.server != 0:
		if r.status != w.server {
			t.Errorf("status: got %d %s, want %s", r.status, firstLine(r.body), w)
		}
	case w.orReject != nil && r.status != http.StatusOK:
		assertRejected(t, r, *w.orReject)
	default: // admitted or open
		if r.status != http.StatusOK || string(r.body) != "mail" {
			t.Errorf("got %d %s, want %s", r.status, firstLine(r.body), w)
		}
	}
	admitted := (w.admitted || w.open) && r.status == http.StatusOK
	if !admitted {
		if len(got) != 0 {
			t.Errorf("rejected (%d), but the backend received %d request(s): %+v", r.status, len(got), got)
		}
		return
	}
	if len(got) != 1 {
		t.Fatalf("passed on, but the backend received %d requests, want 1", len(got))
	}
	rec := got[0]
	for name, vals := range rec.Header {
		if strings.HasPrefix(strings.ToLower(name), "postscale") && w.open {
			t.Errorf("open path: the backend received %s %q, which the gateway did not set", name, vals)
		}
	}
	for name, vals := range rec.Trailer {
		if strings.HasPrefix(strings.ToLower(name), "postscale") {
			t.Errorf("the backend received the trailer %s %q, which the gateway did not set", name, vals)
		}
	}
	if _, ok := rec.Header["Authorization"]; ok {
		t.Errorf("the backend received Authorization; it must be removed")
	}
	if w.open {
		return
	}
	if got := rec.Header.Get("Postscale-Account-Id"); got != "acme" || len(rec.Header.Values("Postscale-Account-Id")) != 1 {
		t.Errorf("backend Postscale-Account-Id: got %q, want exactly one, acme", rec.Header.Values("Postscale-Account-Id"))
	}
	id := rec.Header.Get("Postscale-Key-Id")
	known := false
	for _, v := range keyIDs {
		known = known || v == id
	}
	if !known || len(rec.Header.Values("Postscale-Key-Id")) != 1 {
		t.Errorf("backend Postscale-Key-Id: got %q, want one of the catalogue's key ids", rec.Header.Values("Postscale-Key-Id"))
	}
	if m := rec.Header.Values("Postscale-Mode"); len(m) != 1 || (m[0] != "live" && m[0] != "test") {
		t.Errorf("backend Postscale-Mode: got %q, want exactly one, live or test", m)
	}
	if p := rec.Header.Values("Postscale-Plan"); len(p) != 1 || p[0] != "bulk" {
		t.Errorf("backend Postscale-Plan: got %q, want exactly one, bulk", p)
	}
	for k := range keyIDs {
		for name, vals := range rec.Header {
			for _, v := range vals {
				if strings.Contains(v, k) {
					t.Errorf("the backend received the key in %s", name)
				}
			}
		}
		if strings.Contains(rec.URI, k) {
			t.Errorf("the backend received the key in the URI")
		}
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// ---- the admin API's edges: times and ids that look like keys ----

// adminCatalogue tries expiry times at the edges and key-shaped ids on the
// admin API. Each must be refused with 400 naming the field (never with
// the value it was given when that is a key), or accepted and then behave
// as asked: a key that expires in year 9999 works today and reads back
// expiring then.
func adminCatalogue(t *testing.T, healthKey string) {
	healthy := func(t *testing.T) {
		t.Helper()
		if h := get(t, "/v1/emails", bearer(healthKey)); h.status != http.StatusOK {
			t.Fatalf("the cached key got %d %s, want 200", h.status, h.body)
		}
	}
	// Creating a key with expires_at: refused naming the field, or
	// accepted, working now and reading back as given.
	for _, c := range []struct {
		name, expiresAt string
		refuse          bool // the contract refuses it; else either way
	}{
		{name: "expires_at in year 9999", expiresAt: "9999-12-31T23:59:59Z"},
		{name: "expires_at just past int64 nanoseconds (2262-04-12)", expiresAt: "2262-04-12T00:00:00Z"},
		{name: "expires_at in 2199", expiresAt: "2199-12-31T00:00:00Z"},
		{name: "expires_at with a +14:00 offset", expiresAt: "2031-01-01T00:00:00+14:00"},
		{name: "expires_at with nanoseconds", expiresAt: "2031-01-01T00:00:00.123456789Z"},
		{name: "expires_at in 1970", expiresAt: "1970-01-01T00:00:00Z", refuse: true},
		{name: "expires_at in year 1", expiresAt: "0001-01-01T00:00:00Z", refuse: true},
		{name: "expires_at a second ago", expiresAt: time.Now().Add(-time.Second).UTC().Format(time.RFC3339), refuse: true},
		{name: "expires_at not a time", expiresAt: "tomorrow", refuse: true},
		{name: "expires_at without a zone", expiresAt: "2031-01-01T00:00:00", refuse: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := fmt.Sprintf(`{"account":"acme","name":"edge","mode":"live","expires_at":%q}`, c.expiresAt)
			resp, b := adminDo(t, http.MethodPost, "/postscale/keys", body)
			t.Logf("answer: %d %s", resp.StatusCode, firstLine(b))
			switch {
			case resp.StatusCode == http.StatusBadRequest:
				if !strings.Contains(string(b), "expires_at") && c.expiresAt != "tomorrow" && c.expiresAt != "2031-01-01T00:00:00" {
					t.Errorf("400 %s: want the message to name expires_at", b)
				}
			case resp.StatusCode == http.StatusCreated && !c.refuse:
				var k createdKey
				if err := json.Unmarshal(b, &k); err != nil {
					t.Fatal(err)
				}
				want, _ := time.Parse(time.RFC3339Nano, c.expiresAt)
				rec := getKey(t, k.ID)
				if rec.ExpiresAt == nil || !rec.ExpiresAt.Equal(want) {
					t.Errorf("created with expires_at %s, reads back %v", c.expiresAt, rec.ExpiresAt)
				}
				if r := get(t, "/v1/emails", bearer(k.Key)); r.status != http.StatusOK {
					t.Errorf("a key expiring at %s answers %d %s now, want 200", c.expiresAt, r.status, firstLine(r.body))
				}
			default:
				t.Errorf("got %d %s, want 400 naming expires_at%s", resp.StatusCode, firstLine(b), map[bool]string{false: ", or 201 and a key that works until then", true: ""}[c.refuse])
			}
			healthy(t)
		})
	}

	// A roll's grace period at the edges.
	for _, c := range []struct {
		name, expiresIn string
		check           func(t *testing.T, old string, status int, body []byte)
	}{
		{name: "roll expires_in 2562047h (the largest duration)", expiresIn: "2562047h",
			check: func(t *testing.T, old string, status int, body []byte) {
				if status == http.StatusBadRequest {
					if !strings.Contains(string(body), "expires_in") {
						t.Errorf("400 %s: want the message to name expires_in", body)
					}
					return
				}
				if status != http.StatusCreated {
					t.Fatalf("got %d %s, want 400 naming expires_in or 201", status, body)
				}
				if r := get(t, "/v1/emails", bearer(old)); r.status != http.StatusOK {
					t.Errorf("the old key of a roll with a huge grace period answers %d %s at once, want 200", r.status, firstLine(r.body))
				}
			}},
		{name: "roll expires_in 9999999h (past the largest duration)", expiresIn: "9999999h",
			check: func(t *testing.T, old string, status int, body []byte) {
				if status != http.StatusBadRequest || !strings.Contains(string(body), "expires_in") {
					t.Errorf("got %d %s, want 400 naming expires_in", status, body)
				}
			}},
		{name: "roll expires_in -1s", expiresIn: "-1s",
			check: func(t *testing.T, old string, status int, body []byte) {
				if status != http.StatusBadRequest || !strings.Contains(string(body), "expires_in") {
					t.Errorf("got %d %s, want 400 naming expires_in", status, body)
				}
			}},
		{name: "roll expires_in 0s (the old key ends at once)", expiresIn: "0s",
			check: func(t *testing.T, old string, status int, body []byte) {
				if status != http.StatusCreated {
					t.Fatalf("got %d %s, want 201", status, body)
				}
				assertRejected(t, get(t, "/v1/emails", bearer(old)), expiredKey)
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			old := createKey(t, "acme", "to roll", "live")
			if r := get(t, "/v1/emails", bearer(old.Key)); r.status != http.StatusOK {
				t.Fatalf("the key to roll answers %d", r.status)
			}
			resp, b := adminDo(t, http.MethodPost, "/postscale/keys/"+old.ID+"/roll", map[string]any{"expires_in": c.expiresIn})
			t.Logf("answer: %d %s", resp.StatusCode, firstLine(b))
			c.check(t, old.Key, resp.StatusCode, b)
			healthy(t)
		})
	}

	// Ids that look like keys: refused or not found, never echoed, and
	// nothing happens to the key.
	pasted := createKey(t, "acme", "pasted", "live")
	if r := get(t, "/v1/emails", bearer(pasted.Key)); r.status != http.StatusOK {
		t.Fatalf("the pasted key answers %d", r.status)
	}
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/postscale/keys/" + pasted.Key},
		{http.MethodDelete, "/postscale/keys/" + pasted.Key},
		{http.MethodPost, "/postscale/keys/" + pasted.Key + "/roll"},
		{http.MethodGet, "/postscale/accounts/" + pasted.Key},
		{http.MethodPatch, "/postscale/accounts/" + pasted.Key},
		{http.MethodGet, "/postscale/keys?account=" + pasted.Key},
	} {
		t.Run("key as an id: "+c.method+" "+strings.ReplaceAll(c.path, pasted.Key, "<key>"), func(t *testing.T) {
			t.Logf("depends on the fix of item 5 (a key pasted where an id is expected is echoed)")
			var body any
			if c.method == http.MethodPost || c.method == http.MethodPatch {
				body = map[string]any{}
			}
			resp, b := adminDo(t, c.method, c.path, body)
			t.Logf("answer: %d %s", resp.StatusCode, strings.ReplaceAll(firstLine(b), pasted.Key, "<key>"))
			if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusNotFound {
				t.Errorf("got %d, want 400 or 404", resp.StatusCode)
			}
			assertNoKeyIn(t, "the admin API's answer", string(b), pasted.Key)
			if r := get(t, "/v1/emails", bearer(pasted.Key)); r.status != http.StatusOK {
				t.Errorf("after %s with the key as an id, the key answers %d %s; nothing may happen to it", c.method, r.status, firstLine(r.body))
			}
		})
	}
	t.Run("revoke by the key itself", func(t *testing.T) {
		t.Logf("depends on the fix of item 5 (POST /postscale/keys/revoke)")
		unknown, _ := postscale.NewKey(postscale.ModeLive)
		for _, c := range []struct {
			key    string
			status []int
		}{
			{unknown, []int{http.StatusNotFound}},
			{"not-a-key-" + strings.Repeat("x", 30), []int{http.StatusBadRequest, http.StatusNotFound}},
			{pasted.Key, []int{http.StatusOK}},
		} {
			resp, b := adminDo(t, http.MethodPost, "/postscale/keys/revoke", map[string]any{"key": c.key})
			t.Logf("revoke by key: %d %s", resp.StatusCode, strings.ReplaceAll(firstLine(b), c.key, "<key>"))
			ok := false
			for _, s := range c.status {
				ok = ok || resp.StatusCode == s
			}
			if !ok {
				t.Errorf("POST /postscale/keys/revoke: got %d %s, want %v", resp.StatusCode, strings.ReplaceAll(firstLine(b), c.key, "<key>"), c.status)
			}
			assertNoKeyIn(t, "the revoke answer", string(b), c.key)
		}
		assertRejected(t, get(t, "/v1/emails", bearer(pasted.Key)), revokedKey)
		healthy(t)
	})
}

// assertNoKeyIn fails if s holds the key or its last 20 characters.
func assertNoKeyIn(t *testing.T, where, s, key string) {
	t.Helper()
	if strings.Contains(s, key) || strings.Contains(s, key[len(key)-20:]) {
		t.Errorf("%s shows the key: %s", where, strings.ReplaceAll(s, key, "<key>"))
	}
}

// ---- the well-behaved client in the background ----

type backgroundClient struct {
	stopc  chan struct{}
	done   chan struct{}
	n      atomic.Int64
	failed atomic.Int64
	worst  atomic.Int64
	first  atomic.Value // string
}

// startBackgroundClient sends GET /v1/emails with key every 25 ms.
func startBackgroundClient(key string) *backgroundClient {
	b := &backgroundClient{stopc: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 10 * time.Second}
	go func() {
		defer close(b.done)
		for {
			select {
			case <-b.stopc:
				return
			case <-time.After(25 * time.Millisecond):
			}
			req, _ := http.NewRequest(http.MethodGet, gatewayURL+"/v1/emails", nil)
			req.Header.Set("Authorization", "Bearer "+key)
			start := time.Now()
			resp, err := client.Do(req)
			took := time.Since(start)
			b.n.Add(1)
			if int64(took) > b.worst.Load() {
				b.worst.Store(int64(took))
			}
			if err != nil {
				b.fail(err.Error())
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.fail(fmt.Sprintf("%d %s", resp.StatusCode, firstLine(body)))
			}
		}
	}()
	return b
}

func (b *backgroundClient) fail(s string) {
	b.failed.Add(1)
	b.first.CompareAndSwap(nil, s)
}

func (b *backgroundClient) firstFailure() string {
	s, _ := b.first.Load().(string)
	return s
}

func (b *backgroundClient) stop() (n, failed int64, worst time.Duration) {
	close(b.stopc)
	<-b.done
	return b.n.Load(), b.failed.Load(), time.Duration(b.worst.Load())
}
