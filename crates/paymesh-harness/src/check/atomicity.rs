//! Cross-region atomicity: the two regions of a cross-border transfer reach
//! the same decision and agree on what was moved.

use super::{Checker, Holdings, Violation};
use crate::history::{History, ObservedTransfer, TransferState};

/// For each cross-border transfer: the origin committed exactly when the
/// payee side committed; an aborted origin has no payee side or an aborted
/// one; both sides name the same parties, amounts and currencies.
#[derive(Clone, Copy, Debug, Default)]
pub struct Atomicity;

impl Checker for Atomicity {
    fn name(&self) -> &'static str {
        "atomicity"
    }

    fn describe(&self) -> &'static str {
        "cross-region atomicity: origin committed iff payee side committed, an aborted origin has no live payee side, \
         and both sides agree on parties and amounts"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        use TransferState::{Aborted, Committed};
        let Some(observation) = &history.observation else { return Vec::new() };
        let holdings = Holdings::new(observation);
        let mut found = Vec::new();
        for (region, transfer) in observation.transfers().filter(|(_, t)| t.is_cross_border()) {
            let id = &transfer.transfer_id;
            if transfer.is_origin_side_in(region) {
                let payee_region = &transfer.destination_region;
                let payee = holdings.get(payee_region, id);
                let broken = match (transfer.state, payee.map(|p| p.state)) {
                    (Committed, Some(Committed)) | (Aborted, None | Some(Aborted)) => false,
                    (Committed | Aborted, _) | (_, Some(Committed)) => true,
                    // Not decided yet at the origin: the resolution checker reports it.
                    _ => false,
                };
                if broken {
                    let payee_state = payee.map_or("absent".to_owned(), |p| format!("{:?}", p.state));
                    found.push(Violation::new(
                        self.name(),
                        format!(
                            "transfer {id} is {:?} in its origin {region} but {payee_state} in its payee region \
                             {payee_region}",
                            transfer.state
                        ),
                    ));
                }
                if let Some(payee) = payee {
                    if let Some(difference) = disagreement(transfer, payee) {
                        found.push(Violation::new(
                            self.name(),
                            format!("transfer {id}: {region} and {payee_region} disagree on {difference}"),
                        ));
                    }
                }
            } else if transfer.state == Committed && holdings.get(&transfer.source_region, id).is_none() {
                let origin = &transfer.source_region;
                found.push(Violation::new(
                    self.name(),
                    format!(
                        "transfer {id} is Committed in its payee region {region} but absent from its origin {origin}"
                    ),
                ));
            }
        }
        found
    }
}

/// What the two sides of one transfer disagree on, if anything. The payee
/// region knows neither the payer nor the payer's fee (they stay in the
/// origin region), so the sides are compared on the payee, the credit, the
/// regions and the source currency.
fn disagreement(origin: &ObservedTransfer, payee: &ObservedTransfer) -> Option<String> {
    let mut differences = Vec::new();
    if origin.debit.currency != payee.debit.currency {
        differences.push(format!("the source currency ({} vs {})", origin.debit.currency, payee.debit.currency));
    }
    if origin.credit != payee.credit {
        differences.push(format!(
            "the credit ({} {} vs {} {})",
            origin.credit.amount, origin.credit.currency, payee.credit.amount, payee.credit.currency
        ));
    }
    if origin.payee_partner != payee.payee_partner {
        differences.push(format!("the payee ({} vs {})", origin.payee_partner, payee.payee_partner));
    }
    if origin.source_region != payee.source_region || origin.destination_region != payee.destination_region {
        differences.push(format!(
            "the regions ({} to {} vs {} to {})",
            origin.source_region, origin.destination_region, payee.source_region, payee.destination_region
        ));
    }
    (!differences.is_empty()).then(|| differences.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{self, cny, CN, T_ABORTED, T_ABORTED_EARLY, T_COMMITTED, US};

    #[test]
    fn agreeing_regions_pass() {
        assert_eq!(Atomicity.check(&fixtures::good_history()), Vec::new());
    }

    #[test]
    fn a_commit_at_the_origin_only_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, CN, T_COMMITTED).state = TransferState::Aborted;
        let found = Atomicity.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("Committed in its origin us-west but Aborted"), "{}", found[0].detail);
    }

    #[test]
    fn a_commit_with_no_payee_side_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::region_mut(&mut history, CN).transfers.retain(|t| t.transfer_id != T_COMMITTED);
        let found = Atomicity.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("absent"), "{}", found[0].detail);
    }

    #[test]
    fn a_payee_credited_for_an_aborted_origin_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, CN, T_ABORTED).state = TransferState::Committed;
        let found = Atomicity.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("Aborted in its origin us-west but Committed"), "{}", found[0].detail);
    }

    #[test]
    fn a_payee_committed_without_origin_is_flagged() {
        let mut history = fixtures::good_history();
        let mut orphan = fixtures::transfer_mut(&mut history, CN, T_COMMITTED).clone();
        orphan.transfer_id = "t-orphan".to_owned();
        fixtures::region_mut(&mut history, CN).transfers.push(orphan);
        let found = Atomicity.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("absent from its origin"), "{}", found[0].detail);
    }

    #[test]
    fn sides_disagreeing_on_the_credit_are_flagged() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, CN, T_COMMITTED).credit = cny("141.00");
        let found = Atomicity.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("the credit (140.00 CNY vs 141.00 CNY)"), "{}", found[0].detail);
    }

    #[test]
    fn an_undecided_origin_is_left_to_resolution_unless_the_payee_committed() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, US, T_ABORTED_EARLY).state = TransferState::Reserved;
        fixtures::transfer_mut(&mut history, US, T_COMMITTED).state = TransferState::Prepared;
        let found = Atomicity.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("Prepared in its origin us-west but Committed"), "{}", found[0].detail);
    }
}
