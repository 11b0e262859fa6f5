//! The history tier: what a region remembers once work is done.
//!
//! A region's state has two tiers. The hot [`State`](crate::State) holds
//! what the write path decides with (accounts and balances, partners,
//! corridors, live quotes, transfers not yet final, the outbox, sessions) and
//! is bounded by the work in flight. Everything done goes to history as
//! [`Record`]s: finished transfers and participations, every ledger movement
//! with the balances after it, every partner event, idempotency keys,
//! top-ups and operator commands. Applying a batch returns its records;
//! every replica writes them, in order, tagged with the log index of the
//! batch, so replicas hold the same history at the same applied index.
//!
//! History is append-only and immutable: a record is written once and never
//! changed (retention deletes whole records, archived first). The hot state
//! consults history through [`Recall`] for the few questions about finished
//! work the write path must answer (a retried idempotency key, a late
//! inter-region message about a finished transfer, a repeated top-up
//! reference). A [`Recall`] answers as of the start of the batch being
//! applied: records written at that batch's index or later are not seen, so
//! re-applying log entries after a restart (history may already hold them)
//! decides exactly as the first application did.
//!
//! [`MemoryHistory`] keeps history in memory, for tests and the simulation;
//! `paymesh-store` keeps it on disk.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{CommandBody, Fingerprint};
use crate::id::{IdempotencyKey, OperatorId, PartnerId, TopUpRef, TransferId};
use crate::ledger::{AccountId, EntryId};
use crate::money::Money;
use crate::outcome::Outcome;
use crate::settlement::SettlementWindow;
use crate::state::{Event, Participation, Refund, RefundParticipation, RefundTotals, Transfer};
use crate::time::Timestamp;

/// An idempotency key's first answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The fingerprint of the request body it answered.
    pub fingerprint: Fingerprint,
    /// The answer.
    pub outcome: Outcome,
    /// When it was given.
    pub at: Timestamp,
}

/// A top-up applied, remembered by its reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpRecord {
    /// The partner credited.
    pub partner: PartnerId,
    /// The amount.
    pub amount: Money,
    /// When it was applied.
    pub at: Timestamp,
}

/// An account's four running sums, in minor units, after a movement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    /// Sum of pending debits.
    pub debits_pending: u128,
    /// Sum of posted debits.
    pub debits_posted: u128,
    /// Sum of pending credits.
    pub credits_pending: u128,
    /// Sum of posted credits.
    pub credits_posted: u128,
}

impl Balances {
    /// Posted credits minus posted debits.
    pub fn net_posted(&self) -> i128 {
        self.credits_posted as i128 - self.debits_posted as i128
    }
}

/// What a ledger movement did to its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovementKind {
    /// Created and posted at once.
    Post,
    /// Created pending.
    Reserve,
    /// A pending entry posted.
    PostPending,
    /// A pending entry voided.
    VoidPending,
}

/// One change to the ledger: an entry created, posted or voided, with both
/// accounts' balances after it. The movements of an account, in order, are
/// its statement: each one's balances are the previous one's plus its amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    /// The entry.
    pub entry: EntryId,
    /// What happened to it.
    pub kind: MovementKind,
    /// The account debited.
    pub debit: AccountId,
    /// The account credited.
    pub credit: AccountId,
    /// The amount.
    pub amount: Money,
    /// When.
    pub at: Timestamp,
    /// The debited account's sums after the movement.
    pub debit_after: Balances,
    /// The credited account's sums after the movement.
    pub credit_after: Balances,
}

/// One immutable fact of a region's history.
///
/// The large payloads are boxed (a box encodes as what it holds), so a
/// record is small to move: a busy batch makes thousands of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A partner takes part in a transfer (as payer, or as payee): written
    /// when the transfer or participation is first recorded, for listing.
    Listed {
        /// The partner.
        partner: PartnerId,
        /// The transfer.
        transfer: TransferId,
        /// When it was recorded here.
        at: Timestamp,
    },
    /// A transfer this region coordinates reached its final state.
    Transfer(Box<Transfer>),
    /// This region's side of another region's transfer reached a final state
    /// (tombstones included).
    Participation {
        /// The transfer.
        transfer: TransferId,
        /// Its final record here.
        participation: Box<Participation>,
    },
    /// An idempotency key's first answer (in its latest use, if it was
    /// used again after the region's window).
    Idempotency {
        /// The partner.
        partner: PartnerId,
        /// The key.
        key: IdempotencyKey,
        /// The answer.
        record: Box<IdempotencyRecord>,
    },
    /// A top-up applied.
    TopUp {
        /// Its reference.
        reference: TopUpRef,
        /// What it did.
        record: TopUpRecord,
    },
    /// A ledger movement.
    Movement(Box<Movement>),
    /// An event on a partner's stream.
    Event {
        /// The partner.
        partner: PartnerId,
        /// The event.
        event: Event,
    },
    /// An operator's command applied, with its outcome: the audit trail.
    Operator {
        /// When.
        at: Timestamp,
        /// The command.
        command: Box<CommandBody>,
        /// What it did.
        outcome: Box<Outcome>,
    },
    /// An operator command with who issued it (the audit trail: who, when,
    /// what, and what it did). [`Record::Operator`] is the form of commands
    /// applied before operators were named.
    Audited {
        /// When.
        at: Timestamp,
        /// Who: the operator's name from its certificate.
        operator: OperatorId,
        /// The command.
        command: Box<CommandBody>,
        /// What it did.
        outcome: Box<Outcome>,
    },
    /// A fund-out applied: prefunding withdrawn from a partner's position.
    FundOut {
        /// Its reference.
        reference: TopUpRef,
        /// What it did (the partner debited, the amount, when).
        record: TopUpRecord,
    },
    /// A refund this region coordinated reached its final state.
    Refund(Box<Refund>),
    /// This region's side of a refund another region coordinated (the
    /// payer credited back) reached its final state.
    RefundParticipation {
        /// The refund.
        refund: TransferId,
        /// Its final record here.
        participation: Box<RefundParticipation>,
    },
    /// A payment's refunds so far, after one more committed: this region's
    /// running totals for it, the newest of which the next refund is
    /// checked against.
    Refunded {
        /// The payment.
        transfer: TransferId,
        /// Everything given back so far.
        totals: RefundTotals,
    },
    /// A settlement window as it stands: written when it closes and again
    /// each time one of its positions is recorded settled (the newest is
    /// the window).
    Window(Box<SettlementWindow>),
}

/// What the write path asks history: finished work, as of the start of the
/// batch being applied (see the module documentation).
///
/// Each question is by a unique key, and its answer is the **newest** record
/// written under that key before the batch. A transfer id is never reused,
/// but an idempotency key may be used again once the region's window has
/// passed, and a top-up reference once its window has (the core decides
/// that): the key's new answer must then be what a retry finds, not the
/// expired first one, or each retry would be taken as new again.
pub trait Recall {
    /// The newest answer under a partner's idempotency key: the first
    /// answer of its latest use.
    fn idempotency(&self, partner: &PartnerId, key: &IdempotencyKey) -> Option<IdempotencyRecord>;
    /// A finished transfer this region coordinated.
    fn transfer(&self, id: &TransferId) -> Option<Transfer>;
    /// A finished participation.
    fn participation(&self, id: &TransferId) -> Option<Participation>;
    /// The newest top-up under its reference.
    fn top_up(&self, reference: &TopUpRef) -> Option<TopUpRecord>;
    /// The newest fund-out under its reference.
    fn fund_out(&self, reference: &TopUpRef) -> Option<TopUpRecord>;
    /// A finished refund this region coordinated.
    fn refund(&self, id: &TransferId) -> Option<Refund>;
    /// This region's finished side of a refund another region coordinated.
    fn refund_participation(&self, id: &TransferId) -> Option<RefundParticipation>;
    /// What the committed refunds of a payment gave back so far.
    fn refunded(&self, transfer: &TransferId) -> Option<RefundTotals>;
    /// A closed settlement window, as it stands.
    fn window(&self, number: u64) -> Option<SettlementWindow>;
    /// The state knows, without asking, that no record was ever written
    /// under a partner's idempotency key before the batch (the leader looked
    /// and the batches since recorded none): a history that keeps what a
    /// batch's recall read, for the batch's write, may keep this as read,
    /// and empty.
    fn unrecorded(&self, _partner: &PartnerId, _key: &IdempotencyKey) {}
}

/// History that holds nothing: for a state that has never finished any work,
/// and for the leader's checks that are answered again when applied.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHistory;

impl Recall for NoHistory {
    fn idempotency(&self, _: &PartnerId, _: &IdempotencyKey) -> Option<IdempotencyRecord> {
        None
    }
    fn transfer(&self, _: &TransferId) -> Option<Transfer> {
        None
    }
    fn participation(&self, _: &TransferId) -> Option<Participation> {
        None
    }
    fn top_up(&self, _: &TopUpRef) -> Option<TopUpRecord> {
        None
    }
    fn fund_out(&self, _: &TopUpRef) -> Option<TopUpRecord> {
        None
    }
    fn refund(&self, _: &TransferId) -> Option<Refund> {
        None
    }
    fn refund_participation(&self, _: &TransferId) -> Option<RefundParticipation> {
        None
    }
    fn refunded(&self, _: &TransferId) -> Option<RefundTotals> {
        None
    }
    fn window(&self, _: u64) -> Option<SettlementWindow> {
        None
    }
}

/// What history can be asked by readers: the records the partner and
/// operator APIs serve, on top of [`Recall`].
pub trait HistoryRead: Recall {
    /// The transfers `partner` takes part in, in the order they were
    /// recorded here, after the position `after` (a page token returned by
    /// an earlier call; `None` from the start), at most `max`, each with the
    /// token of its position.
    fn listed(&self, partner: &PartnerId, after: Option<&ListToken>, max: usize) -> Vec<(ListToken, TransferId)>;
    /// Up to `max` of a partner's events with a cursor above `after`.
    fn events(&self, partner: &PartnerId, after: u64, max: usize) -> Vec<Event>;
}

/// A position in a partner's list of transfers: when the transfer was
/// recorded here, then the log position of the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListToken {
    /// When the transfer was recorded here.
    pub at: Timestamp,
    /// The log index of the batch that recorded it.
    pub index: u64,
    /// The record's position within its batch.
    pub seq: u32,
}

/// History in memory, with the same answers as the store's: for tests and
/// the simulation. Records are kept with the index of the batch that wrote
/// them, and [`MemoryHistory::at`] gives the [`Recall`] as of an index.
#[derive(Clone, Debug, Default)]
pub struct MemoryHistory {
    /// Every record, by (index, position in the batch).
    records: BTreeMap<(u64, u32), Record>,
    /// The index of the last batch written.
    last_index: u64,
    // Every record under each unique key, oldest first, with its batch's
    // index: the newest written before a batch answers it.
    idempotency: BTreeMap<(PartnerId, IdempotencyKey), Vec<(u64, IdempotencyRecord)>>,
    transfers: BTreeMap<TransferId, Vec<(u64, Transfer)>>,
    participations: BTreeMap<TransferId, Vec<(u64, Participation)>>,
    top_ups: BTreeMap<TopUpRef, Vec<(u64, TopUpRecord)>>,
    fund_outs: BTreeMap<TopUpRef, Vec<(u64, TopUpRecord)>>,
    refunds: BTreeMap<TransferId, Vec<(u64, Refund)>>,
    refund_participations: BTreeMap<TransferId, Vec<(u64, RefundParticipation)>>,
    refunded: BTreeMap<TransferId, Vec<(u64, RefundTotals)>>,
    windows: BTreeMap<u64, Vec<(u64, SettlementWindow)>>,
    listed: BTreeMap<(PartnerId, ListToken), TransferId>,
    events: BTreeMap<(PartnerId, u64), Event>,
}

impl MemoryHistory {
    /// Empty history.
    pub fn new() -> MemoryHistory {
        MemoryHistory::default()
    }

    /// Every record, newest batch first (a batch's records last to first).
    pub fn newest_first(&self) -> impl Iterator<Item = (u64, &Record)> + '_ {
        self.records.iter().rev().map(|((index, _), record)| (*index, record))
    }

    /// The index of the last batch written (0 before any).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Write the records of the batch at `index`. A batch at or below the
    /// last index written is already here (re-applied after a restart) and
    /// is skipped.
    ///
    /// # Panics
    ///
    /// If a batch written again brings other records than the first time:
    /// applying is deterministic, so that is a bug this catches.
    pub fn write(&mut self, index: u64, records: Vec<Record>) {
        if index <= self.last_index {
            let held: Vec<&Record> = self.records.range((index, 0)..=(index, u32::MAX)).map(|(_, r)| r).collect();
            let deleted = held.is_empty() && self.records.keys().next().is_some_and(|(first, _)| *first > index);
            assert!(
                deleted || held.iter().copied().eq(records.iter()),
                "the batch at {index} was applied again with other history"
            );
            return;
        }
        self.last_index = index;
        for (seq, record) in records.into_iter().enumerate() {
            let seq = u32::try_from(seq).expect("fewer than 2^32 records per batch");
            match &record {
                Record::Listed { partner, transfer, at } => {
                    self.listed.insert((partner.clone(), ListToken { at: *at, index, seq }), transfer.clone());
                }
                Record::Transfer(transfer) => {
                    self.transfers.entry(transfer.view.id.clone()).or_default().push((index, (**transfer).clone()));
                }
                Record::Participation { transfer, participation } => {
                    self.participations.entry(transfer.clone()).or_default().push((index, (**participation).clone()));
                }
                Record::Idempotency { partner, key, record } => {
                    self.idempotency
                        .entry((partner.clone(), key.clone()))
                        .or_default()
                        .push((index, (**record).clone()));
                }
                Record::FundOut { reference, record } => {
                    self.fund_outs.entry(reference.clone()).or_default().push((index, record.clone()));
                }
                Record::TopUp { reference, record } => {
                    self.top_ups.entry(reference.clone()).or_default().push((index, record.clone()));
                }
                Record::Event { partner, event } => {
                    self.events.insert((partner.clone(), event.cursor), event.clone());
                }
                Record::Refund(refund) => {
                    self.refunds.entry(refund.view.id.clone()).or_default().push((index, (**refund).clone()));
                }
                Record::RefundParticipation { refund, participation } => {
                    self.refund_participations
                        .entry(refund.clone())
                        .or_default()
                        .push((index, (**participation).clone()));
                }
                Record::Refunded { transfer, totals } => {
                    self.refunded.entry(transfer.clone()).or_default().push((index, *totals));
                }
                Record::Window(window) => {
                    self.windows.entry(window.number).or_default().push((index, (**window).clone()));
                }
                Record::Movement(_) | Record::Operator { .. } | Record::Audited { .. } => {}
            }
            self.records.insert((index, seq), record);
        }
    }

    /// Forget everything after `index`, as a crash would forget writes not
    /// yet durable.
    pub fn truncate_after(&mut self, index: u64) {
        let mut kept = MemoryHistory::new();
        let mut batch: Option<(u64, Vec<Record>)> = None;
        for ((at, _), record) in std::mem::take(&mut self.records).into_iter().filter(|((at, _), _)| *at <= index) {
            match &mut batch {
                Some((current, records)) if *current == at => records.push(record),
                _ => {
                    if let Some((current, records)) = batch.take() {
                        kept.write(current, records);
                    }
                    batch = Some((at, vec![record]));
                }
            }
        }
        if let Some((current, records)) = batch {
            kept.write(current, records);
        }
        kept.last_index = kept.last_index.max(index.min(self.last_index));
        *self = kept;
    }

    /// Every record, in order, with the index of its batch.
    pub fn records(&self) -> impl Iterator<Item = (u64, &Record)> {
        self.records.iter().map(|((index, _), record)| (*index, record))
    }

    /// Every finished transfer this region coordinated, in id order.
    pub fn transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.transfers.values().filter_map(|held| held.last()).map(|(_, t)| t)
    }

    /// Every finished participation, in transfer id order.
    pub fn participations(&self) -> impl Iterator<Item = (&TransferId, &Participation)> {
        self.participations.iter().filter_map(|(id, held)| held.last().map(|(_, p)| (id, p)))
    }

    /// Every finished refund this region coordinated, in id order.
    pub fn refunds(&self) -> impl Iterator<Item = &Refund> {
        self.refunds.values().filter_map(|held| held.last()).map(|(_, r)| r)
    }

    /// Every finished refund participation, in refund id order.
    pub fn refund_participations(&self) -> impl Iterator<Item = (&TransferId, &RefundParticipation)> {
        self.refund_participations.iter().filter_map(|(id, held)| held.last().map(|(_, p)| (id, p)))
    }

    /// The [`Recall`] of this history as of the start of the batch at `index`.
    pub fn at(&self, index: u64) -> MemoryRecall<'_> {
        MemoryRecall { history: self, before: index }
    }
}

/// [`MemoryHistory`] as of the start of one batch.
#[derive(Clone, Copy, Debug)]
pub struct MemoryRecall<'a> {
    history: &'a MemoryHistory,
    before: u64,
}

/// The newest of a key's records written before the batch at `before`.
fn seen<T: Clone>(found: Option<&Vec<(u64, T)>>, before: u64) -> Option<T> {
    found?.iter().rev().find(|(index, _)| *index < before).map(|(_, value)| value.clone())
}

impl Recall for MemoryRecall<'_> {
    fn idempotency(&self, partner: &PartnerId, key: &IdempotencyKey) -> Option<IdempotencyRecord> {
        seen(self.history.idempotency.get(&(partner.clone(), key.clone())), self.before)
    }
    fn transfer(&self, id: &TransferId) -> Option<Transfer> {
        seen(self.history.transfers.get(id), self.before)
    }
    fn participation(&self, id: &TransferId) -> Option<Participation> {
        seen(self.history.participations.get(id), self.before)
    }
    fn top_up(&self, reference: &TopUpRef) -> Option<TopUpRecord> {
        seen(self.history.top_ups.get(reference), self.before)
    }
    fn fund_out(&self, reference: &TopUpRef) -> Option<TopUpRecord> {
        seen(self.history.fund_outs.get(reference), self.before)
    }
    fn refund(&self, id: &TransferId) -> Option<Refund> {
        seen(self.history.refunds.get(id), self.before)
    }
    fn refund_participation(&self, id: &TransferId) -> Option<RefundParticipation> {
        seen(self.history.refund_participations.get(id), self.before)
    }
    fn refunded(&self, transfer: &TransferId) -> Option<RefundTotals> {
        seen(self.history.refunded.get(transfer), self.before)
    }
    fn window(&self, number: u64) -> Option<SettlementWindow> {
        seen(self.history.windows.get(&number), self.before)
    }
}

impl Recall for MemoryHistory {
    fn idempotency(&self, partner: &PartnerId, key: &IdempotencyKey) -> Option<IdempotencyRecord> {
        self.at(u64::MAX).idempotency(partner, key)
    }
    fn transfer(&self, id: &TransferId) -> Option<Transfer> {
        self.at(u64::MAX).transfer(id)
    }
    fn participation(&self, id: &TransferId) -> Option<Participation> {
        self.at(u64::MAX).participation(id)
    }
    fn top_up(&self, reference: &TopUpRef) -> Option<TopUpRecord> {
        self.at(u64::MAX).top_up(reference)
    }
    fn fund_out(&self, reference: &TopUpRef) -> Option<TopUpRecord> {
        self.at(u64::MAX).fund_out(reference)
    }
    fn refund(&self, id: &TransferId) -> Option<Refund> {
        self.at(u64::MAX).refund(id)
    }
    fn refund_participation(&self, id: &TransferId) -> Option<RefundParticipation> {
        self.at(u64::MAX).refund_participation(id)
    }
    fn refunded(&self, transfer: &TransferId) -> Option<RefundTotals> {
        self.at(u64::MAX).refunded(transfer)
    }
    fn window(&self, number: u64) -> Option<SettlementWindow> {
        self.at(u64::MAX).window(number)
    }
}

impl HistoryRead for MemoryHistory {
    fn listed(&self, partner: &PartnerId, after: Option<&ListToken>, max: usize) -> Vec<(ListToken, TransferId)> {
        use std::ops::Bound;
        let start = match after {
            Some(token) => Bound::Excluded((partner.clone(), *token)),
            None => Bound::Included((partner.clone(), ListToken { at: Timestamp::EPOCH, index: 0, seq: 0 })),
        };
        self.listed
            .range((start, Bound::Unbounded))
            .take_while(|((owner, _), _)| owner == partner)
            .take(max)
            .map(|((_, token), id)| (*token, id.clone()))
            .collect()
    }

    fn events(&self, partner: &PartnerId, after: u64, max: usize) -> Vec<Event> {
        self.events
            .range((partner.clone(), after.saturating_add(1))..)
            .take_while(|((owner, _), _)| owner == partner)
            .take(max)
            .map(|(_, event)| event.clone())
            .collect()
    }
}

/// A record's own time: when what it records happened (for a finished
/// transfer or participation, when it last changed). Retention compares it
/// with a cutoff taken from the applied state's clock.
pub fn record_time(record: &Record) -> Timestamp {
    match record {
        Record::Listed { at, .. } | Record::Operator { at, .. } | Record::Audited { at, .. } => *at,
        Record::Transfer(transfer) => transfer.view.updated_at.max(transfer.view.created_at),
        Record::Participation { participation, .. } => participation.updated_at.max(participation.created_at),
        Record::Idempotency { record, .. } => record.at,
        Record::TopUp { record, .. } | Record::FundOut { record, .. } => record.at,
        Record::Movement(movement) => movement.at,
        Record::Event { event, .. } => event.at,
        Record::Refund(refund) => refund.view.updated_at.max(refund.view.created_at),
        Record::RefundParticipation { participation, .. } => participation.updated_at.max(participation.created_at),
        // A running total is as old as the payment's newest refund, which
        // is recorded beside it.
        Record::Refunded { .. } => Timestamp::EPOCH,
        // Written when it closes, and again with each settlement recorded
        // (beside the settlement's own movement).
        Record::Window(window) => window.closed_at.unwrap_or(Timestamp::EPOCH),
    }
}
