//! What the mesh holds once the work has stopped (and, in a chaos run,
//! faults have healed): every region's transfers (as every partner homed
//! there lists them), ledger totals, positions and replicas, read through
//! the same APIs partners and operators use. The chaos run and `paymesh
//! demo` both build their [`Observation`] here and hand it to the same
//! checkers ([`crate::check`]).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use paymesh_client::PartnerClient;
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;
use rust_decimal::Decimal;

use crate::history::{
    Amount, History, LedgerTotals, Observation, ObservedRefund, ObservedTransfer, Position, RegionObservation, Replica,
    TransferState,
};
use crate::local::LocalRegion;
use crate::locality::{self, ScanRoot};
use crate::mesh::LocalMesh;
use crate::world::{transfers_of, Merchant, Wallet};

/// The partners of a world: its wallets, with the prefunding each was
/// topped up with, and its merchant networks.
#[derive(Clone, Copy, Debug)]
pub struct Partners<'a> {
    /// (region, partner, currency, prefunding in minor units).
    pub wallets: &'a [Wallet],
    /// (region, partner, currency, QR prefix).
    pub merchants: &'a [Merchant],
}

/// A running mesh's history for the checkers of
/// [`crate::check::of_observation`]: no requests and no faults (its workload
/// was not recorded request by request), an observation made once every
/// transfer is final ([`settle`], within `bound`), and the scan of every
/// node's files for other regions' payer markers. The workload's payers must
/// carry their region's marker ([`locality::payer_fields`]).
pub async fn live_mesh(
    mesh: &LocalMesh,
    partners: Partners<'_>,
    bound: Duration,
    backend: &str,
) -> anyhow::Result<History> {
    let started = Instant::now();
    let now_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let regions: Vec<(&str, &LocalRegion)> = mesh.regions.iter().map(|(name, r)| (name.as_str(), r)).collect();
    let observation = settle(&regions, partners, bound, now_ms).await?;
    let roots: Vec<ScanRoot> = regions
        .iter()
        .flat_map(|(name, region)| region.nodes.values().map(|n| ScanRoot::new(name, n.id.to_string(), &n.data_dir)))
        .collect();
    let names: Vec<&str> = regions.iter().map(|(name, _)| *name).collect();
    let markers = locality::markers(&names);
    let locality = tokio::task::spawn_blocking(move || locality::scan(&roots, &markers))
        .await
        .context("scanning the nodes' files")?;
    Ok(History {
        backend: backend.to_owned(),
        duration_ms: now_ms(),
        observation: Some(observation),
        locality: Some(locality),
        ..History::default()
    })
}

/// Observe every region of `regions` until every transfer and refund is
/// final in every region, every region's replicas agree, and a second
/// observation in a row holds the same transfers, refunds and books, or
/// `bound` passes; the last observation, its `resolved_ms` set (by
/// `now_ms`) if it settled. An observation that could not be made by the
/// bound is an error.
///
/// The regions are observed one after another, so one observed early can
/// miss work another region had in flight and finished before it was
/// observed itself (a refund's payer region, say, asked to prepare just
/// after it was read): every region final is not enough, the next
/// observation must find nothing new.
pub async fn settle(
    regions: &[(&str, &LocalRegion)],
    partners: Partners<'_>,
    bound: Duration,
    now_ms: impl Fn() -> u64,
) -> anyhow::Result<Observation> {
    let started = Instant::now();
    let mut previous: Option<Observation> = None;
    loop {
        let mut observation =
            Observation { resolve_bound_ms: u64::try_from(bound.as_millis())?, ..Observation::default() };
        let mut all_final = true;
        let mut failure = None;
        for (name, region) in regions {
            match region_now(name, region, partners).await {
                Ok(o) => {
                    all_final &= o.transfers.iter().all(|t| t.state.is_final());
                    all_final &= o.refunds.iter().all(|r| r.state.is_final());
                    all_final &= o.replicas.windows(2).all(|w| w[0].digest == w[1].digest);
                    observation.regions.insert((*name).to_owned(), o);
                }
                Err(e) => failure = Some(e),
            }
        }
        let same = |a: &RegionObservation, b: &RegionObservation| {
            a.transfers == b.transfers && a.refunds == b.refunds && a.ledger == b.ledger
        };
        let stable = previous.as_ref().is_some_and(|p: &Observation| {
            p.regions.len() == observation.regions.len()
                && p.regions.iter().all(|(name, was)| observation.regions.get(name).is_some_and(|now| same(was, now)))
        });
        if failure.is_none() && all_final {
            if stable {
                observation.resolved_ms = Some(now_ms());
                return Ok(observation);
            }
            if started.elapsed() > bound {
                return Ok(observation);
            }
            // Final everywhere: look once more, at once, for anything new.
            previous = Some(observation);
            continue;
        }
        previous = None;
        if started.elapsed() > bound {
            return match failure {
                Some(e) => Err(e),
                None => Ok(observation),
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One region's holdings now.
pub async fn region_now(name: &str, region: &LocalRegion, partners: Partners<'_>) -> anyhow::Result<RegionObservation> {
    let mut out = RegionObservation::default();
    let wallets = partners.wallets.iter().filter(|w| w.0 == name).map(|w| (w.1, true));
    let merchants = partners.merchants.iter().filter(|m| m.0 == name).map(|m| (m.1, false));
    let mut transfers: BTreeMap<String, ObservedTransfer> = BTreeMap::new();
    for (partner, is_wallet) in wallets.chain(merchants) {
        let client = region.partner(partner)?;
        for (id, t) in transfers_of(&client).await.with_context(|| format!("{partner}'s transfers"))? {
            let observed = observed(&t).with_context(|| format!("transfer {id} as {partner} lists it"))?;
            let entry = transfers.entry(id).or_insert(observed);
            if is_wallet && entry.payee_partner != partner {
                entry.payer_partner = partner.to_owned();
            }
        }
        for refund in refunds_of(&client).await.with_context(|| format!("{partner}'s refunds"))? {
            out.refunds.push(observed_refund(&refund, partner).with_context(|| format!("a refund {partner} lists"))?);
        }
        let positions = client
            .get_position(wire::GetPositionRequest { currency: String::new() })
            .await
            .with_context(|| format!("{partner}'s positions"))?;
        let by_currency = out.positions.entry(partner.to_owned()).or_default();
        for p in &positions.positions {
            by_currency.insert(p.currency.clone(), position_of(p).context("a position with every amount")?);
        }
    }
    out.transfers = transfers.into_values().collect();
    for (_, partner, currency, prefund) in partners.wallets.iter().filter(|w| w.0 == name) {
        out.top_ups.entry((*partner).to_owned()).or_default().insert((*currency).to_owned(), Decimal::new(*prefund, 2));
    }
    // Any node answers the summary from its own applied state, which may lag
    // (a node just restarted replays its log): it counts only if taken at or
    // after the index every replica had reached, and so after every write
    // the transfers and positions read above reflect.
    out.current_rate_corridors = current_rate_corridors(region).await?;
    out.replicas = replicas(region).await?;
    let reached = out.replicas.iter().map(|r| r.applied_index).max().unwrap_or(0);
    let summary =
        region.admin(|mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await }).await?;
    anyhow::ensure!(
        summary.applied_index >= reached,
        "{name}'s ledger summary came from a node at index {}, behind the replicas' {reached}",
        summary.applied_index
    );
    for totals in &summary.currencies {
        let value = |m| amount_of(m).map(|a| a.amount).context("ledger totals with every amount");
        out.ledger.insert(
            totals.currency.clone(),
            LedgerTotals {
                debits_posted: value(totals.debits_posted.as_ref())?,
                credits_posted: value(totals.credits_posted.as_ref())?,
                debits_pending: value(totals.debits_pending.as_ref())?,
                credits_pending: value(totals.credits_pending.as_ref())?,
            },
        );
    }
    Ok(out)
}

/// The corridors of `region` that refund at the current rate, by name.
async fn current_rate_corridors(region: &LocalRegion) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let request = admin::ListCorridorsRequest { page_size: 100, page_token: token.clone() };
        let page = region
            .admin(|mut c| {
                let request = request.clone();
                async move { c.list_corridors(request).await }
            })
            .await?;
        for corridor in &page.corridors {
            if corridor.refund_rate == admin::RefundRate::Current as i32 {
                let id = corridor.corridor.as_ref().context("a corridor without its id")?;
                found.push(format!(
                    "{}:{}->{}:{}",
                    id.source_currency, id.source_region, id.destination_currency, id.destination_region
                ));
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(found);
        }
        token = page.next_page_token;
    }
    anyhow::bail!("more than 100 pages of corridors")
}

/// Samples of every replica's applied index and digest, asked of all nodes
/// at once, until one sample finds them at the same index (a region is never
/// quite idle: the leader's tick purges expired records); the last sample if
/// none did.
async fn replicas(region: &LocalRegion) -> anyhow::Result<Vec<Replica>> {
    const SAMPLES: usize = 40;
    let client = region.client()?;
    let mut sample = Vec::new();
    for _ in 0..SAMPLES {
        let asked = region.nodes.values().map(|node| {
            let client = &client;
            async move {
                let status = tokio::time::timeout(Duration::from_secs(5), client.status(&node.api_addr, true))
                    .await
                    .with_context(|| format!("node {} did not answer its status", node.id))?
                    .with_context(|| format!("node {}'s status", node.id))?;
                anyhow::Ok(Replica {
                    node_id: node.id,
                    applied_index: status.applied_index.unwrap_or(0),
                    digest: status.state_digest.iter().map(|b| format!("{b:02x}")).collect(),
                })
            }
        });
        sample = futures::future::try_join_all(asked).await?;
        if sample.windows(2).all(|w| w[0].applied_index == w[1].applied_index) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(sample)
}

/// A listed transfer as the history records it (payer unknown yet).
pub fn observed(t: &wire::Transfer) -> anyhow::Result<ObservedTransfer> {
    let corridor = t.corridor.as_ref().context("no corridor")?;
    let source = amount_of(t.source_amount.as_ref()).context("no source amount")?;
    // The payee region does not know the payer's fee: there the debit is
    // the source amount alone.
    let mut debit = source;
    if let Some(fee) = amount_of(t.fee.as_ref()) {
        debit.amount += fee.amount;
    }
    Ok(ObservedTransfer {
        transfer_id: t.transfer_id.clone(),
        idempotency_key: t.idempotency_key.clone(),
        payer_partner: String::new(),
        payee_partner: t.payee.as_ref().map(|p| p.partner_id.clone()).unwrap_or_default(),
        source_region: corridor.source_region.clone(),
        destination_region: corridor.destination_region.clone(),
        state: state_of(t.state).context("no state")?,
        debit,
        credit: amount_of(t.destination_amount.as_ref()).context("no destination amount")?,
    })
}

/// A listed refund as the history records it, in `partner`'s view.
pub fn observed_refund(r: &wire::Refund, partner: &str) -> anyhow::Result<ObservedRefund> {
    Ok(ObservedRefund {
        refund_id: r.refund_id.clone(),
        transfer_id: r.transfer_id.clone(),
        partner: partner.to_owned(),
        payer_view: r.payer_view,
        state: state_of(r.state).context("no state")?,
        debited: amount_of(r.debited_amount.as_ref()).context("no debited amount")?,
        credited: amount_of(r.credited_amount.as_ref()).context("no credited amount")?,
    })
}

/// Every refund `client`'s partner takes part in, page by page.
pub async fn refunds_of(client: &PartnerClient) -> anyhow::Result<Vec<wire::Refund>> {
    let mut refunds = Vec::new();
    let mut page_token = String::new();
    // A bound on the pages read: a list that never ends is a failure.
    for _ in 0..10_000 {
        let page = client.list_refunds(wire::ListRefundsRequest { page_size: 500, page_token }).await?;
        refunds.extend(page.refunds);
        if page.next_page_token.is_empty() {
            return Ok(refunds);
        }
        page_token = page.next_page_token;
    }
    anyhow::bail!("more than 10,000 pages of refunds")
}

/// The history's state of a wire state.
pub fn state_of(state: i32) -> Option<TransferState> {
    match wire::TransferState::try_from(state).ok()? {
        wire::TransferState::Received => Some(TransferState::Received),
        wire::TransferState::Reserved => Some(TransferState::Reserved),
        wire::TransferState::Prepared => Some(TransferState::Prepared),
        wire::TransferState::Committed => Some(TransferState::Committed),
        wire::TransferState::Aborted => Some(TransferState::Aborted),
        wire::TransferState::Unspecified => None,
    }
}

/// An amount of the wire.
pub fn amount_of(money: Option<&common::Money>) -> Option<Amount> {
    let money = money?;
    Some(Amount { amount: Decimal::from_str(&money.amount).ok()?, currency: money.currency.clone() })
}

/// A position of the wire.
pub fn position_of(p: &common::Position) -> Option<Position> {
    let value = |m: Option<&common::Money>| amount_of(m).map(|a| a.amount);
    Some(Position {
        currency: p.currency.clone(),
        posted_balance: value(p.posted_balance.as_ref())?,
        pending_debits: value(p.pending_debits.as_ref())?,
        pending_credits: value(p.pending_credits.as_ref())?,
        net_debit_cap: value(p.net_debit_cap.as_ref())?,
    })
}
