package postscale

import (
	"encoding/json"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// parseCaddyfile sets up the directive. Its optional matcher does not
// become the route's matcher, as with handler directives, but the
// handler's Protect field: the handler then runs on every request, so it
// strips client Postscale-* headers even where no key is needed.
func parseCaddyfile(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	if !h.Next() {
		return nil, h.ArgErr()
	}
	matcherSet, err := h.ExtractMatcherSet()
	if err != nil {
		return nil, err
	}
	ps := new(Handler)
	if matcherSet != nil {
		ps.ProtectRaw = caddyhttp.RawMatcherSets{matcherSet}
	}
	h.Dispenser.Reset()
	if err := ps.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return h.NewRoute(nil, ps), nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	postscale [<matcher>] {
//	    store sqlite [<path>] {
//	        poll_interval <duration>
//	        max_conns <n>
//	    }
//	    store postgres <dsn> {
//	        max_conns <n>
//	    }
//	    cache_ttl <duration>
//	    negative_ttl <duration>
//	    lookup_timeout <duration>
//	    failed_auth <count> <window> | off
//	    limiter local
//	    limiter redis <url> {
//	        replicas <n>
//	        timeout <duration>
//	        prefix <string>
//	    }
//	    legacy_keys
//	    forward_authorization
//	    plan <name> <rate> [<burst>] {
//	        quota <count> day|month
//	    }
//	    quota_counts {
//	        <matchers>
//	    }
//	    require_scope <scope> {
//	        <matchers>
//	    }
//	}
//
// Each subdirective may appear once, except plan (once per plan name) and
// require_scope (once per scope); the block may be left out to take every
// default, and so may require_scope's (the scope is then needed by every
// request). The matcher is taken off by parseCaddyfile before this runs.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		name := d.Val()
		if seen[name] && name != "plan" && name != "require_scope" {
			return d.Errf("%s: subdirective given more than once", name)
		}
		seen[name] = true
		switch name {
		case "plan":
			args := d.RemainingArgs()
			if len(args) < 2 || len(args) > 3 {
				return d.Errf("plan: want plan <name> <rate> [<burst>], got %d arguments", len(args))
			}
			pname := args[0]
			if _, dup := h.Plans[pname]; dup {
				return d.Errf("plan %s: given more than once", pname)
			}
			if !planNamePattern.MatchString(pname) {
				return d.Errf("plan %q: a plan name is 1 to 32 characters of a-z, 0-9, _ and -", pname)
			}
			var p Plan
			var err error
			if p.Rate, err = strconv.ParseFloat(args[1], 64); err != nil {
				return d.Errf("plan %s: rate must be a number of requests per second, got %q", pname, args[1])
			}
			if len(args) == 3 {
				if p.Burst, err = strconv.Atoi(args[2]); err != nil || p.Burst < 1 {
					return d.Errf("plan %s: burst must be a whole number of requests, at least 1, got %q", pname, args[2])
				}
			}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				switch d.Val() {
				case "quota":
					if p.Quota != nil {
						return d.Errf("plan %s: quota given more than once", pname)
					}
					qargs := d.RemainingArgs()
					if len(qargs) != 2 {
						return d.Errf("plan %s: want quota <count> day|month, got %d arguments", pname, len(qargs))
					}
					n, err := strconv.ParseInt(qargs[0], 10, 64)
					if err != nil {
						return d.Errf("plan %s: quota count must be a whole number of requests, got %q", pname, qargs[0])
					}
					q := Quota{Count: n, Period: Period(qargs[1])}
					if err := q.check(); err != nil {
						return d.Errf("plan %s: quota %v", pname, err)
					}
					p.Quota = &q
				default:
					return d.Errf("plan %s: unrecognized plan option %q", pname, d.Val())
				}
			}
			if _, err := p.withDefaultBurst(); err != nil {
				return d.Errf("plan %s: %v", pname, err)
			}
			if h.Plans == nil {
				h.Plans = make(map[string]Plan)
			}
			h.Plans[pname] = p
		case "store":
			raw, err := unmarshalGuest(d, "postscale.stores.")
			if err != nil {
				return err
			}
			h.StoreRaw = raw
		case "limiter":
			raw, err := unmarshalGuest(d, "postscale.limiters.")
			if err != nil {
				return err
			}
			h.LimiterRaw = raw
		case "require_scope":
			if !d.NextArg() {
				return d.ArgErr()
			}
			scope := d.Val()
			for _, sr := range h.RequireScopes {
				if sr.Scope == scope {
					return d.Errf("require_scope %s: given more than once; put all its matchers in one block", scope)
				}
			}
			if !validScope(scope) {
				return d.Errf("require_scope %q: a scope is printable ASCII without spaces, quotes or backslashes", scope)
			}
			if d.NextArg() {
				return d.Errf("require_scope %s: matchers go in a block: require_scope %s { <matchers> }", scope, scope)
			}
			rule := ScopeRule{Scope: scope}
			set, err := caddyhttp.ParseCaddyfileNestedMatcherSet(d)
			if err != nil {
				return err
			}
			if len(set) > 0 {
				rule.MatchRaw = caddyhttp.RawMatcherSets{set}
			}
			h.RequireScopes = append(h.RequireScopes, rule)
		case "cache_ttl", "negative_ttl", "lookup_timeout":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("%s: bad duration %q: %v", name, d.Val(), err)
			}
			if dur <= 0 {
				return d.Errf("%s: must be greater than zero, got %s", name, d.Val())
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			switch name {
			case "cache_ttl":
				h.CacheTTL = caddy.Duration(dur)
			case "negative_ttl":
				h.NegativeTTL = caddy.Duration(dur)
			default:
				h.LookupTimeout = caddy.Duration(dur)
			}
		case "quota_counts":
			if d.NextArg() {
				return d.Errf("quota_counts: matchers go in a block: quota_counts { <matchers> }")
			}
			set, err := caddyhttp.ParseCaddyfileNestedMatcherSet(d)
			if err != nil {
				return err
			}
			if len(set) == 0 {
				return d.Errf("quota_counts: want a block of request matchers; without it, every admitted live request counts")
			}
			h.QuotaCountsRaw = caddyhttp.RawMatcherSets{set}
		case "failed_auth":
			args := d.RemainingArgs()
			fa := new(FailedAuth)
			switch {
			case len(args) == 1 && args[0] == "off":
				fa.Off = true
			case len(args) == 2:
				n, err := strconv.Atoi(args[0])
				if err != nil || n < 1 {
					return d.Errf("failed_auth: count must be a whole number, at least 1, got %q", args[0])
				}
				dur, err := caddy.ParseDuration(args[1])
				if err != nil || dur <= 0 {
					return d.Errf("failed_auth: window must be a positive duration, got %q", args[1])
				}
				fa.Count, fa.Window = n, caddy.Duration(dur)
			default:
				return d.Errf("failed_auth: want failed_auth <count> <window> or failed_auth off, got %d arguments", len(args))
			}
			h.FailedAuth = fa
		case "legacy_keys":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.LegacyKeys = true
		case "forward_authorization":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.ForwardAuthorization = true
		default:
			return d.Errf("unrecognized postscale subdirective %q", name)
		}
	}
	return nil
}

// unmarshalGuest reads "<backend> …" into the guest module of that name in
// namespace (which ends in a dot), as JSON with its name under "backend".
func unmarshalGuest(d *caddyfile.Dispenser, namespace string) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	backend := d.Val()
	mod, err := caddyfile.UnmarshalModule(d, namespace+backend)
	if err != nil {
		return nil, err
	}
	return caddyconfig.JSONModuleObject(mod, "backend", backend, nil), nil
}

// UnmarshalCaddyfile sets up the SQLite store from the tokens after
// "store". Syntax:
//
//	sqlite [<path>] {
//	    poll_interval <duration>
//	    max_conns <n>
//	}
func (s *SQLiteStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume backend name
	if d.NextArg() {
		s.Path = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "poll_interval":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("poll_interval: want a positive duration, got %q", d.Val())
			}
			s.PollInterval = caddy.Duration(dur)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "max_conns":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return d.Errf("max_conns: want a whole number, at least 1, got %q", d.Val())
			}
			s.MaxConns = n
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized sqlite store option %q", d.Val())
		}
	}
	return nil
}

// UnmarshalCaddyfile sets up the local limiter from the tokens after
// "limiter". Syntax:
//
//	local
func (l *LocalLimiter) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume backend name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("the local limiter takes no options, got %q", d.Val())
	}
	return nil
}

// Interface guards.
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*SQLiteStore)(nil)
	_ caddyfile.Unmarshaler = (*LocalLimiter)(nil)
)
