#!/usr/bin/env bash
# Start the 3-region paymesh mesh in containers, in one command:
#   1. build the image (deploy/build-image.sh) if $PAYMESH_IMAGE (paymesh:dev) is missing;
#   2. generate certificates and configurations (deploy/gen.sh; certificates only if missing);
#   3. docker-compose up -d (9 containers, 4 networks);
#   4. initialise every region and wait until each has a leader;
#   5. with --with-demo-setup, configure the demo's partners, corridors, FX
#      rates, payee routes and prefunding (deploy/demo-setup.sh).
# Running it again on a running mesh is harmless: it starts what is stopped,
# "initialises" regions that already are (nothing changes) and waits for
# leaders again.
#
# Usage: deploy/up.sh [--with-demo-setup] [--rebuild] [--timeout SECS]
#   --with-demo-setup  also configure the demo's world (idempotent)
#   --rebuild          rebuild the image even if it exists
#   --timeout SECS     longest wait for each region's leader (default 90)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

script_started=$(now)
demo=false rebuild=false timeout=90
while [[ $# -gt 0 ]]; do
  case "$1" in
    --with-demo-setup) demo=true; shift ;;
    --rebuild) rebuild=true; shift ;;
    --timeout) timeout="${2:?--timeout needs seconds}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

require_docker
require_compose

if $rebuild || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "image $IMAGE: building it (deploy/build-image.sh)"
  "$DEPLOY_DIR/build-image.sh" --tag "$IMAGE"
else
  log "image $IMAGE: present ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c8-19)); --rebuild to rebuild"
fi
use_host_bin

"$DEPLOY_DIR/gen.sh"

started=$(now)
log "docker-compose up -d (project $COMPOSE_PROJECT_NAME, $COMPOSE_FILE)"
compose up -d
log "docker-compose up -d took $(elapsed_since "$started") s"

# Initialise each region through the first node that takes the call, then wait
# for its leader. Bounded: $timeout seconds per region.
for region in "${REGIONS[@]}"; do
  deadline=$((SECONDS + timeout)) initialised=false
  while ((SECONDS < deadline)) && ! $initialised; do
    for n in "${NODES[@]}"; do
      addr="127.0.0.1:$(host_api_port "$region" "$n")"
      # shellcheck disable=SC2046
      if out="$(timeout 20 "$PM_BIN" init --node "$addr" $(operator_flags "$region") 2>&1)"; then
        log "$region: ${out}"
        initialised=true
        break
      fi
    done
    $initialised || sleep 1
  done
  if ! $initialised; then
    log "$region: init did not succeed within ${timeout}s; last answer: $out"
    # shellcheck disable=SC2046
    compose logs --tail 20 $(for n in "${NODES[@]}"; do container_name "$region" "$n"; done) >&2
    exit 1
  fi
done
for region in "${REGIONS[@]}"; do
  wait_leader "$region" "$timeout" || { compose logs --tail 30 >&2; exit 1; }
  log "$region: led ($(elapsed_since "$started") s after docker-compose up)"
done
log "all ${#REGIONS[@]} regions led: $(elapsed_since "$started") s after docker-compose up, $(elapsed_since "$script_started") s after up.sh started"

if $demo; then
  "$DEPLOY_DIR/demo-setup.sh"
fi

cat >&2 <<EOF

The mesh is up. Node APIs on the host (mutual TLS; certificates under $RUN_DIR/certs/<region>/):
  us-west       127.0.0.1:7111 7112 7113
  ap-southeast  127.0.0.1:7121 7122 7123
  cn-east       127.0.0.1:7131 7132 7133
Status:   deploy/pm us-west status
Admin:    deploy/pm cn-east partner list
Stop:     deploy/down.sh            (deploy/down.sh --wipe also deletes the data)
EOF
