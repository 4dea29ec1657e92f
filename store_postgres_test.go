package postscale

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/jackc/pgx/v5"
	"github.com/postscale/caddy-postscale/internal/testenv"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// openTestPostgres opens the store at dsn as the CLI does and closes it
// when the test ends.
func openTestPostgres(t testing.TB, dsn string) *PostgresStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := OpenPostgresStore(ctx, dsn)
	if err != nil {
		t.Fatalf("OpenPostgresStore: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// postgresSchemaVersion reads the schema version through the store's pool.
func postgresSchemaVersion(t *testing.T, s *PostgresStore) int {
	t.Helper()
	var v int
	if err := s.db.pool.QueryRow(t.Context(), `SELECT COALESCE(max(version), 0) FROM postscale_schema`).Scan(&v); err != nil {
		t.Fatalf("reading the schema version: %v", err)
	}
	return v
}

func TestPostgresStoreContract(t *testing.T) {
	testStoreContract(t, func(t *testing.T) Store {
		return openTestPostgres(t, testenv.Postgres(t))
	})
}

// Identity names the server and database, never the password.
func TestPostgresIdentity(t *testing.T) {
	for _, tc := range []struct{ name, dsn, want string }{
		{"URL", "postgres://gw:s3cret@db.internal:6432/keys?sslmode=require", "postgres://gw@db.internal:6432/keys"},
		{"KeywordValue", "host=10.0.0.5 port=5432 user=gw password=s3cret dbname=keys", "postgres://gw@10.0.0.5:5432/keys"},
		{"SearchPath", "postgres://gw:s3cret@db/keys?search_path=gateway", "postgres://gw@db:5432/keys?search_path=gateway"},
		{"IPv6", "postgres://gw:s3cret@[::1]:5432/keys", "postgres://gw@[::1]:5432/keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := postgresPoolConfig(tc.dsn, 0)
			if err != nil {
				t.Fatal(err)
			}
			got := postgresIdentity(cfg.ConnConfig)
			if got != tc.want {
				t.Errorf("identity of %q = %q, want %q", tc.dsn, got, tc.want)
			}
			if strings.Contains(got, "s3cret") {
				t.Errorf("identity %q holds the password", got)
			}
		})
	}
}

func TestPostgresEncrypted(t *testing.T) {
	for _, tc := range []struct {
		dsn  string
		want bool
	}{
		{"postgres://gw@db.internal/keys?sslmode=verify-full", true},
		{"postgres://gw@db.internal/keys?sslmode=require", true},
		{"postgres://gw@db.internal/keys?sslmode=prefer", false},
		{"postgres://gw@db.internal/keys?sslmode=disable", false},
		{"postgres://gw@db.internal/keys", false}, // prefer
		{"postgres://gw@127.0.0.1/keys?sslmode=disable", true},
		{"postgres://gw@localhost/keys?sslmode=disable", true},
		{"host=/var/run/postgresql user=gw dbname=keys sslmode=disable", true},
	} {
		cfg, err := postgresPoolConfig(tc.dsn, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := postgresEncrypted(cfg.ConnConfig); got != tc.want {
			t.Errorf("postgresEncrypted(%q) = %v, want %v", tc.dsn, got, tc.want)
		}
	}
}

func TestPostgresPoolConfig(t *testing.T) {
	for _, tc := range []struct {
		name     string
		dsn      string
		maxConns int
		want     int32
		wantErr  string
	}{
		{"Default", "postgres://gw@db/keys", 0, defaultPostgresMaxConns, ""},
		{"Given", "postgres://gw@db/keys", 3, 3, ""},
		{"OverridesDSN", "postgres://gw@db/keys?pool_max_conns=50", 4, 4, ""},
		{"Negative", "postgres://gw@db/keys", -1, 0, "max_conns"},
		{"BadDSN", "postgres://gw:s3cret@db:notaport/keys", 0, 0, "dsn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := postgresPoolConfig(tc.dsn, tc.maxConns)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr+":") {
					t.Fatalf("error = %v, want one starting %q", err, tc.wantErr+":")
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Errorf("error %q holds the password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.MaxConns != tc.want {
				t.Errorf("MaxConns = %d, want %d", cfg.MaxConns, tc.want)
			}
		})
	}
}

// Notification payloads are hints; anything malformed is ignored.
func TestPostgresParseHint(t *testing.T) {
	h := HashKey("ps_live_example")
	for _, tc := range []struct {
		name    string
		payload string
		want    Change
		ok      bool
	}{
		{"Key", keyHint(h), Change{KeyHash: h}, true},
		{"Account", accountHint("acme"), Change{Account: "acme"}, true},
		{"AccountWithColon", "a:team:42", Change{Account: "team:42"}, true},
		{"Empty", "", Change{}, false},
		{"EmptyAccount", "a:", Change{}, false},
		{"ShortHash", "k:abcd", Change{}, false},
		{"NotHex", "k:" + strings.Repeat("zz", sha256.Size), Change{}, false},
		{"ZeroHash", "k:" + strings.Repeat("00", sha256.Size), Change{}, false},
		{"UnknownKind", "x:acme", Change{}, false},
		{"Record", `{"id":"key_1"}`, Change{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseHint(tc.payload)
			if ok != tc.ok || got != tc.want {
				t.Errorf("parseHint(%q) = %+v, %v; want %+v, %v", tc.payload, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// Replicas starting at once on an empty database all come up, on one
// schema version.
func TestPostgresConcurrentFirstOpen(t *testing.T) {
	const n = 5
	dsn := testenv.Postgres(t)
	var wg sync.WaitGroup
	stores := make([]*PostgresStore, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stores[i], errs[i] = OpenPostgresStore(ctx, dsn)
		})
	}
	close(start)
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Errorf("open #%d: %v", i+1, errs[i])
			continue
		}
		t.Cleanup(func() { s.Close() })
		if got, want := postgresSchemaVersion(t, s), len(postgresMigrations); got != want {
			t.Errorf("open #%d: schema version %d, want %d", i+1, got, want)
		}
	}
	if t.Failed() {
		return
	}
	var rows int
	if err := stores[0].db.pool.QueryRow(t.Context(), `SELECT count(*) FROM postscale_schema`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != len(postgresMigrations) {
		t.Errorf("postscale_schema has %d rows, want one per migration (%d): a migration ran twice or not at all", rows, len(postgresMigrations))
	}
	// The schema works from every store.
	contractCreateAccount(t, stores[0], "acme")
	k := contractCreateKey(t, stores[n-1], "acme", contractT0)
	if _, _, err := stores[1].LookupKey(t.Context(), k.Hash); err != nil {
		t.Errorf("LookupKey through another store: %v", err)
	}
}

// Opening again does not migrate again, and keeps what was written.
func TestPostgresMigrationIdempotent(t *testing.T) {
	dsn := testenv.Postgres(t)
	var created []KeyRecord
	for i := range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		s, err := OpenPostgresStore(ctx, dsn)
		cancel()
		if err != nil {
			t.Fatalf("open #%d: %v", i+1, err)
		}
		if got, want := postgresSchemaVersion(t, s), len(postgresMigrations); got != want {
			t.Errorf("open #%d: schema version %d, want %d", i+1, got, want)
		}
		if i == 0 {
			contractCreateAccount(t, s, "acme")
		}
		keys, err := s.ListKeys(t.Context(), "acme")
		if err != nil {
			t.Errorf("open #%d: ListKeys: %v", i+1, err)
		} else if len(keys) != len(created) {
			t.Errorf("open #%d: ListKeys returned %d keys, want %d", i+1, len(keys), len(created))
		}
		created = append(created, contractCreateKey(t, s, "acme", contractT0.Add(time.Duration(i)*time.Second)))
		if err := s.Close(); err != nil {
			t.Fatalf("close #%d: %v", i+1, err)
		}
	}
}

// A database at schema version 1, with data, is migrated to the latest
// version on open, and its data is still there.
func TestPostgresMigratesOlderSchema(t *testing.T) {
	dsn := testenv.Postgres(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	k := contractNewKey(t, "acme", ModeLive, contractT0)
	k.Scopes = []string{"emails:send"}
	expires := contractT0.Add(48 * time.Hour)
	k.ExpiresAt = &expires
	setup := []struct {
		sql  string
		args []any
	}{
		{`CREATE TABLE postscale_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`, nil},
		{postgresMigrations[0], nil},
		{`INSERT INTO postscale_schema (version) VALUES (1)`, nil},
		{`INSERT INTO postscale_accounts (id, plan, rate, burst, created_at) VALUES ('acme', 'enterprise', 12.5, 30, $1)`, []any{contractT0}},
		{`INSERT INTO postscale_keys (id, hash, account, name, mode, scopes, redacted, legacy, created_at, expires_at, use_count)
			VALUES ($1, $2, 'acme', $3, 'live', $4, $5, true, $6, $7, 42)`,
			[]any{k.ID, k.Hash[:], k.Name, k.Scopes, k.Redacted, k.CreatedAt, k.ExpiresAt}},
	}
	for _, st := range setup {
		if _, err := conn.Exec(ctx, st.sql, st.args...); err != nil {
			conn.Close(ctx)
			t.Fatalf("setting up schema version 1: %v", err)
		}
	}
	conn.Close(ctx)

	s := openTestPostgres(t, dsn)
	if got, want := postgresSchemaVersion(t, s), len(postgresMigrations); got != want {
		t.Errorf("schema version after open: %d, want %d", got, want)
	}
	k.Legacy, k.Requests = true, 42
	got, acct, err := s.LookupKey(ctx, k.Hash)
	if err != nil {
		t.Fatalf("LookupKey of a key stored at version 1: %v", err)
	}
	contractCheckKey(t, "key stored at version 1", got, k)
	if got.Requests != 42 || got.DeprecatedAt != nil {
		t.Errorf("key stored at version 1: requests %d, deprecated %s; want 42 and nil", got.Requests, contractFmtTimePtr(got.DeprecatedAt))
	}
	contractCheckAccount(t, "account stored at version 1", acct,
		Account{ID: "acme", Plan: "enterprise", Rate: 12.5, Burst: 30, CreatedAt: contractT0})
	// What the later migrations added works on the old rows.
	next := contractNewKey(t, "acme", ModeLive, contractT0.Add(time.Hour))
	rolled, err := s.RollKey(ctx, k.ID, next, contractT0.Add(25*time.Hour))
	if err != nil {
		t.Fatalf("RollKey of a key stored at version 1: %v", err)
	}
	if rolled.DeprecatedAt == nil || !rolled.DeprecatedAt.Equal(next.CreatedAt) {
		t.Errorf("rolled key: deprecated %s, want %s", contractFmtTimePtr(rolled.DeprecatedAt), contractFmtTime(next.CreatedAt))
	}
}

// A database migrated by a newer build is not touched by this one.
func TestPostgresRefusesNewerSchema(t *testing.T) {
	dsn := testenv.Postgres(t)
	s, err := OpenPostgresStore(t.Context(), dsn)
	if err != nil {
		t.Fatalf("OpenPostgresStore: %v", err)
	}
	newer := len(postgresMigrations) + 1
	_, err = s.db.pool.Exec(t.Context(), `INSERT INTO postscale_schema (version) VALUES ($1)`, newer)
	s.Close()
	if err != nil {
		t.Fatalf("recording a newer schema version: %v", err)
	}

	s, err = OpenPostgresStore(t.Context(), dsn)
	if err == nil {
		s.Close()
		t.Fatalf("OpenPostgresStore(database at schema version %d, this build knows %d) succeeded, want an error", newer, len(postgresMigrations))
	}
	if !strings.Contains(err.Error(), "newer than this build knows") {
		t.Errorf("OpenPostgresStore error = %v, want it to say the schema is newer than this build knows", err)
	}
	t.Logf("OpenPostgresStore: %v", err)

	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var v int
	if err := conn.QueryRow(t.Context(), `SELECT max(version) FROM postscale_schema`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != newer {
		t.Errorf("schema version after the refused open = %d, want it left at %d", v, newer)
	}
}

// The store does not open a database it cannot reach, and says which one
// without its password.
func TestPostgresOpenUnreachable(t *testing.T) {
	dsn := testenv.Postgres(t)
	p := testenv.NewProxy(t, testenv.PostgresAddr(t, dsn))
	p.Refuse()
	proxied := strings.Replace(testenv.ThroughProxy(t, dsn, p.Addr()), "postgres@", "postgres:s3cret@", 1)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := OpenPostgresStore(ctx, proxied)
	if err == nil {
		s.Close()
		t.Fatal("OpenPostgresStore through a refusing proxy succeeded")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %q holds the password", err)
	}
	if !strings.Contains(err.Error(), "postgres://postgres@"+p.Addr()) {
		t.Errorf("error %q does not name the store", err)
	}
}

// feedLog records the store's log entries.
func feedLog(s *PostgresStore) *observer.ObservedLogs {
	core, logs := observer.New(zapcore.DebugLevel)
	s.logger = zap.New(core)
	return logs
}

// countLogs counts the entries at level whose message starts with prefix.
func countLogs(logs *observer.ObservedLogs, level zapcore.Level, prefix string) int {
	n := 0
	for _, e := range logs.All() {
		if e.Level == level && strings.HasPrefix(e.Message, prefix) {
			n++
		}
	}
	return n
}

// contractWatch helpers that wait for Lost and All.

// waitChange waits until a change matching match was reported at or after
// position from, and returns its position.
func (w *contractWatch) waitChange(t *testing.T, what string, from int, timeout time.Duration, match func(Change) bool) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		for i := from; i < len(w.changes); i++ {
			if match(w.changes[i]) {
				w.mu.Unlock()
				return i
			}
		}
		w.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("Watch did not report %s within %v", what, timeout)
		}
		select {
		case <-w.done:
			t.Fatalf("Watch returned %v while waiting for %s", w.err, what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (w *contractWatch) count(match func(Change) bool) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, c := range w.changes {
		if match(c) {
			n++
		}
	}
	return n
}

func isLost(c Change) bool { return c.Lost }
func isAll(c Change) bool  { return c.All }

// The change feed goes through a proxy that hangs or refuses: Watch
// reports Lost within a few seconds, retries, and once the proxy passes
// again reports All and then the changes made after; the loss and the
// recovery are logged once each, however many attempts failed.
func TestPostgresFeedLossAndRecovery(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(*testenv.Proxy)
	}{
		{"Swallow", (*testenv.Proxy).Swallow},
		{"Refuse", (*testenv.Proxy).Refuse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := testenv.Postgres(t)
			writer := openTestPostgres(t, dsn)
			p := testenv.NewProxy(t, testenv.PostgresAddr(t, dsn))
			// A password in the DSN (the server trusts, and never asks
			// for it) that must show up in no log.
			proxied := strings.Replace(testenv.ThroughProxy(t, dsn, p.Addr()), "postgres@", "postgres:s3cret@", 1)
			watched := openTestPostgres(t, proxied)
			watched.feedConnectTimeout = 500 * time.Millisecond // several attempts fail while the fault lasts
			logs := feedLog(watched)

			contractCreateAccount(t, writer, "acme")
			k := contractCreateKey(t, writer, "acme", contractT0)
			w := contractStartWatch(t, watched)
			w.sync(t, writer, "acme")

			tc.fault(p)
			faulted := time.Now()
			lostAt := w.waitChange(t, "Lost after the fault", 0, 5*time.Second, isLost)
			t.Logf("%s: Lost reported after %v", tc.name, time.Since(faulted).Round(time.Millisecond))

			// Let several reconnect attempts fail.
			deadline := time.Now().Add(10 * time.Second)
			for countLogs(logs, zapcore.DebugLevel, "change feed: reconnecting failed") < 2 {
				if time.Now().After(deadline) {
					t.Fatalf("fewer than 2 failed reconnect attempts logged in 10s: %v", logs.All())
				}
				time.Sleep(20 * time.Millisecond)
			}
			if got := w.count(isAll); got != 1 {
				t.Errorf("during the fault: All reported %d times, want once (at start)", got)
			}

			p.Pass()
			healed := time.Now()
			allAt := w.waitChange(t, "All after the proxy passes again", lostAt, 15*time.Second, isAll)
			t.Logf("%s: All reported %v after the proxy passes again", tc.name, time.Since(healed).Round(time.Millisecond))

			if _, err := writer.RevokeKey(t.Context(), k.ID, contractT0.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			w.waitFor(t, "RevokeKey after recovery", k.Hash, allAt)

			if got := w.count(isLost); got != 1 {
				t.Errorf("Lost reported %d times, want once", got)
			}
			if got := countLogs(logs, zapcore.WarnLevel, "change feed lost"); got != 1 {
				t.Errorf("loss logged %d times at Warn, want once: %v", got, logs.All())
			}
			if got := countLogs(logs, zapcore.InfoLevel, "change feed works again"); got != 1 {
				t.Errorf("recovery logged %d times at Info, want once: %v", got, logs.All())
			}
			for _, e := range logs.All() {
				if line := fmt.Sprint(e.Message, e.ContextMap()); strings.Contains(line, "s3cret") {
					t.Errorf("log entry holds the DSN's password: %s", line)
				}
			}
		})
	}
}

// An idle feed checks its connection every second without losing it: no
// Lost, no second All, no log.
func TestPostgresFeedIdleKeepsConnection(t *testing.T) {
	s := openTestPostgres(t, testenv.Postgres(t))
	logs := feedLog(s)
	contractCreateAccount(t, s, "acme")
	w := contractStartWatch(t, s)
	w.sync(t, s, "acme")
	pid := func() []int32 {
		rows, err := s.db.pool.Query(t.Context(), `SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = 'postscale-gateway change feed'`)
		if err != nil {
			t.Fatal(err)
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			t.Fatal(err)
		}
		return pids
	}
	before := pid()
	time.Sleep(3*feedIdle + feedIdle/2)
	after := pid()
	if len(before) != 1 || !slices.Equal(before, after) {
		t.Errorf("feed connections (backend pids) before %v and after 3.5s idle %v; want the same one", before, after)
	}
	if got := w.count(isLost); got != 0 {
		t.Errorf("idle feed reported Lost %d times", got)
	}
	if got := w.count(isAll); got != 1 {
		t.Errorf("idle feed reported All %d times, want once", got)
	}
	if n := len(logs.All()); n != 0 {
		t.Errorf("idle feed logged %d entries: %v", n, logs.All())
	}
	// And it still delivers.
	from := w.mark()
	k := contractCreateKey(t, s, "acme", contractT0)
	w.waitFor(t, "CreateKey after an idle spell", k.Hash, from)
}

// Two replicas on one database: a revocation through one reaches the
// other's Watch. The delay is reported, not asserted beyond a loose bound.
func TestPostgresPropagation(t *testing.T) {
	const runs = 20
	dsn := testenv.Postgres(t)
	a := openTestPostgres(t, dsn)
	b := openTestPostgres(t, dsn)
	contractCreateAccount(t, a, "acme")

	var (
		mu      sync.Mutex
		arrived = map[[sha256.Size]byte]chan time.Time{}
	)
	expect := func(h [sha256.Size]byte) chan time.Time {
		mu.Lock()
		defer mu.Unlock()
		c := make(chan time.Time, 1)
		arrived[h] = c
		return c
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	synced := make(chan struct{}, 1)
	go func() {
		done <- b.Watch(ctx, func(c Change) {
			now := time.Now()
			mu.Lock()
			ch := arrived[c.KeyHash]
			mu.Unlock()
			if ch != nil {
				select {
				case ch <- now:
				default:
				}
			}
			if c.All {
				select {
				case synced <- struct{}{}:
				default:
				}
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v, want context.Canceled", err)
		}
	})
	select {
	case <-synced:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not start listening within 10s")
	}

	var fromCall, fromReturn []time.Duration
	for i := range runs {
		k := contractCreateKey(t, a, "acme", contractT0.Add(time.Duration(i)*time.Second))
		got := expect(k.Hash)
		called := time.Now()
		if _, err := a.RevokeKey(t.Context(), k.ID, contractT0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		returned := time.Now()
		select {
		case at := <-got:
			fromCall = append(fromCall, at.Sub(called))
			fromReturn = append(fromReturn, at.Sub(returned))
		case <-time.After(time.Second):
			t.Fatalf("run %d: the revocation did not reach the other store's Watch within 1s", i+1)
		}
	}
	// The commit lies between the call and its return: the delay from
	// the call is an upper bound, from the return a lower one (negative
	// when the other replica heard of it before RevokeKey returned).
	slices.Sort(fromCall)
	slices.Sort(fromReturn)
	t.Logf("revocation to the other replica's Watch over %d runs: from RevokeKey's call median %v, max %v; from its return median %v, max %v",
		runs, fromCall[runs/2], fromCall[runs-1], fromReturn[runs/2], fromReturn[runs-1])
}

func TestPostgresCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    PostgresStore
		wantErr string
	}{
		{"DSN", `postgres postgres://gw@db:5432/keys`, PostgresStore{DSN: "postgres://gw@db:5432/keys"}, ""},
		{"Placeholder", `postgres {env.POSTSCALE_POSTGRES_DSN}`, PostgresStore{DSN: "{env.POSTSCALE_POSTGRES_DSN}"}, ""},
		{"KeywordValueQuoted", `postgres "host=db user=gw dbname=keys"`, PostgresStore{DSN: "host=db user=gw dbname=keys"}, ""},
		{"MaxConns", "postgres postgres://db/keys {\n\tmax_conns 25\n}", PostgresStore{DSN: "postgres://db/keys", MaxConns: 25}, ""},
		{"EmptyBlock", "postgres postgres://db/keys {\n}", PostgresStore{DSN: "postgres://db/keys"}, ""},
		{"NoDSN", `postgres`, PostgresStore{}, "want a DSN"},
		{"KeywordValueUnquoted", `postgres host=db user=gw`, PostgresStore{}, "the DSN is one argument"},
		{"MaxConnsMissing", "postgres postgres://db/keys {\n\tmax_conns\n}", PostgresStore{}, "wrong argument count"},
		{"MaxConnsZero", "postgres postgres://db/keys {\n\tmax_conns 0\n}", PostgresStore{}, "max_conns: want a whole number"},
		{"MaxConnsNotNumber", "postgres postgres://db/keys {\n\tmax_conns ten\n}", PostgresStore{}, "max_conns: want a whole number"},
		{"MaxConnsExtra", "postgres postgres://db/keys {\n\tmax_conns 5 6\n}", PostgresStore{}, "wrong argument count"},
		{"MaxConnsTwice", "postgres postgres://db/keys {\n\tmax_conns 5\n\tmax_conns 6\n}", PostgresStore{}, "max_conns: given more than once"},
		{"UnknownOption", "postgres postgres://db/keys {\n\tpoll_interval 1s\n}", PostgresStore{}, `unrecognized postgres store option "poll_interval"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got PostgresStore
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("UnmarshalCaddyfile(%q) error = %v, want one containing %q", tc.input, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("UnmarshalCaddyfile(%q): %v", tc.input, err)
			}
			if got.DSN != tc.want.DSN || got.MaxConns != tc.want.MaxConns {
				t.Errorf("UnmarshalCaddyfile(%q) = dsn %q max_conns %d, want %q and %d", tc.input, got.DSN, got.MaxConns, tc.want.DSN, tc.want.MaxConns)
			}
		})
	}
}

// The store block inside the postscale directive becomes the store module.
func TestPostgresCaddyfileInHandler(t *testing.T) {
	var h Handler
	d := caddyfile.NewTestDispenser("postscale {\n\tstore postgres {env.PG} {\n\t\tmax_conns 4\n\t}\n}")
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	got := string(h.StoreRaw)
	want := `{"backend":"postgres","dsn":"{env.PG}","max_conns":4}`
	if got != want {
		t.Errorf("store JSON = %s, want %s", got, want)
	}
}

// Provisioned stores share one pool per DSN, with placeholders replaced;
// the pool lives while a config or the keyring (retain) holds it.
func TestPostgresProvisionSharesPool(t *testing.T) {
	dsn := testenv.Postgres(t)
	t.Setenv("POSTSCALE_TEST_PG_DSN", dsn)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	a := &PostgresStore{DSN: "{env.POSTSCALE_TEST_PG_DSN}"}
	b := &PostgresStore{DSN: "{env.POSTSCALE_TEST_PG_DSN}"}
	for _, s := range []*PostgresStore{a, b} {
		if err := s.Provision(ctx); err != nil {
			t.Fatalf("Provision: %v", err)
		}
	}
	if a.db != b.db {
		t.Error("two stores with one DSN have two pools")
	}
	cfg, _ := pgx.ParseConfig(dsn)
	if got, want := a.Identity(), "postgres://postgres@"+testenv.PostgresAddr(t, dsn)+"/"+cfg.Database; got != want {
		t.Errorf("Identity() = %q, want %q", got, want)
	}
	if got, want := a.db.maxConns, int32(defaultPostgresMaxConns); got != want {
		t.Errorf("pool size %d, want the default %d", got, want)
	}
	release := a.retain()
	for _, s := range []*PostgresStore{a, b} {
		if err := s.Cleanup(); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
	}
	if _, err := a.GetAccount(t.Context(), "nobody"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetAccount while retained past Cleanup: %v, want ErrNotFound (the pool still open)", err)
	}
	release()
	if _, ok := postgresPools.References(dsn); ok {
		t.Error("the pool is still in the usage pool after its last holder let go")
	}
	if _, err := a.GetAccount(t.Context(), "nobody"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("GetAccount after the last holder let go: %v, want an error from the closed pool", err)
	}
}

func TestPostgresProvisionErrors(t *testing.T) {
	t.Setenv("POSTSCALE_TEST_UNSET", "")
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	for _, tc := range []struct {
		name    string
		store   PostgresStore
		wantErr string
	}{
		{"NoDSN", PostgresStore{}, "dsn: required"},
		{"EmptyPlaceholder", PostgresStore{DSN: "{env.POSTSCALE_TEST_UNSET}"}, "dsn: "},
		{"BadDSN", PostgresStore{DSN: "postgres://gw:s3cret@db:notaport/keys"}, "dsn: "},
		{"NegativeMaxConns", PostgresStore{DSN: "postgres://gw@db/keys", MaxConns: -2}, "max_conns: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.store.Provision(ctx)
			if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Fatalf("Provision error = %v, want one starting %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %q holds the password", err)
			}
		})
	}
}
