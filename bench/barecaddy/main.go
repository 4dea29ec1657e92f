// Command barecaddy is Caddy's standard distribution without the Postscale
// plugin: the baseline bench/perf.sh measures the gateway against. It is
// built from this module, so it has the same Caddy version and the same
// dependency versions as the gateway binary; only the plugin is missing.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() { caddycmd.Main() }
