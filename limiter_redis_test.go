package postscale

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// redisClient is a client of the test server for looking at the keys.
func redisClient(t testing.TB, redisURL string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// mustRedis fails the test if l is falling back: the answers it checks
// must come from Redis.
func mustRedis(t testing.TB, l *RedisLimiter) {
	t.Helper()
	if l.shared.fallback.Load() {
		t.Fatal("the limiter is falling back; want decisions in Redis")
	}
}

// TestRedisLimiterUsesRedisClock: two replicas whose clocks are hours
// apart share one bucket, refilled by Redis's clock alone.
func TestRedisLimiterUsesRedisClock(t *testing.T) {
	url, prefix := testenv.Redis(t)
	// The second replica reaches Redis through a proxy: another URL, so
	// its own client and pool entry, as on another machine.
	proxy := testenv.NewProxy(t, testenv.RedisAddr(t, url))
	a := openRedisLimiter(t, &RedisLimiter{URL: url, Prefix: prefix}, zap.NewNop())
	b := openRedisLimiter(t, &RedisLimiter{URL: testenv.ThroughProxy(t, url, proxy.Addr()), Prefix: prefix}, zap.NewNop())
	if a.shared == b.shared {
		t.Fatal("both replicas share one client; the test needs two")
	}
	l := mustLimit(t, "p", Plan{Rate: 1, Burst: 5})
	k := bucketKey{account: "acme", mode: ModeLive}
	ctx := context.Background()
	behind, ahead := func() time.Time { return time.Now().Add(-3 * time.Hour) }, func() time.Time { return time.Now().Add(5 * time.Hour) }
	steps := []struct {
		who   *RedisLimiter
		clock func() time.Time
		wantR int64
	}{{a, behind, 4}, {a, behind, 3}, {b, ahead, 2}, {a, behind, 1}, {b, ahead, 0}}
	for i, s := range steps {
		st := s.who.Take(ctx, k, l, s.clock())
		if !st.admitted || st.remaining != s.wantR {
			t.Fatalf("request %d: %+v; want admitted with r=%d", i+1, st, s.wantR)
		}
	}
	for _, r := range []*RedisLimiter{a, b} {
		if st := r.Take(ctx, k, l, ahead()); st.admitted || st.retryAfter != 1 {
			t.Fatalf("past the burst: %+v; want refused with Retry-After 1", st)
		}
		mustRedis(t, r)
	}
}

// TestRedisLimiterKeys: a bucket is one key that expires when the bucket
// would be full again, and a refused request writes nothing.
func TestRedisLimiterKeys(t *testing.T) {
	url, prefix := testenv.Redis(t)
	rc := redisClient(t, url)
	l := openRedisLimiter(t, &RedisLimiter{URL: url, Prefix: prefix}, zap.NewNop())
	ctx := context.Background()
	plan := mustLimit(t, "p", Plan{Rate: 1, Burst: 5})
	k := bucketKey{account: "acme_1-x", mode: ModeTest}
	key := prefix + "bucket:test:acme_1-x"

	pttl := func() time.Duration {
		t.Helper()
		d, err := rc.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	l.Take(ctx, k, plan, time.Now())
	if d := pttl(); d <= 900*time.Millisecond || d > time.Second {
		t.Fatalf("PTTL after one request of a 1/s bucket: %v; want about 1s (time to full)", d)
	}
	l.Take(ctx, k, plan, time.Now())
	l.Take(ctx, k, plan, time.Now())
	if d := pttl(); d <= 2900*time.Millisecond || d > 3*time.Second {
		t.Fatalf("PTTL after three requests: %v; want about 3s", d)
	}
	l.Take(ctx, k, plan, time.Now())
	l.Take(ctx, k, plan, time.Now())
	before, err := rc.HGetAll(ctx, key).Result()
	if err != nil || len(before) != 5 {
		t.Fatalf("bucket fields: %v (%v); want t, ts, r, b and n", before, err)
	}
	ttlBefore := pttl()
	for range 10 {
		if st := l.Take(ctx, k, plan, time.Now()); st.admitted {
			t.Fatal("request past the burst admitted")
		}
	}
	after, _ := rc.HGetAll(ctx, key).Result()
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("refused requests changed the bucket: %v, then %v", before, after)
	}
	if d := pttl(); d > ttlBefore {
		t.Errorf("refused requests extended the TTL: %v, then %v", ttlBefore, d)
	}
	keys, err := rc.Keys(ctx, prefix+"*").Result()
	if err != nil || len(keys) != 1 || keys[0] != key {
		t.Errorf("keys under the prefix: %v (%v); want only %s", keys, err, key)
	}
	mustRedis(t, l)

	// A fast bucket's key is gone once it would be full again.
	fast := mustLimit(t, "fast", Plan{Rate: 100, Burst: 2})
	fk := bucketKey{account: "quick", mode: ModeLive}
	l.Take(ctx, fk, fast, time.Now())
	time.Sleep(100 * time.Millisecond)
	if n, err := rc.Exists(ctx, prefix+"bucket:live:quick").Result(); err != nil || n != 0 {
		t.Errorf("a bucket full again still has its key (exists=%d, %v)", n, err)
	}
}

// TestRedisLimiterRecoversFromNoScript: after the server forgets the
// script (a restart, SCRIPT FLUSH), decisions still come from Redis and
// carry on the same bucket. SCRIPT FLUSH empties the whole server's script
// cache: only this test does it.
func TestRedisLimiterRecoversFromNoScript(t *testing.T) {
	url, prefix := testenv.Redis(t)
	rc := redisClient(t, url)
	obs, logs := observer.New(zapcore.InfoLevel)
	l := openRedisLimiter(t, &RedisLimiter{URL: url, Prefix: prefix}, zap.New(obs))
	ctx := context.Background()
	plan := mustLimit(t, "p", Plan{Rate: 1, Burst: 5})
	k := bucketKey{account: "acme", mode: ModeLive}
	if st := l.Take(ctx, k, plan, time.Now()); !st.admitted || st.remaining != 4 {
		t.Fatalf("first request: %+v", st)
	}
	if err := rc.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for i, wantR := range []int64{3, 2} { // EVAL loads the script, then EVALSHA finds it
		if st := l.Take(ctx, k, plan, time.Now()); !st.admitted || st.remaining != wantR {
			t.Fatalf("request %d after SCRIPT FLUSH: %+v; want admitted with r=%d", i+1, st, wantR)
		}
	}
	exists, err := rc.ScriptExists(ctx, takeScript.Hash()).Result()
	if err != nil || !exists[0] {
		t.Errorf("script not cached again after the EVAL fallback (%v, %v)", exists, err)
	}
	mustRedis(t, l)
	if logs.Len() != 0 {
		t.Errorf("logs: %v; want none", logs.All())
	}
}

// TestRedisLimiterCanceledRequest: a request whose client went away gets a
// local answer, and is no reason to stop asking Redis.
func TestRedisLimiterCanceledRequest(t *testing.T) {
	url, prefix := testenv.Redis(t)
	obs, logs := observer.New(zapcore.InfoLevel)
	l := openRedisLimiter(t, &RedisLimiter{URL: url, Prefix: prefix}, zap.New(obs))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	plan := mustLimit(t, "p", Plan{Rate: 1, Burst: 5})
	if st := l.Take(ctx, bucketKey{account: "gone", mode: ModeLive}, plan, time.Now()); !st.admitted {
		t.Fatalf("canceled request: %+v; want admitted (a fresh bucket)", st)
	}
	mustRedis(t, l)
	if logs.Len() != 0 {
		t.Errorf("logs: %v; want none", logs.All())
	}
}

// TestRedisLimiterAfterCleanup: a request still running when the last
// config using the connection is unloaded gets a local answer, with no
// failure logged and the fallback gauge left alone.
func TestRedisLimiterAfterCleanup(t *testing.T) {
	url, prefix := testenv.Redis(t)
	obs, logs := observer.New(zapcore.InfoLevel)
	l := &RedisLimiter{URL: url, Prefix: prefix}
	if err := l.open(context.Background(), zap.New(obs)); err != nil {
		t.Fatal(err)
	}
	gauge := testutil.ToFloat64(metricsLimiterFallback())
	if err := l.Cleanup(); err != nil {
		t.Fatal(err)
	}
	plan := mustLimit(t, "p", Plan{Rate: 1, Burst: 5})
	if st := l.Take(context.Background(), bucketKey{account: "late", mode: ModeLive}, plan, time.Now()); !st.admitted {
		t.Fatalf("request after cleanup: %+v; want admitted (a fresh bucket)", st)
	}
	if logs.Len() != 0 {
		t.Errorf("logs: %v; want none", logs.All())
	}
	if got := testutil.ToFloat64(metricsLimiterFallback()); got != gauge {
		t.Errorf("fallback gauge %v after cleanup; want %v", got, gauge)
	}
}

// commandCounter counts the commands a client sends, by name.
type commandCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessPipelineHook counts a pipeline (or MULTI/EXEC) as "pipeline":
// however many commands it holds, it is one round trip.
func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.mu.Lock()
		c.n["pipeline"]++
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}
func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.mu.Lock()
		c.n[cmd.Name()]++
		c.mu.Unlock()
		return next(ctx, cmd)
	}
}

// countCommands adds a commandCounter to l's client.
func countCommands(l *RedisLimiter) *commandCounter {
	c := &commandCounter{n: map[string]int{}}
	l.shared.client.AddHook(c)
	return c
}

// roundTrips is how many round trips the counts make: each command sent
// alone is one (the limiter never retries: MaxRetries is -1), and so is
// each pipeline.
func roundTrips(n map[string]int) int {
	sum := 0
	for _, v := range n {
		sum += v
	}
	return sum
}

// reset returns the counts so far and starts again from zero.
func (c *commandCounter) reset() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = map[string]int{}
	return n
}

const (
	msgFallBack = "redis limiter failing; each replica now decides locally on its share of the plans until Redis answers"
	msgBack     = "redis limiter answers again; deciding in Redis"
)

// TestRedisLimiterFallback cuts Redis off, as down (refused) and as hung
// (swallowed): the replica decides on its share without waiting, logs the
// switch once, leaves Redis alone but for a ping a second, and goes back
// to Redis soon after it answers.
func TestRedisLimiterFallback(t *testing.T) {
	faults := []struct {
		name  string
		fault func(*testenv.Proxy)
	}{
		{"refused", (*testenv.Proxy).Refuse},
		{"swallowed", (*testenv.Proxy).Swallow},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			url, prefix := testenv.Redis(t)
			proxy := testenv.NewProxy(t, testenv.RedisAddr(t, url))
			obs, logs := observer.New(zapcore.InfoLevel)
			const timeout = 50 * time.Millisecond
			l := openRedisLimiter(t, &RedisLimiter{
				URL:      testenv.ThroughProxy(t, url, proxy.Addr()),
				Prefix:   prefix,
				Replicas: 2,
				Timeout:  caddy.Duration(timeout),
			}, zap.New(obs))
			counter := countCommands(l)
			ctx := context.Background()
			plan := mustLimit(t, "p", Plan{Rate: 1, Burst: 5}) // a share: rate 0.5, burst 3
			if st := l.Take(ctx, bucketKey{account: "warm", mode: ModeLive}, plan, time.Now()); !st.admitted {
				t.Fatal("request before the fault refused")
			}
			mustRedis(t, l)
			gauge := testutil.ToFloat64(metricsLimiterFallback())

			f.fault(proxy)
			// Requests in flight together when Redis fails: each waits
			// the timeout at most, and the switch is logged once.
			var wg sync.WaitGroup
			var slowestMu sync.Mutex
			var slowest time.Duration
			for i := range 20 {
				wg.Go(func() {
					start := time.Now()
					l.Take(ctx, bucketKey{account: fmt.Sprintf("concurrent_%d", i), mode: ModeLive}, plan, start)
					d := time.Since(start)
					slowestMu.Lock()
					slowest = max(slowest, d)
					slowestMu.Unlock()
				})
			}
			wg.Wait()
			k := bucketKey{account: "fresh", mode: ModeLive}
			var admitted []int64 // r of each admitted request
			for range 50 {
				start := time.Now()
				st := l.Take(ctx, k, plan, start)
				slowest = max(slowest, time.Since(start))
				if st.admitted {
					admitted = append(admitted, st.remaining)
				}
			}
			t.Logf("slowest decision while Redis is %s: %v (timeout %v)", f.name, slowest, timeout)
			if slowest > 10*timeout {
				t.Errorf("a decision took %v; want about the timeout (%v) at most", slowest, timeout)
			}
			if fmt.Sprint(admitted) != "[2 1 0]" {
				t.Errorf("admitted in fallback with r = %v; want [2 1 0], the share ceil(5/2) = 3 of a fresh bucket", admitted)
			}
			if n := logs.FilterMessage(msgFallBack).FilterLevelExact(zapcore.WarnLevel).Len(); n != 1 {
				t.Errorf("fallback logged %d times at warn; want once", n)
			}
			if got := testutil.ToFloat64(metricsLimiterFallback()); got != gauge+1 {
				t.Errorf("fallback gauge %v; want %v", got, gauge+1)
			}

			// While falling back, requests leave Redis alone; the pinger
			// asks it once a second.
			counter.reset()
			start := time.Now()
			for time.Since(start) < 2500*time.Millisecond {
				l.Take(ctx, k, plan, time.Now())
				time.Sleep(10 * time.Millisecond)
			}
			n := counter.reset()
			elapsed := time.Since(start)
			if n["evalsha"]+n["eval"] != 0 {
				t.Errorf("requests in fallback sent %d scripts to Redis; want none", n["evalsha"]+n["eval"])
			}
			if maxPings := int(elapsed/time.Second) + 1; n["ping"] < 1 || n["ping"] > maxPings {
				t.Errorf("%d pings in %v of fallback; want 1 to %d (one a second)", n["ping"], elapsed, maxPings)
			}

			proxy.Pass()
			passed := time.Now()
			for logs.FilterMessage(msgBack).Len() == 0 {
				if time.Since(passed) > 3*time.Second {
					t.Fatalf("still falling back %v after Redis answers again", time.Since(passed))
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("back to Redis %v after it answers", time.Since(passed))
			if time.Since(passed) > 2500*time.Millisecond {
				t.Errorf("back to Redis only %v after it answers; want within about 1-2s", time.Since(passed))
			}
			rc := redisClient(t, url)
			for i := range 20 {
				k := bucketKey{account: fmt.Sprintf("after_%d", i), mode: ModeLive}
				if st := l.Take(ctx, k, plan, time.Now()); !st.admitted || st.remaining != 4 {
					t.Fatalf("a new account after Redis is back: %+v; want admitted with r=4 (the whole plan, not a share)", st)
				}
			}
			if n, err := rc.Exists(ctx, prefix+"bucket:live:after_0").Result(); err != nil || n != 1 {
				t.Errorf("no bucket in Redis after switching back (exists=%d, %v)", n, err)
			}
			mustRedis(t, l)
			if n := logs.FilterMessage(msgBack).FilterLevelExact(zapcore.InfoLevel).Len(); n != 1 {
				t.Errorf("switching back logged %d times at info; want once", n)
			}
			if n := logs.FilterMessage(msgFallBack).Len(); n != 1 {
				t.Errorf("fallback logged %d times in all; want once", n)
			}
			if got := testutil.ToFloat64(metricsLimiterFallback()); got != gauge {
				t.Errorf("fallback gauge after switching back %v; want %v", got, gauge)
			}
		})
	}
}

// TestRedisLimiterStartsWithoutRedis: a config loads while Redis is down,
// deciding locally until Redis answers.
func TestRedisLimiterStartsWithoutRedis(t *testing.T) {
	url, prefix := testenv.Redis(t)
	proxy := testenv.NewProxy(t, testenv.RedisAddr(t, url))
	proxy.Refuse()
	obs, logs := observer.New(zapcore.InfoLevel)
	l := openRedisLimiter(t, &RedisLimiter{URL: testenv.ThroughProxy(t, url, proxy.Addr()), Prefix: prefix, Replicas: 3}, zap.New(obs))
	if !l.shared.fallback.Load() || logs.FilterMessage(msgFallBack).Len() != 1 {
		t.Fatalf("provisioned without Redis: fallback=%v, logs %v; want falling back, logged once", l.shared.fallback.Load(), logs.All())
	}
	plan := mustLimit(t, "p", Plan{Rate: 1, Burst: 5}) // a share of 2
	k := bucketKey{account: "acme", mode: ModeLive}
	if st := l.Take(context.Background(), k, plan, time.Now()); !st.admitted || st.remaining != 1 {
		t.Fatalf("first request without Redis: %+v; want admitted with r=1 (share ceil(5/3) = 2)", st)
	}
	proxy.Pass()
	deadline := time.Now().Add(3 * time.Second)
	for l.shared.fallback.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	mustRedis(t, l)
	if st := l.Take(context.Background(), k, plan, time.Now()); !st.admitted || st.remaining != 4 {
		t.Fatalf("first request in Redis: %+v; want admitted with r=4", st)
	}
}

// TestRedisLimiterProvision loads the module as a config does: the URL
// from an environment placeholder, the defaults, one connection shared by
// the configs of a reload, and errors that name the field.
func TestRedisLimiterProvision(t *testing.T) {
	url, prefix := testenv.Redis(t)
	t.Setenv("POSTSCALE_TEST_LIMITER_URL", url)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	l := &RedisLimiter{URL: "{env.POSTSCALE_TEST_LIMITER_URL}", Prefix: prefix}
	if err := l.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer l.Cleanup()
	if l.Replicas != 1 || time.Duration(l.Timeout) != 50*time.Millisecond {
		t.Errorf("defaults: replicas %d, timeout %v; want 1 and 50ms", l.Replicas, time.Duration(l.Timeout))
	}
	mustRedis(t, l)
	if st := l.Take(context.Background(), bucketKey{account: "acme", mode: ModeLive}, mustLimit(t, "p", Plan{Rate: 1, Burst: 2}), time.Now()); !st.admitted || st.remaining != 1 {
		t.Fatalf("request: %+v", st)
	}
	opts := l.shared.client.Options()
	if !opts.ContextTimeoutEnabled || opts.MaxRetries != 0 || opts.ReadTimeout != 50*time.Millisecond ||
		opts.WriteTimeout != 50*time.Millisecond || opts.PoolTimeout != 50*time.Millisecond || opts.DialTimeout != 50*time.Millisecond {
		t.Errorf("client options: context timeouts %v, retries %d, read %v, write %v, pool %v, dial %v",
			opts.ContextTimeoutEnabled, opts.MaxRetries, opts.ReadTimeout, opts.WriteTimeout, opts.PoolTimeout, opts.DialTimeout)
	}

	// A reload: the new config joins the connection and the shares.
	reloaded := &RedisLimiter{URL: url, Prefix: prefix}
	if err := reloaded.open(context.Background(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	if reloaded.shared != l.shared || reloaded.shares != l.shares {
		t.Error("a config on the same URL, prefix and timeout opened another connection or share set")
	}
	// A reload with another timeout: a connection with that timeout, the
	// same shares.
	slower := &RedisLimiter{URL: url, Prefix: prefix, Timeout: caddy.Duration(200 * time.Millisecond)}
	if err := slower.open(context.Background(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	if slower.shared == l.shared || slower.shares != l.shares {
		t.Error("a config with another timeout shares the connection, or not the shares")
	}
	if got := slower.shared.client.Options().ReadTimeout; got != 200*time.Millisecond {
		t.Errorf("read timeout of the new connection: %v; want 200ms", got)
	}
	if err := slower.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := l.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := reloaded.shared.client.Ping(context.Background()).Err(); err != nil {
		t.Errorf("the old config's cleanup closed the connection the new one uses: %v", err)
	}
	if err := reloaded.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := reloaded.shared.client.Ping(context.Background()).Err(); err == nil {
		t.Error("the connection is still open after the last config using it was cleaned up")
	}
	l.shared = nil // cleaned up already

	errs := []struct {
		name    string
		l       RedisLimiter
		want    string
		notWant string
	}{
		{"no url", RedisLimiter{}, "url is required", ""},
		{"empty placeholder", RedisLimiter{URL: "{env.POSTSCALE_TEST_UNSET_VARIABLE}"}, "url: evaluated placeholder {env.POSTSCALE_TEST_UNSET_VARIABLE} is empty", ""},
		{"unset password placeholder", RedisLimiter{URL: "redis://:{env.POSTSCALE_TEST_UNSET_VARIABLE}@127.0.0.1:6379/0"}, "url: evaluated placeholder {env.POSTSCALE_TEST_UNSET_VARIABLE} is empty", ""},
		{"bad scheme", RedisLimiter{URL: "http://127.0.0.1:6379"}, "url: redis: invalid URL scheme: http", ""},
		{"bad port, password kept out", RedisLimiter{URL: "redis://user:hunter2@127.0.0.1:port/0"}, "url: invalid port", "hunter2"},
		{"bad db", RedisLimiter{URL: "redis://127.0.0.1:6379/x"}, "url: redis: invalid database number", ""},
		{"negative replicas", RedisLimiter{URL: url, Replicas: -1}, "replicas must be at least 1, got -1", ""},
		{"negative timeout", RedisLimiter{URL: url, Timeout: -1}, "timeout must not be negative", ""},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.l.Provision(ctx)
			if err == nil {
				tt.l.Cleanup()
				t.Fatal("provisioned; want an error")
			}
			if !strings.Contains(err.Error(), tt.want) || (tt.notWant != "" && strings.Contains(err.Error(), tt.notWant)) {
				t.Errorf("error %q; want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestRedisLimiterCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    RedisLimiter
		wantErr string
	}{
		{"url only", `redis redis://127.0.0.1:6379/0`, RedisLimiter{URL: "redis://127.0.0.1:6379/0"}, ""},
		{"placeholder", `redis {env.POSTSCALE_REDIS_URL}`, RedisLimiter{URL: "{env.POSTSCALE_REDIS_URL}"}, ""},
		{"every option", `redis rediss://u:p@redis:6380/2 {
			replicas 3
			timeout 20ms
			prefix gw1:
		}`, RedisLimiter{URL: "rediss://u:p@redis:6380/2", Replicas: 3, Timeout: caddy.Duration(20 * time.Millisecond), Prefix: "gw1:"}, ""},
		{"no url", `redis`, RedisLimiter{}, "url: missing"},
		{"no url, a block", "redis {\n replicas 2\n}", RedisLimiter{}, "url: missing"},
		{"two urls", `redis redis://a redis://b`, RedisLimiter{}, "wrong argument count"},
		{"unknown option", "redis redis://a {\n replica 2\n}", RedisLimiter{}, `unrecognized redis limiter option "replica"`},
		{"unknown option without value", "redis redis://a {\n tls\n}", RedisLimiter{}, `unrecognized redis limiter option "tls"`},
		{"repeated option", "redis redis://a {\n replicas 2\n replicas 3\n}", RedisLimiter{}, "replicas: given more than once"},
		{"zero replicas", "redis redis://a {\n replicas 0\n}", RedisLimiter{}, `replicas: must be a whole number, at least 1, got "0"`},
		{"fractional replicas", "redis redis://a {\n replicas 1.5\n}", RedisLimiter{}, "replicas: must be a whole number"},
		{"bad timeout", "redis redis://a {\n timeout soon\n}", RedisLimiter{}, `timeout: must be a positive duration, got "soon"`},
		{"zero timeout", "redis redis://a {\n timeout 0s\n}", RedisLimiter{}, "timeout: must be a positive duration"},
		{"empty prefix", "redis redis://a {\n prefix \"\"\n}", RedisLimiter{}, "prefix: must not be empty"},
		{"option without value", "redis redis://a {\n timeout\n}", RedisLimiter{}, "timeout: missing value"},
		{"option with two values", "redis redis://a {\n prefix a b\n}", RedisLimiter{}, "prefix: takes one value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got RedisLimiter
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestHandlerWithRedisLimiter: the handler's answers with its buckets in
// Redis, as with the local ones.
func TestHandlerWithRedisLimiter(t *testing.T) {
	url, prefix := testenv.Redis(t)
	s := newFakeStore() // account acme on growth
	h := newTestHandler(t, s, map[string]Plan{"growth": {Rate: 1, Burst: 2}})
	h.limiter = openRedisLimiter(t, &RedisLimiter{URL: url, Prefix: prefix}, zap.NewNop())
	key, _ := s.add(t)
	var codes, limits []string
	var w *httptest.ResponseRecorder
	for range 3 {
		w = httptest.NewRecorder()
		r, _ := newRequest(key)
		if err := h.ServeHTTP(w, r, &recordingNext{}); err != nil {
			t.Fatal(err)
		}
		codes = append(codes, fmt.Sprint(w.Code))
		limits = append(limits, w.Header().Get("RateLimit"))
		if got := w.Header().Get("RateLimit-Policy"); got != `"growth";q=2;w=2` {
			t.Errorf("RateLimit-Policy: %q", got)
		}
	}
	if got := strings.Join(codes, " "); got != "202 202 429" {
		t.Errorf("statuses %s; want 202 202 429", got)
	}
	if got := strings.Join(limits, " "); got != `"growth";r=1;t=1 "growth";r=0;t=2 "growth";r=0;t=2` {
		t.Errorf("RateLimit fields %s", got)
	}
	if got := w.Header().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After %q; want 1", got)
	}
}

// TestRedisLimiterShareAllocatesNothing: a decision on a share allocates nothing for a bucket it has: the share of
// a plan is built on the stack.
func TestRedisLimiterShareAllocatesNothing(t *testing.T) {
	l := &RedisLimiter{Replicas: 3, shares: newBuckets()}
	plan := mustLimit(t, "p", Plan{Rate: 1e6, Burst: 1e6})
	k := bucketKey{account: "acme", mode: ModeLive}
	l.takeShare(k, plan, t0)
	now := t0
	if n := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Millisecond)
		l.takeShare(k, plan, now)
	}); n != 0 {
		t.Errorf("%v allocations per decision on a share; want 0", n)
	}
}

// TestRedisLimiterOneRoundTrip: every decision in Redis, admitted or
// refused, with or without a quota, is one command and one round trip:
// the script, run by its digest. A second command per decision (a read
// before the script, a separate EXPIRE, an EVAL resent after NOSCRIPT)
// would double the latency each request waits for Redis.
func TestRedisLimiterOneRoundTrip(t *testing.T) {
	url, prefix := testenv.Redis(t)
	l := openRedisLimiter(t, &RedisLimiter{URL: url, Prefix: prefix, Timeout: caddy.Duration(time.Second)}, zap.NewNop())
	counter := countCommands(l)
	ctx := context.Background()
	plan := mustLimit(t, "p", Plan{Rate: 1, Burst: 2})
	// The pool's first connection says hello to Redis once; that is the
	// connection's round trip, not a decision's.
	l.Take(ctx, bucketKey{account: "warm", mode: ModeLive}, plan, time.Now())
	counter.reset()

	want := func(what string, decisions int) {
		t.Helper()
		n := counter.reset()
		if got := roundTrips(n); got != decisions || n["evalsha"] != decisions {
			t.Errorf("%s: %d decisions sent %v to Redis (%d round trips); want %d, one EVALSHA each", what, decisions, n, got, decisions)
		}
	}
	k := bucketKey{account: "acme", mode: ModeLive}
	var got []bool
	for range 3 { // a new bucket, an existing one, and a refusal
		got = append(got, l.Take(ctx, k, plan, time.Now()).admitted)
	}
	if fmt.Sprint(got) != "[true true false]" {
		t.Fatalf("admitted %v; want [true true false] (burst 2)", got)
	}
	want("Take", 3)

	q := newQuotaPolicy("p", Quota{Count: 2, Period: PeriodDay})
	start, end := periodAt(time.Time{}, PeriodDay, time.Now())
	c := &quotaCounter{quotaKey: quotaKey{account: "quota", period: PeriodDay, start: start.UnixNano()}, end: end.UnixNano()}
	qk := bucketKey{account: "quota", mode: ModeLive}
	type answer struct{ admitted, exceeded, ok bool }
	var answers []answer
	for range 3 { // two within the quota, then one past it
		st, exceeded, ok := l.TakeQuota(ctx, qk, plan, q, c, time.Now())
		answers = append(answers, answer{st.admitted, exceeded, ok})
	}
	if fmt.Sprint(answers) != "[{true false true} {true false true} {false true true}]" {
		t.Fatalf("TakeQuota answers %v; want two admitted, then refused by the quota, all decided in Redis", answers)
	}
	want("TakeQuota", 3)
	mustRedis(t, l)
}

// Decisions made while the senders are busy go to Redis together, in
// fewer round trips than decisions, and each is decided as if alone: a
// bucket of 50 admits exactly 50 of 102 requests.
func TestRedisLimiterBatchesConcurrentDecisions(t *testing.T) {
	url, prefix := testenv.Redis(t)
	l := openRedisLimiter(t, &RedisLimiter{URL: url, Prefix: prefix, Timeout: caddy.Duration(5 * time.Second)}, zap.NewNop())
	plan := mustLimit(t, "p", Plan{Rate: minRate, Burst: 50})
	ctx := context.Background()
	l.Take(ctx, bucketKey{account: "warm", mode: ModeLive}, plan, time.Now())
	counter := countCommands(l)
	gate := &holdRoundTrips{entered: make(chan struct{}, redisSenders), release: make(chan struct{})}
	l.shared.client.AddHook(gate)

	k := bucketKey{account: "acme", mode: ModeLive}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	take := func() {
		if l.Take(ctx, k, plan, time.Now()).admitted {
			admitted.Add(1)
		}
	}
	// One decision per sender, each held in its round trip…
	for range redisSenders {
		wg.Go(take)
		<-gate.entered
	}
	// …while 100 more queue up.
	for range 100 {
		wg.Go(take)
	}
	for len(l.shared.queue) < 100 {
		time.Sleep(time.Millisecond)
	}
	close(gate.release)
	wg.Wait()

	decisions := 100 + redisSenders
	if got := admitted.Load(); got != 50 {
		t.Errorf("%d concurrent decisions on a bucket of 50 admitted %d; want 50", decisions, got)
	}
	if n := roundTrips(counter.reset()); n > decisions/4 {
		t.Errorf("%d decisions made together took %d round trips; want them sent in batches", decisions, n)
	}
	mustRedis(t, l)
}

// holdRoundTrips holds every round trip to Redis until release is
// closed, saying on entered that one is held.
type holdRoundTrips struct {
	entered chan struct{}
	release chan struct{}
}

func (h *holdRoundTrips) hold() {
	select {
	case <-h.release:
	default:
		select {
		case h.entered <- struct{}{}:
		default:
		}
		<-h.release
	}
}

func (h *holdRoundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdRoundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.hold()
		return next(ctx, cmd)
	}
}
func (h *holdRoundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.hold()
		return next(ctx, cmds)
	}
}

// redisStats is what the Redis server reports having spent: the limiter
// script's calls and their µs (INFO commandstats: EVALSHA and EVAL), and
// the server's CPU time in µs (INFO cpu: user and system, every thread,
// so the network I/O of each call too).
type redisStats struct{ calls, scriptUsec, cpuUsec float64 }

func readRedisStats(tb testing.TB, rc *redis.Client) redisStats {
	tb.Helper()
	info, err := rc.Info(context.Background(), "commandstats", "cpu").Result()
	if err != nil {
		tb.Fatalf("INFO: %v", err)
	}
	var s redisStats
	for line := range strings.Lines(info) {
		name, value, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch name {
		case "cmdstat_evalsha", "cmdstat_eval":
			for field := range strings.SplitSeq(value, ",") {
				k, v, _ := strings.Cut(field, "=")
				f, _ := strconv.ParseFloat(v, 64)
				switch k {
				case "calls":
					s.calls += f
				case "usec":
					s.scriptUsec += f
				}
			}
		case "used_cpu_user", "used_cpu_sys":
			f, _ := strconv.ParseFloat(value, 64)
			s.cpuUsec += f * 1e6
		}
	}
	return s
}

// redisCosts measures what b's decisions cost beyond ns/op and allocs/op.
// Call it before the timed loop and call the function it returns after,
// which reports per decision: round trips to Redis (counted by a client
// hook), script runs Redis counted (above 1 when something else runs
// scripts on the server at the same time, as other test runs on a shared
// server do), and µs of CPU this process used (the gateway's side: the
// client, its goroutines and the GC); and per script run Redis counted,
// so that others' runs of the same script do not inflate them: µs Redis
// spent in the script, and µs of CPU the whole Redis server used (its
// network I/O too, and anything else it served meanwhile).
func redisCosts(b *testing.B, url string, l *RedisLimiter) func() {
	rc := redisClient(b, url)
	counter := countCommands(l)
	before, cpu := readRedisStats(b, rc), processCPU()
	return func() {
		b.StopTimer()
		now := processCPU()
		after := readRedisStats(b, rc)
		n := float64(b.N)
		b.ReportMetric(float64(roundTrips(counter.reset()))/n, "roundtrips/op")
		if calls := after.calls - before.calls; calls > 0 {
			b.ReportMetric(calls/n, "redis-calls/op")
			b.ReportMetric((after.scriptUsec-before.scriptUsec)/calls, "redis-script-µs/call")
			b.ReportMetric((after.cpuUsec-before.cpuUsec)/calls, "redis-cpu-µs/call")
		}
		if cpu >= 0 && now >= 0 {
			b.ReportMetric(float64((now-cpu).Microseconds())/n, "gw-cpu-µs/op")
		}
		mustRedis(b, l)
	}
}

// benchRedisTimeout is the Redis limiter's timeout in the benchmarks: on
// a busy machine a decision now and then takes longer than the default
// 50ms, and the limiter would fall back, leaving the rest of the run
// measuring the shares instead of Redis.
const benchRedisTimeout = caddy.Duration(time.Second)

// BenchmarkRedisLimiterTake: one decision is one round trip to Redis.
// Besides time and allocations it reports the round trips, and the CPU
// Redis and this process spent, per decision (see redisCosts).
func BenchmarkRedisLimiterTake(b *testing.B) {
	url, prefix := testenv.Redis(b)
	l := openRedisLimiter(b, &RedisLimiter{URL: url, Prefix: prefix, Timeout: benchRedisTimeout}, zap.NewNop())
	plan := mustLimit(b, "scale", Plan{Rate: maxRate, Burst: maxBurst})
	keys := make([]bucketKey, 1000)
	for i := range keys {
		keys[i] = bucketKey{account: fmt.Sprintf("acct_%d", i), mode: ModeLive}
	}
	ctx := context.Background()
	l.Take(ctx, keys[0], plan, time.Time{}) // the pool's connection
	report := redisCosts(b, url, l)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		l.Take(ctx, keys[i%len(keys)], plan, time.Time{})
	}
	report()
}

// BenchmarkRedisLimiterTakeParallel: decisions from 16 goroutines per
// core at once, each on its own accounts, sharing the client's pool.
func BenchmarkRedisLimiterTakeParallel(b *testing.B) {
	url, prefix := testenv.Redis(b)
	l := openRedisLimiter(b, &RedisLimiter{URL: url, Prefix: prefix, Timeout: benchRedisTimeout}, zap.NewNop())
	plan := mustLimit(b, "scale", Plan{Rate: maxRate, Burst: maxBurst})
	var next atomic.Int64
	ctx := context.Background()
	report := redisCosts(b, url, l)
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		base := next.Add(1) * 1000
		keys := make([]bucketKey, 1000)
		for i := range keys {
			keys[i] = bucketKey{account: fmt.Sprintf("acct_%d", base+int64(i)), mode: ModeLive}
		}
		for i := 0; pb.Next(); i++ {
			l.Take(ctx, keys[i%len(keys)], plan, time.Time{})
		}
	})
	report()
}

// BenchmarkRedisLimiterTakeQuota: a live request with a quota, its bucket
// and quota counter decided together in one round trip.
func BenchmarkRedisLimiterTakeQuota(b *testing.B) {
	url, prefix := testenv.Redis(b)
	l := openRedisLimiter(b, &RedisLimiter{URL: url, Prefix: prefix, Timeout: benchRedisTimeout}, zap.NewNop())
	plan := mustLimit(b, "scale", Plan{Rate: maxRate, Burst: maxBurst})
	q := newQuotaPolicy("scale", Quota{Count: 1 << 62, Period: PeriodMonth})
	start, end := periodAt(time.Time{}, PeriodMonth, time.Now())
	keys := make([]bucketKey, 1000)
	counters := make([]*quotaCounter, len(keys))
	for i := range keys {
		keys[i] = bucketKey{account: fmt.Sprintf("acct_%d", i), mode: ModeLive}
		counters[i] = &quotaCounter{quotaKey: quotaKey{account: keys[i].account, period: PeriodMonth, start: start.UnixNano()}, end: end.UnixNano()}
	}
	ctx := context.Background()
	l.Take(ctx, keys[0], plan, time.Time{}) // the pool's connection
	report := redisCosts(b, url, l)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		j := i % len(keys)
		if _, _, ok := l.TakeQuota(ctx, keys[j], plan, q, counters[j], time.Time{}); !ok {
			b.Fatal("TakeQuota was not decided in Redis")
		}
	}
	report()
}

// TestRedisLimiterReplyErrorDoesNotSwitch: Redis up but answering the
// script with an error for one bucket (here its key holds a string, so the
// script's HMGET fails with WRONGTYPE): that request is decided locally,
// the replica keeps deciding every other bucket in Redis, and the error is
// logged once, not per request and not as an outage.
func TestRedisLimiterReplyErrorDoesNotSwitch(t *testing.T) {
	url, prefix := testenv.Redis(t)
	rc := redisClient(t, url)
	obs, logs := observer.New(zapcore.InfoLevel)
	l := openRedisLimiter(t, &RedisLimiter{URL: url, Prefix: prefix, Timeout: caddy.Duration(time.Second)}, zap.New(obs))
	ctx := context.Background()
	plan := mustLimit(t, "p", Plan{Rate: 1, Burst: 5})
	if err := rc.Set(ctx, prefix+"bucket:live:broken", "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		l.Take(ctx, bucketKey{account: "broken", mode: ModeLive}, plan, time.Now())
	}
	mustRedis(t, l)
	if st := l.Take(ctx, bucketKey{account: "fine", mode: ModeLive}, plan, time.Now()); !st.admitted || st.remaining != 4 {
		t.Fatalf("another bucket: %+v; want admitted in Redis with r=4", st)
	}
	if n, err := rc.Exists(ctx, prefix+"bucket:live:fine").Result(); err != nil || n != 1 {
		t.Errorf("the other bucket's key in Redis: exists=%d err=%v; want it written by Redis", n, err)
	}
	var warns int
	for _, e := range logs.All() {
		if strings.Contains(e.Message, "answers the limiter script with an error") {
			warns++
		} else {
			t.Errorf("unexpected log %q", e.Message)
		}
	}
	if warns != 1 {
		t.Errorf("warnings about the error answer: %d, want 1", warns)
	}
}
