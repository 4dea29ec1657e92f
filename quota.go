package postscale

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Quota is a sending volume per period: at most Count admitted live
// requests (those quota_counts matches) per day or per month. Periods run
// from an anchor (the account's quota_anchor, by default its creation), so
// a month runs from the customer's billing day.
type Quota struct {
	// Count is how many requests the period allows, at least 1.
	Count int64 `json:"count"`
	// Period is "day" or "month".
	Period Period `json:"period"`
}

// Period is the length of a quota period.
type Period string

// The quota periods.
const (
	PeriodDay   Period = "day"
	PeriodMonth Period = "month"
)

// maxQuota bounds a quota's count, so counts and sums stay exact.
const maxQuota = 1 << 50

// check reports what is wrong with q, naming the field, or nil.
func (q Quota) check() error {
	if q.Count < 1 || q.Count > maxQuota {
		return fmt.Errorf("count must be between 1 and %d requests, got %d", int64(maxQuota), q.Count)
	}
	if q.Period != PeriodDay && q.Period != PeriodMonth {
		return fmt.Errorf("period must be \"day\" or \"month\", got %q", q.Period)
	}
	return nil
}

// String is the Caddyfile and CLI form, e.g. "50000/month".
func (q Quota) String() string { return strconv.FormatInt(q.Count, 10) + "/" + string(q.Period) }

// ParseQuota reads "<count>/day" or "<count>/month" (the CLI's form).
func ParseQuota(s string) (Quota, error) {
	n, p, ok := strings.Cut(s, "/")
	if !ok {
		return Quota{}, fmt.Errorf("quota %q: want <count>/day or <count>/month, e.g. 50000/month", s)
	}
	count, err := strconv.ParseInt(n, 10, 64)
	if err != nil {
		return Quota{}, fmt.Errorf("quota %q: the count must be a whole number", s)
	}
	q := Quota{Count: count, Period: Period(p)}
	if err := q.check(); err != nil {
		return Quota{}, fmt.Errorf("quota %q: %w", s, err)
	}
	return q, nil
}

// periodAt returns the quota period that holds now: it starts at or before
// now and ends after it. Periods run from anchor in steps of one day, or of
// one calendar month on the anchor's day of the month and time of day, in
// UTC. A billing day past the end of a shorter month (the 29th to the
// 31st) falls on that month's last day, and the month after starts on the
// billing day again. An anchor in the future has periods before it too, so
// every time is in exactly one period.
func periodAt(anchor time.Time, p Period, now time.Time) (start, end time.Time) {
	anchor, now = anchor.UTC(), now.UTC()
	if p == PeriodDay {
		days := now.Sub(anchor) / (24 * time.Hour)
		if now.Before(anchor.Add(days * 24 * time.Hour)) {
			days-- // now is before the anchor: round down, not towards zero
		}
		start = anchor.Add(days * 24 * time.Hour)
		return start, start.Add(24 * time.Hour)
	}
	k := (now.Year()-anchor.Year())*12 + int(now.Month()) - int(anchor.Month())
	for monthsFrom(anchor, k).After(now) {
		k--
	}
	for !monthsFrom(anchor, k+1).After(now) {
		k++
	}
	return monthsFrom(anchor, k), monthsFrom(anchor, k+1)
}

// monthsFrom is anchor moved k calendar months (k may be negative), on the
// anchor's day of the month or, in a shorter month, its last day.
func monthsFrom(anchor time.Time, k int) time.Time {
	y, m, d := anchor.Date()
	total := int(m) - 1 + k
	y += total / 12
	if total%12 < 0 {
		y--
	}
	month := time.Month((total%12+12)%12 + 1)
	last := time.Date(y, month+1, 0, 0, 0, 0, 0, time.UTC).Day()
	hh, mm, ss := anchor.Clock()
	return time.Date(y, month, min(d, last), hh, mm, ss, anchor.Nanosecond(), time.UTC)
}

// quotaPolicy is a quota resolved for the request path: its count and
// period, and its name and RateLimit-Policy item, built once.
type quotaPolicy struct {
	Quota
	name   string // e.g. growth-month
	policy string // e.g. "growth-month";q=50000
	item   string // the start of its RateLimit item: "growth-month";r=
}

func newQuotaPolicy(plan string, q Quota) *quotaPolicy {
	name := plan + "-" + string(q.Period)
	quoted := strconv.Quote(name)
	return &quotaPolicy{Quota: q, name: name, policy: quoted + ";q=" + strconv.FormatInt(q.Count, 10), item: quoted + ";r="}
}

// quotaKey names one account's quota period: its length and start.
type quotaKey struct {
	account string
	period  Period
	start   int64 // unix ns
}

// quotaCounter counts one account's requests in one quota period, in
// memory, for the request path; flushQuotas writes them to the store in
// batches and learns there what other replicas counted.
//
// used is what this process knows the period's live total to be: what the
// store said at the last flush (or lookup), plus every live request
// counted here since. It only grows, so a request is admitted by the quota
// only while used is below the count, and concurrent requests of one
// account cannot overrun it (one compare-and-swap each).
type quotaCounter struct {
	quotaKey
	end int64 // unix ns

	used atomic.Int64
	// unflushed are the live and test requests counted here and not yet
	// written to the store.
	unflushed, test atomic.Int64
	// pending counts reserved requests whose bucket has not decided yet:
	// while it is above zero, a refusal may be taken back within moments.
	pending atomic.Int64
}

// reserve counts one live request if the period has room for it under
// count, and reports whether it had. A reservation is settled with
// settle, or taken back with unreserve.
func (c *quotaCounter) reserve(count int64) bool {
	for {
		u := c.used.Load()
		if u >= count {
			return false
		}
		if c.used.CompareAndSwap(u, u+1) {
			c.pending.Add(1)
			c.unflushed.Add(1)
			return true
		}
	}
}

// settle keeps a reserved request: its bucket admitted it.
func (c *quotaCounter) settle() { c.pending.Add(-1) }

// unreserve takes back a reserved request that was refused after all
// (by its rate limit): a refused request counts nothing. unflushed goes
// first, so a learn in between never adds the request back into used.
func (c *quotaCounter) unreserve() {
	c.unflushed.Add(-1)
	c.used.Add(-1)
	c.pending.Add(-1)
}

// learn raises used to a total the store reported, plus what was counted
// here since that total was read.
func (c *quotaCounter) learn(total int64) {
	for {
		u := c.used.Load()
		t := total + c.unflushed.Load()
		if t <= u || c.used.CompareAndSwap(u, t) {
			return
		}
	}
}

// learnUsed raises used to a count that Redis, holding every replica's
// requests, reported.
func (c *quotaCounter) learnUsed(used int64) {
	for {
		u := c.used.Load()
		if used <= u || c.used.CompareAndSwap(u, used) {
			return
		}
	}
}

// quotaCounterOf returns the counter of e's account for the quota period
// of q that holds now (unix ns), creating it on first use from what the
// store said when e was looked up. The request path finds it in e without
// a map lookup while the period lasts.
func (k *keyring) quotaCounterOf(e *entry, q *quotaPolicy, now int64) *quotaCounter {
	if c := e.counters.counter.Load(); c != nil && now >= c.start && now < c.end && c.period == q.Period {
		return c
	}
	start, end := periodAt(e.anchor, q.Period, time.Unix(0, now))
	key := quotaKey{account: e.accountID, period: q.Period, start: start.UnixNano()}
	v, ok := k.quotas.Load(key)
	if !ok {
		c := &quotaCounter{quotaKey: key, end: end.UnixNano()}
		v, _ = k.quotas.LoadOrStore(key, c)
	}
	c := v.(*quotaCounter)
	if e.used != nil && e.used.Period == key.period && e.used.Start.UnixNano() == key.start {
		c.learn(e.used.Live)
	}
	e.counters.counter.Store(c)
	return c
}

// quotaFlushInterval is how often quota counts go to the store: the bound
// on what a crash loses, and on how late replicas without Redis learn each
// other's counts.
const quotaFlushInterval = time.Second

// flushQuotas writes the quota counts gathered since the last flush to the
// store, learns the totals of every replica from its answer, and drops
// the counters of periods that have ended and have nothing left to write.
// Counts it cannot write are kept for the next flush.
func (k *keyring) flushQuotas(ctx context.Context, now time.Time) {
	k.quotaFlushMu.Lock()
	defer k.quotaFlushMu.Unlock()
	var batch []PeriodUsage
	var counters []*quotaCounter
	k.quotas.Range(func(_, v any) bool {
		c := v.(*quotaCounter)
		live, test := c.unflushed.Swap(0), c.test.Swap(0)
		if live == 0 && test == 0 {
			if now.UnixNano() >= c.end+int64(quotaFlushInterval) {
				k.quotas.Delete(c.quotaKey)
			}
			return true
		}
		batch = append(batch, PeriodUsage{Account: c.account, Period: c.period, Start: time.Unix(0, c.start).UTC(), Live: live, Test: test})
		counters = append(counters, c)
		return true
	})
	if len(batch) == 0 {
		return
	}
	totals, err := k.store.RecordAccountUsage(ctx, batch, nil, time.Time{})
	if err != nil {
		k.logger.Warn("writing quota counts to the store failed; will retry", zap.Int("accounts", len(batch)), zap.Error(err))
		for i, c := range counters {
			c.unflushed.Add(batch[i].Live)
			c.test.Add(batch[i].Test)
		}
		return
	}
	for i, c := range counters {
		c.learn(totals[i].Live)
	}
}

// hourCounter counts one account's admitted and refused requests in one
// hour, for the usage API's last 48 hours.
type hourCounter struct {
	hourKey
	admitted, refused atomic.Int64
}

// hourKey names one account's hour.
type hourKey struct {
	account string
	hour    int64 // unix seconds of the hour's start
}

// hourCounter returns the counter of key, creating it on first use.
func (k *keyring) hourCounter(key hourKey) *hourCounter {
	v, ok := k.hours.Load(key)
	if !ok {
		v, _ = k.hours.LoadOrStore(key, &hourCounter{hourKey: key})
	}
	return v.(*hourCounter)
}

// hourCounterOf returns the counter of e's account for the hour of now
// (unix ns).
func (k *keyring) hourCounterOf(e *entry, now int64) *hourCounter {
	hour := now / int64(time.Second) / 3600 * 3600
	if c := e.counters.hour.Load(); c != nil && c.hour == hour {
		return c
	}
	c := k.hourCounter(hourKey{account: e.accountID, hour: hour})
	e.counters.hour.Store(c)
	return c
}

// usageHours is how long per-hour counts are kept in the store.
const usageHours = 48

// takeHours returns the per-hour counts gathered since the last flush, and
// drops the counters of hours that ended more than an hour ago with
// nothing to write.
func (k *keyring) takeHours(now time.Time) []HourUsage {
	var hours []HourUsage
	current := now.Unix() / 3600 * 3600
	k.hours.Range(func(key, v any) bool {
		c := v.(*hourCounter)
		a, r := c.admitted.Swap(0), c.refused.Swap(0)
		if a == 0 && r == 0 {
			// The last hour's counter stays an hour longer: a request
			// that found it just before the hour turned may still add
			// to it, and is flushed then.
			if c.hour < current-3600 {
				k.hours.Delete(key)
			}
			return true
		}
		hours = append(hours, HourUsage{Account: c.account, Hour: time.Unix(c.hour, 0).UTC(), Admitted: a, Refused: r})
		return true
	})
	return hours
}

// flushHours writes the per-hour counts to the store, dropping those older
// than usageHours; counts it cannot write are kept for the next flush.
func (k *keyring) flushHours(ctx context.Context, now time.Time) {
	hours := k.takeHours(now)
	if len(hours) == 0 {
		return
	}
	if _, err := k.store.RecordAccountUsage(ctx, nil, hours, now.Add(-usageHours*time.Hour)); err != nil {
		k.logger.Warn("writing hourly request counts to the store failed; will retry", zap.Int("hours", len(hours)), zap.Error(err))
		for _, h := range hours {
			c := k.hourCounter(hourKey{account: h.Account, hour: h.Hour.Unix()})
			c.admitted.Add(h.Admitted)
			c.refused.Add(h.Refused)
		}
	}
}
