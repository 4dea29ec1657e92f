package postscale

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
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
