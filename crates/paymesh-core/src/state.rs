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
//!
//! This file holds the state's tables, the images older formats are read
//! from, and the apply loop with its dispatch of each command; the
//! commands' logic is in submodules by concern, each an `impl State`:
//! `operators` (partners, corridors, rates, top-ups, routes),
//! `coordinator` (quotes, transfer requests and the paying side of a
//! transfer), `participant` (the payee side), `tick` (what time decides),
//! `reads` (what readers ask) and `verify` (the invariants), with `recent`
//! (the idempotency keys of the latest batches).

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet, Vector};

use self::outcomes::Outcomes;
use self::recent::RecentKeys;
pub use self::recent::RECENT_KEYS_MAX;
pub use self::settlement::SettlementBook;

use serde::{Deserialize, Serialize};

use crate::command::{
    Batch, Command, CommandBody, CommandId, Decision, Fingerprint, OutboxMessage, OutboxMessageV1, PayerDetails,
    PrepareMessage, PrepareReply, RefundPrepare, RefundRequest, TickReport, TransferRequest,
};
use crate::corridor::{Corridor, CorridorId, CorridorTerms, QuoteAmount, RefundRate};
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
use crate::outcome::{Outcome, Position, Quote, RefundView, RejectCode, TransferView};
use crate::partner::{BusinessStatus, Partner, PartnerConfig, PartnerLimits};
use crate::reconcile::{ReconcileStep, Reconciliation, RemotePhase, RemoteRecord};
use crate::settings::{RegionSettings, RegionSettingsV1, RegionSettingsV2};
use crate::settlement::SettlementWindow;
use crate::time::Timestamp;
use crate::transfer::{
    coordinator_step, participant_step, CoordinatorEvent, CoordinatorState, ParticipantEvent, ParticipantState, Step,
};
use crate::version::Protocol;
use crate::webhook::Webhook;

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

/// A refund this region coordinates: the payee partner who asked is here.
/// For a payment made in this region, it commits at once; for one paid
/// from another region, it is reserved here and that region (the payer's)
/// is asked to credit the payer back, through the same two phases as a
/// payment with the roles swapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// Everything the partner may see.
    pub view: RefundView,
    /// The region of the payment's payer (this one for a same-region
    /// payment).
    pub payer_region: RegionId,
    /// The payment's payer partner, when it is in this region (a
    /// same-region payment); another region's payer is that region's to
    /// know.
    pub payer: Option<PartnerId>,
}

/// The payer region's side of a refund another region coordinates: the
/// payer's credit, pending until the decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundParticipation {
    /// Where it stands.
    pub state: ParticipantState,
    /// Why it was refused or aborted, if it was.
    pub reason: Option<RejectCode>,
    /// The Prepare as received.
    pub prepare: RefundPrepare,
    /// The payment's payer partner, credited back (none when the payment
    /// was not found and the Prepare was refused).
    pub payer: Option<PartnerId>,
    /// When this region first recorded it.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
}

/// What a payment's committed refunds gave back so far: in its destination
/// currency (what its payee gave) and its source currency (what its payer
/// got). Never more than the payment's destination amount and principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundTotals {
    /// Taken from the payee, in the destination currency.
    pub debited: Money,
    /// Given to the payer, in the source currency.
    pub credited: Money,
}

/// A refund as one of this region's partners sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartnerRefund {
    /// Coordinated here: the partner, a payment's payee, asked for it.
    Asked(Refund),
    /// Coordinated by the payee's region; this one credits the partner,
    /// the payment's payer.
    Credited(RefundParticipation),
    /// Coordinated here, of a payment made here: it credited the partner,
    /// the payment's payer.
    CreditedHere(Refund),
}

/// An entry of a partner's list ([`State::listed_of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listing {
    /// A transfer it pays or is paid by.
    Transfer(PartnerTransfer),
    /// A refund it asked for or is credited by.
    Refund(PartnerRefund),
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
    /// The payer was credited back by a refund of its payment (the event's
    /// transfer is the payment; its amount is what came back).
    Refunded,
    /// A refund the partner asked for committed: its position was debited
    /// (the event's transfer is the refund).
    RefundDebited,
    /// A refund the partner asked for aborted (the event's transfer is the
    /// refund; its reason says why).
    RefundAborted,
    /// The payer's cancel of its payment did not give the payment back
    /// (the event's transfer is the payment; its reason says why, its
    /// amount is the payment's principal). A cancel that succeeds comes as
    /// `Refunded`.
    CancelRefused,
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
    outcomes: Outcomes,
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
    /// Refunds this region coordinates that are not final yet.
    #[serde(with = "crate::serde_seq")]
    refunds: OrdMap<TransferId, Refund>,
    /// This region's sides of other regions' refunds, prepared and waiting
    /// for their decision.
    #[serde(with = "crate::serde_seq")]
    refund_participations: OrdMap<TransferId, RefundParticipation>,
    /// The open settlement window's figures so far.
    settlement: SettlementBook,
    /// What operators set for the whole region.
    settings: RegionSettings,
    /// Payers' cancels of payments paid to other regions whose outcome is
    /// not known yet, by the cancel's id.
    #[serde(with = "crate::serde_seq")]
    cancels: OrdMap<TransferId, PendingCancel>,
    /// Partners' webhooks ([`crate::webhook`]).
    #[serde(with = "crate::serde_seq")]
    webhooks: OrdMap<PartnerId, Webhook>,
    /// Corridors that refund at another rate than
    /// [`RefundRate::Original`], by corridor.
    #[serde(with = "crate::serde_seq")]
    refund_rates: OrdMap<CorridorId, RefundRate>,
    /// The restore this state was seeded by and its reconciliation with
    /// the other regions ([`crate::reconcile`]); none if it never was.
    reconciliation: Option<Box<Reconciliation>>,
    /// The protocol the region runs ([`crate::version`]): raised by
    /// [`CommandBody::RaiseProtocol`], never lowered. Not in the state's
    /// own encoding (images of protocol 1 are those of the releases before
    /// protocols, format 11): an image of a later protocol carries it
    /// beside the state, and the state's digest covers it.
    #[serde(skip)]
    protocol: Protocol,
    /// Settlement windows closed or settled in the batch being applied.
    /// Empty between batches.
    #[serde(skip)]
    windows: BTreeMap<u64, SettlementWindow>,
    /// Idempotency keys first answered in the batch being applied (history
    /// answers for earlier ones). Empty between batches.
    #[serde(skip)]
    idempotency: BTreeMap<(PartnerId, IdempotencyKey), IdempotencyRecord>,
    /// Top-ups applied in the batch being applied. Empty between batches.
    #[serde(skip)]
    top_ups: BTreeMap<TopUpRef, TopUpRecord>,
    /// Fund-outs applied in the batch being applied. Empty between batches.
    #[serde(skip)]
    fund_outs: BTreeMap<TopUpRef, TopUpRecord>,
    /// Payments' refund totals changed in the batch being applied. Empty
    /// between batches.
    #[serde(skip)]
    refunded: BTreeMap<TransferId, RefundTotals>,
    /// The history records of the batch being applied. Empty between batches.
    #[serde(skip)]
    journal: Vec<Record>,
    /// Transfers started and finished by one command of the batch being
    /// applied (a same-region payment, a refused reservation), as their
    /// sequence number and the place of their record in `journal`, in
    /// order: they go straight to their record, never into `transfers`,
    /// and the later commands of the batch find them there
    /// ([`State::coordinated`]). Empty between batches.
    #[serde(skip)]
    finished_here: Vec<(u64, usize)>,
    /// The idempotency keys recorded by the latest batches (see
    /// [`recent`]); a cache of history, in no image and no comparison.
    #[serde(skip)]
    recent: RecentKeys,
}

/// A payer's cancel of a payment paid to another region, until its outcome
/// is known: the payee's region refused it, or the refund it started
/// credited the payer back or aborted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCancel {
    /// The payer partner that asked.
    pub partner: PartnerId,
    /// The payment.
    pub original: TransferId,
    /// The payee's region, asked.
    pub region: RegionId,
    /// What the payment's principal was: what a successful cancel gives
    /// back.
    pub principal: Money,
    /// When the payee's region answered that it started the refund.
    pub accepted_at: Option<Timestamp>,
}

/// A state as snapshot images of format 10 hold it, before restores'
/// reconciliations: the fields of format 9, then the corridors' refund
/// rates. Read, and converted with no restore behind it.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub struct StateV10 {
    v9: StateV9,
    #[serde(with = "crate::serde_seq")]
    refund_rates: OrdMap<CorridorId, RefundRate>,
}

impl From<StateV10> for State {
    fn from(old: StateV10) -> State {
        State { refund_rates: old.refund_rates, ..State::from(old.v9) }
    }
}

/// A state as snapshot images of format 9 hold it, before corridors'
/// refund rates: the fields of format 8, then the webhooks. Read, and
/// converted with every corridor refunding at the original rate.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub struct StateV9 {
    v8: StateV8,
    #[serde(with = "crate::serde_seq")]
    webhooks: OrdMap<PartnerId, Webhook>,
}

impl From<StateV9> for State {
    fn from(old: StateV9) -> State {
        State { webhooks: old.webhooks, ..State::from(old.v8) }
    }
}

/// A state as snapshot images of format 8 hold it, before webhooks: the
/// fields of format 4, then the refunds in flight, the settlement book,
/// the settings and the cancels pending. Read, and converted with no
/// webhook registered.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub struct StateV8 {
    v4: StateV4,
    #[serde(with = "crate::serde_seq")]
    refunds: OrdMap<TransferId, Refund>,
    #[serde(with = "crate::serde_seq")]
    refund_participations: OrdMap<TransferId, RefundParticipation>,
    settlement: SettlementBook,
    settings: RegionSettings,
    #[serde(with = "crate::serde_seq")]
    cancels: OrdMap<TransferId, PendingCancel>,
}

impl From<StateV8> for State {
    fn from(old: StateV8) -> State {
        State {
            refunds: old.refunds,
            refund_participations: old.refund_participations,
            settlement: old.settlement,
            settings: old.settings,
            cancels: old.cancels,
            ..State::from(old.v4)
        }
    }
}

/// A state as snapshot images of format 7 hold it, before cancels: the
/// fields of format 6 (the settings of then among them), then the open
/// settlement window's book. Read, and converted with no cancel pending and
/// the default cancel window.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub struct StateV7 {
    v6: StateV6,
    settlement: SettlementBook,
}

impl From<StateV7> for State {
    fn from(old: StateV7) -> State {
        State { settlement: old.settlement, ..State::from(old.v6) }
    }
}

/// A state as snapshot images of format 6 hold it, before settlement
/// windows: read, and converted with window 1 open since the region began
/// (its figures measured from zero) and decisions in flight naming window
/// 0, before windows. The fields of format 4, then the settings and the
/// refunds in flight (a nested struct encodes as its fields in order).
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub struct StateV6 {
    v4: StateV4,
    settings: RegionSettingsV2,
    #[serde(with = "crate::serde_seq")]
    refunds: OrdMap<TransferId, Refund>,
    #[serde(with = "crate::serde_seq")]
    refund_participations: OrdMap<TransferId, RefundParticipation>,
}

impl From<StateV6> for State {
    fn from(old: StateV6) -> State {
        State {
            settings: old.settings.into(),
            refunds: old.refunds,
            refund_participations: old.refund_participations,
            ..State::from(old.v4)
        }
    }
}

/// A state as snapshot images of format 5 hold it, before refunds: the
/// fields of format 4, then the settings of then. Read, and converted with
/// none in flight and the default refund window.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub struct StateV5 {
    v4: StateV4,
    settings: RegionSettingsV1,
}

impl From<StateV5> for State {
    fn from(old: StateV5) -> State {
        State { settings: old.settings.into(), ..State::from(old.v4) }
    }
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
    outbox: OrdMap<(RegionId, TransferId), OutboxMessageV1>,
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
        let settlement = SettlementBook::since(&old.ledger, old.clock);
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
            outbox: old.outbox.into_iter().map(|(key, message)| (key, OutboxMessage::from(message))).collect(),
            event_cursors: old.event_cursors,
            sessions: old.sessions,
            ledger: old.ledger,
            partner_limits: old.partner_limits,
            partner_usage: old.partner_usage,
            settings: RegionSettings::default(),
            refunds: OrdMap::new(),
            refund_participations: OrdMap::new(),
            settlement,
            cancels: OrdMap::new(),
            webhooks: OrdMap::new(),
            refund_rates: OrdMap::new(),
            reconciliation: None,
            windows: BTreeMap::new(),
            idempotency: BTreeMap::new(),
            top_ups: BTreeMap::new(),
            fund_outs: BTreeMap::new(),
            refunded: BTreeMap::new(),
            journal: Vec::new(),
            finished_here: Vec::new(),
            recent: RecentKeys::default(),
            protocol: Protocol::FIRST,
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
    outbox: OrdMap<(RegionId, TransferId), OutboxMessageV1>,
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
    outbox: OrdMap<(RegionId, TransferId), OutboxMessageV1>,
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
        let settlement = SettlementBook::since(&ledger, old.clock);
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
            outbox: old.outbox.into_iter().map(|(key, message)| (key, OutboxMessage::from(message))).collect(),
            event_cursors,
            sessions: old.sessions,
            ledger,
            partner_limits: old.partner_limits,
            partner_usage: OrdMap::new(),
            settings: RegionSettings::default(),
            refunds: OrdMap::new(),
            refund_participations: OrdMap::new(),
            settlement,
            cancels: OrdMap::new(),
            webhooks: OrdMap::new(),
            refund_rates: OrdMap::new(),
            reconciliation: None,
            windows: BTreeMap::new(),
            idempotency: BTreeMap::new(),
            top_ups: BTreeMap::new(),
            fund_outs: BTreeMap::new(),
            refunded: BTreeMap::new(),
            journal: Vec::new(),
            finished_here: Vec::new(),
            recent: RecentKeys::default(),
            protocol: Protocol::FIRST,
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
            refunds: OrdMap::new(),
            refund_participations: OrdMap::new(),
            settlement: SettlementBook::default(),
            cancels: OrdMap::new(),
            webhooks: OrdMap::new(),
            refund_rates: OrdMap::new(),
            reconciliation: None,
            windows: BTreeMap::new(),
            idempotency: BTreeMap::new(),
            top_ups: BTreeMap::new(),
            fund_outs: BTreeMap::new(),
            refunded: BTreeMap::new(),
            journal: Vec::new(),
            finished_here: Vec::new(),
            recent: RecentKeys::default(),
            protocol: Protocol::FIRST,
        }
    }

    /// Skip `gap` numbers of every sequence a partner holds numbers of
    /// (transfer ids, quote ids, each partner's event cursor), once, when a
    /// region is restored from a backup: the region issued numbers after
    /// the backup's index that the backup does not hold, and partners may
    /// hold them (an acknowledged transfer id, a quote, a stream's cursor),
    /// so the restored region must not issue them again for something else.
    ///
    /// Settlement window numbers are not skipped: the open window's number
    /// is stamped on the commit decisions already sent under it, which
    /// other regions count by it, so it cannot change; and deferring the
    /// skip to the next window would need a field the state image does not
    /// have.
    pub fn skip_numbers(&mut self, gap: u64) {
        self.next_transfer = self.next_transfer.saturating_add(gap);
        self.next_quote = self.next_quote.saturating_add(gap);
        let partners: Vec<PartnerId> = self.partners.keys().cloned().collect();
        for partner in partners {
            let next = self.event_cursors.entry(partner).or_insert(1);
            *next = next.saturating_add(gap);
        }
    }

    /// What operators set for the whole region.
    pub fn settings(&self) -> &RegionSettings {
        &self.settings
    }

    /// The protocol the region runs ([`crate::version`]).
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The same state at `protocol`: how an image of a later protocol,
    /// which carries it beside the state's encoding, is read back.
    pub fn at_protocol(self, protocol: Protocol) -> State {
        State { protocol, ..self }
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
                command: Box::new(command.for_audit()),
                outcome: Box::new(outcome.clone()),
            }),
            // Written before operators were named.
            body if body.is_operator() => self.journal.push(Record::Operator {
                at: now,
                command: Box::new(body.for_audit()),
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
        for record in &journal {
            match record {
                Record::Transfer(transfer) => {
                    self.transfers.remove(&transfer.view.id);
                }
                Record::Participation { transfer, .. } => {
                    self.participations.remove(transfer);
                }
                Record::Refund(refund) => {
                    self.refunds.remove(&refund.view.id);
                }
                Record::RefundParticipation { refund, .. } => {
                    self.refund_participations.remove(refund);
                }
                _ => {}
            }
        }
        self.ledger.forget_resolved();
        self.finished_here.clear();
        self.recent.finish();
        self.idempotency.clear();
        self.top_ups.clear();
        self.fund_outs.clear();
        self.refunded.clear();
        self.windows.clear();
        journal
    }

    fn replay(&self, id: CommandId) -> Option<Outcome> {
        let session = self.sessions.get(&id.session)?;
        if id.sequence < session.forgotten_below {
            return Some(Outcome::Rejected(RejectCode::StaleCommand));
        }
        session.outcomes.get(id.sequence).cloned()
    }

    fn remember(&mut self, id: CommandId, outcome: &Outcome, now: Timestamp) {
        let session = self.sessions.entry(id.session).or_default();
        session.last_active = now;
        session.outcomes.insert(id.sequence, outcome.clone());
        while session.outcomes.len() > SESSION_OUTCOMES_MAX {
            let oldest = session.outcomes.pop_oldest().expect("more than the maximum");
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
            CommandBody::FundOut { partner, amount, reference } => {
                self.fund_out(partner, *amount, reference, now, recall).map(|()| Outcome::Done)
            }
            CommandBody::UpsertPayeeRoute(route) => self.upsert_payee_route(route).map(|()| Outcome::Done),
            CommandBody::RemovePayeeRoute { prefix } => {
                self.directory.remove(prefix);
                Ok(Outcome::Done)
            }
            CommandBody::CreateQuote { partner, payee, amount } => {
                self.create_quote(partner, payee, *amount, now).map(|quote| Outcome::Quote(Arc::new(quote)))
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
            CommandBody::Decide { transfer, decision } => self.decide(transfer, *decision, 0, now, recall),
            CommandBody::DecideInWindow { transfer, decision, window } => {
                self.decide(transfer, *decision, *window, now, recall)
            }
            CommandBody::CloseSettlementWindow => Ok(self.close_window(now)),
            CommandBody::RecordSettlement { window, account, reference } => {
                self.record_settlement(*window, account, reference, now, recall)
            }
            CommandBody::Tick => Ok(Outcome::Ticked(self.tick(now))),
            CommandBody::Reconciled { region, from, records, to } => {
                self.reconciled(region, from, records, to, now, recall)
            }
            CommandBody::SetPartnerLimits { partner, limits } => {
                self.set_partner_limits(partner, *limits).map(|()| Outcome::Done)
            }
            CommandBody::CreateRefund(request) => Ok(self.create_refund(request, now, recall)),
            CommandBody::PrepareRefund(message) => Ok(Outcome::PrepareReply(self.prepare_refund(message, now, recall))),
            CommandBody::ReverseTransfer { transfer, .. } => self.reverse_transfer(transfer, now, recall),
            CommandBody::CancelTransfer { partner, transfer } => self.cancel_transfer(partner, transfer, now, recall),
            CommandBody::RequestCancel(message) => Ok(Outcome::PrepareReply(self.request_cancel(message, now, recall))),
            CommandBody::CreatePayment(request) => Ok(self.create_payment(request, now, recall, false)),
            CommandBody::CreateFreshPayment { request, fresh_through } => {
                let vouched = self.recent.vouches(*fresh_through);
                Ok(self.create_payment(request, now, recall, vouched))
            }
            CommandBody::CreateKeyedQuote(request) => Ok(self.create_keyed_quote(request, now, recall)),
            CommandBody::RaiseProtocol { to } => {
                if *to > self.protocol {
                    self.protocol = *to;
                    Ok(Outcome::Done)
                } else {
                    Err(RejectCode::ProtocolViolation)
                }
            }
            CommandBody::SetRegionSetting(setting) => {
                if self.settings.set(*setting) {
                    Ok(Outcome::Done)
                } else {
                    Err(RejectCode::ProtocolViolation)
                }
            }
            CommandBody::SetWebhook { partner, url, secret } => {
                self.set_webhook(partner, url, secret, now).map(|()| Outcome::Done)
            }
            CommandBody::RemoveWebhook { partner } => {
                self.webhooks.remove(partner).map(|_| Outcome::Done).ok_or(RejectCode::WebhookNotFound)
            }
            CommandBody::ReplayWebhook { partner, after } => {
                self.replay_webhook(partner, *after, now).map(|()| Outcome::Done)
            }
            CommandBody::WebhookDelivered { partner, generation, through } => {
                self.webhook_delivered(partner, *generation, *through, None, now).map(|()| Outcome::Done)
            }
            CommandBody::WebhookDeadLettered { partner, generation, through, reason } => {
                self.webhook_delivered(partner, *generation, *through, Some(reason), now).map(|()| Outcome::Done)
            }
            CommandBody::SetCorridorRefundRate { corridor, rate } => {
                self.set_corridor_refund_rate(corridor, *rate, now).map(|()| Outcome::Done)
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

    fn emit(&mut self, partner: &PartnerId, view: &TransferView, kind: EventKind, amount: Money, now: Timestamp) {
        self.push_event(partner, now, &view.id, kind, amount, view.reason);
    }

    /// Append an event to a partner's stream: its cursor is the partner's
    /// next, 1, 2, 3, … with no gaps (but the one a restore skips,
    /// [`State::skip_numbers`]); the event itself is history.
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
    let view = &mut transfer.view;
    step_coordinated(&view.id, &mut view.state, &mut view.updated_at, event, now);
}

/// Move what this region coordinates (a transfer `id`, or a refund) by an
/// event of its own making, which the coordinator's table must allow (a
/// bug otherwise).
fn step_coordinated(
    id: &TransferId,
    state: &mut CoordinatorState,
    updated_at: &mut Timestamp,
    event: CoordinatorEvent,
    now: Timestamp,
) {
    match coordinator_step(*state, event) {
        Ok(Step::Move(to)) => {
            *state = to;
            *updated_at = now;
        }
        other => panic!("{id}: local event {event:?} gave {other:?}"),
    }
}

/// The event a payee region's answer is for what this region coordinates
/// in `state` (a transfer or a refund): `None` for an answer delivered
/// again or late, which moves nothing; a protocol violation for one that
/// contradicts the record.
fn answer_event(state: CoordinatorState, reply: PrepareReply) -> OrReject<Option<CoordinatorEvent>> {
    let event = match reply {
        PrepareReply::Prepared | PrepareReply::PreparedCredit(_) => CoordinatorEvent::Prepared,
        PrepareReply::Rejected(_) => CoordinatorEvent::PrepareRejected,
    };
    match coordinator_step(state, event) {
        Err(_) => Err(RejectCode::ProtocolViolation),
        Ok(Step::Unchanged) => Ok(None),
        Ok(Step::Move(_)) => Ok(Some(event)),
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

/// The business code for a ledger refusal a valid command can meet: a payer
/// short of its position and cap (`ExceedsCredits`), a cap lowered below
/// what the position already uses (`PolicyViolatedByBalances`), a balance at
/// its bound (`BalanceOverflow`). Every other refusal is one the state
/// machine checked for before asking the ledger (currencies, amounts,
/// accounts, entry ids, pending legs): meeting one is a bug in this code,
/// the same on every replica, and applying on would leave the books other
/// than the checks said. It panics, in release builds too, so the region
/// stops applying rather than answer with a made-up refusal.
#[track_caller]
fn ledger_code(reason: LedgerReject) -> RejectCode {
    match reason {
        LedgerReject::ExceedsCredits | LedgerReject::PolicyViolatedByBalances => RejectCode::InsufficientPosition,
        LedgerReject::BalanceOverflow => RejectCode::BalanceOverflow,
        impossible => panic!("the ledger refused what the state machine had checked: {impossible:?}"),
    }
}

/// Move a participation by the participant's table for an event of this
/// region's own making, which the table must allow (a bug otherwise).
fn step_participant(
    id: &TransferId,
    from: Option<ParticipantState>,
    event: ParticipantEvent,
) -> Step<ParticipantState> {
    participant_step(from, event).unwrap_or_else(|illegal| panic!("transfer {id}: {illegal}"))
}

mod cancel;
mod coordinator;
mod operators;
mod outcomes;
mod participant;
mod reads;
mod recent;
mod reconcile;
mod refund;
mod settlement;
#[cfg(test)]
mod tests;
mod tick;
mod verify;
mod webhooks;
