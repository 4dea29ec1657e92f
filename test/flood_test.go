package test

import (
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"modernc.org/sqlite"
)

// A flood of made-up keys while the store does not answer (SPEC §7, issue
// "hardening" item 1): the gateway holds a bounded number of store
// connections and threads, answers every miss 503 within lookup_timeout
// (at once once its lookup slots are taken), keeps answering cached keys
// at their usual latency, and recovers by itself.

// storeGate holds every SQLite query that calls postscale_test_wait() while
// it is shut, ignoring the query's context, as a driver stuck in a system
// call would: the worst kind of hung store.
var storeGate struct {
	mu   sync.Mutex
	shut chan struct{} // nil: open
	// inside counts the queries waiting at the gate now, and peak the
	// most there were at once.
	inside, peak atomic.Int64
}

func init() {
	// Registered before any connection opens, so the gateway's have it.
	err := sqlite.RegisterScalarFunction("postscale_test_wait", 0, func(*sqlite.FunctionContext, []driver.Value) (driver.Value, error) {
		storeGate.mu.Lock()
		shut := storeGate.shut
		storeGate.mu.Unlock()
		if shut != nil {
			n := storeGate.inside.Add(1)
			for p := storeGate.peak.Load(); n > p && !storeGate.peak.CompareAndSwap(p, n); p = storeGate.peak.Load() {
			}
			select {
			case <-shut:
			case <-time.After(30 * time.Second):
			}
			storeGate.inside.Add(-1)
		}
		return int64(1), nil
	})
	if err != nil {
		panic(err)
	}
}

// procThreads is the number of threads of this process.
func procThreads(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

// openFiles counts this process's file descriptors open on path.
func openFiles(t *testing.T, path string) int {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && target == path {
			n++
		}
	}
	return n
}

func TestFloodOfMadeUpKeysWhileStoreHangs(t *testing.T) {
	if testing.Short() {
		t.Skip("a thousand concurrent requests")
	}
	const (
		flood         = 1000
		lookupTimeout = 300 * time.Millisecond
		maxConns      = 8 // the SQLite store's default pool
	)
	backend := newRecorder(t, "mail")
	store := storePath(t)
	// The flood comes from a thousand addresses, so failed_auth, which
	// would stop one address after 100 guesses, does not bound it.
	logPath := filepath.Join(t.TempDir(), "caddy.log")
	loadConfig(t, globalOptions(trustLoopback+logOptions(logPath))+gatewaySite(store, backend.addr(),
		"plan bulk 100000\n\t\tcache_ttl 10m\n\t\tlookup_timeout "+lookupTimeout.String()), "caddyfile")
	createAccount(t, "acme", "bulk")
	cached := createKey(t, "acme", "warm", "live")
	time.Sleep(600 * time.Millisecond) // the creation's change feed entry passes
	ensureCached(t, backend, cached.Key)
	later := createKey(t, "acme", "later", "live") // never used during the flood

	db, err := sql.Open("sqlite", "file:"+store+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	exec := func(qs ...string) {
		t.Helper()
		for _, q := range qs {
			if _, err := db.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	baseThreads, baseFiles := procThreads(t), openFiles(t, store)
	logStart := logSize(t, logPath)

	// Hang the store: every lookup waits at the gate, deaf to its context.
	storeGate.mu.Lock()
	storeGate.shut = make(chan struct{})
	storeGate.peak.Store(0)
	storeGate.mu.Unlock()
	// The wait is in the hash column, so every lookup runs it, found or
	// not.
	exec(`ALTER TABLE keys RENAME TO keys_real`,
		`CREATE VIEW keys AS SELECT id, CASE WHEN postscale_test_wait() = 1 THEN hash END AS hash, account, name, mode, scopes,
			redacted, legacy, created_at, expires_at, revoked_at, last_used_at, deprecated_at, use_count FROM keys_real`)
	db.Close() // the test's own handle counts no more
	opened := false
	openGate := func() {
		if opened {
			return
		}
		opened = true
		storeGate.mu.Lock()
		close(storeGate.shut)
		storeGate.shut = nil
		storeGate.mu.Unlock()
	}
	t.Cleanup(openGate)
	lookupsBefore := lookups(t)

	// Sample threads and open files while the flood runs, and time the
	// cached key every 20ms.
	stop := make(chan struct{})
	var peakThreads, peakFiles atomic.Int64
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			peakThreads.Store(max(peakThreads.Load(), int64(procThreads(t))))
			peakFiles.Store(max(peakFiles.Load(), int64(openFiles(t, store))))
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	var cachedTimes []time.Duration
	cachedFailures := 0
	sampler.Go(func() {
		for {
			begin := time.Now()
			r := get(t, "/v1/emails", bearer(cached.Key), from("203.0.113.1"))
			cachedTimes = append(cachedTimes, time.Since(begin))
			if r.status != http.StatusOK {
				cachedFailures++
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})

	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: flood}}
	defer client.CloseIdleConnections()
	var mu sync.Mutex
	statuses := map[string]int{}
	var slowest time.Duration
	var wg sync.WaitGroup
	floodStart := time.Now()
	for i := range flood {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, gatewayURL+"/v1/emails", nil)
			req.Header.Set("Authorization", "Bearer "+madeUp(t))
			req.Header.Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))
			begin := time.Now()
			resp, err := client.Do(req)
			took := time.Since(begin)
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, took)
			if err != nil {
				statuses[err.Error()]++
				return
			}
			resp.Body.Close()
			statuses[strconv.Itoa(resp.StatusCode)]++
		})
	}
	wg.Wait()
	floodTook := time.Since(floodStart)
	close(stop)
	sampler.Wait()

	if statuses["503"] != flood {
		t.Errorf("%d made-up keys while the store hangs: answers %v, want %d × 503", flood, statuses, flood)
	}
	if slowest > lookupTimeout+2*time.Second {
		t.Errorf("slowest answer to a made-up key: %v; want about lookup_timeout (%v) at most", slowest, lookupTimeout)
	}
	if got := storeGate.peak.Load(); got > maxConns-2 {
		t.Errorf("store lookups running at once during the flood: %d, want at most %d (the lookup slots)", got, maxConns-2)
	}
	if n := peakFiles.Load(); n > maxConns {
		t.Errorf("peak descriptors open on the store file: %d, want at most max_conns (%d)", n, maxConns)
	}
	// Goroutines blocked in the gateway take no thread; a thread per
	// request would show here as about a thousand.
	if n := peakThreads.Load(); n > int64(baseThreads)+64 {
		t.Errorf("peak threads: %d, before the flood %d; want no thread per request", n, baseThreads)
	}
	if cachedFailures > 0 {
		t.Errorf("the cached key failed %d of %d times during the flood", cachedFailures, len(cachedTimes))
	}
	sort.Slice(cachedTimes, func(i, j int) bool { return cachedTimes[i] < cachedTimes[j] })
	p50, worst := cachedTimes[len(cachedTimes)/2], cachedTimes[len(cachedTimes)-1]
	t.Logf("flood of %d made-up keys from %d addresses against a hung store: all answered in %v (slowest %v); store lookups started %v, at most %d at once; store file descriptors %d before, %d at peak; threads %d before, %d at peak; cached key p50 %v, max %v over %d requests",
		flood, flood, floodTook.Round(time.Millisecond), slowest.Round(time.Millisecond), lookups(t)-lookupsBefore, storeGate.peak.Load(),
		baseFiles, peakFiles.Load(), baseThreads, peakThreads.Load(), p50.Round(10*time.Microsecond), worst.Round(10*time.Microsecond), len(cachedTimes))

	// A sustained flood, for the figures: 32 clients sending made-up keys
	// as fast as they are answered for two seconds, while the cached key
	// is timed; then the same without the flood.
	timeCached := func(d time.Duration, busy func() bool) []time.Duration {
		var times []time.Duration
		for end := time.Now().Add(d); time.Now().Before(end) && busy(); {
			begin := time.Now()
			if r := get(t, "/v1/emails", bearer(cached.Key), from("203.0.113.1")); r.status != http.StatusOK {
				t.Errorf("the cached key answered %d during a sustained flood", r.status)
			}
			times = append(times, time.Since(begin))
			time.Sleep(10 * time.Millisecond)
		}
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		return times
	}
	var sent, shed atomic.Int64
	var floodEnd atomic.Bool
	lookupsBefore = lookups(t)
	for w := range 32 {
		wg.Go(func() {
			for i := 0; !floodEnd.Load(); i++ {
				req, _ := http.NewRequest(http.MethodGet, gatewayURL+"/v1/emails", nil)
				req.Header.Set("Authorization", "Bearer "+madeUp(t))
				req.Header.Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", 100+w, i>>8&255, i&255))
				resp, err := client.Do(req)
				if err != nil {
					continue
				}
				resp.Body.Close()
				sent.Add(1)
				if resp.StatusCode == http.StatusServiceUnavailable {
					shed.Add(1)
				}
			}
		})
	}
	floodTimes := timeCached(2*time.Second, func() bool { return true })
	floodEnd.Store(true)
	wg.Wait()
	floodLookups := lookups(t) - lookupsBefore
	quietTimes := timeCached(time.Second, func() bool { return true })
	pct := func(ts []time.Duration, p float64) time.Duration {
		return ts[min(len(ts)-1, int(float64(len(ts))*p))].Round(10 * time.Microsecond)
	}
	t.Logf("sustained flood: %d made-up keys in 2s from 32 clients, %d answered 503, %v store lookups started; cached key p50 %v, p99 %v during the flood; p50 %v, p99 %v quiet",
		sent.Load(), shed.Load(), floodLookups, pct(floodTimes, 0.5), pct(floodTimes, 0.99), pct(quietTimes, 0.5), pct(quietTimes, 0.99))

	// Thousands of misses turned away, one warning; nothing per request.
	lines := readJSONLog(t, logPath, logStart)
	if n := countMsg(lines, "every key lookup slot is taken"); n != 1 {
		t.Errorf("warnings about turned-away lookups during the flood: %d, want 1", n)
	}
	checkNoLinePerRequest(t, lines)

	// The store answers again: lookups work without a restart, and the
	// connections go back into the pool.
	openGate()
	db, err = sql.Open("sqlite", "file:"+store+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	exec(`DROP VIEW keys`, `ALTER TABLE keys_real RENAME TO keys`)
	db.Close()
	took, ok := waitFor(10*time.Second, func() bool { return get(t, "/v1/emails", bearer(later.Key)).status == http.StatusOK })
	if !ok {
		t.Fatalf("after the store answered again, a valid uncached key still fails after %v", took)
	}
	expectRejected(t, backend, invalidKey, "/v1/emails", bearer(madeUp(t)))
	if n := openFiles(t, store); n > maxConns {
		t.Errorf("descriptors open on the store file after the flood: %d, want at most %d", n, maxConns)
	}
	t.Logf("recovered %v after the store answered; threads now %d, store file descriptors %d", took.Round(time.Millisecond), procThreads(t), openFiles(t, store))
}
