# shellcheck shell=bash disable=SC2034  # (its variables are used by the scripts that source it)
# Shared by deploy/*.sh: the mesh's fixed layout (regions, addresses, ports)
# and small helpers. Sourced, not run.
#
# The layout is fixed on purpose (a chaos harness addresses containers and
# networks by name and nodes by address); compose.yaml repeats the same
# numbers, so change both together.

set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
# Everything generated (compose.yaml mounts ./run/… from here).
RUN_DIR="$DEPLOY_DIR/run"
COMPOSE_FILE="$DEPLOY_DIR/compose.yaml"
# docker-compose's project name: fixes the names it derives (none here: every
# container and network is named explicitly in compose.yaml).
export COMPOSE_PROJECT_NAME=paymesh

IMAGE="${PAYMESH_IMAGE:-paymesh:dev}"

# Regions, in order: region r (1-based) has subnet 10.77.<r>.0/24, the WAN is
# 10.77.0.0/24. Node n of region r is 10.77.<r>.1<n> on its region's network
# and 10.77.0.<r><n> on the WAN; its API is published on 127.0.0.1:71<r><n>.
REGIONS=(us-west ap-southeast cn-east)
NODES=(1 2 3)
NET_PREFIX=10.77
# Ports inside every container (each container has its own addresses).
RAFT_PORT=7000
API_PORT=8000
INTERREGION_PORT=9000

# The demo's partners per region (as in crates/paymesh-harness/src/world.rs).
declare -A PARTNERS=(
  [us-west]="paypal-us,shop-us"
  [ap-southeast]="gcash-ph,sari-ph"
  [cn-east]="wechat-cn,alipay-cn"
)
OPERATOR=ops

# Print the comment block at the top of the running script (its usage).
usage() { awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

log() {
  if [[ -t 2 ]]; then printf '\033[1m[%s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2
  else printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; fi
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# 1-based index of a region.
region_index() {
  local i
  for i in "${!REGIONS[@]}"; do
    if [[ "${REGIONS[$i]}" == "$1" ]]; then echo $((i + 1)); return 0; fi
  done
  die "unknown region $1 (one of ${REGIONS[*]})"
}

region_ip() { echo "$NET_PREFIX.$(region_index "$1").1$2"; }   # region network
wan_ip() { echo "$NET_PREFIX.0.$(region_index "$1")$2"; }       # WAN
host_api_port() { echo "71$(region_index "$1")$2"; }            # on 127.0.0.1
container_name() { echo "paymesh-$1-$2"; }

# PAYMESH_WAN_VIA (the chaos suite's container backend sets it): a host
# address, such as the WAN network's gateway 10.77.0.1, through which every
# node reaches the other regions: region f's nodes dial node n of region t
# at PAYMESH_WAN_VIA:19ftn, where a user-space WAN link of the pair (delay,
# jitter, loss, cut) forwards to its WAN address. Unset: nodes dial each
# other directly.
WAN_VIA="${PAYMESH_WAN_VIA:-}"
wan_via_port() { echo "19$(region_index "$1")$(region_index "$2")$3"; }   # from, to, node

# "--node 127.0.0.1:71r1 --node … " for a region's published API ports.
node_flags() {
  local n out=()
  for n in "${NODES[@]}"; do out+=(--node "127.0.0.1:$(host_api_port "$1" "$n")"); done
  echo "${out[@]}"
}

certs_dir() { echo "$RUN_DIR/certs/$1"; }

# The operator's credentials for a region.
operator_flags() {
  local d; d="$(certs_dir "$1")"
  echo --ca "$d/ca.pem" --cert "$d/operator-$OPERATOR.pem" --key "$d/operator-$OPERATOR.key"
}

require_docker() {
  command -v docker >/dev/null 2>&1 || die "docker is not installed (Docker Engine 20.10 or later is needed)"
  docker info >/dev/null 2>&1 || die "docker is installed but the daemon does not answer (is it running? may this user use it?)"
}

require_compose() {
  command -v docker-compose >/dev/null 2>&1 \
    || die "docker-compose is not installed (the v1 command, e.g. Debian's docker-compose package)"
}

compose() {
  # Files the nodes write (their data) belong to the invoking user, so the
  # operator and a chaos harness can read and wipe them without root.
  PAYMESH_UID="${PAYMESH_UID:-$(id -u)}" PAYMESH_GID="${PAYMESH_GID:-$(id -g)}" \
    docker-compose -f "$COMPOSE_FILE" "$@"
}

# The paymesh binary used on the host (certificates, admin commands):
# $PAYMESH_BIN if set, else the one inside the image, copied out once per
# image (it is static, so it runs on any x86_64 Linux host), so the host and
# the nodes always run the same build.
HOST_BIN_DIR="$RUN_DIR/bin"
paymesh_bin() {
  if [[ -n "${PAYMESH_BIN:-}" ]]; then echo "$PAYMESH_BIN"; return 0; fi
  local id stamp="$HOST_BIN_DIR/.image-id" bin="$HOST_BIN_DIR/paymesh"
  command -v docker >/dev/null 2>&1 \
    || die "docker is not installed: the host's paymesh is copied from the image; set PAYMESH_BIN to a paymesh binary instead"
  id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null)" \
    || die "image $IMAGE is missing: run deploy/build-image.sh (or set PAYMESH_BIN to a paymesh binary)"
  if [[ ! -x "$bin" || "$(cat "$stamp" 2>/dev/null)" != "$id" ]]; then
    mkdir -p "$HOST_BIN_DIR"
    local cid
    cid="$(docker create "$IMAGE")"
    docker cp "$cid:/paymesh" "$bin.tmp" >/dev/null
    docker rm "$cid" >/dev/null
    chmod 0755 "$bin.tmp"
    mv "$bin.tmp" "$bin"
    echo "$id" >"$stamp"
    log "host binary: $bin (copied from $IMAGE)"
  fi
  echo "$bin"
}

# Resolve the host binary once, into PM_BIN.
use_host_bin() {
  PM_BIN="$(paymesh_bin)" || exit 1
  [[ -x "$PM_BIN" ]] || die "$PM_BIN is not an executable paymesh binary"
}

# Run an admin/cluster command against a region as its operator:
#   pm REGION SUBCOMMAND... [ARGS]
# e.g. pm us-west status ; pm cn-east partner show --id wechat-cn
# The target flags go after the (sub)subcommand words, as clap wants them.
pm() {
  local region="$1"; shift
  local words=()
  while [[ $# -gt 0 && "$1" != --* ]]; do words+=("$1"); shift; done
  # shellcheck disable=SC2046
  "${PM_BIN:?call use_host_bin first}" "${words[@]}" $(node_flags "$region") $(operator_flags "$region") "$@"
}

# Seconds since the epoch, with a fraction.
now() { date +%s.%N; }
elapsed_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Wait (at most $2 seconds) until a node of region $1 reports itself leader.
wait_leader() {
  local region="$1" timeout="$2" deadline=$((SECONDS + $2)) out
  while ((SECONDS < deadline)); do
    if out="$(pm "$region" status --json 2>/dev/null)" && grep -q '"role": "leader"' <<<"$out"; then
      return 0
    fi
    sleep 0.5
  done
  log "no leader in $region within ${timeout}s"
  return 1
}
