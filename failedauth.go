package postscale

import (
	"fmt"
	"hash/maphash"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// FailedAuth is the guessing throttle of one handler (SPEC §5): a client
// address that made Count guesses within Window gets 429
// too_many_failed_attempts, without a store lookup, for every key not
// already cached as valid, until Window has passed since its first guess.
// A guess is a well-formed key the store does not know; malformed keys,
// bad checksums and 503s are not guesses. Cached valid keys keep working
// from that address, so an attacker cannot lock a key's owner out.
type FailedAuth struct {
	// Count is how many guesses an address may make per window.
	// Default: 100.
	Count int `json:"count,omitempty"`
	// Window is how long an address's guesses are counted, from its
	// first. Default: 1m.
	Window caddy.Duration `json:"window,omitempty"`
	// Off turns the throttle off.
	Off bool `json:"off,omitempty"`
}

// Defaults of failed_auth, and the longest window.
const (
	DefaultFailedAuthCount  = 100
	DefaultFailedAuthWindow = time.Minute
	maxFailedAuthWindow     = 24 * time.Hour
)

// withDefaults fills the unset fields and checks the others.
func (f FailedAuth) withDefaults() (FailedAuth, error) {
	if f.Off {
		if f.Count != 0 || f.Window != 0 {
			return f, fmt.Errorf("failed_auth: off takes no count or window")
		}
		return f, nil
	}
	if f.Count < 0 {
		return f, fmt.Errorf("failed_auth: count must be at least 1, got %d", f.Count)
	}
	if f.Window < 0 || f.Window > caddy.Duration(maxFailedAuthWindow) {
		return f, fmt.Errorf("failed_auth: window must be positive and at most %s, got %s", maxFailedAuthWindow, time.Duration(f.Window))
	}
	if f.Count == 0 {
		f.Count = DefaultFailedAuthCount
	}
	if f.Window == 0 {
		f.Window = caddy.Duration(DefaultFailedAuthWindow)
	}
	return f, nil
}

// guessers counts the guesses of client addresses, for every handler on one
// store (it lives in the keyring, so a reload keeps the counts). It holds at
// most guessersCapacity addresses: a full shard drops the windows that have
// ended, or else the oldest of a sample (see makeRoom), so memory stays
// bounded whatever the number of addresses (an attacker with that many
// addresses is bounded by the lookup slots instead).
//
// IPv6 addresses count by their /64, which one client usually holds whole.
//
// A guess is reserved before its lookup and given back if the key turns out
// to be known (or the store cannot answer): concurrent guesses from one
// address can never make more lookups than the count allows.
//
// Safe for concurrent use; the cached path of a valid key never touches it.
type guessers struct {
	seed   maphash.Seed
	shards [guessersShards]guesserShard
}

type guesserShard struct {
	mu sync.Mutex
	m  map[netip.Addr]*guesser
}

// guesser is one address's current window: when it began (unix
// nanoseconds) and the guesses made or in flight in it.
type guesser struct {
	start int64
	count int
}

const (
	guessersShards   = 64
	guessersCapacity = 1 << 16 // about 6 MB at most
	guesserShardCap  = guessersCapacity / guessersShards
)

func newGuessers() *guessers {
	g := &guessers{seed: maphash.MakeSeed()}
	for i := range g.shards {
		g.shards[i].m = make(map[netip.Addr]*guesser)
	}
	return g
}

// guessAddr is the address guesses count against: the client IP as Caddy
// determined it (trusted_proxies applied), IPv6 cut to its /64. An address
// that does not parse (a Unix socket client, "@") is the zero Addr, which
// the handler does not throttle.
func guessAddr(clientIP string) netip.Addr {
	a, err := netip.ParseAddr(clientIP)
	if err != nil {
		return netip.Addr{}
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		a = p.Addr()
	}
	return a
}

func (g *guessers) shard(a netip.Addr) *guesserShard {
	b := a.As16()
	return &g.shards[maphash.Bytes(g.seed, b[:])%guessersShards]
}

// guessTicket is a reserved guess, to give back with release when the
// key turns out not to be a guess. The zero ticket holds nothing.
type guessTicket struct {
	addr  netip.Addr
	start int64
	held  bool
}

// reserve takes one guess for addr at now under limit f. When the address
// has no guess left, it returns ok false and the whole seconds (at least 1)
// until its window ends.
func (g *guessers) reserve(addr netip.Addr, now time.Time, f *FailedAuth) (t guessTicket, retryAfter int64, ok bool) {
	n := now.UnixNano()
	window := int64(f.Window)
	s := g.shard(addr)
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.m[addr]
	switch {
	case v == nil:
		if len(s.m) >= guesserShardCap {
			s.makeRoom(n, window)
		}
		v = &guesser{start: n}
		s.m[addr] = v
	case n-v.start >= window:
		v.start, v.count = n, 0
	case v.count >= f.Count:
		left := v.start + window - n
		return guessTicket{}, max(1, (left+int64(time.Second)-1)/int64(time.Second)), false
	}
	v.count++
	return guessTicket{addr: addr, start: v.start, held: true}, 0, true
}

// release gives a reserved guess back, if its window is still the current
// one.
func (g *guessers) release(t guessTicket) {
	if !t.held {
		return
	}
	s := g.shard(t.addr)
	s.mu.Lock()
	if v := s.m[t.addr]; v != nil && v.start == t.start && v.count > 0 {
		v.count--
	}
	s.mu.Unlock()
}

// makeRoom drops, from a sample of a full shard (map order is random), the
// windows that ended before now, or else the one that started first: a new
// address costs a bounded amount of work however full the table is.
// Called with s.mu held.
func (s *guesserShard) makeRoom(now, window int64) {
	var oldest netip.Addr
	oldestStart := int64(1<<63 - 1)
	seen := 0
	for a, v := range s.m {
		if now-v.start >= window {
			delete(s.m, a)
		} else if v.start < oldestStart {
			oldest, oldestStart = a, v.start
		}
		if seen++; seen == evictionSample {
			break
		}
	}
	if len(s.m) >= guesserShardCap {
		delete(s.m, oldest)
	}
}

// evictionSample is how many entries a full table looks at to make room.
const evictionSample = 32

// len is how many addresses are held.
func (g *guessers) len() int {
	n := 0
	for i := range g.shards {
		s := &g.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// String is the Caddyfile form, for messages.
func (f FailedAuth) String() string {
	if f.Off {
		return "off"
	}
	return strconv.Itoa(f.Count) + " " + time.Duration(f.Window).String()
}
