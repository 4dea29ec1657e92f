package postscale

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// PostgresStore is the shared key store: a PostgreSQL database that several
// gateway replicas (and the CLI) use at once. It creates its tables when
// they are missing and migrates older ones on start. Every write notifies
// the other replicas through LISTEN/NOTIFY in the same transaction, so
// their caches drop a revoked key as soon as the revocation commits.
type PostgresStore struct {
	// DSN names the database, in any form pgx accepts: a URL
	// (postgres://user:pass@host:5432/db?sslmode=verify-full) or
	// keyword/value pairs (host=… user=… dbname=…). Placeholders such as
	// {env.POSTSCALE_POSTGRES_DSN} are replaced at provision. Required.
	DSN string `json:"dsn,omitempty"`

	// MaxConns is how many connections the store's pool opens at most,
	// shared by every config that uses the same DSN. The change feed holds
	// one more connection of its own. It overrides a pool_max_conns given
	// in the DSN. Key lookups of uncached keys may hold all but two of
	// them at once; a miss beyond that gets 503 at once. Default: 10.
	MaxConns int `json:"max_conns,omitempty"`

	// dsn is DSN with its placeholders replaced: the key of the shared
	// pool. It may hold a password: never log it.
	dsn string
	// pooled is set when db comes from postgresPools (Provision), not
	// from OpenPostgresStore.
	pooled   bool
	db       *postgresDB
	identity string
	logger   *zap.Logger

	// feedConfig is the configuration of the change feed's own connection.
	feedConfig *pgx.ConnConfig
	// feedConnectTimeout bounds one attempt to connect and LISTEN.
	feedConnectTimeout time.Duration
}

// CaddyModule returns the Caddy module information.
func (PostgresStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "postscale.stores.postgres",
		New: func() caddy.Module { return new(PostgresStore) },
	}
}

// postgresPools shares one pool per DSN across config reloads.
var postgresPools = caddy.NewUsagePool()

// Defaults and bounds of the PostgreSQL store.
const (
	// defaultPostgresMaxConns is the pool size unless max_conns says.
	defaultPostgresMaxConns = 10
	// postgresOpenTimeout bounds connecting and migrating at start.
	postgresOpenTimeout = 15 * time.Second
	// postgresChannel is the NOTIFY channel of store changes.
	postgresChannel = "postscale_changes"
	// postgresMigrationLock is the pg_advisory_xact_lock key that
	// serializes migrations (the bytes of "postscal").
	postgresMigrationLock int64 = 0x706f73747363616c

	// feedIdle is how long the change feed waits for a notification
	// before it checks that its connection still answers.
	feedIdle = time.Second
	// feedPingTimeout is how long that check may take; past it the
	// connection counts as lost (a network that hangs rather than fails).
	feedPingTimeout = time.Second
	// feedConnectTimeout bounds one attempt to connect and LISTEN.
	feedConnectTimeout = 5 * time.Second
	// feedRetryMin and feedRetryMax bound the backoff between attempts
	// to get the change feed back.
	feedRetryMin = 100 * time.Millisecond
	feedRetryMax = 5 * time.Second
	// feedStable is how long a feed connection must have lived for the
	// backoff to start again from feedRetryMin, so a server that accepts
	// and then drops connections is not hammered.
	feedStable = 10 * time.Second
)

// Provision opens (or shares) the pool of the DSN and migrates the schema.
func (s *PostgresStore) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	if s.DSN == "" {
		return errors.New("dsn: required (the PostgreSQL database to use)")
	}
	dsn, err := caddy.NewReplacer().ReplaceOrErr(s.DSN, true, false)
	if err != nil {
		return fmt.Errorf("dsn: %w", err)
	}
	cfg, err := postgresPoolConfig(dsn, s.MaxConns)
	if err != nil {
		return err
	}
	warnFewConns(s.logger, int(cfg.MaxConns))
	s.dsn = dsn
	s.identity = postgresIdentity(cfg.ConnConfig)
	s.feedConfig = postgresFeedConfig(cfg.ConnConfig)
	s.feedConnectTimeout = feedConnectTimeout
	v, loaded, err := postgresPools.LoadOrNew(dsn, func() (caddy.Destructor, error) {
		openCtx, cancel := context.WithTimeout(ctx, postgresOpenTimeout)
		defer cancel()
		return openPostgres(openCtx, cfg)
	})
	if err != nil {
		return fmt.Errorf("store %s: %w", s.identity, err)
	}
	s.db, s.pooled = v.(*postgresDB), true
	if !loaded {
		// Once per process and DSN; the identity never holds the password.
		s.logger.Info("key store opened", zap.String("store", s.identity))
	}
	if !postgresEncrypted(cfg.ConnConfig) {
		s.logger.Warn("dsn: connections to the store may go unencrypted; set sslmode=verify-full",
			zap.String("store", s.identity))
	}
	if loaded && s.db.maxConns != cfg.MaxConns {
		s.logger.Warn("max_conns differs from the pool already open for this dsn; it applies once no config uses the old pool",
			zap.String("store", s.identity), zap.Int32("max_conns", cfg.MaxConns), zap.Int32("in_use", s.db.maxConns))
	}
	return nil
}

// Cleanup releases this config's hold on the pool.
func (s *PostgresStore) Cleanup() error {
	if !s.pooled {
		return nil
	}
	_, err := postgresPools.Delete(s.dsn)
	return err
}

// OpenPostgresStore opens the store at dsn outside of a Caddy config, as the
// CLI and tests do, with a pool of its own (max_conns at its default);
// placeholders are not replaced. ctx bounds connecting and migrating. Close
// it with Close.
func OpenPostgresStore(ctx context.Context, dsn string) (*PostgresStore, error) {
	cfg, err := postgresPoolConfig(dsn, 0)
	if err != nil {
		return nil, err
	}
	identity := postgresIdentity(cfg.ConnConfig)
	db, err := openPostgres(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", identity, err)
	}
	return &PostgresStore{
		DSN:                dsn,
		dsn:                dsn,
		db:                 db,
		identity:           identity,
		logger:             zap.NewNop(),
		feedConfig:         postgresFeedConfig(cfg.ConnConfig),
		feedConnectTimeout: feedConnectTimeout,
	}, nil
}

// Close closes a store opened with OpenPostgresStore.
func (s *PostgresStore) Close() error { return s.db.Destruct() }

// retain keeps the pool open, even past this config's Cleanup, until the
// returned function is called: the keyring uses it to flush the last usage
// counts on shutdown. A store from OpenPostgresStore is its opener's to
// close.
func (s *PostgresStore) retain() func() {
	if !s.pooled {
		return func() {}
	}
	if _, _, err := postgresPools.LoadOrNew(s.dsn, func() (caddy.Destructor, error) { return s.db, nil }); err != nil {
		return func() {}
	}
	return func() { _, _ = postgresPools.Delete(s.dsn) }
}

// settingsKey is a digest of the DSN (placeholders replaced), so that a
// reload that changes it (a new password, sslmode or host) gets a keyring
// on the new settings.
func (s *PostgresStore) settingsKey() string {
	sum := sha256.Sum256([]byte(s.dsn))
	return hex.EncodeToString(sum[:8])
}

// Identity implements Store: postgres://user@host:port/dbname, with the
// search_path when the DSN sets one. It never holds the password.
func (s *PostgresStore) Identity() string { return s.identity }

// lookupSlots implements lookupSlotter: all of the pool's connections but
// two, which stay free for writes and usage flushes.
func (s *PostgresStore) lookupSlots() int { return max(1, int(s.db.maxConns)-2) }

// postgresPoolConfig parses dsn into a pool configuration of maxConns
// connections (0: the default).
func postgresPoolConfig(dsn string, maxConns int) (*pgxpool.Config, error) {
	switch {
	case maxConns < 0:
		return nil, fmt.Errorf("max_conns: must be at least 1, got %d", maxConns)
	case maxConns > math.MaxInt32:
		return nil, fmt.Errorf("max_conns: must be at most %d, got %d", math.MaxInt32, maxConns)
	case maxConns == 0:
		maxConns = defaultPostgresMaxConns
	}
	// pgx leaves the password out of its parse errors.
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("dsn: %w", err)
	}
	cfg.MaxConns = int32(maxConns)
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "postscale-gateway"
	}
	return cfg, nil
}

// postgresFeedConfig derives the change feed's connection from the pool's.
func postgresFeedConfig(pool *pgx.ConnConfig) *pgx.ConnConfig {
	cfg := pool.Copy()
	if cfg.RuntimeParams["application_name"] == "postscale-gateway" {
		cfg.RuntimeParams["application_name"] = "postscale-gateway change feed"
	}
	// The feed waits for notifications under a deadline, and must keep
	// its connection when a wait ends quietly. With this handler the end
	// of a context sets a read deadline on the socket, and pgconn keeps a
	// connection whose read timed out (only other read errors close it).
	// It is pgx's default; it is set here so the heartbeat does not
	// depend on that default.
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: c.Conn()}
	}
	return cfg
}

// postgresEncrypted reports whether every connection the configuration
// may make is encrypted or stays on this machine (a unix socket or a
// loopback address). sslmode disable, allow and prefer may connect in
// plaintext.
func postgresEncrypted(c *pgx.ConnConfig) bool {
	local := func(host string) bool {
		ip := net.ParseIP(host)
		return strings.HasPrefix(host, "/") || host == "localhost" || ip != nil && ip.IsLoopback()
	}
	if c.TLSConfig == nil && !local(c.Host) {
		return false
	}
	for _, f := range c.Fallbacks {
		if f.TLSConfig == nil && !local(f.Host) {
			return false
		}
	}
	return true
}

// postgresIdentity names the database of a connection configuration.
func postgresIdentity(c *pgx.ConnConfig) string {
	id := fmt.Sprintf("postgres://%s@%s/%s", c.User, net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port))), c.Database)
	if sp := c.RuntimeParams["search_path"]; sp != "" {
		id += "?search_path=" + sp
	}
	return id
}

// postgresDB is the shared pool of one DSN.
type postgresDB struct {
	pool     *pgxpool.Pool
	maxConns int32
}

// Destruct closes the pool.
func (d *postgresDB) Destruct() error {
	d.pool.Close()
	return nil
}

// openPostgres opens a pool and migrates the schema; ctx bounds both.
func openPostgres(ctx context.Context, cfg *pgxpool.Config) (*postgresDB, error) {
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening pool: %w", err)
	}
	d := &postgresDB{pool: pool, maxConns: cfg.MaxConns}
	if err := d.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return d, nil
}

// postgresMigrations are applied in order; the postscale_schema table
// holds one row per migration applied. Append, never edit. They follow
// the SQLite store's migrations one for one, so a schema version means the
// same record fields in both stores.
var postgresMigrations = []string{
	`CREATE TABLE postscale_accounts (
		id         text PRIMARY KEY,
		plan       text NOT NULL,
		rate       double precision NOT NULL DEFAULT 0,
		burst      integer NOT NULL DEFAULT 0,
		created_at timestamptz NOT NULL
	);
	CREATE TABLE postscale_keys (
		id           text PRIMARY KEY,
		hash         bytea NOT NULL UNIQUE,
		account      text NOT NULL REFERENCES postscale_accounts (id),
		name         text NOT NULL,
		mode         text NOT NULL,
		scopes       text[] NOT NULL DEFAULT '{}',
		redacted     text NOT NULL,
		legacy       boolean NOT NULL DEFAULT false,
		created_at   timestamptz NOT NULL,
		expires_at   timestamptz,
		revoked_at   timestamptz,
		last_used_at timestamptz,
		use_count    bigint NOT NULL DEFAULT 0
	);
	CREATE INDEX postscale_keys_account ON postscale_keys (account, created_at);`,
	`ALTER TABLE postscale_keys ADD COLUMN deprecated_at timestamptz;`,
	`ALTER TABLE postscale_accounts
		ADD COLUMN quota_count bigint NOT NULL DEFAULT 0,
		ADD COLUMN quota_period text NOT NULL DEFAULT '',
		ADD COLUMN quota_anchor timestamptz;
	CREATE TABLE postscale_quota_usage (
		account      text NOT NULL,
		period       text NOT NULL,
		period_start timestamptz NOT NULL,
		live         bigint NOT NULL DEFAULT 0,
		test         bigint NOT NULL DEFAULT 0,
		PRIMARY KEY (account, period_start, period)
	);
	CREATE TABLE postscale_hourly_usage (
		account  text NOT NULL,
		hour     timestamptz NOT NULL,
		admitted bigint NOT NULL DEFAULT 0,
		refused  bigint NOT NULL DEFAULT 0,
		PRIMARY KEY (account, hour)
	);
	CREATE INDEX postscale_hourly_usage_hour ON postscale_hourly_usage (hour);`,
}

// migrate brings the schema up to date in one transaction that holds an
// advisory lock, so replicas starting at once on an empty database migrate
// one after the other: the first does the work, the others find it done.
func (d *postgresDB) migrate(ctx context.Context) error {
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrating schema: %w", err)
	}
	defer tx.Rollback(ctx) // after Commit, a no-op; with ctx ended, pgx drops the connection
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, postgresMigrationLock); err != nil {
		return fmt.Errorf("migrating schema: taking the migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS postscale_schema (
		version    integer PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return fmt.Errorf("creating the schema version table: %w", err)
	}
	var version int
	if err := tx.QueryRow(ctx, `SELECT COALESCE(max(version), 0) FROM postscale_schema`).Scan(&version); err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}
	if version > len(postgresMigrations) {
		return fmt.Errorf("schema version %d is newer than this build knows (%d)", version, len(postgresMigrations))
	}
	if version == len(postgresMigrations) {
		return nil // nothing to do; the rollback ends the transaction
	}
	for i := version; i < len(postgresMigrations); i++ {
		if _, err := tx.Exec(ctx, postgresMigrations[i]); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO postscale_schema (version) VALUES ($1)`, i+1); err != nil {
			return fmt.Errorf("migration %d: recording it: %w", i+1, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrating schema: %w", err)
	}
	return nil
}

const pgKeyColumns = `k.id, k.hash, k.account, k.name, k.mode, k.scopes, k.redacted, k.legacy,
	k.created_at, k.expires_at, k.revoked_at, k.last_used_at, k.deprecated_at, k.use_count`

const pgAccountColumns = `a.id, a.plan, a.rate, a.burst, a.created_at, a.quota_count, a.quota_period, a.quota_anchor`

// pgAccountCols receives a row of pgAccountColumns.
type pgAccountCols struct {
	a           Account
	quotaCount  int64
	quotaPeriod string
}

func (c *pgAccountCols) dest() []any {
	return []any{&c.a.ID, &c.a.Plan, &c.a.Rate, &c.a.Burst, &c.a.CreatedAt, &c.quotaCount, &c.quotaPeriod, &c.a.QuotaAnchor}
}

func (c *pgAccountCols) account() Account {
	a := c.a
	a.CreatedAt = a.CreatedAt.UTC()
	if c.quotaCount > 0 {
		a.Quota = &Quota{Count: c.quotaCount, Period: Period(c.quotaPeriod)}
	}
	if a.QuotaAnchor != nil {
		t := a.QuotaAnchor.UTC()
		a.QuotaAnchor = &t
	}
	return a
}

// pgQuotaArgs are the quota columns' values of a.
func pgQuotaArgs(a Account) (count int64, period string, anchor *time.Time) {
	if a.Quota != nil {
		count, period = a.Quota.Count, string(a.Quota.Period)
	}
	return count, period, a.QuotaAnchor
}

// pgScanKey reads a row of pgKeyColumns, then extra.
func pgScanKey(row rowScanner, extra ...any) (KeyRecord, error) {
	var (
		k    KeyRecord
		hash []byte
		mode string
	)
	dest := append([]any{&k.ID, &hash, &k.Account, &k.Name, &mode, &k.Scopes, &k.Redacted, &k.Legacy,
		&k.CreatedAt, &k.ExpiresAt, &k.RevokedAt, &k.LastUsedAt, &k.DeprecatedAt, &k.Requests}, extra...)
	if err := row.Scan(dest...); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return KeyRecord{}, ErrNotFound
		}
		return KeyRecord{}, err
	}
	copy(k.Hash[:], hash)
	k.Mode, _ = ParseMode(mode)
	if len(k.Scopes) == 0 {
		k.Scopes = nil
	}
	k.CreatedAt = k.CreatedAt.UTC()
	for _, t := range []*time.Time{k.ExpiresAt, k.RevokedAt, k.LastUsedAt, k.DeprecatedAt} {
		if t != nil {
			*t = t.UTC()
		}
	}
	return k, nil
}

// pgScanAccount reads a row of pgAccountColumns.
func pgScanAccount(row rowScanner) (Account, error) {
	var c pgAccountCols
	if err := row.Scan(c.dest()...); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return Account{}, ErrNotFound
		}
		return Account{}, err
	}
	return c.account(), nil
}

// LookupKey implements Store.
func (s *PostgresStore) LookupKey(ctx context.Context, h [sha256.Size]byte) (KeyRecord, Account, error) {
	var c pgAccountCols
	var usedStart *time.Time
	var usedPeriod *string
	var usedLive, usedTest *int64
	row := s.db.pool.QueryRow(ctx, `SELECT `+pgKeyColumns+`, `+pgAccountColumns+`, q.period, q.period_start, q.live, q.test
		FROM postscale_keys k JOIN postscale_accounts a ON a.id = k.account
		LEFT JOIN LATERAL (SELECT period, period_start, live, test FROM postscale_quota_usage
			WHERE account = a.id ORDER BY period_start DESC, period = a.quota_period DESC LIMIT 1) q ON true
		WHERE k.hash = $1`, h[:])
	k, err := pgScanKey(row, append(c.dest(), &usedPeriod, &usedStart, &usedLive, &usedTest)...)
	if err != nil {
		return KeyRecord{}, Account{}, err
	}
	a := c.account()
	if usedStart != nil {
		a.Used = &PeriodUsage{Account: a.ID, Period: Period(*usedPeriod), Start: usedStart.UTC(), Live: *usedLive, Test: *usedTest}
	}
	return k, a, nil
}

// CreateAccount implements Store. A new account has no cached keys, so
// it notifies nobody.
func (s *PostgresStore) CreateAccount(ctx context.Context, a Account) error {
	qc, qp, qa := pgQuotaArgs(a)
	_, err := s.db.pool.Exec(ctx, `INSERT INTO postscale_accounts (id, plan, rate, burst, created_at, quota_count, quota_period, quota_anchor)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		a.ID, a.Plan, a.Rate, a.Burst, a.CreatedAt, qc, qp, qa)
	return postgresErr(err)
}

// GetAccount implements Store.
func (s *PostgresStore) GetAccount(ctx context.Context, id string) (Account, error) {
	return pgScanAccount(s.db.pool.QueryRow(ctx, `SELECT `+pgAccountColumns+` FROM postscale_accounts a WHERE a.id = $1`, id))
}

// ListAccounts implements Store. The ids are compared in the C collation,
// bytewise, so that pages follow Go's order whatever the database's
// default collation is.
func (s *PostgresStore) ListAccounts(ctx context.Context, after string, limit int) ([]Account, error) {
	rows, err := s.db.pool.Query(ctx, `SELECT `+pgAccountColumns+` FROM postscale_accounts a
		WHERE a.id COLLATE "C" > $1 ORDER BY a.id COLLATE "C" LIMIT $2`, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return scanAll(rows, pgScanAccount)
}

// UpdateAccount implements Store. The read locks the account row (FOR
// UPDATE) until the transaction ends, so concurrent updates queue.
func (s *PostgresStore) UpdateAccount(ctx context.Context, id string, update func(Account) (Account, error)) (Account, error) {
	var updated Account
	err := s.write(ctx, func(tx pgx.Tx) ([]string, error) {
		a, err := pgScanAccount(tx.QueryRow(ctx, `SELECT `+pgAccountColumns+` FROM postscale_accounts a WHERE a.id = $1 FOR UPDATE`, id))
		if err != nil {
			return nil, err
		}
		if updated, err = update(a); err != nil {
			return nil, err
		}
		updated.ID, updated.CreatedAt = a.ID, a.CreatedAt
		qc, qp, qa := pgQuotaArgs(updated)
		if _, err := tx.Exec(ctx, `UPDATE postscale_accounts SET plan = $1, rate = $2, burst = $3,
			quota_count = $4, quota_period = $5, quota_anchor = $6 WHERE id = $7`,
			updated.Plan, updated.Rate, updated.Burst, qc, qp, qa, id); err != nil {
			return nil, err
		}
		return []string{accountHint(id)}, nil
	})
	if err != nil {
		return Account{}, err
	}
	return updated, nil
}

// CreateKey implements Store.
func (s *PostgresStore) CreateKey(ctx context.Context, k KeyRecord) error {
	return s.CreateKeys(ctx, []KeyRecord{k})
}

// CreateKeys implements Store. The new keys' hashes are notified too, so
// that replicas drop any cached "unknown key" answer for them.
func (s *PostgresStore) CreateKeys(ctx context.Context, keys []KeyRecord) error {
	return s.write(ctx, func(tx pgx.Tx) ([]string, error) {
		hints := make([]string, len(keys))
		for i, k := range keys {
			if err := pgInsertKey(ctx, tx, k); err != nil {
				return nil, err
			}
			hints[i] = keyHint(k.Hash)
		}
		return hints, nil
	})
}

func pgInsertKey(ctx context.Context, tx pgx.Tx, k KeyRecord) error {
	scopes := k.Scopes
	if scopes == nil {
		scopes = []string{} // NOT NULL: none is an empty array
	}
	_, err := tx.Exec(ctx, `INSERT INTO postscale_keys (id, hash, account, name, mode, scopes, redacted, legacy, created_at, expires_at, deprecated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		k.ID, k.Hash[:], k.Account, k.Name, k.Mode.String(), scopes, k.Redacted, k.Legacy,
		k.CreatedAt, k.ExpiresAt, k.DeprecatedAt)
	return postgresErr(err)
}

// RollKey implements Store.
func (s *PostgresStore) RollKey(ctx context.Context, id string, next KeyRecord, expires time.Time) (KeyRecord, error) {
	var old KeyRecord
	err := s.write(ctx, func(tx pgx.Tx) ([]string, error) {
		// Check and mark in one statement, so a revocation committed in
		// between cannot be rolled over.
		var err error
		old, err = pgScanKey(tx.QueryRow(ctx, `UPDATE postscale_keys k SET deprecated_at = COALESCE(k.deprecated_at, $2),
			expires_at = CASE WHEN k.expires_at IS NOT NULL AND k.expires_at < $3 THEN k.expires_at ELSE $3 END
			WHERE k.id = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)
			RETURNING `+pgKeyColumns, id, next.CreatedAt, expires))
		if errors.Is(err, ErrNotFound) {
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM postscale_keys WHERE id = $1)`, id).Scan(&exists); err != nil {
				return nil, err
			}
			if exists {
				return nil, fmt.Errorf("key %q is revoked or expired: %w", id, ErrConflict)
			}
			return nil, ErrNotFound
		}
		if err != nil {
			return nil, err
		}
		if err := pgInsertKey(ctx, tx, next); err != nil {
			return nil, err
		}
		return []string{keyHint(old.Hash), keyHint(next.Hash)}, nil
	})
	if err != nil {
		return KeyRecord{}, err
	}
	return old, nil
}

// RecordAccountUsage implements Store. Rows are written in (account,
// period) and (account, hour) order, so replicas flushing at once take
// their row locks in the same order and never deadlock.
func (s *PostgresStore) RecordAccountUsage(ctx context.Context, periods []PeriodUsage, hours []HourUsage, dropBefore time.Time) ([]PeriodUsage, error) {
	type pk struct {
		account string
		period  Period
		start   time.Time
	}
	sorted := slices.Clone(periods)
	slices.SortFunc(sorted, func(a, b PeriodUsage) int {
		return cmp.Or(cmp.Compare(a.Account, b.Account), a.Start.Compare(b.Start), cmp.Compare(a.Period, b.Period))
	})
	hs := slices.Clone(hours)
	slices.SortFunc(hs, func(a, b HourUsage) int {
		return cmp.Or(cmp.Compare(a.Account, b.Account), a.Hour.Compare(b.Hour))
	})
	totals := make(map[pk]PeriodUsage, len(periods))
	err := pgx.BeginFunc(ctx, s.db.pool, func(tx pgx.Tx) error {
		for _, p := range sorted {
			t := PeriodUsage{Account: p.Account, Period: p.Period, Start: p.Start}
			if err := tx.QueryRow(ctx, `INSERT INTO postscale_quota_usage AS q (account, period, period_start, live, test) VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (account, period_start, period) DO UPDATE SET live = q.live + excluded.live, test = q.test + excluded.test
				RETURNING live, test`, p.Account, string(p.Period), p.Start, p.Live, p.Test).Scan(&t.Live, &t.Test); err != nil {
				return err
			}
			totals[pk{p.Account, p.Period, p.Start.UTC()}] = t
		}
		if len(hs) == 0 {
			return nil
		}
		var (
			accounts          []string
			at                []time.Time
			admitted, refused []int64
		)
		for _, h := range hs {
			accounts, at = append(accounts, h.Account), append(at, h.Hour)
			admitted, refused = append(admitted, h.Admitted), append(refused, h.Refused)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO postscale_hourly_usage AS h (account, hour, admitted, refused)
			SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[])
			ON CONFLICT (account, hour) DO UPDATE SET admitted = h.admitted + excluded.admitted, refused = h.refused + excluded.refused`,
			accounts, at, admitted, refused); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM postscale_hourly_usage WHERE hour < $1`, dropBefore)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]PeriodUsage, len(periods))
	for i, p := range periods {
		out[i] = totals[pk{p.Account, p.Period, p.Start.UTC()}]
	}
	return out, nil
}

// AccountUsage implements Store.
func (s *PostgresStore) AccountUsage(ctx context.Context, account string, period Period, periodStart, since time.Time) (PeriodUsage, []HourUsage, error) {
	p := PeriodUsage{Account: account, Period: period, Start: periodStart.UTC()}
	if _, err := s.GetAccount(ctx, account); err != nil {
		return p, nil, err
	}
	err := s.db.pool.QueryRow(ctx, `SELECT live, test FROM postscale_quota_usage WHERE account = $1 AND period_start = $2 AND period = $3`,
		account, periodStart, string(period)).Scan(&p.Live, &p.Test)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return p, nil, err
	}
	rows, err := s.db.pool.Query(ctx, `SELECT hour, admitted, refused FROM postscale_hourly_usage
		WHERE account = $1 AND hour >= $2 ORDER BY hour`, account, since)
	if err != nil {
		return p, nil, err
	}
	defer rows.Close()
	hours, err := scanAll(rows, func(row rowScanner) (HourUsage, error) {
		h := HourUsage{Account: account}
		err := row.Scan(&h.Hour, &h.Admitted, &h.Refused)
		h.Hour = h.Hour.UTC()
		return h, err
	})
	return p, hours, err
}

// RecordUsage implements Store, in one round trip: the batch runs as one
// implicit transaction that first locks the keys' rows in id order, so two
// replicas flushing the same keys at once wait for each other instead of
// deadlocking.
func (s *PostgresStore) RecordUsage(ctx context.Context, usage []Usage) error {
	if len(usage) == 0 {
		return nil
	}
	// One row per key, in id order.
	usage = slices.Clone(usage)
	slices.SortFunc(usage, func(a, b Usage) int { return cmp.Compare(a.KeyID, b.KeyID) })
	var (
		ids      []string
		requests []int64
		lastUsed []time.Time
	)
	for _, u := range usage {
		if n := len(ids); n > 0 && ids[n-1] == u.KeyID {
			requests[n-1] += u.Requests
			if u.LastUsed.After(lastUsed[n-1]) {
				lastUsed[n-1] = u.LastUsed
			}
			continue
		}
		ids, requests, lastUsed = append(ids, u.KeyID), append(requests, u.Requests), append(lastUsed, u.LastUsed)
	}
	b := &pgx.Batch{}
	b.Queue(`SELECT 1 FROM postscale_keys WHERE id = ANY ($1) ORDER BY id FOR UPDATE`, ids)
	b.Queue(`UPDATE postscale_keys k SET use_count = k.use_count + u.requests,
			last_used_at = GREATEST(k.last_used_at, u.last_used)
		FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS u (id, requests, last_used)
		WHERE k.id = u.id`, ids, requests, lastUsed)
	return s.db.pool.SendBatch(ctx, b).Close()
}

// GetKey implements Store.
func (s *PostgresStore) GetKey(ctx context.Context, id string) (KeyRecord, error) {
	return pgScanKey(s.db.pool.QueryRow(ctx, `SELECT `+pgKeyColumns+` FROM postscale_keys k WHERE k.id = $1`, id))
}

// ListKeys implements Store.
func (s *PostgresStore) ListKeys(ctx context.Context, account string) ([]KeyRecord, error) {
	if _, err := s.GetAccount(ctx, account); err != nil {
		return nil, err
	}
	rows, err := s.db.pool.Query(ctx, `SELECT `+pgKeyColumns+` FROM postscale_keys k WHERE k.account = $1 ORDER BY k.created_at, k.id`, account)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return scanAll(rows, func(row rowScanner) (KeyRecord, error) { return pgScanKey(row) })
}

// RevokeKey implements Store.
func (s *PostgresStore) RevokeKey(ctx context.Context, id string, at time.Time) (KeyRecord, error) {
	var k KeyRecord
	err := s.write(ctx, func(tx pgx.Tx) ([]string, error) {
		var err error
		k, err = pgScanKey(tx.QueryRow(ctx, `UPDATE postscale_keys k SET revoked_at = COALESCE(k.revoked_at, $2)
			WHERE k.id = $1 RETURNING `+pgKeyColumns, id, at))
		if err != nil {
			return nil, err
		}
		return []string{keyHint(k.Hash)}, nil
	})
	if err != nil {
		return KeyRecord{}, err
	}
	return k, nil
}

// write runs fn in a transaction and, in the same transaction, notifies
// the hints fn returns; PostgreSQL delivers them only if it commits.
func (s *PostgresStore) write(ctx context.Context, fn func(pgx.Tx) ([]string, error)) error {
	tx, err := s.db.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) // after Commit, a no-op; with ctx ended, pgx drops the connection
	hints, err := fn(tx)
	if err != nil {
		return err
	}
	if len(hints) > 0 {
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, hint) FROM unnest($2::text[]) AS hint`, postgresChannel, hints); err != nil {
			return fmt.Errorf("notifying the change: %w", err)
		}
	}
	return tx.Commit(ctx)
}

// Change hints, the payloads of the notifications: which key (by hash) or
// account a write touched, never the record itself.
const (
	keyHintPrefix     = "k:"
	accountHintPrefix = "a:"
)

func keyHint(h [sha256.Size]byte) string { return keyHintPrefix + hex.EncodeToString(h[:]) }

func accountHint(id string) string { return accountHintPrefix + id }

// parseHint reads a notification payload; ok is false for one that names
// nothing.
func parseHint(payload string) (c Change, ok bool) {
	if rest, found := strings.CutPrefix(payload, keyHintPrefix); found {
		if hex.DecodedLen(len(rest)) != sha256.Size {
			return Change{}, false
		}
		if _, err := hex.Decode(c.KeyHash[:], []byte(rest)); err != nil || c.KeyHash == ([sha256.Size]byte{}) {
			return Change{}, false
		}
		return c, true
	}
	if rest, found := strings.CutPrefix(payload, accountHintPrefix); found && rest != "" {
		return Change{Account: rest}, true
	}
	return Change{}, false
}

// Watch implements Store with LISTEN on a connection of its own. It
// reports All once it listens (again), and Lost when the connection drops
// or stops answering, or when it cannot connect at first; the loss and the
// recovery are logged once each, however many attempts it takes.
func (s *PostgresStore) Watch(ctx context.Context, fn func(Change)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	delay := feedRetryMin
	lost := false // Lost was reported, and the loss logged
	for {
		conn, err := s.listen(ctx)
		if err == nil {
			// Whatever was cached before may predate a change that was
			// never heard.
			fn(Change{All: true})
			if lost {
				s.logger.Info("change feed works again", zap.String("store", s.identity))
				lost = false
			}
			since := time.Now()
			err = s.follow(ctx, conn, fn)
			if time.Since(since) > feedStable {
				delay = feedRetryMin
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := delay/2 + rand.N(delay/2+1)
		if !lost {
			lost = true
			fn(Change{Lost: true})
			s.logger.Warn("change feed lost: changes made elsewhere reach this cache only as entries are looked up again; reconnecting",
				zap.String("store", s.identity), zap.Error(err))
		} else {
			s.logger.Debug("change feed: reconnecting failed", zap.String("store", s.identity), zap.Duration("retry_in", wait), zap.Error(err))
		}
		if !sleepCtx(ctx, wait) {
			return ctx.Err()
		}
		delay = min(2*delay, feedRetryMax)
	}
}

// listen opens the feed's connection and LISTENs on it.
func (s *PostgresStore) listen(ctx context.Context) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.feedConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, s.feedConfig)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+postgresChannel); err != nil {
		closePostgresConn(conn)
		return nil, fmt.Errorf("listening: %w", err)
	}
	return conn, nil
}

// follow passes the notifications on conn to fn until ctx ends or the
// connection fails. A wait that ends with no notification for feedIdle
// leaves the connection usable (see postgresFeedConfig); the connection
// must then answer an empty query within feedPingTimeout, so a hung
// network is noticed too.
func (s *PostgresStore) follow(ctx context.Context, conn *pgx.Conn, fn func(Change)) error {
	defer closePostgresConn(conn)
	for {
		wctx, cancel := context.WithTimeout(ctx, feedIdle)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			if n == nil {
				continue
			}
			if c, ok := parseHint(n.Payload); ok {
				fn(c)
			}
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case !pgconn.Timeout(err) || conn.IsClosed():
			return fmt.Errorf("waiting for changes: %w", err)
		}
		pctx, cancel := context.WithTimeout(ctx, feedPingTimeout)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("checking the connection after %v without changes: %w", feedIdle, err)
		}
	}
}

// closePostgresConn closes a connection without waiting long for a server
// that may not answer.
func closePostgresConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_ = conn.Close(ctx)
}

// postgresErr maps constraint violations onto the Store errors.
func postgresErr(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505": // unique_violation
			return fmt.Errorf("%w: %v", ErrExists, err)
		case "23503": // foreign_key_violation: the only one is the key's account
			return ErrNotFound
		}
	}
	return err
}

// UnmarshalCaddyfile sets up the PostgreSQL store from the tokens after
// "store". Syntax:
//
//	postgres <dsn> {
//	    max_conns <n>
//	}
//
// A keyword/value DSN has spaces, so it goes in quotes.
func (s *PostgresStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume backend name
	if !d.NextArg() {
		return d.Errf("postgres store: want a DSN: postgres <dsn>")
	}
	s.DSN = d.Val()
	if s.DSN == "" {
		return d.Errf("postgres store: the DSN is empty; want postgres <dsn>")
	}
	if d.NextArg() {
		// The extra token is not shown: it may be the DSN's password.
		return d.Errf("postgres store: the DSN is one argument, got %d more (quote a keyword/value DSN)", 1+len(d.RemainingArgs()))
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "max_conns":
			if s.MaxConns != 0 {
				return d.Errf("max_conns: given more than once")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 || n > math.MaxInt32 {
				return d.Errf("max_conns: want a whole number of connections, at least 1, got %q", d.Val())
			}
			s.MaxConns = n
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized postgres store option %q", d.Val())
		}
	}
	return nil
}

// Interface guards.
var (
	_ Store                 = (*PostgresStore)(nil)
	_ caddy.Provisioner     = (*PostgresStore)(nil)
	_ caddy.CleanerUpper    = (*PostgresStore)(nil)
	_ caddyfile.Unmarshaler = (*PostgresStore)(nil)
)
