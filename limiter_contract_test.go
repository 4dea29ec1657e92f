package postscale

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// testLimiterContract checks what every Limiter must answer, on the real
// clock (a Redis limiter reads Redis's): the plans are slow enough (1 or
// 0.5 requests per second) that the milliseconds a test takes cannot
// change an answer. Each check expects exact values, so two limiters that
// pass give the same answers for the same traffic.
func testLimiterContract(t *testing.T, open func(t *testing.T) Limiter) {
	ctx := context.Background()
	take := func(lim Limiter, k bucketKey, l *limit) state {
		return lim.Take(ctx, k, l, time.Now())
	}
	// want checks the fields one request's answer sets, as the handler
	// sends them.
	want := func(t *testing.T, what string, st state, admitted bool, r, full, retry int64) {
		t.Helper()
		if st.admitted != admitted || st.remaining != r || st.full != full || st.retryAfter != retry {
			t.Fatalf("%s: got admitted=%v r=%d t=%d Retry-After=%d; want admitted=%v r=%d t=%d Retry-After=%d",
				what, st.admitted, st.remaining, st.full, st.retryAfter, admitted, r, full, retry)
		}
	}
	plan := func(t *testing.T, name string, rate float64, burst int) *limit {
		return mustLimit(t, name, Plan{Rate: rate, Burst: burst})
	}

	t.Run("burst then refused", func(t *testing.T) {
		lim := open(t)
		l := plan(t, "p", 1, 5)
		k := bucketKey{account: "acme", mode: ModeLive}
		for i := range int64(5) {
			want(t, "request of the burst", take(lim, k, l), true, 4-i, i+1, 0)
		}
		want(t, "request past the burst", take(lim, k, l), false, 0, 5, 1)
	})

	t.Run("slow plan says when to come back", func(t *testing.T) {
		lim := open(t)
		l := plan(t, "slow", 0.5, 1)
		k := bucketKey{account: "acme", mode: ModeLive}
		want(t, "first request", take(lim, k, l), true, 0, 2, 0)
		want(t, "second request at once", take(lim, k, l), false, 0, 2, 2)
	})

	t.Run("refused requests consume nothing", func(t *testing.T) {
		lim := open(t)
		l := plan(t, "p", 1, 5)
		k := bucketKey{account: "acme", mode: ModeLive}
		for range 5 {
			take(lim, k, l)
		}
		var st state
		for range 20 { // a client hammering while limited
			if st = take(lim, k, l); st.admitted {
				t.Fatal("a request past the burst was admitted")
			}
		}
		time.Sleep(time.Duration(st.retryAfter) * time.Second)
		want(t, "after waiting Retry-After", take(lim, k, l), true, 0, 5, 0)
		if st := take(lim, k, l); st.admitted {
			t.Fatal("two requests admitted after waiting for one token")
		}
	})

	t.Run("live, test and other accounts are separate", func(t *testing.T) {
		lim := open(t)
		l := plan(t, "p", 1, 5)
		live := bucketKey{account: "acme", mode: ModeLive}
		test := bucketKey{account: "acme", mode: ModeTest}
		other := bucketKey{account: "acme-2", mode: ModeLive}
		for range 5 {
			take(lim, test, l)
		}
		want(t, "test past its burst", take(lim, test, l), false, 0, 5, 1)
		want(t, "live after test used its burst", take(lim, live, l), true, 4, 1, 0)
		want(t, "another account", take(lim, other, l), true, 4, 1, 0)
	})

	t.Run("plan change carries usage over", func(t *testing.T) {
		lim := open(t)
		small := plan(t, "small", 1, 5)
		big := plan(t, "big", 1, 10)
		k := bucketKey{account: "acme", mode: ModeLive}
		for range 5 {
			take(lim, k, small)
		}
		want(t, "small plan past its burst", take(lim, k, small), false, 0, 5, 1)
		// Upgraded: the 5 used carry over into the bucket of 10.
		for i := range int64(5) {
			want(t, "upgrade, request of the 5 left", take(lim, k, big), true, 4-i, 6+i, 0)
		}
		want(t, "upgrade past the new burst", take(lim, k, big), false, 0, 10, 1)
		// Downgraded with all 10 used: no fresh burst.
		want(t, "downgrade with the bucket used up", take(lim, k, small), false, 0, 5, 1)
	})

	t.Run("plan change applies from when it came into force", func(t *testing.T) {
		lim := open(t)
		slow := plan(t, "slow", 0.05, 2)
		k := bucketKey{account: "acme", mode: ModeLive}
		take(lim, k, slow)
		take(lim, k, slow)
		// 200ms later the new limit comes into force: until then the
		// bucket refilled at the old rate (0.01 of a token), so both
		// requests are still used; from then on it refills at 10/s.
		time.Sleep(200 * time.Millisecond)
		p, _ := Plan{Rate: 10, Burst: 200}.withDefaultBurst()
		fast := newLimit("fast", p, time.Now())
		// Had the new rate applied since the last request, 2 tokens would
		// have come back and r would be 199.
		want(t, "first request under the new limit", take(lim, k, fast), true, 197, 1, 0)
	})

	// Two sites on one store define growth differently, and a client
	// alternates between them as fast as it can for a second (at most
	// 20,000 requests): together they admit no more than one bucket of the
	// larger rate and the larger burst would.
	for _, defs := range [][2]Plan{
		{{Rate: 10, Burst: 10}, {Rate: 100, Burst: 100}},
		{{Rate: 100, Burst: 10}, {Rate: 10, Burst: 100}}, // neither is the larger
	} {
		t.Run(fmt.Sprintf("two definitions of one plan: %v/s burst %d and %v/s burst %d", defs[0].Rate, defs[0].Burst, defs[1].Rate, defs[1].Burst), func(t *testing.T) {
			lim := open(t)
			now := time.Now()
			ls := [2]*limit{newLimit("growth", defs[0], now), newLimit("growth", defs[1], now.Add(time.Microsecond))}
			maxRate, maxBurst := max(defs[0].Rate, defs[1].Rate), max(defs[0].Burst, defs[1].Burst)
			k := bucketKey{account: "acme", mode: ModeLive}
			start := time.Now()
			sent, admitted := 0, 0
			for ; sent < 20_000 && time.Since(start) < time.Second; sent++ {
				l := ls[sent%2]
				if st := take(lim, k, l); st.admitted {
					admitted++
					if st.remaining > int64(l.burst-1) {
						t.Fatalf("request %d: r=%d beyond its own definition's burst %d", sent, st.remaining, l.burst)
					}
				}
			}
			elapsed := time.Since(start).Seconds()
			bound := int(maxRate*elapsed) + maxBurst + 1
			t.Logf("%d requests in %.2fs, %d admitted; one bucket of %v/s and burst %d allows %d", sent, elapsed, admitted, maxRate, maxBurst, bound)
			if sent < 4*bound {
				t.Skipf("only %d requests in a second: too few to tell", sent)
			}
			if admitted > bound {
				t.Errorf("admitted %d, more than the larger definitions allow (%d)", admitted, bound)
			}
		})
	}
}

func TestLocalLimiterContract(t *testing.T) {
	testLimiterContract(t, func(t *testing.T) Limiter {
		return &LocalLimiter{buckets: newBuckets()}
	})
}

func TestRedisLimiterContract(t *testing.T) {
	testLimiterContract(t, func(t *testing.T) Limiter {
		url, prefix := testenv.Redis(t)
		// A generous timeout, so that a slow round trip on a busy machine
		// does not turn the suite into a test of the local shares; and
		// every subtest must have been decided in Redis.
		l := openRedisLimiter(t, &RedisLimiter{URL: url, Prefix: prefix, Timeout: caddy.Duration(time.Second)}, zap.NewNop())
		t.Cleanup(func() { mustRedis(t, l) })
		return l
	})
}

// openRedisLimiter provisions l with logger, without a Caddy config, and
// cleans it up when the test ends. A test that expects decisions in Redis
// fails at once if Redis did not answer.
func openRedisLimiter(t testing.TB, l *RedisLimiter, logger *zap.Logger) *RedisLimiter {
	t.Helper()
	if err := l.open(context.Background(), logger); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return l
}
