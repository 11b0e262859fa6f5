#!/usr/bin/env bash
# Stop the mesh: docker-compose down (SIGTERM to every node, then the
# containers and the four networks are removed). The data, certificates and
# configurations under deploy/run/ stay, so deploy/up.sh resumes where it was.
#
# Usage: deploy/down.sh [--wipe] [--all]
#   --wipe  also delete every node's data (empties deploy/run/<region>/data-<n>)
#   --all   delete the whole of deploy/run/ (data, certificates, configurations,
#           the host's copy of the binary); the image stays (docker rmi paymesh:dev)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

wipe=false all=false
for arg in "$@"; do
  case "$arg" in
    --wipe) wipe=true ;;
    --all) wipe=true all=true ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $arg (see --help)" ;;
  esac
done

require_docker
require_compose
log "docker-compose down"
# `down` also removes containers a chaos run left stopped or paused
# (paused ones are unpaused first: a paused container cannot be stopped).
paused="$(docker ps -q --filter status=paused --filter name='^paymesh-' 2>/dev/null || true)"
if [[ -n "$paused" ]]; then
  # shellcheck disable=SC2086
  docker unpause $paused >/dev/null
fi
compose down --remove-orphans --timeout 20

# Data directories are emptied, not removed: a bind mount's source must exist
# (docker start refuses a container whose source is gone, and docker-compose
# would recreate it as root).
empty_dir() {
  local dir="$1"
  [[ -d "$dir" ]] || return 0
  find "$dir" -mindepth 1 -delete 2>/dev/null \
    || die "cannot empty $dir: some files are not yours (did a node run as root?); sudo rm -rf $dir/*"
}

if $all; then
  log "removing $RUN_DIR"
  for region in "${REGIONS[@]}"; do
    for n in "${NODES[@]}"; do empty_dir "$RUN_DIR/$region/data-$n"; done
  done
  rm -rf "$RUN_DIR"
elif $wipe; then
  for region in "${REGIONS[@]}"; do
    for n in "${NODES[@]}"; do
      d="$RUN_DIR/$region/data-$n"
      if [[ -d "$d" ]]; then
        empty_dir "$d"
        log "wiped $d"
      fi
    done
  done
fi
log "stopped"
