#!/usr/bin/env bash
# A throwaway PostgreSQL on loopback, for the tests and for trying Sluice on
# PostgreSQL without installing a service.
#
#   scripts/pg.sh start DIR [--fast] [--until-exit PID]
#       initialise a cluster in DIR (a new or empty directory), start it on
#       a free port and print its URL; with --until-exit, stop it and remove
#       DIR once process PID has exited
#   scripts/pg.sh stop DIR
#       stop it (DIR stays; remove it after)
#   scripts/pg.sh install
#       install Debian's PostgreSQL server when it is missing (as root)
#
# The cluster listens on 127.0.0.1 only, with its socket in DIR, and trusts
# local connections: it is for tests and trials, never for data you keep.
# `--fast` turns fsync off (the tests kill Sluice, never PostgreSQL).
# `initdb` refuses to run as root; as root the cluster belongs to the
# `postgres` user.
set -euo pipefail

bindir() {
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir
        return
    fi
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then
            echo "$d"
            return
        fi
    done
    echo "pg.sh: PostgreSQL's server binaries (initdb, pg_ctl) are not installed;" \
        "on Debian: apt-get install postgresql" >&2
    exit 1
}

# Run a PostgreSQL binary as the cluster's owner.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cmd=${1:-}
dir=${2:-}
if [ "$cmd" = install ]; then
    if (bindir >/dev/null 2>&1); then
        exit 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "pg.sh: PostgreSQL is missing; install its server (Debian: postgresql)" >&2
        exit 1
    fi
    echo "installing postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    exit 0
fi
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    sed -n '5,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi

case "$cmd" in
start)
    bin=$(bindir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ -n "$(ls -A "$dir")" ]; then
        echo "pg.sh: $dir is not empty; give a new or empty directory" >&2
        exit 1
    fi
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
        if ! runuser -u postgres -- test -w "$dir"; then
            echo "pg.sh: the postgres user cannot reach $dir: make its parent" \
                "directories traversable (chmod o+x) or choose another place" >&2
            exit 1
        fi
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U sluice -A trust -E UTF8 --locale=C \
        >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    opts="-c listen_addresses=127.0.0.1 -k $dir -c max_connections=400"
    shift 2
    owner=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --fast) opts="$opts -c fsync=off -c full_page_writes=off" ;;
        --until-exit)
            owner=${2:?--until-exit needs a pid}
            shift
            ;;
        *)
            echo "pg.sh: unknown option $1" >&2
            exit 2
            ;;
        esac
        shift
    done
    # A port can be taken between choosing it and binding it: try a few.
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port $opts" start >/dev/null 2>&1; then
            echo "$port" >"$dir/port"
            as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U sluice sluice
            if [ -n "$owner" ]; then
                # Detached, with no stdio of the caller's (a caller reading
                # this script's output must see it end).
                setsid bash -c "while kill -0 $owner 2>/dev/null; do sleep 1; done
                    '$0' stop '$dir'; rm -rf '$dir'" </dev/null >/dev/null 2>&1 &
            fi
            echo "postgres://sluice@127.0.0.1:$port/sluice"
            exit 0
        fi
    done
    cat "$dir/server.log" >&2
    exit 1
    ;;
stop)
    bin=$(bindir)
    if [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    ;;
*)
    echo "pg.sh: unknown command $cmd (start or stop)" >&2
    exit 2
    ;;
esac
