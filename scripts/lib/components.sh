# Sourced by the language build scripts (examples/*/build.sh): where tools
# and built components are kept, and a content-addressed component cache.
#
#   SLUICE_CACHE     tools and cached components (default ~/.cache/sluice)
#   SLUICE_NO_CACHE  set to 1 to rebuild every component (for timing builds)

SLUICE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
SLUICE_TOOLS="$SLUICE_CACHE/tools"
mkdir -p "$SLUICE_CACHE/components" "$SLUICE_TOOLS"

# Tools installed by cargo (pinned, built from crates.io).
WAC_VERSION=0.12.0
WIT_BINDGEN_VERSION=0.61.1

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# The default output folder for a language's components.
default_out() {
    printf '%s/languages/%s\n' "${CARGO_TARGET_DIR:-$SLUICE_ROOT/target}" "$1"
}

# A short hash of the named files' paths and contents, plus any extra words
# (tool versions): the cache key of a component built from them.
content_key() {
    local f
    {
        for f in "$@"; do
            if [[ -f "$f" ]]; then
                # The same file gives the same key however it was named.
                f=$(realpath "$f")
                printf 'file %s ' "${f#"$SLUICE_ROOT"/}"
                sha256sum < "$f"
            else
                printf 'word %s\n' "$f"
            fi
        done
    } | sha256sum | cut -c1-20
}

# build_cached LANG RULE KEY OUT BUILD_FUNCTION [ARGS...]
# Copies the cached component for KEY to OUT, or runs BUILD_FUNCTION with the
# path it must write and ARGS, caches the result and copies it. Prints one
# line: "<lang> <rule> built|cached <seconds> <path>".
build_cached() {
    local lang=$1 rule=$2 key=$3 out=$4 build=$5
    shift 5
    local cached="$SLUICE_CACHE/components/$lang-$rule-$key.wasm"
    local how=cached
    if [[ "${SLUICE_NO_CACHE:-0}" == 1 || ! -s "$cached" ]]; then
        local tmp="$cached.tmp.$$"
        local started
        started=$(date +%s.%N)
        "$build" "$tmp" "$@" || { rm -f "$tmp"; die "building the $lang rule $rule failed"; }
        [[ -s "$tmp" ]] || die "building the $lang rule $rule produced no component"
        mv -f "$tmp" "$cached"
        how="built in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s"
        # Keep the three newest builds of each rule.
        ls -t "$SLUICE_CACHE/components/$lang-$rule-"*.wasm 2>/dev/null | tail -n +4 | xargs -r rm -f
    fi
    mkdir -p "$(dirname "$out")"
    cp -f "$cached" "$out.tmp.$$" && mv -f "$out.tmp.$$" "$out"
    say "$lang $rule: $how ($(stat -c %s "$out") bytes) -> $out"
}

# cargo_tool NAME CRATE VERSION [cargo install flags...]: a pinned tool from
# crates.io, installed into $SLUICE_TOOLS once. Built without optimisation
# and in one target directory for all of them (they share most of their
# dependencies): wac and wit-bindgen then take 1.7 minutes to install on a
# 2-core machine instead of 4, and a component build takes about a second
# more.
cargo_tool() {
    local name=$1 crate=$2 version=$3
    shift 3
    local bin="$SLUICE_TOOLS/bin/$name"
    if [[ ! -x "$bin" ]] || ! "$bin" --version 2>/dev/null | grep -q " $version"; then
        say "installing $crate $version (cargo install; a minute the first time)"
        cargo install --quiet "$crate" --version "$version" --locked --debug \
            --root "$SLUICE_TOOLS" --target-dir "$SLUICE_TOOLS/target" "$@" >&2 ||
            die "cargo install $crate $version failed"
    fi
    printf '%s\n' "$bin"
}

# The virtualenv examples/python/build.sh installs componentize-py into.
python_venv() {
    printf '%s/python-venv-%s\n' "$SLUICE_CACHE" "$(content_key "$SLUICE_ROOT/examples/python/requirements.txt")"
}

# The rule folders of a language: those with a rule.toml.
rule_dirs() {
    local d
    for d in "$1"/*/; do
        [[ -f "$d/rule.toml" ]] && basename "$d"
    done
}

# pr-digest -> pr_digest, as cargo names the Rust examples' components.
component_name() {
    printf '%s\n' "${1//-/_}"
}
