#!/usr/bin/env bash
# The test command: every unit and integration test of the workspace against real PostgreSQL
# and Apache Kafka (the `cluster` target: three Apache Kafka brokers).
#
# - With SAGAFLOW_TEST_DATABASE_URL + SAGAFLOW_TEST_KAFKA set, tests use that running
#   infrastructure (fast local loop; the `cluster` target still starts its own brokers).
# - With SAGAFLOW_TEST_OFFICIAL_IMAGES=1, testcontainers uses the official images
#   (postgres:16-alpine, apache/kafka:3.9.1) or whatever SAGAFLOW_TEST_*_IMAGE names.
# - Otherwise (machines without a registry), scripts/test-infra.sh builds local images first:
#   local/sagaflow-postgres:15 and local/apache-kafka:3.9.1 (jars from Maven Central).
#
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test outbox`).
#
# The embedded broker (tansu) lane: `scripts/test.sh --embedded-broker [cargo test args]` runs
# the same tests against the `sagaflow broker` image instead of Apache Kafka.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${SAGAFLOW_TEST_DATABASE_URL:-}" ] || [ -z "${SAGAFLOW_TEST_KAFKA:-}" ]; then
    if [ "${SAGAFLOW_TEST_OFFICIAL_IMAGES:-0}" != 1 ]; then
        # The broker image is our own binary (embedded tansu): build it with the same
        # feature set as the tests so nothing compiles twice (`--bins` alone resolves other
        # features — without the dev-dependencies — and rebuilt the tansu crates).
        cargo build --workspace --all-targets
        bash scripts/test-infra.sh all
        eval "$(bash scripts/test-infra.sh env)"
    fi
fi

lane=apache-kafka
if [ "${1:-}" = --embedded-broker ]; then
    shift
    lane=embedded-broker
    export SAGAFLOW_TEST_KAFKA_IMAGE=${SAGAFLOW_TEST_EMBEDDED_BROKER_IMAGE:?run scripts/test-infra.sh first}
fi
echo "[test.sh] lane $lane: SAGAFLOW_TEST_KAFKA_IMAGE=${SAGAFLOW_TEST_KAFKA_IMAGE:-${SAGAFLOW_TEST_KAFKA:-default}}" >&2

status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
if command -v docker >/dev/null 2>&1; then
    leftovers=$(docker ps -aq --filter label=sagaflow-tests 2>/dev/null || true)
    [ -z "$leftovers" ] || docker rm -f -v $leftovers >/dev/null 2>&1 || true
fi
exit $status
