//! What the mesh holds once faults have healed: every region's transfers
//! (as every partner homed there lists them), ledger totals, positions and
//! replicas, read through the same APIs partners and operators use.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use paymesh_harness::local::LocalRegion;
use paymesh_harness::world::transfers_of;
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::partner::v1 as wire;
use rust_decimal::Decimal;

use crate::history::{LedgerTotals, ObservedTransfer, RegionObservation, Replica};
use crate::workload::{amount_of, position_of, state_of};
use crate::world::{MERCHANTS, WALLETS};

/// One region's holdings now.
pub async fn region(name: &str, region: &LocalRegion) -> anyhow::Result<RegionObservation> {
    let mut out = RegionObservation::default();
    let wallets = WALLETS.iter().filter(|w| w.0 == name).map(|w| (w.1, true));
    let merchants = MERCHANTS.iter().filter(|m| m.0 == name).map(|m| (m.1, false));
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
    for (_, partner, currency, prefund) in WALLETS.iter().filter(|w| w.0 == name) {
        out.top_ups.entry((*partner).to_owned()).or_default().insert((*currency).to_owned(), Decimal::new(*prefund, 2));
    }
    let summary =
        region.admin(|mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await }).await?;
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
    out.replicas = replicas(region).await?;
    Ok(out)
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
