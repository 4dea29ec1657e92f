package postscale

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func mustLimit(t testing.TB, name string, p Plan) *limit {
	t.Helper()
	p, err := p.withDefaultBurst()
	if err != nil {
		t.Fatal(err)
	}
	return newLimit(name, p, time.Time{})
}

func TestBurstThenRefill(t *testing.T) {
	b := newBuckets()
	starter := mustLimit(t, "starter", DefaultPlans["starter"])
	k := bucketKey{account: "acme", mode: ModeLive}
	for i := range 10 {
		st := b.take(k, starter, t0)
		if !st.admitted || st.remaining != int64(9-i) {
			t.Fatalf("request %d of the burst: admitted=%v r=%d; want admitted, r=%d", i+1, st.admitted, st.remaining, 9-i)
		}
	}
	st := b.take(k, starter, t0)
	if st.admitted || st.retryAfter != 1 || st.remaining != 0 || st.full != 1 {
		t.Fatalf("11th request at once: %+v; want rejected, Retry-After 1, r=0, t=1", st)
	}
	// One token every 100ms.
	if st := b.take(k, starter, t0.Add(100*time.Millisecond)); !st.admitted {
		t.Fatal("no request admitted 100ms later")
	}
	if st := b.take(k, starter, t0.Add(100*time.Millisecond)); st.admitted {
		t.Fatal("two requests admitted 100ms after emptying a 10/s bucket")
	}
	// A second later the bucket is full again.
	for i := range 10 {
		if st := b.take(k, starter, t0.Add(1100*time.Millisecond)); !st.admitted {
			t.Fatalf("refilled bucket rejected request %d", i+1)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		name      string
		plan      Plan
		after     time.Duration // since the bucket was emptied
		wantRetry int64
	}{
		{"starter, at once", Plan{Rate: 10, Burst: 10}, 0, 1},
		{"one per two seconds, at once", Plan{Rate: 0.5, Burst: 1}, 0, 2},
		{"one per two seconds, 1.5s later", Plan{Rate: 0.5, Burst: 1}, 1500 * time.Millisecond, 1},
		{"one per five seconds, 1s later", Plan{Rate: 0.2, Burst: 1}, time.Second, 4},
		{"1/s, at once", Plan{Rate: 1, Burst: 1}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBuckets()
			l := mustLimit(t, "p", tt.plan)
			k := bucketKey{account: "a", mode: ModeLive}
			for range l.burst {
				b.take(k, l, t0)
			}
			st := b.take(k, l, t0.Add(tt.after))
			if st.admitted || st.retryAfter != tt.wantRetry {
				t.Fatalf("got admitted=%v Retry-After %d, want rejected with %d", st.admitted, st.retryAfter, tt.wantRetry)
			}
			// Waiting exactly as told gets the request in.
			if st := b.take(k, l, t0.Add(tt.after+time.Duration(tt.wantRetry)*time.Second)); !st.admitted {
				t.Fatal("a client that waited Retry-After was rejected")
			}
		})
	}
}

func TestRejectedRequestsConsumeNothing(t *testing.T) {
	b := newBuckets()
	l := mustLimit(t, "p", Plan{Rate: 1, Burst: 1})
	k := bucketKey{account: "a", mode: ModeLive}
	b.take(k, l, t0)
	for i := range 100 { // a client hammering while limited
		if st := b.take(k, l, t0.Add(time.Duration(i)*5*time.Millisecond)); st.admitted {
			t.Fatalf("hammering request %d admitted", i)
		}
	}
	if st := b.take(k, l, t0.Add(time.Second)); !st.admitted {
		t.Fatal("after the refill time, the request was rejected: rejections consumed tokens")
	}
}

func TestPolicyAndRateLimitHeaders(t *testing.T) {
	tests := []struct {
		name       string
		plan       string
		limits     Plan
		taken      int
		wantPolicy string
		wantHeader string
	}{
		{"growth, one taken", "growth", Plan{Rate: 100}, 1, `"growth";q=100;w=1`, `"growth";r=99;t=1`},
		{"growth, 43 taken", "growth", Plan{Rate: 100}, 43, `"growth";q=100;w=1`, `"growth";r=57;t=1`},
		{"enterprise 50/s burst 200", "enterprise", Plan{Rate: 50, Burst: 200}, 100, `"enterprise";q=200;w=4`, `"enterprise";r=100;t=2`},
		{"slow plan", "slow", Plan{Rate: 0.5, Burst: 3}, 3, `"slow";q=3;w=6`, `"slow";r=0;t=6`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := mustLimit(t, tt.plan, tt.limits)
			b := newBuckets()
			k := bucketKey{account: "a", mode: ModeLive}
			var st state
			for range tt.taken {
				st = b.take(k, l, t0)
			}
			if got := l.policy; got != tt.wantPolicy {
				t.Errorf("RateLimit-Policy: got %s, want %s", got, tt.wantPolicy)
			}
			if got := rateLimitHeader(l, st, quotaState{}); got != tt.wantHeader {
				t.Errorf("RateLimit: got %s, want %s", got, tt.wantHeader)
			}
		})
	}
}

func TestLiveAndTestBucketsAreSeparate(t *testing.T) {
	b := newBuckets()
	l := mustLimit(t, "starter", DefaultPlans["starter"])
	live := bucketKey{account: "acme", mode: ModeLive}
	test := bucketKey{account: "acme", mode: ModeTest}
	other := bucketKey{account: "other", mode: ModeLive}
	for range 10 {
		b.take(test, l, t0)
	}
	if st := b.take(test, l, t0); st.admitted {
		t.Fatal("test bucket not exhausted after its burst")
	}
	if st := b.take(live, l, t0); !st.admitted || st.remaining != 9 {
		t.Fatalf("live traffic after test exhausted its bucket: %+v; want admitted with r=9", st)
	}
	if st := b.take(other, l, t0); !st.admitted || st.remaining != 9 {
		t.Fatalf("another account: %+v; want admitted with r=9", st)
	}
}

func TestPlanChangeCarriesUsage(t *testing.T) {
	b := newBuckets()
	k := bucketKey{account: "acme", mode: ModeLive}
	small := mustLimit(t, "starter", Plan{Rate: 10})
	big := mustLimit(t, "growth", Plan{Rate: 100})
	for range 10 {
		b.take(k, small, t0)
	}
	if st := b.take(k, small, t0); st.admitted {
		t.Fatal("starter bucket not exhausted")
	}
	// Upgraded: the 10 requests used carry over into the bucket of 100, so
	// 90 more go through at once, and no more.
	for i := range 90 {
		if st := b.take(k, big, t0); !st.admitted {
			t.Fatalf("upgrade: request %d of the 90 left rejected", i+1)
		}
	}
	if st := b.take(k, big, t0); st.admitted {
		t.Fatal("the upgrade handed out more than the new burst")
	}
	if st := b.take(k, big, t0.Add(10*time.Millisecond)); !st.admitted {
		t.Fatal("the new, faster rate did not apply at once")
	}
	// Downgraded with 99 of 100 used: the starter bucket starts empty.
	if st := b.take(k, small, t0.Add(10*time.Millisecond)); st.admitted {
		t.Fatalf("after a downgrade with the bucket used up: %+v; want rejected", st)
	}
	if st := b.take(k, small, t0.Add(2*time.Second)); !st.admitted || st.remaining != 9 {
		t.Fatalf("2s after the downgrade: %+v; want admitted with r=9", st)
	}
}

// TestUpgradeAppliesFromTheConfigChange: a bucket emptied under a slow plan
// refills at the new plan's rate from the moment the new limit came into
// force, not from the account's next request.
func TestUpgradeAppliesFromTheConfigChange(t *testing.T) {
	b := newBuckets()
	k := bucketKey{account: "acme", mode: ModeLive}
	slow, _ := Plan{Rate: 0.05, Burst: 2}.withDefaultBurst()
	fast, _ := Plan{Rate: 100, Burst: 200}.withDefaultBurst()
	before := newLimit("tiny", slow, t0)
	after := newLimit("tiny", fast, t0.Add(time.Second)) // reloaded 1s later
	b.take(k, before, t0)
	b.take(k, before, t0)
	if st := b.take(k, before, t0); st.admitted {
		t.Fatal("slow bucket not exhausted")
	}
	st := b.take(k, after, t0.Add(3*time.Second))
	if !st.admitted || st.remaining != 199 {
		t.Fatalf("2s after the upgrade to 100/s: %+v; want admitted with r=199 (full at 200 after refilling from the reload on)", st)
	}
}

func TestIdleBucketsAreDropped(t *testing.T) {
	b := newBuckets()
	l := mustLimit(t, "starter", DefaultPlans["starter"])
	busy := bucketKey{account: "busy", mode: ModeLive}
	idle := bucketKey{account: "idle", mode: ModeLive}
	for range 10 {
		b.take(busy, l, t0)
	}
	b.take(idle, l, t0)
	// 100ms later the idle bucket (one token short) is full; the busy one
	// is not.
	if n := b.sweep(t0.Add(100 * time.Millisecond)); n != 1 {
		t.Fatalf("buckets after sweep: got %d, want 1 (only the busy one)", n)
	}
	// Dropping was lossless: the busy bucket still remembers it is empty.
	if st := b.take(busy, l, t0.Add(100*time.Millisecond)); !st.admitted || st.remaining != 0 {
		t.Fatalf("busy bucket after the sweep: %+v; want one admitted, r=0", st)
	}
	if n := b.sweep(t0.Add(2 * time.Second)); n != 0 {
		t.Fatalf("buckets after everyone went idle: got %d, want 0", n)
	}
}

// TestManyAccountsStayBounded cycles through 100,000 distinct accounts
// (1,000,000 with POSTSCALE_BENCH_LARGE=1) at 100,000 requests per
// (simulated) second, sweeping every 10,000 requests: the number of live
// buckets stays near what 0.1 s of traffic (the starter refill time) plus
// one sweep interval can touch, however many accounts come by.
func TestManyAccountsStayBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("cycles through many accounts")
	}
	b := newBuckets()
	l := mustLimit(t, "starter", DefaultPlans["starter"])
	accounts := atScale(100_000, 1_000_000)
	const perSecond, sweepEvery, bound = 100_000, 10_000, 25_000
	now := t0
	peak := 0
	for i := range accounts {
		now = now.Add(time.Second / perSecond)
		if st := b.take(bucketKey{account: fmt.Sprintf("acct_%07d", i), mode: ModeLive}, l, now); !st.admitted {
			t.Fatalf("account %d rejected on its first request", i)
		}
		if i%sweepEvery == sweepEvery-1 {
			peak = max(peak, b.sweep(now))
			if n := b.count(); n > bound {
				t.Fatalf("after %d accounts: %d live buckets, want at most %d", i+1, n, bound)
			}
		}
	}
	if peak == 0 {
		t.Fatal("no bucket was ever live: the test measured nothing")
	}
	t.Logf("peak live buckets after a sweep: %d of %d accounts", peak, accounts)
}

func TestHandlerRateLimits(t *testing.T) {
	s := newFakeStore() // account acme on growth
	h := newTestHandler(t, s, map[string]Plan{"growth": {Rate: 1, Burst: 2}})
	key, _ := s.add(t)
	next := &recordingNext{}
	serve := func() *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		r, _ := newRequest(key)
		if err := h.ServeHTTP(w, r, next); err != nil {
			t.Fatal(err)
		}
		return w
	}
	for i, wantR := range []string{"1", "0"} {
		w := serve()
		if w.Code != http.StatusAccepted {
			t.Fatalf("request %d: status %d, want 202", i+1, w.Code)
		}
		if got, want := w.Header().Get("RateLimit"), `"growth";r=`+wantR+`;t=`; len(got) < len(want) || got[:len(want)] != want {
			t.Errorf("request %d RateLimit: got %q, want prefix %q", i+1, got, want)
		}
		if got := w.Header().Get("RateLimit-Policy"); got != `"growth";q=2;w=2` {
			t.Errorf("RateLimit-Policy: got %q", got)
		}
	}
	w := serve()
	if w.Code != http.StatusTooManyRequests || next.calls != 2 {
		t.Fatalf("over the limit: status %d, next called %d times; want 429 and 2", w.Code, next.calls)
	}
	if w.Header().Get("Retry-After") != "1" || w.Header().Get("RateLimit-Policy") == "" {
		t.Errorf("429 headers: %v", w.Header())
	}
	var body struct{ Error struct{ Type, Code string } }
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error.Type != "rate_limit_error" || body.Error.Code != "rate_limit_exceeded" {
		t.Errorf("429 body: %s", w.Body.Bytes())
	}
}

func TestHandlerUnknownPlan(t *testing.T) {
	s := newFakeStore()
	s.account.Plan = "platinum"
	h := newTestHandler(t, s, nil)
	key, _ := s.add(t)
	next := &recordingNext{}
	w := httptest.NewRecorder()
	r, _ := newRequest(key)
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusServiceUnavailable || next.calls != 0 {
		t.Fatalf("account on an unknown plan: status %d, next called %d times; want 503 and 0", w.Code, next.calls)
	}
	var body struct{ Error struct{ Code string } }
	if json.Unmarshal(w.Body.Bytes(), &body); body.Error.Code != "plan_not_configured" {
		t.Errorf("body: %s", w.Body.Bytes())
	}
}

func TestEnterpriseAccountUsesItsOwnLimit(t *testing.T) {
	s := newFakeStore()
	s.account = Account{ID: "bigco", Plan: "enterprise", Rate: 5, Burst: 3}
	h := newTestHandler(t, s, nil)
	key, _ := s.add(t)
	codes := []int{}
	for range 4 {
		w := httptest.NewRecorder()
		r, _ := newRequest(key)
		_ = h.ServeHTTP(w, r, &recordingNext{})
		codes = append(codes, w.Code)
		if got := w.Header().Get("RateLimit-Policy"); got != `"enterprise";q=3;w=1` {
			t.Errorf("RateLimit-Policy: got %q", got)
		}
	}
	if fmt.Sprint(codes) != "[202 202 202 429]" {
		t.Errorf("statuses: got %v, want [202 202 202 429] (burst 3)", codes)
	}
}

// BenchmarkTakeParallel takes tokens from every core at once, each
// goroutine cycling through its own 1000 accounts: the shards keep
// different accounts off each other's locks.
func BenchmarkTakeParallel(b *testing.B) {
	buckets := newBuckets()
	l := mustLimit(b, "scale", Plan{Rate: maxRate, Burst: maxBurst})
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		base := next.Add(1) * 1000
		keys := make([]bucketKey, 1000)
		for i := range keys {
			keys[i] = bucketKey{account: fmt.Sprintf("acct_%d", base+int64(i)), mode: ModeLive}
		}
		now := t0
		for i := 0; pb.Next(); i++ {
			now = now.Add(time.Microsecond)
			buckets.take(keys[i%len(keys)], l, now)
		}
	})
}

// BenchmarkTake is BenchmarkTakeParallel on one goroutine, for comparison.
func BenchmarkTake(b *testing.B) {
	buckets := newBuckets()
	l := mustLimit(b, "scale", Plan{Rate: maxRate, Burst: maxBurst})
	keys := make([]bucketKey, 1000)
	for i := range keys {
		keys[i] = bucketKey{account: fmt.Sprintf("acct_%d", i), mode: ModeLive}
	}
	b.ReportAllocs()
	now := t0
	for i := 0; b.Loop(); i++ {
		now = now.Add(time.Microsecond)
		buckets.take(keys[i%len(keys)], l, now)
	}
}

// TestAlternatingDefinitionsStayBounded: two sites on one store define the
// plan growth differently (100/s and 1000/s), and a client alternates
// between them, 10,000 requests a second for 3 simulated seconds. Each
// request is judged by its own site's definition, and all of them together
// get no more than one bucket of the larger definition would admit: every
// request admitted is admitted again by such a bucket, fed the same
// admitted requests. (The old code rebuilt the bucket at every switch,
// refused requests included, and admitted 15,050: every request of the
// 1000/s site.)
func TestAlternatingDefinitionsStayBounded(t *testing.T) {
	for _, smallLater := range []bool{false, true} {
		t.Run(fmt.Sprintf("smaller definition loaded later: %v", smallLater), func(t *testing.T) {
			smallSince, bigSince := t0, t0.Add(time.Microsecond)
			if smallLater {
				smallSince, bigSince = bigSince, smallSince
			}
			small := newLimit("growth", Plan{Rate: 100, Burst: 100}, smallSince)
			big := newLimit("growth", Plan{Rate: 1000, Burst: 1000}, bigSince)
			b, ref := newBuckets(), newBuckets()
			k := bucketKey{account: "acme", mode: ModeLive}
			const perSecond, seconds = 10_000, 3
			admitted := map[*limit]int{}
			beyond := 0
			for i := range perSecond * seconds {
				now := t0.Add(time.Duration(i) * time.Second / perSecond)
				l := small
				if i%2 == 1 {
					l = big
				}
				st := b.take(k, l, now)
				if !st.admitted {
					continue
				}
				admitted[l]++
				if st.remaining > int64(l.burst-1) {
					t.Fatalf("request %d: r=%d beyond its own definition's burst %d", i, st.remaining, l.burst)
				}
				if !ref.take(k, big, now).admitted {
					beyond++
				}
			}
			total := admitted[small] + admitted[big]
			t.Logf("admitted %d in %d s (%d under 100/s, %d under 1000/s); one 1000/s bucket allows %d",
				total, seconds, admitted[small], admitted[big], 1000*seconds+1000)
			if beyond > 0 {
				t.Errorf("%d requests admitted that one bucket of the larger definition would refuse", beyond)
			}
			if total > 1000*seconds+1000 {
				t.Errorf("admitted %d, more than the larger definition's %d", total, 1000*seconds+1000)
			}
			if total < 1000*seconds {
				t.Errorf("admitted %d: the 1000/s site's requests were not judged by its own definition", total)
			}
		})
	}
}

// TestSweptBucketsGiveMemoryBack: a Go map keeps the memory of its peak
// after its entries are deleted. After 100,000 buckets (1,000,000 with
// POSTSCALE_BENCH_LARGE=1; enough for every shard to pass shrinkFrom)
// are swept, the heap must come back near where it was, not keep the
// maps' peak. BenchmarkBucketsMillionAccounts reports the same in waves.
func TestSweptBucketsGiveMemoryBack(t *testing.T) {
	if testing.Short() {
		t.Skip("fills many buckets")
	}
	b := newBuckets()
	l := mustLimit(t, "starter", DefaultPlans["starter"])
	base := readMem(false).inuse
	n := atScale(100_000, 1_000_000)
	for i := range n {
		b.take(bucketKey{account: fmt.Sprintf("acct_%07d", i), mode: ModeLive}, l, t0)
	}
	peak := readMem(false).inuse
	if left := b.sweep(t0.Add(time.Hour)); left != 0 {
		t.Fatalf("%d buckets left after sweeping full ones", left)
	}
	after := readMem(false).inuse
	// A few accounts stay busy: the maps are rebuilt small, not emptied.
	b.take(bucketKey{account: "busy", mode: ModeLive}, l, t0.Add(time.Hour))
	t.Logf("heap in use: %.1f MiB before, %.1f MiB with %d buckets, %.1f MiB after sweeping them (%.1f%% of the peak's growth kept)",
		float64(base)/mib, float64(peak)/mib, n, float64(after)/mib, 100*mibAbove(after, base)/mibAbove(peak, base))
	if after > base+(peak-base)/10 {
		t.Errorf("after the sweep the heap keeps %.1f MiB of the %.1f MiB the buckets took; want under a tenth", mibAbove(after, base), mibAbove(peak, base))
	}
}

// TestRefusedRequestChangesNothing: a request refused under another
// definition of the bucket's limit leaves the bucket exactly as it was.
func TestRefusedRequestChangesNothing(t *testing.T) {
	b := newBuckets()
	k := bucketKey{account: "acme", mode: ModeLive}
	big := newLimit("growth", Plan{Rate: 1000, Burst: 1000}, t0)
	small := newLimit("growth", Plan{Rate: 100, Burst: 100}, t0.Add(time.Second))
	for range 1000 {
		b.take(k, big, t0)
	}
	before := *b.shard(k).m[k]
	for i := range 50 {
		if st := b.take(k, small, t0.Add(time.Duration(i)*time.Millisecond)); st.admitted {
			t.Fatalf("request %d under the smaller definition admitted with 1000 used", i)
		}
	}
	if after := *b.shard(k).m[k]; after != before {
		t.Fatalf("refused requests changed the bucket: %+v, then %+v", before, after)
	}
}

// TestDowngradeCutsUsageOnlyForAnotherPlan: an account moved to a smaller
// plan waits for one burst of the new plan at most, but a new, smaller
// definition of the same plan (a reload) lets the usage drain at the new
// rate: it cannot be told from two sites defining the plan differently.
func TestDowngradeCutsUsageOnlyForAnotherPlan(t *testing.T) {
	k := bucketKey{account: "acme", mode: ModeLive}
	growth := newLimit("growth", Plan{Rate: 100, Burst: 100}, t0)
	starter := newLimit("starter", Plan{Rate: 10, Burst: 10}, t0)
	redefined := newLimit("growth", Plan{Rate: 10, Burst: 10}, t0.Add(time.Millisecond))
	used := func() *buckets {
		b := newBuckets()
		for range 100 {
			b.take(k, growth, t0)
		}
		return b
	}

	b := used()
	if st := b.take(k, starter, t0.Add(50*time.Millisecond)); st.admitted || st.retryAfter != 1 {
		t.Fatalf("at once on starter: %+v; want refused, Retry-After 1", st)
	}
	if st := b.take(k, starter, t0.Add(150*time.Millisecond)); !st.admitted {
		t.Fatalf("150ms later on starter: %+v; want admitted (the usage was cut to starter's burst)", st)
	}

	b = used()
	st := b.take(k, redefined, t0.Add(50*time.Millisecond))
	if st.admitted || st.retryAfter != 10 {
		t.Fatalf("at once under growth redefined as 10/s: %+v; want refused, Retry-After 10 (100 used, drained at 10/s)", st)
	}
	if st := b.take(k, redefined, t0.Add(9*time.Second)); st.admitted {
		t.Fatalf("9s later: %+v; want refused (91 used to drain to 9)", st)
	}
	if st := b.take(k, redefined, t0.Add(9200*time.Millisecond)); !st.admitted {
		t.Fatalf("9.2s later: %+v; want admitted", st)
	}
}
