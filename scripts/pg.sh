#!/usr/bin/env bash
# A throwaway local PostgreSQL for the store's tests.
#
#   eval "$(scripts/pg.sh start)"   # prints: export VOXBRIDGE_TEST_PG_URL=postgres://…
#   cargo test -p voxbridge-store
#   scripts/pg.sh stop
#
# `start` is idempotent: a server already answering on the port is reused. Works as root
# (the server runs as the `postgres` user, since PostgreSQL refuses to run as root) or as a
# normal user. Finds initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin.
# Settings: PG_PORT (55432), PG_DIR (/tmp/voxbridge-pg).
set -euo pipefail

PORT="${PG_PORT:-55432}"
DIR="${PG_DIR:-/tmp/voxbridge-pg}"
DATA="$DIR/data"
LOG="$DIR/log"
URL="postgres://postgres@127.0.0.1:${PORT}/postgres"

find_bin() {
    local name="$1" found
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return
    fi
    # newest version first
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$found" && -x "$found/$name" ]]; then
        echo "$found/$name"
        return
    fi
    echo "pg.sh: cannot find $name (install PostgreSQL, e.g. apt-get install postgresql)" >&2
    exit 1
}

# Run a command as the server's owner: `postgres` when we are root, else ourselves.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        # `su` takes one command string; quote every argument.
        local cmd="" a
        for a in "$@"; do cmd+="$(printf '%q ' "$a")"; done
        su postgres -s /bin/bash -c "$cmd"
    else
        "$@"
    fi
}

is_up() {
    local isready
    isready="$(dirname "$(find_bin pg_ctl)")/pg_isready"
    if [[ -x "$isready" ]]; then
        "$isready" -q -h 127.0.0.1 -p "$PORT" >/dev/null 2>&1
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") >/dev/null 2>&1
    fi
}

start() {
    if is_up; then
        echo "pg.sh: reusing the server on 127.0.0.1:$PORT" >&2
        echo "export VOXBRIDGE_TEST_PG_URL=$URL"
        return
    fi
    local initdb pg_ctl
    initdb="$(find_bin initdb)"
    pg_ctl="$(find_bin pg_ctl)"
    mkdir -p "$DIR"
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres "$DIR"
    fi
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        as_owner "$initdb" -D "$DATA" -A trust -U postgres >"$DIR/initdb.log" 2>&1 || {
            cat "$DIR/initdb.log" >&2
            exit 1
        }
    fi
    as_owner "$pg_ctl" -D "$DATA" -w -l "$LOG" \
        -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
        start >&2 || {
        tail -n 20 "$LOG" >&2 || true
        exit 1
    }
    echo "export VOXBRIDGE_TEST_PG_URL=$URL"
}

stop() {
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        echo "pg.sh: no cluster in $DATA" >&2
        return
    fi
    as_owner "$(find_bin pg_ctl)" -D "$DATA" -m fast stop >&2 || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: $0 start|stop" >&2
        exit 2
        ;;
esac
