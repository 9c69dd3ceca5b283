#!/usr/bin/env bash
# Build the JavaScript rules (every folder here with a rule.toml) into
# components: examples/javascript/build.sh [--with-wasi-http] [OUT_DIR [RULE...]]
#
# Installs componentize-js first, at the versions package-lock.json pins.
# (`npm install --no-save` rather than `npm ci`: npm 11 leaves optional
# per-platform packages that were never published out of the lock file,
# and `npm ci` then refuses the lock.) Components are built without the WASI features rules may not use
# (`--disable http fetch-event`: the engine offers no wasi:http), and cached
# by the hash of their sources and the lock file. `--with-wasi-http` keeps
# componentize-js's defaults instead, which import wasi:http: the engine
# refuses such a component and names the import (tests/all/languages.rs
# checks that).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../../scripts/lib/components.sh"
features=(--disable http fetch-event)
variant=javascript
if [[ "${1:-}" == --with-wasi-http ]]; then
    features=()
    variant=javascript-wasi-http
    shift
fi
out="${1:-$(default_out javascript)}"
shift || true
rules=("$@")
((${#rules[@]})) || rules=($(rule_dirs "$here"))

command -v npm >/dev/null || die "Node.js 18 or later with npm is needed to build JavaScript rules"
lock_key=$(content_key "$here/package-lock.json")
if [[ "$(cat "$here/node_modules/.sluice-lock" 2>/dev/null)" != "$lock_key" ]]; then
    say "installing componentize-js (npm install in $here)"
    (cd "$here" && npm install --no-save --no-audit --no-fund --loglevel=error) >&2 ||
        die "npm install failed in $here"
    printf '%s\n' "$lock_key" > "$here/node_modules/.sluice-lock"
fi
componentize="$here/node_modules/.bin/componentize-js"

build_js() {
    local dest=$1 rule=$2
    # componentize-js resolves the rule's `import "../sluice.js"` from the
    # working directory, so it runs here.
    (cd "$here" && "$componentize" "$rule/app.js" --wit "$SLUICE_ROOT/wit" --world-name projected-rule \
        "${features[@]}" -o "$dest") >&2 || return 1
}

for rule in "${rules[@]}"; do
    [[ -f "$here/$rule/app.js" ]] || die "no JavaScript rule $rule (expected $here/$rule/app.js)"
    key=$(content_key "$here/$rule"/*.js "$here"/*.js "$SLUICE_ROOT/wit"/*.wit \
        "$here/package-lock.json" "$0" "${features[@]}")
    build_cached "$variant" "$rule" "$key" "$out/$(component_name "$rule").wasm" build_js "$rule"
done
