package postscale

import (
	"context"

	"errors"
	"fmt"
	"github.com/caddyserver/caddy/v2"
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

// CreatedKey is the answer to a key creation or roll: the record and,
// this once, the key itself.
type CreatedKey struct {
	KeyRecord
	Key string `json:"key"`
	// Replaces is the rolled key, with its new expiry (rolls only).
	Replaces *KeyRecord `json:"replaces,omitempty"`
}

// AccountUpdate changes an account; absent fields keep their value.
type AccountUpdate struct {
	Plan  *string  `json:"plan,omitempty"`
	Rate  *float64 `json:"rate,omitempty"`
	Burst *int     `json:"burst,omitempty"`
}

// RollRequest rolls a key: the old key keeps working for ExpiresIn (a Go
// duration such as "24h"; default 24h; "0s" ends it at once), then answers
// expired_api_key.
type RollRequest struct {
	ExpiresIn string `json:"expires_in,omitempty"`
}

// DefaultRollGrace is how long a rolled key keeps working by default.
const DefaultRollGrace = 24 * time.Hour

// ImportRequest imports keys of the legacy system.
type ImportRequest struct {
	Keys []ImportedKey `json:"keys"`
}

// ImportedKey is one legacy key: its plaintext (hashed at once, never
// stored) or the SHA-256 of it in hex.
type ImportedKey struct {
	Account string   `json:"account"`
	Name    string   `json:"name"`
	Mode    string   `json:"mode,omitempty"` // required with hash; with key, must match its prefix
	Key     string   `json:"key,omitempty"`
	Hash    string   `json:"hash,omitempty"`
	Scopes  []string `json:"scopes,omitempty"`
}

// ImportResult lists the records an import created.
type ImportResult struct {
	Imported []KeyRecord `json:"imported"`
}

// maxImport bounds one import request.
const maxImport = 10000

// Manager is what the admin API serves and the CLI calls: the management
// operations on accounts and keys. Errors are *InputError for bad input,
// or wrap ErrNotFound or ErrExists; anything else means the store (or the
// server) could not answer.
type Manager interface {
	CreateAccount(ctx context.Context, req AccountRequest) (Account, error)
	GetAccount(ctx context.Context, id string) (Account, error)
	UpdateAccount(ctx context.Context, id string, req AccountUpdate) (Account, error)
	CreateKey(ctx context.Context, req KeyRequest) (CreatedKey, error)
	ListKeys(ctx context.Context, account string) ([]KeyRecord, error)
	GetKey(ctx context.Context, id string) (KeyRecord, error)
	RevokeKey(ctx context.Context, id string) (KeyRecord, error)
	RollKey(ctx context.Context, id string, req RollRequest) (CreatedKey, error)
	ImportKeys(ctx context.Context, req ImportRequest) (ImportResult, error)
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
	if err := checkLimits(&req); err != nil {
		return Account{}, err
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

// UpdateAccount changes an account's plan or limits. Running gateways apply
// it from the account's next request on.
func (m storeManager) UpdateAccount(ctx context.Context, id string, req AccountUpdate) (Account, error) {
	updated, err := m.store.UpdateAccount(ctx, id, func(a Account) (Account, error) {
		next := AccountRequest{ID: id, Plan: a.Plan, Rate: a.Rate, Burst: a.Burst}
		if req.Plan != nil && *req.Plan != a.Plan {
			next.Plan = *req.Plan
			if next.Plan != "enterprise" {
				next.Rate, next.Burst = 0, 0 // custom limits belong to enterprise
			} else if req.Rate == nil {
				next.Burst = 0
			}
		}
		if req.Rate != nil {
			next.Rate = *req.Rate
			if req.Burst == nil {
				next.Burst = 0 // back to the default: the new rate
			}
		}
		if req.Burst != nil {
			next.Burst = *req.Burst
		}
		if err := checkLimits(&next); err != nil {
			return a, err
		}
		a.Plan, a.Rate, a.Burst = next.Plan, next.Rate, next.Burst
		return a, nil
	})
	if err != nil {
		return updated, notFoundAs(err, "account", id)
	}
	m.notify(Change{Account: id})
	return updated, nil
}

// checkLimits validates an account's plan, rate and burst, and fills in
// the default burst of an enterprise account.
func checkLimits(req *AccountRequest) error {
	if !planNamePattern.MatchString(req.Plan) {
		return badInput("plan", "must name a plan: 1 to 32 characters of a-z, 0-9, _ and - (e.g. starter, growth, scale, enterprise)")
	}
	if req.Plan == "enterprise" {
		p := Plan{Rate: req.Rate, Burst: req.Burst}
		if field, why := p.problem(); field != "" {
			return badInput(field, "an enterprise account's %s %s", field, why)
		}
		p, _ = p.withDefaultBurst()
		req.Burst = p.Burst
	} else if req.Rate != 0 || req.Burst != 0 {
		return badInput("rate", "custom rate and burst are for the enterprise plan only; plan %q has its own", req.Plan)
	}
	return nil
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
	name, err := checkKeyName("name", req.Name)
	if err != nil {
		return CreatedKey{}, err
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
	if err := checkScopes("scopes", req.Scopes); err != nil {
		return CreatedKey{}, err
	}
	rec, plaintext, err := issueKey(req.Account, name, mode, req.Scopes, req.ExpiresAt, now)
	if err != nil {
		return CreatedKey{}, err
	}
	// The store refuses a key of an unknown account (ErrNotFound).
	if err := s.CreateKey(ctx, rec); err != nil {
		return CreatedKey{}, notFoundAs(err, "account", req.Account)
	}
	// Drop a cached "unknown key" for this hash, however unlikely.
	m.notify(Change{KeyHash: rec.Hash})
	return CreatedKey{KeyRecord: rec, Key: plaintext}, nil
}

// checkKeyName returns a key's name trimmed, or an input error on field.
func checkKeyName(field, name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" || len([]rune(name)) > maxKeyNameLen || strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return "", badInput(field, "is required: say what the key is for (e.g. \"production server\"), in at most %d characters without control characters", maxKeyNameLen)
	}
	return name, nil
}

// checkScopes checks a key's scopes, or returns an input error on field.
func checkScopes(field string, scopes []string) error {
	for _, sc := range scopes {
		if !validScope(sc) {
			return badInput(field, "a scope is 1 to 64 characters of printable ASCII without spaces, quotes or backslashes, e.g. emails:send")
		}
	}
	return nil
}

// issueKey makes a new key and its record.
func issueKey(account, name string, mode Mode, scopes []string, expires *time.Time, now time.Time) (KeyRecord, string, error) {
	plaintext, err := NewKey(mode)
	if err != nil {
		return KeyRecord{}, "", err
	}
	id, err := newID("key_")
	if err != nil {
		return KeyRecord{}, "", err
	}
	rec := KeyRecord{
		ID:        id,
		Account:   account,
		Name:      name,
		Mode:      mode,
		Scopes:    scopes,
		Redacted:  Redact(plaintext),
		CreatedAt: now.UTC(),
		Hash:      HashKey(plaintext),
	}
	if expires != nil {
		t := expires.UTC()
		rec.ExpiresAt = &t
	}
	return rec, plaintext, nil
}

// RollKey issues a replacement for a key, with the same account, name,
// mode and scopes; the old key keeps working for the grace period, with
// Deprecation and Sunset on its responses, then expires.
func (m storeManager) RollKey(ctx context.Context, id string, req RollRequest) (CreatedKey, error) {
	now := m.now()
	grace := DefaultRollGrace
	if req.ExpiresIn != "" {
		d, err := caddy.ParseDuration(req.ExpiresIn)
		if err != nil || d < 0 {
			return CreatedKey{}, badInput("expires_in", "must be a duration such as \"24h\" or \"30m\" (0s ends the old key at once)")
		}
		grace = d
	}
	old, err := m.store.GetKey(ctx, id)
	if err != nil {
		return CreatedKey{}, notFoundAs(err, "key", id)
	}
	switch {
	case old.RevokedAt != nil:
		return CreatedKey{}, fmt.Errorf("key %q is revoked and cannot be rolled: %w", id, ErrConflict)
	case old.ExpiresAt != nil && !old.ExpiresAt.After(now):
		return CreatedKey{}, fmt.Errorf("key %q has expired and cannot be rolled: %w", id, ErrConflict)
	}
	rec, plaintext, err := issueKey(old.Account, old.Name, old.Mode, old.Scopes, nil, now)
	if err != nil {
		return CreatedKey{}, err
	}
	updated, err := m.store.RollKey(ctx, id, rec, now.Add(grace))
	if err != nil {
		return CreatedKey{}, notFoundAs(err, "key", id)
	}
	m.notify(Change{KeyHash: old.Hash})
	m.notify(Change{KeyHash: rec.Hash})
	return CreatedKey{KeyRecord: rec, Key: plaintext, Replaces: &updated}, nil
}

// ImportKeys stores keys of the legacy system, all or none. Plaintext keys
// are hashed here and never stored; imported keys authenticate only with
// legacy_keys on.
func (m storeManager) ImportKeys(ctx context.Context, req ImportRequest) (ImportResult, error) {
	now := m.now()
	if len(req.Keys) == 0 || len(req.Keys) > maxImport {
		return ImportResult{}, badInput("keys", "must list 1 to %d keys", maxImport)
	}
	recs := make([]KeyRecord, len(req.Keys))
	accounts := map[string]bool{}
	for i, in := range req.Keys {
		field := func(name string) string { return fmt.Sprintf("keys[%d].%s", i, name) }
		name, err := checkKeyName(field("name"), in.Name)
		if err != nil {
			return ImportResult{}, err
		}
		if err := checkScopes(field("scopes"), in.Scopes); err != nil {
			return ImportResult{}, err
		}
		rec := KeyRecord{Account: in.Account, Name: name, Scopes: in.Scopes, Legacy: true, CreatedAt: now.UTC()}
		var mode Mode
		if in.Mode != "" {
			var err error
			if mode, err = ParseMode(in.Mode); err != nil {
				return ImportResult{}, badInput(field("mode"), "must be \"live\" or \"test\"")
			}
		}
		switch {
		case (in.Key == "") == (in.Hash == ""):
			return ImportResult{}, badInput(field("key"), "give the key or its SHA-256 hash (\"hash\"), not both")
		case in.Key != "":
			k, err := ParseKey(in.Key, true)
			if err != nil {
				return ImportResult{}, badInput(field("key"), "is not a ps_live_… or ps_test_… key")
			}
			if mode != 0 && mode != k.Mode {
				return ImportResult{}, badInput(field("mode"), "does not match the key's prefix")
			}
			mode, rec.Hash, rec.Redacted = k.Mode, k.Hash, Redact(in.Key)
		default:
			if mode == 0 {
				return ImportResult{}, badInput(field("mode"), "is required with a hash")
			}
			h, err := ParseHashHex(in.Hash)
			if err != nil {
				return ImportResult{}, badInput(field("hash"), "must be the SHA-256 of the key as 64 hex digits")
			}
			rec.Hash, rec.Redacted = h, "ps_"+mode.String()+"_…"
		}
		rec.Mode = mode
		id, err := newID("key_")
		if err != nil {
			return ImportResult{}, err
		}
		rec.ID = id
		recs[i] = rec
		accounts[in.Account] = true
	}
	for a := range accounts {
		if _, err := m.store.GetAccount(ctx, a); err != nil {
			return ImportResult{}, notFoundAs(err, "account", a)
		}
	}
	if err := m.store.CreateKeys(ctx, recs); err != nil {
		if errors.Is(err, ErrExists) {
			return ImportResult{}, fmt.Errorf("a key in the import is already in the store: %w", ErrExists)
		}
		return ImportResult{}, err
	}
	for _, r := range recs {
		m.notify(Change{KeyHash: r.Hash})
	}
	return ImportResult{Imported: recs}, nil
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
