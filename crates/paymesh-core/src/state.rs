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

use imbl::{OrdMap, OrdSet, Vector};

use serde::{Deserialize, Serialize};

use crate::command::{
    Batch, Command, CommandBody, CommandId, Decision, Fingerprint, OutboxMessage, PayerDetails, PrepareMessage,
    PrepareReply, TickReport, TransferRequest,
};
use crate::corridor::{Corridor, CorridorId, CorridorTerms, QuoteAmount};
use crate::currency::Currency;
use crate::directory::{Directory, Payee, PayeeRoute};
use crate::fx::FxRate;
use crate::id::{IdempotencyKey, PartnerId, PayerToken, QrPayload, QuoteId, RegionId, TopUpRef, TransferId};
use crate::ledger::{AccountId, AccountOwner, AccountPolicy, EntryId, EntryStatus, Ledger, LedgerReject, Leg, Op};
use crate::limits::{
    EVENTS_RETAINED_PER_PARTNER, FINISHED_TRANSFER_RETENTION_MS, IDEMPOTENCY_RETENTION_MS, PAYEE_ROUTES_MAX,
    PREPARE_DEADLINE_AHEAD_MAX_MS, QUOTES_OUTSTANDING_MAX, QUOTE_RETENTION_AFTER_EXPIRY_MS, QUOTE_TTL_MS,
    SESSION_IDLE_EXPIRY_MS, SESSION_OUTCOMES_MAX, TICK_WORK_MAX, TOP_UP_RETENTION_MS, TRANSFER_PREPARE_DEADLINE_MS,
};
use crate::money::{Money, SignedMoney};
use crate::outcome::{Outcome, Position, Quote, RejectCode, TransferView};
use crate::partner::{Partner, PartnerConfig, PartnerLimits, Status};
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
#[derive(Clone, Copy, Debug)]
pub enum PartnerTransfer<'a> {
    /// Coordinated here: the partner pays it, or is the payee of a same-region transfer.
    Coordinated(&'a Transfer),
    /// Coordinated elsewhere; this region holds the payee's side.
    Participated(&'a Participation),
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

/// A partner's event log: the newest [`EVENTS_RETAINED_PER_PARTNER`] events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct EventLog {
    next_cursor: u64,
    #[serde(deserialize_with = "crate::serde_seq::collect_seq")]
    events: Vector<Event>,
}

/// A resumed stream asked for events older than the log retains.
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

/// A top-up already applied, remembered by its reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TopUpRecord {
    partner: PartnerId,
    amount: Money,
    at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IdempotencyRecord {
    fingerprint: Fingerprint,
    outcome: Outcome,
    at: Timestamp,
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

/// A region's replicated state.
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

impl From<StateV2> for State {
    fn from(old: StateV2) -> State {
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
            partner_limits: OrdMap::new(),
            partner_usage: OrdMap::new(),
        };
        state.partner_usage = state.count_usage();
        state
    }
}

/// What checking a transfer request against the state found: the quote it
/// uses, when it may go ahead.
struct Admissible {
    quote: Quote,
}

type Applied<T> = Result<T, RejectCode>;

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
            transfers_finished: OrdSet::new(),
            participations: OrdMap::new(),
            partner_transfers: OrdSet::new(),
            participations_finished: OrdSet::new(),
            idempotency: OrdMap::new(),
            idempotency_expiry: OrdSet::new(),
            outbox: OrdMap::new(),
            events: OrdMap::new(),
            sessions: OrdMap::new(),
            top_ups: OrdMap::new(),
            top_up_expiry: OrdSet::new(),
            ledger: Ledger::new(),
            partner_limits: OrdMap::new(),
            partner_usage: OrdMap::new(),
        }
    }

    /// Apply a batch: each command in order at the batch's time, one outcome each.
    pub fn apply_batch(&mut self, batch: &Batch) -> Vec<Outcome> {
        batch.commands().iter().map(|command| self.apply(command, batch.now())).collect()
    }

    /// Apply one command at `now`. The only way the state changes.
    pub fn apply(&mut self, command: &Command, now: Timestamp) -> Outcome {
        // Leaders' clocks may disagree; the state's clock only moves forward.
        let now = now.max(self.clock);
        self.clock = now;
        if let Some(replayed) = self.replay(command.id) {
            return replayed;
        }
        let outcome = self.execute(&command.body, now);
        self.remember(command.id, &outcome, now);
        outcome
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

    fn execute(&mut self, body: &CommandBody, now: Timestamp) -> Outcome {
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
                self.top_up(partner, *amount, reference, now).map(|()| Outcome::Done)
            }
            CommandBody::UpsertPayeeRoute(route) => self.upsert_payee_route(route).map(|()| Outcome::Done),
            CommandBody::RemovePayeeRoute { prefix } => {
                self.directory.remove(prefix);
                Ok(Outcome::Done)
            }
            CommandBody::CreateQuote { partner, payee, amount } => {
                self.create_quote(partner, payee, *amount, now).map(Outcome::Quote)
            }
            CommandBody::CreateTransfer(request) => Ok(self.create_transfer(request, now)),
            CommandBody::PrepareReplied { transfer, reply } => self.prepare_replied(transfer, *reply, now),
            CommandBody::DecisionAcked { region, transfer } => {
                self.decision_acked(region, transfer);
                Ok(Outcome::Done)
            }
            CommandBody::Prepare(message) => Ok(Outcome::PrepareReply(self.prepare(message, now))),
            CommandBody::Decide { transfer, decision } => self.decide(transfer, *decision, now),
            CommandBody::Tick => Ok(Outcome::Ticked(self.tick(now))),
            CommandBody::SetPartnerLimits { partner, limits } => {
                self.set_partner_limits(partner, *limits).map(|()| Outcome::Done)
            }
        };
        result.unwrap_or_else(Outcome::Rejected)
    }

    // ---- operators ------------------------------------------------------------

    fn position_account(config: &PartnerConfig) -> AccountId {
        AccountId::new(AccountOwner::Partner(config.id.clone()), config.currency)
    }

    fn upsert_partner(&mut self, config: &PartnerConfig, now: Timestamp) -> Applied<()> {
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
                let partner = Partner { config: config.clone(), status: Status::Active, updated_at: now };
                self.partners.insert(config.id.clone(), partner);
            }
        }
        Ok(())
    }

    fn set_partner_status(&mut self, partner: &PartnerId, status: Status, now: Timestamp) -> Applied<()> {
        let partner = self.partners.get_mut(partner).ok_or(RejectCode::PartnerNotFound)?;
        partner.status = status;
        partner.updated_at = now;
        Ok(())
    }

    fn set_partner_limits(&mut self, partner: &PartnerId, limits: PartnerLimits) -> Applied<()> {
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

    fn corridor_mut(&mut self, id: &CorridorId) -> Applied<&mut Corridor> {
        self.corridors.get_mut(id).ok_or(RejectCode::CorridorNotFound)
    }

    fn upsert_corridor(&mut self, id: &CorridorId, terms: &CorridorTerms, now: Timestamp) -> Applied<()> {
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

    fn set_fx_rate(&mut self, id: &CorridorId, rate: &FxRate, now: Timestamp) -> Applied<()> {
        self.corridor_mut(id)?.add_rate(rate.clone(), now)
    }

    fn top_up(&mut self, partner_id: &PartnerId, amount: Money, reference: &TopUpRef, now: Timestamp) -> Applied<()> {
        let partner = self.partners.get(partner_id).ok_or(RejectCode::PartnerNotFound)?;
        if amount.currency() != partner.config.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        if amount.is_zero() {
            return Err(RejectCode::AmountBelowMinimum);
        }
        if let Some(done) = self.top_ups.get(reference) {
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
        self.top_ups.insert(reference.clone(), TopUpRecord { partner: partner_id.clone(), amount, at: now });
        self.top_up_expiry.insert((now.plus_ms(TOP_UP_RETENTION_MS), reference.clone()));
        Ok(())
    }

    fn upsert_payee_route(&mut self, route: &PayeeRoute) -> Applied<()> {
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
    fn active_payer(&self, id: &PartnerId) -> Applied<&Partner> {
        let partner = self.partners.get(id).ok_or(RejectCode::PartnerNotFound)?;
        if partner.status == Status::Suspended {
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
    fn check_payee(&self, payee: &PartnerId, currency: Currency) -> Applied<AccountId> {
        let partner = self.partners.get(payee).ok_or(RejectCode::PayeeNotFound)?;
        if partner.status == Status::Suspended {
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
    ) -> Applied<Quote> {
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
    ) -> Applied<Quote> {
        let quote = self.check_quote(partner_id, qr, amount, now)?;
        self.next_quote += 1;
        self.quote_expiry.insert((quote.expires_at, quote.id.clone()));
        self.quotes.insert(quote.id.clone(), QuoteRecord { quote: quote.clone(), used: false });
        self.use_partner(partner_id, |u| u.quotes_outstanding += 1);
        Ok(quote)
    }

    fn create_transfer(&mut self, request: &TransferRequest, now: Timestamp) -> Outcome {
        let key = (request.partner.clone(), request.idempotency_key.clone());
        let fingerprint = request.fingerprint();
        if let Some(record) = self.idempotency.get(&key) {
            return if record.fingerprint == fingerprint {
                record.outcome.clone()
            } else {
                Outcome::Rejected(RejectCode::IdempotencyConflict)
            };
        }
        // A request refused before its transfer would exist changes nothing
        // and leaves no idempotency record: the leader answers these without
        // proposing them, and the state machine gives the same answer.
        let admissible = match self.check_transfer(request, now) {
            Ok(admissible) => admissible,
            Err(code) => return Outcome::Rejected(code),
        };
        let outcome = Outcome::Transfer(self.start_transfer(request, admissible, now));
        self.idempotency_expiry.insert((now.plus_ms(IDEMPOTENCY_RETENTION_MS), key.0.clone(), key.1.clone()));
        self.idempotency.insert(key, IdempotencyRecord { fingerprint, outcome: outcome.clone(), at: now });
        outcome
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

    fn check_transfer(&self, request: &TransferRequest, now: Timestamp) -> Applied<Admissible> {
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
        if corridor.status == Status::Suspended {
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
        self.partner_transfers.insert((view.partner.clone(), id.clone()));
        if view.corridor.is_same_region() {
            self.partner_transfers.insert((view.payee.partner.clone(), id.clone()));
        }
        self.transfers.insert(id, transfer);
        view
    }

    /// Post every leg of a same-region transfer in one ledger chain.
    fn post_local(&mut self, transfer: &Transfer, now: Timestamp) -> Applied<CoordinatorEvent> {
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
    fn reserve(&mut self, transfer: &Transfer, now: Timestamp) -> Applied<CoordinatorEvent> {
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
        self.transfers_finished.insert((now, view.id.clone()));
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

    fn prepare_replied(&mut self, id: &TransferId, reply: PrepareReply, now: Timestamp) -> Applied<Outcome> {
        let mut transfer = self.transfers.get(id).cloned().ok_or(RejectCode::TransferNotFound)?;
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

    fn prepare(&mut self, message: &PrepareMessage, now: Timestamp) -> PrepareReply {
        let id = &message.transfer;
        if let Some(existing) = self.participations.get(id) {
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
        if state.is_final() {
            self.participations_finished.insert((now, id.clone()));
        }
        self.partner_transfers.insert((message.payee.clone(), id.clone()));
        self.participations.insert(
            id.clone(),
            Participation { state, reason, prepare: Some(message.clone()), created_at: now, updated_at: now },
        );
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
    fn reserve_payout(&mut self, message: &PrepareMessage, now: Timestamp) -> Applied<()> {
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

    fn decide(&mut self, id: &TransferId, decision: Decision, now: Timestamp) -> Applied<Outcome> {
        let current = self.participations.get(id).map(|p| p.state);
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
                if post {
                    let prepare = participation.prepare.clone().expect("a prepared participation has its prepare");
                    self.emit_credit(&prepare, now);
                }
            }
            ParticipantState::Prepared => unreachable!("no decision moves a transfer to prepared"),
        }
        self.participations_finished.insert((now, id.clone()));
        Ok(Outcome::Acked)
    }

    fn emit_credit(&mut self, prepare: &PrepareMessage, now: Timestamp) {
        let log = self.events.entry(prepare.payee.clone()).or_default();
        push_event(log, now, &prepare.transfer, EventKind::Credited, prepare.destination, None);
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
        let idempotency = &mut self.idempotency;
        purged += purge_before(&mut self.idempotency_expiry, now, &mut budget, |(_, partner, key)| {
            idempotency.remove(&(partner, key));
        });
        let top_ups = &mut self.top_ups;
        purged += purge_before(&mut self.top_up_expiry, now, &mut budget, |(_, reference)| {
            top_ups.remove(&reference);
        });
        let cutoff = now.minus_ms(FINISHED_TRANSFER_RETENTION_MS);
        let (transfers, index) = (&mut self.transfers, &mut self.partner_transfers);
        purged += purge_before(&mut self.transfers_finished, cutoff, &mut budget, |(_, id)| {
            if let Some(gone) = transfers.remove(&id) {
                index.remove(&(gone.view.partner, id.clone()));
                index.remove(&(gone.view.payee.partner, id));
            }
        });
        let (participations, index) = (&mut self.participations, &mut self.partner_transfers);
        purged += purge_before(&mut self.participations_finished, cutoff, &mut budget, |(_, id)| {
            if let Some(prepare) = participations.remove(&id).and_then(|gone| gone.prepare) {
                index.remove(&(prepare.payee, id));
            }
        });
        let idle = now.minus_ms(SESSION_IDLE_EXPIRY_MS);
        let stale: Vec<u64> =
            self.sessions.iter().filter(|(_, s)| s.last_active < idle).map(|(id, _)| *id).take(budget).collect();
        budget -= stale.len();
        purged += stale.len();
        for id in stale {
            self.sessions.remove(&id);
        }
        purged += self.ledger.purge_resolved_before(cutoff, budget);
        report.purged = u32::try_from(purged).unwrap_or(u32::MAX);
        report
    }

    /// Whether a `Tick` at `now` would find work: a reserved transfer past
    /// its deadline, or a record past its retention. The leader proposes a
    /// `Tick` only then, so an idle region writes nothing.
    pub fn tick_due(&self, now: Timestamp) -> bool {
        let cutoff = now.minus_ms(FINISHED_TRANSFER_RETENTION_MS);
        let idle = now.minus_ms(SESSION_IDLE_EXPIRY_MS);
        due(&self.deadlines, now)
            || due(&self.quote_expiry, now.minus_ms(QUOTE_RETENTION_AFTER_EXPIRY_MS))
            || due(&self.idempotency_expiry, now)
            || due(&self.top_up_expiry, now)
            || due(&self.transfers_finished, cutoff)
            || due(&self.participations_finished, cutoff)
            || self.sessions.values().any(|s| s.last_active < idle)
            || self.ledger.has_resolved_before(cutoff)
    }

    fn emit(&mut self, partner: &PartnerId, view: &TransferView, kind: EventKind, amount: Money, now: Timestamp) {
        let log = self.events.entry(partner.clone()).or_default();
        push_event(log, now, &view.id, kind, amount, view.reason);
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

    /// A transfer this region coordinates, with the payer's personal data.
    pub fn transfer(&self, id: &TransferId) -> Option<&Transfer> {
        self.transfers.get(id)
    }

    /// All transfers this region coordinates, in id order.
    pub fn transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.transfers.values()
    }

    /// The answer to a transfer request already applied under this
    /// idempotency key: its original outcome if the body matches, an
    /// idempotency conflict if not, or `None` for a key not seen (or no longer
    /// retained). Lets the leader answer a retry without a Raft round trip;
    /// applying the request again would give the same answer.
    pub fn replay_transfer_request(&self, request: &TransferRequest) -> Option<Outcome> {
        let record = self.idempotency.get(&(request.partner.clone(), request.idempotency_key.clone()))?;
        Some(if record.fingerprint == request.fingerprint() {
            record.outcome.clone()
        } else {
            Outcome::Rejected(RejectCode::IdempotencyConflict)
        })
    }

    /// The transfers `partner` takes part in, in id order (creation order per
    /// origin region), starting after `after`.
    pub fn transfers_of<'a>(
        &'a self,
        partner: &'a PartnerId,
        after: Option<&TransferId>,
    ) -> impl Iterator<Item = PartnerTransfer<'a>> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some(id) => Bound::Excluded((partner.clone(), id.clone())),
            // "0" is the smallest region id there is (ids are [a-z0-9-] and
            // cannot start with '-'), so this bound is below every transfer.
            None => Bound::Included((partner.clone(), TransferId::new(RegionId::new("0").expect("valid"), 0))),
        };
        self.partner_transfers
            .range((start, Bound::Unbounded))
            .take_while(move |(owner, _)| owner == partner)
            .filter_map(move |(_, id)| self.transfer_for(partner, id))
    }

    /// A transfer as `partner` may see it: one it pays, or one that credits it.
    /// Another partner's transfer is indistinguishable from a missing one.
    pub fn transfer_for<'a>(&'a self, partner: &PartnerId, id: &TransferId) -> Option<PartnerTransfer<'a>> {
        if let Some(transfer) = self.transfers.get(id) {
            let view = &transfer.view;
            let payee_here = view.corridor.is_same_region() && &view.payee.partner == partner;
            if &view.partner == partner || payee_here {
                return Some(PartnerTransfer::Coordinated(transfer));
            }
        }
        let participation = self.participations.get(id)?;
        let prepare = participation.prepare.as_ref()?;
        (&prepare.payee == partner).then_some(PartnerTransfer::Participated(participation))
    }

    /// A transfer's record in this region as the payee's side.
    pub fn participation(&self, id: &TransferId) -> Option<&Participation> {
        self.participations.get(id)
    }

    /// All participations, in transfer id order.
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

    /// Up to `max` of a partner's events with a cursor above `after`. An error if
    /// events after `after` were already dropped by retention.
    pub fn events_after(&self, partner: &PartnerId, after: u64, max: usize) -> Result<Vec<Event>, CursorExpired> {
        let Some(log) = self.events.get(partner) else { return Ok(Vec::new()) };
        let oldest = log.events.front().map_or(log.next_cursor, |e| e.cursor);
        if after + 1 < oldest {
            return Err(CursorExpired { requested: after, oldest });
        }
        let skip = (after + 1).saturating_sub(oldest) as usize;
        // `Vector::skip` is O(log n); `iter().skip` would walk every retained event.
        Ok(log.events.skip(skip).iter().take(max).cloned().collect())
    }

    /// The cursor of a partner's newest event (0 if none).
    pub fn last_cursor(&self, partner: &PartnerId) -> u64 {
        self.events.get(partner).map_or(0, |log| log.next_cursor.saturating_sub(1))
    }

    /// Check every cross-structure invariant from scratch: the ledger's own; each
    /// in-flight transfer holds exactly its pending legs and each final one none;
    /// every pending ledger entry belongs to an in-flight transfer (no money is
    /// stuck); the indexes match what they index; event cursors have no gaps.
    pub fn verify(&self) -> Result<(), String> {
        self.ledger.verify()?;
        let mut expected_pending = std::collections::BTreeSet::new();
        for (id, transfer) in &self.transfers {
            let view = &transfer.view;
            let in_flight = view.state == CoordinatorState::Reserved;
            if in_flight != view.deadline.is_some_and(|d| self.deadlines.contains(&(d, id.clone()))) {
                return Err(format!("transfer {id}: deadline index disagrees with state {:?}", view.state));
            }
            if !matches!(
                view.state,
                CoordinatorState::Reserved | CoordinatorState::Committed | CoordinatorState::Aborted
            ) {
                return Err(format!("transfer {id}: transient state {:?} was stored", view.state));
            }
            let key = (view.corridor.destination_region.clone(), id.clone());
            let prepare_queued = matches!(self.outbox.get(&key), Some(OutboxMessage::Prepare(_)));
            if in_flight != prepare_queued {
                return Err(format!("transfer {id}: outbox prepare {prepare_queued} but state {:?}", view.state));
            }
            if in_flight {
                for op in Self::resolve_payer_legs(view, false) {
                    if let Op::VoidPending { id: entry } = op {
                        expected_pending.insert(entry);
                    }
                }
            }
        }
        for (id, participation) in &self.participations {
            if participation.state == ParticipantState::Prepared {
                expected_pending.insert(leg(id, Leg::Payout));
            }
            if participation.state != ParticipantState::Tombstone && participation.prepare.is_none() {
                return Err(format!("participation {id}: no prepare recorded"));
            }
        }
        for entry in &expected_pending {
            if self.ledger.entry(entry).map(|e| e.status) != Some(EntryStatus::Pending) {
                return Err(format!("in-flight entry {entry:?} is not pending in the ledger"));
            }
        }
        let pending_in_ledger = self.ledger.accounts().map(|(_, a)| a.debits_pending()).sum::<u128>();
        let expected_units: u128 =
            expected_pending.iter().filter_map(|e| self.ledger.entry(e)).map(|e| u128::from(e.amount.units())).sum();
        if pending_in_ledger != expected_units {
            return Err(format!(
                "pending debits {pending_in_ledger} differ from in-flight transfers' {expected_units}: money is stuck"
            ));
        }
        if self.deadlines.len()
            != self.transfers.values().filter(|t| t.view.state == CoordinatorState::Reserved).count()
        {
            return Err("deadline index holds transfers that are not reserved".into());
        }
        if self.quotes.len() != self.quote_expiry.len()
            || self.quote_expiry.iter().any(|(at, id)| self.quotes.get(id).map(|q| q.quote.expires_at) != Some(*at))
        {
            return Err("quote expiry index disagrees with quotes".into());
        }
        if self.idempotency.len() != self.idempotency_expiry.len() {
            return Err("idempotency expiry index disagrees with records".into());
        }
        let mut expected = std::collections::BTreeSet::new();
        for (id, transfer) in self.transfers.iter() {
            expected.insert((transfer.view.partner.clone(), id.clone()));
            if transfer.view.corridor.is_same_region() {
                expected.insert((transfer.view.payee.partner.clone(), id.clone()));
            }
        }
        for (id, participation) in self.participations.iter() {
            if let Some(prepare) = &participation.prepare {
                expected.insert((prepare.payee.clone(), id.clone()));
            }
        }
        if !self.partner_transfers.iter().cloned().eq(expected) {
            return Err("the partner transfer index differs from the transfers".into());
        }
        if self.top_ups.len() != self.top_up_expiry.len() {
            return Err("top-up expiry index disagrees with records".into());
        }
        if self.partner_usage != self.count_usage() {
            return Err("partners' usage disagrees with their quotes and transfers".into());
        }
        for (partner, log) in &self.events {
            let cursors: Vec<u64> = log.events.iter().map(|e| e.cursor).collect();
            if cursors.windows(2).any(|w| w[1] != w[0] + 1) || cursors.last().is_some_and(|c| c + 1 != log.next_cursor)
            {
                return Err(format!("partner {partner}: event cursors have a gap"));
            }
        }
        Ok(())
    }
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

fn push_event(
    log: &mut EventLog,
    now: Timestamp,
    transfer: &TransferId,
    kind: EventKind,
    amount: Money,
    reason: Option<RejectCode>,
) {
    if log.next_cursor == 0 {
        log.next_cursor = 1;
    }
    log.events.push_back(Event { cursor: log.next_cursor, at: now, transfer: transfer.clone(), kind, amount, reason });
    log.next_cursor += 1;
    while log.events.len() > EVENTS_RETAINED_PER_PARTNER {
        log.events.pop_front();
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

#[cfg(test)]
mod tests;
