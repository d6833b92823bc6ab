#!/usr/bin/env bash
# Checks of deploy/prometheus with Prometheus' own promtool (Debian's `prometheus` package;
# `scripts/test-infra.sh prereqs` installs it): the scrape configuration, the alert rules, and
# the rules' unit tests (deploy/prometheus/tests: every alert fires on its series and stays
# quiet on the others). Any failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/../deploy/prometheus"

command -v promtool >/dev/null 2>&1 || {
    echo "promtool missing: apt-get install prometheus (or run scripts/test-infra.sh prereqs)" >&2
    exit 1
}
promtool check config prometheus.yml
promtool check rules rules/*.yml
promtool test rules tests/*.test.yml
