//! The chaos world (`crate::world`) as the admin commands that configure
//! it: the same partners, prefunding, corridors, rates and payee routes that
//! `paymesh_harness::world::configure_world` sets through the admin API (not the
//! wallets' request rates, which only a node's gateway enforces), built
//! from the same admin API requests and parsed by the node's own
//! conversions (`paymesh_node::convert`), so a term means here what it means
//! to a node.

use anyhow::Context as _;
use paymesh_core::command::CommandBody;
use paymesh_core::corridor::{CorridorId, RefundRate};
use paymesh_core::directory::PayeeRoute;
use paymesh_core::fx::FxRate;
use paymesh_core::id::{PartnerId, QrPayload, RegionId, TopUpRef};
use paymesh_core::partner::{PartnerConfig, PartnerRole};
use paymesh_core::{Currency, Money, Timestamp};
use paymesh_harness::world::{corridor_request, Merchant, Wallet, CURRENT_RATE_REFUNDS};
use paymesh_node::convert;
use paymesh_proto::common::v1 as common;

use crate::world::{MERCHANTS, RATES, WALLETS};

/// How long before the run's start the rates became valid.
const RATE_VALID_BEFORE_MS: u64 = 60_000;
/// How long after the run's start they stay valid.
const RATE_VALID_AFTER_MS: u64 = 23 * 3_600_000;

/// The admin commands that configure `region` (one of `world::REGIONS`) at
/// `start`, in the order `configure_world` sends them.
pub(crate) fn commands(region: &str, start: Timestamp) -> anyhow::Result<Vec<CommandBody>> {
    let region_id = RegionId::new(region)?;
    let mut out = Vec::new();
    let payers = WALLETS.iter().map(|(r, p, c, _)| (*r, *p, *c, PartnerRole::Payer));
    let payees = MERCHANTS.iter().map(|(r, p, c, _)| (*r, *p, *c, PartnerRole::Payee));
    for (home, partner, currency, role) in payers.chain(payees).filter(|p| p.0 == region) {
        let currency = Currency::parse(currency)?;
        out.push(CommandBody::UpsertPartner(PartnerConfig {
            id: PartnerId::new(partner)?,
            region: RegionId::new(home)?,
            role,
            currency,
            net_debit_cap: Money::zero(currency),
        }));
    }
    for wallet in WALLETS.iter().filter(|w| w.0 == region) {
        out.extend(wallet_commands(&region_id, wallet, start).with_context(|| format!("wallet {}", wallet.1))?);
    }
    Ok(out)
}

fn wallet_commands(region: &RegionId, wallet: &Wallet, start: Timestamp) -> anyhow::Result<Vec<CommandBody>> {
    let &(_, partner, currency, prefund) = wallet;
    let mut out = vec![CommandBody::TopUp {
        partner: PartnerId::new(partner)?,
        amount: Money::from_units(u64::try_from(prefund)?, Currency::parse(currency)?)?,
        reference: TopUpRef::new(format!("demo-prefund-{partner}"))?,
    }];
    for merchant in &MERCHANTS {
        out.extend(corridor_commands(region, wallet, merchant, start)?);
    }
    Ok(out)
}

/// The corridor from `wallet` to `merchant`, its rate and the merchant's
/// route; nothing if no rate prices the merchant's currency from the wallet's.
fn corridor_commands(
    region: &RegionId,
    wallet: &Wallet,
    merchant: &Merchant,
    start: Timestamp,
) -> anyhow::Result<Vec<CommandBody>> {
    let &(_, _, currency, _) = wallet;
    let &(merchant_region, merchant_partner, merchant_currency, prefix) = merchant;
    let Some((_, _, rate)) = RATES.iter().find(|(s, d, _)| *s == currency && *d == merchant_currency) else {
        return Ok(Vec::new());
    };
    let id = common::CorridorId {
        source_currency: currency.to_owned(),
        source_region: region.to_string(),
        destination_currency: merchant_currency.to_owned(),
        destination_region: merchant_region.to_owned(),
    };
    let upsert = corridor_request(id.clone());
    let corridor: CorridorId = convert::corridor_id("corridor", Some(&id))?;
    let terms = convert::corridor_terms(&upsert)?;
    let mut out = vec![CommandBody::UpsertCorridor { corridor: corridor.clone(), terms }];
    if currency != merchant_currency {
        let rate = FxRate::new(
            corridor.source_currency,
            corridor.destination_currency,
            convert::rate("mid_rate", rate)?,
            start.minus_ms(RATE_VALID_BEFORE_MS),
            start.plus_ms(RATE_VALID_AFTER_MS),
        )?;
        out.push(CommandBody::SetFxRate { corridor: corridor.clone(), rate });
    }
    if CURRENT_RATE_REFUNDS.contains(&(currency, merchant_currency)) {
        out.push(CommandBody::SetCorridorRefundRate { corridor, rate: RefundRate::Current });
    }
    out.push(CommandBody::UpsertPayeeRoute(PayeeRoute {
        prefix: convert::qr_prefix("qr_prefix", prefix)?,
        partner: PartnerId::new(merchant_partner)?,
        region: RegionId::new(merchant_region)?,
        currency: Currency::parse(merchant_currency)?,
    }));
    Ok(out)
}

/// A QR payload of `merchant` naming its merchant number `number`, as the
/// real workload forms them.
pub(crate) fn qr_of(merchant: &Merchant, number: u64) -> anyhow::Result<QrPayload> {
    Ok(QrPayload::new(format!("{}m{:04}", merchant.3, number))?)
}
