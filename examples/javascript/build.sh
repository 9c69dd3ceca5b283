#!/usr/bin/env bash
# Build the JavaScript rules (every folder here with a rule.toml) into
# components: examples/javascript/build.sh [OUT_DIR]
#
# Installs componentize-js first, at the versions package-lock.json pins.
# (`npm install --no-save` rather than `npm ci`: npm 11 leaves optional
# per-platform packages that were never published out of the lock file,
# and `npm ci` then refuses the lock.) Components are built without the WASI features rules may not use
# (`--disable http fetch-event`: the engine offers no wasi:http), and cached
# by the hash of their sources and the lock file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../../scripts/lib/components.sh"
out="${1:-$(default_out javascript)}"

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
    (cd "$here" && "$componentize" "$rule/app.js" --wit "$SLUICE_ROOT/wit" --world-name rule \
        --disable http fetch-event -o "$dest") >&2 || return 1
}

for rule in $(rule_dirs "$here"); do
    key=$(content_key "$here/$rule"/*.js "$here"/*.js "$SLUICE_ROOT/wit"/*.wit \
        "$here/package-lock.json" "$0")
    build_cached javascript "$rule" "$key" "$out/$(component_name "$rule").wasm" build_js "$rule"
done
