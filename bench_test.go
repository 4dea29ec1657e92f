package postscale

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The handler's benchmarks. Each runs in two forms: serial, the cost of
// one request on one core (the number to hold against the cached path's
// budget), and parallel, b.RunParallel on every core over many accounts,
// which would show a lock or a counter that requests of different
// accounts share. BENCHMARKS.md has the numbers and the commands.
//
// A serial op serves a fresh request, prepared with the timer stopped; a
// parallel op prepares its request with the timer running (RunParallel
// cannot stop it for one goroutine), so the parallel numbers include
// BenchmarkPrepareRequest's cost.

// unlimited is a plan so large the benchmarks never hit it.
var unlimited = map[string]Plan{"growth": {Rate: maxRate, Burst: maxBurst}}

// benchRequests hands out requests as Caddy's server hands them to
// handlers (own header map, replacer, variables and start time), made in
// small batches so that they are as warm in the CPU's caches as a request
// the server has just read.
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

// refill makes a new batch: what a client of the mail API sends.
func (br *benchRequests) refill() {
	for i := range br.reqs {
		r := &http.Request{
			Method: http.MethodPost, URL: benchURL, RequestURI: benchURL.Path, Host: "api.example.com",
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, ContentLength: 96, RemoteAddr: "192.0.2.1:50000",
			Body: http.NoBody,
			Header: http.Header{
				"Content-Type":   {"application/json"},
				"Content-Length": {"96"},
				"User-Agent":     {"postscale-go/1.4"},
				"Accept":         {"application/json"},
				"Authorization":  br.auths[br.n%len(br.auths)],
			},
		}
		br.n++
		br.reqs[i] = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
	}
	br.next = 0
}

// take returns the next request; a used-up batch is made again with the
// timer stopped when b is not nil, running when it is.
func (br *benchRequests) take(b *testing.B) *http.Request {
	if br.next == len(br.reqs) {
		if b != nil {
			b.StopTimer()
		}
		br.refill()
		if b != nil {
			b.StartTimer()
		}
	}
	r := br.reqs[br.next]
	br.reqs[br.next] = nil
	br.next++
	return r
}

// newBenchHandler is newTestHandler with TTLs longer than any benchmark
// runs (-count 6 of a few sub-benchmarks takes minutes), so that no
// entry expires or is looked up again while it is measured.
func newBenchHandler(b *testing.B, s Store, plans map[string]Plan) *Handler {
	h := newTestHandler(b, s, plans)
	h.lookup = lookupPolicy{ttl: 24 * time.Hour, negTTL: maxNegativeTTL, timeout: time.Second}
	return h
}

// nopNext stands for reverse_proxy.
var nopNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// benchServe runs the serial and parallel forms of a handler benchmark:
// serial sends serialAuth, parallel cycles through parallelAuths (one per
// account, ideally). check runs once after each form with its last answer.
func benchServe(b *testing.B, h *Handler, serialAuth string, parallelAuths []string, check func(*testing.B, *httptest.ResponseRecorder)) {
	b.Run("serial", func(b *testing.B) {
		check(b, serveSerial(b, h, newBenchRequests(serialAuth)))
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			// Each goroutine starts at its own place in the list.
			offset := make([]string, len(parallelAuths))
			start := int(time.Now().UnixNano() % int64(len(parallelAuths)))
			copy(offset, parallelAuths[start:])
			copy(offset[len(parallelAuths)-start:], parallelAuths[:start])
			br := newBenchRequests(offset...)
			w := httptest.NewRecorder()
			served := false
			for pb.Next() {
				r := br.take(nil)
				clear(w.Header())
				w.Body.Reset()
				_ = h.ServeHTTP(w, r, nopNext)
				served = true
			}
			if served {
				check(nil, w)
			}
		})
	})
}

// serveSerial has h serve b.N requests from br on this goroutine, and
// returns the last answer.
func serveSerial(b *testing.B, h *Handler, br *benchRequests) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := br.take(b)
		clear(w.Header())
		w.Body.Reset()
		_ = h.ServeHTTP(w, r, nopNext)
	}
	b.StopTimer()
	return w
}

// cachedKeys stores n keys of n accounts (plus serial, a key of account
// acme), caches them with a first request each, and returns their
// Authorization values.
func cachedKeys(b *testing.B, s *fakeStore, h *Handler, n int) (serial string, auths []string) {
	key, _ := s.add(b)
	serial = "Bearer " + key
	auths = make([]string, n)
	for i := range auths {
		key, _ := s.addFor(b, fmt.Sprintf("acct_%04d", i))
		auths[i] = "Bearer " + key
	}
	br := newBenchRequests(append([]string{serial}, auths...)...)
	for range 1 + n {
		_ = h.ServeHTTP(httptest.NewRecorder(), br.take(nil), nopNext)
	}
	h.keys.cache.Wait()
	return serial, auths
}

// madeUpAuths returns n Authorization values of new live keys that no
// store holds, each passed through spoil first unless it is nil.
func madeUpAuths(n int, spoil func(key string) string) []string {
	auths := make([]string, n)
	for i := range auths {
		key, _ := NewKey(ModeLive)
		if spoil != nil {
			key = spoil(key)
		}
		auths[i] = "Bearer " + key
	}
	return auths
}

// wantStatus is a benchmark check: the last answer had status code.
func wantStatus(code int) func(*testing.B, *httptest.ResponseRecorder) {
	return func(b *testing.B, w *httptest.ResponseRecorder) {
		if w.Code != code {
			panic(fmt.Sprintf("last answer: status %d, want %d: %s", w.Code, code, w.Body))
		}
	}
}

// BenchmarkCachedKey measures the whole check of a cached key (parse,
// checksum, hash, cache hit, rate limit, tagging, placeholders): what the
// gateway adds in front of reverse_proxy on every request.
func BenchmarkCachedKey(b *testing.B) {
	s := newFakeStore()
	h := newBenchHandler(b, s, unlimited)
	serial, auths := cachedKeys(b, s, h, 1000)
	benchServe(b, h, serial, auths, wantStatus(http.StatusOK))
}

// BenchmarkCachedKeyQuota is BenchmarkCachedKey on a plan with a monthly
// quota: the quota's counting and its RateLimit item on top.
func BenchmarkCachedKeyQuota(b *testing.B) {
	s := newFakeStore()
	h := newBenchHandler(b, s, map[string]Plan{"growth": {Rate: maxRate, Burst: maxBurst, Quota: &Quota{Count: maxQuota, Period: PeriodMonth}}})
	serial, auths := cachedKeys(b, s, h, 1000)
	benchServe(b, h, serial, auths, func(b *testing.B, w *httptest.ResponseRecorder) {
		wantStatus(http.StatusOK)(b, w)
		if got := w.Header().Get("RateLimit-Policy"); !strings.Contains(got, "growth-month") {
			panic(fmt.Sprintf("RateLimit-Policy %q names no quota", got))
		}
	})
}

// BenchmarkCachedKeyRateLimited measures a cached key whose bucket is
// empty: answered 429 with its RateLimit fields, without the backend.
func BenchmarkCachedKeyRateLimited(b *testing.B) {
	s := newFakeStore()
	// The first request of each account, which caches its key, takes
	// the one token.
	h := newBenchHandler(b, s, map[string]Plan{"growth": {Rate: minRate, Burst: 1}})
	serial, auths := cachedKeys(b, s, h, 1000)
	benchServe(b, h, serial, auths, wantStatus(http.StatusTooManyRequests))
}

// BenchmarkRejectBadChecksum measures made-up keys: rejected before any
// cache or store lookup.
func BenchmarkRejectBadChecksum(b *testing.B) {
	s := newFakeStore()
	h := newBenchHandler(b, s, unlimited)
	bad := madeUpAuths(1000, func(key string) string { return key[:len(key)-1] + string(key[len(key)-1]^1) })
	benchServe(b, h, bad[0], bad, wantStatus(http.StatusUnauthorized))
	if n := s.lookups.Load(); n != 0 {
		b.Fatalf("bad checksums reached the store %d times", n)
	}
}

// BenchmarkUnknownKey measures well-formed keys the store does not know,
// answered from the negative cache (failed_auth off): the store sees each
// once.
func BenchmarkUnknownKey(b *testing.B) {
	s := newFakeStore()
	h := newBenchHandler(b, s, unlimited)
	unknown := madeUpAuths(1000, nil)
	br := newBenchRequests(unknown...)
	for range unknown {
		_ = h.ServeHTTP(httptest.NewRecorder(), br.take(nil), nopNext)
	}
	benchServe(b, h, unknown[0], unknown, wantStatus(http.StatusUnauthorized))
	if n := s.lookups.Load(); n != int64(len(unknown)) {
		b.Fatalf("%d unknown keys reached the store %d times, want once each", len(unknown), n)
	}
}

// BenchmarkPrepareRequest is what the benchmarks' request making costs
// alone (Caddy's server does the same before any handler runs): subtract
// it from a parallel benchmark's ns/op for the handler's share.
func BenchmarkPrepareRequest(b *testing.B) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		br := newBenchRequests("Bearer x")
		for pb.Next() {
			_ = br.take(nil)
		}
	})
}

// BenchmarkThrottledAddress measures an unknown key from an address that
// has used up its failed_auth guesses: answered 429 without a lookup.
func BenchmarkThrottledAddress(b *testing.B) {
	s := newFakeStore()
	h := newBenchHandler(b, s, unlimited)
	h.guessLimit = &FailedAuth{Count: 1, Window: caddy.Duration(time.Hour)}
	keys := madeUpAuths(1024, nil)
	br := newBenchRequests(keys...)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := br.take(b)
		caddyhttp.SetVar(r.Context(), caddyhttp.ClientIPVarKey, "203.0.113.9")
		clear(w.Header())
		w.Body.Reset()
		_ = h.ServeHTTP(w, r, nopNext)
	}
	b.StopTimer()
	if n := s.lookups.Load(); n != 1 {
		b.Fatalf("a throttled address reached the store %d times, want 1", n)
	}
}

// BenchmarkCachedKeyStored is BenchmarkCachedKey (serial) with more keys
// in the store and in the cache: the cost of a cached key should not grow
// with them. With 1,000,000 stored keys the cache is first filled to its
// capacity with cold keys, then the hot keys are requested until the
// cache holds them, and the measured requests cycle through the hot keys.
// The large cases take a minute to set up, so they run only with
// POSTSCALE_BENCH_LARGE=1:
//
//	POSTSCALE_BENCH_LARGE=1 go test -run '^$' -bench CachedKeyStored -benchmem .
func BenchmarkCachedKeyStored(b *testing.B) {
	for _, c := range []struct{ stored, hot int }{{1000, 1000}, {1_000_000, 1000}, {1_000_000, 100_000}} {
		b.Run(fmt.Sprintf("stored=%d/hot=%d", c.stored, c.hot), func(b *testing.B) {
			if c.stored > 1000 && os.Getenv("POSTSCALE_BENCH_LARGE") == "" {
				b.Skip("takes a minute to set up: POSTSCALE_BENCH_LARGE=1 go test -run '^$' -bench CachedKeyStored -benchmem .")
			}
			s := &bigStore{fakeStore: newFakeStore(), cold: make(map[[sha256.Size]byte]int32, c.stored-c.hot)}
			h := newBenchHandler(b, s, unlimited)
			for i := range c.stored - c.hot {
				var hash [sha256.Size]byte
				_, _ = rand.Read(hash[:])
				s.cold[hash] = int32(i)
				if i < keyringCapacity {
					if _, err := h.keys.lookup(b.Context(), hash, h.lookup); err != nil {
						b.Fatal(err)
					}
				}
			}
			auths := make([]string, c.hot)
			for i := range auths {
				key, _ := s.addFor(b, "hot_"+strconv.Itoa(i%1000))
				auths[i] = "Bearer " + key
			}
			// The cache admits a key it has seen asked for before over
			// one it holds that was asked for less: a few rounds.
			br := newBenchRequests(auths...)
			for range 4 * len(auths) {
				_ = h.ServeHTTP(httptest.NewRecorder(), br.take(nil), nopNext)
			}
			h.keys.cache.Wait()
			before := s.lookups.Load()
			wantStatus(http.StatusOK)(b, serveSerial(b, h, br))
			b.ReportMetric(float64(s.lookups.Load()-before)/float64(b.N), "lookups/op")
		})
	}
}

// bigStore is a fake store with many cold keys, kept as a map the garbage
// collector need not scan (a real store's records are not on the Go
// heap), their records made when looked up.
type bigStore struct {
	*fakeStore
	cold map[[sha256.Size]byte]int32
}

func (s *bigStore) LookupKey(ctx context.Context, h [sha256.Size]byte) (KeyRecord, Account, error) {
	i, ok := s.cold[h]
	if !ok {
		return s.fakeStore.LookupKey(ctx, h)
	}
	s.lookups.Add(1)
	id := strconv.Itoa(int(i))
	return KeyRecord{ID: "key_cold" + id, Account: "cold_" + id, Name: "cold", Mode: ModeLive, Hash: h},
		Account{ID: "cold_" + id, Plan: "growth"}, nil
}

// BenchmarkKeyringCached measures the cache alone: a cached key's entry
// found by its hash, serial over one key and parallel over 1000.
func BenchmarkKeyringCached(b *testing.B) {
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
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if e := k.cached(&hashes[0], now, testPolicy); e == nil || !e.found {
				b.Fatal("a cached key missed")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := int(time.Now().UnixNano())
			for pb.Next() {
				k.cached(&hashes[i%len(hashes)], now, testPolicy)
				i++
			}
		})
	})
}

// BenchmarkTimeNow is what reading the clock costs on this machine (on a
// virtual clock, tens to hundreds of ns): why the request path takes
// Caddy's start time instead of reading it again.
func BenchmarkTimeNow(b *testing.B) {
	var t time.Time
	for b.Loop() {
		t = time.Now()
	}
	_ = t
}
