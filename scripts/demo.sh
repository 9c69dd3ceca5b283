#!/usr/bin/env bash
# Build the example rules and push their sample events through each rule's
# filter / partition key / membership and handler, printing what happens.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release --target wasm32-wasip2 \
    --manifest-path examples/Cargo.toml --target-dir "$target/wasm-guests"
cargo build --quiet -p sluice --bin sluice
sluice="$target/debug/sluice"
wasm="$target/wasm-guests/wasm32-wasip2/release"
export SLUICE_CACHE_DIR="$target/sluice-cache"

run() {
    local rule=$1 reason=$2
    echo
    echo "== $rule (reason: $reason) =="
    echo "-- events: examples/$rule/events.ndjson"
    "$sluice" eval "$wasm/${rule//-/_}.wasm" --events "examples/$rule/events.ndjson" --reason "$reason"
}

run pr-digest count-reached
run user-inactive dwell:inactive
run hourly-summary schedule

echo
echo "== pr-digest under its trigger (sluice test: real log, windows, fires; virtual clock) =="
echo "-- events: examples/pr-digest/scenario.ndjson (ends with {\"advance\": \"2h\"})"
"$sluice" test "$wasm/pr_digest.wasm" --manifest examples/pr-digest/rule.toml \
    --events examples/pr-digest/scenario.ndjson

echo
echo "== user-inactive under its dwell trigger (sluice test) =="
echo "-- events: examples/user-inactive/scenario.ndjson: u-42 and u-7 sign up;"
echo "   u-42 is active on Jan 3, u-7 is deleted on Jan 5 (leave); the clock"
echo "   moves to Jan 11, u-42 comes back on Jan 12, the clock moves to Jan 20"
"$sluice" test "$wasm/user_inactive.wasm" --manifest examples/user-inactive/rule.toml \
    --events examples/user-inactive/scenario.ndjson

echo
echo "== hourly-summary under its schedule (sluice test) =="
echo "-- events: examples/hourly-summary/scenario.ndjson: orders from 10:05 to"
echo "   11:10 (Berlin), the clock moves to 13:30, then the engine is down 2h"
echo "   ({\"down\": \"2h\"}; catch_up = \"latest\": 14:00 is missed, 15:00 runs)"
"$sluice" test "$wasm/hourly_summary.wasm" --manifest examples/hourly-summary/rule.toml \
    --events examples/hourly-summary/scenario.ndjson
