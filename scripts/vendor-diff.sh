#!/usr/bin/env bash
# Shows our patches to the vendored crates, so that vendor/ can be reviewed: a unified diff of
# vendor/tansu-storage, vendor/tansu-broker, vendor/tansu-service, vendor/rdkafka,
# vendor/sqlx-core and vendor/sqlx-postgres against the pristine tansu-storage, tansu-broker and
# tansu-service 0.6.0, rdkafka 0.39.0, sqlx-core 0.9.0 and sqlx-postgres 0.9.0 published on
# crates.io (each
# patch is listed in vendor/README.md).
#
# The pristine crates are downloaded from static.crates.io (needs curl and network access) into
# a temporary directory, removed on exit. Each crate is compared whole — `src/`, `Cargo.toml`
# (the normalised manifest cargo reads), `Cargo.toml.orig`, README.md, LICENSE,
# .cargo_vcs_info.json — except, for the tansu crates (rdkafka and sqlx are vendored whole):
#   - the `tests/` and `benches/` folders, which the vendored copies removed (upstream's
#     integration tests; not run here). Their `[[test]]`/`[[bench]]` targets and the
#     `criterion` dev-dependency were removed from `Cargo.toml` too, and that does show in the
#     `Cargo.toml` diff;
#   - `Cargo.lock`, which a published crate carries and a path dependency ignores (our
#     workspace's Cargo.lock applies).
# The vendored side is the working tree, so uncommitted changes show too.
#
# Usage: scripts/vendor-diff.sh          the unified diff of both crates
#        scripts/vendor-diff.sh --stat   only a summary (files changed, lines added/removed)
# Exits 0, whether or not there are differences; non-zero only if a download or diff fails.
set -euo pipefail

# crate@version
crates=(tansu-storage@0.6.0 tansu-broker@0.6.0 tansu-service@0.6.0 rdkafka@0.39.0 sqlx-core@0.9.0
  sqlx-postgres@0.9.0)

format=(--patch)
case "${1:-}" in
  "") ;;
  --stat) format=(--stat=120 --summary) ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
  *) echo "usage: $0 [--stat]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pristine" "$work/vendor"

for pinned in "${crates[@]}"; do
  crate=${pinned%@*} version=${pinned#*@}
  curl --fail --silent --show-error --location --retry 3 \
    "https://static.crates.io/crates/$crate/$crate-$version.crate" |
    tar -xzf - -C "$work/pristine"
  mv "$work/pristine/$crate-$version" "$work/pristine/$crate"
  # Removed from the vendored tansu copies on purpose; see the header.
  if [[ $crate == tansu-* ]]; then
    rm -rf "$work/pristine/$crate/tests" "$work/pristine/$crate/benches" \
      "$work/pristine/$crate/Cargo.lock"
  fi
  cp -R "$root/vendor/$crate" "$work/vendor/$crate"
done

cd "$work"
for pinned in "${crates[@]}"; do
  crate=${pinned%@*} version=${pinned#*@}
  echo "== $crate $version (crates.io) -> vendor/$crate"
  status=0
  git -c core.quotepath=off diff --no-index --no-color --no-ext-diff "${format[@]}" \
    "pristine/$crate" "vendor/$crate" || status=$?
  # git diff --no-index exits 1 when the trees differ.
  [ "$status" -le 1 ] || exit "$status"
done
exit 0
