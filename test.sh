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
# Each fuzzer briefly (go test -fuzz takes one fuzzer and one package at a
# time): 7 fuzzers at FUZZTIME each (default 3s), about a minute in all. FUZZTIME=0
# skips them; a longer FUZZTIME (e.g. 10m) fuzzes for real.
fuzztime=${FUZZTIME-3s}
if [[ $fuzztime != 0 ]]; then
	for fuzzer in $(go test -list '^Fuzz' . | grep '^Fuzz'); do
		if ! out=$(go test -run '^$' -fuzz "^${fuzzer}\$" -fuzztime "$fuzztime" . 2>&1); then
			echo "$out" >&2
			exit 1
		fi
	done
fi
# Benchmarks are not timed here, only run once, so they cannot rot unseen.
go test -run '^$' -bench . -benchtime 1x . >/dev/null
