#!/usr/bin/env bash
# test.sh — the whole test suite: gofmt, go vet, and every test with the
# race detector. Extra arguments go to `go test` (e.g. -run TestRevoke).
set -euo pipefail
cd "$(dirname "$0")"

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [[ -n $unformatted ]]; then
	echo "gofmt would change: $unformatted" >&2
	exit 1
fi
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
go test $race -count=1 -timeout 10m ./... "$@"
# Each fuzzer briefly: one instrumented test binary, run once per fuzzer
# (-fuzz takes one at a time), FUZZTIME each (default 5s; about 45s in
# all). FUZZTIME=0 skips them; a longer FUZZTIME (e.g. 10m) fuzzes for real.
fuzztime=${FUZZTIME-5s}
if [[ $fuzztime != 0 ]]; then
	fuzzdir=$(mktemp -d)
	trap 'rm -rf "$fuzzdir"' EXIT
	go test -c -fuzz '^Fuzz' -o "$fuzzdir/fuzz.test" .
	for fuzzer in $("$fuzzdir/fuzz.test" -test.list '^Fuzz'); do
		if ! out=$("$fuzzdir/fuzz.test" -test.run '^$' -test.fuzz "^${fuzzer}\$" -test.fuzztime "$fuzztime" \
			-test.fuzzcachedir "$(go env GOCACHE)/fuzz/github.com/postscale/caddy-postscale" 2>&1); then
			echo "$out" >&2
			echo "$fuzzer failed; its input is in testdata/fuzz/$fuzzer/ (replay: go test -run '$fuzzer' .)" >&2
			exit 1
		fi
	done
fi
# Benchmarks are not timed here, only run once, so they cannot rot unseen.
go test -run '^$' -bench . -benchtime 1x . >/dev/null
