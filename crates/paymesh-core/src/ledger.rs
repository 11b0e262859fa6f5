//! A double-entry ledger with two-phase entries, in the manner of TigerBeetle.
//!
//! Each account holds one currency and four running sums, in minor units:
//! pending and posted debits, pending and posted credits. Every entry moves one
//! amount from a debit account to a credit account of the same currency, either
//! at once ([`Op::Post`]) or in two phases: [`Op::Reserve`] makes it pending, then
//! [`Op::PostPending`] or [`Op::VoidPending`] resolves it.
//!
//! A list of operations is applied as one linked chain: all succeed or none
//! does. Business rejections (insufficient position, closed account, currency
//! mismatch, already posted, …) are [`LedgerReject`] codes, never panics.
//!
//! **Architecture Invariant:** after every applied chain, for every currency, the
//! sum of posted debits equals the sum of posted credits and the sum of pending
//! debits equals the sum of pending credits, so the ledger sums to zero. This is
//! asserted after every chain from the before/after state of the accounts the
//! chain touched (independently of the code that moved the money), and
//! [`Ledger::verify`] re-derives it from every account, as loading from disk does.

use std::collections::BTreeMap;
use std::fmt;

use imbl::{OrdMap, OrdSet};

use serde::{Deserialize, Serialize};

use crate::currency::Currency;
use crate::history::{Balances, Movement, MovementKind};
use crate::id::{PartnerId, RegionId, TopUpRef, TransferId};
use crate::money::{Money, MoneyError, SignedMoney};
use crate::time::Timestamp;

/// Who an account belongs to. Together with a currency it names the account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AccountOwner {
    /// A partner's prefunded position.
    Partner(PartnerId),
    /// The mesh's clearing account against a region: in the payer region it is
    /// credited with what the payee region will pay out; in the payee region it
    /// is debited for it. A region clears against itself for same-region FX.
    Clearing(RegionId),
    /// Fee revenue.
    Fees,
    /// The outside world: prefunding arrives from here (bank settlement).
    Settlement,
}

/// An account: an owner and the single currency it holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountId {
    /// Who the account belongs to.
    pub owner: AccountOwner,
    /// The one currency the account holds.
    pub currency: Currency,
}

impl AccountId {
    /// The account of `owner` in `currency`.
    pub fn new(owner: AccountOwner, currency: Currency) -> Self {
        AccountId { owner, currency }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.owner {
            AccountOwner::Partner(p) => write!(f, "partner:{p}:{}", self.currency),
            AccountOwner::Clearing(r) => write!(f, "clearing:{r}:{}", self.currency),
            AccountOwner::Fees => write!(f, "fees:{}", self.currency),
            AccountOwner::Settlement => write!(f, "settlement:{}", self.currency),
        }
    }
}

/// What an account's balances may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountPolicy {
    /// No balance constraint (clearing, fees, settlement accounts).
    Unrestricted,
    /// Posted plus pending debits may not exceed posted credits plus the net
    /// debit cap: a partner position that may go at most `net_debit_cap` into debt.
    DebitsMustNotExceedCredits {
        /// How far debits may exceed credits, in the account's currency.
        net_debit_cap: Money,
    },
    /// Posted plus pending credits may not exceed posted debits.
    CreditsMustNotExceedDebits,
}

/// One account's state. Sums are in minor units of the account's currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    policy: AccountPolicy,
    closed: bool,
    debits_pending: u128,
    debits_posted: u128,
    credits_pending: u128,
    credits_posted: u128,
}

impl Account {
    fn open(policy: AccountPolicy) -> Self {
        Account { policy, closed: false, debits_pending: 0, debits_posted: 0, credits_pending: 0, credits_posted: 0 }
    }

    /// The account's policy.
    pub fn policy(&self) -> AccountPolicy {
        self.policy
    }

    /// Whether the account refuses new entries.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sum of pending debits, in minor units.
    pub fn debits_pending(&self) -> u128 {
        self.debits_pending
    }

    /// Sum of posted debits, in minor units.
    pub fn debits_posted(&self) -> u128 {
        self.debits_posted
    }

    /// Sum of pending credits, in minor units.
    pub fn credits_pending(&self) -> u128 {
        self.credits_pending
    }

    /// Sum of posted credits, in minor units.
    pub fn credits_posted(&self) -> u128 {
        self.credits_posted
    }

    /// The four running sums.
    pub fn balances(&self) -> Balances {
        Balances {
            debits_pending: self.debits_pending,
            debits_posted: self.debits_posted,
            credits_pending: self.credits_pending,
            credits_posted: self.credits_posted,
        }
    }

    /// Posted credits minus posted debits, in minor units.
    pub fn net_posted(&self) -> i128 {
        // Both sums are bounded by BALANCE_UNITS_MAX < 2^127.
        self.credits_posted as i128 - self.debits_posted as i128
    }

    /// Whether the balances satisfy the policy. Holds after every applied chain.
    pub fn satisfies_policy(&self) -> bool {
        match self.policy {
            AccountPolicy::Unrestricted => true,
            AccountPolicy::DebitsMustNotExceedCredits { net_debit_cap } => {
                self.debits_posted + self.debits_pending <= self.credits_posted + u128::from(net_debit_cap.units())
            }
            AccountPolicy::CreditsMustNotExceedDebits => {
                self.credits_posted + self.credits_pending <= self.debits_posted
            }
        }
    }
}

/// The role of a ledger entry within a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Leg {
    /// The payer's principal into clearing (payer region).
    Principal,
    /// The payer's fee into fee revenue (payer region).
    Fee,
    /// From clearing to the payee (payee region, or the same region).
    Payout,
    /// A refund: from the payee back into clearing (where the refund is
    /// coordinated: the payee's region).
    Refund,
    /// A refund: from clearing back to the payer (the payer's region).
    RefundPayout,
}

/// Names a ledger entry, so an operation can be refused when repeated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntryId {
    /// One leg of a transfer.
    Transfer {
        /// The transfer.
        transfer: TransferId,
        /// Which leg.
        leg: Leg,
    },
    /// A prefunding top-up, named by the operator's reference.
    TopUp(TopUpRef),
    /// A fund-out, by its reference.
    FundOut(TopUpRef),
    /// A closed settlement window's net of one account, recorded settled.
    Settled {
        /// The window.
        window: u64,
        /// The account.
        account: AccountId,
    },
}

/// Where an entry stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryStatus {
    /// Reserved: counted in pending sums, not yet posted or voided.
    Pending,
    /// Posted (either at once or from pending).
    Posted,
    /// Voided from pending; the amount went back.
    Voided,
}

/// A ledger entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The account debited.
    pub debit: AccountId,
    /// The account credited.
    pub credit: AccountId,
    /// The amount moved, in the accounts' currency.
    pub amount: Money,
    /// Pending, posted or voided.
    pub status: EntryStatus,
    /// Whether the entry was created pending (two-phase).
    pub two_phase: bool,
    /// When the entry was created.
    pub created_at: Timestamp,
    /// When it was posted or voided, if it has been.
    pub resolved_at: Option<Timestamp>,
}

/// One ledger operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Move `amount` from `debit` to `credit`, posted at once.
    Post {
        /// Names the entry.
        id: EntryId,
        /// The account debited.
        debit: AccountId,
        /// The account credited.
        credit: AccountId,
        /// The amount.
        amount: Money,
    },
    /// Reserve `amount` from `debit` to `credit` as pending.
    Reserve {
        /// Names the entry.
        id: EntryId,
        /// The account debited.
        debit: AccountId,
        /// The account credited.
        credit: AccountId,
        /// The amount.
        amount: Money,
    },
    /// Post a pending entry in full.
    PostPending {
        /// The pending entry.
        id: EntryId,
    },
    /// Void a pending entry; its amount is released.
    VoidPending {
        /// The pending entry.
        id: EntryId,
    },
}

/// Why the ledger refused an operation. A business outcome, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LedgerReject {
    /// No account with that id.
    AccountNotFound,
    /// An account with that id is already open.
    AccountExists,
    /// The account is closed to new entries.
    AccountClosed,
    /// Debit and credit accounts are the same.
    AccountsMustBeDifferent,
    /// The amount's currency differs from an account's.
    CurrencyMismatch,
    /// A zero amount; entries move something.
    ZeroAmount,
    /// The debit would take the account past its credits plus its net debit cap.
    ExceedsCredits,
    /// The credit would take the account past its debits.
    ExceedsDebits,
    /// An entry with that id already exists.
    EntryExists,
    /// No entry with that id.
    PendingNotFound,
    /// The entry was created posted, not pending.
    NotPending,
    /// The pending entry was already posted.
    AlreadyPosted,
    /// The pending entry was already voided.
    AlreadyVoided,
    /// A balance would leave its bound.
    BalanceOverflow,
    /// The account's current balances would break the new policy.
    PolicyViolatedByBalances,
}

impl LedgerReject {
    /// Every reject code, for exhaustive tests.
    pub const ALL: &'static [LedgerReject] = &[
        LedgerReject::AccountNotFound,
        LedgerReject::AccountExists,
        LedgerReject::AccountClosed,
        LedgerReject::AccountsMustBeDifferent,
        LedgerReject::CurrencyMismatch,
        LedgerReject::ZeroAmount,
        LedgerReject::ExceedsCredits,
        LedgerReject::ExceedsDebits,
        LedgerReject::EntryExists,
        LedgerReject::PendingNotFound,
        LedgerReject::NotPending,
        LedgerReject::AlreadyPosted,
        LedgerReject::AlreadyVoided,
        LedgerReject::BalanceOverflow,
        LedgerReject::PolicyViolatedByBalances,
    ];
}

/// A chain failed: the index of the operation refused and why. Nothing in the
/// chain was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReject {
    /// Index in the chain of the refused operation.
    pub index: usize,
    /// The reason.
    pub reason: LedgerReject,
}

/// Per-currency sums over all accounts, kept up to date from account deltas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Sum of pending debits.
    pub debits_pending: u128,
    /// Sum of posted debits.
    pub debits_posted: u128,
    /// Sum of pending credits.
    pub credits_pending: u128,
    /// Sum of posted credits.
    pub credits_posted: u128,
}

impl Totals {
    /// Whether debits equal credits, pending and posted: the ledger sums to zero.
    pub fn balanced(&self) -> bool {
        self.debits_pending == self.credits_pending && self.debits_posted == self.credits_posted
    }
}

/// A region's ledger: accounts, entries and per-currency totals.
///
/// Accounts and entries live in persistent maps (`imbl`), so a clone is
/// cheap and shares structure: a snapshot can take a consistent copy of a
/// large ledger while the original keeps changing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ledger {
    #[serde(with = "crate::serde_seq")]
    accounts: OrdMap<AccountId, Account>,
    /// The pending entries (two-phase, not yet posted or voided): the only
    /// entries consulted again, so the only ones kept between batches.
    #[serde(with = "crate::serde_seq")]
    entries: OrdMap<EntryId, Entry>,
    /// Resolved entries by resolution time, where resolved entries were kept
    /// before `recent`: images of the formats before history kept them for a
    /// day (their conversion forgets them). Empty otherwise: an image of
    /// this format is written between batches, after they are forgotten.
    /// Kept so that a snapshot image keeps its format.
    resolved: OrdSet<(Timestamp, EntryId)>,
    #[serde(with = "crate::serde_seq")]
    totals: BTreeMap<Currency, Totals>,
    /// Entries posted or voided since [`Ledger::forget_resolved`] last ran
    /// (in operation: in this batch), still answered by [`Ledger::entry`]
    /// and still refusing their id to a new entry. A posted-at-once entry
    /// goes only here: inserting it into the persistent maps and taking it
    /// out again at the batch's end cost about 2.5 % of a replica's apply
    /// more than this does. A vector in id order, searched by halves: a
    /// batch's entries come nearly in id order (its transfers' sequence
    /// numbers rise), so each is pushed at or near the end, where an
    /// ordered map took a node walk and an allocation every few entries
    /// (about a seventh of a replica's apply). Ordered, not hashed: a hash
    /// map's order would differ per process.
    /// Not encoded: a ledger is encoded (an image, the state's digest)
    /// between batches, when this is empty.
    #[serde(skip)]
    recent: Vec<(EntryId, Entry)>,
    /// Movements applied since [`Ledger::take_movements`] last took them:
    /// the history of the ledger on its way out of memory.
    #[serde(skip)]
    moves: Vec<Movement>,
}

/// Ledgers are equal when their accounts, entries and totals are: the
/// movements not yet taken are on their way to history.
impl PartialEq for Ledger {
    fn eq(&self, other: &Ledger) -> bool {
        self.accounts == other.accounts
            && self.entries == other.entries
            && self.resolved == other.resolved
            && self.recent == other.recent
            && self.totals == other.totals
    }
}

impl Eq for Ledger {}

/// What a chain changed, so it can be undone if a later operation is refused.
enum Undo {
    Account(AccountId, Option<Account>),
    Entry(EntryId, Option<Entry>),
    Recent(EntryId),
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Open an account with a policy.
    pub fn open_account(&mut self, id: AccountId, policy: AccountPolicy) -> Result<(), LedgerReject> {
        if let AccountPolicy::DebitsMustNotExceedCredits { net_debit_cap } = policy {
            if net_debit_cap.currency() != id.currency {
                return Err(LedgerReject::CurrencyMismatch);
            }
        }
        if self.accounts.contains_key(&id) {
            return Err(LedgerReject::AccountExists);
        }
        self.accounts.insert(id, Account::open(policy));
        Ok(())
    }

    /// Open an account unless it is open already; return it either way.
    pub fn ensure_account(&mut self, id: &AccountId, policy: AccountPolicy) -> &Account {
        self.accounts.entry(id.clone()).or_insert_with(|| Account::open(policy))
    }

    /// Change an account's policy. Refused if the current balances would break it.
    pub fn set_policy(&mut self, id: &AccountId, policy: AccountPolicy) -> Result<(), LedgerReject> {
        if let AccountPolicy::DebitsMustNotExceedCredits { net_debit_cap } = policy {
            if net_debit_cap.currency() != id.currency {
                return Err(LedgerReject::CurrencyMismatch);
            }
        }
        let account = self.accounts.get_mut(id).ok_or(LedgerReject::AccountNotFound)?;
        let mut changed = account.clone();
        changed.policy = policy;
        if !changed.satisfies_policy() {
            return Err(LedgerReject::PolicyViolatedByBalances);
        }
        *account = changed;
        Ok(())
    }

    /// Close or reopen an account. A closed account refuses new entries; its
    /// pending entries can still be posted or voided, so in-flight transfers finish.
    pub fn set_closed(&mut self, id: &AccountId, closed: bool) -> Result<(), LedgerReject> {
        let account = self.accounts.get_mut(id).ok_or(LedgerReject::AccountNotFound)?;
        account.closed = closed;
        Ok(())
    }

    /// An account, if open.
    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// All accounts, in id order.
    pub fn accounts(&self) -> impl Iterator<Item = (&AccountId, &Account)> {
        self.accounts.iter()
    }

    /// An entry, if known: pending, or resolved since the ledger last
    /// forgot resolved entries.
    pub fn entry(&self, id: &EntryId) -> Option<&Entry> {
        self.entries.get(id).or_else(|| self.recent_at(id).ok().map(|at| &self.recent[at].1))
    }

    /// Every entry held: the pending ones in id order, then those resolved
    /// since the ledger last forgot them, in id order.
    pub fn entries(&self) -> impl Iterator<Item = (&EntryId, &Entry)> {
        self.entries.iter().chain(self.recent.iter().map(|(id, entry)| (id, entry)))
    }

    /// The per-currency totals.
    pub fn totals(&self) -> &BTreeMap<Currency, Totals> {
        &self.totals
    }

    /// An account's net posted balance (credits minus debits) as money.
    pub fn net_posted(&self, id: &AccountId) -> Option<SignedMoney> {
        let account = self.accounts.get(id)?;
        // Balances are bounded by BALANCE_UNITS_MAX, which SignedMoney holds.
        SignedMoney::from_units(account.net_posted(), id.currency).ok()
    }

    /// Apply `ops` as one linked chain at time `now`: either every operation is
    /// applied, or none is and the first refusal is returned.
    pub fn apply(&mut self, ops: &[Op], now: Timestamp) -> Result<(), ChainReject> {
        let mut undo = Vec::with_capacity(ops.len() * 3);
        let moves_before = self.moves.len();
        for (index, op) in ops.iter().enumerate() {
            if let Err(reason) = self.apply_one(op, now, &mut undo) {
                self.rollback(undo);
                self.moves.truncate(moves_before);
                return Err(ChainReject { index, reason });
            }
        }
        self.account_for_chain(&undo);
        Ok(())
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for change in undo.into_iter().rev() {
            match change {
                Undo::Account(id, Some(account)) => {
                    self.accounts.insert(id, account);
                }
                Undo::Account(id, None) => {
                    self.accounts.remove(&id);
                }
                Undo::Entry(id, Some(entry)) => {
                    self.entries.insert(id, entry);
                }
                Undo::Entry(id, None) => {
                    self.entries.remove(&id);
                }
                Undo::Recent(id) => {
                    if let Ok(at) = self.recent_at(&id) {
                        self.recent.remove(at);
                    }
                }
            }
        }
    }

    /// Update the totals from the before/after state of every account the chain
    /// touched, and assert that each currency still sums to zero and every
    /// touched account still satisfies its policy.
    fn account_for_chain(&mut self, undo: &[Undo]) {
        // A chain touches a handful of accounts in one or two currencies:
        // lists searched in turn, not maps, and in the order first touched
        // (sums, so the order changes nothing).
        let mut first_seen: Vec<(&AccountId, Option<&Account>)> = Vec::with_capacity(undo.len());
        for change in undo {
            if let Undo::Account(id, before) = change {
                if !first_seen.iter().any(|(seen, _)| *seen == id) {
                    first_seen.push((id, before.as_ref()));
                }
            }
        }
        let mut deltas: Vec<(Currency, [i128; 4])> = Vec::with_capacity(2);
        for (id, before) in first_seen {
            let after = &self.accounts[id];
            assert!(after.satisfies_policy(), "account {id} breaks its policy: {after:?}");
            let before = before.cloned().unwrap_or_else(|| Account::open(after.policy));
            let at = match deltas.iter().position(|(currency, _)| *currency == id.currency) {
                Some(at) => at,
                None => {
                    deltas.push((id.currency, [0; 4]));
                    deltas.len() - 1
                }
            };
            let delta = &mut deltas[at].1;
            delta[0] += after.debits_pending as i128 - before.debits_pending as i128;
            delta[1] += after.debits_posted as i128 - before.debits_posted as i128;
            delta[2] += after.credits_pending as i128 - before.credits_pending as i128;
            delta[3] += after.credits_posted as i128 - before.credits_posted as i128;
        }
        for (currency, [debits_pending, debits_posted, credits_pending, credits_posted]) in deltas {
            assert_eq!(debits_pending, credits_pending, "{currency}: pending debits and credits moved apart");
            assert_eq!(debits_posted, credits_posted, "{currency}: posted debits and credits moved apart");
            let totals = self.totals.entry(currency).or_default();
            let shift = |sum: &mut u128, delta: i128| {
                *sum = sum.checked_add_signed(delta).expect("a per-currency total left u128");
            };
            shift(&mut totals.debits_pending, debits_pending);
            shift(&mut totals.debits_posted, debits_posted);
            shift(&mut totals.credits_pending, credits_pending);
            shift(&mut totals.credits_posted, credits_posted);
            assert!(totals.balanced(), "{currency}: the ledger no longer sums to zero: {totals:?}");
        }
    }

    fn apply_one(&mut self, op: &Op, now: Timestamp, undo: &mut Vec<Undo>) -> Result<(), LedgerReject> {
        match op {
            Op::Post { id, debit, credit, amount } => self.create(id, debit, credit, *amount, false, now, undo),
            Op::Reserve { id, debit, credit, amount } => self.create(id, debit, credit, *amount, true, now, undo),
            Op::PostPending { id } => self.resolve(id, EntryStatus::Posted, now, undo),
            Op::VoidPending { id } => self.resolve(id, EntryStatus::Voided, now, undo),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        id: &EntryId,
        debit_id: &AccountId,
        credit_id: &AccountId,
        amount: Money,
        pending: bool,
        now: Timestamp,
        undo: &mut Vec<Undo>,
    ) -> Result<(), LedgerReject> {
        if debit_id == credit_id {
            return Err(LedgerReject::AccountsMustBeDifferent);
        }
        if amount.currency() != debit_id.currency || amount.currency() != credit_id.currency {
            return Err(LedgerReject::CurrencyMismatch);
        }
        if amount.is_zero() {
            return Err(LedgerReject::ZeroAmount);
        }
        if self.entries.contains_key(id) || self.recent_at(id).is_ok() {
            return Err(LedgerReject::EntryExists);
        }
        let debit = self.accounts.get(debit_id).ok_or(LedgerReject::AccountNotFound)?;
        let credit = self.accounts.get(credit_id).ok_or(LedgerReject::AccountNotFound)?;
        if debit.closed || credit.closed {
            return Err(LedgerReject::AccountClosed);
        }
        let units = u128::from(amount.units());
        // Pending and posted sums are bounded together, so posting a pending
        // entry later can never leave the bound.
        let limit = SignedMoney::units_max(amount.currency());
        let fits = |pending: u128, posted: u128| pending + posted + units <= limit;
        if !fits(debit.debits_pending, debit.debits_posted) || !fits(credit.credits_pending, credit.credits_posted) {
            return Err(LedgerReject::BalanceOverflow);
        }
        let mut debit_after = debit.clone();
        let mut credit_after = credit.clone();
        if pending {
            debit_after.debits_pending += units;
            credit_after.credits_pending += units;
        } else {
            debit_after.debits_posted += units;
            credit_after.credits_posted += units;
        }
        if !debit_after.satisfies_policy() {
            return Err(LedgerReject::ExceedsCredits);
        }
        if !credit_after.satisfies_policy() {
            return Err(LedgerReject::ExceedsDebits);
        }
        let entry = Entry {
            debit: debit_id.clone(),
            credit: credit_id.clone(),
            amount,
            status: if pending { EntryStatus::Pending } else { EntryStatus::Posted },
            two_phase: pending,
            created_at: now,
            resolved_at: if pending { None } else { Some(now) },
        };
        let kind = if pending { MovementKind::Reserve } else { MovementKind::Post };
        self.record_move(id, &entry, kind, now, &debit_after, &credit_after);
        self.replace_account(debit_id, debit_after, undo);
        self.replace_account(credit_id, credit_after, undo);
        if pending {
            undo.push(Undo::Entry(id.clone(), self.entries.insert(id.clone(), entry)));
        } else {
            self.keep_recent(id, entry, undo);
        }
        Ok(())
    }

    fn resolve(
        &mut self,
        id: &EntryId,
        outcome: EntryStatus,
        now: Timestamp,
        undo: &mut Vec<Undo>,
    ) -> Result<(), LedgerReject> {
        // A pending entry, or one resolved already in this batch (which the
        // match below refuses as the persistent map's entries were refused).
        let entry = self.entry(id).ok_or(LedgerReject::PendingNotFound)?;
        match (entry.two_phase, entry.status) {
            (false, _) => return Err(LedgerReject::NotPending),
            (true, EntryStatus::Posted) => return Err(LedgerReject::AlreadyPosted),
            (true, EntryStatus::Voided) => return Err(LedgerReject::AlreadyVoided),
            (true, EntryStatus::Pending) => {}
        }
        let units = u128::from(entry.amount.units());
        let mut debit = self.accounts[&entry.debit].clone();
        let mut credit = self.accounts[&entry.credit].clone();
        // A pending entry is inside both pending sums; take it out.
        debit.debits_pending = debit.debits_pending.checked_sub(units).expect("pending debit below its entry");
        credit.credits_pending = credit.credits_pending.checked_sub(units).expect("pending credit below its entry");
        if outcome == EntryStatus::Posted {
            // The reservation already counted this amount against the limits, so
            // moving it from pending to posted cannot break a policy or a bound.
            debit.debits_posted += units;
            credit.credits_posted += units;
        }
        let mut resolved = entry.clone();
        resolved.status = outcome;
        resolved.resolved_at = Some(now);
        let (debit_id, credit_id) = (entry.debit.clone(), entry.credit.clone());
        let kind = if outcome == EntryStatus::Posted { MovementKind::PostPending } else { MovementKind::VoidPending };
        self.record_move(id, &resolved, kind, now, &debit, &credit);
        self.replace_account(&debit_id, debit, undo);
        self.replace_account(&credit_id, credit, undo);
        undo.push(Undo::Entry(id.clone(), self.entries.remove(id)));
        self.keep_recent(id, resolved, undo);
        Ok(())
    }

    fn record_move(
        &mut self,
        id: &EntryId,
        entry: &Entry,
        kind: MovementKind,
        now: Timestamp,
        debit: &Account,
        credit: &Account,
    ) {
        self.moves.push(Movement {
            entry: id.clone(),
            kind,
            debit: entry.debit.clone(),
            credit: entry.credit.clone(),
            amount: entry.amount,
            at: now,
            debit_after: debit.balances(),
            credit_after: credit.balances(),
        });
    }

    /// Take the movements applied since the last call, in order.
    pub fn take_movements(&mut self) -> Vec<Movement> {
        std::mem::take(&mut self.moves)
    }

    /// Forget every posted or voided entry: their movements are history
    /// now, and only pending entries are consulted again (to be resolved).
    /// Balances are unaffected. Returns how many went.
    pub fn forget_resolved(&mut self) -> usize {
        let mut forgotten = self.recent.len();
        self.recent.clear();
        // Resolved entries kept the earlier way (a ledger read from an image
        // of a format before history), forgotten as they were.
        while let Some((_, id)) = self.resolved.remove_min() {
            self.entries.remove(&id);
            forgotten += 1;
        }
        forgotten
    }

    /// Keep a resolved entry until the ledger forgets resolved entries.
    fn keep_recent(&mut self, id: &EntryId, entry: Entry, undo: &mut Vec<Undo>) {
        match self.recent_at(id) {
            Ok(at) => {
                debug_assert!(false, "an entry resolved twice: {id:?}");
                self.recent[at].1 = entry;
            }
            Err(at) => self.recent.insert(at, (id.clone(), entry)),
        }
        undo.push(Undo::Recent(id.clone()));
    }

    /// Where `id` is in [`Ledger::recent`] (`Ok`), or where it would go
    /// (`Err`); the end is looked at first, where a batch's entries go.
    fn recent_at(&self, id: &EntryId) -> Result<usize, usize> {
        match self.recent.last() {
            Some((last, _)) if last < id => Err(self.recent.len()),
            _ => self.recent.binary_search_by(|(held, _)| held.cmp(id)),
        }
    }

    fn replace_account(&mut self, id: &AccountId, account: Account, undo: &mut Vec<Undo>) {
        undo.push(Undo::Account(id.clone(), self.accounts.insert(id.clone(), account)));
    }

    /// Test support: add `units` to `debit`'s posted debits and `credit`'s
    /// posted credits directly, with no entry, keeping the ledger balanced. Lets
    /// tests reach balance bounds that would take 10^9 real entries.
    #[cfg(test)]
    pub(crate) fn force_posted(&mut self, debit: &AccountId, credit: &AccountId, units: u128) {
        assert_eq!(debit.currency, credit.currency);
        self.accounts.get_mut(debit).expect("open account").debits_posted += units;
        self.accounts.get_mut(credit).expect("open account").credits_posted += units;
        let totals = self.totals.entry(debit.currency).or_default();
        totals.debits_posted += units;
        totals.credits_posted += units;
        self.verify().expect("forced sums stay balanced");
    }

    /// Re-derive every invariant from scratch: each currency sums to zero, the
    /// totals match the accounts, every account satisfies its policy, pending
    /// sums equal the pending entries, and the retention index matches the
    /// entries. Used by tests and when a ledger is loaded from disk.
    pub fn verify(&self) -> Result<(), String> {
        let mut sums: BTreeMap<Currency, Totals> = BTreeMap::new();
        for (id, account) in &self.accounts {
            if !account.satisfies_policy() {
                return Err(format!("account {id} breaks its policy"));
            }
            let t = sums.entry(id.currency).or_default();
            t.debits_pending += account.debits_pending;
            t.debits_posted += account.debits_posted;
            t.credits_pending += account.credits_pending;
            t.credits_posted += account.credits_posted;
        }
        for (currency, t) in &sums {
            if !t.balanced() {
                return Err(format!("{currency} does not sum to zero: {t:?}"));
            }
        }
        let nonzero = |t: &&Totals| **t != Totals::default();
        if sums.iter().filter(|(_, t)| nonzero(t)).ne(self.totals.iter().filter(|(_, t)| nonzero(t))) {
            return Err("stored totals differ from the accounts".into());
        }
        let mut pending: BTreeMap<&AccountId, (u128, u128)> = BTreeMap::new();
        for (id, entry) in &self.entries {
            if entry.status == EntryStatus::Pending {
                pending.entry(&entry.debit).or_default().0 += u128::from(entry.amount.units());
                pending.entry(&entry.credit).or_default().1 += u128::from(entry.amount.units());
            }
            let indexed = entry.resolved_at.is_some_and(|at| self.resolved.contains(&(at, id.clone())));
            if indexed != (entry.status != EntryStatus::Pending) {
                return Err(format!("entry {id:?} is missing from or wrongly in the retention index"));
            }
        }
        for (id, account) in &self.accounts {
            let (debits, credits) = pending.get(id).copied().unwrap_or_default();
            if (debits, credits) != (account.debits_pending, account.credits_pending) {
                return Err(format!("account {id}: pending sums differ from its pending entries"));
            }
        }
        Ok(())
    }
}

/// Loading a ledger re-derives the totals and verifies every invariant, so a
/// corrupted snapshot is refused rather than trusted.
impl<'de> Deserialize<'de> for Ledger {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Repr {
            #[serde(with = "crate::serde_seq")]
            accounts: OrdMap<AccountId, Account>,
            #[serde(with = "crate::serde_seq")]
            entries: OrdMap<EntryId, Entry>,
            #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
            resolved: OrdSet<(Timestamp, EntryId)>,
            #[serde(with = "crate::serde_seq")]
            totals: BTreeMap<Currency, Totals>,
        }
        let repr = Repr::deserialize(deserializer)?;
        let ledger = Ledger {
            accounts: repr.accounts,
            entries: repr.entries,
            resolved: repr.resolved,
            totals: repr.totals,
            recent: Vec::new(),
            moves: Vec::new(),
        };
        ledger.verify().map_err(serde::de::Error::custom)?;
        Ok(ledger)
    }
}

impl From<MoneyError> for LedgerReject {
    fn from(error: MoneyError) -> Self {
        match error {
            MoneyError::CurrencyMismatch { .. } => LedgerReject::CurrencyMismatch,
            MoneyError::Overflow { .. } | MoneyError::Negative { .. } => LedgerReject::BalanceOverflow,
        }
    }
}

#[cfg(test)]
mod tests;
