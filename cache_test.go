package postscale

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// fakeStore is a Store test double for the cache and handler tests: it
// counts lookups, can fail them, and can hold a lookup mid-flight. Its
// management methods are not used by these tests.
type fakeStore struct {
	Store // nil: calling anything not defined below panics

	mu      sync.Mutex
	keys    map[[sha256.Size]byte]KeyRecord
	account Account
	fail    error

	lookups atomic.Int64
	// When hold is set, a lookup signals entered and then waits for hold
	// to be closed before it reads the record.
	hold    chan struct{}
	entered chan struct{}
}

func newFakeStore() *fakeStore {
	return &fakeStore{keys: map[[sha256.Size]byte]KeyRecord{}, account: Account{ID: "acme", Plan: "growth"}}
}

func (s *fakeStore) Identity() string { return "fake" }

func (s *fakeStore) LookupKey(ctx context.Context, h [sha256.Size]byte) (KeyRecord, Account, error) {
	s.lookups.Add(1)
	s.mu.Lock()
	hold, entered := s.hold, s.entered
	s.mu.Unlock()
	if hold != nil {
		entered <- struct{}{}
		<-hold
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return KeyRecord{}, Account{}, s.fail
	}
	k, ok := s.keys[h]
	if !ok {
		return KeyRecord{}, Account{}, ErrNotFound
	}
	a := s.account
	a.ID = k.Account // s.account's, but for keys added with addFor
	return k, a, nil
}

func (s *fakeStore) Watch(ctx context.Context, fn func(Change)) error {
	<-ctx.Done()
	return ctx.Err()
}

// add stores a new live key of s.account and returns it.
func (s *fakeStore) add(t testing.TB) (string, KeyRecord) {
	t.Helper()
	return s.addFor(t, s.account.ID)
}

// addFor stores a new live key of account (on s.account's plan) and
// returns it.
func (s *fakeStore) addFor(t testing.TB, account string) (string, KeyRecord) {
	t.Helper()
	key, err := NewKey(ModeLive)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := newID("key_")
	rec := KeyRecord{ID: id, Account: account, Name: "test key", Mode: ModeLive, Hash: HashKey(key), Redacted: Redact(key)}
	s.mu.Lock()
	s.keys[rec.Hash] = rec
	s.mu.Unlock()
	return key, rec
}

func (s *fakeStore) revoke(h [sha256.Size]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[h]
	now := time.Now()
	k.RevokedAt = &now
	s.keys[h] = k
}

func (s *fakeStore) setHold(hold, entered chan struct{}) {
	s.mu.Lock()
	s.hold, s.entered = hold, entered
	s.mu.Unlock()
}

func newTestKeyring(t testing.TB, s Store) *keyring {
	t.Helper()
	k, err := newKeyring(s, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Destruct() })
	return k
}

// testPolicy caches for a minute and lets a lookup take a second.
var testPolicy = lookupPolicy{ttl: time.Minute, negTTL: time.Minute, timeout: time.Second}

// testGet is what a request does with a key hash, without the guessing
// throttle: the cached answer, else a store lookup. hit says the cache
// answered.
func testGet(k *keyring, h *[sha256.Size]byte, p lookupPolicy) (e *entry, hit bool, err error) {
	if e := k.cached(h, time.Now(), p); e != nil {
		return e, true, nil
	}
	e, err = k.lookup(context.Background(), *h, p)
	return e, false, err
}

// settle waits until ristretto has applied pending sets, so that the next
// Get sees them.
func settle(k *keyring) { k.cache.Wait() }

func TestKeyringCachesFoundKeys(t *testing.T) {
	s := newFakeStore()
	k := newTestKeyring(t, s)
	key, rec := s.add(t)
	h := HashKey(key)

	e, hit, err := testGet(k, &h, testPolicy)
	if err != nil || hit || !e.found || e.keyID != rec.ID {
		t.Fatalf("first get: entry %+v, hit %v, err %v; want found %s from the store", e, hit, err, rec.ID)
	}
	settle(k)
	for range 100 {
		if _, hit, _ := testGet(k, &h, testPolicy); !hit {
			t.Fatal("a cached key missed the cache")
		}
	}
	if got := s.lookups.Load(); got != 1 {
		t.Errorf("store lookups: got %d, want 1", got)
	}
}

func TestKeyringNegativeEntries(t *testing.T) {
	s := newFakeStore()
	k := newTestKeyring(t, s)
	unknown, _ := NewKey(ModeLive)
	h := HashKey(unknown)
	// No settle between the requests: the answer must hold from the very
	// next one, whatever ristretto's buffers and admission policy do.
	for range 50 {
		e, _, err := testGet(k, &h, testPolicy)
		if err != nil || e.found {
			t.Fatalf("unknown key: entry found=%v err=%v; want not found", e.found, err)
		}
	}
	if got := s.lookups.Load(); got != 1 {
		t.Errorf("store lookups for a repeated unknown key: got %d, want 1", got)
	}
}

func TestKeyringTTL(t *testing.T) {
	s := newFakeStore()
	k := newTestKeyring(t, s)
	key, _ := s.add(t)
	h := HashKey(key)
	unknown, _ := NewKey(ModeTest)
	hu := HashKey(unknown)

	// A found key lives for ttl, an unknown one for negTTL.
	const ttl, negTTL = 300 * time.Millisecond, 300 * time.Millisecond
	testGet(k, &h, lookupPolicy{ttl: ttl, negTTL: negTTL, timeout: time.Second})
	testGet(k, &hu, lookupPolicy{ttl: ttl, negTTL: negTTL, timeout: time.Second})
	settle(k)
	if _, hit, _ := testGet(k, &h, lookupPolicy{ttl: ttl, negTTL: negTTL, timeout: time.Second}); !hit {
		t.Fatal("found key not cached")
	}
	if _, hit, _ := testGet(k, &hu, lookupPolicy{ttl: ttl, negTTL: negTTL, timeout: time.Second}); !hit {
		t.Fatal("unknown key not cached")
	}
	time.Sleep(ttl + 100*time.Millisecond)
	if _, hit, _ := testGet(k, &h, lookupPolicy{ttl: ttl, negTTL: negTTL, timeout: time.Second}); hit {
		t.Error("found key still cached after its TTL")
	}
	if _, hit, _ := testGet(k, &hu, lookupPolicy{ttl: ttl, negTTL: negTTL, timeout: time.Second}); hit {
		t.Error("unknown key still cached after the negative TTL")
	}
}

func TestKeyringStoreErrorsAreNotCached(t *testing.T) {
	s := newFakeStore()
	k := newTestKeyring(t, s)
	key, _ := s.add(t)
	h := HashKey(key)
	s.fail = errors.New("connection refused")
	for range 3 {
		if _, _, err := testGet(k, &h, testPolicy); err == nil {
			t.Fatal("get succeeded while the store fails")
		}
		settle(k)
	}
	s.mu.Lock()
	s.fail = nil
	s.mu.Unlock()
	e, _, err := testGet(k, &h, testPolicy)
	if err != nil || !e.found {
		t.Fatalf("after the store recovered: found=%v err=%v", e != nil && e.found, err)
	}
	if got := s.lookups.Load(); got != 4 {
		t.Errorf("lookups: got %d, want 4 (failures must not be cached)", got)
	}
}

func TestKeyringSingleflight(t *testing.T) {
	s := newFakeStore()
	k := newTestKeyring(t, s)
	key, _ := s.add(t)
	h := HashKey(key)
	hold, entered := make(chan struct{}), make(chan struct{}, 1)
	s.setHold(hold, entered)

	const n = 50
	var wg sync.WaitGroup
	results := make(chan *entry, n)
	for range n {
		wg.Go(func() {
			e, _, err := testGet(k, &h, testPolicy)
			if err != nil {
				t.Error(err)
			}
			results <- e
		})
	}
	<-entered
	// Let the other goroutines reach the singleflight group; they may
	// not all be there yet, which would only add lookups, never hide one.
	time.Sleep(50 * time.Millisecond)
	close(hold)
	wg.Wait()
	close(results)
	for e := range results {
		if e == nil || !e.found {
			t.Fatal("a concurrent get did not find the key")
		}
	}
	if got := s.lookups.Load(); got != 1 {
		t.Errorf("store lookups for %d concurrent misses: got %d, want 1", n, got)
	}
}

// TestKeyringRevocationRace holds a store lookup mid-flight with the old,
// unrevoked record, revokes and invalidates the key meanwhile, and checks
// both ways the stale lookup could bring the key back.
func TestKeyringRevocationRace(t *testing.T) {
	// begin starts a lookup that has read the unrevoked record and is held
	// before returning it, then revokes and invalidates the key as the
	// admin API does.
	begin := func(t *testing.T) (k *keyring, s *fakeStore, h [sha256.Size]byte, release func() *entry) {
		s = newFakeStore()
		stale := &staleStore{fakeStore: s}
		k = newTestKeyring(t, stale)
		key, _ := s.add(t)
		h = HashKey(key)
		hold, entered := make(chan struct{}), make(chan struct{}, 1)
		s.setHold(hold, entered)
		inflight := make(chan *entry, 1)
		go func() {
			e, _, _ := testGet(k, &h, testPolicy)
			inflight <- e
		}()
		<-entered
		s.revoke(h)
		k.invalidate(h)
		s.setHold(nil, nil)
		stale.passThrough.Store(true)
		release = sync.OnceValue(func() *entry {
			close(hold)
			return <-inflight
		})
		t.Cleanup(func() { release() })
		return k, s, h, release
	}

	t.Run("stale lookup does not re-cache the key", func(t *testing.T) {
		k, _, h, release := begin(t)
		if e := release(); e.revoked {
			t.Fatal("the held lookup was supposed to carry the unrevoked record")
		}
		settle(k)
		e, _, err := testGet(k, &h, testPolicy)
		if err != nil || !e.revoked {
			t.Fatalf("after the stale lookup finished: revoked=%v err=%v; want the revoked record", e != nil && e.revoked, err)
		}
	})

	t.Run("request after the revocation does not join the stale lookup", func(t *testing.T) {
		k, _, h, release := begin(t)
		got := make(chan *entry, 1)
		go func() {
			e, _, _ := testGet(k, &h, testPolicy)
			got <- e
		}()
		select {
		case e := <-got:
			if !e.revoked {
				t.Fatal("a request after the revocation was served the unrevoked record")
			}
		case <-time.After(2 * time.Second):
			release()
			e := <-got
			t.Fatalf("a request after the revocation waited for the stale lookup (revoked=%v)", e.revoked)
		}
	})
}

// staleStore answers every lookup with the record as it was when the
// lookup began (before its hold), like a database read that was already
// in flight when the revocation committed; passThrough turns it off.
type staleStore struct {
	*fakeStore
	passThrough atomic.Bool
}

func (s *staleStore) LookupKey(ctx context.Context, h [sha256.Size]byte) (KeyRecord, Account, error) {
	if s.passThrough.Load() {
		return s.fakeStore.LookupKey(ctx, h)
	}
	s.mu.Lock()
	rec, ok := s.keys[h]
	acct := s.account
	s.mu.Unlock()
	_, _, err := s.fakeStore.LookupKey(ctx, h) // counts, and holds
	if !ok {
		return KeyRecord{}, Account{}, ErrNotFound
	}
	return rec, acct, err
}

func TestKeyringInvalidateAccount(t *testing.T) {
	s := newFakeStore()
	k := newTestKeyring(t, s)
	key1, _ := s.add(t)
	key2, _ := s.add(t)
	h1, h2 := HashKey(key1), HashKey(key2)
	testGet(k, &h1, testPolicy)
	testGet(k, &h2, testPolicy)
	settle(k)
	k.apply(Change{Account: "acme"})
	for _, h := range []*[sha256.Size]byte{&h1, &h2} {
		if _, hit, _ := testGet(k, h, testPolicy); hit {
			t.Error("a key of the changed account is still cached")
		}
	}
}

// While the change feed is lost, a change made elsewhere (here: straight
// in the store, with no Change) shows once the cached entry is staleAfter
// old: the request that finds it stale is served from the cache at once
// and the entry is looked up again in the background. A store that cannot
// answer then keeps the cached entry and is asked again only after another
// staleAfter; the next All ends the rechecking.
func TestKeyringRechecksWhileFeedLost(t *testing.T) {
	s := newFakeStore()
	k := newTestKeyring(t, s)
	key, _ := s.add(t)
	h := HashKey(key)
	unknown := HashKey("ps_live_not-in-the-store")
	for _, hh := range []*[32]byte{&h, &unknown} {
		if _, _, err := testGet(k, hh, testPolicy); err != nil {
			t.Fatal(err)
		}
	}
	settle(k)
	// eventually polls get until want holds of the entry it returns.
	eventually := func(what string, hh *[32]byte, want func(*entry) bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			e, _, err := testGet(k, hh, testPolicy)
			if err == nil && want(e) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not seen within 2s (last: %+v, %v)", what, e, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	k.apply(Change{Lost: true})
	s.revoke(h)
	other, _ := s.add(t)
	s.mu.Lock()
	s.keys[unknown] = s.keys[HashKey(other)] // the unknown key now exists
	s.mu.Unlock()
	before := s.lookups.Load()
	if e, hit, _ := testGet(k, &h, testPolicy); !hit || e.revoked {
		t.Fatalf("feed lost, entry fresh: hit=%v revoked=%v; want the cached, unrevoked entry", hit, e.revoked)
	}
	if got := s.lookups.Load() - before; got != 0 {
		t.Errorf("feed lost, entry fresh: %d lookups, want 0", got)
	}

	time.Sleep(staleAfter + 50*time.Millisecond)
	before = s.lookups.Load()
	if e, hit, err := testGet(k, &h, testPolicy); err != nil || !hit || e.revoked {
		t.Fatalf("feed lost, entry %v old: hit=%v err=%v; want the cached entry at once, looked up again behind it", staleAfter, hit, err)
	}
	eventually("the revocation made while the feed was lost", &h, func(e *entry) bool { return e.revoked })
	eventually("the key created while the feed was lost", &unknown, func(e *entry) bool { return e.found })
	if got := s.lookups.Load() - before; got != 2 {
		t.Errorf("lookups for two stale entries: got %d, want 2", got)
	}

	// The store goes down too: the stale entry is kept and served at once,
	// and the store is asked once, not once per request.
	time.Sleep(staleAfter + 50*time.Millisecond)
	s.mu.Lock()
	s.fail = errors.New("connection refused")
	s.mu.Unlock()
	before = s.lookups.Load()
	for range 50 {
		if e, hit, err := testGet(k, &h, testPolicy); err != nil || !hit || !e.revoked {
			t.Fatalf("feed lost, store down: hit=%v err=%v; want the cached (revoked) entry kept", hit, err)
		}
	}
	if _, ok := waitUntil(time.Second, func() bool { return s.lookups.Load()-before >= 1 }); !ok {
		t.Fatal("feed lost, store down: no lookup of the stale entry")
	}
	settle(k)
	time.Sleep(50 * time.Millisecond)
	for range 50 {
		testGet(k, &h, testPolicy)
	}
	if got := s.lookups.Load() - before; got != 1 {
		t.Errorf("feed lost, store down, 100 requests for one stale key within %v: %d lookups, want 1", staleAfter, got)
	}

	// Back: All drops everything, and fresh entries are used as they are.
	s.mu.Lock()
	s.fail = nil
	s.mu.Unlock()
	k.apply(Change{All: true})
	if _, hit, _ := testGet(k, &h, testPolicy); hit {
		t.Fatal("after All: got a cache hit, want everything dropped")
	}
	settle(k)
	before = s.lookups.Load()
	time.Sleep(staleAfter + 50*time.Millisecond)
	if _, hit, _ := testGet(k, &h, testPolicy); !hit {
		t.Error("feed back, entry older than staleAfter: got a lookup, want the cached entry")
	}
	time.Sleep(20 * time.Millisecond)
	if got := s.lookups.Load() - before; got != 0 {
		t.Errorf("lookups with the feed back: got %d, want 0", got)
	}
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(d time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start), true
}

// TestKeyringUnknownKeyAmidFlood: one unknown key repeated among a flood of
// distinct made-up keys (far more than ristretto would admit) costs one
// lookup, and concurrent misses of one unknown key share it.
func TestKeyringUnknownKeyAmidFlood(t *testing.T) {
	s := newFakeStore()
	k := newTestKeyring(t, s)
	repeated, _ := NewKey(ModeLive)
	hr := HashKey(repeated)
	for i := range 20000 {
		made, _ := NewKey(ModeLive)
		hm := HashKey(made)
		if _, _, err := testGet(k, &hm, testPolicy); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			if e, _, err := testGet(k, &hr, testPolicy); err != nil || e.found {
				t.Fatalf("repeated unknown key: found=%v err=%v", e != nil && e.found, err)
			}
		}
	}
	if got, want := s.lookups.Load(), int64(20000+1); got != want {
		t.Errorf("store lookups: got %d, want %d (one per distinct key)", got, want)
	}
	if n := k.unknown.len(); n > hashTableCapacity {
		t.Errorf("unknown keys held: %d, want at most %d", n, hashTableCapacity)
	}

	// Concurrent misses of one new unknown key make one lookup.
	hold, entered := make(chan struct{}), make(chan struct{}, 1)
	s.setHold(hold, entered)
	fresh, _ := NewKey(ModeTest)
	hf := HashKey(fresh)
	before := s.lookups.Load()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if e, _, err := testGet(k, &hf, testPolicy); err != nil || e.found {
				t.Errorf("concurrent unknown key: found=%v err=%v", e != nil && e.found, err)
			}
		})
	}
	<-entered
	time.Sleep(50 * time.Millisecond)
	s.setHold(nil, nil)
	close(hold)
	wg.Wait()
	for range 10 {
		testGet(k, &hf, testPolicy)
	}
	if got := s.lookups.Load() - before; got != 1 {
		t.Errorf("lookups for 50 concurrent and 10 later requests of one unknown key: got %d, want 1", got)
	}
}

// TestUnknownKeysBounded: past its capacity the negative cache pushes out
// older hashes, and a created key's hash is forgotten at once.
func TestUnknownKeysBounded(t *testing.T) {
	u := newHashTable()
	now := time.Unix(1_800_000_000, 0)
	var hashes [][sha256.Size]byte
	for i := range 3 * hashTableCapacity {
		var h [sha256.Size]byte
		binary.LittleEndian.PutUint64(h[:], uint64(i)*0x9E3779B97F4A7C15)
		h[8] = byte(i)
		hashes = append(hashes, h)
		u.put(&h, now.Add(time.Duration(i)*time.Microsecond), time.Minute)
	}
	if n := u.len(); n > hashTableCapacity {
		t.Fatalf("held %d hashes, want at most %d", n, hashTableCapacity)
	}
	last := hashes[len(hashes)-1]
	if _, ok := u.get(&last, now); !ok {
		t.Error("the newest hash was pushed out")
	}
	if _, ok := u.get(&hashes[0], now); ok {
		t.Error("the first hash is still held although the table overflowed twice over")
	}
	if _, ok := u.get(&last, now.Add(2*time.Minute)); ok {
		t.Error("a hash is still unknown after its TTL")
	}
	u.forget(&last)
	if _, ok := u.get(&last, now); ok {
		t.Error("a forgotten hash is still unknown")
	}
}

// ctxIgnoringStore answers no lookup until release is closed, whatever the
// lookup's context says, as a driver stuck in a system call would.
type ctxIgnoringStore struct {
	*fakeStore
	release chan struct{}
	started chan struct{}
}

func (s *ctxIgnoringStore) LookupKey(ctx context.Context, h [sha256.Size]byte) (KeyRecord, Account, error) {
	s.started <- struct{}{}
	<-s.release
	return s.fakeStore.LookupKey(ctx, h)
}

// TestKeyringLookupBounds: a lookup answers by its timeout even when the
// store ignores cancellation, keeps its slot until the store lets go, and
// a miss that finds every slot taken fails at once.
func TestKeyringLookupBounds(t *testing.T) {
	s := &ctxIgnoringStore{fakeStore: newFakeStore(), release: make(chan struct{}), started: make(chan struct{}, 100)}
	k := newTestKeyring(t, s)
	k.setMaxLookups(3)
	p := lookupPolicy{ttl: time.Minute, negTTL: time.Minute, timeout: 200 * time.Millisecond}
	released := false
	t.Cleanup(func() {
		if !released {
			close(s.release)
		}
	})

	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			made, _ := NewKey(ModeLive)
			h := HashKey(made)
			begin := time.Now()
			_, _, err := testGet(k, &h, p)
			took := time.Since(begin)
			if err == nil || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("a lookup the store never answers: err %v, want the lookup timeout", err)
			}
			if took > p.timeout+2*time.Second {
				t.Errorf("a lookup the store never answers returned after %v; lookup timeout %v", took, p.timeout)
			}
		})
	}
	for range 3 {
		<-s.started
	}
	wg.Wait()
	// The three store calls still run: every slot is taken, and a fourth
	// distinct miss fails at once without reaching the store.
	if n := int64(len(k.slots)); n != 3 {
		t.Fatalf("lookups in flight after their requests timed out: %d, want 3", n)
	}
	made, _ := NewKey(ModeLive)
	h := HashKey(made)
	begin := time.Now()
	if _, _, err := testGet(k, &h, p); !errors.Is(err, errLookupsBusy) {
		t.Fatalf("a miss with every slot taken: err %v, want errLookupsBusy", err)
	}
	if took := time.Since(begin); took > 100*time.Millisecond {
		t.Errorf("a miss with every slot taken took %v; want an answer at once", took)
	}
	if got := s.lookups.Load(); got != 0 {
		t.Errorf("store lookups completed: %d, want 0", got)
	}

	close(s.release)
	released = true
	if _, ok := waitUntil(2*time.Second, func() bool { return int64(len(k.slots)) == 0 }); !ok {
		t.Fatalf("lookups in flight after the store answered: %d, want 0", int64(len(k.slots)))
	}
	if e, _, err := testGet(k, &h, p); err != nil || e.found {
		t.Fatalf("after the store let go: found=%v err=%v; want a not-found answer", e != nil && e.found, err)
	}
}

// slowStore answers every lookup after a delay.
type slowStore struct {
	*fakeStore
	delay time.Duration
}

func (s *slowStore) LookupKey(ctx context.Context, h [sha256.Size]byte) (KeyRecord, Account, error) {
	time.Sleep(s.delay)
	return s.fakeStore.LookupKey(ctx, h)
}

// TestKeyringBurstWaitsForSlots: a burst of distinct valid keys larger
// than the lookup slots, against a store that answers, is served: misses
// wait for a slot instead of being turned away.
func TestKeyringBurstWaitsForSlots(t *testing.T) {
	s := &slowStore{fakeStore: newFakeStore(), delay: 2 * time.Millisecond}
	k := newTestKeyring(t, s)
	k.setMaxLookups(4)
	var hashes [][sha256.Size]byte
	for range 30 {
		key, _ := s.add(t)
		hashes = append(hashes, HashKey(key))
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range hashes {
		wg.Go(func() {
			if e, _, err := testGet(k, &hashes[i], testPolicy); err != nil || !e.found {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of 30 valid keys arriving at once failed with 4 lookup slots and a store that answers in 2ms", n)
	}
}

// A key in use is looked up again in the background in the last tenth of
// its TTL: the request that starts it, and those after, are answered from
// the cache, and the key never expires while it is used.
func TestCachedKeyRefreshedBeforeItExpires(t *testing.T) {
	s := newFakeStore()
	k := newTestKeyring(t, s)
	key, _ := s.add(t)
	h := HashKey(key)
	start := time.Now()
	first, _, err := testGet(k, &h, testPolicy)
	if err != nil {
		t.Fatal(err)
	}
	settle(k)

	// Before the last tenth of the minute: the cache alone.
	if e := k.cached(&h, start.Add(50*time.Second), testPolicy); e != first {
		t.Fatalf("at 50s of a 1m TTL: got %p, want the cached entry %p", e, first)
	}
	time.Sleep(20 * time.Millisecond)
	if n := s.lookups.Load(); n != 1 {
		t.Fatalf("at 50s of a 1m TTL the store was asked %d times, want once", n)
	}

	// In the last tenth: still answered from the cache at once, and looked
	// up again meanwhile.
	if e := k.cached(&h, start.Add(55*time.Second), testPolicy); e != first {
		t.Fatalf("at 55s of a 1m TTL: got %p, want the cached entry %p while it is looked up again", e, first)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.lookups.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("a key in the last tenth of its TTL was not looked up again")
		}
		time.Sleep(time.Millisecond)
	}
	settle(k)
	again := k.cached(&h, time.Now(), testPolicy)
	if again == nil || again == first || !again.expires.After(first.expires) {
		t.Fatalf("after the look-up-again: entry %p (expires %v), want a new one expiring after %v", again, again.expires, first.expires)
	}
}
