//! Conservation of money: every region's double-entry ledger sums to zero
//! per currency, posted and pending amounts each on their own.

use std::collections::BTreeSet;

use super::{Checker, Violation};
use crate::history::{History, TransferState};

/// Per region and currency, posted debits equal posted credits and pending
/// debits equal pending credits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Conservation;

impl Checker for Conservation {
    fn name(&self) -> &'static str {
        "conservation"
    }

    fn describe(&self) -> &'static str {
        "every region's ledger sums to zero per currency: debits equal credits, posted and pending separately"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let Some(observation) = &history.observation else { return Vec::new() };
        let mut found = Vec::new();
        for (region, held) in &observation.regions {
            for (currency, totals) in &held.ledger {
                if totals.debits_posted != totals.credits_posted {
                    found.push(Violation::new(
                        self.name(),
                        format!(
                            "{region} {currency}: posted debits {} but posted credits {} (off by {})",
                            totals.debits_posted,
                            totals.credits_posted,
                            totals.debits_posted - totals.credits_posted
                        ),
                    ));
                }
                if totals.debits_pending != totals.credits_pending {
                    found.push(Violation::new(
                        self.name(),
                        format!(
                            "{region} {currency}: pending debits {} but pending credits {} (off by {})",
                            totals.debits_pending,
                            totals.credits_pending,
                            totals.debits_pending - totals.credits_pending
                        ),
                    ));
                }
            }
            // A committed transfer posted entries here: the currency it posted
            // in must have totals, or a ledger went unobserved.
            let mut posted_in = BTreeSet::new();
            for transfer in held.transfers.iter().filter(|t| t.state == TransferState::Committed) {
                if transfer.is_origin_side_in(region) {
                    posted_in.insert(transfer.debit.currency.as_str());
                }
                if transfer.destination_region == *region {
                    posted_in.insert(transfer.credit.currency.as_str());
                }
            }
            for currency in posted_in.into_iter().filter(|c| !held.ledger.contains_key(*c)) {
                found.push(Violation::new(
                    self.name(),
                    format!("{region} {currency}: committed transfers posted in it but no ledger totals were observed"),
                ));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{self, dec, CN, US};

    #[test]
    fn a_balanced_ledger_passes() {
        assert_eq!(Conservation.check(&fixtures::good_history()), Vec::new());
    }

    #[test]
    fn posted_money_out_of_nowhere_is_flagged() {
        let mut history = fixtures::good_history();
        let totals = fixtures::region_mut(&mut history, CN).ledger.get_mut("CNY").expect("CNY");
        totals.credits_posted += dec("0.01");
        let found = Conservation.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("cn-east CNY: posted"), "{}", found[0].detail);
        assert!(found[0].detail.contains("-0.01"), "{}", found[0].detail);
    }

    #[test]
    fn unbalanced_pending_amounts_are_flagged_on_their_own() {
        let mut history = fixtures::good_history();
        let totals = fixtures::region_mut(&mut history, US).ledger.get_mut("USD").expect("USD");
        totals.debits_pending = dec("5");
        totals.credits_posted += dec("5");
        totals.debits_posted += dec("5");
        let found = Conservation.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("pending"), "{}", found[0].detail);
    }

    #[test]
    fn a_currency_posted_in_without_totals_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::region_mut(&mut history, CN).ledger.clear();
        let found = Conservation.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("cn-east CNY"), "{}", found[0].detail);
    }
}
