#!/usr/bin/env bash
# The region's peak, build beside build: release builds of this code, of
# this code without history's writes (the feature measure-without-history)
# and of any older revisions named, then ROUNDS rounds, each running
# `paymesh bench` once per build in an order that rotates from round to
# round, the page cache dropped before each run when this user may. Prints
# one line per run and, at the end, each build's median throughput and p99
# and the median of its round-by-round throughput ratio to the first build.
#
#   scripts/peak-rounds.sh [ROUNDS] [REV ...]
#   scripts/peak-rounds.sh 20 8eb8644     the comparison in docs/BENCHMARKS.md,
#                                         "History's own price"
#
# PEAK_BENCH_ARGS gives the load instead of the default `--workers 256`:
#
#   PEAK_BENCH_ARGS="--workers 1024 --payers 8 --batched" scripts/peak-rounds.sh 4
#                                         the batched peak, as in "History's
#                                         price at the batched peak"
#
# ROUNDS defaults to 10 (each round is about 40 s per build). This code's
# two builds share target/, each binary copied aside before the next build
# replaces it; a revision is built in a git worktree under
# target/peak-rounds with a target directory of its own: cargo names a
# workspace's crates alike in every checkout and records their sources by
# relative path, so a shared one would take the crates a worktree built
# for this code's wherever this code's files are older than that build.
# From cold, about 7 to 10 minutes a build, 3 to 4 for the second of this
# code's. The bench of the build without history reports a failed audit
# (nothing is listed there); its figures are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "peak-rounds.sh: $*" >&2; }

rounds=${1:-10}
shift || true
case "$rounds" in
    '' | *[!0-9]*)
        echo "usage: $0 [ROUNDS] [REV ...]" >&2
        exit 2
        ;;
esac
if [ "$rounds" -lt 1 ] || [ "$rounds" -gt 100 ]; then
    echo "$0: ROUNDS must be 1 to 100" >&2
    exit 2
fi

read -r -a load <<<"${PEAK_BENCH_ARGS:---workers 256}"
root=$PWD
work="$root/target/peak-rounds"
mkdir -p "$work/bin" "$work/runs"
names=()

build() { # name, source directory, target directory, extra cargo arguments...
    local name=$1 dir=$2 target=$3
    shift 3
    say "building $name"
    (cd "$dir" && cargo build --release --locked -p paymesh-cli --bin paymesh --target-dir "$target" "$@" >&2)
    cp "$target/release/paymesh" "$work/bin/$name"
    names+=("$name")
}

for rev in "$@"; do
    commit=$(git rev-parse --short "$rev^{commit}")
    tree="$work/tree-$commit"
    if [ ! -d "$tree" ]; then
        git worktree add --detach "$tree" "$commit" >&2
    fi
    build "rev-$commit" "$tree" "$work/target-$commit"
done
build this "$PWD" "$root/target"
build this-without-history "$PWD" "$root/target" --features measure-without-history

summary="$work/runs/summary.txt"
: >"$summary"
for round in $(seq 1 "$rounds"); do
    for k in $(seq 0 $((${#names[@]} - 1))); do
        name=${names[$(((round + k) % ${#names[@]}))]}
        sync
        if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
        out="$work/runs/$name-$round"
        "$work/bin/$name" bench --target paymesh "${load[@]}" --warmup 5 --duration 20 \
            --paymesh-dir "$work/region" --json "$out.json" --no-progress >"$out.out" 2>&1 || true
        rate=$(awk '/^throughput/ { gsub(/[,\/s]/, "", $2); print $2; exit }' "$out.out")
        p99=$(awk '/^latency p99 / { print $3; exit }' "$out.out")
        if [ -z "$rate" ]; then
            say "round $round, $name: no throughput in $out.out"
            exit 1
        fi
        echo "$round $name $rate $p99" | tee -a "$summary"
    done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
first=${names[0]}
for name in "${names[@]}"; do
    rate=$(awk -v n="$name" '$2 == n { print $3 }' "$summary" | median)
    p99=$(awk -v n="$name" '$2 == n { print $4 }' "$summary" | median)
    ratio=$(awk -v n="$name" -v f="$first" '$2 == f { base[$1] = $3 } $2 == n { mine[$1] = $3 }
        END { for (r in mine) if (r in base) printf "%.3f\n", mine[r] / base[r] }' "$summary" | median)
    echo "$name: median $rate transfers/s, p99 $p99 ms; median ratio to $first $ratio"
done
