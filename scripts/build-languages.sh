#!/usr/bin/env bash
# Build the example rules of every language into OUT (default
# <target>/languages): OUT/<language>/<rule>.wasm for rust, python,
# javascript and c, then OUT/index.tsv with one "language rule path" line
# per component, and OUT/tools.path with the directories of the tools
# they installed (for `sluice build` of projects `sluice new` writes; see
# tests/all/languages.rs). Each language's build.sh installs its tools from the
# registries (pinned) the first time; components are cached by content
# hash, so a second run rebuilds nothing. The conformance kit
# (tests/kit, tests/all/languages.rs) runs against what this builds.
#
#   scripts/build-languages.sh [OUT]
#   SLUICE_LANGUAGES="rust c" scripts/build-languages.sh   # a subset
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/lib/components.sh"
out="${1:-${CARGO_TARGET_DIR:-$root/target}/languages}"
languages=(${SLUICE_LANGUAGES:-rust python javascript c})
mkdir -p "$out"

# One build at a time per cache (tests and CI may start this at once).
exec 9> "$SLUICE_CACHE/build-languages.lock"
flock 9

build_rust() {
    source "$root/scripts/env.sh"
    local guests="${CARGO_TARGET_DIR:-$root/target}/wasm-guests"
    cargo build --quiet --release --target wasm32-wasip2 --manifest-path "$root/examples/Cargo.toml" \
        --target-dir "$guests" >&2
    local rule
    for rule in pr-digest user-inactive; do
        local name
        name=$(component_name "$rule")
        mkdir -p "$out/rust"
        cp -f "$guests/wasm32-wasip2/release/$name.wasm" "$out/rust/$name.wasm"
        say "rust $rule: cargo ($(stat -c %s "$out/rust/$name.wasm") bytes) -> $out/rust/$name.wasm"
    done
}

for lang in "${languages[@]}"; do
    started=$SECONDS
    case "$lang" in
    rust) build_rust ;;
    python | javascript | c) bash "$root/examples/$lang/build.sh" "$out/$lang" ;;
    *) die "unknown language $lang (rust, python, javascript, c)" ;;
    esac
    say "$lang: $((SECONDS - started)) s"
done

# Not a language: JavaScript built with componentize-js's defaults, which
# import wasi:http. The engine must refuse it, naming the import.
if [[ " ${languages[*]} " == *" javascript "* ]]; then
    bash "$root/examples/javascript/build.sh" --with-wasi-http "$out/refused/javascript-wasi-http" \
        pr-digest
fi

# Where the tools are, for `sluice build` (it looks on PATH).
tools="$out/tools.path.tmp.$$"
for lang in "${languages[@]}"; do
    case "$lang" in
    python) printf '%s\n' "$(python_venv)/bin" "$SLUICE_TOOLS/bin" ;;
    javascript) printf '%s\n' "$root/examples/javascript/node_modules/.bin" ;;
    c) printf '%s\n' "$SLUICE_TOOLS/bin" ;;
    esac
done | awk '!seen[$0]++' > "$tools"
mv -f "$tools" "$out/tools.path"

index="$out/index.tsv.tmp.$$"
for lang in "${languages[@]}"; do
    for wasm in "$out/$lang"/*.wasm; do
        [[ -e "$wasm" ]] || continue
        rule=$(basename "$wasm" .wasm)
        printf '%s\t%s\t%s\n' "$lang" "${rule//_/-}" "$wasm"
    done
done > "$index"
mv -f "$index" "$out/index.tsv"
