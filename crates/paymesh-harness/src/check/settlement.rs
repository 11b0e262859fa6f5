//! Settlement windows add up: each balances per currency, the partners'
//! nets over a region's windows are what their transfers and refunds
//! moved, and both regions of every pair count the same cross-border
//! figures for every window.

use super::{Checker, Violation};
use crate::history::History;
use crate::settlement::{nets_against_transfers, unbalanced};

/// See the module documentation. Runs over the observation's
/// [`crate::history::SettlementObservation`], gathered once every transfer
/// was final and every region's window closed a last time; a run that
/// gathered none is a violation, not a pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settlement;

impl Checker for Settlement {
    fn name(&self) -> &'static str {
        "settlement"
    }

    fn describe(&self) -> &'static str {
        "every settlement window sums to zero per currency, the partners' nets over a region's windows equal what \
         their transfers and refunds moved, and both regions of every pair count the same cross-border figures for \
         every window"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let Some(observation) = &history.observation else { return Vec::new() };
        let Some(settlement) = &observation.settlement else {
            return vec![Violation::new(self.name(), "the run gathered no settlement windows".to_owned())];
        };
        let mut found = Vec::new();
        for (region, held) in &observation.regions {
            let Some(windows) = settlement.windows.get(region) else {
                found.push(Violation::new(self.name(), format!("{region}: no settlement window was read")));
                continue;
            };
            for window in windows {
                found.extend(unbalanced(region, window).into_iter().map(|line| Violation::new(self.name(), line)));
            }
            let off = nets_against_transfers(region, held, windows);
            found.extend(off.into_iter().map(|line| Violation::new(self.name(), line)));
        }
        for pair in settlement.pairs.iter().filter(|p| !p.agree) {
            found.push(Violation::new(self.name(), format!("cross-check {}", pair.line)));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;

    use super::*;
    use crate::check::fixtures::{self, amount, CN, PAYER, US};
    use crate::check::posted_by_transfers;
    use crate::history::{ObservedNet, ObservedPair, ObservedWindow, SettlementObservation};

    /// The fixture with one closed window per region: each partner's net
    /// is what its transfers moved, the clearing account balances it, and
    /// the pair agrees.
    fn settled_history() -> History {
        let mut history = fixtures::good_history();
        let observation = fixtures::observation_mut(&mut history);
        let mut windows = BTreeMap::new();
        for (region, held) in &observation.regions {
            let mut positions = Vec::new();
            let mut sums: BTreeMap<String, Decimal> = BTreeMap::new();
            for ((partner, currency), net) in posted_by_transfers(region, held) {
                *sums.entry(currency.clone()).or_default() += net;
                positions.push(ObservedNet {
                    account: format!("partner:{partner}:{currency}"),
                    net: amount(&net.to_string(), &currency),
                });
            }
            for (currency, sum) in sums {
                positions.push(ObservedNet {
                    account: format!("clearing:x:{currency}"),
                    net: amount(&(-sum).to_string(), &currency),
                });
            }
            windows.insert(region.clone(), vec![ObservedWindow { number: 1, closed: true, positions }]);
        }
        let pair =
            ObservedPair { from: US.into(), to: CN.into(), window: 1, agree: true, in_flight: 0, line: "ok".into() };
        observation.settlement = Some(SettlementObservation { windows, pairs: vec![pair] });
        history
    }

    fn settlement_mut(history: &mut History) -> &mut SettlementObservation {
        fixtures::observation_mut(history).settlement.as_mut().expect("gathered")
    }

    #[test]
    fn windows_that_add_up_pass() {
        assert_eq!(Settlement.check(&settled_history()), Vec::new());
    }

    #[test]
    fn a_run_that_gathered_no_windows_is_a_violation() {
        let found = Settlement.check(&fixtures::good_history());
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.contains("gathered no settlement windows"), "{}", found[0].detail);
    }

    #[test]
    fn a_net_off_by_a_cent_or_a_window_that_does_not_balance_is_flagged() {
        let mut history = settled_history();
        let window = &mut settlement_mut(&mut history).windows.get_mut(US).unwrap()[0];
        let payer = window.positions.iter_mut().find(|p| p.account == format!("partner:{PAYER}:USD")).unwrap();
        payer.net.amount += Decimal::new(1, 2);
        let found = Settlement.check(&history);
        let details = fixtures::details(&found);
        assert_eq!(found.len(), 2, "{details:?}");
        assert!(details.iter().any(|d| d.contains("USD nets sum to 0.01")), "{details:?}");
        assert!(details.iter().any(|d| d.contains("paypal-us's windows add up to")), "{details:?}");
    }

    #[test]
    fn a_pair_that_disagrees_is_flagged() {
        let mut history = settled_history();
        let pair = &mut settlement_mut(&mut history).pairs[0];
        pair.agree = false;
        pair.line = "us-west window 1 -> cn-east: DIFFER".into();
        let found = Settlement.check(&history);
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.contains("DIFFER"), "{}", found[0].detail);
    }
}
