package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Trailers sent by the client (issue: a chunked request declaring
// "Trailer: Postscale-Account-Id" reached the backend with the forged
// value after the body). The backend must never receive a Postscale field
// the gateway did not set: not as a header, not as a trailer, not declared
// in the Trailer header, in any spelling, on protected and open paths, over
// HTTP/1.1 and HTTP/2.

// trailerRecord is a request as a backend saw it: its headers, the trailer
// names declared before the body, and the trailers after it.
type trailerRecord struct {
	Path     string
	Header   http.Header
	Declared []string // r.Trailer's names before the body was read
	Trailer  http.Header
	Body     string
}

// trailerRecorder is a backend that reads each request's body and then
// its trailers, and answers 200 "mail".
type trailerRecorder struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []trailerRecord
}

func newTrailerRecorder(t *testing.T) *trailerRecorder {
	rec := &trailerRecorder{}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var declared []string
		for name := range r.Trailer {
			declared = append(declared, name)
		}
		body, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, trailerRecord{Path: r.URL.Path, Header: r.Header.Clone(), Declared: declared, Trailer: r.Trailer.Clone(), Body: string(body)})
		rec.mu.Unlock()
		_, _ = io.WriteString(w, "mail")
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (rec *trailerRecorder) addr() string { return rec.srv.Listener.Addr().String() }

func (rec *trailerRecorder) count() int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return len(rec.reqs)
}

func (rec *trailerRecorder) last(t *testing.T) trailerRecord {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.reqs) == 0 {
		t.Fatal("the backend received no request")
	}
	return rec.reqs[len(rec.reqs)-1]
}

// trailerGateway runs a gateway that needs a key everywhere but under
// /open, speaking HTTP/1.1 and cleartext HTTP/2, in front of a trailer
// recorder, and returns the recorder and a live key of account acme.
func trailerGateway(t *testing.T) (*trailerRecorder, string) {
	t.Helper()
	backend := newTrailerRecorder(t)
	loadConfig(t, globalOptions(`	servers {
		protocols h1 h2c
	}`)+fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	@needs_key not path /open*
	postscale @needs_key {
		store sqlite %s
	}
	reverse_proxy %s
}
`, storePath(t), backend.addr()), "caddyfile")
	createAccount(t, "acme", "growth")
	return backend, createKey(t, "acme", "server", "live").Key
}

// forgedTrailers are the trailer lines a client forges, in the spellings
// a backend may read as Postscale-*; declared says which of them the
// Trailer header names.
var forgedTrailers = []struct {
	name, value string
	declared    bool
}{
	{"Postscale-Account-Id", "mallory", true},
	{"postscale-mode", "test", true},
	{"Postscale_Plan", "enterprise", true},
	{"Postscale.Key-Id", "key_forged", true},
	{"POSTSCALE-PLAN", "scale", false},
	{"Postscale-Custom", "x", false},
}

// sendChunked sends a chunked HTTP/1.1 request over a raw connection,
// with the forged trailers and a control trailer X-Checksum after the
// body, and returns the gateway's status and body.
func sendChunked(t *testing.T, path string, headers ...string) (int, string) {
	t.Helper()
	var declared []string
	var trailers strings.Builder
	for _, f := range forgedTrailers {
		if f.declared {
			declared = append(declared, f.name)
		}
		fmt.Fprintf(&trailers, "%s: %s\r\n", f.name, f.value)
	}
	var req strings.Builder
	fmt.Fprintf(&req, "POST %s HTTP/1.1\r\nHost: "+gatewayHost+"\r\n", path)
	for _, h := range headers {
		req.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&req, "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: %s, X-Checksum\r\nConnection: close\r\n\r\n", strings.Join(declared, ", "))
	req.WriteString("5\r\nhello\r\n6\r\n world\r\n0\r\n")
	req.WriteString(trailers.String())
	req.WriteString("X-Checksum: abc\r\n\r\n")

	conn, err := net.DialTimeout("tcp", gatewayHost, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// assertNoForgedFields checks that the backend got no Postscale field
// other than want (the gateway's own headers), not as a header, not as a
// declared trailer name, not as a trailer; and that the control trailer
// and the body did arrive, so that trailers do pass the gateway.
func assertNoForgedFields(t *testing.T, got trailerRecord, want map[string]string) {
	t.Helper()
	if got.Body != "hello world" {
		t.Errorf("backend got body %q, want %q", got.Body, "hello world")
	}
	if v := got.Trailer.Get("X-Checksum"); v != "abc" {
		t.Fatalf("backend got trailer X-Checksum %q, want abc: trailers do not reach it, so the test proves nothing (trailers %v)", v, got.Trailer)
	}
	assertPostscaleHeaders(t, got.Header, want)
	for _, name := range got.Declared {
		if isPostscale(name) {
			t.Errorf("backend was told to expect trailer %s", name)
		}
	}
	for name, vals := range got.Trailer {
		if isPostscale(name) {
			t.Errorf("backend got trailer %s: %q", name, vals)
		}
	}
	for _, v := range got.Header.Values("Trailer") {
		if strings.Contains(strings.ToLower(v), "postscale") {
			t.Errorf("backend got Trailer header %q", v)
		}
	}
}

// isPostscale reports whether a field name is Postscale-*, in any case,
// with '-', '_' or '.'.
func isPostscale(name string) bool {
	norm := strings.ToLower(strings.NewReplacer("_", "-", ".", "-").Replace(name))
	return strings.HasPrefix(norm, "postscale-")
}

func TestClientTrailersDropped(t *testing.T) {
	backend, key := trailerGateway(t)

	t.Run("HTTP/1.1 protected path", func(t *testing.T) {
		before := backend.count()
		status, body := sendChunked(t, "/v1/emails", "Authorization: Bearer "+key)
		if status != http.StatusOK || body != "mail" || backend.count() != before+1 {
			t.Fatalf("got %d %q, backend received %d; want 200 from the backend", status, body, backend.count()-before)
		}
		got := backend.last(t)
		assertNoForgedFields(t, got, map[string]string{
			"Postscale-Mode":       "live",
			"Postscale-Account-Id": "acme",
			"Postscale-Key-Id":     got.Header.Get("Postscale-Key-Id"),
			"Postscale-Plan":       "growth",
		})
		if got.Header.Get("Postscale-Key-Id") == "" {
			t.Error("backend got no Postscale-Key-Id")
		}
	})

	t.Run("HTTP/1.1 open path", func(t *testing.T) {
		before := backend.count()
		status, body := sendChunked(t, "/open/status")
		if status != http.StatusOK || body != "mail" || backend.count() != before+1 {
			t.Fatalf("got %d %q; want 200 from the backend", status, body)
		}
		assertNoForgedFields(t, backend.last(t), nil)
	})

	t.Run("HTTP/1.1 rejected", func(t *testing.T) {
		before := backend.count()
		if status, _ := sendChunked(t, "/v1/emails"); status != http.StatusUnauthorized {
			t.Errorf("without a key: got %d, want 401", status)
		}
		if n := backend.count() - before; n != 0 {
			t.Errorf("backend received %d requests", n)
		}
	})

	// HTTP/2 (cleartext, prior knowledge): the client declares its
	// trailers in a header and sends them in a HEADERS frame after the
	// body; net/http hands the handler the declared ones.
	client := &http.Client{Timeout: 10 * time.Second, Transport: h2cTransport()}
	for _, tt := range []struct {
		name, path string
		auth       bool
	}{
		{"HTTP/2 protected path", "/v1/emails", true},
		{"HTTP/2 open path", "/open/status", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := backend.count()
			req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, gatewayURL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Trailer = http.Header{"X-Checksum": nil}
			values := http.Header{"X-Checksum": {"abc"}}
			for _, f := range forgedTrailers {
				req.Trailer[f.name] = nil
				values[f.name] = []string{f.value}
			}
			req.Body = &trailerBody{Reader: strings.NewReader("hello world"), set: func() {
				for k, v := range values {
					req.Trailer[k] = v
				}
			}}
			req.ContentLength = -1
			if tt.auth {
				req.Header.Set("Authorization", "Bearer "+key)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 {
				t.Fatalf("spoke %s, want HTTP/2", resp.Proto)
			}
			if resp.StatusCode != http.StatusOK || string(body) != "mail" || backend.count() != before+1 {
				t.Fatalf("got %d %q; want 200 from the backend", resp.StatusCode, body)
			}
			got := backend.last(t)
			var want map[string]string
			if tt.auth {
				want = map[string]string{
					"Postscale-Mode":       "live",
					"Postscale-Account-Id": "acme",
					"Postscale-Key-Id":     got.Header.Get("Postscale-Key-Id"),
					"Postscale-Plan":       "growth",
				}
			}
			assertNoForgedFields(t, got, want)
		})
	}
}

// trailerBody is a request body that fills in the request's trailers once
// it has been read to its end, as http.Request.Trailer asks of a client.
type trailerBody struct {
	io.Reader
	set  func()
	done bool
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		b.set()
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

// h2cTransport speaks cleartext HTTP/2 with prior knowledge.
func h2cTransport() *http.Transport {
	tr := &http.Transport{}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return tr
}
