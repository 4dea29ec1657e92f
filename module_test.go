package postscale

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// newTestHandler returns a handler wired to s without a Caddy config, as
// Provision would wire it.
func newTestHandler(t testing.TB, s Store, plans map[string]Plan) *Handler {
	t.Helper()
	h := &Handler{
		CacheTTL:    caddy.Duration(time.Minute),
		NegativeTTL: caddy.Duration(time.Minute),
		Plans:       plans,
		store:       s,
		keys:        newTestKeyring(t, s),
		lookup:      testPolicy,
		limiter:     &LocalLimiter{buckets: newBuckets()},
		logger:      zap.NewNop(),
	}
	if err := h.resolvePlans(); err != nil {
		t.Fatal(err)
	}
	return h
}

// newRequest returns a request as Caddy's server hands it to handlers: with
// a replacer in its context.
func newRequest(key string) (*http.Request, *caddy.Replacer) {
	r := httptest.NewRequest(http.MethodPost, "/v1/emails", nil)
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	return r.WithContext(ctx), repl
}

type recordingNext struct {
	calls  int
	header http.Header
}

func (n *recordingNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.calls++
	n.header = r.Header.Clone()
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func TestHandlerStoreUnavailable(t *testing.T) {
	s := newFakeStore()
	h := newTestHandler(t, s, nil)
	cached, _ := s.add(t)
	uncached, _ := s.add(t)

	// Warm the cache with one key, then take the store down.
	next := &recordingNext{}
	r, _ := newRequest(cached)
	if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil || next.calls != 1 {
		t.Fatalf("warming up: err %v, next called %d times", err, next.calls)
	}
	h.keys.cache.Wait()
	s.mu.Lock()
	s.fail = errors.New("dial tcp: connection refused")
	s.mu.Unlock()

	tests := []struct {
		name       string
		key        string
		wantStatus int
		wantCode   string
	}{
		{"cached key keeps working", cached, http.StatusAccepted, ""},
		{"uncached key gets 503, not 401", uncached, http.StatusServiceUnavailable, "store_unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := &recordingNext{}
			w := httptest.NewRecorder()
			r, _ := newRequest(tt.key)
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatalf("ServeHTTP returned %v; it must write the response itself", err)
			}
			if w.Code != tt.wantStatus {
				t.Fatalf("status: got %d, want %d", w.Code, tt.wantStatus)
			}
			if tt.wantCode == "" {
				return
			}
			if next.calls != 0 {
				t.Error("an unverified request reached the next handler")
			}
			if got := w.Header().Get("Retry-After"); got != "1" {
				t.Errorf("Retry-After: got %q, want 1", got)
			}
			if got := w.Header().Get("Www-Authenticate"); got != "" {
				t.Errorf("WWW-Authenticate on a 503: got %q, want none", got)
			}
			var body struct{ Error struct{ Type, Code string } }
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error.Code != tt.wantCode || body.Error.Type != "api_error" {
				t.Errorf("body: got %s, want api_error/%s", w.Body.Bytes(), tt.wantCode)
			}
		})
	}
}

func TestHandlerTagsRequest(t *testing.T) {
	s := newFakeStore()
	h := newTestHandler(t, s, nil)
	key, rec := s.add(t)
	next := &recordingNext{}
	r, repl := newRequest(key)
	r.Header.Set("Postscale-Account-Id", "someone-else")
	if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	wantHeaders := map[string]string{
		"Postscale-Mode":       "live",
		"Postscale-Account-Id": "acme",
		"Postscale-Key-Id":     rec.ID,
		"Postscale-Plan":       "growth",
		"Authorization":        "",
	}
	for k, want := range wantHeaders {
		if got := next.header.Get(k); got != want {
			t.Errorf("header %s: got %q, want %q", k, got, want)
		}
	}
	wantPlaceholders := map[string]string{
		"postscale.mode":       "live",
		"postscale.account_id": "acme",
		"postscale.key_id":     rec.ID,
		"postscale.plan":       "growth",
		"postscale.key_name":   "test key",
		"http.auth.user.id":    rec.ID,
	}
	for k, want := range wantPlaceholders {
		if got, _ := repl.GetString(k); got != want {
			t.Errorf("placeholder {%s}: got %q, want %q", k, got, want)
		}
	}
	// Later handlers may append to or rewrite header values in place
	// (Caddy's header replace does): neither may reach the next request.
	next.header = nil
	r2, _ := newRequest(key)
	_ = h.ServeHTTP(httptest.NewRecorder(), r2, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		r.Header.Add("Postscale-Mode", "tampered")
		r.Header["Postscale-Account-Id"][0] = "tampered"
		r.Header["Postscale-Plan"][0] = "tampered"
		w.Header()["Ratelimit-Policy"][0] = "tampered"
		return nil
	}))
	w3 := httptest.NewRecorder()
	r3, _ := newRequest(key)
	if err := h.ServeHTTP(w3, r3, next); err != nil {
		t.Fatal(err)
	}
	if got := next.header.Values("Postscale-Mode"); len(got) != 1 || got[0] != "live" {
		t.Errorf("Postscale-Mode after a downstream append on an earlier request: got %q, want [live]", got)
	}
	for k, want := range map[string]string{"Postscale-Account-Id": "acme", "Postscale-Plan": "growth"} {
		if got := next.header.Get(k); got != want {
			t.Errorf("%s after a downstream rewrite on an earlier request: got %q, want %q", k, got, want)
		}
	}
	if got := w3.Header().Get("RateLimit-Policy"); got != `"growth";q=100;w=1` {
		t.Errorf("RateLimit-Policy after a downstream rewrite on an earlier request: got %q", got)
	}
}

// unlimited is a plan so large the benchmarks never hit it.
var unlimited = map[string]Plan{"growth": {Rate: maxRate, Burst: maxBurst}}

// BenchmarkCachedKey measures the whole check of a cached key (parse,
// checksum, hash, cache hit, rate limit, tagging, placeholders): the
// per-request cost the gateway adds in front of reverse_proxy.
func BenchmarkCachedKey(b *testing.B) {
	benchCachedKey(b, unlimited)
}

// benchRequests holds requests as Caddy's server hands them to handlers,
// made while the timer is stopped, so that each op serves a request of its
// own (its own header map and replacer), as in production, and the
// benchmark counts only what ServeHTTP costs.
type benchRequests struct {
	auths [][]string // Authorization values, used in turn
	reqs  []*http.Request
	next  int
	n     int
}

const benchBatch = 32

var benchURL = &url.URL{Path: "/v1/emails"}

func newBenchRequests(auths ...string) *benchRequests {
	br := &benchRequests{reqs: make([]*http.Request, benchBatch)}
	for _, a := range auths {
		br.auths = append(br.auths, []string{a})
	}
	br.refill()
	return br
}

// refill makes a new batch: what a client of the mail API sends, with the
// context Caddy's server gives a request (replacer, variables, start time).
func (br *benchRequests) refill() {
	for i := range br.reqs {
		r := &http.Request{
			Method: http.MethodPost, URL: benchURL, RequestURI: benchURL.Path, Host: "api.example.com",
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, ContentLength: 96, RemoteAddr: "192.0.2.1:50000",
			Body: http.NoBody,
		}
		r.Header = http.Header{
			"Content-Type":   {"application/json"},
			"Content-Length": {"96"},
			"User-Agent":     {"postscale-go/1.4"},
			"Accept":         {"application/json"},
			"Authorization":  br.auths[br.n%len(br.auths)],
		}
		br.n++
		br.reqs[i] = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
	}
	br.next = 0
}

// get returns the next fresh request, making a new batch with the timer
// stopped when one is used up.
func (br *benchRequests) get(b *testing.B) *http.Request {
	if br.next == len(br.reqs) {
		b.StopTimer()
		br.refill()
		b.StartTimer()
	}
	r := br.reqs[br.next]
	br.reqs[br.next] = nil
	br.next++
	return r
}

// nopNext stands for reverse_proxy.
var nopNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// benchCachedKey serves requests with one key, cached by a first request,
// under plans, b.N times, and returns the last answer.
func benchCachedKey(b *testing.B, plans map[string]Plan) *httptest.ResponseRecorder {
	s := newFakeStore()
	h := newTestHandler(b, s, plans)
	key, _ := s.add(b)
	br := newBenchRequests("Bearer " + key)
	if err := h.ServeHTTP(httptest.NewRecorder(), br.get(b), nopNext); err != nil {
		b.Fatal(err)
	}
	h.keys.cache.Wait()
	w := httptest.NewRecorder()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := br.get(b)
		clear(w.Header())
		w.Body.Reset()
		_ = h.ServeHTTP(w, r, nopNext)
	}
	return w
}

// BenchmarkCachedKeyParallel is BenchmarkCachedKey from every core at once
// over 1000 keys, to show the hot path shares no lock.
func BenchmarkCachedKeyParallel(b *testing.B) {
	s := newFakeStore()
	h := newTestHandler(b, s, unlimited)
	auths := make([]string, 1000)
	for i := range auths {
		key, _ := s.add(b)
		auths[i] = "Bearer " + key
		r, _ := newRequest(key)
		_ = h.ServeHTTP(httptest.NewRecorder(), r, nopNext)
	}
	h.keys.cache.Wait()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := httptest.NewRecorder()
		br := newBenchRequests(auths...)
		for pb.Next() {
			// Each goroutine makes its own batches; the timer runs on,
			// so this measures throughput with the making included
			// (about a third of each op: see BenchmarkCachedKey for the
			// handler alone).
			if br.next == len(br.reqs) {
				br.refill()
			}
			r := br.reqs[br.next]
			br.next++
			clear(w.Header())
			_ = h.ServeHTTP(w, r, nopNext)
		}
	})
}

// BenchmarkRejectBadChecksum measures a made-up key: rejected before any
// cache or store lookup.
func BenchmarkRejectBadChecksum(b *testing.B) {
	s := newFakeStore()
	h := newTestHandler(b, s, unlimited)
	key, _ := NewKey(ModeLive)
	bad := []string{"Bearer " + key[:len(key)-1] + string(key[len(key)-1]^1)}
	r, _ := newRequest("")
	w := httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	b.ReportAllocs()
	for b.Loop() {
		r.Header["Authorization"] = bad
		w.Body.Reset()
		_ = h.ServeHTTP(w, r, next)
	}
	if s.lookups.Load() != 0 {
		b.Fatalf("bad checksums reached the store %d times", s.lookups.Load())
	}
}

func BenchmarkParseKey(b *testing.B) {
	key, _ := NewKey(ModeLive)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseKey(key, false); err != nil {
			b.Fatal(err)
		}
	}
}

func TestProtectLeavesOpenPathsButStripsHeaders(t *testing.T) {
	s := newFakeStore()
	h := newTestHandler(t, s, nil)
	h.protect = caddyhttp.MatcherSets{{caddyhttp.MatchPath{"/v1/*"}}}

	next := &recordingNext{}
	w := httptest.NewRecorder()
	r, _ := newRequest("")
	r.URL.Path = "/healthz"
	r.Header.Set("Postscale-Account-Id", "victim")
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusAccepted || next.calls != 1 {
		t.Fatalf("open path without a key: status %d, next called %d times; want it passed on", w.Code, next.calls)
	}
	if got := next.header.Get("Postscale-Account-Id"); got != "" {
		t.Errorf("a client's Postscale-Account-Id reached the backend on an open path: %q", got)
	}

	w = httptest.NewRecorder()
	r, _ = newRequest("")
	r.URL.Path = "/v1/emails"
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusUnauthorized || next.calls != 1 {
		t.Errorf("protected path without a key: status %d, next called %d times; want 401 and not passed on", w.Code, next.calls)
	}
}

// BenchmarkUnknownKey measures a well-formed key the store does not know,
// answered from the negative cache (failed_auth off).
func BenchmarkUnknownKey(b *testing.B) {
	s := newFakeStore()
	h := newTestHandler(b, s, unlimited)
	key, _ := NewKey(ModeLive)
	auth := []string{"Bearer " + key}
	r, _ := newRequest("")
	w := httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	b.ReportAllocs()
	for b.Loop() {
		r.Header["Authorization"] = auth
		w.Body.Reset()
		_ = h.ServeHTTP(w, r, next)
	}
	if n := s.lookups.Load(); n != 1 {
		b.Fatalf("a repeated unknown key reached the store %d times, want 1", n)
	}
}

// BenchmarkThrottledAddress measures an unknown key from an address that
// has used up its failed_auth guesses: answered 429 without a lookup.
func BenchmarkThrottledAddress(b *testing.B) {
	s := newFakeStore()
	h := newTestHandler(b, s, unlimited)
	h.guessLimit = &FailedAuth{Count: 1, Window: caddy.Duration(time.Hour)}
	r, _ := newRequest("")
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "203.0.113.9"}))
	keys := make([][]string, 1024)
	for i := range keys {
		k, _ := NewKey(ModeLive)
		keys[i] = []string{"Bearer " + k}
	}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	w := httptest.NewRecorder()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r.Header["Authorization"] = keys[i%len(keys)]
		i++
		w.Body.Reset()
		clear(w.Header())
		_ = h.ServeHTTP(w, r, next)
	}
	if n := s.lookups.Load(); n != 1 {
		b.Fatalf("a throttled address reached the store %d times, want 1", n)
	}
}

// BenchmarkCachedKeyQuota is BenchmarkCachedKey on a plan with a monthly
// quota: the quota's counting and header on top.
func BenchmarkCachedKeyQuota(b *testing.B) {
	w := benchCachedKey(b, map[string]Plan{"growth": {Rate: maxRate, Burst: maxBurst, Quota: &Quota{Count: maxQuota, Period: PeriodMonth}}})
	if got := w.Header().Get("RateLimit-Policy"); !strings.Contains(got, "growth-month") {
		b.Fatalf("RateLimit-Policy %q names no quota", got)
	}
}

// BenchmarkCachedKeyRateLimited measures a cached key whose bucket is
// empty: answered 429 with its RateLimit fields, without the backend.
func BenchmarkCachedKeyRateLimited(b *testing.B) {
	// The first request, which caches the key, takes the one token.
	w := benchCachedKey(b, map[string]Plan{"growth": {Rate: minRate, Burst: 1}})
	if w.Code != http.StatusTooManyRequests {
		b.Fatalf("status %d, want 429", w.Code)
	}
}

// BenchmarkKeyringCached measures the cache alone: a cached key's entry
// found by its hash.
func BenchmarkKeyringCached(b *testing.B) {
	s := newFakeStore()
	k := newTestKeyring(b, s)
	key, _ := s.add(b)
	h := HashKey(key)
	if _, _, err := testGet(k, &h, testPolicy); err != nil {
		b.Fatal(err)
	}
	settle(k)
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if e := k.cached(&h, now, testPolicy); e == nil || !e.found {
			b.Fatal("a cached key missed")
		}
	}
}

// BenchmarkKeyringCachedParallel is BenchmarkKeyringCached from every
// core over 1000 keys.
func BenchmarkKeyringCachedParallel(b *testing.B) {
	s := newFakeStore()
	k := newTestKeyring(b, s)
	hashes := make([][32]byte, 1000)
	for i := range hashes {
		key, _ := s.add(b)
		hashes[i] = HashKey(key)
		if _, _, err := testGet(k, &hashes[i], testPolicy); err != nil {
			b.Fatal(err)
		}
	}
	settle(k)
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			k.cached(&hashes[i%len(hashes)], now, testPolicy)
			i++
		}
	})
}
