#!/usr/bin/env bash
# A local PostgreSQL cluster for `paymesh bench --target postgres`: the
# baseline paymesh is compared with.
#
#   scripts/postgres.sh start    install Debian's postgresql if no initdb is
#                                found, create the cluster if needed, start it,
#                                create database paymesh_bench, print its URL
#   scripts/postgres.sh stop     stop it (the data stays)
#   scripts/postgres.sh status   say whether it runs (exit 0 if it does, 3 if not)
#   scripts/postgres.sh url      print the connection URL
#
# The cluster lives in ${PAYMESH_PG_DIR:-<repo>/target/postgres}, owned by the
# `postgres` user (initdb refuses to run as root), listens on 127.0.0.1 only,
# port ${PAYMESH_PG_PORT:-55432}, and trusts local connections: it is a
# benchmark fixture, not a server. It stays durable: fsync=on and
# synchronous_commit=on, so every COMMIT waits for its WAL flush.
#
# Only the URL goes to stdout (`url=$(scripts/postgres.sh start)` works);
# progress and errors go to stderr. Running `start` again is harmless.

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pg_dir=${PAYMESH_PG_DIR:-$repo/target/postgres}
port=${PAYMESH_PG_PORT:-55432}
data=$pg_dir/data
log=$pg_dir/postgres.log
database=paymesh_bench
url="postgres://postgres@127.0.0.1:$port/$database"

say() { echo "postgres.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=lib/debian.sh
source "$repo/scripts/lib/debian.sh"

usage() {
    echo "usage: $0 start|stop|status|url" >&2
    exit 2
}

# The newest server binaries of Debian's packaging, if installed.
find_bin() {
    local initdb
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n $initdb ]] && dirname "$initdb"
}

install_postgres() {
    say "no initdb under /usr/lib/postgresql/*/bin"
    debian_install "PostgreSQL (the benchmark's baseline)" postgresql
}

# Run a command as the cluster's owner.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# One start or stop at a time (tests may call start concurrently).
lock() {
    exec 9>>"$pg_dir/.lock"
    flock -w 120 9 || die "another scripts/postgres.sh has held $pg_dir/.lock for 2 minutes"
}

running() {
    [[ -f $data/PG_VERSION ]] && as_owner "$bin/pg_ctl" status -D "$data" >/dev/null 2>&1
}

write_config() {
    # Rewritten at every start, so a changed port takes effect; the main
    # postgresql.conf includes it once.
    as_owner tee "$data/paymesh.conf" >/dev/null <<EOF
# Written by scripts/postgres.sh; overwritten at every start.
listen_addresses = '127.0.0.1'
port = $port
# TCP only: no socket directory to create or outgrow (pg_ctl -w reads
# readiness from postmaster.pid).
unix_socket_directories = ''
max_connections = 200
# Durable, like paymesh: a commit returns after its WAL is on disk.
fsync = on
synchronous_commit = on
full_page_writes = on
wal_sync_method = fdatasync
# Room to work without checkpoints dominating a short run.
shared_buffers = '512MB'
max_wal_size = '4GB'
checkpoint_timeout = '15min'
EOF
    if ! grep -q "^include_if_exists = 'paymesh.conf'" "$data/postgresql.conf"; then
        echo "include_if_exists = 'paymesh.conf'" | as_owner tee -a "$data/postgresql.conf" >/dev/null
    fi
}

start() {
    bin=$(find_bin) || true
    if [[ -z ${bin:-} ]]; then
        install_postgres
        bin=$(find_bin) || die "postgresql installed, but still no initdb under /usr/lib/postgresql/*/bin"
    fi
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "there is no 'postgres' user to own the cluster (it comes with Debian's postgresql package)"
        mkdir -p "$pg_dir"
        chown postgres: "$pg_dir"
        chmod 700 "$pg_dir"
        runuser -u postgres -- test -w "$pg_dir" \
            || die "the postgres user cannot write $pg_dir (a parent directory is not searchable by it?): set PAYMESH_PG_DIR to a directory it can reach"
    else
        mkdir -p "$pg_dir"
    fi

    lock

    if [[ ! -f $data/PG_VERSION ]]; then
        say "creating a cluster in $data ($("$bin/postgres" --version))"
        as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$pg_dir/initdb.log" 2>&1 \
            || { cat "$pg_dir/initdb.log" >&2; die "initdb failed (output above)"; }
    fi
    if running; then
        local running_port
        running_port=$(sed -n 4p "$data/postmaster.pid")
        [[ $running_port == "$port" ]] || die "already running on port $running_port, not $port: run '$0 stop' first"
        say "already running ($data)"
    else
        write_config
        say "starting on 127.0.0.1:$port (log: $log)"
        # 9>&-: the server must not inherit (and hold forever) the lock.
        if ! as_owner "$bin/pg_ctl" start -D "$data" -l "$log" -w -t 60 >/dev/null 9>&-; then
            tail -n 20 "$log" >&2 || true
            die "the server did not start (log above; is port $port taken? set PAYMESH_PG_PORT)"
        fi
    fi
    local psql=(as_owner "$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1)
    if [[ $("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'") != 1 ]]; then
        "${psql[@]}" -d postgres -c "CREATE DATABASE $database" || die "cannot create database $database"
        say "created database $database"
    fi
    echo "$url"
}

stop() {
    bin=$(find_bin) || { say "PostgreSQL is not installed; nothing to stop"; return 0; }
    [[ -d $pg_dir ]] || { say "not running (no $pg_dir)"; return 0; }
    lock
    if running; then
        as_owner "$bin/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null || die "pg_ctl stop failed (log: $log)"
        say "stopped"
    else
        say "not running"
    fi
}

status() {
    bin=$(find_bin) || { say "PostgreSQL is not installed"; exit 3; }
    if running; then
        say "running: $url (data: $data)"
    else
        say "not running (data: $data)"
        exit 3
    fi
}

[[ $# -eq 1 ]] || usage
case $1 in
    start) start ;;
    stop) stop ;;
    status) status ;;
    url) echo "$url" ;;
    *) usage ;;
esac
