#!/usr/bin/env bash
# Fuzz Sluice's input paths under libFuzzer (`cargo fuzz`, nightly):
#
#   scripts/fuzz.sh                  every target, 10 minutes each
#   scripts/fuzz.sh ingest 60        one target, 60 seconds
#   scripts/fuzz.sh all 30           every target, 30 seconds each
#
# Targets (fuzz/src/lib.rs): ingest manifest cron scenario component
# deploy query projection. Each run starts from fuzz/corpus/<target> (and
# fuzz/regressions/<target>) and works in <target-dir>/fuzz/: the corpus
# it grows, crashes under artifacts/, one summary line per target in
# summary.txt (runs, seconds, executions per second, corpus size). A
# crash is a bug: copy its input into fuzz/regressions/<target>/, where
# the test suite's smoke (tests/all/fuzz.rs) replays it from then on.
#
# Installs, pinned, on first use: the nightly toolchain (rustup) and
# cargo-fuzz 0.13.2 (crates.io, into ~/.cache/sluice/tools). The first
# build compiles Sluice with coverage instrumentation: about 20 minutes on
# a 2-core machine. No sanitizer (-s none): the code under test is safe
# Rust, and wasmtime's own signal handlers are what catch guest traps.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
targets=(ingest manifest cron scenario component deploy query projection)
which="${1:-all}"
secs="${2:-600}"
if [ "$which" != all ]; then
    if [[ ! " ${targets[*]} " =~ " $which " ]]; then
        echo "error: no fuzz target $which (targets: ${targets[*]})" >&2
        exit 2
    fi
    targets=("$which")
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
tools="${SLUICE_CACHE:-$HOME/.cache/sluice}/tools/cargo-fuzz-0.13.2"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "installing cargo-fuzz 0.13.2 into $tools" >&2
    cargo install --locked --quiet cargo-fuzz --version 0.13.2 --root "$tools"
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
# The scenario target runs the echo test component: build it (stable).
cargo build --quiet -p sluice-test-components
export SLUICE_FUZZ_ECHO="$CARGO_TARGET_DIR/wasm-guests/wasm32-wasip2/release/echo.wasm"
work="$CARGO_TARGET_DIR/fuzz"
mkdir -p "$work"
export PATH="$tools/bin:$PATH"
fuzz() {
    local cmd=$1
    shift
    cargo +nightly fuzz "$cmd" --fuzz-dir fuzz --sanitizer none \
        --target-dir "$CARGO_TARGET_DIR/fuzz-build" "$@"
}
fuzz build
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    mkdir -p "$corpus" "$work/artifacts/$t"
    seeds=("fuzz/corpus/$t")
    [ -d "fuzz/regressions/$t" ] && seeds+=("fuzz/regressions/$t")
    echo "fuzzing $t for ${secs}s" >&2
    log="$work/$t.log"
    started=$(date +%s)
    status=0
    fuzz run "$t" "$corpus" "${seeds[@]}" -- -max_total_time="$secs" \
        -artifact_prefix="$work/artifacts/$t/" -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    took=$(($(date +%s) - started))
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    size=$(find "$corpus" -type f | wc -l)
    line="$(date -u +%FT%TZ) $t: $runs runs in ${took}s, corpus $size, exit $status"
    echo "$line" | tee -a "$work/summary.txt"
    if [ "$status" != 0 ]; then
        echo "error: fuzz target $t failed; see $log and $work/artifacts/$t/" >&2
        tail -30 "$log" >&2
        exit 1
    fi
done
