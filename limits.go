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
	// since is when this limit came into force (the config load, or the
	// account update reaching the cache): a bucket that was under another
	// limit switches to this one from then, not from its next request.
	since time.Time
	// admitted counts admitted requests of this plan, by mode, resolved
	// once so the request path does no label lookup.
	admitted [3]prometheus.Counter
}

func newLimit(name string, p Plan, since time.Time) *limit {
	initMetrics()
	l := &limit{name: name, rate: rate.Limit(p.Rate), burst: p.Burst, since: since}
	for _, m := range []Mode{ModeLive, ModeTest} {
		l.admitted[m] = metrics.requests.WithLabelValues(outcomeLabels[outcomeAdmitted], m.String(), name)
	}
	window := max(1, int64(math.Ceil(float64(p.Burst)/p.Rate)))
	l.policy = fmt.Sprintf("%q;q=%d;w=%d", name, p.Burst, window)
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

// rateLimitHeader writes the RateLimit field: "<plan>";r=<remaining>;t=<seconds>.
func rateLimitHeader(l *limit, s state) string {
	var buf [96]byte
	b := strconv.AppendQuote(buf[:0], l.name)
	b = append(b, ";r="...)
	b = strconv.AppendInt(b, s.remaining, 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, s.full, 10)
	return string(b)
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

// bucket is one token bucket and the last time take used it.
type bucket struct {
	*rate.Limiter
	touched time.Time
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
// rejects it without consuming anything. A change of limit (a plan change)
// applies to the bucket from the time the new limit came into force, with
// the requests used by then carried over: no reset to a full bucket, and
// no wait at the old rate after an upgrade.
func (b *buckets) take(k bucketKey, l *limit, now time.Time) state {
	sh := b.shard(k)
	sh.mu.Lock()
	lim := sh.m[k]
	if lim != nil && now.Before(lim.touched) {
		// A request that read the clock before a later one got here (its
		// store lookup took a while): a limiter given an earlier time
		// moves its clock back and would credit the same refill twice.
		now = lim.touched
	}
	if lim == nil {
		lim = &bucket{Limiter: rate.NewLimiter(l.rate, l.burst)} // full
		sh.m[k] = lim
		sh.peak = max(sh.peak, len(sh.m))
	} else if lim.Limit() != l.rate || lim.Burst() != l.burst {
		switched := l.since
		if switched.Before(lim.touched) {
			switched = lim.touched
		}
		if switched.After(now) {
			switched = now
		}
		// What the account had used by then carries over into a bucket of
		// the new size: an upgrade's extra room is there at once, and a
		// downgrade starts no fuller than the usage allows.
		used := float64(lim.Burst()) - lim.TokensAt(switched)
		lim.Limiter = rate.NewLimiter(l.rate, l.burst)
		if n := int(math.Ceil(used - 1e-9)); n > 0 {
			lim.AllowN(switched, min(n, l.burst))
		} else {
			lim.AllowN(switched, 0) // start the clock at the switch
		}
	}
	lim.touched = now
	admitted := lim.AllowN(now, 1)
	tokens := lim.TokensAt(now)
	sh.mu.Unlock()
	return decided(admitted, tokens, l)
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
	n := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		for k, lim := range sh.m {
			if lim.TokensAt(now) >= float64(lim.Burst()) {
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

// shrinkFrom is the peak of buckets in a shard from which sweep gives a
// map's memory back, once three quarters of its buckets are gone: below
// it, the memory is too little to be worth a copy.
const shrinkFrom = 512

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
