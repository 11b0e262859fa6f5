//! No acknowledged transfer is lost: what the mesh told a partner it had
//! recorded is still there after every fault, and a final state it answered
//! never changed.

use super::{Checker, Holdings, Violation};
use crate::history::{History, Outcome, Request};

/// Every CreateTransfer answered `Ok` with a transfer id is held by its
/// origin region with the same payer, in the same state if the answer was
/// final.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lost;

impl Checker for Lost {
    fn name(&self) -> &'static str {
        "lost"
    }

    fn describe(&self) -> &'static str {
        "no acknowledged transfer is lost: each is held by its origin region, and an answered final state never changed"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let Some(observation) = &history.observation else { return Vec::new() };
        let holdings = Holdings::new(observation);
        let mut found = Vec::new();
        for op in history.ops.iter().filter(|op| op.outcome == Outcome::Ok) {
            let Request::CreateTransfer { region, partner, idempotency_key, transfer_id: Some(id), state, .. } =
                &op.request
            else {
                continue;
            };
            // Built only for a violation: most acknowledged transfers are fine.
            let acknowledged = || {
                format!("transfer {id} (key {idempotency_key} of {partner}, acknowledged at {} ms)", op.completed_ms)
            };
            let Some(held) = holdings.get(region, id) else {
                found.push(Violation::new(self.name(), format!("{} is not held by {region}", acknowledged())));
                continue;
            };
            if held.payer_partner != *partner || held.source_region != *region {
                found.push(Violation::new(
                    self.name(),
                    format!(
                        "{}: {region} holds it as a transfer of {} from {}",
                        acknowledged(),
                        held.payer_partner,
                        held.source_region
                    ),
                ));
            }
            if let Some(answered) = state.filter(|s| s.is_final()) {
                if held.state != answered {
                    found.push(Violation::new(
                        self.name(),
                        format!("{} was answered {answered:?} but {region} holds it {:?}", acknowledged(), held.state),
                    ));
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{self, T_COMMITTED, T_DOMESTIC, US};
    use crate::history::TransferState;

    #[test]
    fn every_acknowledged_transfer_held_passes() {
        assert_eq!(Lost.check(&fixtures::good_history()), Vec::new());
    }

    #[test]
    fn an_acknowledged_transfer_missing_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::region_mut(&mut history, US).transfers.retain(|t| t.transfer_id != T_COMMITTED);
        let found = Lost.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("t-x1") && found[0].detail.contains("not held"), "{}", found[0].detail);
    }

    #[test]
    fn a_committed_answer_later_aborted_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, US, T_DOMESTIC).state = TransferState::Aborted;
        let found = Lost.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("answered Committed"), "{}", found[0].detail);
    }

    #[test]
    fn a_non_final_answer_may_end_either_way() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, US, T_COMMITTED).state = TransferState::Aborted;
        assert_eq!(Lost.check(&history), Vec::new());
    }

    #[test]
    fn the_same_id_held_for_another_payer_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, US, T_DOMESTIC).payer_partner = "other-wallet".to_owned();
        let found = Lost.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("other-wallet"), "{}", found[0].detail);
    }
}
