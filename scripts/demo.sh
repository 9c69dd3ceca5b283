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
