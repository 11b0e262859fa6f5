#!/usr/bin/env bash
# Run one fuzz target for a while: fuzz/run.sh TARGET SECONDS
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
# The kept seeds (fuzz/corpus/TARGET) are read, never written: libFuzzer's
# growing corpus goes to fuzz/corpus-work/TARGET (ignored by git), crashes to
# fuzz/artifacts/TARGET. A crash input worth keeping goes into
# fuzz/regressions/TARGET, which `cargo test` replays on stable.
# FUZZ_BUILD=dev runs an unoptimised build with debug assertions and overflow
# checks (CI's smoke runs: half the build time); the default is optimised.
set -euo pipefail
cd "$(dirname "$0")"
if [ $# -ne 2 ]; then
    echo "usage: $0 TARGET SECONDS   (targets: $(cargo +nightly fuzz list | tr '\n' ' '))" >&2
    exit 2
fi
target=$1
seconds=$2
case "${FUZZ_BUILD:-release}" in
    release) build=-O ;;
    dev) build=--dev ;;
    *) echo "FUZZ_BUILD must be release or dev, not ${FUZZ_BUILD}" >&2; exit 2 ;;
esac
mkdir -p "corpus-work/${target}" "corpus/${target}"
exec cargo +nightly fuzz run "${build}" "${target}" "corpus-work/${target}" "corpus/${target}" -- \
    -max_total_time="${seconds}" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
