#!/usr/bin/env bash
# Where the region's CPU goes at a load: a release build of this code runs
# `paymesh bench` once, and in the middle of its measured period (after the
# warm-up, well before the audit that follows it, which lists every
# payment through the leader) `perf` samples the leader and the busier
# follower for 6 s with their call stacks. Prints each node's share of
# samples by kind of work and the paymesh functions with the largest
# inclusive shares; keeps the samples as text for reading further.
#
#   scripts/peak-profile.sh [OUT_DIR]      default target/peak-profile
#
# PEAK_BENCH_ARGS gives the load (default: the batched load of "The
# targets, measured again" in docs/BENCHMARKS.md):
#
#   PEAK_BENCH_ARGS="--workers 256 --one-call --payers 8" scripts/peak-profile.sh
#
# Writes OUT_DIR/bench.txt (the bench's report), OUT_DIR/{leader,follower}.perf.txt
# (`perf script` of each) and OUT_DIR/summary.txt (what is printed).
# Needs perf (Debian's linux-perf, installed when missing and this user is
# root) and permission to sample another process (root, or
# kernel.perf_event_paranoid at most 1). About 3 to 7 minutes for the build,
# 40 s for the run, a minute to decode the samples.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { echo "peak-profile.sh: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}
# shellcheck source=lib/debian.sh
source "$repo/scripts/lib/debian.sh"

out=${1:-$repo/target/peak-profile}
read -r -a load <<<"${PEAK_BENCH_ARGS:---workers 576 --payers 8 --batched}"

if ! command -v perf >/dev/null; then
    one_install_at_a_time linux-perf
    command -v perf >/dev/null || debian_install "perf" linux-perf
    command -v perf >/dev/null || die "linux-perf installed, but still no perf on PATH"
fi
command -v python3 >/dev/null || die "python3 is needed to summarize the samples"

say "building the release binary"
(cd "$repo" && cargo build --release --locked -p paymesh-cli --bin paymesh >&2)
bin="$repo/target/release/paymesh"

mkdir -p "$out"
region="$out/region"
rm -rf "$region"
rm -f "$out"/*.perf.data "$out"/*.perf.txt

say "running: paymesh bench --target paymesh ${load[*]} --warmup 5 --duration 20"
"$bin" bench --target paymesh "${load[@]}" --warmup 5 --duration 20 \
    --paymesh-dir "$region" --json "$out/bench.json" --no-progress >"$out/bench.txt" 2>&1 &
bench=$!
trap 'kill "$bench" 2>/dev/null || true' EXIT

# The nodes are `paymesh start --config <region>/node-N.toml`.
nodes=()
for _ in $(seq 1 300); do
    mapfile -t nodes < <(pgrep -f -- "start --config $region/node-" || true)
    [ "${#nodes[@]}" -ge 2 ] && break
    kill -0 "$bench" 2>/dev/null || die "the bench ended before its nodes started: $(tail -5 "$out/bench.txt")"
    sleep 0.1
done
[ "${#nodes[@]}" -ge 2 ] || die "the region's nodes did not start within 30 s"

# The load starts once the region is ready (a few seconds at most); 9 s
# after the nodes start is past the 5 s warm-up and 10 s or more before
# the measured period ends.
sleep 8
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
declare -A before
for pid in "${nodes[@]}"; do before[$pid]=$(ticks "$pid"); done
sleep 1
ranked=$(for pid in "${nodes[@]}"; do echo "$(($(ticks "$pid") - ${before[$pid]})) $pid"; done | sort -rn)
leader=$(echo "$ranked" | awk 'NR == 1 {print $2}')
follower=$(echo "$ranked" | awk 'NR == 2 {print $2}')
say "sampling the leader (pid $leader, the busiest node) and a follower (pid $follower) for 6 s"
perf record -F 299 --call-graph dwarf,16384 -p "$leader" -o "$out/leader.perf.data" -- sleep 6 >/dev/null 2>&1 &
sampling=$!
perf record -F 299 --call-graph dwarf,16384 -p "$follower" -o "$out/follower.perf.data" -- sleep 6 >/dev/null 2>&1 ||
    die "perf could not sample pid $follower (root, or kernel.perf_event_paranoid at most 1)"
wait "$sampling" || die "perf could not sample pid $leader"

say "waiting for the bench to end"
wait "$bench" || die "the bench failed: $(tail -5 "$out/bench.txt")"
trap - EXIT
grep -qE '^audit +holds' "$out/bench.txt" || die "the bench's audit did not hold (see $out/bench.txt)"

say "decoding the samples"
for role in leader follower; do
    perf script -i "$out/$role.perf.data" >"$out/$role.perf.txt" 2>/dev/null
    rm -f "$out/$role.perf.data"
done
{
    grep -E '^(throughput|latency p99 )|CPU per transfer:' "$out/bench.txt"
    python3 "$repo/scripts/lib/profile_shares.py" "$out/leader.perf.txt" "$out/follower.perf.txt"
} | tee "$out/summary.txt"
# The region's files (over a GiB after a run at the peak) are not needed
# once the run held its audit; its nodes' logs stay.
rm -rf "$region"/data-*
