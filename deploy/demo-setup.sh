#!/usr/bin/env bash
# Configure the demo's world on the running mesh with paymesh admin commands
# from the host (what `paymesh demo` does with
# crates/paymesh-harness/src/world.rs, `configure`):
#   partners   us-west: paypal-us (USD wallet), shop-us (USD merchants)
#              ap-southeast: gcash-ph (PHP wallet), sari-ph (PHP merchants)
#              cn-east: wechat-cn, alipay-cn (CNY merchant networks)
#   prefunding paypal-us 100,000,000.00 USD; gcash-ph 5,000,000,000.00 PHP
#   corridors  each wallet to its home merchants and to both cn-east networks
#              (fee 30 bp, spread 50 bp across borders, 1.00 to 100,000.00)
#   FX         USD->CNY 7.1000, PHP->CNY 0.1250, valid for 23 hours from now
#   routes     wxp:// -> wechat-cn, alipay:// -> alipay-cn, usqr://shop/ -> shop-us,
#              phqr://sari/ -> sari-ph (in each wallet's region)
# Every command is idempotent (upserts; top-ups by reference), so running it
# again only renews the FX rates, which expire after 23 hours.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
use_host_bin

# (region partner currency role)
PARTNER_ROWS=(
  "us-west paypal-us USD payer" "ap-southeast gcash-ph PHP payer"
  "cn-east wechat-cn CNY payee" "cn-east alipay-cn CNY payee"
  "us-west shop-us USD payee" "ap-southeast sari-ph PHP payee"
)
# (region wallet currency prefund)
WALLET_ROWS=("us-west paypal-us USD 100000000.00" "ap-southeast gcash-ph PHP 5000000000.00")
# (region merchant currency prefix)
MERCHANT_ROWS=(
  "cn-east wechat-cn CNY wxp://" "cn-east alipay-cn CNY alipay://"
  "us-west shop-us USD usqr://shop/" "ap-southeast sari-ph PHP phqr://sari/"
)
rate_for() {
  case "$1-$2" in
    USD-CNY) echo 7.1000 ;; PHP-CNY) echo 0.1250 ;; USD-USD|PHP-PHP) echo 1 ;;
    *) die "no demo rate for $1 to $2" ;;
  esac
}

quiet() { # run a pm command, printing its output only if it fails
  local out
  if ! out="$(pm "$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "failed: paymesh $*"
  fi
}

started=$(now)
for row in "${PARTNER_ROWS[@]}"; do
  read -r region partner currency role <<<"$row"
  quiet "$region" partner upsert --id "$partner" --home-region "$region" --role "$role" \
    --currency "$currency" --net-debit-cap 0
  log "partner $partner ($role, $currency) in $region"
done
valid_from=$(( $(date +%s) * 1000 - 60000 ))
for row in "${WALLET_ROWS[@]}"; do
  read -r region wallet currency prefund <<<"$row"
  quiet "$region" position top-up --partner "$wallet" --amount "$prefund" --currency "$currency" \
    --reference "demo-prefund-$wallet"
  log "prefunded $wallet with $prefund $currency (reference demo-prefund-$wallet)"
  for mrow in "${MERCHANT_ROWS[@]}"; do
    read -r mregion merchant mcurrency prefix <<<"$mrow"
    [[ "$mregion" == "$region" || "$mregion" == cn-east ]] || continue
    spread=50
    [[ "$mregion" == "$region" ]] && spread=0
    quiet "$region" corridor upsert --from "$region:$currency" --to "$mregion:$mcurrency" \
      --spread-bps "$spread" --fee-fixed 0.00 --fee-bps 30 --fee-min 0.00 --fee-max 1000.00 \
      --min 1.00 --max 100000.00 --daily-cap 10000000000.00
    if [[ "$currency" != "$mcurrency" ]]; then
      quiet "$region" fx set --from "$region:$currency" --to "$mregion:$mcurrency" \
        --rate "$(rate_for "$currency" "$mcurrency")" --valid-from-unix-ms "$valid_from" --valid-for-secs 82800
    fi
    quiet "$region" route upsert --prefix "$prefix" --payee "$merchant" --region "$mregion" --currency "$mcurrency"
    log "corridor $region:$currency -> $mregion:$mcurrency, route $prefix -> $merchant"
  done
done
log "demo setup done in $(elapsed_since "$started") s"
