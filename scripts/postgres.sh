#!/usr/bin/env bash
# A local PostgreSQL for `paymesh bench --target postgres`: the baseline
# paymesh is compared with, as one server or as three replicated ones.
#
#   scripts/postgres.sh start             install Debian's postgresql if no initdb
#                                         is found, create the cluster if needed,
#                                         start it, create database paymesh_bench,
#                                         print its URL
#   scripts/postgres.sh start-replicated  the same as three servers on this
#                                         machine: a primary and two standbys
#                                         streaming its WAL, each commit waiting
#                                         until one standby has flushed it (on disk
#                                         on two of three, as a paymesh region
#                                         acknowledges); prints the primary's URL
#   scripts/postgres.sh stop              stop every server of both (the data stays)
#   scripts/postgres.sh status            say which run (exit 0 if the single one
#                                         does, 3 if not)
#   scripts/postgres.sh url               print the single server's URL
#   scripts/postgres.sh url-replicated    print the replicated primary's URL
#
# The single cluster lives in ${PAYMESH_PG_DIR:-<repo>/target/postgres}/data,
# the replicated one in <that>/replicated/{primary,standby1,standby2}, owned
# by the `postgres` user (initdb refuses to run as root). They listen on
# 127.0.0.1 only: the single one on port ${PAYMESH_PG_PORT:-55432}, the
# primary on ${PAYMESH_PG_REPLICATED_PORT:-55433} and its standbys on the next
# two ports; they trust local connections: a benchmark fixture, not a
# server. Both stay durable: fsync=on and synchronous_commit=on, so every
# COMMIT waits for its WAL flush (and, replicated, for a standby's).
#
# Only the URL goes to stdout (`url=$(scripts/postgres.sh start)` works);
# progress and errors go to stderr. Running `start` again is harmless.

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pg_dir=${PAYMESH_PG_DIR:-$repo/target/postgres}
port=${PAYMESH_PG_PORT:-55432}
data=$pg_dir/data
log=$pg_dir/postgres.log
replicated=$pg_dir/replicated
primary_port=${PAYMESH_PG_REPLICATED_PORT:-55433}
standbys=(standby1 standby2)
database=paymesh_bench
url="postgres://postgres@127.0.0.1:$port/$database"
replicated_url="postgres://postgres@127.0.0.1:$primary_port/$database"

say() { echo "postgres.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=lib/debian.sh
source "$repo/scripts/lib/debian.sh"

usage() {
    echo "usage: $0 start|start-replicated|stop|status|url|url-replicated" >&2
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

# Whether a server runs on the data directory $1.
running() {
    [[ -f $1/PG_VERSION ]] && as_owner "$bin/pg_ctl" status -D "$1" >/dev/null 2>&1
}

# Write the settings of the server on data directory $1, port $2, with the
# lines on stdin added (a replicated server's).
write_config() {
    local extra
    extra=$(cat)
    # Rewritten at every start, so a changed port takes effect; the main
    # postgresql.conf includes it once.
    as_owner tee "$1/paymesh.conf" >/dev/null <<EOF
# Written by scripts/postgres.sh; overwritten at every start.
listen_addresses = '127.0.0.1'
port = $2
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
$extra
EOF
    if ! grep -q "^include_if_exists = 'paymesh.conf'" "$1/postgresql.conf"; then
        echo "include_if_exists = 'paymesh.conf'" | as_owner tee -a "$1/postgresql.conf" >/dev/null
    fi
}

# Start the server on data directory $1 (port $2, log $3) unless it runs.
start_server() {
    if running "$1"; then
        local running_port
        running_port=$(sed -n 4p "$1/postmaster.pid")
        [[ $running_port == "$2" ]] || die "$1 already runs on port $running_port, not $2: run '$0 stop' first"
        say "already running ($1)"
    else
        say "starting $1 on 127.0.0.1:$2 (log: $3)"
        # 9>&-: the server must not inherit (and hold forever) the lock.
        if ! as_owner "$bin/pg_ctl" start -D "$1" -l "$3" -w -t 60 >/dev/null 9>&-; then
            tail -n 20 "$3" >&2 || true
            die "the server on $1 did not start (log above; is port $2 taken?)"
        fi
    fi
}

# Create a cluster in data directory $1 unless there is one.
init_cluster() {
    if [[ ! -f $1/PG_VERSION ]]; then
        say "creating a cluster in $1 ($("$bin/postgres" --version))"
        as_owner "$bin/initdb" -D "$1" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$pg_dir/initdb.log" 2>&1 \
            || { cat "$pg_dir/initdb.log" >&2; die "initdb failed (output above)"; }
    fi
}

# Create database paymesh_bench on the server at port $1 unless it exists.
create_database() {
    local psql=(as_owner "$bin/psql" -X -q -h 127.0.0.1 -p "$1" -U postgres -v ON_ERROR_STOP=1)
    if [[ $("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'") != 1 ]]; then
        "${psql[@]}" -d postgres -c "CREATE DATABASE $database" || die "cannot create database $database"
        say "created database $database"
    fi
}

# Find the server binaries (installing them if need be) and make $pg_dir,
# owned by the user the servers run as.
prepare() {
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
}

start() {
    prepare
    init_cluster "$data"
    running "$data" || write_config "$data" "$port" </dev/null
    start_server "$data" "$port" "$log"
    create_database "$port"
    echo "$url"
}

# The replicated set: the primary waits for ANY 1 of the two standbys to
# flush each commit's WAL (synchronous_commit = on), so a commit is on disk
# on two of the three servers when it returns, as a payment is on a paymesh
# region's majority.
start_replicated() {
    prepare
    local primary=$replicated/primary
    as_owner mkdir -p "$replicated"
    init_cluster "$primary"
    if ! running "$primary"; then
        write_config "$primary" "$primary_port" <<EOF
# Replicated: WAL streamed to two standbys, each commit waiting for one.
wal_level = replica
max_wal_senders = 4
synchronous_standby_names = 'ANY 1 ($(IFS=,; echo "${standbys[*]}"))'
EOF
    fi
    start_server "$primary" "$primary_port" "$replicated/primary.log"
    local n=0 name dir standby_port
    for name in "${standbys[@]}"; do
        n=$((n + 1))
        dir=$replicated/$name
        standby_port=$((primary_port + n))
        if [[ ! -f $dir/PG_VERSION ]]; then
            say "copying the primary into $dir (pg_basebackup)"
            as_owner "$bin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$dir" -X stream -c fast \
                || die "pg_basebackup from the primary on port $primary_port failed"
            as_owner touch "$dir/standby.signal"
        fi
        if ! running "$dir"; then
            write_config "$dir" "$standby_port" <<EOF
# A standby of the primary on port $primary_port, named $name there.
primary_conninfo = 'host=127.0.0.1 port=$primary_port user=postgres application_name=$name'
hot_standby = on
EOF
        fi
        start_server "$dir" "$standby_port" "$replicated/$name.log"
    done
    # Both standbys streaming and counted for the commits' quorum, or no
    # run starts (it would measure a primary whose commits hang).
    local psql=(as_owner "$bin/psql" -X -q -h 127.0.0.1 -p "$primary_port" -U postgres -d postgres -tA)
    local waited=0 quorum
    while :; do
        quorum=$("${psql[@]}" -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'quorum'") \
            || die "cannot ask the primary on port $primary_port which standbys stream (log: $replicated/primary.log)"
        [[ $quorum == "${#standbys[@]}" ]] && break
        ((waited < 60)) || die "after 60 s, $quorum of ${#standbys[@]} standbys stream to the primary (logs in $replicated; to begin afresh: $0 stop, then remove $replicated)"
        sleep 1
        waited=$((waited + 1))
    done
    say "primary on 127.0.0.1:$primary_port, ${#standbys[@]} standbys streaming, each commit waiting for one"
    create_database "$primary_port"
    echo "$replicated_url"
}

stop() {
    bin=$(find_bin) || { say "PostgreSQL is not installed; nothing to stop"; return 0; }
    [[ -d $pg_dir ]] || { say "not running (no $pg_dir)"; return 0; }
    lock
    local dir stopped=0
    # The standbys before their primary, which would otherwise wait for them.
    for dir in "${standbys[@]/#/$replicated/}" "$replicated/primary" "$data"; do
        if running "$dir"; then
            as_owner "$bin/pg_ctl" stop -D "$dir" -m fast -w -t 60 >/dev/null || die "pg_ctl stop -D $dir failed"
            say "stopped $dir"
            stopped=1
        fi
    done
    ((stopped)) || say "not running"
}

status() {
    bin=$(find_bin) || { say "PostgreSQL is not installed"; exit 3; }
    if running "$replicated/primary"; then
        say "replicated primary running: $replicated_url (data: $replicated)"
    fi
    if running "$data"; then
        say "running: $url (data: $data)"
    else
        say "not running (data: $data)"
        exit 3
    fi
}

[[ $# -eq 1 ]] || usage
case $1 in
    start) start ;;
    start-replicated) start_replicated ;;
    stop) stop ;;
    status) status ;;
    url) echo "$url" ;;
    url-replicated) echo "$replicated_url" ;;
    *) usage ;;
esac
