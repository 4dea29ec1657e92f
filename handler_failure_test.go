package postscale

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// failingMatcher is a request matcher that cannot decide, as a CEL
// expression that fails on the request's input does.
type failingMatcher struct{}

func (failingMatcher) MatchWithError(*http.Request) (bool, error) {
	return false, errors.New("no such overload: int(string)")
}

// TestMatcherErrorAnswersItself: when a matcher of protect or of a scope
// rule fails, the handler answers 500 with its own JSON error and returns
// nil. An error returned to Caddy would run the site's handle_errors
// routes, which may proxy the unverified request to the backend.
func TestMatcherErrorAnswersItself(t *testing.T) {
	failing := caddyhttp.MatcherSets{{failingMatcher{}}}
	tests := []struct {
		name  string
		setup func(h *Handler, s *fakeStore) (key string)
	}{
		{"protect matcher", func(h *Handler, s *fakeStore) string {
			h.protect = failing
			key, _ := s.add(t)
			return key
		}},
		{"scope rule matcher", func(h *Handler, s *fakeStore) string {
			h.RequireScopes = []ScopeRule{{Scope: "emails:send", match: failing}}
			key, rec := s.add(t)
			rec.Scopes = []string{"emails:read"}
			s.mu.Lock()
			s.keys[rec.Hash] = rec
			s.mu.Unlock()
			return key
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeStore()
			h := newTestHandler(t, s, nil)
			key := tt.setup(h, s)
			next := &recordingNext{}
			w := httptest.NewRecorder()
			r, _ := newRequest(key)
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatalf("ServeHTTP returned %v; it must answer the request itself", err)
			}
			if next.calls != 0 {
				t.Error("the request went on to the next handler")
			}
			if w.Code != http.StatusInternalServerError {
				t.Errorf("status: got %d, want 500", w.Code)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type: got %q", ct)
			}
			var body struct {
				Error struct{ Type, Code, Message string }
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error.Type != "api_error" || body.Error.Code != "internal_error" || body.Error.Message == "" {
				t.Errorf("body: %s; want api_error/internal_error with a message", w.Body.Bytes())
			}
		})
	}
}
