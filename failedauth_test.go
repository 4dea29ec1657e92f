package postscale

import (
	"net/netip"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestGuessersCountPerWindow(t *testing.T) {
	g := newGuessers()
	f := &FailedAuth{Count: 3, Window: caddy.Duration(time.Minute)}
	a := guessAddr("203.0.113.9")
	now := time.Unix(1_800_000_000, 0)

	var tickets []guessTicket
	for i := range 3 {
		tk, _, ok := g.reserve(a, now.Add(time.Duration(i)*time.Second), f)
		if !ok {
			t.Fatalf("guess %d refused; want 3 allowed", i+1)
		}
		tickets = append(tickets, tk)
	}
	_, retry, ok := g.reserve(a, now.Add(10*time.Second), f)
	if ok {
		t.Fatal("a fourth guess within the window was allowed")
	}
	if retry != 50 {
		t.Errorf("Retry-After 10s into a 1m window: got %d, want 50", retry)
	}
	// A known key gives its reserved guess back.
	g.release(tickets[2])
	if _, _, ok := g.reserve(a, now.Add(11*time.Second), f); !ok {
		t.Error("a guess given back could not be used again")
	}
	// Another address has its own count.
	if _, _, ok := g.reserve(guessAddr("203.0.113.10"), now, f); !ok {
		t.Error("another address was refused")
	}
	// Past the window, the count starts again, and a ticket of the old
	// window gives nothing back to the new one.
	later := now.Add(time.Minute)
	for i := range 3 {
		if _, _, ok := g.reserve(a, later, f); !ok {
			t.Fatalf("guess %d of a new window refused", i+1)
		}
	}
	g.release(tickets[0])
	if _, _, ok := g.reserve(a, later, f); ok {
		t.Error("an old window's ticket was given back to the new window")
	}
	// Under a second left: Retry-After is still 1.
	if _, retry, _ := g.reserve(a, later.Add(time.Minute-time.Millisecond), f); retry != 1 {
		t.Errorf("Retry-After with 1ms left: got %d, want 1", retry)
	}
}

func TestGuessAddr(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"203.0.113.9", "203.0.113.9"},
		{"::ffff:203.0.113.9", "203.0.113.9"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"},
		{"2001:db8:1:2::ff", "2001:db8:1:2::"},
		{"fe80::1%eth0", "fe80::"},
		{"@", "invalid IP"},
		{"", "invalid IP"},
	} {
		if got := guessAddr(tc.in).String(); got != tc.want {
			t.Errorf("guessAddr(%q): got %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestGuessersBounded(t *testing.T) {
	g := newGuessers()
	f := &FailedAuth{Count: 1, Window: caddy.Duration(time.Hour)}
	now := time.Unix(1_800_000_000, 0)
	addr := func(i int) netip.Addr {
		return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	const n = 3 * guessersCapacity
	first, last := addr(0), addr(n-1)
	for i := range n {
		a := addr(i)
		if _, _, ok := g.reserve(a, now.Add(time.Duration(i)*time.Microsecond), f); !ok {
			t.Fatalf("address %d refused its first guess", i)
		}
	}
	if n := g.len(); n > guessersCapacity {
		t.Fatalf("addresses held: %d, want at most %d", n, guessersCapacity)
	}
	// The first addresses were pushed out long ago: they start afresh.
	if _, _, ok := g.reserve(first, now.Add(time.Second), f); !ok {
		t.Error("the oldest address is still held although the table overflowed twice over")
	}
	if _, _, ok := g.reserve(last, now.Add(time.Second), f); ok {
		t.Error("the newest address lost its count")
	}
}

func TestFailedAuthDefaults(t *testing.T) {
	for _, tc := range []struct {
		in      FailedAuth
		want    string
		wantErr bool
	}{
		{FailedAuth{}, "100 1m0s", false},
		{FailedAuth{Count: 5}, "5 1m0s", false},
		{FailedAuth{Window: caddy.Duration(time.Second)}, "100 1s", false},
		{FailedAuth{Off: true}, "off", false},
		{FailedAuth{Off: true, Count: 5}, "", true},
		{FailedAuth{Count: -1}, "", true},
		{FailedAuth{Window: -1}, "", true},
	} {
		got, err := tc.in.withDefaults()
		if (err != nil) != tc.wantErr {
			t.Errorf("%+v: err %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if err == nil && got.String() != tc.want {
			t.Errorf("%+v: got %s, want %s", tc.in, got, tc.want)
		}
	}
}
