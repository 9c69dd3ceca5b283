#!/usr/bin/env bash
# Run every test: unit, integration (real components, the real binary; the
# crash points, 50 seeds each) and doc tests on the embedded SQLite store
# (the tests about PostgreSQL itself start a throwaway cluster of their
# own), then the suites that touch the store (log, engine, conformance,
# server, ingest crashes, the two lease crash points) again on a throwaway
# PostgreSQL, which this script starts and stops; then the dashboard in
# Chromium (scripts/dashboard-test.sh), the API against its OpenAPI
# document (scripts/api-check.sh) and a 1-minute soak (scripts/soak.sh). Installs the wasm32-wasip2 target,
# PostgreSQL, Chromium and schemathesis first if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/pg.sh install

cargo test --workspace "$@"

pg=$(mktemp -d)
trap 'scripts/pg.sh stop "$pg"; rm -rf "$pg"' EXIT
rmdir "$pg"
url=$(scripts/pg.sh start "$pg" --fast)
echo "the store suites again, on PostgreSQL ($url)" >&2
SLUICE_TEST_POSTGRES=$url cargo test -p sluice --test all -- \
    log:: engine:: conformance:: server:: dispatch:: crash::acknowledged deploy:: timing:: core:: replay:: shadow:: \
    failpoints::lease_ \
    --skip sqlite_

echo "the dashboard in Chromium" >&2
scripts/dashboard-test.sh

echo "the API against its OpenAPI document" >&2
scripts/api-check.sh

echo "a 1-minute soak (scripts/soak.sh 30 is the real one)" >&2
scripts/soak.sh 1
