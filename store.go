package postscale

import (
	"context"
	"crypto/sha256"
	"errors"
	"time"
)

// Errors a Store returns, wrapped or as they are; callers test them with
// errors.Is. Any other error means the store could not answer (it is down,
// slow, or broken), which the gateway answers with 503, never 401.
var (
	// ErrNotFound means the store answered and holds no such record.
	ErrNotFound = errors.New("not found")
	// ErrExists means a record with that id (or key hash) already exists.
	ErrExists = errors.New("already exists")
	// ErrConflict means the record is in a state that forbids the
	// operation (e.g. rolling a revoked key).
	ErrConflict = errors.New("conflict")
)

// Store keeps accounts and key records. Stores are guest modules in the
// postscale.stores namespace.
//
// A Store is safe for concurrent use by many goroutines and, where its
// backend allows, by several processes at once (a CLI beside a server,
// several gateway replicas). It never holds a plaintext key: keys are found
// by the SHA-256 of the whole key.
type Store interface {
	// Identity names the data behind the store, e.g. "sqlite:/abs/path".
	// Two stores with the same identity share one key cache, which is how
	// the warm cache survives a config reload.
	Identity() string

	// LookupKey returns the key whose hash is h, with the account it
	// belongs to, or ErrNotFound. It is the only call on the request path,
	// and only for keys not in the cache.
	LookupKey(ctx context.Context, h [sha256.Size]byte) (KeyRecord, Account, error)

	// CreateAccount adds a new account, or returns ErrExists.
	CreateAccount(ctx context.Context, a Account) error
	// GetAccount returns the account with that id, or ErrNotFound.
	GetAccount(ctx context.Context, id string) (Account, error)
	// ListAccounts returns up to limit accounts whose ids come after
	// after ("" for the first page), in byte order of their ids (the order
	// of Go's string comparison, whatever the database's collation), or an
	// empty list past the last one.
	ListAccounts(ctx context.Context, after string, limit int) ([]Account, error)

	// UpdateAccount reads the account, passes it to update, and stores the
	// plan and limits update returns, all in one transaction, so
	// concurrent updates never lose one another. It returns the stored
	// account, ErrNotFound, or update's error as it is (then nothing
	// changes).
	UpdateAccount(ctx context.Context, id string, update func(Account) (Account, error)) (Account, error)

	// CreateKey adds a key record, or returns ErrExists if its id or hash
	// is taken, or ErrNotFound if its account does not exist.
	CreateKey(ctx context.Context, k KeyRecord) error
	// CreateKeys adds several key records, all or none (as for an import),
	// with the errors of CreateKey.
	CreateKeys(ctx context.Context, keys []KeyRecord) error
	// GetKey returns the key record with that id, or ErrNotFound.
	GetKey(ctx context.Context, id string) (KeyRecord, error)
	// ListKeys returns the keys of an account, oldest first (an empty list
	// for an account without keys), or ErrNotFound for no such account.
	ListKeys(ctx context.Context, account string) ([]KeyRecord, error)
	// RevokeKey marks the key revoked at the given time and returns the
	// updated record, or ErrNotFound. Revoking a revoked key keeps the
	// first revocation time.
	RevokeKey(ctx context.Context, id string, at time.Time) (KeyRecord, error)
	// RollKey stores the replacement key next and, in the same transaction,
	// marks the key id deprecated at next.CreatedAt and expiring at
	// expires (or sooner, if it already expires sooner). It returns the
	// updated old record, ErrNotFound, or ErrConflict if the key is
	// revoked or expired at next.CreatedAt (then nothing is stored).
	RollKey(ctx context.Context, id string, next KeyRecord, expires time.Time) (KeyRecord, error)
	// RecordUsage adds request counts and moves last_used_at forward for
	// the given keys. It is called in batches, off the request path, and
	// is not a change that caches need to hear about.
	RecordUsage(ctx context.Context, usage []Usage) error

	// RecordAccountUsage adds, in one transaction, request counts of
	// accounts: per quota period (periods) and per hour (hours), and drops
	// the hours before dropBefore. It returns each period's live and test
	// totals after the add, in the order of periods, so that replicas
	// sharing the store learn each other's counts. Like RecordUsage it is
	// called in batches, off the request path.
	RecordAccountUsage(ctx context.Context, periods []PeriodUsage, hours []HourUsage, dropBefore time.Time) ([]PeriodUsage, error)
	// AccountUsage returns an account's counts of the period of that
	// length that starts at periodStart (zero counts if none were
	// recorded) and its hours from since on, oldest first, or ErrNotFound
	// for no such account.
	AccountUsage(ctx context.Context, account string, period Period, periodStart, since time.Time) (PeriodUsage, []HourUsage, error)

	// Watch calls fn for every change to a key or an account made through
	// any process sharing the store, until ctx is done, when it returns
	// ctx.Err(). Once it has found its place in the store's changes (and
	// again whenever it may have lost it), it calls fn with All set, so
	// that what was cached before is dropped. A store that pushes changes
	// calls fn with Lost set when it stops hearing them (its listening
	// connection dropped), and with All once it hears them again. fn is
	// called from one goroutine at a time. Watch retries on its own while
	// the store is unreachable; it returns another error only if it cannot
	// watch at all.
	Watch(ctx context.Context, fn func(Change)) error
}

// Change names what a write to the store touched, so that caches can drop
// it: a key (by hash) or a whole account (its plan or limits).
type Change struct {
	KeyHash [sha256.Size]byte // zero when the change is to an account
	Account string            // the account changed; empty for a key change
	// All means changes may have been missed (the watch just started, or
	// reconnected): caches drop everything. It also ends a Lost.
	All bool
	// Lost means the feed went quiet: until the next All, changes made
	// elsewhere are not reported, so caches look an entry up again once it
	// is staleAfter old (keeping it if the store cannot answer).
	Lost bool
}

// Usage is what one key did since the last flush.
type Usage struct {
	KeyID    string
	Requests int64
	LastUsed time.Time
}

// Account is a customer account. Its plan names a rate-limit plan.
type Account struct {
	ID   string `json:"id"`
	Plan string `json:"plan"`
	// Rate and Burst are the custom limits of an enterprise account, in
	// requests per second and requests; zero elsewhere.
	Rate  float64 `json:"rate,omitempty"`
	Burst int     `json:"burst,omitempty"`
	// Quota is the account's own quota, over its plan's; nil: the plan's.
	Quota *Quota `json:"quota,omitempty"`
	// QuotaAnchor is when the account's quota periods start from (its
	// billing day); nil: its creation.
	QuotaAnchor *time.Time `json:"quota_anchor,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`

	// Used is the account's most recent quota period with counts in the
	// store, as LookupKey found it (nil: none), from which a gateway
	// starts counting without another round trip. Other calls leave it
	// nil.
	Used *PeriodUsage `json:"-"`
}

// anchor is when the account's quota periods start from.
func (a Account) anchor() time.Time {
	if a.QuotaAnchor != nil {
		return *a.QuotaAnchor
	}
	return a.CreatedAt
}

// PeriodUsage is an account's requests in one quota period: the live ones
// that counted towards its quota, and the test ones.
type PeriodUsage struct {
	Account string
	Period  Period
	Start   time.Time
	Live    int64
	Test    int64
}

// HourUsage is an account's requests in the hour that starts at Hour:
// admitted, and refused (by its rate limit, its quota, a scope, or as
// revoked or expired).
type HourUsage struct {
	Account  string    `json:"-"`
	Hour     time.Time `json:"hour"`
	Admitted int64     `json:"admitted"`
	Refused  int64     `json:"refused"`
}

// KeyRecord is everything kept about a key except the key itself.
type KeyRecord struct {
	ID      string   `json:"id"`
	Account string   `json:"account"`
	Name    string   `json:"name"`
	Mode    Mode     `json:"mode"`
	Scopes  []string `json:"scopes,omitempty"`
	// Redacted is the display form, e.g. ps_live_…wxyz.
	Redacted string `json:"redacted"`
	// Legacy marks a key imported from the old system, accepted only when
	// the operator turns on legacy_keys.
	Legacy     bool       `json:"legacy,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	// DeprecatedAt is when the key was rolled: from then until ExpiresAt
	// its responses carry Deprecation and Sunset.
	DeprecatedAt *time.Time `json:"deprecated_at,omitempty"`
	// Requests counts the requests the key made (flushed in batches, so
	// up to a flush interval behind).
	Requests int64 `json:"requests"`

	// Hash is SHA-256 of the whole key. It is never sent out.
	Hash [sha256.Size]byte `json:"-"`
}

// MarshalText writes "live" or "test".
func (m Mode) MarshalText() ([]byte, error) {
	if m.String() == "" {
		return nil, errors.New("invalid mode")
	}
	return []byte(m.String()), nil
}

// UnmarshalText reads "live" or "test".
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	*m = v
	return err
}

// queryRows is a query's answer, read a row at a time: what database/sql's
// and pgx's rows have in common.
type queryRows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// scanAll reads every row of rows with scan, into a list that is empty
// rather than nil when there are none. The caller closes rows.
func scanAll[T any](rows queryRows, scan func(rowScanner) (T, error)) ([]T, error) {
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
