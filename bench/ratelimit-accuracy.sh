#!/usr/bin/env bash
# ratelimit-accuracy.sh — how exactly the token bucket holds a plan under
# overload. Builds bin/caddy, runs the gateway on localhost with
# `plan fifty 50` (50 req/s, burst 50) in front of a `respond` upstream,
# and offers about 5× the rate from several connections for 10 s
# (bench/accuracy). Prints admitted, rejected, ideal = rate·t + burst (t:
# first to last request sent) and the error; the target is ±1 %, and the
# exit status is 1 outside it. Knobs:
#
#   RATE=250 DURATION=10s CONNS=10 TOLERANCE=1 bench/ratelimit-accuracy.sh
#
# Everything it starts is stopped on exit, and its files are removed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-250}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-10}
TOLERANCE=${TOLERANCE:-1}
PLAN_RATE=50
PLAN_BURST=50

TMP=$(mktemp -d)
CADDY_PID= LOAD_PID=
cleanup() {
	for pid in $LOAD_PID $CADDY_PID; do
		if kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$ROOT/xcaddy.sh" build
CADDY=$ROOT/bin/caddy
(cd "$ROOT" && go build -o "$TMP/accuracy" ./bench/accuracy)

# Caddy keeps nothing outside $TMP.
export XDG_DATA_HOME=$TMP/data XDG_CONFIG_HOME=$TMP/config

{ read -r GATEWAY_PORT; read -r UPSTREAM_PORT; } < <("$TMP/accuracy" -free-ports 2)

# One account on the plan and one live key, straight into the store.
"$CADDY" postscale --store "$TMP/keys.db" account create bench --plan fifty >/dev/null
KEY=$("$CADDY" postscale --store "$TMP/keys.db" key create --account bench --name accuracy 2>/dev/null)

cat >"$TMP/Caddyfile" <<EOF
{
	admin off
	auto_https off
	grace_period 1s
}
:$GATEWAY_PORT {
	bind 127.0.0.1
	postscale {
		store sqlite $TMP/keys.db
		plan fifty $PLAN_RATE $PLAN_BURST
	}
	reverse_proxy 127.0.0.1:$UPSTREAM_PORT
}
:$UPSTREAM_PORT {
	bind 127.0.0.1
	respond "ok" 200
}
EOF

"$CADDY" run --config "$TMP/Caddyfile" --adapter caddyfile >"$TMP/caddy.log" 2>&1 &
CADDY_PID=$!

# Ready when the gateway answers a request without a key with 401.
for _ in $(seq 100); do
	if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GATEWAY_PORT/" || true) == 401 ]]; then
		break
	fi
	if ! kill -0 "$CADDY_PID" 2>/dev/null; then
		echo "caddy exited:" >&2
		cat "$TMP/caddy.log" >&2
		exit 1
	fi
	sleep 0.1
done

# In the background, so that a signal stops the run at once (bash runs
# traps only between commands).
"$TMP/accuracy" -url "http://127.0.0.1:$GATEWAY_PORT/v1/emails" -key "$KEY" \
	-rate "$RATE" -duration "$DURATION" -conns "$CONNS" \
	-plan-rate "$PLAN_RATE" -burst "$PLAN_BURST" -tolerance "$TOLERANCE" &
LOAD_PID=$!
status=0
wait "$LOAD_PID" || status=$?
exit "$status"
