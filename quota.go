package postscale

import (
	"fmt"
	"strconv"
	"strings"
	"time"
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
