package postscale

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	ps := new(Handler)
	err := ps.UnmarshalCaddyfile(h.Dispenser)
	return ps, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	postscale [<matcher>] {
//	    store sqlite [<path>]
//	    cache_ttl <duration>
//	    negative_ttl <duration>
//	    legacy_keys
//	    forward_authorization
//	}
//
// Each subdirective may appear once; the block may be left out to take
// every default.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		name := d.Val()
		if seen[name] {
			return d.Errf("%s: subdirective given more than once", name)
		}
		seen[name] = true
		switch name {
		case "store":
			if !d.NextArg() {
				return d.ArgErr()
			}
			backend := d.Val()
			mod, err := caddyfile.UnmarshalModule(d, "postscale.stores."+backend)
			if err != nil {
				return err
			}
			h.StoreRaw = caddyconfig.JSONModuleObject(mod, "backend", backend, nil)
		case "cache_ttl", "negative_ttl":
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
			if name == "cache_ttl" {
				h.CacheTTL = caddy.Duration(dur)
			} else {
				h.NegativeTTL = caddy.Duration(dur)
			}
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

// UnmarshalCaddyfile sets up the SQLite store from the tokens after
// "store". Syntax:
//
//	sqlite [<path>] {
//	    poll_interval <duration>
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
		default:
			return d.Errf("unrecognized sqlite store option %q", d.Val())
		}
	}
	return nil
}

// Interface guards.
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*SQLiteStore)(nil)
)
