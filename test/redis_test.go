package test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// redisLimiter is the limiter subdirective for a Redis URL and key prefix.
func redisLimiter(url, prefix, options string) string {
	return "limiter redis " + url + " {\n\t\t\tprefix " + prefix + "\n\t\t\t" + options + "\n\t\t}"
}

// TestRedisLimiterGateway: with the redis limiter, the URL from an
// environment placeholder, a plan admits its burst and answers 429 as
// with the local buckets, the bucket is a key in Redis, and a forced
// reload gives no free burst.
func TestRedisLimiterGateway(t *testing.T) {
	url, prefix := testenv.Redis(t)
	t.Setenv("POSTSCALE_TEST_GATEWAY_REDIS", url)
	backend := newRecorder(t, "mail")
	site := gatewaySite(storePath(t), backend.addr(), "plan tiny 0.05 3\n\t\t"+redisLimiter("{env.POSTSCALE_TEST_GATEWAY_REDIS}", prefix, ""))
	loadCaddyfile(t, site)
	createAccount(t, "acme", "tiny")
	k := createKey(t, "acme", "server", "live")

	for _, wantR := range []int64{2, 1, 0} {
		r := admitted(t, backend, k.Key)
		assertPolicy(t, r, `"tiny";q=3;w=60`)
		assertRateLimit(t, r, "tiny", wantR)
	}
	r, retry := limited(t, backend, k.Key)
	assertRateLimit(t, r, "tiny", 0)
	if retry != 20*time.Second {
		t.Errorf("Retry-After %v; want 20s (one token at 0.05/s)", retry)
	}

	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(opts)
	defer rc.Close()
	if n, err := rc.Exists(context.Background(), prefix+"bucket:live:acme").Result(); err != nil || n != 1 {
		t.Errorf("the bucket is not in Redis (exists=%d, %v)", n, err)
	}

	if !reload(t, site, true) {
		t.Fatal("Caddy did not start the config again")
	}
	r, _ = limited(t, backend, k.Key)
	assertRateLimit(t, r, "tiny", 0)
}

// TestRedisLimiterGatewayWithoutRedis: a gateway whose Redis is down loads
// its config and answers from each replica's share of the plan: never a
// 5xx because of Redis.
func TestRedisLimiterGatewayWithoutRedis(t *testing.T) {
	url, prefix := testenv.Redis(t)
	proxy := testenv.NewProxy(t, testenv.RedisAddr(t, url))
	proxy.Refuse()
	backend := newRecorder(t, "mail")
	loadCaddyfile(t, gatewaySite(storePath(t), backend.addr(),
		"plan tiny 0.05 3\n\t\t"+redisLimiter(testenv.ThroughProxy(t, url, proxy.Addr()), prefix, "replicas 2")))
	createAccount(t, "acme", "tiny")
	k := createKey(t, "acme", "server", "live")

	// The share of one of two replicas: ceil(3/2) = 2 at once.
	for _, wantR := range []int64{1, 0} {
		r := admitted(t, backend, k.Key)
		assertPolicy(t, r, `"tiny";q=3;w=60`)
		assertRateLimit(t, r, "tiny", wantR)
	}
	r, retry := limited(t, backend, k.Key)
	if r.status != http.StatusTooManyRequests || retry != 40*time.Second {
		t.Errorf("past the share: %d with Retry-After %v; want 429 and 40s (one token at 0.025/s)", r.status, retry)
	}
}
