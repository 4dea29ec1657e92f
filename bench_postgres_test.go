package postscale

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// largeEnv turns on the tests and benchmarks whose set-up is large (a
// million keys or buckets): ./test.sh runs every test and every benchmark
// once, and must stay quick.
const largeEnv = "POSTSCALE_BENCH_LARGE"

// needLarge skips tb unless largeEnv is 1, saying how to run it.
func needLarge(tb testing.TB, what string) {
	tb.Helper()
	if os.Getenv(largeEnv) == "1" {
		return
	}
	run := "-run '^" + tb.Name() + "$' -v"
	if _, ok := tb.(*testing.B); ok {
		run = "-run '^$' -bench '^" + tb.Name() + "$' -benchmem"
	}
	tb.Skipf("%s: set %s=1 to run it, e.g. %s=1 go test %s .", what, largeEnv, largeEnv, run)
}

// atScale is large with POSTSCALE_BENCH_LARGE=1, else small: for tests
// that check at a small scale in every run what issue 12 asks at a large
// one.
func atScale(small, large int) int {
	if os.Getenv(largeEnv) == "1" {
		return large
	}
	return small
}

// seedPostgresKeys writes a live key for each of hashes, spread over one
// account per 100 keys (on plan growth), straight into s's tables with
// COPY, in the order of their hashes so that the unique index on the
// hash grows at its end: a million take seconds, where CreateKeys would
// take minutes. s must have migrated its schema (OpenPostgresStore does).
func seedPostgresKeys(tb testing.TB, s *PostgresStore, hashes [][sha256.Size]byte) {
	tb.Helper()
	ctx := context.Background()
	created := time.Now().UTC().Truncate(time.Second)
	n, accounts := len(hashes), (len(hashes)+99)/100
	i := 0
	if _, err := s.db.pool.CopyFrom(ctx, pgx.Identifier{"postscale_accounts"}, []string{"id", "plan", "created_at"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if i == accounts {
				return nil, nil
			}
			i++
			return []any{seedAccount(i - 1), "growth", created}, nil
		})); err != nil {
		tb.Fatalf("copying accounts: %v", err)
	}
	sorted := slices.SortedFunc(slices.Values(hashes), func(a, b [sha256.Size]byte) int { return bytes.Compare(a[:], b[:]) })
	i = 0
	scopes := []string{}
	if _, err := s.db.pool.CopyFrom(ctx, pgx.Identifier{"postscale_keys"},
		[]string{"id", "hash", "account", "name", "mode", "scopes", "redacted", "created_at"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if i == n {
				return nil, nil
			}
			row := []any{fmt.Sprintf("key_%010d", i), sorted[i][:], seedAccount(i / 100), "seeded", "live", scopes, "ps_live_…seed", created}
			i++
			return row, nil
		})); err != nil {
		tb.Fatalf("copying keys: %v", err)
	}
	if _, err := s.db.pool.Exec(ctx, "ANALYZE postscale_accounts, postscale_keys"); err != nil {
		tb.Fatalf("analyzing: %v", err)
	}
}

func seedAccount(i int) string { return fmt.Sprintf("acct_%08d", i) }

// fillerHashes are the hashes of n seeded keys nobody holds.
func fillerHashes(n int) [][sha256.Size]byte {
	hashes := make([][sha256.Size]byte, n)
	for i := range hashes {
		hashes[i] = sha256.Sum256([]byte("postscale seeded key " + strconv.Itoa(i)))
	}
	return hashes
}

// reportLatency reports the median and 99th percentile of the durations,
// in µs.
func reportLatency(b *testing.B, durations []time.Duration) {
	if len(durations) == 0 {
		return
	}
	slices.Sort(durations)
	at := func(p int) float64 {
		return float64(durations[min(len(durations)-1, len(durations)*p/100)]) / float64(time.Microsecond)
	}
	b.ReportMetric(at(50), "p50-µs")
	b.ReportMetric(at(99), "p99-µs")
}

// warmUp looks a key up once, outside the timing, so that the first
// lookup measured is not also the new database's first query on its
// connection (its catalog read, its plan): TestPostgresColdStart measures
// that one.
func warmUp(b *testing.B, s *PostgresStore) {
	b.Helper()
	if _, _, err := s.LookupKey(context.Background(), [sha256.Size]byte{}); err != ErrNotFound {
		b.Fatalf("looking up an unknown key: %v, want ErrNotFound", err)
	}
}

// BenchmarkPostgresLookupKey: the store's lookup of a key, as the
// keyring does for a key it has not cached, on loopback, by number of
// keys in the store. It reports the median and 99th percentile of one
// lookup besides the mean (ns/op). The million-key store is seeded only
// when POSTSCALE_BENCH_LARGE=1.
func BenchmarkPostgresLookupKey(b *testing.B) {
	for _, n := range []int{10_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			if n > 10_000 {
				needLarge(b, "seeds a million keys")
			}
			s := openTestPostgres(b, testenv.Postgres(b))
			all := fillerHashes(n)
			seedPostgresKeys(b, s, all)
			hashes := make([][sha256.Size]byte, 10_000) // spread over the store
			for i := range hashes {
				hashes[i] = all[i*(n/len(hashes))]
			}
			ctx := context.Background()
			warmUp(b, s)
			durations := make([]time.Duration, 0, 1024)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				start := time.Now()
				_, _, err := s.LookupKey(ctx, hashes[i%len(hashes)])
				durations = append(durations, time.Since(start))
				if err != nil {
					b.Fatal(err)
				}
			}
			reportLatency(b, durations)
		})
	}
}

// BenchmarkPostgresUncachedKey: the whole check of a valid key that is
// not cached, on the PostgreSQL store: the handler's miss path (a lookup
// slot, the store lookup, the entry built and cached, the rate limit).
// Each request brings a key not cached yet; the cache is emptied, outside
// the timing, when the keys have all been seen.
func BenchmarkPostgresUncachedKey(b *testing.B) {
	s := openTestPostgres(b, testenv.Postgres(b))
	const n = 10_000
	auths := make([][]string, n)
	hashes := make([][sha256.Size]byte, n)
	for i := range auths {
		key, err := NewKey(ModeLive)
		if err != nil {
			b.Fatal(err)
		}
		auths[i], hashes[i] = []string{"Bearer " + key}, HashKey(key)
	}
	seedPostgresKeys(b, s, hashes)
	warmUp(b, s)
	h := newTestHandler(b, s, unlimited)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	r, _ := newRequest("")
	w := httptest.NewRecorder()
	durations := make([]time.Duration, 0, 1024)
	lookups := testutil.ToFloat64(metrics.storeLookups)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%n == 0 && i > 0 {
			b.StopTimer()
			h.keys.invalidateAll()
			b.StartTimer()
		}
		r.Header["Authorization"] = auths[i%n]
		start := time.Now()
		_ = h.ServeHTTP(w, r, next)
		durations = append(durations, time.Since(start))
		if w.Code != http.StatusNoContent {
			b.Fatalf("status %d, want 204", w.Code)
		}
	}
	b.StopTimer()
	if got := testutil.ToFloat64(metrics.storeLookups) - lookups; got != float64(b.N) {
		b.Fatalf("%v store lookups for %d uncached keys; want one each", got, b.N)
	}
	reportLatency(b, durations)
}

// TestPostgresColdStart: a gateway started on a PostgreSQL store loads
// no key before it serves: a fresh Caddy answers its first request with
// one store lookup, and the next from its cache, whether the store holds
// a thousand keys or (with POSTSCALE_BENCH_LARGE=1) a million. The times
// are logged, not judged: BENCHMARKS.md quotes them.
func TestPostgresColdStart(t *testing.T) {
	for _, n := range []int{1_000, 1_000_000} {
		t.Run(fmt.Sprintf("keys=%d", n), func(t *testing.T) {
			if n > 1_000 {
				needLarge(t, "seeds a million keys")
			}
			dsn := testenv.Postgres(t)
			key, err := NewKey(ModeLive)
			if err != nil {
				t.Fatal(err)
			}
			seeded := time.Now()
			s := openTestPostgres(t, dsn)
			hashes := fillerHashes(n)
			hashes[n/2] = HashKey(key)
			seedPostgresKeys(t, s, hashes)
			t.Logf("seeded %d keys in %v", n, time.Since(seeded).Round(time.Millisecond))

			addr := freeAddr(t)
			cfg, _ := json.Marshal(map[string]any{
				"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
				"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"writer": map[string]any{"output": "discard"}}}},
				"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"cold": map[string]any{
					"listen": []string{addr},
					"routes": []any{map[string]any{"handle": []any{
						map[string]any{"handler": "postscale", "store": map[string]any{"backend": "postgres", "dsn": dsn}},
						map[string]any{"handler": "static_response", "status_code": 204},
					}}},
				}}}},
			})
			initMetrics()
			lookups := testutil.ToFloat64(metrics.storeLookups)
			start := time.Now()
			if err := testenv.LoadCaddy(cfg); err != nil {
				t.Fatalf("loading the config: %v", err)
			}
			t.Cleanup(func() { _ = caddy.Stop() })
			loaded := time.Since(start)
			client := &http.Client{Transport: &http.Transport{}}
			t.Cleanup(client.CloseIdleConnections)
			var took [2]time.Duration
			for i := range took {
				req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/emails", nil)
				req.Header.Set("Authorization", "Bearer "+key)
				sent := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("request %d: %v", i+1, err)
				}
				resp.Body.Close()
				took[i] = time.Since(sent)
				if resp.StatusCode != http.StatusNoContent {
					t.Fatalf("request %d: status %d, want 204 (admitted)", i+1, resp.StatusCode)
				}
			}
			t.Logf("%d keys in the store: config loaded in %v, first request answered %v later (%v in all), the next (cached) in %v",
				n, loaded.Round(time.Microsecond), took[0].Round(time.Microsecond), (loaded + took[0]).Round(time.Microsecond), took[1].Round(time.Microsecond))
			if got := testutil.ToFloat64(metrics.storeLookups) - lookups; got != 1 {
				t.Errorf("%v store lookups for two requests of one key after a start; want 1 (nothing preloaded, then cached)", got)
			}
		})
	}
}

// freeAddr returns a loopback address with a port free at the moment.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
