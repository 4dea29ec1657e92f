#!/usr/bin/env bash
# xcaddy.sh — builds Caddy with this plugin from the working tree, and runs it.
#
#   ./xcaddy.sh run [caddy run flags]  build, then run ./Caddyfile (the example gateway)
#   ./xcaddy.sh build                  build only, into ./bin/caddy
#   ./xcaddy.sh <caddy args…>          build, then run ./bin/caddy with those args
#
# Needs only Go: xcaddy itself is installed on first use. The build is
# CGO-free (the embedded store is pure-Go SQLite).
set -euo pipefail
cd "$(dirname "$0")"

CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
XCADDY_VERSION=${XCADDY_VERSION:-v0.4.5}
export PATH="$(go env GOPATH)/bin:$PATH"
export CGO_ENABLED=0

if ! command -v xcaddy >/dev/null; then
	echo "installing xcaddy $XCADDY_VERSION" >&2
	go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"
fi

# @v0.0.0 pins this unpublished module to the checkout; without a version
# xcaddy would ask the module proxy for it and fail.
xcaddy build "$CADDY_VERSION" \
	--with "github.com/postscale/caddy-postscale@v0.0.0=$PWD" \
	--output bin/caddy >&2

case "${1:-run}" in
build) ;;
run)
	shift || true
	exec bin/caddy run --config Caddyfile --adapter caddyfile "$@"
	;;
*) exec bin/caddy "$@" ;;
esac
