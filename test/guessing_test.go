package test

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	postscale "github.com/postscale/caddy-postscale"
)

// Guessing is throttled per client address (failed_auth, SPEC §5): past
// the count, an address's keys that are not cached as valid get 429
// too_many_failed_attempts without a store lookup, while its cached valid
// keys keep working, and other addresses are not affected. The address is
// Caddy's client IP: X-Forwarded-For counts only from a trusted proxy.

var tooManyGuesses = rejection{429, "", "rate_limit_error", "too_many_failed_attempts", true}

// trustLoopback is the global option that makes the test client a trusted
// proxy, so X-Forwarded-For names the client address.
const trustLoopback = `	servers {
		trusted_proxies static 127.0.0.1/32 ::1/128
	}
`

// from is the X-Forwarded-For header of a client at addr.
func from(addr string) string { return "X-Forwarded-For: " + addr }

// madeUp is a well-formed key with a valid checksum that no store knows.
func madeUp(t *testing.T) string {
	t.Helper()
	k, err := postscale.NewKey(postscale.ModeLive)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func lookups(t *testing.T) float64 {
	return metricValue(t, "caddy_postscale_store_lookups_total")
}

func TestFailedAuth(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	loadConfig(t, globalOptions(trustLoopback)+gatewaySite(store, backend.addr(), "plan bulk 100000\n\t\tfailed_auth 5 1m"), "caddyfile")
	createAccount(t, "acme", "bulk")
	warm := createKey(t, "acme", "warm", "live")
	cold := createKey(t, "acme", "cold", "live")
	const attacker, owner = "203.0.113.7", "198.51.100.20"

	// The key's owner uses it from the attacker's address too (a shared
	// NAT), so it is cached as valid before the guessing starts.
	expectAdmitted(t, backend, warm.Key, "/v1/emails", from(attacker))

	before := lookups(t)
	for i := range 5 {
		r := expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)), from(attacker))
		if t.Failed() {
			t.Fatalf("guess %d: %s", i+1, r.body)
		}
	}
	if got := lookups(t) - before; got != 5 {
		t.Errorf("store lookups for 5 guesses: %v, want 5", got)
	}

	before = lookups(t)
	r := expectRejected(t, backend, tooManyGuesses, "/v1/emails", bearer(madeUp(t)), from(attacker))
	if n, _ := strconv.Atoi(r.header.Get("Retry-After")); n < 1 || n > 60 {
		t.Errorf("Retry-After of a throttled address: %q, want 1 to 60 seconds (the window)", r.header.Get("Retry-After"))
	}
	// The same unknown key again, and a valid key that is not cached:
	// both wait for the window, without a store lookup.
	expectRejected(t, backend, tooManyGuesses, "/v1/emails", bearer(madeUp(t)), from(attacker))
	expectRejected(t, backend, tooManyGuesses, "/v1/emails", bearer(cold.Key), from(attacker))
	// Malformed keys and bad checksums are not looked up: they stay 401.
	bad := warm.Key[:len(warm.Key)-1] + otherBase62(warm.Key[len(warm.Key)-1])
	expectRejected(t, backend, invalidKey, "/v1/emails", bearer(bad), from(attacker))
	if got := lookups(t) - before; got != 0 {
		t.Errorf("store lookups from a throttled address: %v, want 0", got)
	}
	// The owner's cached key keeps working from the throttled address.
	for range 3 {
		expectAdmitted(t, backend, warm.Key, "/v1/emails", from(attacker))
	}
	// Another address is not affected: its guesses are its own, and it
	// can use the key the attacker's address could not.
	expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)), from(owner))
	expectAdmitted(t, backend, cold.Key, "/v1/emails", from(owner))

	// Bad checksums do not count: an address that sent many still has
	// all its guesses.
	const sloppy = "192.0.2.33"
	for range 20 {
		expectRejected(t, backend, invalidKey, "/v1/emails", bearer(bad), from(sloppy))
	}
	expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)), from(sloppy))

	// Concurrent guesses cannot overrun the count: 40 at once from a new
	// address make 5 lookups, and the rest wait for the window.
	const swarm = "192.0.2.77"
	before = lookups(t)
	statuses := map[int]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() {
			r := get(t, "/v1/emails", bearer(madeUp(t)), from(swarm))
			mu.Lock()
			statuses[r.status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if statuses[http.StatusUnauthorized] != 5 || statuses[http.StatusTooManyRequests] != 35 {
		t.Errorf("40 concurrent guesses with failed_auth 5: statuses %v, want 5 × 401 and 35 × 429", statuses)
	}
	if got := lookups(t) - before; got != 5 {
		t.Errorf("store lookups for 40 concurrent guesses: %v, want 5", got)
	}

	// IPv6 clients count by their /64.
	for i := range 5 {
		expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)), from(fmt.Sprintf("2001:db8:1:2::%x", i+1)))
	}
	expectRejected(t, backend, tooManyGuesses, "/v1/emails", bearer(madeUp(t)), from("2001:db8:1:2:ffff::9"))
	expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)), from("2001:db8:1:3::1"))

	if got := metricValue(t, `caddy_postscale_requests_total{mode="",outcome="throttled",plan=""}`); got < 1 {
		t.Errorf("requests_total{outcome=throttled}: %v, want the throttled requests counted", got)
	}
}

// TestFailedAuthWindow: an address may guess again once its window has
// passed since its first guess, and known keys given back their guess.
func TestFailedAuthWindow(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	loadConfig(t, globalOptions(trustLoopback)+gatewaySite(store, backend.addr(), "plan bulk 100000\n\t\tfailed_auth 2 1500ms"), "caddyfile")
	createAccount(t, "acme", "bulk")
	const client = "203.0.113.50"
	// Valid keys never cached before are looked up, but are no guesses.
	for i := range 4 {
		k := createKey(t, "acme", fmt.Sprintf("k%d", i), "live")
		expectAdmitted(t, backend, k.Key, "/v1/emails", from(client))
	}
	start := time.Now()
	expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)), from(client))
	expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)), from(client))
	expectRejected(t, backend, tooManyGuesses, "/v1/emails", bearer(madeUp(t)), from(client))
	time.Sleep(time.Until(start.Add(1600 * time.Millisecond)))
	expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)), from(client))
}

// TestFailedAuthIgnoresUntrustedForwardedFor: without trusted_proxies,
// X-Forwarded-For is the client's own say and does not change its
// address: a guesser cannot spread its guesses by varying it.
func TestFailedAuthIgnoresUntrustedForwardedFor(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	loadCaddyfile(t, gatewaySite(store, backend.addr(), "failed_auth 3 1m"))
	for i := range 3 {
		expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)), from(fmt.Sprintf("198.51.100.%d", i+1)))
	}
	expectRejected(t, backend, tooManyGuesses, "/v1/emails", bearer(madeUp(t)), from("198.51.100.99"))
}

// TestFailedAuthOff: with failed_auth off, guesses are answered 401
// however many there are.
func TestFailedAuthOff(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	loadCaddyfile(t, gatewaySite(store, backend.addr(), "failed_auth off"))
	for range 120 {
		expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)))
	}
}

// TestFailedAuthKeyOwnerNotLockedOut: the owner of a key that an address
// used successfully keeps using it from that address although an attacker
// there is throttled, also after the key's cache entry has expired.
func TestFailedAuthKeyOwnerNotLockedOut(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	loadConfig(t, globalOptions(trustLoopback)+gatewaySite(store, backend.addr(), "cache_ttl 1s\n\t\tfailed_auth 3 1m"), "caddyfile")
	createAccount(t, "acme", "starter")
	owned := createKey(t, "acme", "owner", "live")
	const nat = "203.0.113.99"
	expectAdmitted(t, backend, owned.Key, "/v1/emails", from(nat))
	for range 3 {
		expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)), from(nat))
	}
	expectRejected(t, backend, tooManyGuesses, "/v1/emails", bearer(madeUp(t)), from(nat))
	time.Sleep(1300 * time.Millisecond) // the owner's cache entry expires
	expectAdmitted(t, backend, owned.Key, "/v1/emails", from(nat))
	expectRejected(t, backend, tooManyGuesses, "/v1/emails", bearer(madeUp(t)), from(nat))
}
