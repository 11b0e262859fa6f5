#!/usr/bin/env bash
# Smoke test of the containerised mesh, end to end; exits non-zero on any failure.
#   1. deploy/up.sh --with-demo-setup (builds, generates, starts, initialises,
#      configures: whatever is not done yet);
#   2. one cross-border payment through the partner API over mutual TLS:
#      paypal-us (us-west, USD) pays a WeChat Pay code (wechat-cn, cn-east, CNY)
#      - quote, transfer, and GetTransfer until it is COMMITTED;
#   3. the payee region credited it: wechat-cn's posted CNY balance in cn-east
#      grows by the transfer's destination amount;
#   4. every region's books balance (`paymesh ledger`) and its replicas agree
#      (`paymesh status --json`).
# The partner calls use deploy/tools/partner.py (Python grpcio, installed into
# deploy/run/venv on first use; grpcurl is not required).
#
# Usage: deploy/smoke.sh [--down] [--amount 25.00]
#   --down    stop the mesh afterwards (deploy/down.sh), whatever the result
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

down=false amount=25.00
while [[ $# -gt 0 ]]; do
  case "$1" in
    --down) down=true; shift ;;
    --amount) amount="${2:?--amount needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
if $down; then trap '"$DEPLOY_DIR/down.sh" || true' EXIT; fi

fail() { log "SMOKE FAILED: $*"; exit 1; }

started=$(now)
"$DEPLOY_DIR/up.sh" --with-demo-setup
use_host_bin

# The partner client's Python environment (bounded: pip's own timeouts).
VENV="$RUN_DIR/venv"
PY="$VENV/bin/python"
if ! "$PY" -c 'import grpc, grpc_tools' 2>/dev/null; then
  command -v python3 >/dev/null 2>&1 || die "python3 is needed for the partner API client (deploy/tools/partner.py)"
  log "installing grpcio and grpcio-tools into $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  timeout 600 "$VENV/bin/pip" install --quiet --disable-pip-version-check grpcio grpcio-tools \
    || die "pip install grpcio grpcio-tools failed"
fi
partner() { timeout 120 "$PY" "$DEPLOY_DIR/tools/partner.py" "$@"; }
json_field() { "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

posted_cny() {
  partner position --region cn-east --partner wechat-cn --currency CNY \
    | json_field '(d["positions"][0]["posted"] if d.get("positions") else "0.00")'
}

before="$(posted_cny)" || fail "cannot read wechat-cn's position in cn-east"
log "wechat-cn posted balance in cn-east before: $before CNY"

qr="wxp://m$(printf '%04d' $((RANDOM % 10000)))"
log "paying: paypal-us (us-west) pays $amount USD to $qr"
if ! result="$(partner pay --region us-west --partner paypal-us --qr "$qr" --amount "$amount" --currency USD --timeout 60)"; then
  printf '%s\n' "$result" >&2
  fail "the cross-border transfer did not commit"
fi
printf '%s\n' "$result"
credit="$(json_field 'd["destination_amount"]["amount"]' <<<"$result")"
transfer_id="$(json_field 'd["transfer_id"]' <<<"$result")"
log "transfer $transfer_id COMMITTED in us-west: $credit CNY to wechat-cn"

# The payee region learns of the commit from the coordinator's Decide:
# wait (bounded) for the credit to be posted there.
expected="$("$PY" -c 'import sys; from decimal import Decimal as D; print(D(sys.argv[1]) + D(sys.argv[2]))' "$before" "$credit")"
deadline=$((SECONDS + 30)) after="$before"
while ((SECONDS < deadline)); do
  after="$(posted_cny)" || true
  [[ "$after" == "$expected" ]] && break
  sleep 0.5
done
[[ "$after" == "$expected" ]] || fail "wechat-cn's posted balance in cn-east is $after CNY, expected $expected"
log "cn-east credited it: wechat-cn posted $before -> $after CNY"

for region in "${REGIONS[@]}"; do
  out="$(pm "$region" ledger 2>&1)" || { printf '%s\n' "$out" >&2; fail "$region's books do not balance"; }
  log "$region ledger: $(tr '\n' ' ' <<<"$out")"
  deadline=$((SECONDS + 30)) agree=false
  while ((SECONDS < deadline)); do
    if pm "$region" status --json 2>/dev/null | grep -q '"replicas_agree": true'; then agree=true; break; fi
    sleep 0.5
  done
  $agree || fail "$region's replicas do not agree within 30 s"
  log "$region: replicas agree"
done

log "SMOKE PASSED in $(elapsed_since "$started") s: transfer $transfer_id, $amount USD -> $credit CNY, books balanced in ${REGIONS[*]}"
