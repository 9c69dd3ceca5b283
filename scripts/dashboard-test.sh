#!/usr/bin/env bash
# The dashboard's end-to-end tests: a real `sluice serve` on loopback, rules
# deployed with the CLI, the page in Debian's Chromium driven by
# playwright-core (from npm, pinned in tests/dashboard/package-lock.json;
# it downloads no browser), axe-core for accessibility. Installs chromium
# with apt when it is missing. Screenshots of every view are left in
# <target>/dashboard-artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "dashboard-test.sh: Chromium is missing; install it (Debian: chromium)" >&2
        exit 1
    fi
    echo "installing chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
fi

build_sluice
cargo build --quiet --release --target wasm32-wasip2 \
    --manifest-path examples/Cargo.toml --target-dir "$target/wasm-guests"
(cd tests/dashboard && npm ci --no-audit --no-fund --loglevel=error)

export SLUICE_BIN="$target/debug/sluice"
export SLUICE_WASM_DIR="$target/wasm-guests/wasm32-wasip2/release"
export SLUICE_ARTIFACTS="$target/dashboard-artifacts"
export CHROMIUM="${CHROMIUM:-$(command -v chromium)}"
cd tests/dashboard
npm test --silent
echo "dashboard screenshots: $SLUICE_ARTIFACTS" >&2
