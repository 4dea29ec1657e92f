package postscale

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// memStats is the heap after a full collection: in use, and what the
// runtime holds from the OS (mapped and not released), which is the
// heap's share of the process's RSS.
type memStats struct{ inuse, held uint64 }

func readMem(freeOS bool) memStats {
	if freeOS {
		debug.FreeOSMemory() // collects, then returns what it can to the OS
	} else {
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memStats{inuse: ms.HeapInuse, held: ms.HeapSys - ms.HeapReleased}
}

const mib = 1 << 20

// mibAbove is a-b in MiB, negative when a is below b.
func mibAbove(a, b uint64) float64 { return (float64(a) - float64(b)) / mib }

// BenchmarkBucketsMillionAccounts: each iteration is a wave of a million
// accounts, none seen before, each admitted once, after which they all go
// idle and one sweep runs (as the sweeper does every 10s). It reports,
// above the heap before the first wave: the heap at the largest peak
// (peak-MiB), the heap after the last sweep (swept-MiB), and what the
// runtime still holds from the OS after returning what it can
// (held-MiB); and the heap per bucket at the peak (B/bucket). Several
// waves (-benchtime 3x) show that the peak does not grow from wave to
// wave. It fails if a sweep leaves a bucket or the heap keeps more than a
// tenth of what the buckets took.
func BenchmarkBucketsMillionAccounts(b *testing.B) {
	needLarge(b, "fills a million buckets per iteration")
	l := mustLimit(b, "starter", DefaultPlans["starter"])
	bk := newBuckets()
	base := readMem(true)
	const n = 1_000_000
	var peak, swept memStats
	now := t0
	for wave := 0; b.Loop(); wave++ {
		for i := range n {
			bk.take(bucketKey{account: fmt.Sprintf("acct_%d_%07d", wave, i), mode: ModeLive}, l, now)
		}
		b.StopTimer()
		m := readMem(false)
		peak.inuse, peak.held = max(peak.inuse, m.inuse), max(peak.held, m.held)
		b.StartTimer()
		now = now.Add(sweepInterval)
		if left := bk.sweep(now); left != 0 {
			b.Fatalf("wave %d: %d buckets left after a sweep with every account idle", wave+1, left)
		}
	}
	b.StopTimer()
	swept = readMem(true)
	b.ReportMetric(mibAbove(peak.inuse, base.inuse), "peak-MiB")
	b.ReportMetric(mibAbove(swept.inuse, base.inuse), "swept-MiB")
	b.ReportMetric(mibAbove(swept.held, base.held), "held-MiB")
	b.ReportMetric((float64(peak.inuse)-float64(base.inuse))/n, "B/bucket")
	if swept.inuse > base.inuse+(peak.inuse-base.inuse)/10 {
		b.Errorf("after the sweep the heap keeps %.1f MiB of the %.1f MiB the buckets took; want under a tenth",
			mibAbove(swept.inuse, base.inuse), mibAbove(peak.inuse, base.inuse))
	}
}

// synthStore finds every key hash, answering with a record and account
// built afresh from the hash, as a real store's driver allocates them:
// the cache's entries then own all their memory, as in production.
type synthStore struct{ Store }

func (synthStore) Identity() string { return "synthetic" }

func (synthStore) LookupKey(_ context.Context, h [sha256.Size]byte) (KeyRecord, Account, error) {
	id := hex.EncodeToString(h[:10])
	k := KeyRecord{
		ID:       "key_" + id,
		Hash:     h,
		Account:  "acct_" + id[:12],
		Name:     strings.Clone("production"),
		Mode:     ModeLive,
		Redacted: "ps_live_…" + id[:4],
	}
	return k, Account{ID: k.Account, Plan: strings.Clone("growth")}, nil
}

func (synthStore) Watch(ctx context.Context, _ func(Change)) error {
	<-ctx.Done()
	return ctx.Err()
}

// BenchmarkKeyringMemory: what cached keys cost in heap, for issue 12's
// 100,000 hot keys out of a million stored. Each iteration builds a
// keyring and caches 100,000 keys in it through store lookups, as their
// first requests do. It reports the empty keyring's heap (keyring-MiB,
// mostly the cache's fixed admission counters), the heap of the 100,000
// entries (hot-MiB: the entries, the cache's own bookkeeping, the known
// keys table and the usage counters), and that per key (B/key).
func BenchmarkKeyringMemory(b *testing.B) {
	needLarge(b, "caches 100,000 keys per iteration")
	const hot = 100_000
	hashes := make([][sha256.Size]byte, hot)
	for i := range hashes {
		hashes[i] = sha256.Sum256(fmt.Appendf(nil, "hot key %d", i))
	}
	var empty, full []float64
	for b.Loop() {
		b.StopTimer()
		base := readMem(false)
		k, err := newKeyring(synthStore{}, zap.NewNop())
		if err != nil {
			b.Fatal(err)
		}
		made := readMem(false)
		b.StartTimer()
		for i := range hashes {
			if _, err := k.lookup(context.Background(), hashes[i], testPolicy); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		settle(k)
		now := time.Now()
		for i := range hashes {
			if e := k.cached(&hashes[i], now, testPolicy); e == nil || !e.found {
				b.Fatalf("key %d of %d is not cached", i, hot)
			}
		}
		filled := readMem(false)
		empty = append(empty, mibAbove(made.inuse, base.inuse))
		full = append(full, mibAbove(filled.inuse, made.inuse))
		k.Destruct()
		b.StartTimer()
	}
	b.StopTimer()
	keyring, entries := median(empty), median(full)
	b.ReportMetric(keyring, "keyring-MiB")
	b.ReportMetric(entries, "hot-MiB")
	b.ReportMetric(entries*mib/hot, "B/key")
}

// median returns the middle value of xs (the mean of the two middle ones
// for an even count), or 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	return (s[(len(s)-1)/2] + s[len(s)/2]) / 2
}
