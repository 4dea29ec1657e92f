// Package postscale is the Postscale Gateway: a Caddy v2 plugin that puts
// API-key authentication in front of an email-sending backend.
//
// The postscale handler reads "Authorization: Bearer <key>", verifies the
// key against a key store through an in-memory cache, tags the request as
// live or test with the account and key it belongs to, removes the secret,
// and hands the request to the next handler, normally reverse_proxy. Keys
// and accounts are managed through Caddy's admin endpoint (/postscale/) or
// the "caddy postscale" command.
//
// Modules: http.handlers.postscale (the handler),
// http.handlers.postscale_portal (the customers' API keys page), postscale (the app that
// ties handlers to the admin API), admin.api.postscale, the key stores in
// the postscale.stores namespace (postscale.stores.sqlite, the default, and
// postscale.stores.postgres, shared by several replicas), and the rate
// limiters in the postscale.limiters namespace (postscale.limiters.local,
// the default, and postscale.limiters.redis, shared by replicas).
package postscale

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	caddy.RegisterModule(Handler{})
	caddy.RegisterModule(Portal{})
	caddy.RegisterModule(new(App))
	caddy.RegisterModule(adminAPI{})
	caddy.RegisterModule(SQLiteStore{})
	caddy.RegisterModule(PostgresStore{})
	caddy.RegisterModule(LocalLimiter{})
	caddy.RegisterModule(RedisLimiter{})
	httpcaddyfile.RegisterDirective("postscale", parseCaddyfile)
	// Among the authentication directives: after rewrites, before every
	// handle, route, respond and proxy, so none of them can be reached
	// without a key.
	httpcaddyfile.RegisterDirectiveOrder("postscale", httpcaddyfile.After, "forward_auth")
	httpcaddyfile.RegisterHandlerDirective("postscale_portal", parsePortalCaddyfile)
	// A handler that answers, like respond: after the authentication
	// directives (forward_auth establishes who is signed in) and the
	// handle blocks.
	httpcaddyfile.RegisterDirectiveOrder("postscale_portal", httpcaddyfile.Before, "respond")
	registerCommand()
}
