#!/usr/bin/env bash
# Check every Cargo.lock of the project — the host, the test components,
# the examples, the fuzz targets — against a snapshot of the RustSec
# advisory database, offline. An advisory that applies to a locked crate fails the check
# unless .cargo/audit.toml ignores it, with the reason beside it.
#
#   SLUICE_ADVISORY_DB  the database: a directory with crates/<name>/*.md
#                       (default: ../shared/advisory-db beside the checkout)
#
# cargo-audit itself is installed from crates.io (pinned, --locked) into
# ~/.cache/sluice/tools on first use: about 4 minutes on a 2-core machine,
# then nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
db="${SLUICE_ADVISORY_DB:-$(cd .. && pwd)/shared/advisory-db}"
if [ ! -d "$db/crates" ]; then
    echo "error: no advisory database at $db (a copy of github.com/rustsec/advisory-db; set SLUICE_ADVISORY_DB)" >&2
    exit 1
fi
version=0.22.2
root="${SLUICE_CACHE:-$HOME/.cache/sluice}/tools/cargo-audit-$version"
if [ ! -x "$root/bin/cargo-audit" ]; then
    echo "installing cargo-audit $version into $root" >&2
    # Unoptimised: it only reads four lock files.
    cargo install --locked --quiet --debug cargo-audit --version "$version" --root "$root"
fi
snapshot=$(head -2 "$db/SNAPSHOT.txt" 2>/dev/null | tr '\n' ' ' || true)
echo "advisories: $db ${snapshot:+($snapshot)}" >&2
status=0
for lock in Cargo.lock tests/components/Cargo.lock examples/Cargo.lock fuzz/Cargo.lock; do
    echo "cargo audit: $lock" >&2
    # --stale: the snapshot is old on purpose; --no-fetch: no network.
    "$root/bin/cargo-audit" audit --db "$db" --no-fetch --stale --deny unsound --file "$lock" || status=1
done
exit $status
