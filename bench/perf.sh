#!/usr/bin/env bash
# perf.sh — what the gateway costs next to bare Caddy, in several configurations.
#
# Builds Caddy with the plugin (./xcaddy.sh build → bin/caddy), stock Caddy
# of the same version from this module (bench/barecaddy → bin/caddy-bare,
# the build flags xcaddy uses), a small mail backend (bench/upstream) and
# the run's helper (bench/perfkit). Then wrk sends the same email POST
# (bench/perf.lua) on loopback through bare Caddy and through one gateway
# process per configuration, each on its own port, started once:
#
#   bare      bin/caddy-bare reverse_proxy → upstream (perf-bare.Caddyfile): the reference, always run
#   local     the gateway, SQLite store, local limiter, one cached key (perf.Caddyfile)
#   redis     local with the Redis limiter, under a key prefix of its own (perf-redis.Caddyfile)
#   postgres  local on the PostgreSQL store, in a database of its own (perf-postgres.Caddyfile)
#   keys1m    local with 1,000,000 keys in the store; wrk sends 100,000 of them in turn
#   flood     local's cached key while a second wrk sends made-up well-formed keys
#             from many client addresses (perf-flood.Caddyfile); brings local along,
#             whose p99 is the quiet value its p99 is compared with
#
# Rounds alternate: each round measures every config once, in an order
# rotated by one each round, so a drift in the machine's load hits them all
# alike. Each round prints req/s, p50, p99, the Caddy process's CPU time per
# request (utime+stime from /proc/<pid>/stat) and RSS, and each config's
# ratio to bare Caddy in that round; at the end, per concurrency, the
# medians over rounds and the median and range of the per-round ratios.
# Read the ratios: absolute numbers on a shared machine move from minute
# to minute, and every config sees the same moves.
#
# Before measuring it checks that each config does what it is measured
# doing: bare Caddy passes the key through; each gateway admits the key
# (202, mode live, the key removed) and refuses a missing and a made-up key
# (401); keys1m admits every one of its hot keys; bad-checksum keys cost
# the flood config no store lookup.
#
# Knobs (environment):
#   CONFIGS="local"   configs besides bare; "all" (or the argument all) for every one
#   CONNS=32          wrk connections; a list ("1 8 32 128") measures each
#   ROUNDS=5          rounds per concurrency
#   DURATION=10       seconds of load per config and round
#   WARMUP=2          seconds of load per config and concurrency, not counted
#   THREADS=1         wrk threads
#   OUT=dir           where results go (default bench/results/<date-time>)
#   PLOTS=dir         where bench/plot draws the PNGs (default OUT; docs/bench for the committed ones)
#   KEYS=1000000 HOT=100000            keys1m's stored and hot keys
#   PERF_CACHE_TTL=5m                  keys1m's cache_ttl (each hot key is looked up again once per TTL)
#   FLOOD_KEYS=200000 FLOOD_CONNS=64   the flood's distinct made-up keys and its connections
#   REDIS_URL=redis://127.0.0.1:6379/0
#   PG_URL='postgres://postgres@127.0.0.1:5432/test?sslmode=disable'  a database to run CREATE DATABASE in
#
#   bench/perf.sh                                   bare and local, 5 × 10 s at -c32
#   CONFIGS=all CONNS="1 8 32 128" ROUNDS=5 DURATION=8 PLOTS=docs/bench bench/perf.sh
#
# Writes into OUT: results.tsv and latency.tsv (one line per config,
# concurrency and round; the format bench/plot reads), extras.tsv (the
# figures only some configs have: Redis's CPU and commands, store lookups
# in the flood, start times), run.txt (the machine and the knobs) and
# summary.txt (what it prints at the end).
#
# Needs Go, curl and wrk (Debian/Ubuntu: apt-get install wrk; run as root,
# the script installs it when it is missing); redis-cli for redis, psql for
# postgres. Everything it starts is stopped on exit, and the Redis keys and
# the database it made are removed; its other files (stores, keys, logs)
# live in a temporary directory that is removed.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ALL_CONFIGS="local redis postgres keys1m flood"
[[ ${1:-} == all ]] && CONFIGS=all
CONFIGS=${CONFIGS:-local}
[[ $CONFIGS == all ]] && CONFIGS=$ALL_CONFIGS
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}
KEYS=${KEYS:-1000000}
HOT=${HOT:-100000}
FLOOD_KEYS=${FLOOD_KEYS:-200000}
FLOOD_CONNS=${FLOOD_CONNS:-64}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
OUT=${OUT:-$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)}
CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
export CADDY_VERSION

die() {
	echo "perf.sh: $*" >&2
	exit 1
}

# GATEWAYS: the gateway configs, in the order of ALL_CONFIGS, each once.
GATEWAYS=()
for name in $CONFIGS; do
	[[ " bare $ALL_CONFIGS " == *" $name "* ]] || die "unknown config \"$name\" (known: bare $ALL_CONFIGS all)"
done
for name in $ALL_CONFIGS; do
	# flood's p99 is read next to local's, measured in the same rounds.
	if [[ " $CONFIGS " == *" $name "* || ($name == local && " $CONFIGS " == *" flood "*) ]]; then
		GATEWAYS+=("$name")
	fi
done

need() { # command, why
	command -v "$1" >/dev/null || die "needs $1 ($2)"
}
if ! command -v wrk >/dev/null; then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		echo "wrk is missing: installing it with apt-get install wrk" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 ||
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	else
		die "needs wrk: sudo apt-get install wrk (Debian/Ubuntu), or see https://github.com/wg/wrk"
	fi
fi
need curl "to check each config"
[[ " ${GATEWAYS[*]} " != *" redis "* ]] || need redis-cli "for the redis config: apt-get install redis-tools"
[[ " ${GATEWAYS[*]} " != *" postgres "* ]] || need psql "for the postgres config: apt-get install postgresql-client"

TMP=$(mktemp -d)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
declare -A PID PORT KEYFILE
PG_DB= REDIS_PREFIX=
cleanup() {
	local pid
	for pid in "${PID[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PID[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ -n $REDIS_PREFIX ]]; then
		redis-cli -u "$REDIS_URL" --scan --pattern "$REDIS_PREFIX*" |
			xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
	fi
	if [[ -n $PG_DB ]]; then
		psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 ||
			echo "perf.sh: could not drop the database $PG_DB" >&2
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- build

"$ROOT/xcaddy.sh" build
echo "building stock Caddy $CADDY_VERSION (bin/caddy-bare), the upstream and perfkit…" >&2
if ! (cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags '-w -s' -tags nobadger,nomysql,nopgx \
	-o bin/caddy-bare ./bench/barecaddy && go build -o "$TMP/upstream" ./bench/upstream &&
	go build -o "$TMP/perfkit" ./bench/perfkit) >"$TMP/build.log" 2>&1; then
	cat "$TMP/build.log" >&2
	exit 1
fi
GATEWAY=$ROOT/bin/caddy
BARE=$ROOT/bin/caddy-bare
KIT=$TMP/perfkit
if [[ $("$BARE" version) != "$("$GATEWAY" version)" ]]; then
	die "bin/caddy-bare ($("$BARE" version)) and bin/caddy ($("$GATEWAY" version)) are not the same Caddy"
fi

# ---- results files

printf 'config\tconns\tround\trps\tp50_us\tp99_us\tcpu_us_per_req\trss_kb\tnon2xx\tsockerr\n' >"$OUT/results.tsv"
printf 'config\tconns\tround\tpercentile\tlatency_us\n' >"$OUT/latency.tsv"
printf 'config\tconns\tround\tmetric\tvalue\n' >"$OUT/extras.tsv"
extra() { # config conns round metric value
	printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/extras.tsv"
}

# ---- processes

# Caddy keeps nothing outside $TMP.
export XDG_DATA_HOME=$TMP/data XDG_CONFIG_HOME=$TMP/config
# Each gateway has a port for its site and one for its metrics, which only
# redis, keys1m and flood serve (local stays bare Caddy plus the handler).
mapfile -t ports < <("$TMP/upstream" -free-ports $((2 + 2 * ${#GATEWAYS[@]})))
PORT[upstream]=${ports[0]} PORT[bare]=${ports[1]}
for i in "${!GATEWAYS[@]}"; do
	PORT[${GATEWAYS[i]}]=${ports[2 * i + 2]} PORT[${GATEWAYS[i]}-metrics]=${ports[2 * i + 3]}
done

start() { # name, command… (in the background, output in $TMP/<name>.log)
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
			cat "$TMP/$1.log" >&2
			die "$1 exited while starting"
		fi
		sleep 0.1
	done
	die "$1 does not answer on 127.0.0.1:${PORT[$1]} after 15s"
}
url() { echo "http://127.0.0.1:${PORT[$1]}/v1/emails"; }

# gateway_env config: sets GATEWAY_ENV to the environment its Caddyfile
# reads (the CLI reads it too: it adapts the same file to check the plan).
gateway_env() {
	GATEWAY_ENV=(PERF_GATEWAY_PORT="${PORT[$1]}" PERF_UPSTREAM_PORT="${PORT[upstream]}" PERF_STORE="$(store_of "$1")"
		PERF_METRICS_PORT="${PORT[$1-metrics]}" PERF_REDIS_URL="$REDIS_URL" PERF_REDIS_PREFIX="$REDIS_PREFIX")
}
store_of() { # config → its store: a SQLite file of its own, or the run's PostgreSQL database
	if [[ $1 == postgres ]]; then
		sed -E "s#(//[^/]*/)[^?]*#\1$PG_DB#" <<<"$PG_URL"
	else
		echo "$TMP/$1.db"
	fi
}
caddyfile_of() {
	case $1 in
	local) echo "$ROOT/bench/perf.Caddyfile" ;;
	*) echo "$ROOT/bench/perf-$1.Caddyfile" ;;
	esac
}
gateway() { # config, command… → bin/caddy with the config's environment
	gateway_env "$1"
	shift
	env "${GATEWAY_ENV[@]}" "$GATEWAY" "$@"
}

# make_key config: one account on the perf plan and one live key, straight
# into the store. The key goes into a file of its own (mode 0600) and to
# wrk's environment, never to the terminal or a command line.
make_key() {
	local name=$1 store
	store=$(store_of "$1")
	KEYFILE[$name]=$TMP/key-$name.txt
	if ! gateway "$name" postscale --store "$store" --config "$(caddyfile_of "$name")" --adapter caddyfile \
		account create perf --plan perf >"$TMP/setup-$name.log" 2>&1 ||
		! (umask 077 && gateway "$name" postscale --store "$store" key create --account perf --name perf.sh \
			>"${KEYFILE[$name]}" 2>>"$TMP/setup-$name.log"); then
		cat "$TMP/setup-$name.log" >&2
		die "could not create the $name config's key"
	fi
}

# seed_keys1m: the million keys, and the hot ones' file for wrk.
seed_keys1m() {
	local t0=$SECONDS
	echo "keys1m: seeding $KEYS keys…" >&2
	KEYFILE[keys1m]=$TMP/hot.txt
	"$KIT" store -store "$(store_of keys1m)" -keys "$KEYS" -hot "$HOT" -plan perf -hot-out "${KEYFILE[keys1m]}"
	extra keys1m 0 0 seed_s $((SECONDS - t0))
}

setup() { # config: what its store needs before it starts
	case $1 in
	postgres)
		PG_DB=perfsh_$$_$RANDOM
		if ! psql -q "$PG_URL" -c "CREATE DATABASE $PG_DB" >/dev/null; then
			PG_DB= # not ours to drop
			die "could not create a database at $PG_URL"
		fi
		make_key postgres
		;;
	keys1m) seed_keys1m ;;
	*) make_key "$1" ;;
	esac
}

# start_gateway config: starts it, and records how long from the start to
# its first admitted request (the store opened, nothing loaded before).
start_gateway() {
	local name=$1 t0 ms
	t0=$(date +%s%N)
	gateway_env "$name"
	# env execs Caddy, so PID is Caddy's own, whose CPU time is measured.
	start "$name" env "${GATEWAY_ENV[@]}" "$GATEWAY" run --config "$(caddyfile_of "$name")" --adapter caddyfile
	if ! ms=$("$KIT" first -url "$(url "$name")" -key-file "${KEYFILE[$name]}" -since "$t0" -timeout 60s); then
		cat "$TMP/$name.log" >&2
		die "$name never admitted its key"
	fi
	extra "$name" 0 0 start_ms "$ms"
}

# The keys that are not in any store: one for bare Caddy to pass through,
# the flood's made-up ones and bad-checksum ones.
(umask 077 && "$KIT" madeup -n 1 -out "$TMP/key-bare.txt")
KEYFILE[bare]=$TMP/key-bare.txt
if [[ " ${GATEWAYS[*]} " == *" flood "* ]]; then
	(umask 077 && "$KIT" madeup -n "$FLOOD_KEYS" -out "$TMP/madeup.txt" && "$KIT" badsum -n 20000 -out "$TMP/badsum.txt")
fi
[[ " ${GATEWAYS[*]} " != *" redis "* ]] || REDIS_PREFIX="perfsh:$$:$RANDOM:"

start upstream "$TMP/upstream" -addr "127.0.0.1:${PORT[upstream]}"
ready upstream
start bare env PERF_BARE_PORT="${PORT[bare]}" PERF_UPSTREAM_PORT="${PORT[upstream]}" \
	"$BARE" run --config "$ROOT/bench/perf-bare.Caddyfile" --adapter caddyfile
ready bare
for name in "${GATEWAYS[@]}"; do
	setup "$name"
	start_gateway "$name"
done

# ---- check that each does what it is measured doing

probe() { # config, key or "" → "<status> mode=<Seen-Mode> credentials=<Seen-Credentials>"
	# The key goes in on stdin, not on curl's command line, where ps shows it.
	{ [[ -z $2 ]] || printf 'Authorization: Bearer %s\n' "$2"; } |
		curl -s -o /dev/null -D - -X POST -H 'Content-Type: application/json' -H @- \
			-d '{}' "$(url "$1")" |
		tr -d '\r' | awk '
			NR == 1 { status = $2 }
			tolower($1) == "seen-mode:" { mode = $2 }
			tolower($1) == "seen-credentials:" { cred = $2 }
			END { printf "%s mode=%s credentials=%s", status, mode, cred }'
}
check() { # what, got, want
	[[ $2 == "$3" ]] || die "check failed: $1: got \"$2\", want \"$3\""
}
first_key() { head -n1 "${KEYFILE[$1]}"; }

# Redis's own counters, for the redis config: CPU seconds, commands, scripts.
redis_stats() {
	redis-cli -u "$REDIS_URL" INFO all | tr -d '\r' | awk -F'[:=,]' '
		$1 == "used_cpu_sys" || $1 == "used_cpu_user" { cpu += $2 }
		$1 ~ /^cmdstat_/ { cmds += $3; if ($1 == "cmdstat_evalsha" || $1 == "cmdstat_eval") evals += $3 }
		END { printf "%.6f %d %d\n", cpu, cmds, evals }'
}

# metric config name: a counter or gauge from the config's metrics endpoint.
metric() {
	curl -s "http://127.0.0.1:${PORT[$1-metrics]}/metrics" | awk -v m="$2" '$1 == m { printf "%.0f\n", $2; found = 1 } END { if (!found) print 0 }'
}
LOOKUPS=caddy_postscale_store_lookups_total

# check_badsum: bad-checksum keys, from many addresses, must all be refused
# without a store lookup.
check_badsum() {
	local before after
	before=$(metric flood $LOOKUPS)
	run_wrk flood "$FLOOD_CONNS" 2 PERF_KEY_FILE="$TMP/badsum.txt" PERF_XFF=1
	local requests non2xx
	after=$(metric flood $LOOKUPS)
	read -r _ _ _ requests non2xx _ <<<"$WRK_PERF"
	((requests > 0 && non2xx == requests)) || die "check failed: bad-checksum keys: $non2xx of $requests refused"
	extra flood 0 0 badsum_requests "$requests"
	extra flood 0 0 badsum_lookups $((after - before))
	echo "flood: $requests requests with bad-checksum keys from many addresses: all refused, $((after - before)) store lookups (target 0)"
}

check "bare Caddy, with a key" "$(probe bare "$(first_key bare)")" "202 mode= credentials=yes"
for name in "${GATEWAYS[@]}"; do
	check "$name, with its key" "$(probe "$name" "$(first_key "$name")")" "202 mode=live credentials=no"
	check "$name, without a key" "$(probe "$name" "" | cut -d' ' -f1)" 401
	check "$name, with a made-up key" "$(probe "$name" "$(first_key bare)" | cut -d' ' -f1)" 401
done

if [[ " ${GATEWAYS[*]} " == *" redis "* ]]; then
	read -r _ _ evals0 <<<"$(redis_stats)"
	probe redis "$(first_key redis)" >/dev/null
	read -r _ _ evals1 <<<"$(redis_stats)"
	((evals1 > evals0)) || die "check failed: the redis config's request ran no script in Redis at $REDIS_URL"
fi

# ---- load

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pid → utime+stime in clock ticks (fields 14 and 15 of stat, counted after the command name)
	local stat
	stat=$(<"/proc/$1/stat")
	stat=${stat##*) }
	awk '{ print $12 + $13 }' <<<"$stat"
}
rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }

# run_wrk config conns seconds [VAR=value…]: wrk against the config, with
# its key (or what the variables say instead). Sets WRK_PERF to
# "rps p50_us p99_us requests non2xx sockerr" and WRK_LAT to the
# percentile/latency pairs.
run_wrk() {
	local name=$1 conns=$2 seconds=$3 out
	shift 3
	out=$(env PERF_KEY="$(first_key "$name")" "$@" wrk -t"$THREADS" -c"$conns" -d"${seconds}s" \
		-s "$ROOT/bench/perf.lua" "$(url "$name")" 2>&1) || true
	WRK_PERF=$(awk -F'\t' '$1 == "PERF" { $1 = ""; print substr($0, 2) }' <<<"$out")
	WRK_LAT=$(awk -F'\t' '$1 == "LAT" { $1 = ""; print substr($0, 2) }' <<<"$out")
	[[ -n $WRK_PERF ]] || die "wrk against $name gave no result: $out"
}

# wrk_args config: sets WRK_ARGS to what tells perf.lua how to send the
# config's requests: keys1m's in turn from its file; the others, one key.
wrk_args() {
	WRK_ARGS=()
	[[ $1 != keys1m ]] || WRK_ARGS=(PERF_KEY_FILE="${KEYFILE[keys1m]}")
}

# measure config conns round: one measured run, with what the config
# measures besides (Redis's counters, the flood), written to the results.
measure() {
	local name=$1 conns=$2 round=$3 pid=${PID[$1]} t0 t1 rss r0 r1 l0 l1 flood_out
	case $name in
	redis) r0=$(redis_stats) ;;
	flood)
		# The flood starts first and ends last, so it covers the whole
		# measurement. Each flood goes on in the key file where the last
		# one stopped, so its keys are not in the negative cache yet.
		env PERF_KEY_FILE="$TMP/madeup.txt" PERF_KEY_OFFSET="$FLOOD_OFFSET" PERF_XFF=1 wrk -t1 -c"$FLOOD_CONNS" \
			-d$((DURATION + 3))s -s "$ROOT/bench/perf.lua" "$(url flood)" >"$TMP/flood-wrk.out" 2>&1 &
		PID[flood-wrk]=$!
		sleep 1
		;;
	esac
	case $name in redis | keys1m | flood) l0=$(metric "$name" $LOOKUPS) ;; esac
	wrk_args "$name"
	t0=$(cpu_ticks "$pid")
	run_wrk "$name" "$conns" "$DURATION" "${WRK_ARGS[@]}"
	t1=$(cpu_ticks "$pid")
	rss=$(rss_kb "$pid")
	read -r rps p50 p99 requests non2xx sockerr <<<"$WRK_PERF"
	if [[ -n ${l0:-} ]]; then
		l1=$(metric "$name" $LOOKUPS)
		extra "$name" "$conns" "$round" store_lookups_per_s "$(per $((l1 - l0)) "$DURATION")"
	fi
	case $name in
	redis)
		r1=$(redis_stats)
		read -r -a r0 <<<"$r0"
		read -r -a r1 <<<"$r1"
		extra redis "$conns" "$round" redis_cpu_us_per_req "$(per "$(awk -v a="${r0[0]}" -v b="${r1[0]}" 'BEGIN { print (b - a) * 1e6 }')" "$requests")"
		extra redis "$conns" "$round" redis_cmds_per_req "$(per $((r1[1] - r0[1])) "$requests")"
		extra redis "$conns" "$round" redis_evals_per_req "$(per $((r1[2] - r0[2])) "$requests")"
		# Decided on local shares instead of in Redis: the round measured the wrong thing.
		extra redis "$conns" "$round" redis_fallback "$(metric redis caddy_postscale_limiter_fallback)"
		;;
	flood)
		wait "${PID[flood-wrk]}" || true
		unset 'PID[flood-wrk]'
		flood_out=$(awk -F'\t' '$1 == "PERF" { print $2, $5, $6, $7 }' "$TMP/flood-wrk.out")
		read -r frps freq fbad fsock <<<"$flood_out"
		extra flood "$conns" "$round" flood_rps "${frps:-0}"
		extra flood "$conns" "$round" flood_admitted $((${freq:-0} - ${fbad:-0} - ${fsock:-0}))
		FLOOD_OFFSET=$((FLOOD_OFFSET + ${freq:-0}))
		;;
	esac
	local cpu
	cpu=$(per "$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" 'BEGIN { print t * 1e6 / hz }')" "$requests")
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$conns" "$round" "$rps" "$p50" "$p99" "$cpu" "$rss" \
		"$non2xx" "$sockerr" >>"$OUT/results.tsv"
	awk -v c="$name" -v n="$conns" -v r="$round" '{ for (i = 1; i < NF; i += 2) printf "%s\t%s\t%s\t%s\t%s\n", c, n, r, $i, $(i + 1) }' \
		<<<"$WRK_LAT" >>"$OUT/latency.tsv"
	ROUND[$name]="$rps $p50 $p99 $cpu $rss $non2xx $sockerr"
}
FLOOD_OFFSET=0
per() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; } # a ÷ b

if [[ " ${GATEWAYS[*]} " == *" keys1m "* ]]; then
	echo "keys1m: every hot key admitted once, so they are cached before the load…" >&2
	"$KIT" warm -url "$(url keys1m)" -key-file "${KEYFILE[keys1m]}" -conns 16 || die "check failed: keys1m's hot keys"
fi
[[ " ${GATEWAYS[*]} " != *" flood "* ]] || check_badsum

CONFIG_LIST=(bare "${GATEWAYS[@]}")
{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "caddy: $("$GATEWAY" version | cut -d' ' -f1)"
	echo "go: $(go version | cut -d' ' -f3)"
	echo "cpu: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "wrk: -t$THREADS -c{$CONNS}, $ROUNDS rounds × ${DURATION}s, warm-up ${WARMUP}s"
	echo "configs: ${CONFIG_LIST[*]}"
} | tee "$OUT/run.txt"

ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
declare -A ROUND
turn=0
for conns in $CONNS; do
	for name in "${CONFIG_LIST[@]}"; do
		wrk_args "$name"
		run_wrk "$name" "$conns" "$WARMUP" "${WRK_ARGS[@]}"
	done
	printf '\n%-5s %-6s %-9s %9s %8s %8s %11s %7s   %s\n' round conns config "req/s" "p50 ms" "p99 ms" "CPU µs/req" "RSS MB" "÷ bare: req/s, p99, CPU/req"
	for round in $(seq "$ROUNDS"); do
		# Rotate the order by one each round (across concurrencies too).
		n=${#CONFIG_LIST[@]}
		order=()
		for i in $(seq 0 $((n - 1))); do
			order+=("${CONFIG_LIST[(i + turn) % n]}")
		done
		turn=$((turn + 1))
		ROUND=()
		for name in "${order[@]}"; do
			measure "$name" "$conns" "$round"
		done
		read -r brps _ bp99 bcpu _ <<<"${ROUND[bare]}"
		for name in "${CONFIG_LIST[@]}"; do
			read -r rps p50 p99 cpu rss non2xx sockerr <<<"${ROUND[$name]}"
			vs=
			[[ $name == bare ]] || vs="$(per "$rps" "$brps"), $(per "$p99" "$bp99"), $(per "$cpu" "$bcpu")"
			((non2xx == 0)) || vs+="  ($non2xx answers not 2xx/3xx: not valid)"
			((sockerr == 0)) || vs+="  ($sockerr socket errors)"
			printf '%-5s %-6s %-9s %9.0f %8s %8s %11.1f %7.1f   %s\n' "$round" "$conns" "$name" "$rps" "$(ms "$p50")" "$(ms "$p99")" \
				"$cpu" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$vs"
		done
	done
done

# ---- summary and plots

"$KIT" summary -in "$OUT" | tee "$OUT/summary.txt"
echo
echo "results: $OUT"
if [[ -d $ROOT/bench/plot ]]; then
	mkdir -p "${PLOTS:-$OUT}"
	(cd "$ROOT" && go run ./bench/plot -in "$OUT" -out "${PLOTS:-$OUT}") || echo "perf.sh: bench/plot failed" >&2
fi
