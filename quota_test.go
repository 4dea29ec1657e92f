package postscale

import (
	"testing"
	"time"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestPeriodAtMonth(t *testing.T) {
	for _, tc := range []struct {
		name, anchor, now, start, end string
	}{
		// Billing day 1.
		{"day 1, mid-month", "2026-01-01T00:00:00Z", "2026-03-17T12:00:00Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"},
		{"day 1, exactly at the start", "2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z", "2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z"},
		{"day 1, a nanosecond before the end", "2026-01-01T00:00:00Z", "2026-03-31T23:59:59.999999999Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"},
		// Billing day 15, with a time of day.
		{"day 15, before the billing day", "2025-11-15T09:30:00Z", "2026-02-10T00:00:00Z", "2026-01-15T09:30:00Z", "2026-02-15T09:30:00Z"},
		{"day 15, on the billing day before its time", "2025-11-15T09:30:00Z", "2026-02-15T09:29:59Z", "2026-01-15T09:30:00Z", "2026-02-15T09:30:00Z"},
		{"day 15, on the billing day at its time", "2025-11-15T09:30:00Z", "2026-02-15T09:30:00Z", "2026-02-15T09:30:00Z", "2026-03-15T09:30:00Z"},
		{"day 15, across the year", "2025-11-15T00:00:00Z", "2026-01-02T00:00:00Z", "2025-12-15T00:00:00Z", "2026-01-15T00:00:00Z"},
		// Billing day 28 exists in every month.
		{"day 28, February", "2026-01-28T00:00:00Z", "2026-03-01T00:00:00Z", "2026-02-28T00:00:00Z", "2026-03-28T00:00:00Z"},
		// Billing day 29: the last day of a common February, the 29th of a leap one.
		{"day 29, common February", "2026-01-29T00:00:00Z", "2026-03-01T00:00:00Z", "2026-02-28T00:00:00Z", "2026-03-29T00:00:00Z"},
		{"day 29, leap February", "2028-01-29T00:00:00Z", "2028-03-01T00:00:00Z", "2028-02-29T00:00:00Z", "2028-03-29T00:00:00Z"},
		{"day 29, January in a leap year", "2027-12-29T00:00:00Z", "2028-02-01T00:00:00Z", "2028-01-29T00:00:00Z", "2028-02-29T00:00:00Z"},
		// Billing day 30.
		{"day 30, into February", "2026-01-30T00:00:00Z", "2026-02-10T00:00:00Z", "2026-01-30T00:00:00Z", "2026-02-28T00:00:00Z"},
		{"day 30, out of February", "2026-01-30T00:00:00Z", "2026-03-05T00:00:00Z", "2026-02-28T00:00:00Z", "2026-03-30T00:00:00Z"},
		{"day 30, leap February", "2028-01-30T00:00:00Z", "2028-03-05T00:00:00Z", "2028-02-29T00:00:00Z", "2028-03-30T00:00:00Z"},
		// Billing day 31: the last day of every shorter month, and back
		// to the 31st after it.
		{"day 31, April (30 days)", "2026-01-31T00:00:00Z", "2026-04-30T12:00:00Z", "2026-04-30T00:00:00Z", "2026-05-31T00:00:00Z"},
		{"day 31, March after February", "2026-01-31T00:00:00Z", "2026-03-15T00:00:00Z", "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"},
		{"day 31, March 31 starts a period", "2026-01-31T00:00:00Z", "2026-03-31T00:00:00Z", "2026-03-31T00:00:00Z", "2026-04-30T00:00:00Z"},
		{"day 31, leap February", "2028-01-31T00:00:00Z", "2028-02-29T01:00:00Z", "2028-02-29T00:00:00Z", "2028-03-31T00:00:00Z"},
		{"day 31, December into January", "2025-10-31T00:00:00Z", "2026-01-05T00:00:00Z", "2025-12-31T00:00:00Z", "2026-01-31T00:00:00Z"},
		{"day 31, September (30 days)", "2026-08-31T00:00:00Z", "2026-10-01T00:00:00Z", "2026-09-30T00:00:00Z", "2026-10-31T00:00:00Z"},
		// An anchor in the future: the periods before it.
		{"anchor next month", "2026-06-15T00:00:00Z", "2026-05-20T00:00:00Z", "2026-05-15T00:00:00Z", "2026-06-15T00:00:00Z"},
		{"anchor next year", "2027-03-31T00:00:00Z", "2026-03-01T00:00:00Z", "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"},
		// UTC throughout: a time given in another zone means the same
		// instant, and a change of daylight-saving time nowhere matters.
		{"anchor given in a zone", "2026-03-29T01:30:00+02:00", "2026-03-29T00:00:00Z", "2026-03-28T23:30:00Z", "2026-04-28T23:30:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start, end := periodAt(utc(tc.anchor), PeriodMonth, utc(tc.now))
			if !start.Equal(utc(tc.start)) || !end.Equal(utc(tc.end)) {
				t.Errorf("period of %s from anchor %s: got [%s, %s), want [%s, %s)", tc.now, tc.anchor,
					start.Format(time.RFC3339), end.Format(time.RFC3339), tc.start, tc.end)
			}
		})
	}
}

// TestPeriodAtEveryMonth walks four years of month ends for every billing
// day: each period starts where the last ended, holds its start, and starts
// on the billing day or the month's last day.
func TestPeriodAtEveryMonth(t *testing.T) {
	for day := 1; day <= 31; day++ {
		anchor := time.Date(2025, time.January, day, 6, 0, 0, 0, time.UTC)
		if anchor.Day() != day {
			continue
		}
		now := anchor
		prevEnd := time.Time{}
		for range 48 {
			start, end := periodAt(anchor, PeriodMonth, now)
			if !prevEnd.IsZero() && !start.Equal(prevEnd) {
				t.Fatalf("billing day %d: period [%s, %s) does not start where the last ended (%s)", day, start, end, prevEnd)
			}
			if now.Before(start) || !now.Before(end) {
				t.Fatalf("billing day %d: %s not in its period [%s, %s)", day, now, start, end)
			}
			last := time.Date(start.Year(), start.Month()+1, 0, 0, 0, 0, 0, time.UTC).Day()
			if start.Day() != min(day, last) || start.Hour() != 6 {
				t.Fatalf("billing day %d: a period starts %s", day, start)
			}
			prevEnd = end
			now = end
		}
	}
}

func TestPeriodAtDay(t *testing.T) {
	for _, tc := range []struct {
		name, anchor, now, start string
	}{
		{"same day", "2026-01-01T08:00:00Z", "2026-01-01T09:00:00Z", "2026-01-01T08:00:00Z"},
		{"before the anchor's time", "2026-01-01T08:00:00Z", "2026-03-10T07:59:59Z", "2026-03-09T08:00:00Z"},
		{"at the anchor's time", "2026-01-01T08:00:00Z", "2026-03-10T08:00:00Z", "2026-03-10T08:00:00Z"},
		{"leap day", "2028-02-28T00:00:00Z", "2028-02-29T13:00:00Z", "2028-02-29T00:00:00Z"},
		{"anchor in the future", "2026-05-10T08:00:00Z", "2026-05-01T07:00:00Z", "2026-04-30T08:00:00Z"},
		{"anchor in the future, at its time", "2026-05-10T08:00:00Z", "2026-05-01T08:00:00Z", "2026-05-01T08:00:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start, end := periodAt(utc(tc.anchor), PeriodDay, utc(tc.now))
			if !start.Equal(utc(tc.start)) || end.Sub(start) != 24*time.Hour {
				t.Errorf("day of %s from anchor %s: got [%s, %s), want from %s", tc.now, tc.anchor, start, end, tc.start)
			}
		})
	}
}

func TestParseQuota(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Quota
		ok   bool
	}{
		{"50000/month", Quota{50000, PeriodMonth}, true},
		{"1/day", Quota{1, PeriodDay}, true},
		{"0/day", Quota{}, false},
		{"-5/month", Quota{}, false},
		{"5/week", Quota{}, false},
		{"5", Quota{}, false},
		{"five/day", Quota{}, false},
	} {
		got, err := ParseQuota(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("ParseQuota(%q): got %+v, %v; want %+v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// TestQuotaCounterReservations: the last request of a quota, reserved
// while its bucket decides, leaves others refused with pending set (so
// they are told to come back in a second), and is given back if the
// bucket refuses it; a learned total never brings a given-back request
// back.
func TestQuotaCounterReservations(t *testing.T) {
	c := &quotaCounter{}
	c.used.Store(4)
	if !c.reserve(5) {
		t.Fatal("the fifth of 5 was refused")
	}
	if c.reserve(5) || c.pending.Load() != 1 {
		t.Fatalf("a sixth while the fifth is pending: reserved, or pending %d; want refused with 1 pending", c.pending.Load())
	}
	c.unreserve()
	c.learn(4) // the store knows of 4
	if c.used.Load() != 4 || c.pending.Load() != 0 || c.unflushed.Load() != 0 {
		t.Fatalf("after the bucket refused it: used %d, pending %d, unflushed %d; want 4, 0, 0", c.used.Load(), c.pending.Load(), c.unflushed.Load())
	}
	if !c.reserve(5) {
		t.Fatal("the fifth, given back, could not be reserved again")
	}
	c.settle()
	if c.reserve(5) || c.pending.Load() != 0 {
		t.Fatalf("after the fifth was admitted: another reserved, or pending %d; want refused with none pending", c.pending.Load())
	}
}
