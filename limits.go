package postscale

import (
	"context"
	"fmt"
	"hash/maphash"
	"maps"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Plan is a rate-limit plan: a token bucket of Burst requests that refills
// at Rate requests per second.
type Plan struct {
	// Rate is the sustained limit, in requests per second (may be
	// fractional, e.g. 0.5).
	Rate float64 `json:"rate"`
	// Burst is how many requests can be made at once from a full bucket.
	// Default: Rate rounded up.
	Burst int `json:"burst,omitempty"`
	// Quota is the plan's sending volume per day or month, for accounts
	// without a quota of their own. Default: none.
	Quota *Quota `json:"quota,omitempty"`
}

// DefaultPlans are the plans every gateway knows; the Caddyfile's plan
// subdirective (JSON: plans) overrides or adds to them. Enterprise accounts
// carry their own rate and burst.
var DefaultPlans = map[string]Plan{
	"starter": {Rate: 10, Burst: 10},
	"growth":  {Rate: 100, Burst: 100},
	"scale":   {Rate: 1000, Burst: 1000},
}

// Bounds of a plan, so that every number stays exact and fits: from one
// request per ~17 minutes to a billion per second.
const (
	minRate  = 0.001
	maxRate  = 1e9
	maxBurst = 1_000_000_000
)

// problem names the field of p that is out of bounds and says why, or
// returns "" for a valid plan.
func (p Plan) problem() (field, why string) {
	if !(p.Rate >= minRate && p.Rate <= maxRate) {
		return "rate", fmt.Sprintf("must be between %v and %v requests per second, got %v", minRate, maxRate, p.Rate)
	}
	if p.Burst < 0 || p.Burst > maxBurst {
		return "burst", fmt.Sprintf("must be between 1 and %d (0: the rate), got %d", maxBurst, p.Burst)
	}
	if p.Quota != nil {
		if err := p.Quota.check(); err != nil {
			return "quota", err.Error()
		}
	}
	return "", ""
}

// withDefaultBurst fills in Burst and checks the plan.
func (p Plan) withDefaultBurst() (Plan, error) {
	if field, why := p.problem(); field != "" {
		return p, fmt.Errorf("%s %s", field, why)
	}
	if p.Burst == 0 {
		p.Burst = int(math.Ceil(p.Rate))
	}
	return p, nil
}

// limit is a plan resolved for the request path: its bucket size, and its
// RateLimit-Policy header built once.
type limit struct {
	name  string
	rate  rate.Limit
	burst int
	// policy is the RateLimit-Policy value; its w is the time an empty
	// bucket takes to refill, in whole seconds (at least 1).
	policy string
	// item starts this limit's RateLimit item: the quoted name and ";r=".
	item string
	// since is when this limit came into force (the config load, or the
	// account update reaching the cache): a bucket that was under another
	// limit switches to this one from then, not from its next request.
	since time.Time
	// sinceNano is since in unix ns, 0 for the zero time.
	sinceNano int64
	// admitted counts admitted requests of this plan, by mode, resolved
	// once so the request path does no label lookup.
	admitted [3]prometheus.Counter
	// quota is the plan's quota, or nil; policyWithQuota is the
	// RateLimit-Policy value naming both.
	quota           *quotaPolicy
	policyWithQuota string
}

func newLimit(name string, p Plan, since time.Time) *limit {
	initMetrics()
	l := &limit{name: name, rate: rate.Limit(p.Rate), burst: p.Burst, since: since}
	if !since.IsZero() {
		l.sinceNano = since.UnixNano()
	}
	for _, m := range []Mode{ModeLive, ModeTest} {
		l.admitted[m] = metrics.requests.WithLabelValues(outcomeLabels[outcomeAdmitted], m.String(), name)
	}
	window := max(1, int64(math.Ceil(float64(p.Burst)/p.Rate)))
	l.policy = fmt.Sprintf("%q;q=%d;w=%d", name, p.Burst, window)
	l.item = strconv.Quote(name) + ";r="
	if p.Quota != nil {
		l.quota = newQuotaPolicy(name, *p.Quota)
		l.policyWithQuota = l.policy + ", " + l.quota.policy
	}
	return l
}

// state is what a bucket says about one request: whether it was admitted,
// and the numbers of the RateLimit header.
type state struct {
	admitted bool
	// remaining is the number of requests that would be admitted now
	// without waiting (r).
	remaining int64
	// full is the whole seconds until the bucket is full again (t).
	full int64
	// retryAfter is the whole seconds, at least 1, until one request
	// would be admitted (only when !admitted).
	retryAfter int64
}

// quotaState is what a quota says about one request, for the RateLimit
// field: policy nil when no quota applies.
type quotaState struct {
	policy    *quotaPolicy
	remaining int64 // requests left in the period (r)
	reset     int64 // whole seconds until the period ends (t)
}

// rateLimitHeader writes the RateLimit field: "<plan>";r=<remaining>;t=<seconds>,
// followed by the quota's item when one applies.
func rateLimitHeader(l *limit, s state, q quotaState) string {
	var buf [192]byte
	b := append(buf[:0], l.item...)
	b = strconv.AppendInt(b, s.remaining, 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, s.full, 10)
	if q.policy != nil {
		b = append(b, ", "...)
		b = appendQuotaItem(b, q)
	}
	return string(b)
}

// quotaHeader writes the RateLimit field of a request its quota refused:
// the quota's item alone.
func quotaHeader(q quotaState) string {
	var buf [96]byte
	return string(appendQuotaItem(buf[:0], q))
}

// appendQuotaItem appends "<plan>-<period>";r=<left>;t=<seconds to the reset>.
func appendQuotaItem(b []byte, q quotaState) []byte {
	b = append(b, q.policy.item...)
	b = strconv.AppendInt(b, q.remaining, 10)
	b = append(b, ";t="...)
	return strconv.AppendInt(b, q.reset, 10)
}

// bucketKey names one token bucket: an account's live or test traffic.
type bucketKey struct {
	account string
	mode    Mode
}

// buckets is the set of token buckets, one per (account, mode), sharded so
// that requests of different accounts rarely share a lock. A bucket that is
// full again is dropped by sweep: a full bucket and a new one are the same,
// so nothing is lost, and memory follows the accounts that are active.
//
// Time is always passed in, so tests control it. The zero value is not
// usable; call newBuckets.
type buckets struct {
	seed   maphash.Seed
	shards [bucketShards]bucketShard

	cancel context.CancelFunc
	done   chan struct{}
}

const bucketShards = 64

type bucketShard struct {
	mu sync.Mutex
	m  map[bucketKey]*bucket
	// peak is the most buckets m has held since it was made: a Go map
	// never gives back the memory of the entries deleted from it, so
	// sweep makes a new one when m has shrunk far below its peak.
	peak int
	_    [40]byte // keep shards on separate cache lines
}

// bucket is one token bucket: the x/time/rate arithmetic (tokens refill at
// rate up to burst; a request takes one if the wait for it is under 1ns),
// kept here rather than in a rate.Limiter so that a request can be judged
// by its own limit without rebuilding the bucket, and the bucket is
// written only when a request is admitted.
type bucket struct {
	tokens float64 // left at last; below 0 after a change to a smaller plan
	last   int64   // unix ns of the last admitted request, when tokens was counted
	// rate and burst are the definition tokens was counted under; plan
	// names it.
	rate  rate.Limit
	burst int
	plan  string
}

func newBuckets() *buckets {
	b := &buckets{seed: maphash.MakeSeed()}
	for i := range b.shards {
		b.shards[i].m = make(map[bucketKey]*bucket)
	}
	return b
}

func (b *buckets) shard(k bucketKey) *bucketShard {
	h := maphash.String(b.seed, k.account) + uint64(k.mode)
	return &b.shards[h%bucketShards]
}

// take admits one request of bucket k under limit l at time now, or
// rejects it without changing anything.
//
// A bucket may meet requests under different definitions of its limit: a
// plan change, or two sites on one store that define the same plan
// differently. Every request is judged by its own limit, from what the
// bucket has used (see tokensAt), and only an admitted request writes the
// bucket, so a refused request never resets or widens it. Refill is
// counted from the last admitted request, at a rate no faster than the
// fastest definition, and what has been used is never forgotten unless
// the plan's name changed: so a client alternating between definitions is
// admitted no more than one bucket of the largest rate and the largest
// burst would admit.
func (b *buckets) take(k bucketKey, l *limit, now time.Time) state {
	t := now.UnixNano()
	sh := b.shard(k)
	sh.mu.Lock()
	bk := sh.m[k]
	tokens := float64(l.burst) // a new bucket is full
	if bk != nil {
		if t < bk.last {
			// A request that read the clock before a later one got here
			// (its store lookup took a while): judged at the later time,
			// or the same refill would be credited twice.
			t = bk.last
		}
		tokens = bk.tokensAt(l, t)
	}
	admitted := oneToken(tokens, l.rate)
	if admitted {
		tokens--
		if bk == nil {
			bk = new(bucket)
			sh.m[k] = bk
			sh.peak = max(sh.peak, len(sh.m))
		}
		bk.tokens, bk.last, bk.rate, bk.burst, bk.plan = tokens, t, l.rate, l.burst, l.name
	}
	sh.mu.Unlock()
	return decided(admitted, tokens, l)
}

// tokensAt returns what the bucket holds at t (not before last) for a
// request under l. Under the definition the bucket was counted in, that
// is its refill. Under another one, what the bucket had used by the time l
// came into force (refilled at the old rate until then) is carried over
// into a bucket of l's size, which refills at l's rate from then on: an
// upgrade's extra room is there at once, and a downgrade starts no fuller
// than the usage allows.
//
// When the usage is more than l's whole burst, it is cut down to that
// burst only if the account changed plans (l has another name than the
// limit that last admitted a request here, which only the account's
// record can change): a downgraded account then waits for one burst of
// the new plan at most, not for the old plan's usage to drain. A new
// definition of the same plan (a reload, an enterprise account's new
// rate) is not cut, because it cannot be told from two sites that define
// the plan differently: there a request of the smaller definition would
// forget, each time, what the larger one had let through. Its usage
// drains at the new rate instead.
func (bk *bucket) tokensAt(l *limit, t int64) float64 {
	if bk.rate == l.rate && bk.burst == l.burst {
		return refill(bk.tokens, t-bk.last, bk.rate, bk.burst)
	}
	switched := min(max(l.sinceNano, bk.last), t)
	used := float64(bk.burst) - refill(bk.tokens, switched-bk.last, bk.rate, bk.burst)
	if l.name != bk.plan {
		used = min(used, float64(l.burst))
	}
	return refill(float64(l.burst)-used, t-switched, l.rate, l.burst)
}

// refill returns tokens after elapsed ns at r, at most burst.
func refill(tokens float64, elapsed int64, r rate.Limit, burst int) float64 {
	return min(float64(burst), tokens+time.Duration(elapsed).Seconds()*float64(r))
}

// oneToken reports whether a bucket holding tokens, refilling at r, can
// admit a request now: as x/time/rate, when the wait for the token is
// under 1ns.
func oneToken(tokens float64, r rate.Limit) bool {
	need := 1 - tokens
	return need <= 0 || time.Duration(need/float64(r)*float64(time.Second)) <= 0
}

// decided is the state of a bucket of limit l that holds tokens after
// admitting (or refusing) a request; every limiter answers through it, so
// all of them send the same fields for the same bucket.
func decided(admitted bool, tokens float64, l *limit) state {
	s := state{admitted: admitted}
	s.remaining = max(0, int64(math.Floor(tokens)))
	s.full = secondsCeil((float64(l.burst) - tokens) / float64(l.rate))
	if !s.admitted {
		s.retryAfter = max(1, secondsCeil((1-tokens)/float64(l.rate)))
	}
	return s
}

// secondsCeil rounds a duration in seconds up to whole seconds (0 for none).
func secondsCeil(s float64) int64 {
	if s <= 0 {
		return 0
	}
	// Round off float noise first, so that exactly 1.0 is not read as
	// 1.0000000001 and sent as 2.
	return int64(math.Ceil(math.Round(s*1e6) / 1e6))
}

// sweep drops every bucket that is full at now, and returns how many
// buckets remain.
func (b *buckets) sweep(now time.Time) int {
	t := now.UnixNano()
	n := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		for k, bk := range sh.m {
			if refill(bk.tokens, t-bk.last, bk.rate, bk.burst) >= float64(bk.burst) {
				delete(sh.m, k)
			}
		}
		if sh.peak >= shrinkFrom && len(sh.m) <= sh.peak/4 {
			// A map keeps the memory of its peak: copy what is left into
			// a map of its size, and let the old one go.
			m := make(map[bucketKey]*bucket, len(sh.m))
			maps.Copy(m, sh.m)
			sh.m, sh.peak = m, len(m)
		}
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// shrinkFrom is the peak of buckets in a shard from which sweep gives a
// map's memory back, once three quarters of its buckets are gone: below
// it, the memory is too little to be worth a copy.
const shrinkFrom = 512

// count returns how many buckets exist.
func (b *buckets) count() int {
	n := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// sweepInterval is how often idle buckets are dropped.
const sweepInterval = 10 * time.Second

// run sweeps on an interval until Destruct.
func (b *buckets) run() {
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel, b.done = cancel, make(chan struct{})
	go func() {
		defer close(b.done)
		t := time.NewTicker(sweepInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				b.sweep(now)
			}
		}
	}()
}

// Destruct stops the sweeper; the pool calls it when the last config using
// these buckets is unloaded.
func (b *buckets) Destruct() error {
	if b.cancel != nil {
		b.cancel()
		<-b.done
	}
	return nil
}

// bucketSets holds the buckets of each store across config reloads, so a
// reload neither resets a bucket nor gives anyone a free burst.
var bucketSets = caddy.NewUsagePool()

func loadBuckets(identity string) (*buckets, error) {
	v, _, err := bucketSets.LoadOrNew(identity, func() (caddy.Destructor, error) {
		b := newBuckets()
		b.run()
		return b, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*buckets), nil
}
