#!/usr/bin/env bash
# Build the C rules (every folder here with a rule.toml) into components:
# examples/c/build.sh [OUT_DIR]
#
# Installs what it needs first: clang, lld, wasi-libc and clang's wasm32
# runtime from Debian (packages.txt, pinned), and wit-bindgen-cli from
# crates.io for the bindings (generated from wit/ at every build, never
# committed). rustup's wasm-component-ld links the objects straight into a
# component. Runs the JSON reader's native tests on the way. Components are
# cached by the hash of their sources and tool versions.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../../scripts/lib/components.sh"
out="${1:-$(default_out c)}"

# Debian packages, at the pinned versions.
missing=()
while read -r spec; do
    [[ -z "$spec" || "$spec" == \#* ]] && continue
    name=${spec%%=*} version=${spec#*=}
    [[ "$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null)" == "$version" ]] || missing+=("$spec")
done < "$here/packages.txt"
if ((${#missing[@]})); then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    say "installing ${missing[*]} (apt-get)"
    if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        "${sudo[@]}" apt-get update >&2
        "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
            die "apt-get could not install ${missing[*]}; see apt-cache policy for what Debian offers and update $here/packages.txt"
    fi
fi
wit_bindgen=$(cargo_tool wit-bindgen wit-bindgen-cli "$WIT_BINDGEN_VERSION")
source "$SLUICE_ROOT/scripts/env.sh"
host=$(rustc -vV | sed -n 's/^host: //p')
component_ld="$(rustc --print sysroot)/lib/rustlib/$host/bin/wasm-component-ld"
[[ -x "$component_ld" ]] || die "wasm-component-ld not found at $component_ld (it ships with rustup's stable toolchain)"

cflags=(-O2 -Wall -Wextra -Werror -std=c11)

# The JSON reader and writer, natively: a quick check before any rule uses it.
tests="${CARGO_TARGET_DIR:-$SLUICE_ROOT/target}/c-tests"
mkdir -p "$tests"
cc "${cflags[@]}" -fsanitize=address,undefined -I"$here" "$here/json.c" "$here/json_test.c" \
    -o "$tests/json_test"
"$tests/json_test" >&2

build_c() {
    local dest=$1 rule=$2
    local work
    work=$(mktemp -d) || return 1
    # The bindings (rule.h, rule.c, rule_component_type.o) from the WIT.
    local said
    said=$("$wit_bindgen" c "$SLUICE_ROOT/wit" --world projected-rule --rename-world rule --out-dir "$work" 2>&1) || {
        say "$said"
        return 1
    }
    local objects=("$work/rule_component_type.o") src
    for src in "$here/json.c" "$here/sluice.c" "$here/$rule/rule.c" "$work/rule.c"; do
        local obj
        obj="$work/$(basename "$(dirname "$src")")-$(basename "$src" .c).o"
        # The generated file is not held to -Werror.
        if [[ "$src" == "$work/rule.c" ]]; then
            clang --target=wasm32-wasi -O2 -I"$work" -c "$src" -o "$obj" || return 1
        else
            clang --target=wasm32-wasi "${cflags[@]}" -I"$here" -I"$work" -c "$src" -o "$obj" ||
                return 1
        fi
        objects+=("$obj")
    done
    clang --target=wasm32-wasi -mexec-model=reactor -fuse-ld="$component_ld" \
        -Wl,--wasi-adapter=reactor -Wl,--strip-all "${objects[@]}" -o "$dest" || return 1
    rm -rf "$work"
}

for rule in $(rule_dirs "$here"); do
    key=$(content_key "$here/$rule"/*.c "$here"/*.c "$here"/*.h "$SLUICE_ROOT/wit"/*.wit \
        "$here/packages.txt" "$0" "wit-bindgen-$WIT_BINDGEN_VERSION" "$component_ld" \
        "$(rustc --version)")
    build_cached c "$rule" "$key" "$out/$(component_name "$rule").wasm" build_c "$rule"
done
