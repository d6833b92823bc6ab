#!/usr/bin/env bash
# Runs the unit tests of the patched tansu crates in vendor/ (among them the tests of our
# patches: tansu-storage `dynostore::tests::produce_order`, tansu-broker `api_versions`,
# tansu-service `inline_codec_tests`).
#
# The crates are not workspace members (their dev-dependencies are not in our lock file), so
# they are tested in a scratch workspace that links to them, starts from our Cargo.lock (the
# versions we ship) and patches tansu-storage and tansu-service to our copies, as the main
# workspace does. It
# uses our target directory unless CARGO_TARGET_DIR says otherwise; its profiles and feature
# sets differ from the workspace's, so it builds its dependency tree anew either way (~7 min
# cold on 2 cores).
#
# Usage: scripts/vendor-test.sh [extra `cargo test` arguments, e.g. a test name filter]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

ln -s "$root/vendor/tansu-storage" "$scratch/tansu-storage"
ln -s "$root/vendor/tansu-broker" "$scratch/tansu-broker"
ln -s "$root/vendor/tansu-service" "$scratch/tansu-service"
# tansu's own unit tests write their logs to ../logs/<crate> of the crate's real folder.
mkdir -p "$root/vendor/logs/tansu-storage" "$root/vendor/logs/tansu-broker"
cp "$root/Cargo.lock" "$scratch/Cargo.lock"
cat > "$scratch/Cargo.toml" <<'EOF'
[workspace]
resolver = "2"
members = ["tansu-storage", "tansu-broker", "tansu-service"]

[patch.crates-io]
tansu-storage = { path = "tansu-storage" }
tansu-service = { path = "tansu-service" }

# Pass or fail is all these runs report: without debug info the scratch target is a fraction
# of its size (it builds beside the integration tests, on the same disk).
[profile.dev]
debug = false
EOF

cd "$scratch"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
echo "== vendor: tansu-storage (dynostore) unit tests"
cargo test -p tansu-storage --features dynostore --lib "$@"
echo "== vendor: tansu-broker unit tests"
cargo test -p tansu-broker --no-default-features --features dynostore,tansu-storage/dynostore --lib "$@"
echo "== vendor: tansu-service unit tests"
cargo test -p tansu-service --lib "$@"
