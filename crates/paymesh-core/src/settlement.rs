//! Settlement windows: what a region's accounts moved between two closes,
//! and the cross-border figures its neighbours must mirror.
//!
//! A region's payments, refunds and reversals fall into its **open
//! window**. An operator closes it with one command; the next window opens
//! in the same command, so payments never pause. The closed window holds:
//!
//! * **net positions**: per account (each partner's position, the clearing
//!   account against each region, fee revenue), posted credits minus posted
//!   debits over the window, from payments, refunds and reversals only (not
//!   top-ups, fund-outs or recorded settlements, which are settlement
//!   themselves). They are the difference of the ledger's running sums at the
//!   two closes, so closing costs one pass over the accounts, never over the
//!   window's transfers;
//! * **sent**: per remote region, what this region committed as the
//!   coordinator of a cross-border payment or refund during the window, as
//!   [`Tally`]s;
//! * **received**: per remote region and *that region's* window, what this
//!   region posted for the other region's commits (each decision carries the
//!   window its coordinator committed it in).
//!
//! A region pair's cross-check: region A's `sent` towards B for A's window
//! `w` must equal the sum of B's `received` from A for `w`, over B's windows,
//! once every decision of `w` reached B. Both are counted by code that does
//! not share a path (A at its commit, B at its decision), so a lost, doubled
//! or altered decision shows as a difference.
//!
//! An operator records each position settled with the bank's reference:
//! the account moves by the opposite of its net against the region's
//! settlement account, which brings a partner's position back to what its
//! prefunding left (and its net debit cap's headroom with it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::currency::Currency;
use crate::id::{RegionId, TopUpRef};
use crate::ledger::AccountId;
use crate::time::Timestamp;

/// What a cross-border tally counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Flow {
    /// Payments, coordinated by the payer's region.
    Payment,
    /// Refunds, coordinated by the payee's region.
    Refund,
}

impl Flow {
    /// The name used in the APIs and files.
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Payment => "payment",
            Flow::Refund => "refund",
        }
    }
}

/// What a tally is of: a flow and the payment's two currencies, in its
/// direction (the payer's currency first, for refunds too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TallyKey {
    /// Payments or refunds.
    pub flow: Flow,
    /// The payer's currency.
    pub source: Currency,
    /// The payee's currency.
    pub destination: Currency,
}

/// Committed cross-border work: how many, and the sums on either side, in
/// minor units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// How many committed.
    pub count: u64,
    /// Their sum in the payer's currency: principal for payments, what was
    /// credited back for refunds.
    pub source: u128,
    /// Their sum in the payee's currency: what was paid out for payments,
    /// what was taken back for refunds.
    pub destination: u128,
}

impl Tally {
    /// Count one more.
    pub fn add(&mut self, source: u64, destination: u64) {
        self.count += 1;
        self.source += u128::from(source);
        self.destination += u128::from(destination);
    }

    /// Add another tally.
    pub fn merge(&mut self, other: &Tally) {
        self.count += other.count;
        self.source += other.source;
        self.destination += other.destination;
    }
}

/// Tallies by what they count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tallies(#[serde(with = "crate::serde_seq")] pub BTreeMap<TallyKey, Tally>);

impl std::ops::Deref for Tallies {
    type Target = BTreeMap<TallyKey, Tally>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Tallies {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A settlement an operator recorded for one account of a closed window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// The bank's reference for the money that moved (the audit trail
    /// names who recorded it).
    pub reference: TopUpRef,
    /// When.
    pub at: Timestamp,
}

/// One account's net over a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowPosition {
    /// The account.
    pub account: AccountId,
    /// Posted credits minus posted debits from payments, refunds and
    /// reversals over the window, in minor units of the account's
    /// currency: positive when the account received.
    pub net: i128,
    /// Recorded settled, once it is.
    pub settled: Option<Settled>,
}

/// A settlement window: open (no `closed_at`) or closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementWindow {
    /// 1, 2, 3, … per region.
    pub number: u64,
    /// When it opened: when the one before closed (the region's first
    /// time for window 1).
    pub opened_at: Timestamp,
    /// When it closed.
    pub closed_at: Option<Timestamp>,
    /// Each account's net, in account order; accounts that did not move
    /// are left out.
    pub positions: Vec<WindowPosition>,
    /// Each account's posted balance (credits minus debits, every movement
    /// counted) when the window opened, in minor units; an account not here
    /// had none.
    #[serde(with = "crate::serde_seq")]
    pub opening: BTreeMap<AccountId, i128>,
    /// The same when it closed (for the open window: now).
    #[serde(with = "crate::serde_seq")]
    pub closing: BTreeMap<AccountId, i128>,
    /// Per remote region, what this region committed as coordinator.
    #[serde(with = "crate::serde_seq")]
    pub sent: BTreeMap<RegionId, Tallies>,
    /// Per remote region and its window, what this region posted for that
    /// region's commits.
    #[serde(with = "crate::serde_seq")]
    pub received: BTreeMap<(RegionId, u64), Tallies>,
}

impl SettlementWindow {
    /// Whether it is closed.
    pub fn is_closed(&self) -> bool {
        self.closed_at.is_some()
    }

    /// The first currency whose nets do not sum to zero, with their sum;
    /// `None` when the window balances (what one account received, others
    /// gave), as every window must.
    pub fn imbalance(&self) -> Option<(Currency, i128)> {
        let mut sums: BTreeMap<Currency, i128> = BTreeMap::new();
        for position in &self.positions {
            *sums.entry(position.account.currency).or_default() += position.net;
        }
        sums.into_iter().find(|(_, sum)| *sum != 0)
    }

    /// The position of `account`, if it moved in the window.
    pub fn position(&self, account: &AccountId) -> Option<&WindowPosition> {
        self.positions.iter().find(|position| position.account == *account)
    }
}

/// A signed count of minor units as a decimal string in `currency`
/// (`-12.50`), for any count a window can hold.
pub fn units_to_wire(units: i128, currency: Currency) -> String {
    let scale = currency.minor_units();
    let magnitude = units.unsigned_abs();
    let sign = if units < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{magnitude}");
    }
    let unit = 10u128.pow(scale);
    format!("{sign}{}.{:0width$}", magnitude / unit, magnitude % unit, width = scale as usize)
}

/// Where a cross-check of two regions' figures stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrossCheck {
    /// Both sides hold the same figures.
    Agree,
    /// Decisions of the window are still on their way: the figures cannot
    /// agree yet.
    InFlight {
        /// How many.
        decisions: u64,
    },
    /// Every decision arrived and the figures differ: money was lost,
    /// doubled or altered on the way.
    Differ {
        /// Per key, the coordinator's figure and the other region's.
        differences: Vec<(TallyKey, Tally, Tally)>,
    },
}

/// Compare a coordinator's `sent` tallies for a window with what the other
/// region `received` for it, given the decisions of that window the
/// coordinator has not had acknowledged.
pub fn cross_check(sent: &Tallies, received: &Tallies, decisions_in_flight: u64) -> CrossCheck {
    let keys: std::collections::BTreeSet<&TallyKey> = sent.keys().chain(received.keys()).collect();
    let differences: Vec<(TallyKey, Tally, Tally)> = keys
        .into_iter()
        .filter_map(|key| {
            let (a, b) = (sent.get(key).copied().unwrap_or_default(), received.get(key).copied().unwrap_or_default());
            (a != b).then_some((*key, a, b))
        })
        .collect();
    match (differences.is_empty(), decisions_in_flight) {
        (true, _) => CrossCheck::Agree,
        (false, 0) => CrossCheck::Differ { differences },
        (false, decisions) => CrossCheck::InFlight { decisions },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(flow: Flow) -> TallyKey {
        TallyKey { flow, source: "USD".parse().unwrap(), destination: "CNY".parse().unwrap() }
    }

    #[test]
    fn units_print_as_decimals_of_their_currency() {
        let usd: Currency = "USD".parse().unwrap();
        let jpy: Currency = "JPY".parse().unwrap();
        assert_eq!(units_to_wire(-1_250, usd), "-12.50");
        assert_eq!(units_to_wire(5, usd), "0.05");
        assert_eq!(units_to_wire(0, usd), "0.00");
        assert_eq!(units_to_wire(-7, jpy), "-7");
        assert_eq!(units_to_wire(i128::MIN + 1, usd).len(), 41);
    }

    #[test]
    fn a_cross_check_agrees_waits_or_differs() {
        let mut sent = Tallies::default();
        sent.entry(key(Flow::Payment)).or_default().add(1_000, 7_100);
        let mut received = sent.clone();
        assert_eq!(cross_check(&sent, &received, 0), CrossCheck::Agree);
        received.entry(key(Flow::Payment)).or_default().add(1, 7);
        assert_eq!(cross_check(&sent, &received, 2), CrossCheck::InFlight { decisions: 2 });
        let CrossCheck::Differ { differences } = cross_check(&sent, &received, 0) else { panic!("they differ") };
        assert_eq!(differences.len(), 1);
        assert_eq!(differences[0].1.count, 1);
        assert_eq!(differences[0].2.count, 2);
        // A flow only one side has differs too.
        let mut refunds = sent.clone();
        refunds.entry(key(Flow::Refund)).or_default().add(5, 35);
        assert!(matches!(cross_check(&refunds, &sent, 0), CrossCheck::Differ { .. }));
    }
}
