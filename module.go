package postscale

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Handler authenticates requests by their bearer API key, tags them as
// live or test with the account and key they belong to, and hands them to
// the next handler (normally reverse_proxy). Nothing it has not verified
// goes on: every failure, including a store outage, ends the request here
// with the JSON error of SPEC §5.
//
// For the next handlers it sets the request headers Postscale-Mode,
// Postscale-Account-Id, Postscale-Key-Id and Postscale-Plan (dropping any
// the client sent), removes Authorization unless ForwardAuthorization is
// set, and sets the placeholders {postscale.mode}, {postscale.account_id},
// {postscale.key_id}, {postscale.plan}, {postscale.key_name} and
// {http.auth.user.id} (the key id).
type Handler struct {
	// ProtectRaw selects the requests that need a key, as Caddy request
	// matcher sets (any set may match); the Caddyfile fills it from the
	// directive's matcher. Other requests go on without a key, but never
	// with the Postscale-* headers a client sent. Default: every request
	// needs a key.
	ProtectRaw caddyhttp.RawMatcherSets `json:"protect,omitempty" caddy:"namespace=http.matchers"`

	// StoreRaw is the key store, a module in the postscale.stores
	// namespace. Default: the embedded SQLite store in Caddy's data
	// directory ({"backend": "sqlite"}).
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=postscale.stores inline_key=backend"`

	// CacheTTL is how long a key found in the store is served from memory.
	// Revocations and changes reach the cache sooner through the store's
	// change feed; the TTL bounds how long a key keeps working while the
	// store is unreachable. Default: 5m.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`

	// NegativeTTL is how long a key the store does not know is remembered
	// as unknown, so a flood of made-up keys does not reach the store.
	// Default: 30s.
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`

	// LookupTimeout bounds one store lookup of a key that is not cached;
	// past it the request gets 503 store_unavailable. Default: 1s.
	LookupTimeout caddy.Duration `json:"lookup_timeout,omitempty"`

	// FailedAuth throttles guessing per client address: past Count unknown
	// keys within Window, an address's keys that are not cached as valid
	// get 429 too_many_failed_attempts without a store lookup. The address
	// is the client IP as Caddy determines it (see the server's
	// trusted_proxies). Default: 100 per 1m; {"off": true} turns it off.
	FailedAuth *FailedAuth `json:"failed_auth,omitempty"`

	// QuotaCountsRaw selects which admitted live requests count towards
	// an account's quota, as request matcher sets (any set may match);
	// others are neither counted nor refused by the quota. Default: every
	// admitted live request counts.
	QuotaCountsRaw caddyhttp.RawMatcherSets `json:"quota_counts,omitempty" caddy:"namespace=http.matchers"`

	// LimiterRaw decides the rate limits, a module in the
	// postscale.limiters namespace. Default: buckets in this process
	// ({"backend": "local"}); {"backend": "redis"} shares them between
	// replicas.
	LimiterRaw json.RawMessage `json:"limiter,omitempty" caddy:"namespace=postscale.limiters inline_key=backend"`

	// LegacyKeys accepts imported keys of the old system, which carry no
	// checksum. Default: off (only issued keys with a valid checksum).
	LegacyKeys bool `json:"legacy_keys,omitempty"`

	// ForwardAuthorization keeps the Authorization header, with the key, on
	// the request to the backend. Default: off (it is removed).
	ForwardAuthorization bool `json:"forward_authorization,omitempty"`

	// Plans adds rate-limit plans or overrides the default ones (starter
	// 10/s, growth 100/s, scale 1000/s, burst = rate), by name. Accounts
	// with their own rate (enterprise) use that instead.
	Plans map[string]Plan `json:"plans,omitempty"`

	// RequireScopes says which scope which requests need. A key with
	// scopes gets 403 insufficient_scope for a request that a rule matches
	// unless it carries that rule's scope; a key without scopes is a
	// full-access key. Default: none (every key has full access).
	RequireScopes []ScopeRule `json:"require_scopes,omitempty"`

	protect     caddyhttp.MatcherSets
	quotaCounts caddyhttp.MatcherSets
	store       Store
	keys        *keyring
	lookup      lookupPolicy
	limiter     Limiter
	limits      map[string]*limit // by plan name, defaults merged in
	// guessLimit is FailedAuth with its defaults, or nil when it is off.
	guessLimit *FailedAuth
	logger     *zap.Logger

	// unknownPlans remembers plan names already logged as missing, so the
	// operator sees each once, not once per request.
	unknownPlans *sync.Map
}

// maxNegativeTTL bounds negative_ttl: an unknown key is looked up again
// at least once a day.
const maxNegativeTTL = 24 * time.Hour

// Defaults of the optional fields.
const (
	DefaultCacheTTL      = 5 * time.Minute
	DefaultNegativeTTL   = 30 * time.Second
	DefaultLookupTimeout = time.Second
)

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.postscale",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision loads the store and joins (or creates) its keyring.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.CacheTTL == 0 {
		h.CacheTTL = caddy.Duration(DefaultCacheTTL)
	}
	if h.NegativeTTL == 0 {
		h.NegativeTTL = caddy.Duration(DefaultNegativeTTL)
	}
	if h.LookupTimeout == 0 {
		h.LookupTimeout = caddy.Duration(DefaultLookupTimeout)
	}
	h.lookup = lookupPolicy{ttl: time.Duration(h.CacheTTL), negTTL: time.Duration(h.NegativeTTL), timeout: time.Duration(h.LookupTimeout)}
	var err error
	if h.protect, err = loadMatchers(ctx, h, "ProtectRaw", h.ProtectRaw); err != nil {
		return fmt.Errorf("protect: %w", err)
	}
	if h.quotaCounts, err = loadMatchers(ctx, h, "QuotaCountsRaw", h.QuotaCountsRaw); err != nil {
		return fmt.Errorf("quota_counts: %w", err)
	}
	var fa FailedAuth
	if h.FailedAuth != nil {
		fa = *h.FailedAuth
	}
	fa, err = fa.withDefaults()
	if err != nil {
		return err
	}
	if !fa.Off {
		h.guessLimit = &fa
	}
	if err := h.resolvePlans(); err != nil {
		return err
	}
	for i := range h.RequireScopes {
		if err := h.RequireScopes[i].provision(ctx); err != nil {
			return err
		}
	}
	if h.StoreRaw == nil {
		h.StoreRaw = json.RawMessage(`{"backend":"sqlite"}`)
	}
	mod, err := ctx.LoadModule(h, "StoreRaw")
	if err != nil {
		return fmt.Errorf("loading store: %w", err)
	}
	h.store = mod.(Store)
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	h.keys, err = loadKeyring(h.store, ctx.Logger().Named("keyring"))
	if err != nil {
		return err
	}
	if h.LimiterRaw == nil {
		h.LimiterRaw = json.RawMessage(`{"backend":"local"}`)
	}
	mod, err = ctx.LoadModule(h, "LimiterRaw")
	if err != nil {
		return fmt.Errorf("loading limiter: %w", err)
	}
	h.limiter = mod.(Limiter)
	if sb, ok := h.limiter.(storeBound); ok {
		if err := sb.bind(h.store.Identity()); err != nil {
			return fmt.Errorf("limiter: %w", err)
		}
	}
	app, err := ctx.App("postscale")
	if err != nil {
		return fmt.Errorf("loading postscale app: %w", err)
	}
	app.(*App).register(h.keys, h.Plans)
	if h.ForwardAuthorization {
		h.logger.Warn("forward_authorization is on: the backend receives every API key in plaintext")
	}
	if h.LegacyKeys {
		h.logger.Info("legacy_keys is on: imported keys without a checksum are accepted")
	}
	return nil
}

// resolvePlans checks Plans and merges them over DefaultPlans into the
// limits the request path uses.
func (h *Handler) resolvePlans() error {
	now := time.Now()
	h.unknownPlans = new(sync.Map)
	h.limits = make(map[string]*limit, len(DefaultPlans)+len(h.Plans))
	for _, plans := range []map[string]Plan{DefaultPlans, h.Plans} {
		for name, p := range plans {
			if !planNamePattern.MatchString(name) {
				return fmt.Errorf("plans: %q: a plan name is 1 to 32 characters of a-z, 0-9, _ and -", name)
			}
			p, err := p.withDefaultBurst()
			if err != nil {
				return fmt.Errorf("plans: %s: %w", name, err)
			}
			h.limits[name] = newLimit(name, p, now)
		}
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.CacheTTL < 0 {
		return fmt.Errorf("cache_ttl must not be negative, got %s", time.Duration(h.CacheTTL))
	}
	if h.NegativeTTL < 0 {
		return fmt.Errorf("negative_ttl must not be negative, got %s", time.Duration(h.NegativeTTL))
	}
	if h.LookupTimeout < 0 {
		return fmt.Errorf("lookup_timeout must not be negative, got %s", time.Duration(h.LookupTimeout))
	}
	if h.NegativeTTL > caddy.Duration(maxNegativeTTL) {
		return fmt.Errorf("negative_ttl must be at most %s, got %s", maxNegativeTTL, time.Duration(h.NegativeTTL))
	}
	return nil
}

// Cleanup releases this config's hold on the keyring. (Caddy cleans up
// the store and limiter modules itself.)
func (h *Handler) Cleanup() error {
	if h.keys == nil {
		return nil
	}
	_, err := keyrings.Delete(keyringKey(h.store))
	return err
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	dropClientHeaders(r.Header)
	dropClientTrailers(r)
	if h.protect != nil {
		protected, err := h.protect.AnyMatchWithError(r)
		if err != nil {
			metrics.early[outcomeInternal].Inc()
			return h.failed(w)
		}
		if !protected {
			return next.ServeHTTP(w, r)
		}
	}
	now := requestTime(r)
	e, o, retryAfter := h.check(r, now)
	if o != outcomeAdmitted {
		if e != nil {
			countOutcome(o, e.mode, e.plan)
		} else {
			metrics.early[o].Inc()
		}
		if e != nil && e.counters != nil {
			h.keys.hourCounterOf(e, now.UnixNano()).refused.Add(1)
		}
		closeUnreadBody(w, r)
		if retryAfter > 0 {
			w.Header()["Retry-After"] = []string{strconv.FormatInt(retryAfter, 10)}
		}
		writeRejection(w, o)
		return nil
	}

	// Header values are copied into one array per request: later handlers
	// may rewrite a header value in place, which must not reach the
	// cached entry.
	vals := new([headerVals]string)
	wh := w.Header()
	if e.deprecation != "" {
		wh["Deprecation"] = oneValue(vals, valDeprecation, e.deprecation)
		wh["Sunset"] = oneValue(vals, valSunset, e.sunset)
	}
	if len(e.scopes) > 0 && len(h.RequireScopes) > 0 {
		rule, err := missingScope(h.RequireScopes, e.scopes, r)
		if err != nil {
			countOutcome(outcomeInternal, e.mode, e.plan)
			return h.failed(w)
		}
		if rule != nil {
			countOutcome(outcomeForbidden, e.mode, e.plan)
			h.keys.hourCounterOf(e, now.UnixNano()).refused.Add(1)
			rule.rejection.write(w)
			return nil
		}
	}

	l := e.custom
	if l == nil {
		if l = h.limits[e.plan]; l == nil {
			if _, logged := h.unknownPlans.LoadOrStore(e.plan, true); !logged {
				h.logger.Error("account is on a plan this gateway does not know; its requests get 503 until the plan is configured",
					zap.String("plan", e.plan), zap.String("account", e.accountID))
			}
			countOutcome(outcomeUnknownPlan, e.mode, e.plan)
			writeRejection(w, outcomeUnknownPlan)
			return nil
		}
	}
	nowNs := now.UnixNano()
	hour := h.keys.hourCounterOf(e, nowNs)

	// The quota first, so that a request it refuses takes no token; a
	// live request it admits is counted at once and taken back if the
	// bucket refuses it. Test requests are counted apart, never refused.
	q := h.quotaOf(e, l)
	var qc *quotaCounter
	var qs quotaState
	counts := false
	policy := l.policy
	if q != nil {
		qc = h.keys.quotaCounterOf(e, q, nowNs)
		if e.mode == ModeLive {
			policy = l.policyWithQuota
			if q != l.quota {
				policy = l.policy + ", " + q.policy
			}
			if len(h.quotaCounts) > 0 {
				var err error
				if counts, err = h.quotaCounts.AnyMatchWithError(r); err != nil {
					countOutcome(outcomeInternal, e.mode, e.plan)
					return h.failed(w)
				}
			} else {
				counts = true
			}
			qs = quotaState{policy: q, reset: secondsCeil(float64(qc.end-nowNs) / 1e9)}
		}
	}
	bk := bucketKey{account: e.accountID, mode: e.mode}
	var st state
	decided := false
	if counts {
		// A limiter that holds the fleet's counts (Redis) decides the
		// quota with the bucket; else, or while it fails, the counter
		// here does.
		exceeded := false
		if qt, ok := h.limiter.(quotaTaker); ok {
			st, exceeded, decided = qt.TakeQuota(r.Context(), bk, l, q, qc, now)
		}
		if !decided && !qc.reserve(q.Count) {
			exceeded = true
		}
		if exceeded {
			retry := max(1, qs.reset)
			if qc.pending.Load() > 0 {
				// The last of the quota is reserved by requests whose
				// bucket has not decided: come back in a second, not at
				// the period's end.
				retry = 1
			}
			wh["Ratelimit-Policy"] = oneValue(vals, valPolicy, policy)
			wh["Ratelimit"] = oneValue(vals, valRateLimit, quotaHeader(qs))
			wh["Retry-After"] = oneValue(vals, valRetryAfter, strconv.FormatInt(retry, 10))
			countOutcome(outcomeQuotaExceeded, e.mode, l.name)
			hour.refused.Add(1)
			writeRejection(w, outcomeQuotaExceeded)
			return nil
		}
	}
	if !decided {
		st = h.limiter.Take(r.Context(), bk, l, now)
		if counts {
			if st.admitted {
				qc.settle()
			} else {
				qc.unreserve()
			}
		}
	}
	if qs.policy != nil {
		qs.remaining = max(0, q.Count-qc.used.Load())
	}
	wh["Ratelimit-Policy"] = oneValue(vals, valPolicy, policy)
	wh["Ratelimit"] = oneValue(vals, valRateLimit, rateLimitHeader(l, st, qs))
	if !st.admitted {
		wh["Retry-After"] = oneValue(vals, valRetryAfter, strconv.FormatInt(st.retryAfter, 10))
		countOutcome(outcomeRateLimited, e.mode, l.name)
		hour.refused.Add(1)
		writeRejection(w, outcomeRateLimited)
		return nil
	}
	if qc != nil && e.mode == ModeTest {
		qc.test.Add(1)
	}
	hour.admitted.Add(1)
	l.admitted[e.mode].Inc()
	h.keys.countRequest(e, now)

	// Authorization goes first, so that its slot takes one of the four
	// headers: a request with up to five headers then keeps its map
	// without growing it.
	hdr := r.Header
	if !h.ForwardAuthorization {
		delete(hdr, "Authorization")
	}
	hdr["Postscale-Mode"] = oneValue(vals, valMode, e.mode.String())
	hdr["Postscale-Account-Id"] = oneValue(vals, valAccount, e.accountID)
	hdr["Postscale-Key-Id"] = oneValue(vals, valKey, e.keyID)
	hdr["Postscale-Plan"] = oneValue(vals, valPlan, e.plan)

	// The placeholders come from the entry. A replacer looks its static
	// values (Replacer.Set) up before mapped ones, so a value a handler
	// before this one set under the same name stays.
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Map(e.placeholders)

	return next.ServeHTTP(w, r)
}

// requestTime returns when Caddy began to handle r (its start_time
// variable, which the server sets for every request), or the time now for
// a request that has none. A clock read costs 60 ns on the development
// machine's virtual clock when it is quiet and several hundred when its
// CPUs are contended, a large share of a cached key's check; a time a
// few microseconds old decides buckets and expiries as well, and buckets
// take requests whose times arrive out of order.
func requestTime(r *http.Request) time.Time {
	if t, ok := caddyhttp.GetVar(r.Context(), "start_time").(time.Time); ok {
		return t
	}
	return time.Now()
}

// quotaOf returns the quota of e's account under limit l, or nil: its own,
// else its plan's. An account with its own rate (l is e.custom) keeps its
// plan's quota.
func (h *Handler) quotaOf(e *entry, l *limit) *quotaPolicy {
	switch {
	case e.quota != nil:
		return e.quota
	case l != e.custom:
		return l.quota
	}
	if pl := h.limits[e.plan]; pl != nil {
		return pl.quota
	}
	return nil
}

// closeUnreadBody makes the rejection of an HTTP/1 request with a body end
// the connection. The gateway never reads the body of a request it
// rejects, but without this Go's server would read and drop up to 256 KB
// of it (Caddy wraps the body, so Go cannot tell it is too big) before it
// sends the answer: a client that declares a body and holds it back would
// wait for its 401 while holding the connection.
func closeUnreadBody(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		w.Header()["Connection"] = connectionClose
	}
}

var connectionClose = []string{"close"}

// failed ends a request that the handler could not decide (a request
// matcher failed) with the gateway's own 500, and returns nil. Returning
// the error instead would run the site's handle_errors routes, which may
// send the unverified request, Authorization and all, to the backend. The
// error itself is not logged here: it may quote the request's headers,
// key included, and the matchers that fail log their own errors.
func (h *Handler) failed(w http.ResponseWriter) error {
	if c := h.logger.Check(zapcore.DebugLevel, "a request matcher failed; answering 500"); c != nil {
		c.Write()
	}
	writeRejection(w, outcomeInternal)
	return nil
}

// The values one request sets, in one array (see ServeHTTP).
const (
	valMode = iota
	valAccount
	valKey
	valPlan
	valPolicy
	valRateLimit
	valRetryAfter
	valDeprecation
	valSunset
	headerVals
)

// oneValue puts v at vals[i] and returns it as a one-value header slice
// without spare capacity, so an append downstream copies it.
func oneValue(vals *[headerVals]string, i int, v string) []string {
	vals[i] = v
	return vals[i : i+1 : i+1]
}

// check authenticates a request: it returns the key's cache entry and
// outcomeAdmitted, or the outcome that rejects the request (with the entry
// when the key is known, for the metrics' mode and plan, and for a
// throttled address the seconds until it may guess again).
func (h *Handler) check(r *http.Request, now time.Time) (*entry, outcome, int64) {
	if r.URL.RawQuery != "" && credentialsInQuery(r.URL.RawQuery) {
		return nil, outcomeCredentialsInURL, 0
	}
	token, o := bearerToken(r.Header)
	if o != outcomeAdmitted {
		return nil, o, 0
	}
	key, err := ParseKey(token, h.LegacyKeys)
	if err != nil {
		return nil, outcomeInvalid, 0
	}
	e := h.keys.cached(&key.Hash, now, h.lookup)
	if e == nil || !e.found {
		// Not cached as valid: unless the store found this key in the
		// last day, this may be a guess, which the client's address must
		// have left, before any store lookup. (An address Caddy could not
		// parse, a Unix socket's, is not throttled: it would stand for
		// every client.)
		var ticket guessTicket
		if h.guessLimit != nil && (e != nil || !h.keys.known.has(&key.Hash, now)) {
			ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
			if addr := guessAddr(ip); addr.IsValid() {
				var retryAfter int64
				var ok bool
				if ticket, retryAfter, ok = h.keys.guessers.reserve(addr, now, h.guessLimit); !ok {
					return nil, outcomeThrottled, retryAfter
				}
			}
		}
		if e == nil {
			if e, err = h.keys.lookup(r.Context(), key.Hash, h.lookup); err != nil {
				h.keys.guessers.release(ticket)
				if c := h.logger.Check(zapcore.DebugLevel, "key store unavailable; answering 503"); c != nil {
					c.Write(zap.Error(err))
				}
				return nil, outcomeUnavailable, 0
			}
		}
		if e.found {
			h.keys.guessers.release(ticket) // a known key is no guess
		}
	}
	switch {
	case !e.found, e.legacy && !h.LegacyKeys, e.mode != key.Mode:
		// A record whose mode differs from the key's prefix (a hash
		// imported with the wrong mode) must not turn test into live.
		return nil, outcomeInvalid, 0
	case e.revoked:
		return e, outcomeRevoked, 0
	case !e.expiresAt.IsZero() && !now.Before(e.expiresAt):
		return e, outcomeExpired, 0
	}
	return e, outcomeAdmitted, 0
}

// loadMatchers loads the request matcher sets raw of owner's field (nil
// when raw is nil).
func loadMatchers(ctx caddy.Context, owner any, field string, raw caddyhttp.RawMatcherSets) (caddyhttp.MatcherSets, error) {
	if raw == nil {
		return nil, nil
	}
	mods, err := ctx.LoadModule(owner, field)
	if err != nil {
		return nil, fmt.Errorf("loading matchers: %w", err)
	}
	var sets caddyhttp.MatcherSets
	if err := sets.FromInterface(mods); err != nil {
		return nil, err
	}
	return sets, nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
