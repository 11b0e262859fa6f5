#!/usr/bin/env bash
# The rolling-upgrade test: build "the next release" (this code with the
# feature next-release, whose newest protocol is one above this release's)
# into target/next-release, then run the test that upgrades a region of a
# running mesh node by node from this release to it.
#
#   scripts/next-release.sh          build, then run the test
#   scripts/next-release.sh build    only build; print the binary's path
#
# The build is separate from target/debug (about 3 minutes on 2 cores from
# cold), so the test's own build of this release is untouched. The test is
# #[ignore]d in the workspace's tests for that build's sake; its figures
# are in docs/OPERATIONS.md ("Upgrading a region").
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "next-release.sh: $*" >&2; }

target=target/next-release
say "building the next release into $target (feature next-release)"
cargo build --locked -p paymesh-cli --bin paymesh --features next-release --target-dir "$target" >&2
bin="$PWD/$target/debug/paymesh"
case "${1:-test}" in
    build) echo "$bin" ;;
    test)
        PAYMESH_NEXT_RELEASE_BIN="$bin" cargo test --locked -p paymesh-cli --test suite rolling_upgrade:: -- \
            --ignored --nocapture
        ;;
    *)
        echo "usage: $0 [build|test]" >&2
        exit 2
        ;;
esac
