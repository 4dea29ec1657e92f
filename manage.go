package postscale

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/caddyserver/caddy/v2"
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
	// keyIDPattern is the form of every key id newID makes.
	keyIDPattern = regexp.MustCompile(`^key_[0-9A-Za-z]{1,64}$`)
)

// The times a request may set. Beyond them a store could not keep the time
// exactly (SQLite keeps nanoseconds since 1970 in 64 bits, which end in
// April 2262), so they are refused rather than stored wrong.
var (
	// maxExpiresAt bounds expires_at: a key expires before 2200.
	maxExpiresAt = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

// maxRollGrace bounds a roll's expires_in: the old key of a roll works for
// at most a year.
const maxRollGrace = 365 * 24 * time.Hour

// maxKeyNameLen bounds a key's name, in characters.
const maxKeyNameLen = 200

// AccountRequest creates an account.
type AccountRequest struct {
	ID    string  `json:"id"`
	Plan  string  `json:"plan"`
	Rate  float64 `json:"rate,omitempty"`
	Burst int     `json:"burst,omitempty"`
	// Quota is the account's own quota, over its plan's (optional).
	Quota *Quota `json:"quota,omitempty"`
	// QuotaAnchor starts the account's quota periods (its billing day),
	// an RFC 3339 time from 1970 to 2199. Default: the account's creation.
	QuotaAnchor *time.Time `json:"quota_anchor,omitempty"`
}

// Optional is a field of an update that may be absent (Set false: keep
// the value), null (Set, Value nil: back to the default) or a value.
type Optional[T any] struct {
	Set   bool
	Value *T
}

// UnmarshalJSON reads null or a value.
func (o *Optional[T]) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Value = nil
		return nil
	}
	o.Value = new(T)
	return json.Unmarshal(b, o.Value)
}

// MarshalJSON writes null or the value.
func (o Optional[T]) MarshalJSON() ([]byte, error) { return json.Marshal(o.Value) }

// minQuotaAnchor and maxExpiresAt bound quota_anchor.
var minQuotaAnchor = time.Unix(0, 0)

// checkQuota validates an account's own quota and anchor.
func checkQuota(q *Quota, anchor *time.Time) error {
	if q != nil {
		if err := q.check(); err != nil {
			return badInput("quota", "%v", err)
		}
	}
	if anchor != nil && (anchor.Before(minQuotaAnchor) || !anchor.Before(maxExpiresAt)) {
		return badInput("quota_anchor", "must be from 1970-01-01T00:00:00Z to before %s, got %s", maxExpiresAt.Format(time.RFC3339), anchor.UTC().Format(time.RFC3339))
	}
	return nil
}

// KeyRequest creates a key. ExpiresAt, when set, must be in the future and
// before 2200-01-01T00:00:00Z; in JSON it is an RFC 3339 time (see
// UnmarshalJSON).
type KeyRequest struct {
	Account   string     `json:"account"`
	Name      string     `json:"name"`
	Mode      string     `json:"mode"`
	Scopes    []string   `json:"scopes,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// UnmarshalJSON reads a KeyRequest, refusing fields it does not have, with
// expires_at read by parseTime: a time that is not RFC 3339 is an error
// naming expires_at, and leap seconds and offsets of 24 hours or more are
// refused rather than misread.
func (r *KeyRequest) UnmarshalJSON(b []byte) error {
	type plain KeyRequest
	var in struct {
		plain
		ExpiresAt json.RawMessage `json:"expires_at"` // shadows plain's
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return err
	}
	*r = KeyRequest(in.plain)
	r.ExpiresAt = nil
	if len(in.ExpiresAt) == 0 || string(in.ExpiresAt) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(in.ExpiresAt, &s); err != nil {
		return badInput("expires_at", "must be an RFC 3339 time in a JSON string, such as \"2030-01-31T00:00:00Z\"")
	}
	t, err := parseTime("expires_at", s)
	if err != nil {
		return err
	}
	r.ExpiresAt = &t
	return nil
}

// parseTime reads an RFC 3339 time such as 2030-01-31T00:00:00Z or
// 2030-01-31T09:30:00+05:30 (lower-case t and z too, as RFC 3339 allows),
// or returns an input error on field that never quotes s. A leap second
// (23:59:60), which Go's time cannot hold, and a UTC offset of 24 hours or
// more, which RFC 3339 does not have, are refused.
func parseTime(field, s string) (time.Time, error) {
	b := []byte(s)
	if len(b) > 10 && b[10] == 't' {
		b[10] = 'T'
	}
	if n := len(b); n > 0 && b[n-1] == 'z' {
		b[n-1] = 'Z'
	}
	if len(b) >= 19 && b[16] == ':' && b[17] == '6' && b[18] == '0' {
		return time.Time{}, badInput(field, "has the second 60 (a leap second), which cannot be stored; use :59 or the next minute")
	}
	t, err := time.Parse(time.RFC3339, string(b))
	if err != nil {
		return time.Time{}, badInput(field, "must be an RFC 3339 time such as 2030-01-31T00:00:00Z or 2030-01-31T09:30:00+05:30")
	}
	if _, off := t.Zone(); off <= -24*60*60 || off >= 24*60*60 {
		return time.Time{}, badInput(field, "has a UTC offset of 24 hours or more; RFC 3339 offsets are -23:59 to +23:59")
	}
	return t, nil
}

// checkExpiresAt refuses an expiry that is not in the future or that is
// not before maxExpiresAt.
func checkExpiresAt(field string, t, now time.Time) error {
	switch {
	case !t.After(now):
		return badInput(field, "must be in the future: %s is not (to stop a key now, revoke it)", t.UTC().Format(time.RFC3339Nano))
	case !t.Before(maxExpiresAt):
		return badInput(field, "must be before %s, got %s; for a key that never expires, leave expires_at out", maxExpiresAt.Format(time.RFC3339), t.UTC().Format(time.RFC3339))
	}
	return nil
}

// CreatedKey is the answer to a key creation or roll: the record and,
// this once, the key itself.
type CreatedKey struct {
	KeyRecord
	Key string `json:"key"`
	// Replaces is the rolled key, with its new expiry (rolls only).
	Replaces *KeyRecord `json:"replaces,omitempty"`
}

// AccountUpdate changes an account; absent fields keep their value. A
// null quota goes back to the plan's; a null quota_anchor to the
// account's creation.
type AccountUpdate struct {
	Plan        *string             `json:"plan,omitempty"`
	Rate        *float64            `json:"rate,omitempty"`
	Burst       *int                `json:"burst,omitempty"`
	Quota       Optional[Quota]     `json:"quota,omitzero"`
	QuotaAnchor Optional[time.Time] `json:"quota_anchor,omitzero"`
}

// RollRequest rolls a key: the old key keeps working for ExpiresIn (a
// duration such as "24h", "30m" or "7d", from "0s", which ends it at once,
// to "365d"; default 24h), then answers expired_api_key.
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

// RevokeRequest revokes a key by the key itself (POST
// /postscale/keys/revoke), for a leaked key whose id nobody knows: the key
// travels in the body, never in a URL.
type RevokeRequest struct {
	Key string `json:"key"`
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
	// RevokeByKey revokes the key given itself, not its id; its errors
	// show the key's redacted form at most.
	RevokeByKey(ctx context.Context, key string) (KeyRecord, error)
	RollKey(ctx context.Context, id string, req RollRequest) (CreatedKey, error)
	ImportKeys(ctx context.Context, req ImportRequest) (ImportResult, error)
	AccountUsage(ctx context.Context, id string) (AccountUsage, error)
}

// storeManager runs the management operations against a store. The admin
// API uses it with changed set to its keyring's invalidation, so that the
// serving instance drops what it changed before it answers; the CLI uses it
// on its own when no server runs.
type storeManager struct {
	store   Store
	now     func() time.Time
	changed func(Change) // may be nil
	// plans are the plan names accounts may be put on, sorted: those the
	// postscale handlers define, and enterprise. Nil means they are not
	// known here (the CLI straight on a store, without a config), and a
	// plan is not checked.
	plans []string
	// planQuotas are the quotas of the plans that have one, for the usage
	// report; nil when not known here.
	planQuotas map[string]Quota
}

func (m storeManager) notify(c Change) {
	if m.changed != nil {
		m.changed(c)
	}
}

// CreateAccount validates req and stores the account.
func (m storeManager) CreateAccount(ctx context.Context, req AccountRequest) (Account, error) {
	s, now := m.store, m.now()
	if err := noKey("id", "an account id", req.ID); err != nil {
		return Account{}, err
	}
	if !accountIDPattern.MatchString(req.ID) {
		return Account{}, badInput("id", "must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
	}
	if err := checkLimits(&req); err != nil {
		return Account{}, err
	}
	if err := checkQuota(req.Quota, req.QuotaAnchor); err != nil {
		return Account{}, err
	}
	if err := m.checkPlanKnown(req.Plan); err != nil {
		return Account{}, err
	}
	a := Account{ID: req.ID, Plan: req.Plan, Rate: req.Rate, Burst: req.Burst, Quota: req.Quota, CreatedAt: now.UTC()}
	if req.QuotaAnchor != nil {
		anchor := req.QuotaAnchor.UTC()
		a.QuotaAnchor = &anchor
	}
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
	if err := checkAccountRef("id", id); err != nil {
		return Account{}, err
	}
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
		if req.Plan != nil {
			if err := m.checkPlanKnown(next.Plan); err != nil {
				return a, err
			}
		}
		a.Plan, a.Rate, a.Burst = next.Plan, next.Rate, next.Burst
		if req.Quota.Set {
			a.Quota = req.Quota.Value
		}
		if req.QuotaAnchor.Set {
			a.QuotaAnchor = nil
			if req.QuotaAnchor.Value != nil {
				anchor := req.QuotaAnchor.Value.UTC()
				a.QuotaAnchor = &anchor
			}
		}
		if err := checkQuota(a.Quota, a.QuotaAnchor); err != nil {
			return a, err
		}
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
	if err := noKey("plan", "a plan name", req.Plan); err != nil {
		return err
	}
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

// checkPlanKnown refuses a plan that is not in m.plans, naming the plans
// that are; with m.plans nil it checks nothing.
func (m storeManager) checkPlanKnown(plan string) error {
	if m.plans == nil || slices.Contains(m.plans, plan) {
		return nil
	}
	return badInput("plan", "no postscale handler defines the plan %q, so every request of an account on it would get 503; the plans are %s (enterprise with its own rate)",
		plan, strings.Join(m.plans, ", "))
}

// AccountUsage is an account's use of its current quota period and its
// requests of the last 48 hours.
type AccountUsage struct {
	Account string `json:"account"`
	Plan    string `json:"plan"`
	// Quota is the quota that applies (the account's own, else its
	// plan's), or null for none.
	Quota       *Quota    `json:"quota"`
	QuotaAnchor time.Time `json:"quota_anchor"`
	// PeriodStart and PeriodEnd bound the current period: the quota's, or
	// without one the month from the anchor.
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	Live        int64     `json:"live"`
	Test        int64     `json:"test"`
	// Remaining is what the quota has left, or null without a quota.
	Remaining *int64 `json:"remaining"`
	// Hours are the last 48 hours, oldest first, the current one last.
	Hours []HourUsage `json:"hours"`
}

// AccountUsage reports an account's usage at m.now.
func (m storeManager) AccountUsage(ctx context.Context, id string) (AccountUsage, error) {
	if err := checkAccountRef("id", id); err != nil {
		return AccountUsage{}, err
	}
	a, err := m.store.GetAccount(ctx, id)
	if err != nil {
		return AccountUsage{}, notFoundAs(err, "account", id)
	}
	now := m.now().UTC()
	u := AccountUsage{Account: a.ID, Plan: a.Plan, Quota: a.Quota, QuotaAnchor: a.anchor().UTC()}
	if u.Quota == nil {
		if q, ok := m.planQuotas[a.Plan]; ok {
			u.Quota = &q
		}
	}
	period := PeriodMonth
	if u.Quota != nil {
		period = u.Quota.Period
	}
	u.PeriodStart, u.PeriodEnd = periodAt(u.QuotaAnchor, period, now)
	thisHour := now.Truncate(time.Hour)
	since := thisHour.Add(-(usageHours - 1) * time.Hour)
	p, hours, err := m.store.AccountUsage(ctx, id, period, u.PeriodStart, since)
	if err != nil {
		return AccountUsage{}, notFoundAs(err, "account", id)
	}
	u.Live, u.Test = p.Live, p.Test
	if u.Quota != nil {
		left := max(0, u.Quota.Count-u.Live)
		u.Remaining = &left
	}
	byHour := make(map[int64]HourUsage, len(hours))
	for _, h := range hours {
		byHour[h.Hour.Unix()] = h
	}
	u.Hours = make([]HourUsage, usageHours)
	for i := range u.Hours {
		at := since.Add(time.Duration(i) * time.Hour)
		h := byHour[at.Unix()]
		h.Hour = at
		u.Hours[i] = h
	}
	return u, nil
}

// Bounds of a page of accounts.
const (
	DefaultAccountPage = 50
	MaxAccountPage     = 500
)

// AccountPage is one page of accounts, in id order. Next is the id to ask
// for the following page after, or empty on the last page.
type AccountPage struct {
	Accounts []Account `json:"accounts"`
	Next     string    `json:"next"`
}

// ListAccounts returns up to limit accounts (DefaultAccountPage when 0,
// at most MaxAccountPage) whose ids come after after, in byte order; with
// prefix set, only those whose ids start with it.
func (m storeManager) ListAccounts(ctx context.Context, after, prefix string, limit int) (AccountPage, error) {
	switch {
	case limit == 0:
		limit = DefaultAccountPage
	case limit < 1 || limit > MaxAccountPage:
		return AccountPage{}, badInput("limit", "must be 1 to %d", MaxAccountPage)
	}
	if after != "" {
		if err := checkAccountRef("after", after); err != nil {
			return AccountPage{}, err
		}
	}
	from := after
	if prefix != "" {
		if err := checkAccountRef("q", prefix); err != nil {
			return AccountPage{}, err
		}
		// The ids that start with prefix follow one another in byte
		// order, from prefix itself on. Ids are made of bytes 0x2D to
		// 0x7A only, so the string made of prefix with its last byte one
		// less, then 0x7F, comes after every id below prefix and before
		// prefix: starting after it starts at the first match.
		start := prefix[:len(prefix)-1] + string(prefix[len(prefix)-1]-1) + "\x7f"
		if from < start {
			from = start
		}
	}
	// One more than asked for tells whether another page follows.
	accounts, err := m.store.ListAccounts(ctx, from, limit+1)
	if err != nil {
		return AccountPage{}, err
	}
	if prefix != "" {
		for i, a := range accounts {
			if !strings.HasPrefix(a.ID, prefix) {
				accounts = accounts[:i]
				break
			}
		}
	}
	page := AccountPage{Accounts: accounts}
	if len(accounts) > limit {
		page.Accounts = accounts[:limit]
		page.Next = accounts[limit-1].ID
	}
	return page, nil
}

// GetAccount returns an account.
func (m storeManager) GetAccount(ctx context.Context, id string) (Account, error) {
	if err := checkAccountRef("id", id); err != nil {
		return Account{}, err
	}
	a, err := m.store.GetAccount(ctx, id)
	return a, notFoundAs(err, "account", id)
}

// CreateKey validates req, issues a key and stores its record.
func (m storeManager) CreateKey(ctx context.Context, req KeyRequest) (CreatedKey, error) {
	s, now := m.store, m.now()
	if req.Account == "" {
		return CreatedKey{}, badInput("account", "is required")
	}
	if err := checkAccountRef("account", req.Account); err != nil {
		return CreatedKey{}, err
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
	if req.ExpiresAt != nil {
		if err := checkExpiresAt("expires_at", *req.ExpiresAt, now); err != nil {
			return CreatedKey{}, err
		}
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
	if err := noKey(field, "a key's name", name); err != nil {
		return "", err
	}
	if name == "" || len([]rune(name)) > maxKeyNameLen || strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return "", badInput(field, "is required: say what the key is for (e.g. \"production server\"), in at most %d characters without control characters", maxKeyNameLen)
	}
	return name, nil
}

// maxScopes bounds the scopes of one key.
const maxScopes = 32

// checkScopes checks a key's scopes, or returns an input error on field.
func checkScopes(field string, scopes []string) error {
	if len(scopes) > maxScopes {
		return badInput(field, "a key has at most %d scopes", maxScopes)
	}
	for _, sc := range scopes {
		if err := noKey(field, "a scope", sc); err != nil {
			return err
		}
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
	if err := checkKeyRef("id", id); err != nil {
		return CreatedKey{}, err
	}
	grace, err := rollGrace(req.ExpiresIn)
	if err != nil {
		return CreatedKey{}, err
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

// rollGrace reads a roll's expires_in: DefaultRollGrace when empty, else a
// duration from 0s to maxRollGrace.
func rollGrace(s string) (time.Duration, error) {
	if s == "" {
		return DefaultRollGrace, nil
	}
	d, err := caddy.ParseDuration(s)
	switch {
	case err != nil:
		return 0, badInput("expires_in", "must be a duration such as \"24h\", \"30m\" or \"7d\" (0s ends the old key at once)")
	case d < 0:
		return 0, badInput("expires_in", "must not be negative: 0s ends the old key at once")
	case d > maxRollGrace:
		return 0, badInput("expires_in", "must be at most 365d (8760h), got %s", d)
	}
	return d, nil
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
	first := make(map[[sha256.Size]byte]int, len(req.Keys)) // hash -> index in the import
	for i, in := range req.Keys {
		field := func(name string) string { return fmt.Sprintf("keys[%d].%s", i, name) }
		if err := checkAccountRef(field("account"), in.Account); err != nil {
			return ImportResult{}, err
		}
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
		if j, dup := first[rec.Hash]; dup {
			return ImportResult{}, badInput(field(keyField(in)), "is the same key as keys[%d]: each key can be imported once", j)
		}
		first[rec.Hash] = i
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
			return ImportResult{}, m.importClash(ctx, req.Keys, recs)
		}
		return ImportResult{}, err
	}
	for _, r := range recs {
		m.notify(Change{KeyHash: r.Hash})
	}
	return ImportResult{Imported: recs}, nil
}

// keyField is the field that gives an imported key: key or hash.
func keyField(in ImportedKey) string {
	if in.Key != "" {
		return "key"
	}
	return "hash"
}

// importClash names the first key of a refused import that the store
// already holds, by its place in the import and the id of the record it
// clashes with, never by the key itself.
func (m storeManager) importClash(ctx context.Context, in []ImportedKey, recs []KeyRecord) error {
	for i, rec := range recs {
		old, _, err := m.store.LookupKey(ctx, rec.Hash)
		if err != nil {
			continue
		}
		return fmt.Errorf("keys[%d].%s: is already in the store, as %s of account %q; nothing was imported (an import is all or none): %w",
			i, keyField(in[i]), old.ID, old.Account, ErrExists)
	}
	return fmt.Errorf("a key in the import is already in the store; nothing was imported (an import is all or none): %w", ErrExists)
}

// ListKeys lists an account's keys.
func (m storeManager) ListKeys(ctx context.Context, account string) ([]KeyRecord, error) {
	if account == "" {
		return nil, badInput("account", "is required")
	}
	if err := checkAccountRef("account", account); err != nil {
		return nil, err
	}
	keys, err := m.store.ListKeys(ctx, account)
	return keys, notFoundAs(err, "account", account)
}

// GetKey returns a key record.
func (m storeManager) GetKey(ctx context.Context, id string) (KeyRecord, error) {
	if err := checkKeyRef("id", id); err != nil {
		return KeyRecord{}, err
	}
	k, err := m.store.GetKey(ctx, id)
	return k, notFoundAs(err, "key", id)
}

// RevokeKey revokes a key. When it returns, the serving instance rejects
// the key (see storeManager).
func (m storeManager) RevokeKey(ctx context.Context, id string) (KeyRecord, error) {
	if err := checkKeyRef("id", id); err != nil {
		return KeyRecord{}, err
	}
	k, err := m.store.RevokeKey(ctx, id, m.now())
	if err != nil {
		return k, notFoundAs(err, "key", id)
	}
	m.notify(Change{KeyHash: k.Hash})
	return k, nil
}

// RevokeByKey revokes the key given itself (a leaked key whose id nobody
// knows), issued or legacy, whether or not legacy keys are accepted. It
// finds the key by its hash, as the gateway does; its errors show the
// key's redacted form at most.
func (m storeManager) RevokeByKey(ctx context.Context, key string) (KeyRecord, error) {
	key = strings.TrimSpace(key)
	if key == "" {
		return KeyRecord{}, badInput("key", "is required: the key to revoke, ps_live_… or ps_test_…")
	}
	k, err := ParseKey(key, true)
	switch {
	case errors.Is(err, errBadChecksum):
		return KeyRecord{}, badInput("key", "%s has the form of an issued key but its checksum does not match: it was mistyped or cut short", Redact(key))
	case err != nil:
		return KeyRecord{}, badInput("key", "is not a ps_live_… or ps_test_… key")
	}
	rec, _, err := m.store.LookupKey(ctx, k.Hash)
	if errors.Is(err, ErrNotFound) {
		return KeyRecord{}, fmt.Errorf("key %s: no key in the store matches it: %w", Redact(key), ErrNotFound)
	}
	if err != nil {
		return KeyRecord{}, err
	}
	return m.RevokeKey(ctx, rec.ID)
}

// notFoundAs names what was not found in an ErrNotFound. The id has been
// checked (checkAccountRef, checkKeyRef), so it is not a key.
func notFoundAs(err error, what, id string) error {
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%s %q: %w", what, id, ErrNotFound)
	}
	return err
}

// checkAccountRef refuses, without repeating it, an account id that looks
// like an API key or that no account can have.
func checkAccountRef(field, id string) error {
	if err := noKey(field, "an account id", id); err != nil {
		return err
	}
	if !accountIDPattern.MatchString(id) {
		return badInput(field, "is not an account id: account ids are 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
	}
	return nil
}

// checkKeyRef refuses, without repeating it, a key id that looks like an
// API key or that no key can have.
func checkKeyRef(field, id string) error {
	if err := noKey(field, "a key id (key_…)", id); err != nil {
		return err
	}
	if !keyIDPattern.MatchString(id) {
		return badInput(field, "is not a key id: key ids are key_ followed by letters and digits, as key list shows them")
	}
	return nil
}

// noKey refuses a value that holds an API key where what (an id, a name)
// belongs, showing only the key's redacted form.
func noKey(field, what, v string) error {
	if start, end := nextKey(v, 0); start >= 0 {
		return keyWhereIDBelongs(field, what, Redact(v[start:end]))
	}
	return nil
}

// keyWhereIDBelongs is the error for an API key given where what belongs.
func keyWhereIDBelongs(field, what, redacted string) error {
	return badInput(field, "holds an API key (%s), not %s; it is not repeated here. A key never goes in a URL, an id or a name: "+
		"to revoke a key by the key itself, POST {\"key\": \"…\"} to /postscale/keys/revoke, or run caddy postscale key revoke --key - and give the key on stdin",
		redacted, what)
}

// nextKey finds, from byte from on, the first thing in s shaped like an
// API key: ps_live_ or ps_test_ at the start of s or after a character
// that is not a letter or digit, with whatever key characters follow (so
// a legacy key, or one cut short or mistyped, counts too, while an id
// such as ops_test_team does not). It returns its start and end, or -1,
// -1.
func nextKey(s string, from int) (start, end int) {
	for i := from; i+len("ps_live_") <= len(s); i++ {
		if s[i] != 'p' || i > 0 && isAlnum(s[i-1]) {
			continue
		}
		if rest := s[i:]; strings.HasPrefix(rest, "ps_live_") || strings.HasPrefix(rest, "ps_test_") {
			end := i + len("ps_live_")
			for end < len(s) && isLegacyBody(s[end:end+1]) {
				end++
			}
			return i, end
		}
	}
	return -1, -1
}

// scrubKeys replaces everything in s shaped like an API key (see nextKey)
// with its redacted form, leaving redacted forms as they are: the last
// defence of an error message.
func scrubKeys(s string) string {
	start, end := nextKey(s, 0)
	if start < 0 {
		return s
	}
	var b strings.Builder
	last := 0
	for start >= 0 {
		b.WriteString(s[last:start])
		if end-start == len("ps_live_") && strings.HasPrefix(s[end:], "…") {
			b.WriteString(s[start:end]) // a redacted form already
		} else {
			b.WriteString(Redact(s[start:end]))
		}
		last = end
		start, end = nextKey(s, end)
	}
	b.WriteString(s[last:])
	return b.String()
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z'
}
