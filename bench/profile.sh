#!/usr/bin/env bash
# profile.sh — where the CPU goes under load: a pprof CPU profile of the
# gateway (SQLite store, local limiter, one cached key: perf.sh's local
# config) and one of bare Caddy, each taken while wrk drives it on
# loopback, then the top functions of both and the gateway's own share.
#
#   bench/profile.sh                 # DURATION=15 CONNS=32
#
# It uses bin/caddy and bin/caddy-bare as bench/perf.sh builds them (run
# that first), the same upstream, request and Caddyfiles, with Caddy's
# admin endpoint on a loopback port for /debug/pprof. The profiles stay in
# OUT (default bench/results/profile-<date-time>/) for `go tool pprof`.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-15}
CONNS=${CONNS:-32}
OUT=${OUT:-$ROOT/bench/results/profile-$(date +%Y%m%d-%H%M%S)}
GATEWAY=$ROOT/bin/caddy BARE=$ROOT/bin/caddy-bare
for b in "$GATEWAY" "$BARE"; do
	[[ -x $b ]] || { echo "profile.sh: $b is missing: run bench/perf.sh once to build it" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "profile.sh needs wrk (apt-get install wrk)" >&2; exit 1; }

TMP=$(mktemp -d)
mkdir -p "$OUT"
PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export XDG_DATA_HOME=$TMP/data XDG_CONFIG_HOME=$TMP/config
(cd "$ROOT" && go build -o "$TMP/upstream" ./bench/upstream)
{
	read -r PERF_UPSTREAM_PORT
	read -r PERF_BARE_PORT
	read -r PERF_GATEWAY_PORT
	read -r bare_admin
	read -r gateway_admin
} < <("$TMP/upstream" -free-ports 5)
export PERF_UPSTREAM_PORT PERF_BARE_PORT PERF_GATEWAY_PORT PERF_STORE=$TMP/keys.db
"$GATEWAY" postscale --store "$PERF_STORE" --config "$ROOT/bench/perf.Caddyfile" --adapter caddyfile \
	account create perf --plan perf >/dev/null
KEY=$("$GATEWAY" postscale --store "$PERF_STORE" key create --account perf --name profile.sh 2>/dev/null)

"$TMP/upstream" -addr "127.0.0.1:$PERF_UPSTREAM_PORT" >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
PERF_ADMIN=127.0.0.1:$bare_admin "$BARE" run --config "$ROOT/bench/perf-bare.Caddyfile" --adapter caddyfile >"$TMP/bare.log" 2>&1 &
PIDS+=($!)
PERF_ADMIN=127.0.0.1:$gateway_admin "$GATEWAY" run --config "$ROOT/bench/perf.Caddyfile" --adapter caddyfile >"$TMP/gateway.log" 2>&1 &
PIDS+=($!)
for port in "$bare_admin" "$gateway_admin" "$PERF_BARE_PORT" "$PERF_GATEWAY_PORT"; do
	for _ in $(seq 100); do
		curl -s -o /dev/null "http://127.0.0.1:$port/" && break
		sleep 0.1
	done
done

profile() { # name, port, admin port, binary
	local name=$1 port=$2 admin=$3
	PERF_KEY=$KEY wrk -t1 -c"$CONNS" -d"$((DURATION + 2))s" -s "$ROOT/bench/perf.lua" \
		"http://127.0.0.1:$port/v1/emails" >"$OUT/$name-wrk.txt" 2>&1 &
	local wrk=$!
	sleep 1
	curl -s -o "$OUT/$name.pprof" "http://127.0.0.1:$admin/debug/pprof/profile?seconds=$DURATION"
	wait "$wrk"
	echo "== $name: $(grep -m1 '^PERF' "$OUT/$name-wrk.txt" | cut -f2) req/s; top 25 by cumulative CPU"
	go tool pprof -top -cum -nodecount 25 "$4" "$OUT/$name.pprof" 2>/dev/null | sed -n '/flat%/,$p'
}
profile bare "$PERF_BARE_PORT" "$bare_admin" "$BARE"
profile gateway "$PERF_GATEWAY_PORT" "$gateway_admin" "$GATEWAY"

echo
echo "== gateway: the postscale handler's own code (what it calls but reverse_proxy), share of all samples"
go tool pprof -top -cum -focus 'caddy-postscale' -ignore 'reverseproxy' -nodecount 40 "$GATEWAY" "$OUT/gateway.pprof" 2>/dev/null |
	sed -n '/Showing nodes\|flat%/,$p' | grep -v 'caddyhttp\.\|net/http\.' | head -30
echo
echo "profiles: $OUT (go tool pprof -http=: bin/caddy $OUT/gateway.pprof)"
