//! Positions equal the sum of their posted entries: what the mesh reports as
//! a partner's balance is what its top-ups and transfers add up to.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;

use super::{Checker, Violation};
use crate::history::{History, Position, RegionObservation, TransferState};

/// For each region, partner and currency: the posted balance is the top-ups
/// minus the debits of committed transfers paid plus the credits of committed
/// transfers received, plus what committed refunds credited back to it as a
/// payer, minus what they debited from it as a payee; the pending debits and credits are those of the
/// transfers not final (debits reserved at the origin in `Reserved` or
/// `Prepared`, credits held by a payee side in `Prepared`); and the posted
/// balance is not below minus the net debit cap.
#[derive(Clone, Copy, Debug, Default)]
pub struct Positions;

/// A position as the region's transfers and top-ups add it up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Expected {
    posted_balance: Decimal,
    pending_debits: Decimal,
    pending_credits: Decimal,
}

impl Checker for Positions {
    fn name(&self) -> &'static str {
        "positions"
    }

    fn describe(&self) -> &'static str {
        "positions equal the sum of posted entries (top-ups, committed debits and credits, committed refunds), \
         pending amounts those of transfers and refunds not final, and no posted balance is below minus its net debit \
         cap"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let Some(observation) = &history.observation else { return Vec::new() };
        let mut found = Vec::new();
        for (region, held) in &observation.regions {
            let mut expected = expected_positions(region, held);
            for (partner, by_currency) in &held.top_ups {
                for (currency, amount) in by_currency {
                    expected.entry((partner.as_str(), currency.as_str())).or_default().posted_balance += *amount;
                }
            }

            let observed: BTreeMap<(&str, &str), &Position> = held
                .positions
                .iter()
                .flat_map(|(partner, by_currency)| {
                    by_currency.iter().map(move |(currency, p)| ((partner.as_str(), currency.as_str()), p))
                })
                .collect();
            let keys: BTreeSet<(&str, &str)> = expected.keys().chain(observed.keys()).copied().collect();
            for key @ (partner, currency) in keys {
                let want = expected.get(&key).copied().unwrap_or_default();
                let Some(position) = observed.get(&key) else {
                    if want != Expected::default() {
                        found.push(Violation::new(
                            self.name(),
                            format!(
                                "{region}: no {currency} position of {partner} was observed, though its top-ups and \
                                 transfers add up to posted {}, pending debits {}, pending credits {}",
                                want.posted_balance, want.pending_debits, want.pending_credits
                            ),
                        ));
                    }
                    continue;
                };
                let at = format!("{region}: {partner}'s {currency} position");
                if position.currency != currency {
                    found.push(Violation::new(self.name(), format!("{at} is in {}", position.currency)));
                }
                let pairs = [
                    ("posted balance", position.posted_balance, want.posted_balance),
                    ("pending debits", position.pending_debits, want.pending_debits),
                    ("pending credits", position.pending_credits, want.pending_credits),
                ];
                for (what, has, sum) in pairs {
                    if has != sum {
                        found.push(Violation::new(
                            self.name(),
                            format!("{at} has {what} {has} but its entries add up to {sum} (off by {})", has - sum),
                        ));
                    }
                }
                if position.posted_balance < -position.net_debit_cap {
                    found.push(Violation::new(
                        self.name(),
                        format!(
                            "{at} has posted balance {} below minus its net debit cap {}",
                            position.posted_balance, position.net_debit_cap
                        ),
                    ));
                }
            }
        }
        found
    }
}

/// Each partner's position in `region` as the transfers and refunds the
/// region holds add it up, top-ups aside.
fn expected_positions<'a>(region: &str, held: &'a RegionObservation) -> BTreeMap<(&'a str, &'a str), Expected> {
    use TransferState::{Committed, Prepared, Reserved};
    let mut expected: BTreeMap<(&str, &str), Expected> = BTreeMap::new();
    for transfer in &held.transfers {
        if transfer.is_origin_side_in(region) {
            let debit = &transfer.debit;
            let payer = expected.entry((transfer.payer_partner.as_str(), debit.currency.as_str())).or_default();
            match transfer.state {
                Committed => payer.posted_balance -= debit.amount,
                Reserved | Prepared => payer.pending_debits += debit.amount,
                _ => {}
            }
        }
        if transfer.destination_region == *region {
            let credit = &transfer.credit;
            let payee = expected.entry((transfer.payee_partner.as_str(), credit.currency.as_str())).or_default();
            match transfer.state {
                Committed => payee.posted_balance += credit.amount,
                Prepared => payee.pending_credits += credit.amount,
                _ => {}
            }
        }
    }
    // Refunds move money back: the payee that asked gives back what
    // it is debited (reserved until its refund is final), the payer
    // is credited (held pending while its side is prepared).
    for refund in &held.refunds {
        if refund.payer_view {
            let credited = &refund.credited;
            let payer = expected.entry((refund.partner.as_str(), credited.currency.as_str())).or_default();
            match refund.state {
                Committed => payer.posted_balance += credited.amount,
                Prepared => payer.pending_credits += credited.amount,
                _ => {}
            }
        } else {
            let debited = &refund.debited;
            let payee = expected.entry((refund.partner.as_str(), debited.currency.as_str())).or_default();
            match refund.state {
                Committed => payee.posted_balance -= debited.amount,
                Reserved | Prepared => payee.pending_debits += debited.amount,
                _ => {}
            }
        }
    }
    expected
}

/// What committed transfers and refunds moved each partner's posted
/// balance in `region` by (top-ups aside), by partner and currency: what
/// the region's settlement windows since it began must add up to.
pub fn posted_by_transfers(region: &str, held: &RegionObservation) -> BTreeMap<(String, String), Decimal> {
    expected_positions(region, held)
        .into_iter()
        .filter(|(_, e)| !e.posted_balance.is_zero())
        .map(|((partner, currency), e)| ((partner.to_owned(), currency.to_owned()), e.posted_balance))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{self, dec, CN, MERCHANT, PAYER, SHOP, T_COMMITTED, T_DOMESTIC, US};

    #[test]
    fn positions_that_add_up_pass() {
        assert_eq!(Positions.check(&fixtures::good_history()), Vec::new());
    }

    #[test]
    fn a_posted_balance_off_by_a_cent_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::position_mut(&mut history, US, PAYER, "USD").posted_balance = dec("969.21");
        let found = Positions.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("969.21 but its entries add up to 969.20"), "{}", found[0].detail);
    }

    #[test]
    fn a_credit_counted_twice_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::position_mut(&mut history, CN, MERCHANT, "CNY").posted_balance = dec("280.00");
        let found = Positions.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("wechat-cn's CNY position"), "{}", found[0].detail);
    }

    #[test]
    fn pending_amounts_follow_the_transfers_not_final() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, US, T_COMMITTED).state = TransferState::Prepared;
        fixtures::transfer_mut(&mut history, CN, T_COMMITTED).state = TransferState::Prepared;
        let found = Positions.check(&history);
        assert_eq!(found.len(), 4, "{:?}", fixtures::details(&found));
        let payer = fixtures::position_mut(&mut history, US, PAYER, "USD");
        payer.posted_balance = dec("989.50");
        payer.pending_debits = dec("20.30");
        let merchant = fixtures::position_mut(&mut history, CN, MERCHANT, "CNY");
        merchant.posted_balance = Decimal::ZERO;
        merchant.pending_credits = dec("140.00");
        assert_eq!(Positions.check(&history), Vec::new());
    }

    #[test]
    fn a_missing_position_and_a_breached_cap_are_flagged() {
        let mut history = fixtures::good_history();
        fixtures::region_mut(&mut history, US).positions.remove(SHOP);
        let found = Positions.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("no USD position of shop-us"), "{}", found[0].detail);

        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, US, T_DOMESTIC).debit.amount = dec("1110.50");
        fixtures::position_mut(&mut history, US, PAYER, "USD").posted_balance = dec("-130.80");
        let found = Positions.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("below minus its net debit cap 100"), "{}", found[0].detail);
    }
}
