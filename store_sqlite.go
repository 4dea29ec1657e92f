package postscale

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLiteStore is the embedded key store: one SQLite file, nothing to
// install. It is safe for a CLI process and the server to use at the same
// time (WAL journal, busy timeout); changes made by other processes reach
// the server's cache through a change table that Watch polls.
type SQLiteStore struct {
	// Path of the database file. Default: postscale/keys.db in Caddy's
	// data directory. The directory is created if needed.
	Path string `json:"path,omitempty"`

	// PollInterval is how often Watch looks for changes made by other
	// processes, which bounds how long a revocation made elsewhere takes
	// to reach this server's cache. Default: 250ms.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// MaxConns is how many connections to the file the store opens at
	// most, shared by every config that uses the same file (the first to
	// open it sets the number). Key lookups of uncached keys may hold all
	// but two of them at once; a miss beyond that gets 503 at once. Idle
	// connections close after 30s. Default: 8.
	MaxConns int `json:"max_conns,omitempty"`

	db     *sqliteDB
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (SQLiteStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "postscale.stores.sqlite",
		New: func() caddy.Module { return new(SQLiteStore) },
	}
}

// sqliteDBs shares one open database per file across config reloads.
var sqliteDBs = caddy.NewUsagePool()

// Provision opens (or shares) the database and migrates its schema.
func (s *SQLiteStore) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	if s.Path == "" {
		s.Path = DefaultSQLitePath()
	}
	abs, err := filepath.Abs(s.Path)
	if err != nil {
		return fmt.Errorf("store path %q: %w", s.Path, err)
	}
	s.Path = abs
	if s.PollInterval <= 0 {
		s.PollInterval = caddy.Duration(250 * time.Millisecond)
	}
	if time.Duration(s.PollInterval) > time.Second {
		s.logger.Warn("poll_interval above 1s: revocations made by other processes take that long to arrive", zap.Duration("poll_interval", time.Duration(s.PollInterval)))
	}
	if s.MaxConns < 0 {
		return fmt.Errorf("max_conns: must be at least 1, got %d", s.MaxConns)
	}
	if s.MaxConns == 0 {
		s.MaxConns = defaultSQLiteMaxConns
	}
	warnFewConns(s.logger, s.MaxConns)
	v, loaded, err := sqliteDBs.LoadOrNew(abs, func() (caddy.Destructor, error) {
		return openSQLite(abs, s.MaxConns)
	})
	if err != nil {
		return err
	}
	s.db = v.(*sqliteDB)
	if !loaded {
		// Once per process and file: a reload that keeps the file reuses
		// the open database and says nothing.
		s.logger.Info("key store opened", zap.String("store", "sqlite"), zap.String("path", abs))
	}
	if loaded && s.db.maxConns != s.MaxConns {
		s.logger.Warn("max_conns differs from the pool already open for this file; it applies once no config uses the old pool",
			zap.String("path", abs), zap.Int("max_conns", s.MaxConns), zap.Int("in_use", s.db.maxConns))
	}
	return nil
}

// warnFewConns warns about a pool too small to keep two connections free
// of key lookups (see lookupSlotter): a hung lookup may then hold up
// management calls and the change feed.
func warnFewConns(logger *zap.Logger, maxConns int) {
	if maxConns < 3 {
		logger.Warn("max_conns below 3: lookups of uncached keys may hold every connection, and a hung store then holds up key management and the change feed too",
			zap.Int("max_conns", maxConns))
	}
}

// defaultSQLiteMaxConns is the pool size unless max_conns says.
const defaultSQLiteMaxConns = 8

// lookupSlots implements lookupSlotter: all connections but two, which
// stay free for writes and the change poll.
func (s *SQLiteStore) lookupSlots() int { return max(1, s.db.maxConns-2) }

// Cleanup releases this config's hold on the database.
func (s *SQLiteStore) Cleanup() error {
	if s.db == nil {
		return nil
	}
	_, err := sqliteDBs.Delete(s.Path)
	return err
}

// DefaultSQLitePath is where the embedded store lives unless configured:
// postscale/keys.db in Caddy's data directory.
func DefaultSQLitePath() string {
	return filepath.Join(caddy.AppDataDir(), "postscale", "keys.db")
}

// OpenSQLiteStore opens the store at path outside of a Caddy config, as the
// CLI does when no server runs. Close it with Close.
func OpenSQLiteStore(path string) (*SQLiteStore, error) {
	db, err := openSQLite(path, defaultSQLiteMaxConns)
	if err != nil {
		return nil, err
	}
	return &SQLiteStore{Path: path, db: db, PollInterval: caddy.Duration(250 * time.Millisecond), MaxConns: defaultSQLiteMaxConns, logger: zap.NewNop()}, nil
}

// ErrNoStore means there is no store where one was to be read.
var ErrNoStore = errors.New("no store")

// OpenSQLiteStoreReadOnly opens the store at path for reading only, as the
// CLI does for a command that only reads: it never creates the file, nor
// changes it. A missing file, or one that holds no store, is ErrNoStore;
// a store of an older schema must be migrated first (by the gateway, or
// any command that writes). Close it with Close.
func OpenSQLiteStoreReadOnly(path string) (*SQLiteStore, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s: the file does not exist", ErrNoStore, path)
	} else if err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)")
	if err != nil {
		return nil, fmt.Errorf("opening store %s: %w", path, err)
	}
	db.SetMaxOpenConns(2)
	ctx, cancel := context.WithTimeout(context.Background(), sqliteOpenTimeout)
	defer cancel()
	var version int
	if err := db.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	switch {
	case version == 0:
		db.Close()
		return nil, fmt.Errorf("%w at %s: the file holds no postscale tables", ErrNoStore, path)
	case version < len(sqliteMigrations):
		db.Close()
		return nil, fmt.Errorf("store %s: schema version %d is older than this build's (%d); start the gateway on it, or run a command that writes, to migrate it",
			path, version, len(sqliteMigrations))
	case version > len(sqliteMigrations):
		db.Close()
		return nil, fmt.Errorf("store %s: schema version %d is newer than this build knows (%d)", path, version, len(sqliteMigrations))
	}
	return &SQLiteStore{Path: path, db: &sqliteDB{DB: db, maxConns: 2}, PollInterval: caddy.Duration(250 * time.Millisecond), MaxConns: 2, logger: zap.NewNop()}, nil
}

// retain keeps the database open, even past this config's Cleanup, until
// the returned function is called: the keyring uses it to flush the last
// usage counts on shutdown.
func (s *SQLiteStore) retain() func() {
	if _, _, err := sqliteDBs.LoadOrNew(s.Path, func() (caddy.Destructor, error) { return s.db, nil }); err != nil {
		return func() {}
	}
	return func() { _, _ = sqliteDBs.Delete(s.Path) }
}

// Close closes a store opened with OpenSQLiteStore.
func (s *SQLiteStore) Close() error { return s.db.Destruct() }

// Identity implements Store.
func (s *SQLiteStore) Identity() string { return "sqlite:" + s.Path }

// sqliteDB is the shared connection pool of one database file.
type sqliteDB struct {
	*sql.DB
	maxConns int

	// presence is this process's entry in the registry of gateway
	// processes serving the file (see presence.go), once a serving config
	// has started on it. It lives as long as the pool, so across reloads.
	presenceMu sync.Mutex
	presence   *presence
}

func (d *sqliteDB) Destruct() error {
	d.presenceMu.Lock()
	if d.presence != nil {
		d.presence.release()
		d.presence = nil
	}
	d.presenceMu.Unlock()
	return d.Close()
}

// announce enters this process in the registry of gateway processes that
// serve the store file, once per pool (so not again on a reload, which
// only records a new admin address), and warns, naming them, of the other
// processes that serve it too. It is for serving processes only (see
// App.Start).
//
// It warns rather than refuses to start. Refusing would turn an overshoot
// of the rate limits into an outage in the cases an operator runs into
// most: a restart whose old process is still draining its connections
// (grace_period) when the new one starts, or a hand-over from an old
// binary to a new one on the same ports. Keys are checked the same by
// every process; what the operator must learn, at once and by name, is
// that limits are no longer per plan.
func (s *SQLiteStore) announce(admin string, logger *zap.Logger) {
	d := s.db
	d.presenceMu.Lock()
	defer d.presenceMu.Unlock()
	if d.presence != nil {
		if err := d.presence.setAdmin(admin); err != nil {
			logger.Debug("updating this process's entry beside the store", zap.String("store", s.Path), zap.Error(err))
		}
		return
	}
	p, others, err := registerPresence(s.Path, admin)
	if err != nil {
		if !errors.Is(err, errNoLocks) {
			logger.Warn("could not check for other gateway processes serving this store", zap.String("store", s.Path), zap.Error(err))
		}
		return
	}
	d.presence = p
	if len(others) == 0 {
		return
	}
	logger.Warn(fmt.Sprintf("another gateway process on this host serves the same store (%s). "+
		"With the local limiter each process keeps its own rate-limit buckets, and processes on the same ports share the traffic, "+
		"so together they admit up to %d times each account's plan. Stop the other process, give each its own store, "+
		"or share the limits through limiter redis", describeGateways(others), len(others)+1),
		zap.String("store", s.Path), zap.Int("processes", len(others)+1),
		zap.Int("other_pid", others[0].PID), zap.String("other_admin", others[0].Admin))
}

// openSQLite opens the database file at path with a pool of at most
// maxConns connections, creating and migrating it as needed.
func openSQLite(path string, maxConns int) (*sqliteDB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating store directory: %w", err)
	}
	// The file holds key hashes and account data: not for other users.
	// SQLite gives the -wal and -shm files the database file's mode, so
	// creating it 0600 up front covers them too.
	if f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600); err == nil {
		f.Close()
	}
	_ = os.Chmod(path, 0o600)
	// Immediate transactions take the write lock up front, so two
	// processes never deadlock upgrading a read lock; the busy timeout
	// makes a writer wait for the other instead of failing, and ends
	// sooner when the statement's context does (a lookup's timeout). The
	// pragmas run on every new connection, so none of them may need a
	// lock: WAL mode is set once below, and stays set in the file.
	dsn := "file:" + path + "?_txlock=immediate" +
		"&_pragma=busy_timeout(10000)" +
		"&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening store %s: %w", path, err)
	}
	// A bounded pool: a flood of lookups waits for a connection (or is
	// turned away by the keyring's lookup slots) instead of opening one
	// file descriptor and one thread per request.
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	db.SetConnMaxIdleTime(30 * time.Second)
	d := &sqliteDB{DB: db, maxConns: maxConns}
	ctx, cancel := context.WithTimeout(context.Background(), sqliteOpenTimeout)
	defer cancel()
	if _, err := db.ExecContext(ctx, `PRAGMA journal_mode=WAL`); err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: setting WAL mode: %w", path, err)
	}
	if err := d.migrate(); err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return d, nil
}

// sqliteOpenTimeout bounds waiting for another process's lock when the
// store is opened.
const sqliteOpenTimeout = 15 * time.Second

// sqliteMigrations are applied in order; PRAGMA user_version counts how
// many a database has. Append, never edit.
var sqliteMigrations = []string{
	`CREATE TABLE accounts (
		id         TEXT PRIMARY KEY,
		plan       TEXT NOT NULL,
		rate       REAL NOT NULL DEFAULT 0,
		burst      INTEGER NOT NULL DEFAULT 0,
		created_at INTEGER NOT NULL
	);
	CREATE TABLE keys (
		id           TEXT PRIMARY KEY,
		hash         BLOB NOT NULL UNIQUE,
		account      TEXT NOT NULL REFERENCES accounts(id),
		name         TEXT NOT NULL,
		mode         TEXT NOT NULL,
		scopes       TEXT NOT NULL DEFAULT '',
		redacted     TEXT NOT NULL,
		legacy       INTEGER NOT NULL DEFAULT 0,
		created_at   INTEGER NOT NULL,
		expires_at   INTEGER,
		revoked_at   INTEGER,
		last_used_at INTEGER,
		use_count    INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX keys_account ON keys(account, created_at);
	CREATE TABLE changes (
		seq      INTEGER PRIMARY KEY AUTOINCREMENT,
		key_hash BLOB,
		account  TEXT,
		at       INTEGER NOT NULL
	);`,
	`ALTER TABLE keys ADD COLUMN deprecated_at INTEGER;`,
	`ALTER TABLE accounts ADD COLUMN quota_count INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE accounts ADD COLUMN quota_period TEXT NOT NULL DEFAULT '';
	ALTER TABLE accounts ADD COLUMN quota_anchor INTEGER;
	CREATE TABLE quota_usage (
		account      TEXT NOT NULL,
		period       TEXT NOT NULL,
		period_start INTEGER NOT NULL,
		live         INTEGER NOT NULL DEFAULT 0,
		test         INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (account, period_start, period)
	);
	CREATE TABLE hourly_usage (
		account  TEXT NOT NULL,
		hour     INTEGER NOT NULL,
		admitted INTEGER NOT NULL DEFAULT 0,
		refused  INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (account, hour)
	);
	CREATE INDEX hourly_usage_hour ON hourly_usage (hour);`,
}

// migrate brings the schema up to date inside one write transaction, so two
// processes starting at once do not both migrate.
func (d *sqliteDB) migrate() error {
	tx, err := d.Begin()
	if err != nil {
		return fmt.Errorf("migrating schema: %w", err)
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}
	if version > len(sqliteMigrations) {
		return fmt.Errorf("schema version %d is newer than this build knows (%d)", version, len(sqliteMigrations))
	}
	for i := version; i < len(sqliteMigrations); i++ {
		if _, err := tx.Exec(sqliteMigrations[i]); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	if _, err := tx.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, len(sqliteMigrations))); err != nil {
		return fmt.Errorf("writing schema version: %w", err)
	}
	return tx.Commit()
}

// changeRetention is how long rows stay in the change table: far longer
// than any watcher's poll interval.
const changeRetention = time.Hour

const keyColumns = `k.id, k.hash, k.account, k.name, k.mode, k.scopes, k.redacted, k.legacy,
	k.created_at, k.expires_at, k.revoked_at, k.last_used_at, k.deprecated_at, k.use_count`

type rowScanner interface{ Scan(dest ...any) error }

func scanKey(row rowScanner, extra ...any) (KeyRecord, error) {
	var (
		k                        KeyRecord
		hash                     []byte
		mode, scopes             string
		created                  int64
		expires, revoked, usedAt sql.NullInt64
		deprecated               sql.NullInt64
	)
	dest := append([]any{&k.ID, &hash, &k.Account, &k.Name, &mode, &scopes, &k.Redacted, &k.Legacy,
		&created, &expires, &revoked, &usedAt, &deprecated, &k.Requests}, extra...)
	if err := row.Scan(dest...); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return k, ErrNotFound
		}
		return k, err
	}
	copy(k.Hash[:], hash)
	k.Mode, _ = ParseMode(mode)
	if scopes != "" {
		k.Scopes = strings.Split(scopes, " ")
	}
	k.CreatedAt = time.Unix(0, created).UTC()
	k.ExpiresAt, k.RevokedAt, k.LastUsedAt = nullTime(expires), nullTime(revoked), nullTime(usedAt)
	k.DeprecatedAt = nullTime(deprecated)
	return k, nil
}

func nullTime(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := time.Unix(0, n.Int64).UTC()
	return &t
}

func timeArg(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixNano()
}

// LookupKey implements Store.
func (s *SQLiteStore) LookupKey(ctx context.Context, h [sha256.Size]byte) (KeyRecord, Account, error) {
	var ac accountCols
	var usedStart, usedLive, usedTest sql.NullInt64
	var usedPeriod sql.NullString
	row := s.db.QueryRowContext(ctx, `SELECT `+keyColumns+`, `+accountColumnsOf("a")+`, q.period, q.period_start, q.live, q.test
		FROM keys k JOIN accounts a ON a.id = k.account
		LEFT JOIN quota_usage q ON q.rowid = (SELECT rowid FROM quota_usage WHERE account = a.id
			ORDER BY period_start DESC, period = a.quota_period DESC LIMIT 1)
		WHERE k.hash = ?`, h[:])
	k, err := scanKey(row, append(ac.dest(), &usedPeriod, &usedStart, &usedLive, &usedTest)...)
	if err != nil {
		return k, Account{}, err
	}
	a := ac.account()
	if usedStart.Valid {
		a.Used = &PeriodUsage{Account: a.ID, Period: Period(usedPeriod.String), Start: time.Unix(0, usedStart.Int64).UTC(), Live: usedLive.Int64, Test: usedTest.Int64}
	}
	return k, a, nil
}

// accountCols receives a row of accountColumns.
type accountCols struct {
	a           Account
	created     int64
	quotaCount  int64
	quotaPeriod string
	quotaAnchor sql.NullInt64
}

func (c *accountCols) dest() []any {
	return []any{&c.a.ID, &c.a.Plan, &c.a.Rate, &c.a.Burst, &c.created, &c.quotaCount, &c.quotaPeriod, &c.quotaAnchor}
}

func (c *accountCols) account() Account {
	a := c.a
	a.CreatedAt = time.Unix(0, c.created).UTC()
	if c.quotaCount > 0 {
		a.Quota = &Quota{Count: c.quotaCount, Period: Period(c.quotaPeriod)}
	}
	a.QuotaAnchor = nullTime(c.quotaAnchor)
	return a
}

// quotaArgs are the quota columns' values of a.
func quotaArgs(a Account) (count int64, period string, anchor any) {
	if a.Quota != nil {
		count, period = a.Quota.Count, string(a.Quota.Period)
	}
	return count, period, timeArg(a.QuotaAnchor)
}

// CreateAccount implements Store.
func (s *SQLiteStore) CreateAccount(ctx context.Context, a Account) error {
	qc, qp, qa := quotaArgs(a)
	_, err := s.db.ExecContext(ctx, `INSERT INTO accounts (id, plan, rate, burst, created_at, quota_count, quota_period, quota_anchor)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		a.ID, a.Plan, a.Rate, a.Burst, a.CreatedAt.UnixNano(), qc, qp, qa)
	return sqliteErr(err)
}

// GetAccount implements Store.
func (s *SQLiteStore) GetAccount(ctx context.Context, id string) (Account, error) {
	return scanAccount(s.db.QueryRowContext(ctx, `SELECT `+accountColumns+` FROM accounts WHERE id = ?`, id))
}

var accountColumns = accountColumnsOf("")

// ListAccounts implements Store. SQLite compares TEXT bytewise (the BINARY
// collation), which is Go's order.
func (s *SQLiteStore) ListAccounts(ctx context.Context, after string, limit int) ([]Account, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+accountColumns+` FROM accounts WHERE id > ? ORDER BY id LIMIT ?`, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return scanAll(rows, scanAccount)
}

// accountColumnsOf lists an account's columns, of table alias t.
func accountColumnsOf(t string) string {
	if t != "" {
		t += "."
	}
	return strings.NewReplacer("$", t).Replace(`$id, $plan, $rate, $burst, $created_at, $quota_count, $quota_period, $quota_anchor`)
}

func scanAccount(row rowScanner) (Account, error) {
	var c accountCols
	err := row.Scan(c.dest()...)
	if errors.Is(err, sql.ErrNoRows) {
		return Account{}, ErrNotFound
	}
	if err != nil {
		return Account{}, err
	}
	return c.account(), nil
}

// UpdateAccount implements Store. The write transaction is immediate, so
// the read inside it already holds the write lock.
func (s *SQLiteStore) UpdateAccount(ctx context.Context, id string, update func(Account) (Account, error)) (Account, error) {
	var updated Account
	err := s.write(ctx, []Change{{Account: id}}, func(tx *sql.Tx) error {
		a, err := scanAccount(tx.QueryRowContext(ctx, `SELECT `+accountColumns+` FROM accounts WHERE id = ?`, id))
		if err != nil {
			return err
		}
		if updated, err = update(a); err != nil {
			return err
		}
		updated.ID, updated.CreatedAt = a.ID, a.CreatedAt
		qc, qp, qa := quotaArgs(updated)
		_, err = tx.ExecContext(ctx, `UPDATE accounts SET plan = ?, rate = ?, burst = ?,
			quota_count = ?, quota_period = ?, quota_anchor = ? WHERE id = ?`,
			updated.Plan, updated.Rate, updated.Burst, qc, qp, qa, id)
		return err
	})
	if err != nil {
		return Account{}, err
	}
	return updated, nil
}

// CreateKey implements Store.
func (s *SQLiteStore) CreateKey(ctx context.Context, k KeyRecord) error {
	return s.CreateKeys(ctx, []KeyRecord{k})
}

// CreateKeys implements Store. The new keys' hashes go into the change
// table too, so that watchers drop any cached "unknown key" answer for
// them.
func (s *SQLiteStore) CreateKeys(ctx context.Context, keys []KeyRecord) error {
	changes := make([]Change, len(keys))
	for i, k := range keys {
		changes[i] = Change{KeyHash: k.Hash}
	}
	return s.write(ctx, changes, func(tx *sql.Tx) error {
		for _, k := range keys {
			if err := insertKey(ctx, tx, k); err != nil {
				return err
			}
		}
		return nil
	})
}

func insertKey(ctx context.Context, tx *sql.Tx, k KeyRecord) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO keys (id, hash, account, name, mode, scopes, redacted, legacy, created_at, expires_at, deprecated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.Hash[:], k.Account, k.Name, k.Mode.String(), strings.Join(k.Scopes, " "), k.Redacted, k.Legacy,
		k.CreatedAt.UnixNano(), timeArg(k.ExpiresAt), timeArg(k.DeprecatedAt))
	return sqliteErr(err)
}

// RollKey implements Store.
func (s *SQLiteStore) RollKey(ctx context.Context, id string, next KeyRecord, expires time.Time) (KeyRecord, error) {
	old, err := s.GetKey(ctx, id)
	if err != nil {
		return old, err
	}
	err = s.write(ctx, []Change{{KeyHash: old.Hash}, {KeyHash: next.Hash}}, func(tx *sql.Tx) error {
		// Check and mark in one statement, so a revocation committed in
		// between cannot be rolled over.
		res, err := tx.ExecContext(ctx, `UPDATE keys SET deprecated_at = COALESCE(deprecated_at, ?),
			expires_at = CASE WHEN expires_at IS NOT NULL AND expires_at < ? THEN expires_at ELSE ? END
			WHERE id = ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`,
			next.CreatedAt.UnixNano(), expires.UnixNano(), expires.UnixNano(), id, next.CreatedAt.UnixNano())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("key %q is revoked or expired: %w", id, ErrConflict)
		}
		return insertKey(ctx, tx, next)
	})
	if err != nil {
		return old, err
	}
	return s.GetKey(ctx, id)
}

// RecordUsage implements Store.
func (s *SQLiteStore) RecordUsage(ctx context.Context, usage []Usage) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// Prepared once: a flush may hold every key used in the last
	// interval, and compiling the statement again for each key took about
	// as long as running it.
	update, err := tx.PrepareContext(ctx, `UPDATE keys SET use_count = use_count + ?,
			last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?`)
	if err != nil {
		return err
	}
	defer update.Close()
	for _, u := range usage {
		if _, err := update.ExecContext(ctx, u.Requests, u.LastUsed.UnixNano(), u.KeyID); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// RecordAccountUsage implements Store.
func (s *SQLiteStore) RecordAccountUsage(ctx context.Context, periods []PeriodUsage, hours []HourUsage, dropBefore time.Time) ([]PeriodUsage, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	// Each statement prepared once per flush, as in RecordUsage.
	totals := make([]PeriodUsage, len(periods))
	if len(periods) > 0 {
		add, err := tx.PrepareContext(ctx, `INSERT INTO quota_usage (account, period, period_start, live, test) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (account, period_start, period) DO UPDATE SET live = live + excluded.live, test = test + excluded.test
			RETURNING live, test`)
		if err != nil {
			return nil, err
		}
		defer add.Close()
		for i, p := range periods {
			t := PeriodUsage{Account: p.Account, Period: p.Period, Start: p.Start}
			if err := add.QueryRowContext(ctx, p.Account, string(p.Period), p.Start.UnixNano(), p.Live, p.Test).Scan(&t.Live, &t.Test); err != nil {
				return nil, err
			}
			totals[i] = t
		}
	}
	if len(hours) > 0 {
		add, err := tx.PrepareContext(ctx, `INSERT INTO hourly_usage (account, hour, admitted, refused) VALUES (?, ?, ?, ?)
			ON CONFLICT (account, hour) DO UPDATE SET admitted = admitted + excluded.admitted, refused = refused + excluded.refused`)
		if err != nil {
			return nil, err
		}
		defer add.Close()
		for _, h := range hours {
			if _, err := add.ExecContext(ctx, h.Account, h.Hour.UnixNano(), h.Admitted, h.Refused); err != nil {
				return nil, err
			}
		}
	}
	if len(hours) > 0 {
		if _, err := tx.ExecContext(ctx, `DELETE FROM hourly_usage WHERE hour < ?`, dropBefore.UnixNano()); err != nil {
			return nil, err
		}
	}
	return totals, tx.Commit()
}

// AccountUsage implements Store.
func (s *SQLiteStore) AccountUsage(ctx context.Context, account string, period Period, periodStart, since time.Time) (PeriodUsage, []HourUsage, error) {
	p := PeriodUsage{Account: account, Period: period, Start: periodStart.UTC()}
	if _, err := s.GetAccount(ctx, account); err != nil {
		return p, nil, err
	}
	err := s.db.QueryRowContext(ctx, `SELECT live, test FROM quota_usage WHERE account = ? AND period_start = ? AND period = ?`,
		account, periodStart.UnixNano(), string(period)).Scan(&p.Live, &p.Test)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return p, nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT hour, admitted, refused FROM hourly_usage WHERE account = ? AND hour >= ? ORDER BY hour`,
		account, since.UnixNano())
	if err != nil {
		return p, nil, err
	}
	defer rows.Close()
	hours, err := scanAll(rows, func(row rowScanner) (HourUsage, error) {
		h := HourUsage{Account: account}
		var at int64
		err := row.Scan(&at, &h.Admitted, &h.Refused)
		h.Hour = time.Unix(0, at).UTC()
		return h, err
	})
	return p, hours, err
}

// GetKey implements Store.
func (s *SQLiteStore) GetKey(ctx context.Context, id string) (KeyRecord, error) {
	return scanKey(s.db.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM keys k WHERE k.id = ?`, id))
}

// ListKeys implements Store.
func (s *SQLiteStore) ListKeys(ctx context.Context, account string) ([]KeyRecord, error) {
	if _, err := s.GetAccount(ctx, account); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys k WHERE k.account = ? ORDER BY k.created_at, k.id`, account)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return scanAll(rows, func(row rowScanner) (KeyRecord, error) { return scanKey(row) })
}

// RevokeKey implements Store.
func (s *SQLiteStore) RevokeKey(ctx context.Context, id string, at time.Time) (KeyRecord, error) {
	k, err := s.GetKey(ctx, id)
	if err != nil {
		return k, err
	}
	err = s.write(ctx, []Change{{KeyHash: k.Hash}}, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?`, at.UnixNano(), id)
		return err
	})
	if err != nil {
		return k, err
	}
	return s.GetKey(ctx, id)
}

// write runs fn and records the changes in one transaction, and prunes
// change rows no watcher needs any more.
func (s *SQLiteStore) write(ctx context.Context, changes []Change, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	now := time.Now()
	for _, c := range changes {
		var hash, account any
		if c.KeyHash != ([sha256.Size]byte{}) {
			hash = c.KeyHash[:]
		}
		if c.Account != "" {
			account = c.Account
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO changes (key_hash, account, at) VALUES (?, ?, ?)`,
			hash, account, now.UnixNano()); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM changes WHERE at < ?`, now.Add(-changeRetention).UnixNano()); err != nil {
		return err
	}
	return tx.Commit()
}

// Watch implements Store by polling the change table every PollInterval.
func (s *SQLiteStore) Watch(ctx context.Context, fn func(Change)) error {
	var cursor int64
	for {
		err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM changes`).Scan(&cursor)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.logger.Warn("reading store change cursor; will retry", zap.Error(err))
		if !sleepCtx(ctx, time.Duration(s.PollInterval)) {
			return ctx.Err()
		}
	}
	// Whatever was cached before the cursor was read may predate a change
	// it will never report.
	fn(Change{All: true})
	failing := false
	for sleepCtx(ctx, time.Duration(s.PollInterval)) {
		next, err := s.pollChanges(ctx, cursor, fn)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if !failing {
				s.logger.Warn("polling store changes failed; cached keys stay valid until their TTL", zap.Error(err))
			}
			failing = true
			continue
		}
		if failing {
			s.logger.Info("polling store changes works again")
		}
		failing = false
		cursor = next
	}
	return ctx.Err()
}

func (s *SQLiteStore) pollChanges(ctx context.Context, cursor int64, fn func(Change)) (int64, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, key_hash, account FROM changes WHERE seq > ? ORDER BY seq`, cursor)
	if err != nil {
		return cursor, err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			hash    []byte
			account sql.NullString
			c       Change
		)
		if err := rows.Scan(&cursor, &hash, &account); err != nil {
			return cursor, err
		}
		copy(c.KeyHash[:], hash)
		c.Account = account.String
		fn(c)
	}
	return cursor, rows.Err()
}

// sleepCtx waits d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// sqliteErr maps constraint violations onto the Store errors.
func sqliteErr(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
			return fmt.Errorf("%w: %v", ErrExists, err)
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			return ErrNotFound // the only foreign key: the key's account
		}
	}
	return err
}

// Interface guards.
var (
	_ Store              = (*SQLiteStore)(nil)
	_ caddy.Provisioner  = (*SQLiteStore)(nil)
	_ caddy.CleanerUpper = (*SQLiteStore)(nil)
)
