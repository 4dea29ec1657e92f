#!/usr/bin/env bash
# replicas.sh — the several-replicas figures of the README, measured by the
# integration tests that run real gateway processes against PostgreSQL and
# Redis: how fast a revocation on one replica reaches another, how exactly
# three replicas sharing Redis hold a plan, and what clients see when Redis
# or PostgreSQL is cut. Each test makes its own database and key prefix and
# removes them. Repeat with RUNS=n (default 3) to see the spread.
#
#   RUNS=5 bench/replicas.sh
#
# The servers default to the local ones; override with
# POSTSCALE_TEST_POSTGRES and POSTSCALE_TEST_REDIS.
set -euo pipefail
cd "$(dirname "$0")/.."
export POSTSCALE_TEST_POSTGRES=${POSTSCALE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
export POSTSCALE_TEST_REDIS=${POSTSCALE_TEST_REDIS:-redis://127.0.0.1:6379/0}
export CI=true # a missing server is an error here, not a skip
go test -count="${RUNS:-3}" -v -timeout 20m \
	-run '^(TestReplicasSharePostgres|TestReplicasShareRedisLimit|TestRedisCut|TestPostgresCut)$' ./test/ |
	grep -E '^\s+replicas_test\.go:[0-9]+: |^(--- |FAIL|ok)' | sed -E 's/^\s+replicas_test\.go:[0-9]+: //'
