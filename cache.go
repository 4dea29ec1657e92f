package postscale

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/dgraph-io/ristretto/v2"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// entry is what the cache holds for one key hash: the record that was found,
// or a negative entry for a hash the store does not know. Entries are
// immutable once cached, and carry the values the request path hands on,
// built once here instead of on every request.
type entry struct {
	hash  [sha256.Size]byte
	found bool
	// loaded is when the store gave this answer: while the store's change
	// feed is lost, an entry older than staleAfter is looked up again.
	loaded time.Time
	// expires is when its cache TTL ends; an entry kept after a failed
	// look-up-again keeps that end.
	expires time.Time
	// refreshAt is when a request for it starts a look-up-again in the
	// background (a tenth of the TTL before expires), so that a key in
	// use is never served from the store while its client waits, and
	// the keys cached together do not all expire together.
	refreshAt time.Time

	keyID, keyName, accountID, plan string
	mode                            Mode
	legacy                          bool
	revoked                         bool
	expiresAt                       time.Time // zero: never
	// custom is the account's own limit (enterprise), or nil to use its
	// plan's.
	custom *limit
	scopes []string // nil: full access
	// Deprecation and Sunset response header values of a rolled key, else
	// empty.
	deprecation, sunset string
	// usage counts the key's requests until the next flush.
	usage *usage
	// quota is the account's own quota (nil: its plan's), anchor when its
	// periods start from, and used its latest period in the store when it
	// was looked up (nil: none).
	quota  *quotaPolicy
	anchor time.Time
	used   *PeriodUsage
	// counters are the account's counters of the current quota period
	// and hour, found once per period and hour (see quotaCounterOf,
	// hourCounterOf). A copy of the entry (refresh keeps one while the
	// store is down) shares them.
	counters *entryCounters

	// placeholders answers the postscale.* placeholders and
	// http.auth.user.id of a request this entry admits. It is made once per
	// entry, so that a request maps it into its replacer without
	// allocating (six Replacer.Set calls would take a lock each and grow
	// the replacer's map).
	placeholders caddy.ReplacerFunc
}

// entryPlaceholders returns the placeholder function of an admitted key,
// with each value boxed once.
func entryPlaceholders(mode Mode, accountID, keyID, plan, keyName string) caddy.ReplacerFunc {
	var modeVal, accountVal, keyVal, planVal, nameVal any = mode.String(), accountID, keyID, plan, keyName
	return func(name string) (any, bool) {
		switch name {
		case "postscale.mode":
			return modeVal, true
		case "postscale.account_id":
			return accountVal, true
		case "postscale.key_id", "http.auth.user.id":
			return keyVal, true
		case "postscale.plan":
			return planVal, true
		case "postscale.key_name":
			return nameVal, true
		}
		return nil, false
	}
}

// entryCounters point an entry at its account's current counters, and
// say whether a look-up-again of the entry is under way (see cached), so
// that the requests meanwhile do not each ask for one.
type entryCounters struct {
	counter    atomic.Pointer[quotaCounter]
	hour       atomic.Pointer[hourCounter]
	refreshing atomic.Bool
}

// newEntry builds the cache entry of a key found in the store at time now.
func newEntry(h [sha256.Size]byte, k KeyRecord, a Account, now time.Time) *entry {
	e := &entry{
		hash:      h,
		found:     true,
		loaded:    now,
		keyID:     k.ID,
		keyName:   k.Name,
		accountID: a.ID,
		plan:      a.Plan,
		mode:      k.Mode,
		legacy:    k.Legacy,
		revoked:   k.RevokedAt != nil,
	}
	if k.ExpiresAt != nil {
		e.expiresAt = *k.ExpiresAt
	}
	if k.DeprecatedAt != nil && k.ExpiresAt != nil {
		e.deprecation = "@" + strconv.FormatInt(k.DeprecatedAt.Unix(), 10)
		e.sunset = k.ExpiresAt.UTC().Format(http.TimeFormat)
	}
	e.scopes = k.Scopes
	if a.Quota != nil && a.Quota.check() == nil {
		e.quota = newQuotaPolicy(a.Plan, *a.Quota)
	}
	e.anchor, e.used = a.anchor(), a.Used
	e.counters = new(entryCounters)
	if a.Rate > 0 {
		if p, err := (Plan{Rate: a.Rate, Burst: a.Burst}).withDefaultBurst(); err == nil {
			e.custom = newLimit(a.Plan, p, now)
		}
	}
	e.placeholders = entryPlaceholders(k.Mode, a.ID, k.ID, a.Plan, k.Name)
	return e
}

// keyring verifies key hashes through a ristretto cache in front of a
// Store. One keyring exists per store identity and outlives config reloads,
// so the cache stays warm.
//
// Revocation safety: every invalidation bumps gen under mu and waits until
// the cache has applied the delete. A store lookup remembers gen when it
// starts and caches its answer only if gen is unchanged (checked under mu,
// read-locked), so a lookup that was in flight during a revocation can never
// put the old record back. Singleflight calls are keyed by (hash, gen) for
// the same reason: a request after the revocation never joins an older
// lookup.
type keyring struct {
	store  Store
	cache  *ristretto.Cache[uint64, *entry]
	group  singleflight.Group
	logger *zap.Logger

	mu     sync.RWMutex // held for writing while invalidating; for reading while filling
	gen    atomic.Uint64
	closed bool // under mu: the cache is closed, nothing to invalidate

	// failing is true from a failed store lookup to the next good one, so
	// that an outage is logged once each way, not per request.
	failing atomic.Bool
	// feedLost is true while the store's change feed is lost (from a
	// Change with Lost to the next with All): cached entries older than
	// staleAfter are looked up again before they are used.
	feedLost atomic.Bool
	// placed is closed when the change feed first reports All or Lost:
	// from then on, no change made elsewhere can go unnoticed.
	placed     chan struct{}
	placedOnce sync.Once

	// unknown holds the hashes the store does not know (see hashTable);
	// cache holds only keys it found. known holds the hashes of keys the
	// store found in the last knownFor, whatever cache still holds: their
	// lookups are no guesses, so failed_auth never stops them.
	unknown, known *hashTable
	// guessers counts the guesses of client addresses for failed_auth.
	guessers *guessers

	// slots holds a token per store lookup not yet returned (including
	// those a request stopped waiting for at its lookup timeout): at most
	// cap(slots) run at once, so a flood of made-up keys holds a bounded
	// number of store connections. A miss that finds them all taken waits
	// for one within its lookup timeout, while the store answers and at
	// most maxWaiting others wait; otherwise it gets errLookupsBusy at
	// once.
	slots      chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
	// shed counts misses turned away since the last warning about it, and
	// shedLogged paces that warning: at most one a minute.
	shed       atomic.Int64
	shedLogged sometimes

	// quotas holds a *quotaCounter per quotaKey, for the quota periods in
	// use; hours a *hourCounter per hourKey. See quota.go.
	quotas, hours sync.Map
	quotaFlushMu  sync.Mutex

	// usage holds a *usage per key id with requests not yet flushed.
	usage   sync.Map
	flushMu sync.Mutex
	// release lets go of the store once the last usage is flushed.
	release func()

	cancel context.CancelFunc
	done   sync.WaitGroup
}

// keyringCapacity is how many keys (found or not) the cache holds.
const keyringCapacity = 1 << 17

func newKeyring(store Store, logger *zap.Logger) (*keyring, error) {
	initMetrics()
	cache, err := ristretto.NewCache(&ristretto.Config[uint64, *entry]{
		NumCounters: 10 * keyringCapacity,
		MaxCost:     keyringCapacity,
		// Gets are recorded for the admission policy in per-CPU buffers
		// of this many, each handed to the policy's goroutine when full:
		// a wake-up that cost some 6 µs on the development machine, over
		// 100 ns a Get at ristretto's suggested 64.
		BufferItems:        1024,
		IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, fmt.Errorf("creating key cache: %w", err)
	}
	k := &keyring{store: store, cache: cache, unknown: newHashTable(), known: newHashTable(), guessers: newGuessers(), logger: logger, placed: make(chan struct{})}
	slots := defaultMaxLookups
	if ls, ok := store.(lookupSlotter); ok {
		slots = max(1, ls.lookupSlots())
	}
	k.setMaxLookups(slots)
	return k, nil
}

// setMaxLookups sets how many lookups may run at once, and how many more
// may wait for them.
func (k *keyring) setMaxLookups(n int) {
	k.slots = make(chan struct{}, n)
	k.maxWaiting = int64(n * lookupQueueFactor)
}

// lookupQueueFactor is how many misses may wait for a lookup slot, per
// slot.
const lookupQueueFactor = 8

// knownFor is how long a key found in the store stays exempt from
// failed_auth after its cache entry has gone.
const knownFor = 24 * time.Hour

// lookupSlotter is a Store whose connection pool bounds how many key
// lookups may be in flight at once; lookupSlots says how many, leaving
// connections for writes and the change feed.
type lookupSlotter interface{ lookupSlots() int }

// defaultMaxLookups bounds the lookups in flight of a store that does not
// say (see lookupSlotter).
const defaultMaxLookups = 16

// errLookupsBusy is the lookup error of a miss that found every lookup slot
// taken and could not wait for one: the store is slow, failing or
// flooded, and the request gets 503.
var errLookupsBusy = errors.New("too many key lookups in flight")

// feedWait bounds how long a new keyring waits for the store's change feed
// to find its place before the config that needs it goes live.
const feedWait = 5 * time.Second

// staleAfter is how old a cached entry may be, while the change feed is
// lost, before it is looked up again: the bound on how late a change made
// elsewhere takes effect here without pushed changes.
const staleAfter = time.Second

// lookupPolicy is how a handler wants keys looked up: how long answers are
// cached, and how long one store lookup may take.
type lookupPolicy struct {
	ttl     time.Duration // a key found in the store
	negTTL  time.Duration // a key the store does not know
	timeout time.Duration // one store lookup; then the lookup fails
}

// usageFlushInterval is how often request counts go to the store.
const usageFlushInterval = 10 * time.Second

// run starts following the store's changes and flushing usage, until
// Destruct.
func (k *keyring) run() {
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	if r, ok := k.store.(interface{ retain() func() }); ok {
		k.release = r.retain()
	}
	k.goSafe("store watcher; revocations from other processes now wait for the cache TTL", func() {
		err := k.store.Watch(ctx, k.apply)
		if err != nil && !errors.Is(err, context.Canceled) {
			k.logger.Error("watching store changes stopped; revocations from other processes now wait for the cache TTL", zap.Error(err))
		}
	})
	k.every(ctx, "usage flusher; key usage is no longer written", usageFlushInterval, func(now time.Time) {
		k.flushUsage(ctx)
		k.flushHours(ctx, now)
	})
	k.every(ctx, "quota flusher; quota counts are no longer written", quotaFlushInterval, func(now time.Time) {
		k.flushQuotas(ctx, now)
	})
}

// every runs fn every interval, in a goroutine of goSafe, until ctx ends.
func (k *keyring) every(ctx context.Context, what string, interval time.Duration, fn func(now time.Time)) {
	k.goSafe(what, func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				fn(now)
			}
		}
	})
}

// goSafe runs fn in a goroutine that Destruct waits for, and turns a panic
// into an error log instead of a crashed server.
func (k *keyring) goSafe(what string, fn func()) {
	k.done.Go(func() {
		defer func() {
			if p := recover(); p != nil {
				k.logger.Error("panic in "+what, zap.Any("panic", p))
			}
		}()
		fn()
	})
}

// Destruct stops the watcher, flushes the last usage counts and frees the
// cache; the keyring pool calls it when the last config using this store is
// unloaded (a reload keeps it).
func (k *keyring) Destruct() error {
	if k.cancel != nil {
		k.cancel()
		k.done.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		k.flushQuotas(ctx, time.Now())
		k.flushUsage(ctx)
		k.flushHours(ctx, time.Now())
		cancel()
	}
	if k.release != nil {
		k.release()
	}
	// An admin request still holding this keyring (during a reload that
	// dropped its store) must not touch the closed cache.
	k.mu.Lock()
	k.closed = true
	k.cache.Close()
	k.mu.Unlock()
	return nil
}

// usage counts one key's requests between flushes. A flush that finds it
// idle marks it dead (count < 0) and drops it, so memory follows the keys
// in use; a request that finds it dead counts in a fresh one instead.
type usage struct {
	count atomic.Int64
	last  atomic.Int64 // unix nanoseconds of a recent request
}

const usageDead = math.MinInt64 / 2

// usageOf returns the live usage counter of a key.
func (k *keyring) usageOf(keyID string) *usage {
	for {
		v, ok := k.usage.Load(keyID)
		if !ok {
			v, _ = k.usage.LoadOrStore(keyID, new(usage))
		}
		u := v.(*usage)
		if u.count.Load() >= 0 {
			return u
		}
		k.usage.CompareAndDelete(keyID, u)
	}
}

// countRequest counts a request of e's key at now, without I/O. The time
// goes first, so a flush that sees the count also sees a time.
func (k *keyring) countRequest(e *entry, now time.Time) {
	u := e.usage
	for {
		u.last.Store(now.UnixNano())
		if u.count.Add(1) > 0 {
			return
		}
		u = k.usageOf(e.keyID) // dropped by a flush: count in the live one
	}
}

// flushUsage writes the counts gathered since the last flush to the store.
// Counts it cannot write are kept for the next flush.
func (k *keyring) flushUsage(ctx context.Context) {
	// One flush at a time: the ticker and admin reads both flush, and
	// two walks dropping counters at once could lose one still in use.
	k.flushMu.Lock()
	defer k.flushMu.Unlock()
	var batch []Usage
	k.usage.Range(func(id, v any) bool {
		u := v.(*usage)
		for {
			n := u.count.Load()
			switch {
			case n < 0: // already dropped
				k.usage.CompareAndDelete(id, u)
			case n == 0: // idle since the last flush: drop it
				if !u.count.CompareAndSwap(0, usageDead) {
					continue
				}
				k.usage.CompareAndDelete(id, u)
			default:
				if !u.count.CompareAndSwap(n, 0) {
					continue
				}
				batch = append(batch, Usage{KeyID: id.(string), Requests: n, LastUsed: time.Unix(0, u.last.Load()).UTC()})
			}
			return true
		}
	})
	if len(batch) == 0 {
		return
	}
	if err := k.store.RecordUsage(ctx, batch); err != nil {
		k.logger.Warn("writing key usage to the store failed; will retry", zap.Int("keys", len(batch)), zap.Error(err))
		for _, b := range batch {
			u := k.usageOf(b.KeyID)
			for u.count.Add(b.Requests) < 0 {
				u = k.usageOf(b.KeyID)
			}
			u.last.Store(b.LastUsed.UnixNano())
		}
	}
}

func cacheIndex(h *[sha256.Size]byte) uint64 { return binary.LittleEndian.Uint64(h[:8]) }

// notFound is the entry of every key hash the store does not know.
var notFound = &entry{}

// cached returns what the cache knows of h at now: the entry of a key the
// store found, notFound for a key it does not know, or nil when h must be
// looked up (see lookup). It never waits on the store. While the change
// feed is lost, a found entry older than staleAfter is looked up again in
// the background (see refresh) and served meanwhile, so a slow or hung store
// never delays a cached key; an unknown key that old is not trusted.
func (k *keyring) cached(h *[sha256.Size]byte, now time.Time, p lookupPolicy) *entry {
	// The entry's own expiry, not ristretto's TTL: ristretto would read
	// the clock on every Get (see requestTime for what that costs), and
	// the request has the time already.
	if e, ok := k.cache.Get(cacheIndex(h)); ok && hashEqual(&e.hash, h) && now.Before(e.expires) {
		metrics.cacheHits.Inc()
		due := !now.Before(e.refreshAt) || k.feedLost.Load() && now.Sub(e.loaded) >= staleAfter
		if due && e.counters.refreshing.CompareAndSwap(false, true) {
			k.refresh(*h, e, p)
		}
		return e
	}
	if loaded, ok := k.unknown.get(h, now); ok && !(k.feedLost.Load() && now.Sub(loaded) >= staleAfter) {
		metrics.cacheHits.Inc()
		return notFound
	}
	metrics.cacheMisses.Inc()
	return nil
}

// flightKey names one singleflight lookup: a hash in one generation.
func flightKey(h *[sha256.Size]byte, gen uint64) string {
	var b [sha256.Size + 8]byte
	copy(b[:], h[:])
	binary.LittleEndian.PutUint64(b[sha256.Size:], gen)
	return string(b[:])
}

// refresh looks h up again without waiting for the answer, which replaces
// old in the cache. If the store cannot answer, old is cached again as if
// just loaded (its TTL unchanged), so that while the store is down each
// cached key costs it at most one lookup per staleAfter.
//
// h is a copy, not a pointer: it outlives the request (as lookup's does),
// and a pointer would move the caller's key to the heap on every request.
//
// The caller has set old.counters.refreshing; it is cleared once the
// look-up-again has answered (a copy kept while the store is down shares
// it, and may be looked up again from then on).
func (k *keyring) refresh(h [sha256.Size]byte, old *entry, p lookupPolicy) {
	gen := k.gen.Load()
	done := k.group.DoChan(flightKey(&h, gen), func() (any, error) {
		// A request that read old just before an earlier refresh replaced
		// it must not ask the store again.
		if cur, ok := k.cache.Get(cacheIndex(&h)); ok && hashEqual(&cur.hash, &h) && cur != old {
			return cur, nil
		}
		e, err := k.load(context.Background(), h, gen, p)
		if err != nil {
			kept := *old
			kept.loaded = time.Now()
			// Asked again at most once per staleAfter while the store
			// cannot answer, until the TTL ends.
			kept.refreshAt = kept.loaded.Add(staleAfter)
			k.put(&kept, gen)
		}
		// Until the cache has applied the answer, requests still see the
		// stale entry and would start another lookup.
		k.waitApplied()
		return e, err
	})
	go func() {
		<-done
		old.counters.refreshing.Store(false)
	}()
}

// put caches e until e.expires unless an invalidation came after
// generation gen. The cache holds it without a TTL of its own (see
// cached): an expired entry stays until a lookup replaces it or the
// cache, when full, evicts it.
func (k *keyring) put(e *entry, gen uint64) {
	if !time.Now().Before(e.expires) {
		return
	}
	k.mu.RLock()
	if k.gen.Load() == gen && !k.closed {
		k.cache.Set(cacheIndex(&e.hash), e, 1)
	}
	k.mu.RUnlock()
}

// lookup asks the store for h through singleflight and caches the answer
// for p.ttl (p.negTTL when the store does not know the hash). An error means
// the store could not answer, in time or at all, or every lookup slot was
// taken (errLookupsBusy); nothing is cached then. h is a copy, as for
// refresh.
func (k *keyring) lookup(ctx context.Context, h [sha256.Size]byte, p lookupPolicy) (*entry, error) {
	gen := k.gen.Load()
	v, err, _ := k.group.Do(flightKey(&h, gen), func() (any, error) {
		e, err := k.load(ctx, h, gen, p)
		if err == nil && e.found {
			// Requests after this one must find the entry, not start
			// another lookup while ristretto's buffer still holds it.
			k.waitApplied()
		}
		return e, err
	})
	if err != nil {
		return nil, err
	}
	return v.(*entry), nil
}

// waitApplied returns once the cache has applied the sets before it.
func (k *keyring) waitApplied() {
	k.mu.RLock()
	if !k.closed {
		k.cache.Wait()
	}
	k.mu.RUnlock()
}

// lookupAnswer is what one store lookup returned.
type lookupAnswer struct {
	rec  KeyRecord
	acct Account
	err  error
}

// load looks h up in the store, in one of the keyring's lookup slots, and
// caches the answer unless an invalidation came after generation gen. It
// returns after p.timeout at the latest, whether or not the store has
// answered: the lookup itself is then canceled, and keeps its slot until the
// store lets go of it, so a store that ignores cancellation still holds no
// more than maxLookups connections.
func (k *keyring) load(ctx context.Context, h [sha256.Size]byte, gen uint64, p lookupPolicy) (*entry, error) {
	// The lookup serves every request waiting on it, so it must not end
	// when the first of them goes away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.timeout)
	defer cancel()
	if !k.takeSlot(ctx) {
		k.noteShed()
		return nil, errLookupsBusy
	}
	metrics.storeLookups.Inc()
	start := time.Now()
	answered := make(chan lookupAnswer, 1)
	go func() {
		defer func() { <-k.slots }()
		a := lookupAnswer{err: errors.New("key store lookup ended without an answer")}
		defer func() {
			if r := recover(); r != nil {
				a.err = fmt.Errorf("key store lookup panicked: %v", r)
			}
			answered <- a
		}()
		rec, acct, err := k.store.LookupKey(ctx, h)
		a = lookupAnswer{rec: rec, acct: acct, err: err}
	}()
	var a lookupAnswer
	select {
	case a = <-answered:
	case <-ctx.Done():
		a.err = fmt.Errorf("key store gave no answer within the lookup timeout (%v): %w", p.timeout, ctx.Err())
	}
	now := time.Now()
	metrics.lookupDuration.Observe(now.Sub(start).Seconds())
	var e *entry
	switch {
	case a.err == nil:
		e = newEntry(h, a.rec, a.acct, now)
		e.usage = k.usageOf(a.rec.ID)
		e.expires = now.Add(p.ttl)
		e.refreshAt = e.expires.Add(-p.ttl / 10)
		k.put(e, gen)
		k.known.put(&h, now, knownFor)
	case errors.Is(a.err, ErrNotFound):
		e = notFound
		k.putUnknown(&h, gen, now, p.negTTL)
	default:
		if k.failing.CompareAndSwap(false, true) {
			k.logger.Warn("key store lookups failing: uncached keys get 503 until it answers again", zap.Error(a.err))
		}
		return nil, a.err
	}
	if k.failing.CompareAndSwap(true, false) {
		k.logger.Info("key store lookups work again")
	}
	return e, nil
}

// takeSlot takes a lookup slot, waiting for one until ctx ends while the
// store answers and few others wait, and reports whether it got one.
func (k *keyring) takeSlot(ctx context.Context) bool {
	select {
	case k.slots <- struct{}{}:
		return true
	default:
	}
	if k.failing.Load() {
		return false // a failing store: queueing would only add its timeout
	}
	if k.waiting.Add(1) > k.maxWaiting {
		k.waiting.Add(-1)
		return false
	}
	defer k.waiting.Add(-1)
	select {
	case k.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// shedLogEvery is how often, at most, turned-away misses are logged.
const shedLogEvery = time.Minute

// noteShed counts a miss turned away for want of a lookup slot, and warns
// about them at most once every shedLogEvery.
func (k *keyring) noteShed() {
	n := k.shed.Add(1)
	if !k.shedLogged.due(shedLogEvery) {
		return
	}
	k.shed.Add(-n)
	k.logger.Warn("every key lookup slot is taken: uncached keys get 503 until the store answers faster (logged at most once a minute)",
		zap.Int("lookup_slots", cap(k.slots)), zap.Int64("turned_away", n))
}

// sometimes paces something done at most once per interval, across
// goroutines (a warning that would otherwise be logged per request).
type sometimes struct{ last atomic.Int64 } // unix ns of the last time

// due reports whether every has passed since the last time it said so,
// and if it has, counts now as the last time.
func (s *sometimes) due(every time.Duration) bool {
	now := time.Now().UnixNano()
	last := s.last.Load()
	return now-last >= int64(every) && s.last.CompareAndSwap(last, now)
}

// putUnknown remembers h as unknown from now for ttl, and drops any found
// entry of h (a record deleted while the change feed was lost), unless an
// invalidation came after generation gen.
func (k *keyring) putUnknown(h *[sha256.Size]byte, gen uint64, now time.Time, ttl time.Duration) {
	k.mu.RLock()
	if k.gen.Load() == gen && !k.closed {
		k.cache.Del(cacheIndex(h))
		if ttl > 0 {
			k.unknown.put(h, now, ttl)
		}
	}
	k.mu.RUnlock()
}

// apply drops from the cache whatever a store change touched.
func (k *keyring) apply(c Change) {
	if c.Lost {
		k.feedLost.Store(true)
		k.placedOnce.Do(func() { close(k.placed) })
		return
	}
	if c.All {
		k.invalidateAll()
		k.feedLost.Store(false)
		k.placedOnce.Do(func() { close(k.placed) })
		return
	}
	if c.Account != "" {
		k.invalidateAccount(c.Account)
	}
	if c.KeyHash != ([sha256.Size]byte{}) {
		k.invalidate(c.KeyHash)
	}
}

// invalidate drops a key hash from the cache. When it returns, no request
// can be served the old entry, and no lookup that started before can
// re-cache it.
func (k *keyring) invalidate(h [sha256.Size]byte) {
	k.invalidating(func() {
		k.cache.Del(cacheIndex(&h))
		k.unknown.forget(&h) // a key with this hash may just have been created
	})
}

// invalidateAccount drops every cached key of an account, e.g. after a
// plan change.
func (k *keyring) invalidateAccount(id string) {
	k.invalidateWhere(func(e *entry) bool { return e.accountID == id })
}

// invalidateAll drops everything cached, when the store's change feed
// may have missed changes (it just started, or lost its place).
func (k *keyring) invalidateAll() {
	k.invalidateWhere(func(*entry) bool { return true })
	k.invalidating(k.unknown.clear)
}

// invalidateWhere drops the cached entries match selects.
func (k *keyring) invalidateWhere(match func(*entry) bool) {
	k.invalidating(func() {
		// Let ristretto apply the sets still in its buffer, so the walk
		// sees them; none can be added for the old generation any more.
		k.cache.Wait()
		var drop []uint64
		k.cache.IterValues(func(e *entry) bool {
			if match(e) {
				drop = append(drop, cacheIndex(&e.hash))
			}
			return false
		})
		for _, i := range drop {
			k.cache.Del(i)
		}
	})
}

// invalidating runs del, which deletes from the cache, under the
// invalidation protocol (see keyring): gen is bumped first under mu, so no
// lookup that began before can re-cache what del drops, and the cache has
// applied the deletes when it returns.
func (k *keyring) invalidating(del func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	k.gen.Add(1)
	del()
	k.cache.Wait()
}

// keyrings holds one keyring per store across config reloads, by
// keyringKey.
var keyrings = caddy.NewUsagePool()

// settingsKeyed is a Store whose connection settings may change while its
// identity stays the same (a PostgreSQL password rotated by a reload).
// settingsKey names those settings without revealing them.
type settingsKeyed interface{ settingsKey() string }

// keyringKey names the keyring of a store: its identity and, where they
// can change, its connection settings, so that a reload with new settings
// gets a keyring (and a change feed) on them instead of keeping the old
// ones.
func keyringKey(s Store) string {
	if sk, ok := s.(settingsKeyed); ok {
		return s.Identity() + " " + sk.settingsKey()
	}
	return s.Identity()
}

// loadKeyring returns the keyring of the store, creating it (and starting
// its watcher) on first use. Release it with keyrings.Delete(identity).
//
// A new keyring waits (up to feedWait) until the change feed has found its
// place: the feed's first All empties the cache, so a key cached before it
// would be looked up again at once, and a config that goes live before it
// would serve its first requests without hearing of changes.
func loadKeyring(store Store, logger *zap.Logger) (*keyring, error) {
	v, _, err := keyrings.LoadOrNew(keyringKey(store), func() (caddy.Destructor, error) {
		k, err := newKeyring(store, logger)
		if err != nil {
			return nil, err
		}
		k.run()
		select {
		case <-k.placed:
		case <-time.After(feedWait):
			logger.Warn("the store's change feed has not started yet; serving anyway", zap.Duration("waited", feedWait))
		}
		return k, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*keyring), nil
}
