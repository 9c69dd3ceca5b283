#!/usr/bin/env bash
# Build the example rules and push their sample events through each rule's
# filter / partition key / membership and handler, printing what happens.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release --target wasm32-wasip2 \
    --manifest-path examples/Cargo.toml --target-dir "$target/wasm-guests"
build_sluice
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

echo
echo "== the server: sluice serve, a tenant, deploys, live events and fires =="
work=$(mktemp -d)
server_pid=""
tail_pid=""
cleanup() {
    [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export SLUICE_ADMIN_TOKEN="demo-admin-$RANDOM$RANDOM"
SLUICE_LOG=warn "$sluice" serve --db "$work/sluice.db" --listen 127.0.0.1:0 >"$work/serve.out" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
export SLUICE_URL=$(sed -n 's/^listening on //p' "$work/serve.out")
echo "-- sluice serve is listening on $SLUICE_URL"
echo "-- sluice tenants create acme (with the admin token)"
"$sluice" tenants create acme --token "$SLUICE_ADMIN_TOKEN" | tee "$work/tenant.out"
export SLUICE_TOKEN=$(tail -1 "$work/tenant.out")
for rule in pr-digest user-inactive hourly-summary; do
    echo "-- sluice deploy $rule"
    "$sluice" deploy "$wasm/${rule//-/_}.wasm" --manifest "examples/$rule/rule.toml"
done
"$sluice" rules
echo "-- sluice tail (live), while 12 merges of acme/api are emitted: the 10th"
echo "   fills pr-digest's window, which fires; its digest is an output"
"$sluice" tail &
tail_pid=$!
sleep 0.5
for n in $(seq 1 12); do
    echo "{\"source\":\"github\",\"kind\":\"pull_request.merged\",\"payload\":{\"repo\":\"acme/api\",\"number\":$((200 + n)),\"author\":\"dev$((n % 3))\",\"title\":\"Change $n\"}}"
done >"$work/merges.ndjson"
"$sluice" emit -f "$work/merges.ndjson" >/dev/null
# Wait for the digest, then let the tail print it.
timeout 30 "$sluice" tail --after-seq 0 --source rule:pr-digest --count 1 >/dev/null
sleep 0.5
kill "$tail_pid" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true
tail_pid=""
"$sluice" rules show pr-digest | grep -E '"(status|cursor|partitions|fires_ok|matched)"'
echo "-- stopping the server (SIGTERM: it finishes running handlers and flushes the log)"
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=""
