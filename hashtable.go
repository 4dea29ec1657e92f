package postscale

import (
	"crypto/sha256"
	"sync"
	"time"
)

// hashTable remembers key hashes, each for a time. The keyring keeps two:
// the hashes the store answered "not found" for, each until its negative
// TTL ends, and the hashes of keys it found, for a day (see keyring).
// Unlike the ristretto cache, it has no admission policy and applies every
// write at once: a repeated unknown key costs one store lookup per
// negative_ttl, however ristretto judges it and however soon the next
// request comes.
//
// It holds at most hashTableCapacity hashes. Past that, a new hash
// pushes out expired ones, or else the one of a sample that expires first
// (see makeRoom): a flood of distinct made-up keys only ever costs fixed
// memory and fixed work per key.
//
// The zero value is not usable; see newHashTable. It is safe for
// concurrent use; a shard's lock is held for a map operation, never across
// I/O.
type hashTable struct {
	shards [hashTableShards]hashShard
}

type hashShard struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]hashTimes
}

// hashTimes is when a hash was remembered and when that ends, in unix
// nanoseconds.
type hashTimes struct{ loaded, expires int64 }

const (
	hashTableShards   = 64
	hashTableCapacity = 1 << 16 // about 7 MB at most
	hashShardCap      = hashTableCapacity / hashTableShards
)

func newHashTable() *hashTable {
	u := new(hashTable)
	for i := range u.shards {
		u.shards[i].m = make(map[[sha256.Size]byte]hashTimes)
	}
	return u
}

func (u *hashTable) shard(h *[sha256.Size]byte) *hashShard {
	return &u.shards[h[8]%hashTableShards]
}

// get reports whether h is remembered at now, and since when.
func (u *hashTable) get(h *[sha256.Size]byte, now time.Time) (loaded time.Time, ok bool) {
	s := u.shard(h)
	s.mu.Lock()
	v, ok := s.m[*h]
	s.mu.Unlock()
	if !ok || now.UnixNano() >= v.expires {
		return time.Time{}, false
	}
	return time.Unix(0, v.loaded), true
}

// has reports whether h is remembered at now.
func (u *hashTable) has(h *[sha256.Size]byte, now time.Time) bool {
	_, ok := u.get(h, now)
	return ok
}

// put remembers h from loaded for ttl.
func (u *hashTable) put(h *[sha256.Size]byte, loaded time.Time, ttl time.Duration) {
	v := hashTimes{loaded: loaded.UnixNano(), expires: loaded.Add(ttl).UnixNano()}
	s := u.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[*h]; !ok && len(s.m) >= hashShardCap {
		s.makeRoom(loaded.UnixNano())
	}
	s.m[*h] = v
}

// makeRoom drops, from a sample of a full shard (map order is random), the
// expired hashes, or else the one that expires first: a new hash costs a
// bounded amount of work however full the table is. Called with s.mu held.
func (s *hashShard) makeRoom(now int64) {
	var first [sha256.Size]byte
	firstExpires := int64(1<<63 - 1)
	seen := 0
	for h, v := range s.m {
		if v.expires <= now {
			delete(s.m, h)
		} else if v.expires < firstExpires {
			first, firstExpires = h, v.expires
		}
		if seen++; seen == evictionSample {
			break
		}
	}
	if len(s.m) >= hashShardCap {
		delete(s.m, first)
	}
}

// forget drops h (for the unknown keys: a key with that hash may have
// been created).
func (u *hashTable) forget(h *[sha256.Size]byte) {
	s := u.shard(h)
	s.mu.Lock()
	delete(s.m, *h)
	s.mu.Unlock()
}

// clear drops every hash.
func (u *hashTable) clear() {
	for i := range u.shards {
		s := &u.shards[i]
		s.mu.Lock()
		clear(s.m)
		s.mu.Unlock()
	}
}

// len is how many hashes are held, expired or not.
func (u *hashTable) len() int {
	n := 0
	for i := range u.shards {
		s := &u.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}
