#!/usr/bin/env bash
# xcaddy.sh — builds Caddy with this plugin from the working tree, and runs it.
#
#   ./xcaddy.sh run [caddy run flags]  build, then run ./Caddyfile (the example gateway)
#   ./xcaddy.sh build                  build only, into ./bin/caddy
#   ./xcaddy.sh <caddy args…>          build, then run ./bin/caddy with those args
#
# Needs only Go: xcaddy itself is installed on first use. The build is
# CGO-free (the embedded store is pure-Go SQLite).
#
# The build's own output (module downloads, the generated main.go, compiler
# messages) goes to bin/build.log and is shown only when the build fails.
# What this script says goes to stderr, so the stdout of a caddy command
# (a key from `postscale key create`, say) stays clean for scripts.
set -euo pipefail
cd "$(dirname "$0")"

CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
XCADDY_VERSION=${XCADDY_VERSION:-v0.4.5}
export PATH="$(go env GOPATH)/bin:$PATH"
export CGO_ENABLED=0

mkdir -p bin
LOG=bin/build.log
: >"$LOG"
started=$SECONDS

# quiet runs a build step with its output in the log; if it fails, prints
# the log and stops.
quiet() {
	if ! "$@" >>"$LOG" 2>&1; then
		echo "build failed after $((SECONDS - started))s: $*" >&2
		echo "---- $LOG ----" >&2
		cat "$LOG" >&2
		exit 1
	fi
}

if [[ -x bin/caddy ]]; then
	echo "building Caddy $CADDY_VERSION with the plugin into bin/caddy (output in $LOG)…" >&2
else
	echo "building Caddy $CADDY_VERSION with the plugin into bin/caddy (the first build takes about 5 minutes; output in $LOG)…" >&2
fi

if ! command -v xcaddy >/dev/null; then
	quiet go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"
fi

# @v0.0.0 pins this unpublished module to the checkout; without a version
# xcaddy would ask the module proxy for it and fail.
quiet xcaddy build "$CADDY_VERSION" \
	--with "github.com/postscale/caddy-postscale@v0.0.0=$PWD" \
	--output bin/caddy
echo "built bin/caddy (Caddy $CADDY_VERSION + postscale) in $((SECONDS - started))s" >&2

case "${1:-run}" in
build) ;;
run)
	shift || true
	# Say where it will listen and which store it opens, read from the
	# config caddy is about to run (the last --config/--adapter given wins,
	# as in caddy run). If the config does not adapt, caddy says why.
	config=Caddyfile adapter=caddyfile
	args=("$@")
	for ((i = 0; i < ${#args[@]}; i++)); do
		case ${args[i]} in
		--config | -c) config=${args[i + 1]:-} ;;
		--config=* | -c=*) config=${args[i]#*=} ;;
		--adapter | -a) adapter=${args[i + 1]:-} ;;
		--adapter=* | -a=*) adapter=${args[i]#*=} ;;
		esac
	done
	if [[ -n $adapter ]]; then
		json=$(bin/caddy adapt --config "$config" --adapter "$adapter" 2>/dev/null) || json=
	else
		json=$(cat "$config" 2>/dev/null) || json=
	fi
	if [[ -n $json ]]; then
		datadir=$(bin/caddy environ 2>/dev/null | sed -n 's/^caddy\.AppDataDir=//p')
		go run ./internal/runinfo -datadir "$datadir" <<<"$json" >&2 || true
	fi
	exec bin/caddy run --config Caddyfile --adapter caddyfile "$@"
	;;
*) exec bin/caddy "$@" ;;
esac
