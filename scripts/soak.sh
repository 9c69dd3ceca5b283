#!/usr/bin/env bash
# A soak: mixed load against a real `sluice serve` (scripts/soak.py says
# what), sampling resident memory, open files, threads and database size,
# failing when one of them keeps growing or anything answers 5xx.
#
#   scripts/soak.sh              30 minutes; samples in <target>/soak.csv
#   scripts/soak.sh 1            a 1-minute smoke (growth is not judged
#                                under 10 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
minutes="${1:-30}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
# The server as `cargo build` makes it, and the test components.
build_sluice
cargo build --quiet -p sluice-test-components
exec python3 scripts/soak.py --binary "$CARGO_TARGET_DIR/debug/sluice" \
    --guests "$CARGO_TARGET_DIR/wasm-guests/wasm32-wasip2/release" \
    --minutes "$minutes" --out "$CARGO_TARGET_DIR/soak.csv"
