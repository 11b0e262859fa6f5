//! A region's replicated state and [`State::apply`], the only way it changes.
//!
//! The state holds everything a region decides with: its partners, corridors,
//! the payee directory, quotes, transfers it coordinates (payer side),
//! participations (payee side), idempotency records, the outbox of messages to
//! other regions, each partner's event log, proposer sessions for command
//! dedupe, and the ledger.
//!
//! Exactly-once, as this module provides it:
//!
//! * **Command ids**: each proposer session remembers the outcomes of its last
//!   [`SESSION_OUTCOMES_MAX`] commands; applying a remembered id again returns the
//!   original outcome and changes nothing.
//! * **Idempotency keys**: a partner's key maps to the fingerprint of the request
//!   body and its outcome; the same key and body returns the original outcome,
//!   the same key with another body is an [`RejectCode::IdempotencyConflict`].
//! * **Inter-region messages**: the participation record of a transfer is the
//!   inbox: a Prepare or decision delivered again, late or out of order is
//!   answered from it without a second effect, and an abort that overtakes its
//!   prepare leaves a tombstone that refuses the late prepare.
//!
//! Everything retained is bounded by time (retention windows applied by `Tick`,
//! whose work per call is bounded too) or by count.

use std::collections::BTreeMap;

use imbl::{OrdMap, OrdSet, Vector};

use self::recent::RecentKeys;
pub use self::recent::RECENT_KEYS_MAX;

use serde::{Deserialize, Serialize};

use crate::command::{
    Batch, Command, CommandBody, CommandId, Decision, OutboxMessage, PayerDetails, PrepareMessage, PrepareReply,
    TickReport, TransferRequest,
};
use crate::corridor::{Corridor, CorridorId, CorridorTerms, QuoteAmount};
use crate::currency::Currency;
use crate::directory::{Directory, Payee, PayeeRoute};
use crate::fx::FxRate;
use crate::history::{HistoryRead, IdempotencyRecord, ListToken, NoHistory, Recall, Record, TopUpRecord};
use crate::id::{IdempotencyKey, PartnerId, PayerToken, QrPayload, QuoteId, RegionId, TopUpRef, TransferId};
use crate::ledger::{AccountId, AccountOwner, AccountPolicy, EntryId, EntryStatus, Ledger, LedgerReject, Leg, Op};
use crate::limits::{
    FINISHED_TRANSFER_RECALL_MS, PAYEE_ROUTES_MAX, PREPARE_DEADLINE_AHEAD_MAX_MS, QUOTES_OUTSTANDING_MAX,
    QUOTE_RETENTION_AFTER_EXPIRY_MS, QUOTE_TTL_MS, SESSION_IDLE_EXPIRY_MS, SESSION_OUTCOMES_MAX, TICK_WORK_MAX,
    TOP_UP_RETENTION_MS, TRANSFER_PREPARE_DEADLINE_MS,
};
use crate::money::{Money, SignedMoney};
use crate::outcome::{Outcome, Position, Quote, RejectCode, TransferView};
use crate::partner::{BusinessStatus, Partner, PartnerConfig, PartnerLimits};
use crate::settings::RegionSettings;
use crate::time::Timestamp;
use crate::transfer::{
    coordinator_step, participant_step, CoordinatorEvent, CoordinatorState, ParticipantEvent, ParticipantState, Step,
};

/// A transfer this region coordinates (the payer's side). Holds the payer's
/// personal data, which never leaves this region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Everything the partner may see.
    pub view: TransferView,
    /// The payer's personal data.
    pub payer: PayerDetails,
    /// The UTC day the corridor's daily cap counted it on.
    pub cap_day: u64,
}

/// What the payee region knows of a prepared transfer: amounts, ids, the payee
/// and the opaque payer token. No personal data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participation {
    /// Where it stands.
    pub state: ParticipantState,
    /// Why it was refused or aborted, if it was.
    pub reason: Option<RejectCode>,
    /// The Prepare as received; `None` for a tombstone.
    pub prepare: Option<PrepareMessage>,
    /// When this region first recorded the transfer.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
}

/// A transfer as one of this region's partners sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartnerTransfer {
    /// Coordinated here: the partner pays it, or is the payee of a same-region transfer.
    Coordinated(Transfer),
    /// Coordinated elsewhere; this region holds the payee's side.
    Participated(Participation),
}

/// What kind of event a partner sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The payer's funds were reserved for a cross-border transfer.
    Reserved,
    /// The payer's transfer committed.
    Committed,
    /// The payer's transfer aborted.
    Aborted,
    /// The payee was credited.
    Credited,
}

/// One entry of a partner's event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the partner's log: 1, 2, 3, … with no gaps.
    pub cursor: u64,
    /// When it happened.
    pub at: Timestamp,
    /// The transfer.
    pub transfer: TransferId,
    /// What happened.
    pub kind: EventKind,
    /// The amount that moved for this partner (total debit for the payer,
    /// destination amount for the payee).
    pub amount: Money,
    /// Why, for aborts.
    pub reason: Option<RejectCode>,
}

/// A partner's event log as states before the history tier kept it: the
/// newest events in memory. Read from old snapshot images only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    next_cursor: u64,
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    events: Vector<Event>,
}

/// What a transfer request's idempotency key holds
/// ([`State::look_up_transfer_request`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLookup {
    /// No record was ever written under it (or retention deleted every one).
    Unrecorded,
    /// Its newest record is past the region's idempotency window: the key
    /// may be used again.
    Expired,
    /// Its record's answer: the original outcome for the same body, a
    /// conflict for another.
    Answered(Outcome),
}

/// A resumed stream asked for events older than history retains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cursor {requested} is before the oldest retained event {oldest}")]
pub struct CursorExpired {
    /// The cursor asked for.
    pub requested: u64,
    /// The oldest cursor still retained.
    pub oldest: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct QuoteRecord {
    quote: Quote,
    used: bool,
}

/// What a partner holds of the region's bounded resources, counted against
/// its [`PartnerLimits`]. Kept in the replicated state (and derivable from
/// it: [`State::verify`] recounts), so every replica and every new leader
/// enforces the same caps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerUsage {
    /// Its quotes not used by a transfer and not yet purged.
    pub quotes_outstanding: u32,
    /// Its transfers not yet final (reserved, waiting for the payee region).
    pub transfers_in_flight: u32,
}

/// A proposer session's remembered outcomes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_active: Timestamp,
    /// Outcomes by sequence number, the newest [`SESSION_OUTCOMES_MAX`].
    #[serde(with = "crate::serde_seq")]
    outcomes: OrdMap<u64, Outcome>,
    /// Sequence numbers below this were applied and forgotten.
    forgotten_below: u64,
}

/// A region's replicated state: the hot tier, bounded by the work in flight
/// (see [`crate::history`] for the other).
///
/// Every table is a persistent map (`imbl`): cloning the state is cheap and
/// shares structure, so a snapshot takes a consistent copy at one applied
/// index while apply goes on changing the original.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    region: RegionId,
    /// The latest time applied; time never goes backwards here even if leaders'
    /// clocks do.
    clock: Timestamp,
    next_transfer: u64,
    next_quote: u64,
    #[serde(with = "crate::serde_seq")]
    partners: OrdMap<PartnerId, Partner>,
    #[serde(with = "crate::serde_seq")]
    corridors: OrdMap<CorridorId, Corridor>,
    directory: Directory,
    #[serde(with = "crate::serde_seq")]
    quotes: OrdMap<QuoteId, QuoteRecord>,
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    quote_expiry: OrdSet<(Timestamp, QuoteId)>,
    /// Transfers this region coordinates that are not final yet.
    #[serde(with = "crate::serde_seq")]
    transfers: OrdMap<TransferId, Transfer>,
    /// Reserved transfers by deadline.
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    deadlines: OrdSet<(Timestamp, TransferId)>,
    /// Participations that are prepared and wait for their decision.
    #[serde(with = "crate::serde_seq")]
    participations: OrdMap<TransferId, Participation>,
    /// One pending message per transfer, keyed by destination region.
    #[serde(with = "crate::serde_seq")]
    outbox: OrdMap<(RegionId, TransferId), OutboxMessage>,
    /// Each partner's next event cursor; the events are history.
    #[serde(with = "crate::serde_seq")]
    event_cursors: OrdMap<PartnerId, u64>,
    #[serde(with = "crate::serde_seq")]
    sessions: OrdMap<u64, Session>,
    ledger: Ledger,
    /// Limits an operator set; a partner not here has [`PartnerLimits::DEFAULT`].
    #[serde(with = "crate::serde_seq")]
    partner_limits: OrdMap<PartnerId, PartnerLimits>,
    /// Each partner's use of the capped resources; a partner using none is
    /// not here.
    #[serde(with = "crate::serde_seq")]
    partner_usage: OrdMap<PartnerId, PartnerUsage>,
    /// What operators set for the whole region.
    settings: RegionSettings,
    /// Idempotency keys first answered in the batch being applied (history
    /// answers for earlier ones). Empty between batches.
    #[serde(skip)]
    idempotency: BTreeMap<(PartnerId, IdempotencyKey), IdempotencyRecord>,
    /// Top-ups applied in the batch being applied. Empty between batches.
    #[serde(skip)]
    top_ups: BTreeMap<TopUpRef, TopUpRecord>,
    /// The history records of the batch being applied. Empty between batches.
    #[serde(skip)]
    journal: Vec<Record>,
    /// The idempotency keys recorded by the latest batches (see
    /// [`recent`]); a cache of history, in no image and no comparison.
    #[serde(skip)]
    recent: RecentKeys,
}

/// A state as snapshot images of format 4 hold it, before the region's
/// settings: read, and converted with the default settings.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub struct StateV4 {
    region: RegionId,
    clock: Timestamp,
    next_transfer: u64,
    next_quote: u64,
    #[serde(with = "crate::serde_seq")]
    partners: OrdMap<PartnerId, Partner>,
    #[serde(with = "crate::serde_seq")]
    corridors: OrdMap<CorridorId, Corridor>,
    directory: Directory,
    #[serde(with = "crate::serde_seq")]
    quotes: OrdMap<QuoteId, QuoteRecord>,
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    quote_expiry: OrdSet<(Timestamp, QuoteId)>,
    #[serde(with = "crate::serde_seq")]
    transfers: OrdMap<TransferId, Transfer>,
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    deadlines: OrdSet<(Timestamp, TransferId)>,
    #[serde(with = "crate::serde_seq")]
    participations: OrdMap<TransferId, Participation>,
    #[serde(with = "crate::serde_seq")]
    outbox: OrdMap<(RegionId, TransferId), OutboxMessage>,
    #[serde(with = "crate::serde_seq")]
    event_cursors: OrdMap<PartnerId, u64>,
    #[serde(with = "crate::serde_seq")]
    sessions: OrdMap<u64, Session>,
    ledger: Ledger,
    #[serde(with = "crate::serde_seq")]
    partner_limits: OrdMap<PartnerId, PartnerLimits>,
    #[serde(with = "crate::serde_seq")]
    partner_usage: OrdMap<PartnerId, PartnerUsage>,
}

impl From<StateV4> for State {
    fn from(old: StateV4) -> State {
        State {
            region: old.region,
            clock: old.clock,
            next_transfer: old.next_transfer,
            next_quote: old.next_quote,
            partners: old.partners,
            corridors: old.corridors,
            directory: old.directory,
            quotes: old.quotes,
            quote_expiry: old.quote_expiry,
            transfers: old.transfers,
            deadlines: old.deadlines,
            participations: old.participations,
            outbox: old.outbox,
            event_cursors: old.event_cursors,
            sessions: old.sessions,
            ledger: old.ledger,
            partner_limits: old.partner_limits,
            partner_usage: old.partner_usage,
            settings: RegionSettings::default(),
            idempotency: BTreeMap::new(),
            top_ups: BTreeMap::new(),
            journal: Vec::new(),
            recent: RecentKeys::default(),
        }
    }
}

/// A state as snapshot images of format 3 hold it, before the history tier:
/// finished transfers, participations, idempotency keys, top-ups, events and
/// resolved ledger entries kept in memory for a retention window. Read, and
/// split into a [`State`] and the history records of what it retained
/// ([`State::from_v3`]).
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
#[allow(dead_code, reason = "the retention indexes are read to decode the format; history replaces them")]
pub struct StateV3 {
    region: RegionId,
    /// The latest time applied; time never goes backwards here even if leaders'
    /// clocks do.
    clock: Timestamp,
    next_transfer: u64,
    next_quote: u64,
    #[serde(with = "crate::serde_seq")]
    partners: OrdMap<PartnerId, Partner>,
    #[serde(with = "crate::serde_seq")]
    corridors: OrdMap<CorridorId, Corridor>,
    directory: Directory,
    #[serde(with = "crate::serde_seq")]
    quotes: OrdMap<QuoteId, QuoteRecord>,
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    quote_expiry: OrdSet<(Timestamp, QuoteId)>,
    #[serde(with = "crate::serde_seq")]
    transfers: OrdMap<TransferId, Transfer>,
    /// Reserved transfers by deadline.
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    deadlines: OrdSet<(Timestamp, TransferId)>,
    /// Final coordinator transfers by when they finished, for retention.
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    transfers_finished: OrdSet<(Timestamp, TransferId)>,
    #[serde(with = "crate::serde_seq")]
    participations: OrdMap<TransferId, Participation>,
    /// Every transfer a partner of this region takes part in (as payer, or as
    /// payee of a same-region transfer or a participation), for listing.
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    partner_transfers: OrdSet<(PartnerId, TransferId)>,
    /// Final participations (including tombstones) by when they finished.
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    participations_finished: OrdSet<(Timestamp, TransferId)>,
    #[serde(with = "crate::serde_seq")]
    idempotency: OrdMap<(PartnerId, IdempotencyKey), IdempotencyRecord>,
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    idempotency_expiry: OrdSet<(Timestamp, PartnerId, IdempotencyKey)>,
    /// One pending message per transfer, keyed by destination region.
    #[serde(with = "crate::serde_seq")]
    outbox: OrdMap<(RegionId, TransferId), OutboxMessage>,
    #[serde(with = "crate::serde_seq")]
    events: OrdMap<PartnerId, EventLog>,
    #[serde(with = "crate::serde_seq")]
    sessions: OrdMap<u64, Session>,
    /// Applied top-ups by reference, for [`TOP_UP_RETENTION_MS`].
    #[serde(with = "crate::serde_seq")]
    top_ups: OrdMap<TopUpRef, TopUpRecord>,
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    top_up_expiry: OrdSet<(Timestamp, TopUpRef)>,
    ledger: Ledger,
    /// Limits an operator set; a partner not here has [`PartnerLimits::DEFAULT`].
    #[serde(with = "crate::serde_seq")]
    partner_limits: OrdMap<PartnerId, PartnerLimits>,
    /// Each partner's use of the capped resources; a partner using none is
    /// not here.
    #[serde(with = "crate::serde_seq")]
    partner_usage: OrdMap<PartnerId, PartnerUsage>,
}

/// A state as snapshot images of formats 1 and 2 hold it, before the
/// partners' limits and usage: read, and converted with the usage counted
/// from the quotes and transfers and every partner at its default limits.
#[derive(Debug, Deserialize)]
pub struct StateV2 {
    region: RegionId,
    clock: Timestamp,
    next_transfer: u64,
    next_quote: u64,
    #[serde(with = "crate::serde_seq")]
    partners: OrdMap<PartnerId, Partner>,
    #[serde(with = "crate::serde_seq")]
    corridors: OrdMap<CorridorId, Corridor>,
    directory: Directory,
    #[serde(with = "crate::serde_seq")]
    quotes: OrdMap<QuoteId, QuoteRecord>,
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    quote_expiry: OrdSet<(Timestamp, QuoteId)>,
    #[serde(with = "crate::serde_seq")]
    transfers: OrdMap<TransferId, Transfer>,
    deadlines: OrdSet<(Timestamp, TransferId)>,
    transfers_finished: OrdSet<(Timestamp, TransferId)>,
    #[serde(with = "crate::serde_seq")]
    participations: OrdMap<TransferId, Participation>,
    partner_transfers: OrdSet<(PartnerId, TransferId)>,
    participations_finished: OrdSet<(Timestamp, TransferId)>,
    #[serde(with = "crate::serde_seq")]
    idempotency: OrdMap<(PartnerId, IdempotencyKey), IdempotencyRecord>,
    idempotency_expiry: OrdSet<(Timestamp, PartnerId, IdempotencyKey)>,
    #[serde(with = "crate::serde_seq")]
    outbox: OrdMap<(RegionId, TransferId), OutboxMessage>,
    #[serde(with = "crate::serde_seq")]
    events: OrdMap<PartnerId, EventLog>,
    #[serde(with = "crate::serde_seq")]
    sessions: OrdMap<u64, Session>,
    #[serde(with = "crate::serde_seq")]
    top_ups: OrdMap<TopUpRef, TopUpRecord>,
    top_up_expiry: OrdSet<(Timestamp, TopUpRef)>,
    ledger: Ledger,
}

impl From<StateV2> for StateV3 {
    fn from(old: StateV2) -> StateV3 {
        StateV3 {
            region: old.region,
            clock: old.clock,
            next_transfer: old.next_transfer,
            next_quote: old.next_quote,
            partners: old.partners,
            corridors: old.corridors,
            directory: old.directory,
            quotes: old.quotes,
            quote_expiry: old.quote_expiry,
            transfers: old.transfers,
            deadlines: old.deadlines,
            transfers_finished: old.transfers_finished,
            participations: old.participations,
            partner_transfers: old.partner_transfers,
            participations_finished: old.participations_finished,
            idempotency: old.idempotency,
            idempotency_expiry: old.idempotency_expiry,
            outbox: old.outbox,
            events: old.events,
            sessions: old.sessions,
            top_ups: old.top_ups,
            top_up_expiry: old.top_up_expiry,
            ledger: old.ledger,
            // Every partner at its default limits; the usage is counted
            // when the state is split (`State::from_v3`).
            partner_limits: OrdMap::new(),
            partner_usage: OrdMap::new(),
        }
    }
}

impl State {
    /// Split a state of format 3 (or older, converted) into the hot state and
    /// the history records of what it retained in memory: each listing,
    /// finished transfer and participation, idempotency key, top-up and
    /// event. Resolved ledger entries are dropped from memory without a
    /// movement: format 3 did not keep the balances after them, and their
    /// effect is in the balances already. The usage of the capped resources
    /// is counted again from the quotes and transfers (format 2 had none).
    pub fn from_v3(old: StateV3) -> (State, Vec<Record>) {
        let mut records = Vec::new();
        for (partner, id) in &old.partner_transfers {
            let at = match (old.transfers.get(id), old.participations.get(id)) {
                (Some(t), _) => t.view.created_at,
                (None, Some(p)) => p.created_at,
                (None, None) => continue,
            };
            records.push(Record::Listed { partner: partner.clone(), transfer: id.clone(), at });
        }
        let mut transfers = OrdMap::new();
        for (id, transfer) in old.transfers {
            if transfer.view.state.is_final() {
                records.push(Record::Transfer(Box::new(transfer)));
            } else {
                transfers.insert(id, transfer);
            }
        }
        let mut participations = OrdMap::new();
        for (id, participation) in old.participations {
            if participation.state.is_final() {
                records.push(Record::Participation { transfer: id, participation: Box::new(participation) });
            } else {
                participations.insert(id, participation);
            }
        }
        for ((partner, key), record) in old.idempotency {
            records.push(Record::Idempotency { partner, key, record: Box::new(record) });
        }
        for (reference, record) in old.top_ups {
            records.push(Record::TopUp { reference, record });
        }
        let mut event_cursors = OrdMap::new();
        for (partner, log) in old.events {
            event_cursors.insert(partner.clone(), log.next_cursor);
            for event in log.events {
                records.push(Record::Event { partner: partner.clone(), event });
            }
        }
        let mut ledger = old.ledger;
        ledger.forget_resolved();
        let mut state = State {
            region: old.region,
            clock: old.clock,
            next_transfer: old.next_transfer,
            next_quote: old.next_quote,
            partners: old.partners,
            corridors: old.corridors,
            directory: old.directory,
            quotes: old.quotes,
            quote_expiry: old.quote_expiry,
            transfers,
            deadlines: old.deadlines,
            participations,
            outbox: old.outbox,
            event_cursors,
            sessions: old.sessions,
            ledger,
            partner_limits: old.partner_limits,
            partner_usage: OrdMap::new(),
            settings: RegionSettings::default(),
            idempotency: BTreeMap::new(),
            top_ups: BTreeMap::new(),
            journal: Vec::new(),
            recent: RecentKeys::default(),
        };
        state.partner_usage = state.count_usage();
        (state, records)
    }
}

/// What applying a batch gave: one outcome per command, and the history
/// records to write at the batch's log index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchApplied {
    /// The outcomes, in command order.
    pub outcomes: Vec<Outcome>,
    /// The history records, in the order they happened.
    pub history: Vec<Record>,
}

/// What checking a transfer request against the state found: the quote it
/// uses, when it may go ahead.
struct Admissible {
    quote: Quote,
}

/// What a step of a command came to: its value, or the reject code that
/// refuses the command.
type OrReject<T> = Result<T, RejectCode>;

impl State {
    /// The empty state of `region`.
    pub fn new(region: RegionId) -> State {
        State {
            region,
            clock: Timestamp::EPOCH,
            next_transfer: 1,
            next_quote: 1,
            partners: OrdMap::new(),
            corridors: OrdMap::new(),
            directory: Directory::default(),
            quotes: OrdMap::new(),
            quote_expiry: OrdSet::new(),
            transfers: OrdMap::new(),
            deadlines: OrdSet::new(),
            participations: OrdMap::new(),
            outbox: OrdMap::new(),
            event_cursors: OrdMap::new(),
            sessions: OrdMap::new(),
            ledger: Ledger::new(),
            partner_limits: OrdMap::new(),
            partner_usage: OrdMap::new(),
            settings: RegionSettings::default(),
            idempotency: BTreeMap::new(),
            top_ups: BTreeMap::new(),
            journal: Vec::new(),
            recent: RecentKeys::default(),
        }
    }

    /// What operators set for the whole region.
    pub fn settings(&self) -> &RegionSettings {
        &self.settings
    }

    /// Apply a batch: each command in order at the batch's time, one
    /// outcome each, with `recall` answering for finished work as of the
    /// start of the batch. Returns the outcomes and the batch's history
    /// records; what finished in the batch leaves the hot state.
    pub fn apply_batch(&mut self, index: u64, batch: &Batch, recall: &dyn Recall) -> BatchApplied {
        self.recent.begin(index);
        let outcomes = batch.commands().iter().map(|command| self.apply(command, batch.now(), recall)).collect();
        BatchApplied { outcomes, history: self.settle() }
    }

    /// Apply one command at `now`. The only way the state changes. Leaves
    /// its records in the batch's journal for [`State::settle`].
    fn apply(&mut self, command: &Command, now: Timestamp, recall: &dyn Recall) -> Outcome {
        // Leaders' clocks may disagree; the state's clock only moves forward.
        let now = now.max(self.clock);
        self.clock = now;
        if let Some(replayed) = self.replay(command.id) {
            return replayed;
        }
        let outcome = self.execute(&command.body, now, recall);
        let moved = self.ledger.take_movements();
        self.journal.extend(moved.into_iter().map(|movement| Record::Movement(Box::new(movement))));
        match &command.body {
            CommandBody::ByOperator { operator, command } => self.journal.push(Record::Audited {
                at: now,
                operator: operator.clone(),
                command: command.clone(),
                outcome: Box::new(outcome.clone()),
            }),
            // Written before operators were named.
            body if body.is_operator() => self.journal.push(Record::Operator {
                at: now,
                command: Box::new(body.clone()),
                outcome: Box::new(outcome.clone()),
            }),
            _ => {}
        }
        self.remember(command.id, &outcome, now);
        outcome
    }

    /// End a batch: the ledger's movements join the journal, what finished
    /// leaves the hot state (history holds it now), and the journal is taken.
    fn settle(&mut self) -> Vec<Record> {
        let mut journal = std::mem::take(&mut self.journal);
        journal.extend(self.ledger.take_movements().into_iter().map(|movement| Record::Movement(Box::new(movement))));
        let mut keys = Vec::new();
        for record in &journal {
            match record {
                Record::Transfer(transfer) => {
                    self.transfers.remove(&transfer.view.id);
                }
                Record::Idempotency { partner, key, .. } => keys.push(recent::short(partner, key)),
                Record::Participation { transfer, .. } => {
                    self.participations.remove(transfer);
                }
                _ => {}
            }
        }
        self.ledger.forget_resolved();
        self.recent.finish(keys);
        self.idempotency.clear();
        self.top_ups.clear();
        journal
    }

    fn replay(&self, id: CommandId) -> Option<Outcome> {
        let session = self.sessions.get(&id.session)?;
        if id.sequence < session.forgotten_below {
            return Some(Outcome::Rejected(RejectCode::StaleCommand));
        }
        session.outcomes.get(&id.sequence).cloned()
    }

    fn remember(&mut self, id: CommandId, outcome: &Outcome, now: Timestamp) {
        let session = self.sessions.entry(id.session).or_default();
        session.last_active = now;
        session.outcomes.insert(id.sequence, outcome.clone());
        while session.outcomes.len() > SESSION_OUTCOMES_MAX {
            let oldest = session.outcomes.get_min().map(|(sequence, _)| *sequence).expect("more than the maximum");
            session.outcomes.remove(&oldest);
            session.forgotten_below = session.forgotten_below.max(oldest + 1);
        }
    }

    fn execute(&mut self, body: &CommandBody, now: Timestamp, recall: &dyn Recall) -> Outcome {
        let result = match body {
            CommandBody::UpsertPartner(config) => self.upsert_partner(config, now).map(|()| Outcome::Done),
            CommandBody::SetPartnerStatus { partner, status } => {
                self.set_partner_status(partner, *status, now).map(|()| Outcome::Done)
            }
            CommandBody::UpsertCorridor { corridor, terms } => {
                self.upsert_corridor(corridor, terms, now).map(|()| Outcome::Done)
            }
            CommandBody::SetCorridorStatus { corridor, status } => self
                .corridor_mut(corridor)
                .map(|c| {
                    c.status = *status;
                    c.updated_at = now;
                })
                .map(|()| Outcome::Done),
            CommandBody::SetFxRate { corridor, rate } => self.set_fx_rate(corridor, rate, now).map(|()| Outcome::Done),
            CommandBody::TopUp { partner, amount, reference } => {
                self.top_up(partner, *amount, reference, now, recall).map(|()| Outcome::Done)
            }
            CommandBody::UpsertPayeeRoute(route) => self.upsert_payee_route(route).map(|()| Outcome::Done),
            CommandBody::RemovePayeeRoute { prefix } => {
                self.directory.remove(prefix);
                Ok(Outcome::Done)
            }
            CommandBody::CreateQuote { partner, payee, amount } => {
                self.create_quote(partner, payee, *amount, now).map(Outcome::Quote)
            }
            CommandBody::CreateTransfer(request) => Ok(self.create_transfer(request, now, recall, false)),
            CommandBody::CreateFreshTransfer { request, fresh_through } => {
                let vouched = self.recent.vouches(*fresh_through);
                Ok(self.create_transfer(request, now, recall, vouched))
            }
            CommandBody::PrepareReplied { transfer, reply } => self.prepare_replied(transfer, *reply, now, recall),
            CommandBody::DecisionAcked { region, transfer } => {
                self.decision_acked(region, transfer);
                Ok(Outcome::Done)
            }
            CommandBody::Prepare(message) => Ok(Outcome::PrepareReply(self.prepare(message, now, recall))),
            CommandBody::Decide { transfer, decision } => self.decide(transfer, *decision, now, recall),
            CommandBody::Tick => Ok(Outcome::Ticked(self.tick(now))),
            CommandBody::SetPartnerLimits { partner, limits } => {
                self.set_partner_limits(partner, *limits).map(|()| Outcome::Done)
            }
            CommandBody::SetRegionSetting(setting) => {
                if self.settings.set(*setting) {
                    Ok(Outcome::Done)
                } else {
                    Err(RejectCode::ProtocolViolation)
                }
            }
            CommandBody::ByOperator { command, .. } => match **command {
                CommandBody::ByOperator { .. } => Err(RejectCode::ProtocolViolation),
                ref command if command.is_operator() => return self.execute(command, now, recall),
                _ => Err(RejectCode::ProtocolViolation),
            },
        };
        result.unwrap_or_else(Outcome::Rejected)
    }

    // ---- operators ------------------------------------------------------------

    fn position_account(config: &PartnerConfig) -> AccountId {
        AccountId::new(AccountOwner::Partner(config.id.clone()), config.currency)
    }

    fn upsert_partner(&mut self, config: &PartnerConfig, now: Timestamp) -> OrReject<()> {
        if config.region != self.region {
            return Err(RejectCode::PartnerNotInRegion);
        }
        if config.net_debit_cap.currency() != config.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        let account = Self::position_account(config);
        let policy = AccountPolicy::DebitsMustNotExceedCredits { net_debit_cap: config.net_debit_cap };
        match self.partners.get_mut(&config.id) {
            Some(existing) => {
                if existing.config.currency != config.currency {
                    return Err(RejectCode::CurrencyMismatch);
                }
                self.ledger.set_policy(&account, policy).map_err(ledger_code)?;
                existing.config = config.clone();
                existing.updated_at = now;
            }
            None => {
                self.ledger.open_account(account, policy).map_err(ledger_code)?;
                let partner = Partner { config: config.clone(), status: BusinessStatus::Active, updated_at: now };
                self.partners.insert(config.id.clone(), partner);
            }
        }
        Ok(())
    }

    fn set_partner_status(&mut self, partner: &PartnerId, status: BusinessStatus, now: Timestamp) -> OrReject<()> {
        let partner = self.partners.get_mut(partner).ok_or(RejectCode::PartnerNotFound)?;
        partner.status = status;
        partner.updated_at = now;
        Ok(())
    }

    fn set_partner_limits(&mut self, partner: &PartnerId, limits: PartnerLimits) -> OrReject<()> {
        if !self.partners.contains_key(partner) {
            return Err(RejectCode::PartnerNotFound);
        }
        if limits.validate().is_err() {
            // The admin API validates first; a command carrying invalid limits
            // did not come from it.
            return Err(RejectCode::ProtocolViolation);
        }
        if limits == PartnerLimits::DEFAULT {
            self.partner_limits.remove(partner);
        } else {
            self.partner_limits.insert(partner.clone(), limits);
        }
        Ok(())
    }

    /// Change a partner's usage by `change`; an entry at zero is removed, so
    /// the table holds only partners using something (and recounting it from
    /// scratch gives the same table).
    fn use_partner(&mut self, partner: &PartnerId, change: impl FnOnce(&mut PartnerUsage)) {
        let mut usage = self.partner_usage.get(partner).copied().unwrap_or_default();
        change(&mut usage);
        if usage == PartnerUsage::default() {
            self.partner_usage.remove(partner);
        } else {
            self.partner_usage.insert(partner.clone(), usage);
        }
    }

    /// Every partner's usage counted from the quotes and transfers.
    fn count_usage(&self) -> OrdMap<PartnerId, PartnerUsage> {
        let mut usage: OrdMap<PartnerId, PartnerUsage> = OrdMap::new();
        for record in self.quotes.values().filter(|r| !r.used) {
            usage.entry(record.quote.partner.clone()).or_default().quotes_outstanding += 1;
        }
        for transfer in self.transfers.values().filter(|t| !t.view.state.is_final()) {
            usage.entry(transfer.view.partner.clone()).or_default().transfers_in_flight += 1;
        }
        usage
    }

    fn corridor_mut(&mut self, id: &CorridorId) -> OrReject<&mut Corridor> {
        self.corridors.get_mut(id).ok_or(RejectCode::CorridorNotFound)
    }

    fn upsert_corridor(&mut self, id: &CorridorId, terms: &CorridorTerms, now: Timestamp) -> OrReject<()> {
        if id.source_region != self.region {
            return Err(RejectCode::RegionMismatch);
        }
        if terms.currency() != id.source_currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        match self.corridors.get_mut(id) {
            Some(corridor) => {
                corridor.terms = terms.clone();
                corridor.updated_at = now;
            }
            None => {
                self.corridors.insert(id.clone(), Corridor::new(id.clone(), terms.clone(), now));
            }
        }
        Ok(())
    }

    fn set_fx_rate(&mut self, id: &CorridorId, rate: &FxRate, now: Timestamp) -> OrReject<()> {
        self.corridor_mut(id)?.add_rate(rate.clone(), now)
    }

    fn top_up(
        &mut self,
        partner_id: &PartnerId,
        amount: Money,
        reference: &TopUpRef,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<()> {
        let partner = self.partners.get(partner_id).ok_or(RejectCode::PartnerNotFound)?;
        if amount.currency() != partner.config.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        if amount.is_zero() {
            return Err(RejectCode::AmountBelowMinimum);
        }
        // A reference is remembered for as long as history is kept.
        let recalled = || recall.top_up(reference).filter(|r| r.at.plus_ms(TOP_UP_RETENTION_MS) > now);
        if let Some(done) = self.top_ups.get(reference).cloned().or_else(recalled) {
            // The same reference again: a repeat if it is the same top-up.
            return if done.partner == *partner_id && done.amount == amount {
                Ok(())
            } else {
                Err(RejectCode::IdempotencyConflict)
            };
        }
        let position = Self::position_account(&partner.config);
        let settlement = self.open_mesh_account(AccountOwner::Settlement, amount.currency());
        let op = Op::Post { id: EntryId::TopUp(reference.clone()), debit: settlement, credit: position, amount };
        self.ledger.apply(&[op], now).map_err(|refused| ledger_code(refused.reason))?;
        let record = TopUpRecord { partner: partner_id.clone(), amount, at: now };
        self.top_ups.insert(reference.clone(), record.clone());
        self.journal.push(Record::TopUp { reference: reference.clone(), record });
        Ok(())
    }

    fn upsert_payee_route(&mut self, route: &PayeeRoute) -> OrReject<()> {
        if !self.directory.contains(&route.prefix) && self.directory.len() >= PAYEE_ROUTES_MAX {
            return Err(RejectCode::CapacityExceeded);
        }
        self.directory.upsert(route.clone());
        Ok(())
    }

    /// Open one of the mesh's own accounts (clearing, fees, settlement) if needed.
    fn open_mesh_account(&mut self, owner: AccountOwner, currency: Currency) -> AccountId {
        let id = AccountId::new(owner, currency);
        self.ledger.ensure_account(&id, AccountPolicy::Unrestricted);
        id
    }

    // ---- partners: quotes and transfers ----------------------------------------

    /// The partner, if it exists here, is active, and may pay.
    fn active_payer(&self, id: &PartnerId) -> OrReject<&Partner> {
        let partner = self.partners.get(id).ok_or(RejectCode::PartnerNotFound)?;
        if partner.status == BusinessStatus::Suspended {
            return Err(RejectCode::PartnerSuspended);
        }
        if !partner.config.role.can_pay() {
            return Err(RejectCode::PartnerRoleNotAllowed);
        }
        Ok(partner)
    }

    /// Whether this region can credit `payee`: the partner is here, active, may
    /// receive, and keeps its position in the payee's currency. Used for the
    /// payee side of both same-region transfers and cross-border prepares.
    fn check_payee(&self, payee: &PartnerId, currency: Currency) -> OrReject<AccountId> {
        let partner = self.partners.get(payee).ok_or(RejectCode::PayeeNotFound)?;
        if partner.status == BusinessStatus::Suspended {
            return Err(RejectCode::PartnerSuspended);
        }
        if !partner.config.role.can_receive() {
            return Err(RejectCode::PartnerRoleNotAllowed);
        }
        if partner.config.currency != currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        Ok(Self::position_account(&partner.config))
    }

    /// The quote `partner_id` would get for `amount` to the payee `qr`
    /// names at `now`, or why it would be refused, without changing anything.
    /// [`State::apply`] creates quotes through it, and the leader calls it
    /// before proposing, so a refused quote costs no log entry.
    pub fn check_quote(
        &self,
        partner_id: &PartnerId,
        qr: &QrPayload,
        amount: QuoteAmount,
        now: Timestamp,
    ) -> OrReject<Quote> {
        let partner = self.active_payer(partner_id)?;
        let payee = self.directory.resolve(qr).ok_or(RejectCode::PayeeNotFound)?;
        let corridor_id = CorridorId {
            source_region: self.region.clone(),
            source_currency: partner.config.currency,
            destination_region: payee.region.clone(),
            destination_currency: payee.currency,
        };
        let corridor = self.corridors.get(&corridor_id).ok_or(RejectCode::CorridorNotFound)?;
        if corridor_id.is_same_region() {
            self.check_payee(&payee.partner, payee.currency)?;
        }
        let priced = corridor.price(amount, now)?;
        if self.quotes.len() >= QUOTES_OUTSTANDING_MAX {
            return Err(RejectCode::CapacityExceeded);
        }
        let held = self.partner_usage(partner_id).quotes_outstanding;
        if held >= self.partner_limits(partner_id).quotes_outstanding_max {
            return Err(RejectCode::PartnerQuotesExhausted);
        }
        let mut expires_at = now.plus_ms(QUOTE_TTL_MS);
        if let Some(fx) = corridor.mid_rate(now) {
            expires_at = expires_at.min(fx.valid_until());
        }
        Ok(Quote {
            id: QuoteId::new(self.region.clone(), self.next_quote),
            partner: partner_id.clone(),
            payee,
            corridor: corridor_id,
            priced,
            created_at: now,
            expires_at,
        })
    }

    fn create_quote(
        &mut self,
        partner_id: &PartnerId,
        qr: &QrPayload,
        amount: QuoteAmount,
        now: Timestamp,
    ) -> OrReject<Quote> {
        let quote = self.check_quote(partner_id, qr, amount, now)?;
        self.next_quote += 1;
        self.quote_expiry.insert((quote.expires_at, quote.id.clone()));
        self.quotes.insert(quote.id.clone(), QuoteRecord { quote: quote.clone(), used: false });
        self.use_partner(partner_id, |u| u.quotes_outstanding += 1);
        Ok(quote)
    }

    /// Create a transfer for `request`, unless its key's record answers it;
    /// `fresh` when the key is known to have no record in history before
    /// the batches [`RecentKeys`] holds (the leader's word, vouched for).
    fn create_transfer(
        &mut self,
        request: &TransferRequest,
        now: Timestamp,
        recall: &dyn Recall,
        fresh: bool,
    ) -> Outcome {
        let key = (request.partner.clone(), request.idempotency_key.clone());
        // A fresh key recorded by none of the recent batches has no record
        // in history: only this batch's own records can answer it, and when
        // they hold none either, history is told it has none to read.
        let recall: &dyn Recall = if fresh && !self.recent.holds(&key.0, &key.1) {
            if !self.idempotency.contains_key(&key) {
                recall.unrecorded(&key.0, &key.1);
            }
            &NoHistory
        } else {
            recall
        };
        if let Some(answer) = self.replay_request(request, now, recall) {
            return answer;
        }
        let fingerprint = request.fingerprint();
        // A request refused before its transfer would exist changes nothing
        // and leaves no idempotency record: the leader answers these without
        // proposing them, and the state machine gives the same answer.
        let admissible = match self.check_transfer(request, now) {
            Ok(admissible) => admissible,
            Err(code) => return Outcome::Rejected(code),
        };
        let outcome = Outcome::Transfer(self.start_transfer(request, admissible, now));
        let record = IdempotencyRecord { fingerprint, outcome: outcome.clone(), at: now };
        self.journal.push(Record::Idempotency {
            partner: key.0.clone(),
            key: key.1.clone(),
            record: Box::new(record.clone()),
        });
        self.idempotency.insert(key, record);
        outcome
    }

    /// The answer recorded under a request's idempotency key, in this batch
    /// or in history, if it is still within the region's idempotency window
    /// ([`RegionSettings::idempotency_retention_ms`]) at
    /// `now`: the original outcome for the same body, a conflict for another.
    fn replay_request(&self, request: &TransferRequest, now: Timestamp, recall: &dyn Recall) -> Option<Outcome> {
        match self.look_up_request(request, now, recall) {
            KeyLookup::Answered(outcome) => Some(outcome),
            KeyLookup::Unrecorded | KeyLookup::Expired => None,
        }
    }

    fn look_up_request(&self, request: &TransferRequest, now: Timestamp, recall: &dyn Recall) -> KeyLookup {
        let key = (request.partner.clone(), request.idempotency_key.clone());
        let record = match self.idempotency.get(&key) {
            Some(record) => record.clone(),
            None => match recall.idempotency(&key.0, &key.1) {
                Some(record) => record,
                None => return KeyLookup::Unrecorded,
            },
        };
        if record.at.plus_ms(self.settings.idempotency_retention_ms()) <= now {
            return KeyLookup::Expired;
        }
        KeyLookup::Answered(if record.fingerprint == request.fingerprint() {
            record.outcome
        } else {
            Outcome::Rejected(RejectCode::IdempotencyConflict)
        })
    }

    /// How a transfer request not seen before would be answered without
    /// changing anything: its refusal, if it is refused before its transfer
    /// would exist (suspended partner, unknown, another partner's, expired or
    /// used quote, payee mismatch, suspended corridor, the partner at its cap
    /// of transfers in flight). An idempotency key already recorded is not
    /// looked at here: its record answers ([`State::replay_transfer_request`]).
    ///
    /// The leader calls it before proposing, so a request that would be
    /// refused costs no log entry; [`State::apply`] calls it again.
    pub fn check_transfer_request(&self, request: &TransferRequest, now: Timestamp) -> Result<(), RejectCode> {
        self.check_transfer(request, now).map(|_| ())
    }

    fn check_transfer(&self, request: &TransferRequest, now: Timestamp) -> OrReject<Admissible> {
        self.active_payer(&request.partner)?;
        let record = self
            .quotes
            .get(&request.quote)
            .filter(|r| r.quote.partner == request.partner)
            .ok_or(RejectCode::QuoteNotFound)?;
        if now >= record.quote.expires_at {
            return Err(RejectCode::QuoteExpired);
        }
        if record.used {
            return Err(RejectCode::QuoteAlreadyUsed);
        }
        let payee = self.directory.resolve(&request.payee).ok_or(RejectCode::PayeeNotFound)?;
        if payee != record.quote.payee {
            return Err(RejectCode::PayeeMismatch);
        }
        let quote = record.quote.clone();
        let corridor = self.corridors.get(&quote.corridor).ok_or(RejectCode::CorridorNotFound)?;
        if corridor.status == BusinessStatus::Suspended {
            return Err(RejectCode::CorridorSuspended);
        }
        let in_flight = self.partner_usage(&request.partner).transfers_in_flight;
        if in_flight >= self.partner_limits(&request.partner).transfers_in_flight_max {
            return Err(RejectCode::PartnerTransfersExhausted);
        }
        Ok(Admissible { quote })
    }

    /// Create the transfer of a request [`State::check_transfer`] admitted.
    /// A transfer whose money cannot move (insufficient position, daily cap)
    /// is recorded as aborted with its reason.
    fn start_transfer(&mut self, request: &TransferRequest, admissible: Admissible, now: Timestamp) -> TransferView {
        let Admissible { quote } = admissible;
        // From here on the transfer exists, whatever happens to its money.
        if let Some(r) = self.quotes.get_mut(&request.quote) {
            r.used = true;
        }
        self.use_partner(&request.partner, |u| u.quotes_outstanding -= 1);
        let id = TransferId::new(self.region.clone(), self.next_transfer);
        self.next_transfer += 1;
        self.journal.push(Record::Listed { partner: request.partner.clone(), transfer: id.clone(), at: now });
        if quote.corridor.is_same_region() {
            self.journal.push(Record::Listed { partner: quote.payee.partner.clone(), transfer: id.clone(), at: now });
        }
        let mut transfer = Transfer {
            view: TransferView {
                id: id.clone(),
                partner: request.partner.clone(),
                idempotency_key: request.idempotency_key.clone(),
                quote: quote.id.clone(),
                corridor: quote.corridor.clone(),
                priced: quote.priced,
                payee: quote.payee.clone(),
                payer_token: PayerToken::for_transfer(&id),
                state: CoordinatorState::Received,
                reason: None,
                created_at: now,
                updated_at: now,
                deadline: None,
            },
            payer: request.payer.clone(),
            cap_day: now.utc_day(),
        };
        let moved = if quote.corridor.is_same_region() {
            self.post_local(&transfer, now)
        } else {
            self.reserve(&transfer, now)
        };
        match moved {
            Ok(event) => {
                step_coordinator(&mut transfer, event, now);
                if event == CoordinatorEvent::Reserve {
                    self.start_prepare(&mut transfer, now);
                } else {
                    self.finish_coordinator(&transfer, now);
                }
            }
            Err(code) => {
                transfer.view.reason = Some(code);
                step_coordinator(&mut transfer, CoordinatorEvent::ReserveRejected, now);
                self.finish_coordinator(&transfer, now);
            }
        }
        let view = transfer.view.clone();
        self.transfers.insert(id, transfer);
        view
    }

    /// Post every leg of a same-region transfer in one ledger chain.
    fn post_local(&mut self, transfer: &Transfer, now: Timestamp) -> OrReject<CoordinatorEvent> {
        let view = &transfer.view;
        let payee_account = self.check_payee(&view.payee.partner, view.payee.currency)?;
        self.corridor_mut(&view.corridor)?.use_daily(view.priced.source, now)?;
        let mut ops = self.payer_legs(transfer, |id, debit, credit, amount| Op::Post { id, debit, credit, amount });
        let clearing = self.open_mesh_account(AccountOwner::Clearing(self.region.clone()), view.payee.currency);
        ops.push(Op::Post {
            id: leg(&view.id, Leg::Payout),
            debit: clearing,
            credit: payee_account,
            amount: view.priced.destination,
        });
        if let Err(refused) = self.ledger.apply(&ops, now) {
            self.release_daily(transfer);
            return Err(ledger_code(refused.reason));
        }
        Ok(CoordinatorEvent::PostLocal)
    }

    /// Reserve the payer's principal and fee for a cross-border transfer.
    fn reserve(&mut self, transfer: &Transfer, now: Timestamp) -> OrReject<CoordinatorEvent> {
        self.corridor_mut(&transfer.view.corridor)?.use_daily(transfer.view.priced.source, now)?;
        let ops = self.payer_legs(transfer, |id, debit, credit, amount| Op::Reserve { id, debit, credit, amount });
        if let Err(refused) = self.ledger.apply(&ops, now) {
            self.release_daily(transfer);
            return Err(ledger_code(refused.reason));
        }
        Ok(CoordinatorEvent::Reserve)
    }

    /// The payer's legs: principal into clearing against the payee's region, and
    /// the fee (if any) into fee revenue.
    fn payer_legs(
        &mut self,
        transfer: &Transfer,
        make: impl Fn(EntryId, AccountId, AccountId, Money) -> Op,
    ) -> Vec<Op> {
        let view = &transfer.view;
        let currency = view.priced.source.currency();
        let payer = AccountId::new(AccountOwner::Partner(view.partner.clone()), currency);
        let clearing =
            self.open_mesh_account(AccountOwner::Clearing(view.corridor.destination_region.clone()), currency);
        let mut ops = vec![make(leg(&view.id, Leg::Principal), payer.clone(), clearing, view.priced.source)];
        if !view.priced.fee.is_zero() {
            let fees = self.open_mesh_account(AccountOwner::Fees, currency);
            ops.push(make(leg(&view.id, Leg::Fee), payer, fees, view.priced.fee));
        }
        ops
    }

    /// The resolution of the payer's pending legs, in order.
    fn resolve_payer_legs(view: &TransferView, post: bool) -> Vec<Op> {
        let mut legs = vec![Leg::Principal];
        if !view.priced.fee.is_zero() {
            legs.push(Leg::Fee);
        }
        legs.into_iter()
            .map(|l| {
                let id = leg(&view.id, l);
                if post {
                    Op::PostPending { id }
                } else {
                    Op::VoidPending { id }
                }
            })
            .collect()
    }

    fn release_daily(&mut self, transfer: &Transfer) {
        if let Some(corridor) = self.corridors.get_mut(&transfer.view.corridor) {
            corridor.release_daily(transfer.view.priced.source, transfer.cap_day);
        }
    }

    fn start_prepare(&mut self, transfer: &mut Transfer, now: Timestamp) {
        self.use_partner(&transfer.view.partner, |u| u.transfers_in_flight += 1);
        let deadline = now.plus_ms(TRANSFER_PREPARE_DEADLINE_MS);
        transfer.view.deadline = Some(deadline);
        self.deadlines.insert((deadline, transfer.view.id.clone()));
        let view = &transfer.view;
        let message = PrepareMessage {
            transfer: view.id.clone(),
            corridor: view.corridor.clone(),
            source: view.priced.source,
            destination: view.priced.destination,
            rate: view.priced.rate,
            payee: view.payee.partner.clone(),
            merchant: view.payee.merchant.clone(),
            payer_token: view.payer_token.clone(),
            deadline,
        };
        self.outbox
            .insert((view.corridor.destination_region.clone(), view.id.clone()), OutboxMessage::Prepare(message));
        self.emit(&view.partner, view, EventKind::Reserved, view.priced.total_debit, now);
    }

    /// Record the events and retention entry of a transfer that reached a final state.
    fn finish_coordinator(&mut self, transfer: &Transfer, now: Timestamp) {
        let view = &transfer.view;
        debug_assert!(view.state.is_final());
        self.journal.push(Record::Transfer(Box::new(transfer.clone())));
        match view.state {
            CoordinatorState::Committed => {
                self.emit(&view.partner, view, EventKind::Committed, view.priced.total_debit, now);
                if view.corridor.is_same_region() {
                    self.emit(&view.payee.partner, view, EventKind::Credited, view.priced.destination, now);
                }
            }
            _ => self.emit(&view.partner, view, EventKind::Aborted, view.priced.total_debit, now),
        }
    }

    // ---- coordinator: answers from the payee region ------------------------------

    fn prepare_replied(
        &mut self,
        id: &TransferId,
        reply: PrepareReply,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<Outcome> {
        // A transfer no longer in the hot state finished: history has it,
        // and the answer is judged against its final state.
        let mut transfer = match self.transfers.get(id) {
            Some(transfer) => transfer.clone(),
            None => recall
                .transfer(id)
                .filter(|t| t.view.updated_at.plus_ms(FINISHED_TRANSFER_RECALL_MS) > now)
                .ok_or(RejectCode::TransferNotFound)?,
        };
        let event = match reply {
            PrepareReply::Prepared => CoordinatorEvent::Prepared,
            PrepareReply::Rejected(_) => CoordinatorEvent::PrepareRejected,
        };
        match coordinator_step(transfer.view.state, event) {
            Err(_) => return Err(RejectCode::ProtocolViolation),
            Ok(Step::Unchanged) => return Ok(Outcome::Done),
            Ok(Step::Move(_)) => {}
        }
        step_coordinator(&mut transfer, event, now);
        self.use_partner(&transfer.view.partner, |u| u.transfers_in_flight -= 1);
        let deadline = transfer.view.deadline.expect("a reserved transfer has a deadline");
        self.deadlines.remove(&(deadline, id.clone()));
        let key = (transfer.view.corridor.destination_region.clone(), id.clone());
        match reply {
            PrepareReply::Prepared if now < deadline => {
                self.decide_coordinator(&mut transfer, CoordinatorEvent::DecideCommit, now);
                self.outbox.insert(key, OutboxMessage::Decision { transfer: id.clone(), decision: Decision::Commit });
            }
            PrepareReply::Prepared => {
                // Prepared, but after the deadline: the coordinator aborts.
                transfer.view.reason = Some(RejectCode::DeadlineExceeded);
                self.decide_coordinator(&mut transfer, CoordinatorEvent::DecideAbort, now);
                self.outbox.insert(key, OutboxMessage::Decision { transfer: id.clone(), decision: Decision::Abort });
            }
            PrepareReply::Rejected(code) => {
                // The payee region recorded its refusal; no decision needs sending.
                transfer.view.reason = Some(code);
                self.void_payer(&mut transfer, now);
                self.outbox.remove(&key);
            }
        }
        self.transfers.insert(id.clone(), transfer);
        Ok(Outcome::Done)
    }

    /// Decide a prepared transfer: post or void the payer's legs.
    fn decide_coordinator(&mut self, transfer: &mut Transfer, event: CoordinatorEvent, now: Timestamp) {
        step_coordinator(transfer, event, now);
        let post = event == CoordinatorEvent::DecideCommit;
        let ops = Self::resolve_payer_legs(&transfer.view, post);
        self.ledger.apply(&ops, now).expect("a prepared transfer's pending legs resolve");
        if !post {
            self.release_daily(transfer);
        }
        self.finish_coordinator(transfer, now);
    }

    /// Void the payer's legs of a transfer that moved to aborted.
    fn void_payer(&mut self, transfer: &mut Transfer, now: Timestamp) {
        let ops = Self::resolve_payer_legs(&transfer.view, false);
        self.ledger.apply(&ops, now).expect("a reserved transfer's pending legs void");
        self.release_daily(transfer);
        self.finish_coordinator(transfer, now);
    }

    /// A decision reached its region: stop sending it. Only a decision is
    /// removed; an ack cannot clear a Prepare still waiting for its answer.
    fn decision_acked(&mut self, region: &RegionId, id: &TransferId) {
        let key = (region.clone(), id.clone());
        if matches!(self.outbox.get(&key), Some(OutboxMessage::Decision { .. })) {
            self.outbox.remove(&key);
        }
    }

    // ---- participant: messages from the payer region ------------------------------

    fn prepare(&mut self, message: &PrepareMessage, now: Timestamp, recall: &dyn Recall) -> PrepareReply {
        let id = &message.transfer;
        if let Some(existing) = self.participations.get(id).cloned().or_else(|| recall_participation(recall, id, now)) {
            // Delivered again or late: answer from the record, change nothing.
            let step = participant_step(Some(existing.state), ParticipantEvent::Prepare);
            debug_assert_eq!(step, Ok(Step::Unchanged));
            if existing.prepare.as_ref().is_some_and(|recorded| recorded != message) {
                // The same transfer id with other content: the coordinator broke the protocol.
                return PrepareReply::Rejected(RejectCode::ProtocolViolation);
            }
            return match existing.state {
                ParticipantState::Prepared | ParticipantState::Committed => PrepareReply::Prepared,
                ParticipantState::Aborted => {
                    PrepareReply::Rejected(existing.reason.unwrap_or(RejectCode::ProtocolViolation))
                }
                ParticipantState::Tombstone => PrepareReply::Rejected(RejectCode::AbortedBeforePrepare),
            };
        }
        let (state, reason) = match self.reserve_payout(message, now) {
            Ok(()) => (ParticipantState::Prepared, None),
            Err(code) => (ParticipantState::Aborted, Some(code)),
        };
        let event = if reason.is_none() { ParticipantEvent::Prepare } else { ParticipantEvent::PrepareRefused };
        debug_assert_eq!(participant_step(None, event), Ok(Step::Move(state)));
        self.journal.push(Record::Listed { partner: message.payee.clone(), transfer: id.clone(), at: now });
        let participation =
            Participation { state, reason, prepare: Some(message.clone()), created_at: now, updated_at: now };
        if state.is_final() {
            self.journal
                .push(Record::Participation { transfer: id.clone(), participation: Box::new(participation.clone()) });
        }
        self.participations.insert(id.clone(), participation);
        match reason {
            None => PrepareReply::Prepared,
            Some(code) => PrepareReply::Rejected(code),
        }
    }

    /// Validate a first Prepare and reserve the payee's credit.
    ///
    /// A first Prepare arriving at or after its deadline is refused: the
    /// coordinator aborts such a transfer anyway, and the rule also refuses a
    /// duplicate delayed beyond tombstone retention, which would otherwise
    /// hold a credit pending that no decision will ever resolve. A deadline
    /// more than [`PREPARE_DEADLINE_AHEAD_MAX_MS`] ahead is a protocol
    /// violation: no coordinator sets one, and honouring it would let another
    /// region keep this one's credit pending for as long as it liked.
    fn reserve_payout(&mut self, message: &PrepareMessage, now: Timestamp) -> OrReject<()> {
        if now >= message.deadline {
            return Err(RejectCode::DeadlineExceeded);
        }
        if message.deadline > now.plus_ms(PREPARE_DEADLINE_AHEAD_MAX_MS) {
            return Err(RejectCode::ProtocolViolation);
        }
        let corridor = &message.corridor;
        if corridor.destination_region != self.region
            || corridor.source_region == self.region
            || message.transfer.origin() != &corridor.source_region
        {
            return Err(RejectCode::RegionMismatch);
        }
        if message.destination.currency() != corridor.destination_currency
            || message.source.currency() != corridor.source_currency
        {
            return Err(RejectCode::CurrencyMismatch);
        }
        let payee_account = self.check_payee(&message.payee, corridor.destination_currency)?;
        let clearing = self
            .open_mesh_account(AccountOwner::Clearing(corridor.source_region.clone()), corridor.destination_currency);
        let op = Op::Reserve {
            id: leg(&message.transfer, Leg::Payout),
            debit: clearing,
            credit: payee_account,
            amount: message.destination,
        };
        self.ledger.apply(&[op], now).map_err(|refused| ledger_code(refused.reason))
    }

    fn decide(
        &mut self,
        id: &TransferId,
        decision: Decision,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<Outcome> {
        let current = match self.participations.get(id) {
            Some(participation) => Some(participation.state),
            None => recall_participation(recall, id, now).map(|p| p.state),
        };
        let event = match decision {
            Decision::Commit => ParticipantEvent::Commit,
            Decision::Abort => ParticipantEvent::Abort,
        };
        let to = match participant_step(current, event) {
            Err(_) => return Err(RejectCode::ProtocolViolation),
            Ok(Step::Unchanged) => return Ok(Outcome::Acked),
            Ok(Step::Move(to)) => to,
        };
        match to {
            ParticipantState::Tombstone => {
                let tombstone =
                    Participation { state: to, reason: None, prepare: None, created_at: now, updated_at: now };
                self.journal
                    .push(Record::Participation { transfer: id.clone(), participation: Box::new(tombstone.clone()) });
                self.participations.insert(id.clone(), tombstone);
            }
            ParticipantState::Committed | ParticipantState::Aborted => {
                let post = to == ParticipantState::Committed;
                let op = if post {
                    Op::PostPending { id: leg(id, Leg::Payout) }
                } else {
                    Op::VoidPending { id: leg(id, Leg::Payout) }
                };
                self.ledger.apply(&[op], now).expect("a prepared participation's payout resolves");
                let participation = self.participations.get_mut(id).expect("moved from prepared, so present");
                participation.state = to;
                participation.updated_at = now;
                let finished = participation.clone();
                self.journal
                    .push(Record::Participation { transfer: id.clone(), participation: Box::new(finished.clone()) });
                if post {
                    let prepare = finished.prepare.expect("a prepared participation has its prepare");
                    self.emit_credit(&prepare, now);
                }
            }
            ParticipantState::Prepared => unreachable!("no decision moves a transfer to prepared"),
        }
        Ok(Outcome::Acked)
    }

    fn emit_credit(&mut self, prepare: &PrepareMessage, now: Timestamp) {
        self.push_event(&prepare.payee, now, &prepare.transfer, EventKind::Credited, prepare.destination, None);
    }

    // ---- housekeeping -----------------------------------------------------------------

    fn tick(&mut self, now: Timestamp) -> TickReport {
        let mut report = TickReport::default();
        let mut budget = TICK_WORK_MAX;

        // Reserved transfers past their deadline: abort and tell the payee region.
        while budget > 0 {
            let Some((deadline, id)) = self.deadlines.get_min().cloned() else { break };
            if deadline > now {
                break;
            }
            budget -= 1;
            self.deadlines.remove(&(deadline, id.clone()));
            let mut transfer = self.transfers[&id].clone();
            transfer.view.reason = Some(RejectCode::DeadlineExceeded);
            step_coordinator(&mut transfer, CoordinatorEvent::DeadlineExpired, now);
            self.use_partner(&transfer.view.partner, |u| u.transfers_in_flight -= 1);
            self.void_payer(&mut transfer, now);
            let key = (transfer.view.corridor.destination_region.clone(), id.clone());
            self.outbox.insert(key, OutboxMessage::Decision { transfer: id.clone(), decision: Decision::Abort });
            self.transfers.insert(id, transfer);
            report.aborted += 1;
        }

        let mut purged = 0usize;
        let quotes_cutoff = now.minus_ms(QUOTE_RETENTION_AFTER_EXPIRY_MS);
        let (quotes, usage) = (&mut self.quotes, &mut self.partner_usage);
        purged += purge_before(&mut self.quote_expiry, quotes_cutoff, &mut budget, |(_, id)| {
            if let Some(gone) = quotes.remove(&id).filter(|r| !r.used) {
                let partner = gone.quote.partner;
                if let Some(mut held) = usage.get(&partner).copied() {
                    held.quotes_outstanding -= 1;
                    if held == PartnerUsage::default() {
                        usage.remove(&partner);
                    } else {
                        usage.insert(partner, held);
                    }
                }
            }
        });
        let idle = now.minus_ms(SESSION_IDLE_EXPIRY_MS);
        let stale: Vec<u64> =
            self.sessions.iter().filter(|(_, s)| s.last_active < idle).map(|(id, _)| *id).take(budget).collect();
        purged += stale.len();
        for id in stale {
            self.sessions.remove(&id);
        }
        report.purged = u32::try_from(purged).unwrap_or(u32::MAX);
        report
    }

    /// Whether a `Tick` at `now` would find work: a reserved transfer past
    /// its deadline, or a record past its retention. The leader proposes a
    /// `Tick` only then, so an idle region writes nothing.
    pub fn tick_due(&self, now: Timestamp) -> bool {
        let idle = now.minus_ms(SESSION_IDLE_EXPIRY_MS);
        due(&self.deadlines, now)
            || due(&self.quote_expiry, now.minus_ms(QUOTE_RETENTION_AFTER_EXPIRY_MS))
            || self.sessions.values().any(|s| s.last_active < idle)
    }

    fn emit(&mut self, partner: &PartnerId, view: &TransferView, kind: EventKind, amount: Money, now: Timestamp) {
        self.push_event(partner, now, &view.id, kind, amount, view.reason);
    }

    /// Append an event to a partner's stream: its cursor is the partner's
    /// next, 1, 2, 3, … with no gaps; the event itself is history.
    fn push_event(
        &mut self,
        partner: &PartnerId,
        now: Timestamp,
        transfer: &TransferId,
        kind: EventKind,
        amount: Money,
        reason: Option<RejectCode>,
    ) {
        let next = self.event_cursors.entry(partner.clone()).or_insert(1);
        let cursor = *next;
        *next += 1;
        let event = Event { cursor, at: now, transfer: transfer.clone(), kind, amount, reason };
        self.journal.push(Record::Event { partner: partner.clone(), event });
    }

    // ---- reads ---------------------------------------------------------------------------

    /// This state's region.
    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// The latest time applied.
    pub fn clock(&self) -> Timestamp {
        self.clock
    }

    /// A partner of this region.
    pub fn partner(&self, id: &PartnerId) -> Option<&Partner> {
        self.partners.get(id)
    }

    /// A partner's limits: the operator's, or [`PartnerLimits::DEFAULT`].
    pub fn partner_limits(&self, id: &PartnerId) -> PartnerLimits {
        self.partner_limits.get(id).copied().unwrap_or_default()
    }

    /// What a partner holds of the capped resources.
    pub fn partner_usage(&self, id: &PartnerId) -> PartnerUsage {
        self.partner_usage.get(id).copied().unwrap_or_default()
    }

    /// All partners of this region.
    pub fn partners(&self) -> impl Iterator<Item = &Partner> {
        self.partners.values()
    }

    /// A corridor whose source is this region.
    pub fn corridor(&self, id: &CorridorId) -> Option<&Corridor> {
        self.corridors.get(id)
    }

    /// All corridors whose source is this region.
    pub fn corridors(&self) -> impl Iterator<Item = &Corridor> {
        self.corridors.values()
    }

    /// The payee directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Resolve a QR payload to its payee.
    pub fn lookup_payee(&self, qr: &QrPayload) -> Option<Payee> {
        self.directory.resolve(qr)
    }

    /// An unexpired quote.
    pub fn quote(&self, id: &QuoteId) -> Option<&Quote> {
        self.quotes.get(id).map(|r| &r.quote)
    }

    /// A transfer this region coordinates that is not final yet, with the
    /// payer's personal data (finished ones are history).
    pub fn transfer(&self, id: &TransferId) -> Option<&Transfer> {
        self.transfers.get(id)
    }

    /// The transfers this region coordinates that are not final yet, in id order.
    pub fn transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.transfers.values()
    }

    /// The answer to a transfer request already applied under this
    /// idempotency key: its original outcome if the body matches, an
    /// idempotency conflict if not, or `None` for a key not seen (or no longer
    /// retained). Lets the leader answer a retry without a Raft round trip;
    /// applying the request again would give the same answer.
    pub fn replay_transfer_request(&self, request: &TransferRequest, recall: &dyn Recall) -> Option<Outcome> {
        self.replay_request(request, self.clock, recall)
    }

    /// What `request`'s idempotency key holds now (with `recall`, history
    /// as of now): the answer [`State::replay_transfer_request`] gives, or
    /// whether the key has no record at all or only one past the window.
    /// The leader proposes a key with no record at all as fresh
    /// ([`CommandBody::CreateFreshTransfer`]).
    pub fn look_up_transfer_request(&self, request: &TransferRequest, recall: &dyn Recall) -> KeyLookup {
        self.look_up_request(request, self.clock, recall)
    }

    /// A transfer as `partner` may see it, in flight or finished: one it
    /// pays, or one that credits it. Another partner's transfer is
    /// indistinguishable from a missing one.
    pub fn transfer_for(&self, partner: &PartnerId, id: &TransferId, recall: &dyn Recall) -> Option<PartnerTransfer> {
        let coordinated = self.transfers.get(id).cloned().or_else(|| {
            // Only this region's own transfers are coordinated here.
            (id.origin() == &self.region).then(|| recall.transfer(id)).flatten()
        });
        if let Some(transfer) = coordinated {
            let view = &transfer.view;
            let payee_here = view.corridor.is_same_region() && &view.payee.partner == partner;
            if &view.partner == partner || payee_here {
                return Some(PartnerTransfer::Coordinated(transfer));
            }
            return None;
        }
        let participation = self.participations.get(id).cloned().or_else(|| recall.participation(id))?;
        let payee = &participation.prepare.as_ref()?.payee;
        (payee == partner).then_some(PartnerTransfer::Participated(participation))
    }

    /// The transfers `partner` takes part in, in the order they were
    /// recorded here, after the page token `after`, at most `max`, each with
    /// its page token.
    pub fn transfers_of<H: HistoryRead>(
        &self,
        partner: &PartnerId,
        after: Option<&ListToken>,
        max: usize,
        history: &H,
    ) -> Vec<(ListToken, PartnerTransfer)> {
        history
            .listed(partner, after, max)
            .into_iter()
            .filter_map(|(token, id)| Some((token, self.transfer_for(partner, &id, history)?)))
            .collect()
    }

    /// A prepared participation waiting for its decision (finished ones are history).
    pub fn participation(&self, id: &TransferId) -> Option<&Participation> {
        self.participations.get(id)
    }

    /// The prepared participations, in transfer id order.
    pub fn participations(&self) -> impl Iterator<Item = (&TransferId, &Participation)> {
        self.participations.iter()
    }

    /// Messages waiting for `region`, in transfer order.
    pub fn outbox_for<'a>(&'a self, region: &'a RegionId) -> impl Iterator<Item = &'a OutboxMessage> + 'a {
        self.outbox.iter().filter(move |((r, _), _)| r == region).map(|(_, m)| m)
    }

    /// Every waiting message with its destination region.
    pub fn outbox(&self) -> impl Iterator<Item = (&RegionId, &OutboxMessage)> {
        self.outbox.iter().map(|((r, _), m)| (r, m))
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// A partner's position.
    pub fn position(&self, id: &PartnerId) -> Option<Position> {
        let partner = self.partners.get(id)?;
        let currency = partner.config.currency;
        let account = self.ledger.account(&Self::position_account(&partner.config))?;
        let signed = |units: i128| SignedMoney::from_units(units, currency).ok();
        let cap = partner.config.net_debit_cap;
        Some(Position {
            currency,
            posted: signed(account.net_posted())?,
            pending_debits: signed(account.debits_pending() as i128)?,
            pending_credits: signed(account.credits_pending() as i128)?,
            net_debit_cap: cap,
            available: signed(account.net_posted() - account.debits_pending() as i128 + i128::from(cap.units()))?,
        })
    }

    /// Up to `max` of a partner's events with a cursor above `after`, from
    /// history. An error if events after `after` were deleted by retention.
    pub fn events_after(
        &self,
        partner: &PartnerId,
        after: u64,
        max: usize,
        history: &dyn HistoryRead,
    ) -> Result<Vec<Event>, CursorExpired> {
        let last = self.last_cursor(partner);
        if after >= last {
            return Ok(Vec::new());
        }
        // At least one, to tell a deleted range from a live one.
        let mut events = history.events(partner, after, max.max(1));
        match events.first() {
            Some(first) if first.cursor == after + 1 => {
                events.truncate(max);
                Ok(events)
            }
            Some(first) => Err(CursorExpired { requested: after, oldest: first.cursor }),
            None => Err(CursorExpired { requested: after, oldest: last + 1 }),
        }
    }

    /// The cursor of a partner's newest event (0 if none).
    pub fn last_cursor(&self, partner: &PartnerId) -> u64 {
        self.event_cursors.get(partner).map_or(0, |next| next.saturating_sub(1))
    }

    /// Check every cross-structure invariant from scratch: the ledger's own;
    /// the hot state holds only work in flight (reserved transfers, prepared
    /// participations, pending ledger entries) and nothing of a batch; each
    /// in-flight transfer holds exactly its pending legs; every pending
    /// ledger entry belongs to an in-flight transfer (no money is stuck); the
    /// indexes match what they index.
    pub fn verify(&self) -> Result<(), String> {
        self.ledger.verify()?;
        if !self.journal.is_empty() || !self.idempotency.is_empty() || !self.top_ups.is_empty() {
            return Err("a batch's records were left in the state".into());
        }
        let mut expected_pending = std::collections::BTreeSet::new();
        for (id, transfer) in &self.transfers {
            let view = &transfer.view;
            if view.state != CoordinatorState::Reserved {
                return Err(format!("transfer {id}: state {:?} is not in flight but held in memory", view.state));
            }
            if !view.deadline.is_some_and(|d| self.deadlines.contains(&(d, id.clone()))) {
                return Err(format!("transfer {id}: deadline index disagrees with state {:?}", view.state));
            }
            let key = (view.corridor.destination_region.clone(), id.clone());
            if !matches!(self.outbox.get(&key), Some(OutboxMessage::Prepare(_))) {
                return Err(format!("transfer {id}: reserved without its prepare in the outbox"));
            }
            for op in Self::resolve_payer_legs(view, false) {
                if let Op::VoidPending { id: entry } = op {
                    expected_pending.insert(entry);
                }
            }
        }
        for (id, participation) in &self.participations {
            if participation.state != ParticipantState::Prepared {
                return Err(format!("participation {id}: state {:?} held in memory", participation.state));
            }
            if participation.prepare.is_none() {
                return Err(format!("participation {id}: no prepare recorded"));
            }
            expected_pending.insert(leg(id, Leg::Payout));
        }
        for entry in &expected_pending {
            if self.ledger.entry(entry).map(|e| e.status) != Some(EntryStatus::Pending) {
                return Err(format!("in-flight entry {entry:?} is not pending in the ledger"));
            }
        }
        if self.ledger.entries().any(|(_, e)| e.status != EntryStatus::Pending) {
            return Err("a resolved ledger entry is held in memory".into());
        }
        let pending_in_ledger = self.ledger.accounts().map(|(_, a)| a.debits_pending()).sum::<u128>();
        let expected_units: u128 =
            expected_pending.iter().filter_map(|e| self.ledger.entry(e)).map(|e| u128::from(e.amount.units())).sum();
        if pending_in_ledger != expected_units {
            return Err(format!(
                "pending debits {pending_in_ledger} differ from in-flight transfers' {expected_units}: money is stuck"
            ));
        }
        if self.deadlines.len() != self.transfers.len() {
            return Err("deadline index holds transfers that are not reserved".into());
        }
        if self.quotes.len() != self.quote_expiry.len()
            || self.quote_expiry.iter().any(|(at, id)| self.quotes.get(id).map(|q| q.quote.expires_at) != Some(*at))
        {
            return Err("quote expiry index disagrees with quotes".into());
        }
        if self.partner_usage != self.count_usage() {
            return Err("partners' usage disagrees with their quotes and transfers".into());
        }
        if self.event_cursors.values().any(|next| *next == 0) {
            return Err("an event cursor is zero".into());
        }
        Ok(())
    }
}

/// A finished participation history still answers for at `now`.
fn recall_participation(recall: &dyn Recall, id: &TransferId, now: Timestamp) -> Option<Participation> {
    recall.participation(id).filter(|p| p.updated_at.plus_ms(FINISHED_TRANSFER_RECALL_MS) > now)
}

fn leg(transfer: &TransferId, leg: Leg) -> EntryId {
    EntryId::Transfer { transfer: transfer.clone(), leg }
}

/// Move a coordinator transfer by a locally generated event, which must be legal.
fn step_coordinator(transfer: &mut Transfer, event: CoordinatorEvent, now: Timestamp) {
    match coordinator_step(transfer.view.state, event) {
        Ok(Step::Move(to)) => {
            transfer.view.state = to;
            transfer.view.updated_at = now;
        }
        other => panic!("transfer {}: local event {event:?} gave {other:?}", transfer.view.id),
    }
}

/// Remove index entries whose time is at or before `cutoff`, calling `forget`
/// for each, within the remaining budget.
fn purge_before<K: Ord + Clone + TimeKeyed>(
    index: &mut OrdSet<K>,
    cutoff: Timestamp,
    budget: &mut usize,
    mut forget: impl FnMut(K),
) -> usize {
    let mut purged = 0;
    while *budget > 0 {
        let Some(first) = index.get_min() else { break };
        if first.time() > cutoff {
            break;
        }
        let key = index.remove_min().expect("checked non-empty above");
        forget(key);
        *budget -= 1;
        purged += 1;
    }
    purged
}

/// Whether `index` holds a key at or before `cutoff` (what [`purge_before`]
/// would remove).
fn due<K: Ord + Clone + TimeKeyed>(index: &OrdSet<K>, cutoff: Timestamp) -> bool {
    index.get_min().is_some_and(|first| first.time() <= cutoff)
}

/// An index key that starts with a time.
trait TimeKeyed {
    fn time(&self) -> Timestamp;
}

impl<A> TimeKeyed for (Timestamp, A) {
    fn time(&self) -> Timestamp {
        self.0
    }
}

impl<A, B> TimeKeyed for (Timestamp, A, B) {
    fn time(&self) -> Timestamp {
        self.0
    }
}

/// The business code for a ledger refusal. Only some can arise from valid
/// commands; the rest would be bugs and are caught by debug assertions.
fn ledger_code(reason: LedgerReject) -> RejectCode {
    match reason {
        LedgerReject::ExceedsCredits | LedgerReject::PolicyViolatedByBalances => RejectCode::InsufficientPosition,
        LedgerReject::BalanceOverflow => RejectCode::BalanceOverflow,
        LedgerReject::CurrencyMismatch => RejectCode::CurrencyMismatch,
        other => {
            debug_assert!(false, "unexpected ledger refusal {other:?}");
            RejectCode::ProtocolViolation
        }
    }
}

mod recent;
#[cfg(test)]
mod tests;
