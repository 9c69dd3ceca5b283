#!/usr/bin/env bash
# Build the Python rules (every folder here with a rule.toml) into
# components: examples/python/build.sh [OUT_DIR]
#
# Installs what it needs first: componentize-py (requirements.txt) in a
# virtualenv, and wac-cli from crates.io; the adapter component comes from
# the Rust examples workspace (adapter/). Components are cached by the hash
# of their sources and tool versions, so an unchanged rule is not rebuilt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../../scripts/lib/components.sh"
out="${1:-$(default_out python)}"

command -v python3 >/dev/null || die "python3 (3.11 or later) is needed to build Python rules"
venv=$(python_venv)
if [[ ! -x "$venv/bin/componentize-py" ]]; then
    say "installing componentize-py into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2 ||
        die "pip could not install $here/requirements.txt"
fi
componentize="$venv/bin/componentize-py"
wac=$(cargo_tool wac wac-cli "$WAC_VERSION" --no-default-features)

# The adapter (see wit/rule-python.wit), built like the Rust examples.
guests="${CARGO_TARGET_DIR:-$SLUICE_ROOT/target}/wasm-guests"
source "$SLUICE_ROOT/scripts/env.sh"
cargo build --quiet --release --target wasm32-wasip2 --manifest-path "$SLUICE_ROOT/examples/Cargo.toml" \
    -p sluice-python-adapter --target-dir "$guests" >&2
adapter="$guests/wasm32-wasip2/release/sluice_python_adapter.wasm"

build_python() {
    local dest=$1 rule=$2
    local inner="$dest.inner.wasm"
    # The rule folder first, so its app.py is the one found; then the
    # helpers beside it.
    # (set -e does not apply here: build_cached calls this in a condition.)
    (cd "$here" && "$componentize" --quiet -d "$SLUICE_ROOT/wit" -d "$here/wit" \
        -w sluice:rule-python/python-rule@0.1.0 componentize app \
        -p "$here/$rule" -p "$here" -o "$inner") >&2 || return 1
    "$wac" plug "$adapter" --plug "$inner" -o "$dest" >&2 || return 1
    rm -f "$inner"
}

for rule in $(rule_dirs "$here"); do
    key=$(content_key "$here/$rule"/*.py "$here"/*.py "$here/wit"/*.wit "$SLUICE_ROOT/wit"/*.wit \
        "$here/requirements.txt" "$adapter" "$0" "wac-$WAC_VERSION")
    build_cached python "$rule" "$key" "$out/$(component_name "$rule").wasm" build_python "$rule"
done
