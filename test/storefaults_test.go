package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	postscale "github.com/postscale/caddy-postscale"
	"github.com/postscale/caddy-postscale/internal/testenv"
)

// Store faults (README, When PostgreSQL or Redis is down) for both stores, through the in-process Caddy:
// while the store is unreachable, hung, or answering with errors, cached
// keys keep working, uncached keys get 503 store_unavailable with
// Retry-After within lookup_timeout (never 401), nothing reaches the
// backend, the gateway recovers by itself when the store is back, and it
// logs each transition once, not once per request.

// What the gateway logs when its key lookups start failing and when they
// work again (cache.go).
const (
	lookupsFailingLog = "key store lookups failing"
	lookupsBackLog    = "key store lookups work again"
)

// faultLookupTimeout is the lookup_timeout of the fault tests.
const faultLookupTimeout = 300 * time.Millisecond

// logOptions is the global log option that sends Caddy's logs, down to
// DEBUG, as JSON to path.
func logOptions(path string) string {
	return fmt.Sprintf(`	log {
		output file %s
		format json
		level DEBUG
	}`, path)
}

// logLine is one line of Caddy's JSON log.
type logLine struct {
	Level  string `json:"level"`
	Logger string `json:"logger"`
	Msg    string `json:"msg"`
	raw    string
}

// readJSONLog returns the lines of the log file from byte offset on.
func readJSONLog(t *testing.T, path string, offset int64) []logLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the log: %v", err)
	}
	if offset > int64(len(b)) {
		offset = int64(len(b))
	}
	var lines []logLine
	sc := bufio.NewScanner(bytes.NewReader(b[offset:]))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			continue // a line cut by a concurrent write
		}
		l.raw = sc.Text()
		lines = append(lines, l)
	}
	return lines
}

func logSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// countMsg counts the lines whose message starts with msg.
func countMsg(lines []logLine, msg string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l.Msg, msg) {
			n++
		}
	}
	return n
}

// storeFault is one way a store fails: apply breaks it, repair mends it.
// feed says the store's change feed is cut too (so the cached key is
// looked up again once its entry is a second old, and the feed's loss and
// recovery are logged once each).
type storeFault struct {
	name          string
	apply, repair func(t *testing.T)
	feed          bool
}

// faultGateway is a running gateway whose store the faults break.
type faultGateway struct {
	logPath string
	backend *recorder
	cached  string // a key used once before any fault, so it is cached
}

// runStoreFaults runs each fault in turn against the gateway.
func runStoreFaults(t *testing.T, g *faultGateway, faults []storeFault) {
	for i, f := range faults {
		ok := t.Run(f.name, func(t *testing.T) {
			uncached := createKey(t, "acme", "cold "+f.name, "live").Key // never used: not cached
			// The store's change feed reports that creation (and drops its
			// hash from the cache) up to a poll interval later; a cached
			// key used in that time may be dropped with it, so wait it out.
			time.Sleep(600 * time.Millisecond)
			ensureCached(t, g.backend, g.cached)
			start := logSize(t, g.logPath)
			f.apply(t)
			faultStart := time.Now()
			repaired := false
			defer func() {
				if !repaired {
					f.repair(t)
				}
			}()

			var slowest time.Duration
			timed503 := func(key string) {
				t.Helper()
				before := g.backend.count()
				begin := time.Now()
				r := get(t, "/v1/emails", bearer(key))
				took := time.Since(begin)
				slowest = max(slowest, took)
				assertRejected(t, r, storeUnavailable)
				if n := g.backend.count() - before; n != 0 {
					t.Errorf("the backend received %d request(s) while the store was down", n)
				}
				if took > faultLookupTimeout+time.Second {
					t.Errorf("the 503 took %v; want about lookup_timeout (%v)", took, faultLookupTimeout)
				}
			}
			for range 3 {
				timed503(uncached)
			}
			// A burst of made-up keys: each a 503, one log line in all.
			var wg sync.WaitGroup
			var mu sync.Mutex
			statuses := map[int]int{}
			for range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					k, _ := postscale.NewKey(postscale.ModeLive)
					r := get(t, "/v1/emails", bearer(k))
					mu.Lock()
					statuses[r.status]++
					mu.Unlock()
				}()
			}
			wg.Wait()
			if statuses[http.StatusServiceUnavailable] != 20 {
				t.Errorf("20 made-up keys while the store is down: got statuses %v, want 20 × 503", statuses)
			}
			// A bad checksum needs no store: still 401.
			assertRejected(t, get(t, "/v1/emails", bearer(uncached[:len(uncached)-1]+otherBase62(uncached[len(uncached)-1]))), invalidKey)
			// The cached key keeps working, for long enough that a lost
			// feed is noticed and the entry is looked up again (and kept).
			var cachedSlowest time.Duration
			for time.Since(faultStart) < 2500*time.Millisecond {
				begin := time.Now()
				expectAdmitted(t, g.backend, g.cached, "/v1/emails")
				cachedSlowest = max(cachedSlowest, time.Since(begin))
				time.Sleep(100 * time.Millisecond)
			}
			timed503(uncached)
			t.Logf("store %s: uncached key answered 503 within %v at worst (lookup_timeout %v); the cached key answered within %v", f.name, slowest.Round(time.Millisecond), faultLookupTimeout, cachedSlowest.Round(time.Millisecond))

			f.repair(t)
			repaired = true
			took, ok := waitFor(10*time.Second, func() bool { return get(t, "/v1/emails", bearer(uncached)).status == http.StatusOK })
			if !ok {
				t.Fatalf("store repaired: the uncached key still fails after %v (no recovery without a restart)", took)
			}
			t.Logf("store %s repaired: the uncached key works after %v", f.name, took.Round(time.Millisecond))
			unknown, _ := postscale.NewKey(postscale.ModeLive)
			expectRejected(t, g.backend, invalidKey, "/v1/emails", bearer(unknown))

			// One line each way, whatever the number of requests.
			if f.feed {
				waitFor(10*time.Second, func() bool {
					return countMsg(readJSONLog(t, g.logPath, start), "change feed works again") > 0
				})
			}
			lines := readJSONLog(t, g.logPath, start)
			for _, msg := range []string{lookupsFailingLog, lookupsBackLog} {
				if n := countMsg(lines, msg); n != 1 {
					t.Errorf("log lines %q during the fault: %d, want 1", msg, n)
				}
			}
			if f.feed {
				for _, msg := range []string{"change feed lost", "change feed works again"} {
					if n := countMsg(lines, msg); n != 1 {
						t.Errorf("log lines %q during the fault: %d, want 1", msg, n)
					}
				}
			}
			checkNoLinePerRequest(t, lines)
		})
		if !ok && i < len(faults)-1 {
			// A later fault needs a working store to start from.
			if _, ok := waitFor(10*time.Second, func() bool { return get(t, "/v1/emails", bearer(g.cached)).status == http.StatusOK }); !ok {
				t.Fatalf("the gateway did not recover after fault %s", f.name)
			}
		}
	}
}

// checkNoLinePerRequest fails if a message at INFO or above from the
// gateway appears more than once in the lines of one fault (the usage
// flush, which retries every 10 s whatever the traffic, aside), and logs
// how many lines there were by level.
func checkNoLinePerRequest(t *testing.T, lines []logLine) {
	t.Helper()
	byMsg := map[string]int{}
	byLevel := map[string]int{}
	for _, l := range lines {
		if !strings.Contains(l.Logger, "postscale") {
			continue
		}
		byLevel[l.Level]++
		if l.Level == "debug" || strings.HasPrefix(l.Msg, "writing key usage to the store failed") {
			continue
		}
		byMsg[l.Msg]++
	}
	var msgs []string
	for m, n := range byMsg {
		msgs = append(msgs, fmt.Sprintf("%d × %q", n, m))
		if n > 1 {
			t.Errorf("log line %q appears %d times during one fault; want once per transition", m, n)
		}
	}
	sort.Strings(msgs)
	t.Logf("gateway log lines during the fault, by level: %v; above debug: %s", byLevel, strings.Join(msgs, ", "))
}

// metricValue reads a counter without labels from the admin endpoint's
// /metrics.
func metricValue(t *testing.T, name string) float64 {
	t.Helper()
	resp, b := adminDo(t, http.MethodGet, "/metrics", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return 0
}

// ensureCached sends requests with key until one is answered from the
// cache (the misses counter stays put), so a fault that follows meets a
// cached key: the first answers of a new gateway may be dropped from the
// cache by the change feed's start.
func ensureCached(t *testing.T, backend *recorder, key string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		misses := metricValue(t, "caddy_postscale_cache_misses_total")
		expectAdmitted(t, backend, key, "/v1/emails")
		if metricValue(t, "caddy_postscale_cache_misses_total") == misses {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the key is still not answered from the cache after 5s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---- SQLite ----

// TestStoreFaultsSQLite: the SQLite store answering with errors (its keys
// table gone) and hung (a lookup query that runs for about ten seconds,
// as one waiting on a lock would). An embedded file has no network to
// cut, so "unreachable" is PostgreSQL's case.
func TestStoreFaultsSQLite(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "caddy.log")
	backend := newRecorder(t, "mail")
	store := storePath(t)
	loadConfig(t, globalOptions(logOptions(logPath))+gatewaySite(store, backend.addr(),
		"plan bulk 100000\n\t\tcache_ttl 10m\n\t\tlookup_timeout "+faultLookupTimeout.String()), "caddyfile")
	createAccount(t, "acme", "bulk")
	cached := createKey(t, "acme", "warm", "live")
	expectAdmitted(t, backend, cached.Key, "/v1/emails")

	db, err := sql.Open("sqlite", "file:"+store+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	exec := func(t *testing.T, qs ...string) {
		t.Helper()
		for _, q := range qs {
			if _, err := db.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	runStoreFaults(t, &faultGateway{logPath: logPath, backend: backend, cached: cached.Key}, []storeFault{
		{
			name:   "returning errors",
			apply:  func(t *testing.T) { exec(t, `ALTER TABLE keys RENAME TO keys_unavailable`) },
			repair: func(t *testing.T) { exec(t, `ALTER TABLE keys_unavailable RENAME TO keys`) },
		},
		{
			// The keys table is replaced by a view whose every row waits
			// for a count to twenty million (about ten seconds here): a
			// lookup that does not return in time. lookup_timeout must
			// end the query itself, not only stop waiting for it.
			name: "hung",
			apply: func(t *testing.T) {
				exec(t, `ALTER TABLE keys RENAME TO keys_slow`,
					`CREATE VIEW keys AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 20000000)
					SELECT id, CASE WHEN (SELECT max(x) FROM c) > 0 THEN hash END AS hash, account, name, mode, scopes,
						redacted, legacy, created_at, expires_at, revoked_at, last_used_at, deprecated_at, use_count
					FROM keys_slow`)
			},
			repair: func(t *testing.T) { exec(t, `DROP VIEW keys`, `ALTER TABLE keys_slow RENAME TO keys`) },
		},
	})
}

// ---- PostgreSQL ----

// TestStoreFaultsPostgres: the PostgreSQL store hung (a proxy that
// swallows every byte), unreachable (the proxy refuses and resets), and
// answering with errors (the gateway's role loses SELECT on the keys
// table), with the gateway in-process.
func TestStoreFaultsPostgres(t *testing.T) {
	dsn := testenv.Postgres(t)
	proxy := testenv.NewProxy(t, testenv.PostgresAddr(t, dsn))
	role, grant := limitedRole(t, dsn)
	roleDSN := withUser(t, testenv.ThroughProxy(t, dsn, proxy.Addr()), role)
	t.Setenv("POSTSCALE_TEST_FAULT_DSN", roleDSN)

	logPath := filepath.Join(t.TempDir(), "caddy.log")
	backend := newRecorder(t, "mail")
	loadConfig(t, globalOptions(logOptions(logPath))+fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	postscale {
		store postgres {env.POSTSCALE_TEST_FAULT_DSN}
		plan bulk 100000
		cache_ttl 10m
		lookup_timeout %s
	}
	reverse_proxy %s
}
`, faultLookupTimeout, backend.addr()), "caddyfile")
	createAccount(t, "acme", "bulk")
	cached := createKey(t, "acme", "warm", "live")
	expectAdmitted(t, backend, cached.Key, "/v1/emails")

	runStoreFaults(t, &faultGateway{logPath: logPath, backend: backend, cached: cached.Key}, []storeFault{
		{name: "hung", apply: func(*testing.T) { proxy.Swallow() }, repair: func(*testing.T) { proxy.Pass() }, feed: true},
		{name: "unreachable", apply: func(*testing.T) { proxy.Refuse() }, repair: func(*testing.T) { proxy.Pass() }, feed: true},
		{
			name:   "returning errors",
			apply:  func(t *testing.T) { grant(t, `REVOKE SELECT ON postscale_keys FROM `+role) },
			repair: func(t *testing.T) { grant(t, `GRANT SELECT ON postscale_keys TO `+role) },
		},
	})
}

// limitedRole creates the store's tables, then a login role of the test's
// own with just the privileges the gateway needs on them, so that a test
// can take one away. It returns the role's name and a function that runs
// a statement as the database's owner. The role goes when the test ends.
func limitedRole(t *testing.T, dsn string) (string, func(t *testing.T, q string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := postscale.OpenPostgresStore(ctx, dsn)
	if err != nil {
		t.Fatalf("creating the store's tables: %v", err)
	}
	s.Close()
	owner, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	role := "postscale_gw_" + hex.EncodeToString(b[:])
	run := func(t *testing.T, q string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := owner.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	run(t, `CREATE ROLE `+role+` LOGIN`)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		defer owner.Close(context.Background())
		for _, q := range []string{`DROP OWNED BY ` + role, `DROP ROLE ` + role} {
			if _, err := owner.Exec(ctx, q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	for _, q := range []string{
		`GRANT USAGE, CREATE ON SCHEMA public TO ` + role,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ` + role,
		`GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO ` + role,
	} {
		run(t, q)
	}
	return role, run
}

// withUser returns a PostgreSQL URL with its user replaced.
func withUser(t *testing.T, rawURL, user string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(user)
	return u.String()
}
