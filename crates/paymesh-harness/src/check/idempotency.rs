//! At most one effect per idempotency key: retries and deliberate duplicates
//! of a CreateTransfer make one transfer, the one every answer names, with
//! the amounts that were asked.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use super::{Checker, Violation};
use crate::history::{Amount, History, ObservedTransfer, Outcome, Request};

/// Per (payer, idempotency key): at most one origin-side transfer, every `Ok`
/// answer naming it, and its amounts and payee those of the request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Idempotency;

/// What the requests with one (payer, key) asked and were answered.
#[derive(Debug, Default)]
struct Asked<'a> {
    /// The transfer id of the first `Ok` answer naming one.
    answered_id: Option<&'a str>,
    /// The body of the first request answered `Ok`.
    acknowledged: Option<Body<'a>>,
    /// The first body of a request answered `Ok` that differs from
    /// `acknowledged`: it cannot match the same transfer too.
    acknowledged_other: Option<Body<'a>>,
    /// The bodies of the requests not answered (most keys have none, and an
    /// empty `Vec` does not allocate).
    unanswered: Vec<Body<'a>>,
}

/// The origin-side transfers of one (payer, key).
#[derive(Debug)]
struct Held<'a> {
    /// The first in the observation's order.
    first: &'a ObservedTransfer,
    /// Any others, with their regions: each a second effect.
    others: Vec<(&'a str, &'a ObservedTransfer)>,
}

/// What a CreateTransfer asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Body<'a> {
    payee_partner: &'a str,
    payee_region: &'a str,
    debit: &'a Amount,
    credit: &'a Amount,
}

impl Body<'_> {
    /// Whether `transfer` is what this request asked for.
    fn matches(&self, transfer: &ObservedTransfer) -> bool {
        transfer.debit == *self.debit
            && transfer.credit == *self.credit
            && transfer.payee_partner == self.payee_partner
            && transfer.destination_region == self.payee_region
    }

    /// How `transfer` differs from this request, if it does.
    fn mismatch(&self, transfer: &ObservedTransfer) -> Option<String> {
        if self.matches(transfer) {
            return None;
        }
        let mut differences = Vec::new();
        if transfer.debit != *self.debit {
            differences.push(format!(
                "debit {} {} (asked {} {})",
                transfer.debit.amount, transfer.debit.currency, self.debit.amount, self.debit.currency
            ));
        }
        if transfer.credit != *self.credit {
            differences.push(format!(
                "credit {} {} (asked {} {})",
                transfer.credit.amount, transfer.credit.currency, self.credit.amount, self.credit.currency
            ));
        }
        if transfer.payee_partner != self.payee_partner || transfer.destination_region != self.payee_region {
            differences.push(format!(
                "payee {} in {} (asked {} in {})",
                transfer.payee_partner, transfer.destination_region, self.payee_partner, self.payee_region
            ));
        }
        (!differences.is_empty()).then(|| differences.join(", "))
    }
}

impl Checker for Idempotency {
    fn name(&self) -> &'static str {
        "idempotency"
    }

    fn describe(&self) -> &'static str {
        "at most one effect per idempotency key: one transfer, named by every answer, with the amounts asked"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let Some(observation) = &history.observation else { return Vec::new() };
        let mut found = Vec::new();
        let mut asked: HashMap<(&str, &str), Asked<'_>> = HashMap::with_capacity(history.ops.len());
        for op in &history.ops {
            let Request::CreateTransfer {
                partner,
                idempotency_key,
                payee_partner,
                payee_region,
                debit,
                credit,
                transfer_id,
                ..
            } = &op.request
            else {
                continue;
            };
            let entry = asked.entry((partner.as_str(), idempotency_key.as_str())).or_default();
            let body = Body { payee_partner, payee_region, debit, credit };
            match &op.outcome {
                Outcome::Ok => {
                    match entry.acknowledged {
                        None => entry.acknowledged = Some(body),
                        Some(first) if first != body && entry.acknowledged_other.is_none() => {
                            entry.acknowledged_other = Some(body);
                        }
                        Some(_) => {}
                    }
                    if let Some(id) = transfer_id.as_deref() {
                        match entry.answered_id {
                            None => entry.answered_id = Some(id),
                            Some(first) if first != id => found.push(Violation::new(
                                self.name(),
                                format!(
                                    "key {idempotency_key} of {partner} was answered {first} and, at {} ms, {id}",
                                    op.completed_ms
                                ),
                            )),
                            Some(_) => {}
                        }
                    }
                }
                Outcome::Unknown { .. } => entry.unanswered.push(body),
                Outcome::Failed { .. } => {}
            }
        }

        // (payer, key) -> the origin-side transfers made for it.
        let mut held: HashMap<(&str, &str), Held<'_>> = HashMap::with_capacity(asked.len());
        for (region, transfer) in observation.transfers().filter(|(region, t)| t.is_origin_side_in(region)) {
            match held.entry((transfer.payer_partner.as_str(), transfer.idempotency_key.as_str())) {
                Entry::Vacant(vacant) => {
                    vacant.insert(Held { first: transfer, others: Vec::new() });
                }
                Entry::Occupied(mut occupied) => occupied.get_mut().others.push((region, transfer)),
            }
        }
        // In the observation's order, so that reports list the same
        // violations run after run.
        for (region, transfer) in observation.transfers().filter(|(region, t)| t.is_origin_side_in(region)) {
            let (payer, key) = (transfer.payer_partner.as_str(), transfer.idempotency_key.as_str());
            let id = transfer.transfer_id.as_str();
            if let Some(group) = held.get(&(payer, key)) {
                if std::ptr::eq(group.first, transfer) && !group.others.is_empty() {
                    let others: Vec<String> =
                        group.others.iter().map(|(r, t)| format!("{} in {r}", t.transfer_id)).collect();
                    found.push(Violation::new(
                        self.name(),
                        format!(
                            "key {key} of {payer} made {} transfers: {id} in {region}, {}",
                            group.others.len() + 1,
                            others.join(", ")
                        ),
                    ));
                }
            }
            let Some(requests) = asked.get(&(payer, key)) else { continue };
            if let Some(answered) = requests.answered_id.filter(|answered| *answered != id) {
                found.push(Violation::new(
                    self.name(),
                    format!("key {key} of {payer} was answered {answered} but {region} holds {id} for it"),
                ));
            }
            let mismatch = match (requests.acknowledged, requests.acknowledged_other) {
                (Some(first), other) => first.mismatch(transfer).or_else(|| other.and_then(|o| o.mismatch(transfer))),
                // Unanswered only: any one of them may be the request that took effect.
                (None, _) if requests.unanswered.iter().any(|body| body.matches(transfer)) => None,
                (None, _) => requests.unanswered.first().and_then(|body| body.mismatch(transfer)),
            };
            if let Some(mismatch) = mismatch {
                found.push(Violation::new(
                    self.name(),
                    format!("transfer {id} in {region} (key {key} of {payer}) differs from its request: {mismatch}"),
                ));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{self, dec, usd, T_ABORTED, T_COMMITTED, T_DOMESTIC, US};

    #[test]
    fn one_transfer_per_key_passes() {
        assert_eq!(Idempotency.check(&fixtures::good_history()), Vec::new());
    }

    #[test]
    fn two_transfers_for_one_key_are_flagged() {
        let mut history = fixtures::good_history();
        let mut twin = fixtures::transfer_mut(&mut history, US, T_COMMITTED).clone();
        twin.transfer_id = "t-twin".to_owned();
        fixtures::region_mut(&mut history, US).transfers.push(twin);
        let found = Idempotency.check(&history);
        let details = fixtures::details(&found);
        assert!(details.iter().any(|d| d.contains("made 2 transfers")), "{details:?}");
        assert!(details.iter().any(|d| d.contains("answered t-x1 but us-west holds t-twin")), "{details:?}");
    }

    #[test]
    fn two_answers_naming_different_transfers_are_flagged() {
        let mut history = fixtures::good_history();
        let mut retry = history.ops[0].clone();
        if let Request::CreateTransfer { transfer_id, .. } = &mut retry.request {
            *transfer_id = Some("t-other".to_owned());
        }
        retry.completed_ms = 5000;
        history.ops.push(retry);
        let found = Idempotency.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("answered t-dom and, at 5000 ms, t-other"), "{}", found[0].detail);
    }

    #[test]
    fn other_amounts_than_asked_are_flagged() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, US, T_DOMESTIC).debit.amount += dec("1");
        let found = Idempotency.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("debit 11.50 USD (asked 10.50 USD)"), "{}", found[0].detail);
    }

    #[test]
    fn an_unanswered_request_may_be_the_one_that_took_effect() {
        let mut history = fixtures::good_history();
        // A second, unanswered attempt of k-x2 with another body: the observed
        // transfer matches the first one, which is enough.
        let mut other = history.ops[3].clone();
        if let Request::CreateTransfer { debit, .. } = &mut other.request {
            *debit = usd("6.00");
        }
        history.ops.push(other);
        assert_eq!(Idempotency.check(&history), Vec::new());
        fixtures::transfer_mut(&mut history, US, T_ABORTED).debit = usd("7.00");
        let found = Idempotency.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("debit 7.00 USD"), "{}", found[0].detail);
    }
}
