#!/usr/bin/env bash
# Build the paymesh:dev image without any image registry:
#   1. compile a statically linked paymesh (glibc, +crt-static) for
#      x86_64-unknown-linux-gnu (the explicit --target keeps RUSTFLAGS away
#      from build scripts and proc macros);
#   2. check it is static and runs;
#   3. `docker build` deploy/Dockerfile (FROM scratch) from a temporary
#      directory holding only the binary (not the repository);
#   4. check the image runs (`docker run --rm paymesh:dev --help`).
#
# Usage: deploy/build-image.sh [--no-cargo] [--tag NAME]
#   --no-cargo   use the binary already built (fails if there is none)
#   --tag NAME   tag other than paymesh:dev (or set PAYMESH_IMAGE)
# Environment: CARGO_TARGET_DIR (default: <repo>/target/static, kept apart
# from the ordinary build so neither invalidates the other).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_cargo=true
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-cargo) run_cargo=false; shift ;;
    --tag) IMAGE="${2:?--tag needs a name}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

TARGET=x86_64-unknown-linux-gnu
[[ "$(uname -m)" == x86_64 ]] || die "this script builds an x86_64 image; this machine is $(uname -m)"
require_docker

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target/static}"
BIN="$CARGO_TARGET_DIR/$TARGET/release/paymesh"

if $run_cargo; then
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed (the Rust toolchain is needed to build paymesh)"
  if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    log "note: rustup does not list $TARGET as installed; cargo will say if it is missing"
  fi
  log "building a static paymesh: RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked -p paymesh-cli --target $TARGET (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  started=$(now)
  (cd "$REPO_DIR" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked -p paymesh-cli --target "$TARGET")
  log "cargo build took $(elapsed_since "$started") s"
fi
[[ -x "$BIN" ]] || die "no binary at $BIN (run without --no-cargo)"

log "checking that $BIN is statically linked"
if command -v file >/dev/null 2>&1; then
  desc="$(file -b "$BIN")"
  echo "  file: $desc" >&2
  # "static-pie linked" or "statically linked"; never "dynamically linked".
  [[ "$desc" == *"dynamically linked"* ]] && die "$BIN is dynamically linked"
  [[ "$desc" == *static* ]] || die "file(1) does not call $BIN static"
else
  log "file(1) not installed: skipping that check"
fi
if command -v ldd >/dev/null 2>&1; then
  ldd_out="$(ldd "$BIN" 2>&1 || true)"
  echo "  ldd: $ldd_out" >&2
  [[ "$ldd_out" == *"not a dynamic executable"* || "$ldd_out" == *"statically linked"* ]] \
    || die "ldd lists shared libraries for $BIN"
fi
"$BIN" --version >/dev/null || die "$BIN does not run"

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$DEPLOY_DIR/Dockerfile" "$context/Dockerfile"
cp "$BIN" "$context/paymesh"
strip_note=""
if command -v strip >/dev/null 2>&1; then
  # Line tables are not needed in the image (symbols stay, for backtraces);
  # the binary cargo built keeps them.
  strip --strip-debug "$context/paymesh" && strip_note=" (debug info stripped, symbols kept)"
fi
log "docker build -t $IMAGE from $context: Dockerfile + paymesh$strip_note, $(du -h "$context/paymesh" | cut -f1)"
# The classic builder: it needs no buildx plugin and, FROM scratch, no registry.
DOCKER_BUILDKIT=0 docker build --quiet -t "$IMAGE" "$context" >/dev/null

log "checking the image runs: docker run --rm $IMAGE --help"
docker run --rm "$IMAGE" --help >/dev/null || die "the image does not run"
docker run --rm "$IMAGE" --version >&2
size="$(docker image inspect -f '{{.Size}}' "$IMAGE")"
log "built $IMAGE: $((size / 1024 / 1024)) MiB ($size bytes)"
