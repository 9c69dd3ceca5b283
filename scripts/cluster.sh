#!/usr/bin/env bash
# Try Sluice on several nodes: a throwaway PostgreSQL and three
# `sluice serve` nodes on loopback, sharing it.
#
#   scripts/cluster.sh [NODES]     (default 3; ports 7878, 7879, …)
#
# Builds the binary if needed, prints each node's URL and the admin token,
# and keeps running until Ctrl-C, which stops the nodes and the database
# and removes it. Kill a node meanwhile (the PIDs are printed) and watch its
# rules move: `sluice cluster --url http://127.0.0.1:7878`.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
source scripts/env.sh
build_sluice
sluice="$CARGO_TARGET_DIR/debug/sluice"
scripts/pg.sh install

work=$(mktemp -d)
# The database belongs to the postgres user when this runs as root.
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    scripts/pg.sh stop "$work/pg"
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

url=$(scripts/pg.sh start "$work/pg")
export SLUICE_ADMIN_TOKEN=${SLUICE_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
echo "PostgreSQL: $url"
for i in $(seq 0 $((nodes - 1))); do
    port=$((7878 + i))
    "$sluice" serve --store "$url" --listen "127.0.0.1:$port" --lease-ttl 5s \
        --cache-dir "$work/cache" >"$work/node$i.out" 2>"$work/node$i.log" &
    pids+=($!)
    until grep -q "listening on" "$work/node$i.out" 2>/dev/null; do
        if ! kill -0 "${pids[-1]}" 2>/dev/null; then
            cat "$work/node$i.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "node $i: http://127.0.0.1:$port (pid ${pids[-1]}, log $work/node$i.log)"
done
echo "admin token: $SLUICE_ADMIN_TOKEN"
echo "Ctrl-C stops the nodes and removes the database."
wait
