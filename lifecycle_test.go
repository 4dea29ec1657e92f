package postscale

import (
	"context"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// openManager returns a storeManager on a fresh SQLite store whose clock
// reads *now, with one account "acme" on growth.
func openManager(t *testing.T, now *time.Time) (storeManager, *SQLiteStore) {
	t.Helper()
	s, err := OpenSQLiteStore(t.TempDir() + "/keys.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	m := storeManager{store: s, now: func() time.Time { return *now }}
	if _, err := m.CreateAccount(context.Background(), AccountRequest{ID: "acme", Plan: "growth"}); err != nil {
		t.Fatal(err)
	}
	return m, s
}

func TestRollKey(t *testing.T) {
	ctx := context.Background()
	now := t0
	m, s := openManager(t, &now)
	old, err := m.CreateKey(ctx, KeyRequest{Account: "acme", Name: "prod", Scopes: []string{"emails:send"}})
	if err != nil {
		t.Fatal(err)
	}
	now = t0.Add(time.Hour)
	rolled, err := m.RollKey(ctx, old.ID, RollRequest{ExpiresIn: "24h"})
	if err != nil {
		t.Fatal(err)
	}
	if rolled.Key == "" || rolled.Key == old.Key || rolled.ID == old.ID {
		t.Fatalf("roll did not issue a new key: %+v", rolled)
	}
	if rolled.Name != "prod" || rolled.Account != "acme" || rolled.Mode != ModeLive || strings.Join(rolled.Scopes, ",") != "emails:send" {
		t.Errorf("replacement does not carry the old key's name, account, mode and scopes: %+v", rolled.KeyRecord)
	}
	wantExpiry := now.Add(24 * time.Hour)
	if rolled.Replaces == nil || rolled.Replaces.ExpiresAt == nil || !rolled.Replaces.ExpiresAt.Equal(wantExpiry) ||
		rolled.Replaces.DeprecatedAt == nil || !rolled.Replaces.DeprecatedAt.Equal(now) {
		t.Fatalf("old key after roll: %+v; want deprecated at %v, expiring at %v", rolled.Replaces, now, wantExpiry)
	}
	// Both keys authenticate; the old one's entry carries the headers.
	rec, acct, err := s.LookupKey(ctx, HashKey(old.Key))
	if err != nil {
		t.Fatal(err)
	}
	e := newEntry(rec.Hash, rec, acct, now)
	if got, want := e.deprecation, "@"+strconv.FormatInt(now.Unix(), 10); got != want {
		t.Errorf("Deprecation: got %v, want %s", got, want)
	}
	if got, want := e.sunset, wantExpiry.Format(http.TimeFormat); got != want {
		t.Errorf("Sunset: got %v, want %s", got, want)
	}
	if _, _, err := s.LookupKey(ctx, HashKey(rolled.Key)); err != nil {
		t.Errorf("new key not found: %v", err)
	}

	tests := []struct {
		name    string
		id      string
		req     RollRequest
		wantErr error
	}{
		{"bad duration", rolled.ID, RollRequest{ExpiresIn: "soon"}, (*InputError)(nil)},
		{"negative duration", rolled.ID, RollRequest{ExpiresIn: "-1h"}, (*InputError)(nil)},
		{"unknown key", "key_nope", RollRequest{}, ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.RollKey(ctx, tt.id, tt.req)
			var in *InputError
			if tt.wantErr == (*InputError)(nil) {
				if !errors.As(err, &in) {
					t.Fatalf("got %v, want an input error", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}

	// A revoked key and an expired key cannot be rolled.
	if _, err := m.RevokeKey(ctx, rolled.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.RollKey(ctx, rolled.ID, RollRequest{}); !errors.Is(err, ErrConflict) {
		t.Errorf("rolling a revoked key: got %v, want ErrConflict", err)
	}
	now = wantExpiry.Add(time.Second)
	if _, err := m.RollKey(ctx, old.ID, RollRequest{}); !errors.Is(err, ErrConflict) {
		t.Errorf("rolling an expired key: got %v, want ErrConflict", err)
	}
}

func hexHash(h [32]byte) string { return hex.EncodeToString(h[:]) }

func TestUpdateAccount(t *testing.T) {
	ctx := context.Background()
	now := t0
	m, _ := openManager(t, &now)
	str := func(s string) *string { return &s }
	f := func(v float64) *float64 { return &v }
	n := func(v int) *int { return &v }
	tests := []struct {
		name      string
		req       AccountUpdate
		wantPlan  string
		wantRate  float64
		wantBurst int
		wantField string // non-empty: an input error on this field
	}{
		{name: "to scale", req: AccountUpdate{Plan: str("scale")}, wantPlan: "scale"},
		{name: "to enterprise without rate", req: AccountUpdate{Plan: str("enterprise")}, wantField: "rate"},
		{name: "to enterprise", req: AccountUpdate{Plan: str("enterprise"), Rate: f(250)}, wantPlan: "enterprise", wantRate: 250, wantBurst: 250},
		{name: "burst only", req: AccountUpdate{Burst: n(500)}, wantPlan: "enterprise", wantRate: 250, wantBurst: 500},
		{name: "rate only resets burst", req: AccountUpdate{Rate: f(400)}, wantPlan: "enterprise", wantRate: 400, wantBurst: 400},
		{name: "back to growth drops custom limits", req: AccountUpdate{Plan: str("growth")}, wantPlan: "growth"},
		{name: "rate on growth", req: AccountUpdate{Rate: f(5)}, wantField: "rate"},
		{name: "bad plan name", req: AccountUpdate{Plan: str("Gold Plan")}, wantField: "plan"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := m.UpdateAccount(ctx, "acme", tt.req)
			if tt.wantField != "" {
				var in *InputError
				if !errors.As(err, &in) || in.Field != tt.wantField {
					t.Fatalf("got %v, want an input error on %s", err, tt.wantField)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.Plan != tt.wantPlan || a.Rate != tt.wantRate || a.Burst != tt.wantBurst {
				t.Errorf("got %s %v/%d, want %s %v/%d", a.Plan, a.Rate, a.Burst, tt.wantPlan, tt.wantRate, tt.wantBurst)
			}
		})
	}
	if _, err := m.UpdateAccount(ctx, "nobody", AccountUpdate{Plan: str("scale")}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown account: got %v, want ErrNotFound", err)
	}
}

func TestImportKeys(t *testing.T) {
	ctx := context.Background()
	now := t0
	m, s := openManager(t, &now)
	plainHash := HashKey("ps_test_fromhash123")
	res, err := m.ImportKeys(ctx, ImportRequest{Keys: []ImportedKey{
		{Account: "acme", Name: "old server", Key: "ps_live_abc123xyz"},
		{Account: "acme", Name: "old ci", Mode: "test", Hash: hexHash(plainHash)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Imported) != 2 {
		t.Fatalf("imported %d keys, want 2", len(res.Imported))
	}
	for _, tt := range []struct {
		key          string
		wantMode     Mode
		wantRedacted string
	}{
		{"ps_live_abc123xyz", ModeLive, "ps_live_…yz"}, // a short key shows a quarter of itself
		{"ps_test_fromhash123", ModeTest, "ps_test_…"},
	} {
		rec, _, err := s.LookupKey(ctx, HashKey(tt.key))
		if err != nil {
			t.Fatalf("imported key %s not found by its hash: %v", tt.wantRedacted, err)
		}
		if !rec.Legacy || rec.Mode != tt.wantMode || rec.Redacted != tt.wantRedacted {
			t.Errorf("imported record: legacy %v mode %s redacted %q; want legacy, %s, %q", rec.Legacy, rec.Mode, rec.Redacted, tt.wantMode, tt.wantRedacted)
		}
	}

	bad := []struct {
		name      string
		keys      []ImportedKey
		wantField string
		wantErr   error
	}{
		{name: "empty", wantField: "keys"},
		{name: "key and hash", keys: []ImportedKey{{Account: "acme", Name: "x", Key: "ps_live_a1", Hash: hexHash(plainHash)}}, wantField: "keys[0].key"},
		{name: "neither", keys: []ImportedKey{{Account: "acme", Name: "x"}}, wantField: "keys[0].key"},
		{name: "not a ps key", keys: []ImportedKey{{Account: "acme", Name: "x", Key: "sk_live_123"}}, wantField: "keys[0].key"},
		{name: "mode mismatch", keys: []ImportedKey{{Account: "acme", Name: "x", Mode: "test", Key: "ps_live_zz1"}}, wantField: "keys[0].mode"},
		{name: "hash without mode", keys: []ImportedKey{{Account: "acme", Name: "x", Hash: hexHash(HashKey("ps_live_q"))}}, wantField: "keys[0].mode"},
		{name: "bad hash", keys: []ImportedKey{{Account: "acme", Name: "x", Mode: "live", Hash: "abc"}}, wantField: "keys[0].hash"},
		{name: "no name", keys: []ImportedKey{{Account: "acme", Key: "ps_live_q1"}}, wantField: "keys[0].name"},
		{name: "second entry bad", keys: []ImportedKey{{Account: "acme", Name: "ok", Key: "ps_live_q2"}, {Account: "acme", Name: "x", Key: "bad"}}, wantField: "keys[1].key"},
		{name: "unknown account", keys: []ImportedKey{{Account: "ghost", Name: "x", Key: "ps_live_q3"}}, wantErr: ErrNotFound},
		{name: "duplicate is all or none", keys: []ImportedKey{{Account: "acme", Name: "new", Key: "ps_live_q4"}, {Account: "acme", Name: "dup", Key: "ps_live_abc123xyz"}}, wantErr: ErrExists},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.ImportKeys(ctx, ImportRequest{Keys: tt.keys})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
				return
			}
			var in *InputError
			if !errors.As(err, &in) || in.Field != tt.wantField {
				t.Fatalf("got %v, want an input error on %s", err, tt.wantField)
			}
		})
	}
	// The failed all-or-none import stored nothing.
	if _, _, err := s.LookupKey(ctx, HashKey("ps_live_q4")); !errors.Is(err, ErrNotFound) {
		t.Errorf("a key of a failed import was stored: %v", err)
	}
}

func TestScopedKeys(t *testing.T) {
	s := newFakeStore()
	h := newTestHandler(t, s, nil)
	h.RequireScopes = []ScopeRule{
		{Scope: "emails:send", match: caddyhttp.MatcherSets{{caddyhttp.MatchMethod{"POST"}}}},
		{Scope: "emails:read", match: caddyhttp.MatcherSets{{caddyhttp.MatchMethod{"GET"}}}},
	}
	for i := range h.RequireScopes {
		h.RequireScopes[i].rejection = newRejection(http.StatusForbidden,
			`Bearer realm="postscale", error="insufficient_scope", scope="`+h.RequireScopes[i].Scope+`"`, "",
			"permission_error", "insufficient_scope", "x")
	}
	sendOnly, rec := s.add(t)
	rec.Scopes = []string{"emails:send"}
	s.keys[rec.Hash] = rec
	full, _ := s.add(t)

	tests := []struct {
		name, key, method string
		wantStatus        int
		wantChallenge     string
	}{
		{"scoped key, allowed", sendOnly, http.MethodPost, http.StatusAccepted, ""},
		{"scoped key, forbidden", sendOnly, http.MethodGet, http.StatusForbidden, `Bearer realm="postscale", error="insufficient_scope", scope="emails:read"`},
		{"scoped key, no rule matches", sendOnly, http.MethodDelete, http.StatusAccepted, ""},
		{"unscoped key has full access", full, http.MethodGet, http.StatusAccepted, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := &recordingNext{}
			w := httptest.NewRecorder()
			r, _ := newRequest(tt.key)
			r.Method = tt.method
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatal(err)
			}
			if w.Code != tt.wantStatus {
				t.Fatalf("status: got %d, want %d", w.Code, tt.wantStatus)
			}
			if got := w.Header().Get("Www-Authenticate"); got != tt.wantChallenge {
				t.Errorf("WWW-Authenticate: got %q, want %q", got, tt.wantChallenge)
			}
			if tt.wantStatus == http.StatusForbidden && next.calls != 0 {
				t.Error("a forbidden request reached the backend")
			}
		})
	}
}

// usageStore records what RecordUsage receives.
type usageStore struct {
	*fakeStore
	mu   sync.Mutex
	got  map[string]Usage
	fail error
}

func (s *usageStore) RecordUsage(_ context.Context, us []Usage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	for _, u := range us {
		prev := s.got[u.KeyID]
		prev.KeyID, prev.Requests = u.KeyID, prev.Requests+u.Requests
		if u.LastUsed.After(prev.LastUsed) {
			prev.LastUsed = u.LastUsed
		}
		s.got[u.KeyID] = prev
	}
	return nil
}

func TestUsageIsCountedAndFlushed(t *testing.T) {
	fs := newFakeStore()
	s := &usageStore{fakeStore: fs, got: map[string]Usage{}}
	h := newTestHandler(t, s, nil)
	key, rec := fs.add(t)
	serve := func(n int) {
		for range n {
			r, _ := newRequest(key)
			if err := h.ServeHTTP(httptest.NewRecorder(), r, &recordingNext{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	serve(5)
	if len(s.got) != 0 {
		t.Fatal("usage was written on the request path")
	}
	h.keys.flushUsage(ctx)
	if got := s.got[rec.ID]; got.Requests != 5 || got.LastUsed.IsZero() {
		t.Fatalf("after the first flush: %+v; want 5 requests and a last_used_at", got)
	}

	// A failed flush keeps its counts for the next one.
	s.fail = errors.New("database is locked")
	serve(3)
	h.keys.flushUsage(ctx)
	s.fail = nil
	h.keys.flushUsage(ctx)
	if got := s.got[rec.ID].Requests; got != 8 {
		t.Fatalf("after a failed flush and a good one: %d requests recorded, want 8", got)
	}

	// An idle key's counter is dropped, and a later request (through the
	// same cached entry) still counts.
	h.keys.flushUsage(ctx)
	if _, ok := h.keys.usage.Load(rec.ID); ok {
		t.Error("an idle key's counter was not dropped")
	}
	serve(2)
	h.keys.flushUsage(ctx)
	if got := s.got[rec.ID].Requests; got != 10 {
		t.Fatalf("after the counter was dropped and the key used again: %d requests recorded, want 10", got)
	}
}

func TestUsageConcurrentWithFlushes(t *testing.T) {
	fs := newFakeStore()
	s := &usageStore{fakeStore: fs, got: map[string]Usage{}}
	h := newTestHandler(t, s, map[string]Plan{"growth": {Rate: 1e9, Burst: 1e9}})
	key, rec := fs.add(t)
	const workers, each = 4, 500
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				r, _ := newRequest(key)
				_ = h.ServeHTTP(httptest.NewRecorder(), r, &recordingNext{})
			}
		})
	}
	stop := make(chan struct{})
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		for {
			select {
			case <-stop:
				return
			default:
				h.keys.flushUsage(context.Background())
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-flushed
	h.keys.flushUsage(context.Background())
	if got := s.got[rec.ID].Requests; got != workers*each {
		t.Fatalf("requests recorded under concurrent flushes: got %d, want %d", got, workers*each)
	}
}

// TestUsageFlushedOnShutdown: counts not yet flushed reach the store when
// the last config using it goes away.
func TestUsageFlushedOnShutdown(t *testing.T) {
	fs := newFakeStore()
	s := &usageStore{fakeStore: fs, got: map[string]Usage{}}
	k, err := newKeyring(s, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	k.run()
	key, rec := fs.add(t)
	h := HashKey(key)
	e, _, err := testGet(k, &h, testPolicy)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		k.countRequest(e, t0)
	}
	if err := k.Destruct(); err != nil {
		t.Fatal(err)
	}
	if got := s.got[rec.ID]; got.Requests != 3 || !got.LastUsed.Equal(t0) {
		t.Fatalf("usage after shutdown: %+v; want 3 requests, last used %v", got, t0)
	}
}
