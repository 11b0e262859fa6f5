//! Refunds: never more than the transfer moved, and the same outcome on
//! both sides of one that crosses regions.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::{Checker, Violation};
use crate::history::{History, ObservedRefund, TransferState};

/// For each transfer, what its committed refunds took from the payee is at
/// most what the transfer credited it, and what they gave the payer at most
/// what it paid (unless its corridor refunds at the current rate, which may
/// give back more or less: then both sides agreeing on the credit is what
/// holds); each refund that crosses regions is committed in the
/// payee's region exactly when it is committed in the payer's, an aborted
/// one is aborted or absent on the payer's side, and both sides agree on
/// the transfer and the amounts (on an aborted refund's, the credit aside:
/// the payer's region may have priced one the coordinator never heard).
#[derive(Clone, Copy, Debug, Default)]
pub struct Refunds;

impl Checker for Refunds {
    fn name(&self) -> &'static str {
        "refunds"
    }

    fn describe(&self) -> &'static str {
        "refunds never exceed their transfer, and a refund across regions commits on both sides or neither, with the \
         same amounts"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        use TransferState::{Aborted, Committed};
        let Some(observation) = &history.observation else { return Vec::new() };
        let mut found = Vec::new();
        // Each refund's sides: the payee's (it asked, its region
        // coordinates) and the payer's, by refund id.
        let mut asked: BTreeMap<&str, (&str, &ObservedRefund)> = BTreeMap::new();
        let mut credited: BTreeMap<&str, (&str, &ObservedRefund)> = BTreeMap::new();
        for (region, held) in &observation.regions {
            for refund in &held.refunds {
                let side = if refund.payer_view { &mut credited } else { &mut asked };
                side.insert(refund.refund_id.as_str(), (region.as_str(), refund));
            }
        }
        // What each transfer's committed refunds moved, from the payee's
        // side (which holds every refund of the transfer).
        let mut moved: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
        for (id, (region, refund)) in &asked {
            if refund.state == Committed {
                let total = moved.entry(refund.transfer_id.as_str()).or_default();
                total.0 += refund.debited.amount;
                total.1 += refund.credited.amount;
            }
            let other = credited.get(id);
            let same_region = other.is_some_and(|(r, _)| r == region);
            let broken = match (refund.state, other.map(|(_, o)| o.state)) {
                (Committed, Some(Committed)) | (Aborted, None | Some(Aborted)) => false,
                // Aborted before the payer's side was asked: nothing there.
                (Committed, None) => !same_region,
                (Committed | Aborted, _) | (_, Some(Committed)) => true,
                // Not final yet: the resolution of the run reports it.
                _ => false,
            };
            if broken {
                let theirs = other.map_or("absent".to_owned(), |(r, o)| format!("{:?} in {r}", o.state));
                found.push(Violation::new(
                    self.name(),
                    format!("refund {id} is {:?} in {region}, where it was asked for, but {theirs}", refund.state),
                ));
            }
            if let Some((r, other)) = other {
                // An aborted refund moved nothing; its credit on the
                // coordinator's side is the estimate it asked with when the
                // payer's region priced it at the current rate and the
                // answer never reached it (the deadline came first).
                let aborted = refund.state == Aborted && other.state == Aborted;
                let agree = other.transfer_id == refund.transfer_id
                    && other.debited == refund.debited
                    && (aborted || other.credited == refund.credited);
                if !agree {
                    found.push(Violation::new(
                        self.name(),
                        format!("refund {id}: {region} and {r} disagree on its transfer or amounts"),
                    ));
                }
            }
        }
        for (id, (region, _)) in &credited {
            if !asked.contains_key(id) && credited[id].1.state == Committed {
                found.push(Violation::new(
                    self.name(),
                    format!("refund {id} credited a payer in {region} but no payee region holds it"),
                ));
            }
        }
        for (region, held) in &observation.regions {
            for transfer in &held.transfers {
                let Some((debited, credited)) = moved.get(transfer.transfer_id.as_str()) else { continue };
                // The payee's side: its credit bounds what is taken back;
                // the payer's (origin) side: its debit bounds what is given.
                if transfer.destination_region == *region && *debited > transfer.credit.amount {
                    found.push(Violation::new(
                        self.name(),
                        format!(
                            "transfer {} credited {} but its refunds took back {debited}",
                            transfer.transfer_id, transfer.credit.amount
                        ),
                    ));
                }
                let corridor = format!(
                    "{}:{}->{}:{}",
                    transfer.debit.currency,
                    transfer.source_region,
                    transfer.credit.currency,
                    transfer.destination_region
                );
                let at_current_rate = held.current_rate_corridors.contains(&corridor);
                if transfer.is_origin_side_in(region) && !at_current_rate && *credited > transfer.debit.amount {
                    found.push(Violation::new(
                        self.name(),
                        format!(
                            "transfer {} debited {} but its refunds gave back {credited}",
                            transfer.transfer_id, transfer.debit.amount
                        ),
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
    use crate::check::fixtures::{self, dec, CN, MERCHANT, PAYER, T_COMMITTED, US};
    use crate::history::{Amount, ObservedRefund};

    fn refund(partner: &str, payer_view: bool, state: TransferState, debited: &str, credited: &str) -> ObservedRefund {
        ObservedRefund {
            refund_id: "cn-east:900".into(),
            transfer_id: T_COMMITTED.into(),
            partner: partner.into(),
            payer_view,
            state,
            debited: Amount { amount: dec(debited), currency: "CNY".into() },
            credited: Amount { amount: dec(credited), currency: "USD".into() },
        }
    }

    fn with_refund(payee: ObservedRefund, payer: Option<ObservedRefund>) -> History {
        let mut history = fixtures::good_history();
        let regions = &mut history.observation.as_mut().unwrap().regions;
        regions.get_mut(CN).unwrap().refunds.push(payee);
        if let Some(payer) = payer {
            regions.get_mut(US).unwrap().refunds.push(payer);
        }
        history
    }

    #[test]
    fn a_refund_committed_on_both_sides_within_its_transfer_passes() {
        let history = with_refund(
            refund(MERCHANT, false, TransferState::Committed, "7.00", "1.00"),
            Some(refund(PAYER, true, TransferState::Committed, "7.00", "1.00")),
        );
        assert_eq!(Refunds.check(&history), Vec::new());
    }

    #[test]
    fn a_refund_committed_on_one_side_only_is_flagged() {
        let history = with_refund(
            refund(MERCHANT, false, TransferState::Committed, "7.00", "1.00"),
            Some(refund(PAYER, true, TransferState::Aborted, "7.00", "1.00")),
        );
        let found = Refunds.check(&history);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("Committed in cn-east"), "{found:?}");
    }

    #[test]
    fn refunds_past_their_transfer_are_flagged() {
        let history = with_refund(
            refund(MERCHANT, false, TransferState::Committed, "100000.00", "100000.00"),
            Some(refund(PAYER, true, TransferState::Committed, "100000.00", "100000.00")),
        );
        let found = Refunds.check(&history);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn at_the_current_rate_only_the_payees_bound_holds() {
        // 20.30 USD debited for 140.00 CNY; a rate moved since gives back 21.00.
        let sides = || {
            with_refund(
                refund(MERCHANT, false, TransferState::Committed, "140.00", "21.00"),
                Some(refund(PAYER, true, TransferState::Committed, "140.00", "21.00")),
            )
        };
        let found = Refunds.check(&sides());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("gave back 21.00"), "{found:?}");
        let mut history = sides();
        let regions = &mut history.observation.as_mut().unwrap().regions;
        let corridor = format!("USD:{US}->CNY:{CN}");
        regions.get_mut(US).unwrap().current_rate_corridors.push(corridor);
        assert_eq!(Refunds.check(&history), Vec::new());
        // The payee's bound does not move.
        let over = refund(MERCHANT, false, TransferState::Committed, "140.01", "21.00");
        let mut history = with_refund(over, Some(refund(PAYER, true, TransferState::Committed, "140.01", "21.00")));
        let regions = &mut history.observation.as_mut().unwrap().regions;
        regions.get_mut(US).unwrap().current_rate_corridors.push(format!("USD:{US}->CNY:{CN}"));
        let found = Refunds.check(&history);
        assert!(found.iter().any(|v| v.detail.contains("took back 140.01")), "{found:?}");
    }

    #[test]
    fn an_aborted_refund_may_carry_the_coordinators_estimate_of_the_credit() {
        let history = with_refund(
            refund(MERCHANT, false, TransferState::Aborted, "7.00", "1.00"),
            Some(refund(PAYER, true, TransferState::Aborted, "7.00", "0.97")),
        );
        assert_eq!(Refunds.check(&history), Vec::new());
        let history = with_refund(
            refund(MERCHANT, false, TransferState::Aborted, "7.00", "1.00"),
            Some(refund(PAYER, true, TransferState::Aborted, "7.01", "1.00")),
        );
        assert_eq!(Refunds.check(&history).len(), 1, "what the payee gives back must still agree");
    }

    #[test]
    fn sides_that_disagree_on_amounts_are_flagged() {
        let history = with_refund(
            refund(MERCHANT, false, TransferState::Committed, "7.00", "1.00"),
            Some(refund(PAYER, true, TransferState::Committed, "7.00", "1.01")),
        );
        let found = Refunds.check(&history);
        assert!(found.iter().any(|v| v.detail.contains("disagree")), "{found:?}");
    }
}
