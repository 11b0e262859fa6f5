//! The demo's world: three regions (`us-west`, `ap-southeast`, `cn-east`),
//! their wallets and merchant networks, the rates between their currencies,
//! and how an operator configures them through the admin API (partners,
//! limits, prefunding, corridors, rates and payee routes).
//!
//! * `us-west`: `paypal-us`, a USD wallet, and `shop-us`, a US merchant
//!   network for domestic payments.
//! * `ap-southeast`: `gcash-ph`, a PHP wallet, and `sari-ph`, a Philippine
//!   merchant network.
//! * `cn-east`: `wechat-cn` and `alipay-cn`, CNY merchant networks.
//!
//! `paymesh demo` and the cross-border tests run this world; the chaos suite
//! configures a world of its own (more wallets) with [`configure_world`] and
//! the corridor terms of [`corridor_request`].

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context};
use paymesh_client::PartnerClient;
use paymesh_node::identity::Identity;
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;

use crate::admin_calls::{accepted, money, unix_ms_now};
use crate::local::LocalRegion;
use crate::mesh::LocalMesh;

/// The request rate an operator gives each wallet of the demo's world (two
/// wallets carry the whole mesh's load, more than a partner's default).
pub const WALLET_REQUESTS_PER_SECOND: u32 = 20_000;

/// The wallets: (region, partner, currency, prefunding in minor units).
pub const WALLETS: [Wallet; 2] =
    [("us-west", "paypal-us", "USD", 10_000_000_000), ("ap-southeast", "gcash-ph", "PHP", 500_000_000_000)];

/// The merchant networks: (region, partner, currency, QR prefix).
pub const MERCHANTS: [Merchant; 4] = [
    ("cn-east", "wechat-cn", "CNY", "wxp://"),
    ("cn-east", "alipay-cn", "CNY", "alipay://"),
    ("us-west", "shop-us", "USD", "usqr://shop/"),
    ("ap-southeast", "sari-ph", "PHP", "phqr://sari/"),
];

/// Mid rates, destination units per source unit.
pub const RATES: [Rate; 4] =
    [("USD", "CNY", "7.1000"), ("PHP", "CNY", "0.1250"), ("USD", "USD", "1"), ("PHP", "PHP", "1")];

/// The corridors that refund at the current rate rather than the
/// payment's, by (source currency, destination currency): a PHP wallet's
/// refunds from CNY merchants, so every run with refunds takes both
/// pricings, the payer's region answering with the credit it priced.
pub const CURRENT_RATE_REFUNDS: [(&str, &str); 1] = [("PHP", "CNY")];

/// The regions and the partners each certifies.
pub fn regions() -> Vec<(&'static str, Vec<Identity>)> {
    let mut by_region: BTreeMap<&str, Vec<Identity>> = BTreeMap::new();
    for (region, partner, _, _) in WALLETS {
        by_region.entry(region).or_default().push(Identity::Partner(partner.parse().expect("a valid partner id")));
    }
    for (region, partner, _, _) in MERCHANTS {
        by_region.entry(region).or_default().push(Identity::Partner(partner.parse().expect("a valid partner id")));
    }
    by_region.into_iter().collect()
}

/// `amount` minor units (cents) as a two-decimal wire amount.
pub fn minor(amount: i64) -> String {
    format!("{}.{:02}", amount / 100, amount % 100)
}

fn corridor(source_region: &str, source: &str, destination_region: &str, destination: &str) -> common::CorridorId {
    common::CorridorId {
        source_currency: source.to_owned(),
        source_region: source_region.to_owned(),
        destination_currency: destination.to_owned(),
        destination_region: destination_region.to_owned(),
    }
}

/// A wallet: (region, partner, currency, prefunding in minor units).
pub type Wallet = (&'static str, &'static str, &'static str, i64);

/// A merchant network: (region, partner, currency, QR prefix).
pub type Merchant = (&'static str, &'static str, &'static str, &'static str);

/// A mid rate: (source currency, destination currency, destination units per
/// source unit).
pub type Rate = (&'static str, &'static str, &'static str);

/// The terms of every corridor of a demo world: no spread at home and 50 bp
/// abroad, a 0.30 % fee capped at 1,000, amounts from 1 to 100,000.
pub fn corridor_request(id: common::CorridorId) -> admin::UpsertCorridorRequest {
    let currency = id.source_currency.clone();
    let currency = currency.as_str();
    admin::UpsertCorridorRequest {
        spread_bps: if id.source_region == id.destination_region { 0 } else { 50 },
        corridor: Some(id),
        fee: Some(admin::FeeSchedule {
            fixed: money("0.00", currency),
            rate_bps: 30,
            min: money("0.00", currency),
            max: money("1000.00", currency),
        }),
        min_amount: money("1.00", currency),
        max_amount: money("100000.00", currency),
        daily_cap: money("10000000000.00", currency),
    }
}

/// Configure the demo's world on `mesh`: partners, prefunding, corridors,
/// rates and payee routes. Every refusal is an error.
pub async fn configure(mesh: &LocalMesh) -> anyhow::Result<()> {
    configure_world(&mesh.regions, &WALLETS, &MERCHANTS, &RATES).await
}

/// Configure a world on `regions` (by name): the wallets (prefunded) and merchants as
/// partners of their regions, and for each wallet a corridor, with its rate
/// and the payee route, to every merchant whose currency `rates` prices from
/// the wallet's. Every refusal is an error.
pub async fn configure_world(
    regions: &BTreeMap<String, LocalRegion>,
    wallets: &[Wallet],
    merchants: &[Merchant],
    rates: &[Rate],
) -> anyhow::Result<()> {
    let region_of = |name: &str| regions.get(name).with_context(|| format!("no region {name}"));
    let payers = wallets.iter().map(|(r, p, c, _)| (*r, *p, *c, admin::PartnerRole::Payer));
    let payees = merchants.iter().map(|(r, p, c, _)| (*r, *p, *c, admin::PartnerRole::Payee));
    for (region, partner, currency, role) in payers.chain(payees) {
        let request = admin::UpsertPartnerRequest {
            partner_id: partner.to_owned(),
            home_region: region.to_owned(),
            role: role as i32,
            settlement_currency: currency.to_owned(),
            net_debit_cap: money("0.00", currency),
        };
        let answer = region_of(region)?
            .admin(|mut c| {
                let request = request.clone();
                async move { c.upsert_partner(request).await }
            })
            .await?;
        accepted(answer.reject_code).with_context(|| format!("partner {partner}"))?;
    }
    for &(region, partner, currency, prefund) in wallets {
        // The wallets carry the whole workload, so the operator gives them
        // more than a partner's default rate.
        let limits = admin::SetPartnerLimitsRequest {
            partner_id: partner.to_owned(),
            limits: Some(admin::PartnerLimits {
                requests_per_second: WALLET_REQUESTS_PER_SECOND,
                requests_burst: 2 * WALLET_REQUESTS_PER_SECOND,
                quotes_outstanding_max: paymesh_core::limits::PARTNER_QUOTES_OUTSTANDING_DEFAULT,
                transfers_in_flight_max: paymesh_core::limits::PARTNER_TRANSFERS_IN_FLIGHT_DEFAULT,
            }),
        };
        let answer = region_of(region)?
            .admin(|mut c| {
                let limits = limits.clone();
                async move { c.set_partner_limits(limits).await }
            })
            .await?;
        accepted(answer.reject_code).with_context(|| format!("limits of {partner}"))?;
        let request = admin::TopUpPositionRequest {
            partner_id: partner.to_owned(),
            amount: money(&minor(prefund), currency),
            reference: format!("demo-prefund-{partner}"),
        };
        let answer = region_of(region)?
            .admin(|mut c| {
                let request = request.clone();
                async move { c.top_up_position(request).await }
            })
            .await?;
        accepted(answer.reject_code).with_context(|| format!("prefunding {partner}"))?;
        for &(merchant_region, merchant, merchant_currency, prefix) in merchants {
            let Some((_, _, rate)) = rates.iter().find(|(s, d, _)| *s == currency && *d == merchant_currency) else {
                continue;
            };
            let id = corridor(region, currency, merchant_region, merchant_currency);
            let upsert = corridor_request(id.clone());
            let fx = admin::SetFxRateRequest {
                corridor: Some(id),
                mid_rate: (*rate).to_owned(),
                valid_from_unix_ms: unix_ms_now() - 60_000,
                valid_until_unix_ms: unix_ms_now() + 23 * 3_600_000,
            };
            let route = admin::UpsertPayeeRouteRequest {
                qr_prefix: prefix.to_owned(),
                payee_partner_id: merchant.to_owned(),
                region: merchant_region.to_owned(),
                currency: merchant_currency.to_owned(),
            };
            let region = region_of(region)?;
            let context = || format!("corridor {currency} to {merchant} in {}", region.region());
            let upserted = region
                .admin(|mut c| {
                    let upsert = upsert.clone();
                    async move { c.upsert_corridor(upsert).await }
                })
                .await?;
            accepted(upserted.reject_code).with_context(context)?;
            // A corridor within one currency needs no rate.
            if currency != merchant_currency {
                let rated = region
                    .admin(|mut c| {
                        let fx = fx.clone();
                        async move { c.set_fx_rate(fx).await }
                    })
                    .await?;
                accepted(rated.reject_code).with_context(context)?;
            }
            if CURRENT_RATE_REFUNDS.contains(&(currency, merchant_currency)) {
                let request = admin::SetCorridorRefundRateRequest {
                    corridor: fx.corridor.clone(),
                    refund_rate: admin::RefundRate::Current as i32,
                };
                region
                    .admin(|mut c| {
                        let request = request.clone();
                        async move { c.set_corridor_refund_rate(request).await }
                    })
                    .await
                    .with_context(context)?;
            }
            // Corridors are per wallet currency; the routes are the region's.
            let routed = region
                .admin(|mut c| {
                    let route = route.clone();
                    async move { c.upsert_payee_route(route).await }
                })
                .await?;
            accepted(routed.reject_code).with_context(context)?;
        }
    }
    Ok(())
}

/// Every transfer a partner sees, by id.
pub async fn transfers_of(client: &PartnerClient) -> anyhow::Result<HashMap<String, wire::Transfer>> {
    let mut seen = HashMap::new();
    let mut token = String::new();
    for _ in 0..100_000 {
        let page = client
            .list_transfers(wire::ListTransfersRequest {
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .context("listing transfers")?;
        for t in page.transfers {
            seen.insert(t.transfer_id.clone(), t);
        }
        if page.next_page_token.is_empty() {
            return Ok(seen);
        }
        token = page.next_page_token;
    }
    bail!("too many transfers to list")
}
