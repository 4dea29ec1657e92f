package postscale

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"
	"unicode"
)

// InputError is a management request that cannot be served as given. Field
// names the offending JSON field.
type InputError struct {
	Field   string
	Message string
}

func (e *InputError) Error() string { return e.Field + ": " + e.Message }

func badInput(field, format string, args ...any) error {
	return &InputError{Field: field, Message: fmt.Sprintf(format, args...)}
}

var (
	accountIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	planNamePattern  = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)
)

// maxKeyNameLen bounds a key's name, in characters.
const maxKeyNameLen = 200

// AccountRequest creates an account.
type AccountRequest struct {
	ID    string  `json:"id"`
	Plan  string  `json:"plan"`
	Rate  float64 `json:"rate,omitempty"`
	Burst int     `json:"burst,omitempty"`
}

// KeyRequest creates a key.
type KeyRequest struct {
	Account   string     `json:"account"`
	Name      string     `json:"name"`
	Mode      string     `json:"mode"`
	Scopes    []string   `json:"scopes,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// CreatedKey is the answer to a key creation: the record and, this once,
// the key itself.
type CreatedKey struct {
	KeyRecord
	Key string `json:"key"`
}

// Manager is what the admin API serves and the CLI calls: the management
// operations on accounts and keys. Errors are *InputError for bad input,
// or wrap ErrNotFound or ErrExists; anything else means the store (or the
// server) could not answer.
type Manager interface {
	CreateAccount(ctx context.Context, req AccountRequest) (Account, error)
	GetAccount(ctx context.Context, id string) (Account, error)
	CreateKey(ctx context.Context, req KeyRequest) (CreatedKey, error)
	ListKeys(ctx context.Context, account string) ([]KeyRecord, error)
	GetKey(ctx context.Context, id string) (KeyRecord, error)
	RevokeKey(ctx context.Context, id string) (KeyRecord, error)
}

// storeManager runs the management operations against a store. The admin
// API uses it with changed set to its keyring's invalidation, so that the
// serving instance drops what it changed before it answers; the CLI uses it
// on its own when no server runs.
type storeManager struct {
	store   Store
	now     func() time.Time
	changed func(Change) // may be nil
}

func (m storeManager) notify(c Change) {
	if m.changed != nil {
		m.changed(c)
	}
}

// CreateAccount validates req and stores the account.
func (m storeManager) CreateAccount(ctx context.Context, req AccountRequest) (Account, error) {
	s, now := m.store, m.now()
	if !accountIDPattern.MatchString(req.ID) {
		return Account{}, badInput("id", "must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
	}
	if !planNamePattern.MatchString(req.Plan) {
		return Account{}, badInput("plan", "must name a plan: 1 to 32 characters of a-z, 0-9, _ and - (e.g. starter, growth, scale, enterprise)")
	}
	if req.Plan == "enterprise" {
		if !(req.Rate > 0) || math.IsInf(req.Rate, 0) {
			return Account{}, badInput("rate", "an enterprise account needs a rate in requests per second greater than 0")
		}
		if req.Burst < 0 {
			return Account{}, badInput("burst", "must not be negative")
		}
		if req.Burst == 0 {
			req.Burst = int(math.Ceil(req.Rate))
		}
	} else if req.Rate != 0 || req.Burst != 0 {
		return Account{}, badInput("rate", "custom rate and burst are for the enterprise plan only; plan %q has its own", req.Plan)
	}
	a := Account{ID: req.ID, Plan: req.Plan, Rate: req.Rate, Burst: req.Burst, CreatedAt: now.UTC()}
	if err := s.CreateAccount(ctx, a); err != nil {
		if errors.Is(err, ErrExists) {
			return Account{}, fmt.Errorf("account %q: %w", req.ID, ErrExists)
		}
		return Account{}, err
	}
	return a, nil
}

// GetAccount returns an account.
func (m storeManager) GetAccount(ctx context.Context, id string) (Account, error) {
	a, err := m.store.GetAccount(ctx, id)
	return a, notFoundAs(err, "account", id)
}

// CreateKey validates req, issues a key and stores its record.
func (m storeManager) CreateKey(ctx context.Context, req KeyRequest) (CreatedKey, error) {
	s, now := m.store, m.now()
	if req.Account == "" {
		return CreatedKey{}, badInput("account", "is required")
	}
	name := strings.TrimSpace(req.Name)
	if name == "" {
		return CreatedKey{}, badInput("name", "is required: say what the key is for, e.g. \"production server\"")
	}
	if len([]rune(name)) > maxKeyNameLen || strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return CreatedKey{}, badInput("name", "must be at most %d characters, without control characters", maxKeyNameLen)
	}
	if req.Mode == "" {
		req.Mode = "live"
	}
	mode, err := ParseMode(req.Mode)
	if err != nil {
		return CreatedKey{}, badInput("mode", "must be \"live\" or \"test\"")
	}
	if req.ExpiresAt != nil && !req.ExpiresAt.After(now) {
		return CreatedKey{}, badInput("expires_at", "must be in the future")
	}
	for _, sc := range req.Scopes {
		if sc == "" || strings.ContainsFunc(sc, func(r rune) bool { return r <= ' ' || r == '"' || r == '\\' || r > '~' }) {
			return CreatedKey{}, badInput("scopes", "a scope is printable ASCII without spaces or quotes, e.g. emails:send")
		}
	}
	if _, err := s.GetAccount(ctx, req.Account); err != nil {
		if errors.Is(err, ErrNotFound) {
			return CreatedKey{}, fmt.Errorf("account %q: %w", req.Account, ErrNotFound)
		}
		return CreatedKey{}, err
	}
	plaintext, err := NewKey(mode)
	if err != nil {
		return CreatedKey{}, err
	}
	id, err := newID("key_")
	if err != nil {
		return CreatedKey{}, err
	}
	rec := KeyRecord{
		ID:        id,
		Account:   req.Account,
		Name:      name,
		Mode:      mode,
		Scopes:    req.Scopes,
		Redacted:  Redact(plaintext),
		CreatedAt: now.UTC(),
		ExpiresAt: req.ExpiresAt,
		Hash:      HashKey(plaintext),
	}
	if rec.ExpiresAt != nil {
		t := rec.ExpiresAt.UTC()
		rec.ExpiresAt = &t
	}
	if err := s.CreateKey(ctx, rec); err != nil {
		return CreatedKey{}, err
	}
	// Drop a cached "unknown key" for this hash, however unlikely.
	m.notify(Change{KeyHash: rec.Hash})
	return CreatedKey{KeyRecord: rec, Key: plaintext}, nil
}

// ListKeys lists an account's keys.
func (m storeManager) ListKeys(ctx context.Context, account string) ([]KeyRecord, error) {
	if account == "" {
		return nil, badInput("account", "is required")
	}
	keys, err := m.store.ListKeys(ctx, account)
	return keys, notFoundAs(err, "account", account)
}

// GetKey returns a key record.
func (m storeManager) GetKey(ctx context.Context, id string) (KeyRecord, error) {
	k, err := m.store.GetKey(ctx, id)
	return k, notFoundAs(err, "key", id)
}

// RevokeKey revokes a key. When it returns, the serving instance rejects
// the key (see storeManager).
func (m storeManager) RevokeKey(ctx context.Context, id string) (KeyRecord, error) {
	k, err := m.store.RevokeKey(ctx, id, m.now())
	if err != nil {
		return k, notFoundAs(err, "key", id)
	}
	m.notify(Change{KeyHash: k.Hash})
	return k, nil
}

// notFoundAs names what was not found in an ErrNotFound.
func notFoundAs(err error, what, id string) error {
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%s %q: %w", what, id, ErrNotFound)
	}
	return err
}
