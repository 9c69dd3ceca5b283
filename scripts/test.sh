#!/usr/bin/env bash
# Run every test: unit, integration (real components, the real binary; the
# crash points, 50 seeds each) and doc tests on the embedded SQLite store
# (the tests about PostgreSQL itself start a throwaway cluster of their
# own); then, side by side, the suites that touch the store (log, engine,
# conformance, server, ingest crashes, the two lease crash points,
# replay, shadows) again on a throwaway PostgreSQL, which this script
# starts and stops, and one after another the dashboard in Chromium
# (scripts/dashboard-test.sh), the API against its OpenAPI document
# (scripts/api-check.sh) and a 1-minute soak (scripts/soak.sh). Installs
# the wasm32-wasip2 target, PostgreSQL, Chromium and schemathesis first if
# they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/pg.sh install
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")

cargo test --workspace "$@"

# What the second half runs, built now: it runs without cargo, so that
# the scripts' own (no-op) builds are not held up by a cargo lock.
build_sluice
cargo build --quiet --release --target wasm32-wasip2 \
    --manifest-path examples/Cargo.toml --target-dir "$target/wasm-guests"
all=$(cargo test --quiet -p sluice --test all --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "all" and m.get("executable"):
        print(m["executable"])')
[ -x "$all" ] || { echo "test.sh: the integration test binary was not found" >&2; exit 1; }

pg=$(mktemp -d)
logs=$(mktemp -d)
pg_pid=""
cleanup() {
    [ -n "$pg_pid" ] && kill "$pg_pid" 2>/dev/null && wait "$pg_pid" 2>/dev/null
    scripts/pg.sh stop "$pg"
    rm -rf "$pg" "$logs"
}
trap cleanup EXIT
rmdir "$pg"
url=$(scripts/pg.sh start "$pg" --fast)
echo "the store suites again, on PostgreSQL ($url), beside the scripts below" >&2
# (cargo runs a test binary in its package's directory.)
(cd host && SLUICE_TEST_POSTGRES=$url "$all" \
    log:: engine:: conformance:: server:: dispatch:: crash::acknowledged deploy:: timing:: core:: replay:: shadow:: \
    failpoints::lease_ \
    --skip sqlite_) >"$logs/postgres" 2>&1 &
pg_pid=$!

status=0
echo "the dashboard in Chromium" >&2
scripts/dashboard-test.sh || status=1
echo "the API against its OpenAPI document" >&2
scripts/api-check.sh || status=1
echo "a 1-minute soak (scripts/soak.sh 30 is the real one)" >&2
scripts/soak.sh 1 || status=1

pg_status=0
wait "$pg_pid" || pg_status=$?
pg_pid=""
echo "the store suites on PostgreSQL:" >&2
if [ "$pg_status" = 0 ]; then
    grep -E '^test result' "$logs/postgres" >&2
else
    cat "$logs/postgres" >&2
    echo "test.sh: the store suites failed on PostgreSQL (exit $pg_status)" >&2
    status=1
fi
exit "$status"
