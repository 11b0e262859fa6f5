//! No phantom transfer: the mesh holds no transfer that no partner asked for,
//! and no payee side without its origin.

use std::collections::HashMap;

use super::{Checker, Holdings, Violation};
use crate::history::{History, Request};

/// Every origin-side record comes from a CreateTransfer of its payer with its
/// key that may have taken effect (answered `Ok` or not answered); every
/// payee-side record has its origin-side record; a region holds each id once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phantom;

impl Checker for Phantom {
    fn name(&self) -> &'static str {
        "phantom"
    }

    fn describe(&self) -> &'static str {
        "no phantom transfer: each origin-side transfer was requested (and not refused), each payee side has its origin"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let Some(observation) = &history.observation else { return Vec::new() };
        // (payer, key) -> whether some request with it may have taken effect.
        let mut requested: HashMap<(&str, &str), bool> = HashMap::with_capacity(history.ops.len());
        for op in &history.ops {
            if let Request::CreateTransfer { partner, idempotency_key, .. } = &op.request {
                *requested.entry((partner.as_str(), idempotency_key.as_str())).or_default() |=
                    op.outcome.may_have_taken_effect();
            }
        }
        let holdings = Holdings::new(observation);
        let mut found = Vec::new();
        for (region, duplicate) in &holdings.duplicates {
            found.push(Violation::new(
                self.name(),
                format!("{region} holds transfer {} more than once", duplicate.transfer_id),
            ));
        }
        for (region, transfer) in observation.transfers() {
            let id = &transfer.transfer_id;
            if transfer.is_origin_side_in(region) {
                let key = (transfer.payer_partner.as_str(), transfer.idempotency_key.as_str());
                let problem = match requested.get(&key) {
                    Some(true) => continue,
                    Some(false) => "every request with it was refused",
                    None => "no request had it",
                };
                found.push(Violation::new(
                    self.name(),
                    format!(
                        "{region} holds transfer {id} of {} with key {:?}, but {problem}",
                        transfer.payer_partner, transfer.idempotency_key
                    ),
                ));
            } else if transfer.is_payee_side_in(region) {
                let origin = &transfer.source_region;
                let has_origin = holdings.get(origin, id).is_some_and(|o| o.is_origin_side_in(origin));
                if !has_origin {
                    found.push(Violation::new(
                        self.name(),
                        format!("{region} holds the payee side of transfer {id}, but {origin} holds no origin side"),
                    ));
                }
            } else {
                found.push(Violation::new(
                    self.name(),
                    format!(
                        "{region} holds transfer {id} from {} to {}, neither of which is {region}",
                        transfer.source_region, transfer.destination_region
                    ),
                ));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{self, CN, T_ABORTED, T_COMMITTED, US};
    use crate::history::Outcome;

    #[test]
    fn requested_transfers_pass() {
        assert_eq!(Phantom.check(&fixtures::good_history()), Vec::new());
    }

    #[test]
    fn a_transfer_nobody_asked_for_is_flagged() {
        let mut history = fixtures::good_history();
        let mut extra = fixtures::transfer_mut(&mut history, US, T_COMMITTED).clone();
        extra.transfer_id = "t-ghost".to_owned();
        extra.idempotency_key = "k-ghost".to_owned();
        fixtures::region_mut(&mut history, US).transfers.push(extra);
        let found = Phantom.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("no request had it"), "{}", found[0].detail);
    }

    #[test]
    fn a_transfer_whose_requests_were_all_refused_is_flagged() {
        let mut history = fixtures::good_history();
        for op in &mut history.ops {
            if matches!(&op.request, Request::CreateTransfer { idempotency_key, .. } if idempotency_key == "k-x2") {
                op.outcome = Outcome::Failed { reason: "INVALID_ARGUMENT".to_owned() };
            }
        }
        let found = Phantom.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("refused") && found[0].detail.contains(T_ABORTED), "{}", found[0].detail);
    }

    #[test]
    fn a_payee_side_without_origin_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, CN, T_ABORTED).transfer_id = "t-orphan".to_owned();
        let found = Phantom.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("payee side of transfer t-orphan"), "{}", found[0].detail);
    }

    #[test]
    fn a_duplicate_record_and_a_stray_region_are_flagged() {
        let mut history = fixtures::good_history();
        let copy = fixtures::transfer_mut(&mut history, CN, T_COMMITTED).clone();
        let mut stray = copy.clone();
        stray.transfer_id = "t-stray".to_owned();
        stray.destination_region = "ap-southeast".to_owned();
        let region = fixtures::region_mut(&mut history, CN);
        region.transfers.push(copy);
        region.transfers.push(stray);
        let found = Phantom.check(&history);
        assert_eq!(found.len(), 2, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("more than once"), "{}", found[0].detail);
        assert!(found[1].detail.contains("neither"), "{}", found[1].detail);
    }
}
