#!/usr/bin/env bash
# The API against its own OpenAPI document: schemathesis (PyPI, pinned;
# installed into a venv under ~/.cache/sluice) drives a real `sluice serve`
# on loopback with a tenant's token, then with the admin token, and fails
# on any 5xx, any response the document does not describe, any request
# the document allows that the server refuses, and any it forbids that
# the server accepts. tests/api/schemathesis.toml says where a refusal is
# the server doing its job (a random manifest is not a rule).
#
#   scripts/api-check.sh                        # the CI pass: 10 examples, seed 1
#   SLUICE_API_EXAMPLES=200 SLUICE_API_SEED=$RANDOM scripts/api-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
examples="${SLUICE_API_EXAMPLES:-10}"
seed="${SLUICE_API_SEED:-1}"
version=4.32.5

venv="$HOME/.cache/sluice/schemathesis-$version"
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "installing schemathesis $version" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

build_sluice
work=$(mktemp -d)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
admin="api-check-$RANDOM$RANDOM"
SLUICE_ADMIN_TOKEN=$admin "$target/debug/sluice" serve --db "$work/s.db" \
    --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
server_pid=$!
for _ in $(seq 100); do
    grep -q "listening on" "$work/out" 2>/dev/null && break
    sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$work/out")
[ -n "$url" ] || { cat "$work/err" >&2; echo "api-check.sh: the server did not start" >&2; exit 1; }
token=$(curl -sf -X POST -H "Authorization: Bearer $admin" -H 'content-type: application/json' \
    -d '{"name":"acme"}' "$url/v1/tenants" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"]["token"])')

run() {
    local who=$1
    shift
    echo "schemathesis: $who routes ($examples examples, seed $seed)" >&2
    # The feed with live=true streams until the client leaves: a request
    # timeout ends it (and keeps any other slow answer from hanging CI).
    (cd tests/api && "$venv/bin/schemathesis" --config-file schemathesis.toml run \
        "$url/v1/openapi.json" --checks all --max-examples "$examples" --seed "$seed" \
        --request-timeout 5 --no-color "$@") || { echo "api-check.sh: the $who pass failed (see above)" >&2; return 1; }
}
run tenant -H "Authorization: Bearer $token" --exclude-tag tenants --exclude-tag admin
run admin -H "Authorization: Bearer $admin" --include-tag tenants --include-tag admin
