#!/usr/bin/env bash
# test.sh — the whole test suite: gofmt, go vet, and every test with the
# race detector. Extra arguments go to `go test` (e.g. -run TestRevoke).
# It prints the failures (a failing test's whole output) and, last, one
# line that says what happened.
set -euo pipefail
cd "$(dirname "$0")"

started=$SECONDS
step="gofmt"
tmp=$(mktemp -d)
elapsed() { local s=$((SECONDS - started)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
finish() {
	local status=$?
	if [[ $status != 0 ]]; then
		local what="" count note
		if [[ $step == tests && -s $tmp/summary ]]; then
			{ read -r count; read -r note || true; } <"$tmp/summary"
			what=": $count${note:+; $note}"
		fi
		echo "./test.sh: FAILED in $step$what (after $(elapsed))" >&2
	fi
	rm -rf "$tmp"
	exit "$status"
}
trap finish EXIT

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [[ -n $unformatted ]]; then
	echo "gofmt would change: $unformatted" >&2
	exit 1
fi
step="go vet"
go vet ./...

# The PostgreSQL and Redis tests use these servers (each test makes its own
# database and key prefix, and removes them). Without them those tests
# skip, saying so; in CI they must run.
export POSTSCALE_TEST_POSTGRES=${POSTSCALE_TEST_POSTGRES-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
export POSTSCALE_TEST_REDIS=${POSTSCALE_TEST_REDIS-redis://127.0.0.1:6379/0}

# The race detector needs cgo and a C compiler; without one (a bare Go
# install) the tests still run, without it. CI always has one.
race=-race
if ! command -v "$(go env CC)" >/dev/null 2>&1; then
	[[ ${CI:-} == true ]] && { echo "CI needs a C compiler for -race" >&2; exit 1; }
	echo "no C compiler found: running the tests without -race" >&2
	race=
else
	export CGO_ENABLED=1
fi
# go test -json, through testsummary: a line per package, a failing test's
# whole output (everything with -v), and the count for the last line.
step="tests"
verbose=
for arg in "$@"; do [[ $arg == -v || $arg == -v=true || $arg == -test.v* ]] && verbose=-v; done
go build -o "$tmp/testsummary" ./internal/testsummary
go test $race -count=1 -timeout 10m -json ./... "$@" | "$tmp/testsummary" $verbose -summary "$tmp/summary"
{ read -r summary; read -r note || true; } <"$tmp/summary"

# Each fuzzer briefly: one instrumented test binary, run once per fuzzer
# (-fuzz takes one at a time), FUZZTIME each (default 5s; about 45s in
# all). FUZZTIME=0 skips them; a longer FUZZTIME (e.g. 10m) fuzzes for real.
fuzztime=${FUZZTIME-5s}
if [[ $fuzztime != 0 ]]; then
	step="fuzzing"
	go test -c -fuzz '^Fuzz' -o "$tmp/fuzz.test" .
	for fuzzer in $("$tmp/fuzz.test" -test.list '^Fuzz'); do
		step="fuzzing ($fuzzer)"
		if ! out=$("$tmp/fuzz.test" -test.run '^$' -test.fuzz "^${fuzzer}\$" -test.fuzztime "$fuzztime" \
			-test.fuzzcachedir "$(go env GOCACHE)/fuzz/github.com/postscale/caddy-postscale" 2>&1); then
			echo "$out" >&2
			echo "$fuzzer failed; its input is in testdata/fuzz/$fuzzer/ (replay: go test -run '$fuzzer' .)" >&2
			exit 1
		fi
	done
fi
# Benchmarks are not timed here, only run once, so they cannot rot unseen.
step="benchmarks"
if ! out=$(go test -run '^$' -bench . -benchtime 1x . 2>&1); then
	echo "$out" >&2
	exit 1
fi

checks="gofmt, vet, "
if [[ -n $race ]]; then checks+="race, "; else checks+="no race detector, "; fi
if [[ $fuzztime != 0 ]]; then checks+="fuzzers $fuzztime each, "; else checks+="no fuzzing, "; fi
echo "./test.sh: $summary (${checks}benchmarks once) in $(elapsed)${note:+; $note}"
