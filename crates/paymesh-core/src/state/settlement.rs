//! The region's settlement book: the open window's figures, closing it,
//! and recording what was settled (see [`crate::settlement`]).

use super::*;

use crate::settlement::{Flow, Settled, SettlementWindow, Tallies, TallyKey, WindowPosition};

/// What the open window's figures are measured from, and its cross-border
/// tallies so far. Its size is the region's accounts and corridors, never
/// its transfers. Its maps are persistent (`imbl`), as every table of the
/// state is: the state is cloned for each reader (the partner API takes
/// the applied state for every request), and a clone of standard maps of
/// every account cost the leader about 4 % of its CPU at the region's peak.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementBook {
    /// The open window's number.
    window: u64,
    /// When it opened.
    opened_at: Timestamp,
    /// Each account's payment balance (net posted less `external`) when
    /// the window opened; an account not here had none.
    #[serde(with = "crate::serde_seq")]
    base: OrdMap<AccountId, i128>,
    /// Each account's posted balance when the window opened.
    #[serde(with = "crate::serde_seq")]
    opening: OrdMap<AccountId, i128>,
    /// Each account's running sum (credits minus debits) of posted
    /// movements that are not payments: top-ups, fund-outs and recorded
    /// settlements.
    #[serde(with = "crate::serde_seq")]
    external: OrdMap<AccountId, i128>,
    /// What this region committed as coordinator in the open window, per
    /// remote region.
    #[serde(with = "crate::serde_seq")]
    sent: OrdMap<RegionId, Tallies>,
    /// What this region posted in the open window for other regions'
    /// commits, by region and that region's window.
    #[serde(with = "crate::serde_seq")]
    received: OrdMap<(RegionId, u64), Tallies>,
}

impl Default for SettlementBook {
    fn default() -> Self {
        SettlementBook {
            window: 1,
            opened_at: Timestamp::EPOCH,
            base: OrdMap::new(),
            opening: OrdMap::new(),
            external: OrdMap::new(),
            sent: OrdMap::new(),
            received: OrdMap::new(),
        }
    }
}

impl SettlementBook {
    /// Window 1, opened at `now` over a ledger that moved before windows
    /// existed (a state converted from an older image): it measures from
    /// the balances as they are, since what of them was prefunding and what
    /// payments cannot be told apart any more.
    pub(super) fn since(ledger: &Ledger, now: Timestamp) -> SettlementBook {
        let base = persistent(&balances(ledger));
        SettlementBook { opened_at: now, opening: base.clone(), base, ..SettlementBook::default() }
    }
}

impl State {
    /// The open settlement window's number.
    pub fn settlement_window(&self) -> u64 {
        self.settlement.window
    }

    /// The open window's figures so far (no `closed_at`).
    pub fn open_window(&self) -> SettlementWindow {
        let book = &self.settlement;
        let positions = self
            .ledger
            .accounts()
            .filter(|(id, _)| id.owner != AccountOwner::Settlement)
            .filter_map(|(id, account)| {
                let net = self.payment_balance(id, account.net_posted()) - book.base.get(id).copied().unwrap_or(0);
                (net != 0).then(|| WindowPosition { account: id.clone(), net, settled: None })
            })
            .collect();
        SettlementWindow {
            number: book.window,
            opened_at: book.opened_at,
            closed_at: None,
            positions,
            opening: standard(&book.opening),
            closing: balances(&self.ledger),
            sent: standard(&book.sent),
            received: standard(&book.received),
        }
    }

    /// Commit decisions to `region` of this region's window `window` that
    /// it has not acknowledged yet.
    pub fn decisions_in_flight(&self, region: &RegionId, window: u64) -> u64 {
        let in_flight = self.outbox.iter().filter(|((to, _), message)| {
            to == region
                && matches!(message, OutboxMessage::Decision { decision: Decision::Commit, window: w, .. } if *w == window)
        });
        in_flight.count() as u64
    }

    /// An account's posted net less its non-payment movements.
    fn payment_balance(&self, id: &AccountId, net_posted: i128) -> i128 {
        net_posted - self.settlement.external.get(id).copied().unwrap_or(0)
    }

    /// A posted movement that is not a payment's: kept apart from the
    /// window's figures.
    pub(super) fn count_external(&mut self, account: &AccountId, credits_minus_debits: i128) {
        *self.settlement.external.entry(account.clone()).or_default() += credits_minus_debits;
    }

    /// This region committed a cross-border payment or refund as its
    /// coordinator: count it in the open window's `sent`, and name the
    /// window in its decision.
    pub(super) fn tally_sent(&mut self, to: &RegionId, key: TallyKey, source: Money, destination: Money) -> u64 {
        let tallies = self.settlement.sent.entry(to.clone()).or_default();
        tallies.entry(key).or_default().add(source.units(), destination.units());
        self.settlement.window
    }

    /// This region posted another region's commit, made in that region's
    /// window `window`.
    pub(super) fn tally_received(
        &mut self,
        from: &RegionId,
        window: u64,
        key: TallyKey,
        source: Money,
        destination: Money,
    ) {
        let tallies = self.settlement.received.entry((from.clone(), window)).or_default();
        tallies.entry(key).or_default().add(source.units(), destination.units());
    }

    /// Close the open window and open the next, in one command: its
    /// figures go to history and the next window measures from here.
    pub(super) fn close_window(&mut self, now: Timestamp) -> Outcome {
        let mut closed = self.open_window();
        closed.closed_at = Some(now);
        let number = closed.number;
        let book = &mut self.settlement;
        // The next window measures from each account's payment balance now:
        // this window's base moved by its net.
        for position in &closed.positions {
            *book.base.entry(position.account.clone()).or_default() += position.net;
        }
        let zero: Vec<AccountId> = book.base.iter().filter(|(_, b)| **b == 0).map(|(id, _)| id.clone()).collect();
        for id in &zero {
            book.base.remove(id);
        }
        book.opening = persistent(&closed.closing);
        book.sent.clear();
        book.received.clear();
        book.window = number + 1;
        book.opened_at = now;
        self.windows.insert(number, closed.clone());
        self.journal.push(Record::Window(Box::new(closed)));
        Outcome::WindowClosed { number }
    }

    /// Record `account`'s net of the closed window `number` as settled by
    /// the bank transfer `reference`: the account moves by the opposite of
    /// its net against the settlement account. Again with the same
    /// reference, nothing more moves; with another, it is refused.
    pub(super) fn record_settlement(
        &mut self,
        number: u64,
        account: &AccountId,
        reference: &TopUpRef,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<Outcome> {
        match &account.owner {
            AccountOwner::Partner(_) => {}
            AccountOwner::Clearing(region) if *region != self.region => {}
            _ => return Err(RejectCode::NotSettleable),
        }
        if number == 0 || number > self.settlement.window {
            return Err(RejectCode::WindowNotFound);
        }
        if number == self.settlement.window {
            return Err(RejectCode::WindowNotClosed);
        }
        let mut window = match self.windows.get(&number) {
            Some(window) => window.clone(),
            None => recall.window(number).ok_or(RejectCode::WindowNotFound)?,
        };
        let at = window.positions.iter().position(|p| p.account == *account).ok_or(RejectCode::NothingToSettle)?;
        let position = &window.positions[at];
        if let Some(settled) = &position.settled {
            return if settled.reference == *reference { Ok(Outcome::Done) } else { Err(RejectCode::AlreadySettled) };
        }
        let net = position.net;
        let amount = u64::try_from(net.unsigned_abs())
            .ok()
            .and_then(|units| Money::from_units(units, account.currency).ok())
            .ok_or(RejectCode::BalanceOverflow)?;
        let settlement = self.open_mesh_account(AccountOwner::Settlement, account.currency);
        let id = EntryId::Settled { window: number, account: account.clone() };
        let op = if net > 0 {
            // The account received over the window: the bank paid it out.
            Op::Post { id, debit: account.clone(), credit: settlement, amount }
        } else {
            // The account paid over the window: the bank brought it in.
            Op::Post { id, debit: settlement, credit: account.clone(), amount }
        };
        self.ledger.apply(&[op], now).map_err(|refused| ledger_code(refused.reason))?;
        self.count_external(account, -net);
        window.positions[at].settled = Some(Settled { reference: reference.clone(), at: now });
        self.windows.insert(number, window.clone());
        self.journal.push(Record::Window(Box::new(window)));
        Ok(Outcome::Done)
    }
}

/// Every account's posted balance but the settlement account's (the
/// outside world), leaving out those at zero.
fn balances(ledger: &Ledger) -> BTreeMap<AccountId, i128> {
    ledger
        .accounts()
        .filter(|(id, account)| id.owner != AccountOwner::Settlement && account.net_posted() != 0)
        .map(|(id, account)| (id.clone(), account.net_posted()))
        .collect()
}

/// A standard map as the book keeps it.
fn persistent<K: Ord + Clone, V: Clone>(map: &BTreeMap<K, V>) -> OrdMap<K, V> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The book's map as a window's figures show it.
fn standard<K: Ord + Clone, V: Clone>(map: &OrdMap<K, V>) -> BTreeMap<K, V> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The key a payment's tally is counted under.
pub(super) fn payment_key(source: Money, destination: Money) -> TallyKey {
    TallyKey { flow: Flow::Payment, source: source.currency(), destination: destination.currency() }
}

/// The key a refund's tally is counted under: the payment's currencies,
/// payer's first.
pub(super) fn refund_key(credited: Money, debited: Money) -> TallyKey {
    TallyKey { flow: Flow::Refund, source: credited.currency(), destination: debited.currency() }
}
