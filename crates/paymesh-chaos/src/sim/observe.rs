//! What the simulated mesh holds once it settled, in the form
//! `paymesh_harness::observe` reads it from a real mesh: every transfer as the
//! region's partners list it (through the node's own wire conversions, so a
//! payee-side record has no payer, no key and no fee), ledger totals per
//! currency, every partner's positions, the wallets' prefunding as opening
//! balances, and every replica's applied index and state digest
//! (`paymesh_store::state_digest`, the digest `paymesh status` reports).

use std::collections::BTreeMap;

use paymesh_core::corridor::RefundRate;
use paymesh_core::history::Record;
use paymesh_core::id::PartnerId;
use paymesh_core::state::Listing;
use paymesh_core::{SignedMoney, State};
use paymesh_node::convert;
use rust_decimal::Decimal;

use super::region::{Node, Region};
use crate::world::{MERCHANTS, WALLETS};
use paymesh_harness::history::{LedgerTotals, ObservedTransfer, RegionObservation, Replica};
use paymesh_harness::observe::{amount_of, observed, observed_refund, position_of};

/// `region` (named `name`) as the real runner observes one.
pub(crate) fn region(name: &str, region: &Region) -> RegionObservation {
    let node = region.freshest();
    let state = &node.state;
    let mut out = RegionObservation::default();
    let wallets = WALLETS.iter().filter(|w| w.0 == name).map(|w| (w.1, true));
    let merchants = MERCHANTS.iter().filter(|m| m.0 == name).map(|m| (m.1, false));
    let mut transfers: BTreeMap<String, ObservedTransfer> = BTreeMap::new();
    let mut listed_transfers = Vec::new();
    for (partner, is_wallet) in wallets.chain(merchants) {
        let Ok(id) = PartnerId::new(partner) else { continue };
        let mut after = None;
        loop {
            let page = state.listed_of(&id, after.as_ref(), LIST_PAGE, &node.history);
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (_, listed) in page {
                match listed {
                    Some(Listing::Transfer(transfer)) => listed_transfers.push(transfer),
                    Some(Listing::Refund(refund)) => {
                        let Ok(observed) = observed_refund(&convert::partner_refund_out(&refund), partner) else {
                            continue;
                        };
                        out.refunds.push(observed);
                    }
                    None => {}
                }
            }
        }
        for listed in std::mem::take(&mut listed_transfers) {
            let Some(t) = convert::transfer_out(&listed, &id) else { continue };
            let Ok(observed) = observed(&t) else { continue };
            let entry = transfers.entry(t.transfer_id.clone()).or_insert(observed);
            if is_wallet && entry.payee_partner != partner {
                entry.payer_partner = partner.to_owned();
            }
        }
        if let Some(position) = state.position(&id).and_then(|p| position_of(&convert::position_out(&p))) {
            out.positions.entry(partner.to_owned()).or_default().insert(position.currency.clone(), position);
        }
    }
    out.transfers = transfers.into_values().collect();
    for (_, partner, currency, prefund) in WALLETS.iter().filter(|w| w.0 == name) {
        out.top_ups.entry((*partner).to_owned()).or_default().insert((*currency).to_owned(), Decimal::new(*prefund, 2));
    }
    out.ledger = ledger(state);
    out.current_rate_corridors = state
        .corridors()
        .filter(|c| state.refund_rate(&c.id) == RefundRate::Current)
        .map(|c| c.id.to_string())
        .collect();
    for (index, node) in region.nodes.iter().enumerate() {
        // A replica whose state equals an earlier one's has its digest (the
        // encoding is canonical); only a different state is encoded again.
        // Comparing is much cheaper than encoding and hashing.
        let earlier = region.nodes[..index].iter().zip(&out.replicas).find(|(other, _)| other.state == node.state);
        let digest = match earlier {
            Some((other, replica)) if other.history.last_index() == node.history.last_index() => replica.digest.clone(),
            _ => both_tiers_digest(node),
        };
        out.replicas.push(Replica { node_id: index as u64 + 1, applied_index: node.applied as u64, digest });
    }
    out
}

/// Transfers listed per page.
const LIST_PAGE: usize = 1_000;

/// A digest of a replica's hot state and its history: the state's digest
/// (`paymesh_store::state_digest`) chained with every history record.
fn both_tiers_digest(node: &Node) -> String {
    let mut batches: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
    for (index, record) in node.history.records() {
        batches.entry(index).or_default().push(record.clone());
    }
    let mut digest = [0; 32];
    for (index, records) in &batches {
        digest = paymesh_store::chain_digest(&digest, *index, records);
    }
    paymesh_store::region_digest(&paymesh_store::state_digest(&node.state), &digest)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Ledger totals per currency, as `GetLedgerSummary` reports them.
fn ledger(state: &State) -> BTreeMap<String, LedgerTotals> {
    let mut out = BTreeMap::new();
    for (currency, totals) in state.ledger().totals() {
        let value = |units: u128| {
            let units = i128::try_from(units).unwrap_or(i128::MAX);
            let money = SignedMoney::from_units(units, *currency).ok().map(|m| convert::signed_out(&m));
            amount_of(money.as_ref()).map_or(Decimal::ZERO, |a| a.amount)
        };
        out.insert(
            currency.code().to_owned(),
            LedgerTotals {
                debits_posted: value(totals.debits_posted),
                credits_posted: value(totals.credits_posted),
                debits_pending: value(totals.debits_pending),
                credits_pending: value(totals.credits_pending),
            },
        );
    }
    out
}
