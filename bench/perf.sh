#!/usr/bin/env bash
# perf.sh — the gateway beside bare Caddy reverse_proxy, through the shared
# load harness (default ../shared/perf next to this checkout). Builds
# bin/caddy first. Knobs go to the harness: ROUNDS, DURATION, CONNS, SKIP.
#
#   ROUNDS=9 bench/perf.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARNESS=${PERF_HARNESS:-$ROOT/../shared/perf}
"$ROOT/xcaddy.sh" build

PERF_STORE=$(mktemp -d)/keys.db
export PERF_STORE
trap 'rm -rf "$(dirname "$PERF_STORE")"' EXIT
# One account on the (unreachable) perf plan and one live key, written straight into the
# store; the harness sends that key.
export GATEWAY_SETUP="'$ROOT/bin/caddy' postscale --store '$PERF_STORE' account create perf --plan perf >/dev/null &&
echo PERF_KEY=\$('$ROOT/bin/caddy' postscale --store '$PERF_STORE' key create --account perf --name load 2>/dev/null)"
export GATEWAY_CADDY=$ROOT/bin/caddy GATEWAY_CADDYFILE=$ROOT/bench/perf.Caddyfile GATEWAY_NAME=postscale
export SKIP=${SKIP:-direct nginx}
exec "$HARNESS/run.sh"
