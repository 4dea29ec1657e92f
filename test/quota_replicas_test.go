package test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// Quotas across replicas: with the Redis limiter the quota is decided in
// Redis with the bucket, so the fleet admits exactly the quota; without
// it, each replica learns the others' counts through the store once a
// second, and the fleet may overshoot by at most
// replicas × (2 × rate × 1s + burst), which the README states.

// quotaFleet runs n gateway processes on one PostgreSQL store with extra
// subdirectives, and an account on plan with a live key, used once on
// each replica so the measured run starts with the key cached.
func quotaFleet(t *testing.T, n int, plan, extra string, env ...string) ([]*proc, string) {
	t.Helper()
	dsn := testenv.Postgres(t)
	rec := newRecorder(t, "mail")
	site := replicaSite(rec.addr(), extra)
	var gws []*proc
	for i := range n {
		gws = append(gws, startProc(t, fmt.Sprintf("Q%d", i+1), site, append([]string{"PS_DSN=" + dsn}, env...)...))
	}
	gws[0].createAccount(t, "acme", plan)
	key := gws[0].createKey(t, "acme", "live").Key
	for _, g := range gws {
		if r := g.send(t, http.MethodPost, "/v1/emails", key); r.status != http.StatusOK {
			t.Fatalf("warming replica %s: got %d %s, want 200", g.name, r.status, r.body)
		}
	}
	return gws, key
}

func TestQuotaThreeReplicasOnRedis(t *testing.T) {
	redisURL, prefix := testenv.Redis(t)
	const quota = 150
	gws, key := quotaFleet(t, 3, "q", fmt.Sprintf(`plan q 1000 {
			quota %d day
		}
		limiter redis {env.PS_REDIS} {
			replicas 3
			timeout 200ms
			prefix {env.PS_PREFIX}
		}`, quota), "PS_REDIS="+redisURL, "PS_PREFIX="+prefix)
	// 3 admitted while warming; then each replica is offered 100 a
	// second for 2.5 s: 750 in all, against the 147 left.
	o := offer(t, gws, key, 100, 2500*time.Millisecond)
	got := o.admitted.Load() + 3
	t.Logf("3 replicas on Redis, quota %d: %s; admitted %d in all with the warm-up", quota, o, got)
	if got != quota {
		t.Errorf("the fleet admitted %d requests; want exactly the quota, %d", got, quota)
	}
	if o.other.Load() != 0 {
		t.Errorf("%d answers were neither 200 nor 429", o.other.Load())
	}
	// Every replica refuses now, with quota_exceeded.
	for _, g := range gws {
		assertRejected(t, g.send(t, http.MethodPost, "/v1/emails", key), quotaExceeded)
	}
	// The store has the counts, for the usage API, within a flush.
	time.Sleep(1500 * time.Millisecond)
	var u usageDoc
	gws[1].admin(t, http.MethodGet, "/postscale/accounts/acme/usage", nil, http.StatusOK, &u)
	if u.Live != quota || u.Remaining == nil || *u.Remaining != 0 {
		t.Errorf("usage after the run: %d live, remaining %v; want %d and 0", u.Live, u.Remaining, quota)
	}
}

func TestQuotaOvershootWithoutRedis(t *testing.T) {
	const (
		n      = 3
		rate   = 50
		burst  = 50
		quota  = 100
		offerD = 3 * time.Second
	)
	gws, key := quotaFleet(t, n, "q", fmt.Sprintf(`plan q %d %d {
			quota %d day
		}`, rate, burst, quota))
	o := offer(t, gws, key, rate, offerD)
	got := o.admitted.Load() + n
	bound := int64(n * (2*rate + burst))
	t.Logf("%d replicas without Redis, plan %d/s burst %d, quota %d, each offered %d/s for %v: %s; admitted %d in all, overshoot %d (bound %d)",
		n, rate, burst, quota, rate, offerD, o, got, got-quota, bound)
	if got < quota {
		t.Errorf("the fleet admitted %d, less than the quota %d", got, quota)
	}
	if got-quota > bound {
		t.Errorf("overshoot %d, above the stated bound replicas × (2 × rate × 1s + burst) = %d", got-quota, bound)
	}
	// Once the replicas have flushed and learned the totals, every one
	// refuses.
	time.Sleep(2500 * time.Millisecond)
	for _, g := range gws {
		assertRejected(t, g.send(t, http.MethodPost, "/v1/emails", key), quotaExceeded)
	}
}

// TestQuotaCrashLoss: a gateway killed without warning loses at most the
// counts of its last second (they were not flushed yet); one stopped
// gracefully loses none.
func TestQuotaCrashLoss(t *testing.T) {
	const rate = 100
	gws, key := quotaFleet(t, 1, "q", fmt.Sprintf(`plan q %d {
			quota 100000 day
		}`, rate))
	g := gws[0]
	usage := func() int64 {
		var u usageDoc
		g.admin(t, http.MethodGet, "/postscale/accounts/acme/usage", nil, http.StatusOK, &u)
		return u.Live
	}

	// A graceful stop flushes every count.
	o := offer(t, gws, key, rate, 1500*time.Millisecond)
	sent := o.admitted.Load() + 1 // and the warm-up
	g.stop(t)
	g.start(t)
	if got := usage(); got != sent {
		t.Errorf("after a graceful stop: %d counted, want all %d admitted", got, sent)
	}

	// A kill loses what the last flush had not written: at most a
	// second of admitted requests, here rate × 1s.
	o = offer(t, gws, key, rate, 1500*time.Millisecond)
	sent += o.admitted.Load()
	_ = g.cmd.Process.Kill()
	<-g.done
	g.done <- nil
	g.start(t)
	got := usage()
	t.Logf("after a kill: %d of %d admitted requests counted; lost %d (bound: the requests of the last second, at most rate × 1s + burst; offered at the rate, %d)", got, sent, sent-got, rate)
	if got > sent || sent-got > rate {
		t.Errorf("after a kill: %d counted of %d admitted; want at most %d lost", got, sent, rate)
	}
}
