#!/usr/bin/env bash
# Run every test: unit, integration (real components, the real binary) and
# doc tests. Installs the wasm32-wasip2 target first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo test --workspace "$@"
