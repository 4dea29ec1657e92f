// Command caddy is Caddy's standard distribution with the Postscale
// plugin: what ./xcaddy.sh builds, as a package of this module, so that the
// integration tests can build and run the gateway as a process (several
// replicas at once, restarts) with nothing but the go command.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/postscale/caddy-postscale"
)

func main() { caddycmd.Main() }
