#!/usr/bin/env bash
# perf.sh — what the gateway costs next to bare Caddy.
#
# Builds Caddy with the plugin (./xcaddy.sh build → bin/caddy) and stock
# Caddy of the same version from this module (bench/barecaddy →
# bin/caddy-bare, same build flags as xcaddy), and a small mail backend
# (bench/upstream). Then wrk sends the same email POST (bench/perf.lua, one
# live key) on loopback through each:
#
#   bare       wrk → bin/caddy-bare reverse_proxy       → upstream  (perf-bare.Caddyfile)
#   postscale  wrk → bin/caddy postscale, reverse_proxy → upstream  (perf.Caddyfile)
#
# in alternating rounds (bare first in odd rounds, postscale first in even
# ones, so a drift in the machine's load hits both alike). For each round
# and config it prints req/s, p50 and p99 latency and the Caddy process's
# CPU time per request (utime+stime from /proc/<pid>/stat, before and after
# the round), and the round's ratio postscale/bare; at the end, the medians
# over the rounds. Read the ratio: absolute numbers on a shared machine move
# from minute to minute, and both configs see the same moves.
#
# Knobs (environment):
#   ROUNDS=5     rounds
#   DURATION=10  seconds of load per config and round
#   CONNS=32     connections wrk keeps open
#   THREADS=1    wrk threads
#   WARMUP=2     seconds of load per config before the first round, not counted
#
#   ROUNDS=9 DURATION=8 bench/perf.sh
#
# Needs Go, curl and wrk (Debian/Ubuntu: apt-get install wrk; run as root,
# the script installs it when it is missing). Everything it starts is
# stopped on exit; its files (store, logs) live in a temporary directory
# that is removed.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}
CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
export CADDY_VERSION

if ! command -v wrk >/dev/null; then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		echo "wrk is missing: installing it with apt-get install wrk" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 ||
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	else
		echo "perf.sh needs wrk: sudo apt-get install wrk (Debian/Ubuntu), or see https://github.com/wg/wrk" >&2
		exit 1
	fi
fi
command -v curl >/dev/null || { echo "perf.sh needs curl" >&2; exit 1; }

TMP=$(mktemp -d)
declare -A PID PORT
cleanup() {
	local pid
	for pid in "${PID[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PID[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- build

"$ROOT/xcaddy.sh" build
echo "building stock Caddy $CADDY_VERSION (bin/caddy-bare) and the upstream…" >&2
if ! (cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags '-w -s' -tags nobadger,nomysql,nopgx \
	-o bin/caddy-bare ./bench/barecaddy && go build -o "$TMP/upstream" ./bench/upstream) >"$TMP/build.log" 2>&1; then
	cat "$TMP/build.log" >&2
	exit 1
fi
GATEWAY=$ROOT/bin/caddy
BARE=$ROOT/bin/caddy-bare
if [[ $("$BARE" version) != "$("$GATEWAY" version)" ]]; then
	echo "bin/caddy-bare ($("$BARE" version)) and bin/caddy ($("$GATEWAY" version)) are not the same Caddy" >&2
	exit 1
fi

# ---- start

# Caddy keeps nothing outside $TMP.
export XDG_DATA_HOME=$TMP/data XDG_CONFIG_HOME=$TMP/config
{
	read -r PERF_UPSTREAM_PORT
	read -r PERF_BARE_PORT
	read -r PERF_GATEWAY_PORT
} < <("$TMP/upstream" -free-ports 3)
export PERF_UPSTREAM_PORT PERF_BARE_PORT PERF_GATEWAY_PORT PERF_STORE=$TMP/keys.db
PORT[upstream]=$PERF_UPSTREAM_PORT PORT[bare]=$PERF_BARE_PORT PORT[postscale]=$PERF_GATEWAY_PORT

# One account on the config's perf plan and one live key, straight into
# the store. The key goes only to wrk, never to the terminal.
if ! "$GATEWAY" postscale --store "$PERF_STORE" --config "$ROOT/bench/perf.Caddyfile" --adapter caddyfile \
	account create perf --plan perf >"$TMP/setup.log" 2>&1; then
	cat "$TMP/setup.log" >&2
	exit 1
fi
KEY=$("$GATEWAY" postscale --store "$PERF_STORE" key create --account perf --name perf.sh 2>/dev/null)

start() { # name, command…
	local name=$1
	shift
	"$@" >"$TMP/$name.log" 2>&1 &
	PID[$name]=$!
}
ready() { # name: waits until it answers HTTP
	local _
	for _ in $(seq 150); do
		if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT[$1]}/" || true) != 000 ]]; then
			return 0
		fi
		if ! kill -0 "${PID[$1]}" 2>/dev/null; then
			echo "$1 exited while starting:" >&2
			cat "$TMP/$1.log" >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "$1 does not answer on 127.0.0.1:${PORT[$1]} after 15s" >&2
	exit 1
}
start upstream "$TMP/upstream" -addr "127.0.0.1:$PERF_UPSTREAM_PORT"
start bare "$BARE" run --config "$ROOT/bench/perf-bare.Caddyfile" --adapter caddyfile
start postscale "$GATEWAY" run --config "$ROOT/bench/perf.Caddyfile" --adapter caddyfile
for name in upstream bare postscale; do
	ready "$name"
done

# ---- check that each does what it is measured doing

probe() { # name, key or "" → "<status> mode=<Seen-Mode> credentials=<Seen-Credentials>"
	# The key goes in on stdin, not on curl's command line, where ps shows it.
	{ [[ -z $2 ]] || printf 'Authorization: Bearer %s\n' "$2"; } |
		curl -s -o /dev/null -D - -X POST -H 'Content-Type: application/json' -H @- \
			-d '{}' "http://127.0.0.1:${PORT[$1]}/v1/emails" |
		tr -d '\r' | awk '
			NR == 1 { status = $2 }
			tolower($1) == "seen-mode:" { mode = $2 }
			tolower($1) == "seen-credentials:" { cred = $2 }
			END { printf "%s mode=%s credentials=%s", status, mode, cred }'
}
check() { # what, got, want
	if [[ $2 != "$3" ]]; then
		echo "check failed: $1: got \"$2\", want \"$3\"" >&2
		exit 1
	fi
}
check "bare Caddy, with the key" "$(probe bare "$KEY")" "202 mode= credentials=yes"
check "gateway, with the key" "$(probe postscale "$KEY")" "202 mode=live credentials=no"
check "gateway, without a key" "$(probe postscale "" | cut -d' ' -f1)" 401
check "gateway, with a made-up key" "$(probe postscale ps_live_madeup | cut -d' ' -f1)" 401

# ---- load

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pid → utime+stime in clock ticks (fields 14 and 15 of stat, counted after the command name)
	local stat
	stat=$(<"/proc/$1/stat")
	stat=${stat##*) }
	awk '{ print $12 + $13 }' <<<"$stat"
}

# measure name seconds → "rps p50_us p99_us requests non2xx sockerr cpu_us_per_req"
measure() {
	local name=$1 seconds=$2 t0 t1 out line
	t0=$(cpu_ticks "${PID[$name]}")
	out=$(PERF_KEY=$KEY wrk -t"$THREADS" -c"$CONNS" -d"${seconds}s" -s "$ROOT/bench/perf.lua" \
		"http://127.0.0.1:${PORT[$name]}/v1/emails" 2>&1) || true
	t1=$(cpu_ticks "${PID[$name]}")
	line=$(grep '^PERF' <<<"$out" | cut -f2-) || true
	if [[ -z $line ]]; then
		echo "wrk against $name gave no result:" >&2
		echo "$out" >&2
		exit 1
	fi
	awk -v ticks=$((t1 - t0)) -v hz="$CLK_TCK" '{
		cpu = $4 > 0 ? ticks * 1e6 / hz / $4 : 0
		printf "%s %s %s %s %s %s %.1f\n", $1, $2, $3, $4, $5, $6, cpu
	}' <<<"$line"
}

median() { # numbers… → their median
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
		if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "Caddy $("$GATEWAY" version | cut -d' ' -f1) · wrk -t$THREADS -c$CONNS · $ROUNDS rounds × ${DURATION}s · $(nproc) cores · load average $(cut -d' ' -f1-3 /proc/loadavg)"
for name in bare postscale; do
	measure "$name" "$WARMUP" >/dev/null
done

declare -A RPS P50 P99 CPU
RATIOS=() CPU_RATIOS=()
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
printf '\n%-6s %-10s %9s %8s %8s %12s   %s\n' round config "req/s" "p50 ms" "p99 ms" "CPU µs/req" "÷ bare (req/s, CPU/req)"
for r in $(seq "$ROUNDS"); do
	order=(bare postscale)
	((r % 2)) || order=(postscale bare)
	declare -A result=()
	for name in "${order[@]}"; do
		result[$name]=$(measure "$name" "$DURATION")
	done
	for name in bare postscale; do
		read -r rps p50 p99 requests non2xx sockerr cpu <<<"${result[$name]}"
		RPS[$name]+="$rps " P50[$name]+="$p50 " P99[$name]+="$p99 " CPU[$name]+="$cpu "
		if [[ $name == bare ]]; then
			bare_rps=$rps bare_cpu=$cpu
			vs=
		else
			ratio=$(awk -v g="$rps" -v b="$bare_rps" 'BEGIN { printf "%.3f", (b > 0 ? g / b : 0) }')
			cpu_ratio=$(awk -v g="$cpu" -v b="$bare_cpu" 'BEGIN { printf "%.3f", (b > 0 ? g / b : 0) }')
			RATIOS+=("$ratio") CPU_RATIOS+=("$cpu_ratio")
			vs="$ratio, $cpu_ratio"
		fi
		((non2xx == 0)) || vs+="  ($non2xx answers not 2xx/3xx: this round is not valid)"
		((sockerr == 0)) || vs+="  ($sockerr socket errors)"
		printf '%-6s %-10s %9.0f %8s %8s %11.1f   %s\n' "$r" "$name" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$cpu" "$vs"
	done
done

# ---- summary

echo
echo "Medians over $ROUNDS rounds:"
printf '%-10s %9s %8s %8s %12s\n' config "req/s" "p50 ms" "p99 ms" "CPU µs/req"
for name in bare postscale; do
	# shellcheck disable=SC2086 # the lists are space-separated numbers
	printf '%-10s %9.0f %8s %8s %11.1f\n' "$name" "$(median ${RPS[$name]})" \
		"$(ms "$(median ${P50[$name]})")" "$(ms "$(median ${P99[$name]})")" \
		"$(median ${CPU[$name]})"
done
range() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s", lo, hi }'; }
printf '\npostscale ÷ bare, req/s:      %.3f (median of the per-round ratios; %s)\n' "$(median "${RATIOS[@]}")" "$(range "${RATIOS[@]}")"
printf 'postscale ÷ bare, CPU µs/req: %.3f (%s)\n' "$(median "${CPU_RATIOS[@]}")" "$(range "${CPU_RATIOS[@]}")"
