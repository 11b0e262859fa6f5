//! A partner's admission on the leader: the bound on its requests in
//! flight, the idempotency fast path, and refusals answered from the
//! applied state.
//!
//! It is a cache and a scheduler: every decision about money is made again
//! by the state machine when the command is applied. The fast path answers a
//! retried transfer request from the applied state without a Raft round
//! trip, and joins a retry to an identical request still in flight; both
//! give the answer applying the request again would give.
//!
//! A quote, transfer, refund or one-call payment request that the state
//! machine would refuse without changing anything (an unknown, foreign, expired or used quote, a payee
//! mismatch, a suspended partner or corridor, the partner at one of its
//! caps) is refused here, from the applied state, through the very checks
//! `apply` makes (`State::check_quote`, `State::check_transfer_request`): it
//! is neither proposed nor logged nor remembered, and no idempotency record
//! is made, so a retry under the same key with a valid quote is a new
//! request. A key with a record is answered by the record, and a key with
//! another request in flight is left to the state machine. If the applied
//! state changes between this check and the apply (a quote used, a limit
//! raised), the state machine's answer is the one that counts.
//!
//! The driver (`crate::actors::partner`) asks [`Admission::admit`] first,
//! then [`Admission::quote`] or [`Admission::transfer`] with the applied
//! state as it stands; it proposes what they return to propose, and when
//! the outcome comes it calls [`Admission::completed`], which hands back the
//! joined waiters to answer with the same outcome.

use std::collections::HashMap;

use paymesh_core::command::{CommandBody, Fingerprint, PaymentRequest, QuoteRequest, RefundRequest, TransferRequest};
use paymesh_core::history::Recall;
use paymesh_core::id::{IdempotencyKey, RegionId};
use paymesh_core::state::KeyLookup;
use paymesh_core::{Outcome, State, Timestamp};

/// A partner's requests waiting for their outcome, at most.
pub const PARTNER_IN_FLIGHT_MAX: usize = 8_192;

/// What to do with a partner's request.
#[derive(Debug)]
pub enum Step<W> {
    /// Answer it now with this outcome (a record's, or a refusal's).
    Answer(W, Outcome),
    /// Nothing: an identical request in flight will answer it.
    Joined,
    /// Propose `body`; give its outcome to `waiter` and report it to
    /// [`Admission::completed`] with `ticket`.
    Propose {
        /// The command.
        body: CommandBody,
        /// Who waits for it.
        waiter: W,
        /// What to report when it completes.
        ticket: Ticket,
    },
}

/// What a proposed request reports when it completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The key it registered, whose joined waiters it answers.
    owns: Option<IdempotencyKey>,
}

impl Ticket {
    /// Whether other requests may join this one ([`Admission::completed`]
    /// may hand back waiters for it).
    pub fn joined(&self) -> bool {
        self.owns.is_some()
    }
}

/// A partner's admission on the leader. See the module documentation.
#[derive(Clone, Debug)]
pub struct Admission<W> {
    in_flight: usize,
    in_flight_max: usize,
    /// Transfer requests in flight by key: their fingerprint and who waits.
    pending: HashMap<IdempotencyKey, (Fingerprint, Vec<W>)>,
}

impl<W> Default for Admission<W> {
    fn default() -> Self {
        Admission::new(PARTNER_IN_FLIGHT_MAX)
    }
}

impl<W> Admission<W> {
    /// An admission holding at most `in_flight_max` requests in flight.
    pub fn new(in_flight_max: usize) -> Admission<W> {
        Admission { in_flight: 0, in_flight_max, pending: HashMap::new() }
    }

    /// Requests proposed and not completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether another request may be taken in: refused (the reason, for
    /// RESOURCE_EXHAUSTED) at the bound on requests in flight.
    pub fn admit(&self) -> Result<(), &'static str> {
        if self.in_flight >= self.in_flight_max {
            return Err("too many of this partner's requests are in flight");
        }
        Ok(())
    }

    /// A quote request (`body`, a `CreateQuote`): refused now if `state`
    /// refuses it at `now`, otherwise proposed.
    pub fn quote(&mut self, body: CommandBody, waiter: W, state: &State, now: Timestamp) -> Step<W> {
        if let CommandBody::CreateQuote { partner, payee, amount } = &body {
            if let Err(code) = state.check_quote(partner, payee, *amount, now.max(state.clock())) {
                return Step::Answer(waiter, Outcome::Rejected(code));
            }
        }
        self.propose(body, waiter, None)
    }

    /// A quote request under an idempotency key: answered from its key's
    /// record if it has one (so a retry's answer never depends on the
    /// rate of the moment); otherwise as [`Admission::quote`].
    pub fn keyed_quote(
        &mut self,
        request: QuoteRequest,
        waiter: W,
        state: &State,
        recall: &dyn Recall,
        now: Timestamp,
    ) -> Step<W> {
        if let KeyLookup::Answered(outcome) = state.look_up_quote_request(&request, recall) {
            return Step::Answer(waiter, outcome);
        }
        if let Err(code) = state.check_quote(&request.partner, &request.payee, request.amount, now.max(state.clock())) {
            return Step::Answer(waiter, Outcome::Rejected(code));
        }
        self.propose(CommandBody::CreateKeyedQuote(request), waiter, None)
    }

    /// Another command of the partner's: proposed as it is.
    pub fn other(&mut self, body: CommandBody, waiter: W) -> Step<W> {
        self.propose(body, waiter, None)
    }

    /// A transfer request: answered from its record if `state` (applied
    /// through log index `applied`; with `recall`, history as of now) holds
    /// one; joined to an identical request in flight; refused now if
    /// `state` refuses it at `now` and nothing else is in flight under its
    /// key; otherwise proposed, as a
    /// [`CommandBody::CreateFreshTransfer`] that says its key had no
    /// record through `applied` (so the replicas need not look for one in
    /// history).
    pub fn transfer(
        &mut self,
        request: TransferRequest,
        waiter: W,
        (state, applied): (&State, u64),
        recall: &dyn Recall,
        now: Timestamp,
    ) -> Step<W> {
        // History is written before the state that follows it is published:
        // `recall` holds at least every batch through `applied`. Only a key
        // never recorded is fresh; one whose record is past the window is
        // left to the replicas' own lookup (its record stays in history).
        let unrecorded = match state.look_up_transfer_request(&request, recall) {
            KeyLookup::Answered(outcome) => return Step::Answer(waiter, outcome),
            KeyLookup::Unrecorded => true,
            KeyLookup::Expired => false,
        };
        let fresh = |request| {
            if unrecorded {
                CommandBody::CreateFreshTransfer { request, fresh_through: applied }
            } else {
                CommandBody::CreateTransfer(request)
            }
        };
        // A different body under the same key is proposed on its own and
        // decided by the state machine; only the request that registered the
        // key hands its answer to the waiters and unregisters it.
        let fingerprint = request.fingerprint();
        match self.pending.get_mut(&request.idempotency_key) {
            Some((pending, waiters)) if *pending == fingerprint => {
                waiters.push(waiter);
                Step::Joined
            }
            Some(_) => self.propose(fresh(request), waiter, None),
            None => {
                if let Err(code) = state.check_transfer_request(&request, now.max(state.clock())) {
                    return Step::Answer(waiter, Outcome::Rejected(code));
                }
                let key = request.idempotency_key.clone();
                self.pending.insert(key.clone(), (fingerprint, Vec::new()));
                self.propose(fresh(request), waiter, Some(key))
            }
        }
    }

    /// A refund request: answered from its key's record if `state` (with
    /// `recall`, history as of now) holds one; refused now if `state`
    /// refuses it at `now`; otherwise proposed. A retry while the first is
    /// in flight is proposed too, and answered by the record the first
    /// leaves (refunds are rare; no joining).
    pub fn refund(
        &mut self,
        request: RefundRequest,
        waiter: W,
        state: &State,
        recall: &dyn Recall,
        now: Timestamp,
    ) -> Step<W> {
        if let KeyLookup::Answered(outcome) = state.look_up_refund_request(&request, recall) {
            return Step::Answer(waiter, outcome);
        }
        if !self.pending.contains_key(&request.idempotency_key) {
            if let Err(code) = state.check_refund_request(&request, now.max(state.clock()), recall) {
                return Step::Answer(waiter, Outcome::Rejected(code));
            }
        }
        self.propose(CommandBody::CreateRefund(request), waiter, None)
    }

    /// A one-call payment, as [`Admission::refund`]: answered from its
    /// key's record if `state` (applied through log index `applied`; with
    /// `recall`, history as of now) holds one; refused now if `state`
    /// refuses it at `now` (its price, or its bound) and no transfer
    /// request is in flight under its key; otherwise proposed, as a
    /// [`CommandBody::CreateFreshPayment`] when its key had no record
    /// through `applied` (as [`Admission::transfer`] does).
    pub fn payment(
        &mut self,
        request: PaymentRequest,
        waiter: W,
        (state, applied): (&State, u64),
        recall: &dyn Recall,
        now: Timestamp,
    ) -> Step<W> {
        let unrecorded = match state.look_up_payment_request(&request, recall) {
            KeyLookup::Answered(outcome) => return Step::Answer(waiter, outcome),
            KeyLookup::Unrecorded => true,
            KeyLookup::Expired => false,
        };
        if !self.pending.contains_key(&request.idempotency_key) {
            if let Err(code) = state.check_payment(&request, now.max(state.clock())) {
                return Step::Answer(waiter, Outcome::Rejected(code));
            }
        }
        let body = if unrecorded {
            CommandBody::CreateFreshPayment { request, fresh_through: applied }
        } else {
            CommandBody::CreatePayment(request)
        };
        self.propose(body, waiter, None)
    }

    fn propose(&mut self, body: CommandBody, waiter: W, owns: Option<IdempotencyKey>) -> Step<W> {
        self.in_flight += 1;
        Step::Propose { body, waiter, ticket: Ticket { owns } }
    }

    /// A proposed request completed (applied, or refused): the waiters
    /// joined to it, to answer with its outcome too.
    pub fn completed(&mut self, ticket: Ticket) -> Vec<W> {
        self.in_flight = self.in_flight.saturating_sub(1);
        ticket.owns.and_then(|key| self.pending.remove(&key)).map(|(_, waiters)| waiters).unwrap_or_default()
    }
}

/// Why a new quote, transfer or refund request (`body`) is refused because
/// of the region it is headed to, if it is another region and `refuses`
/// gives a reason for it (its link's breaker open, or no link at all): a
/// quote for a payee there, a transfer request under a quote for one, or a
/// refund of a payment whose payer is there. A transfer
/// request made before is not new and is let through, so that a retry
/// still gets its recorded answer; its key is looked up (in history, for
/// most keys) only when the region is refused. The gateway asks it before
/// a request reaches the partner's actor, and the simulation does the same.
pub fn link_refuses<R>(
    body: &CommandBody,
    state: &State,
    recall: &dyn Recall,
    refuses: impl Fn(&RegionId) -> Option<R>,
) -> Option<R> {
    let destination = match body {
        CommandBody::CreateQuote { payee, .. } => state.lookup_payee(payee).map(|p| p.region),
        CommandBody::CreateKeyedQuote(request) => state.lookup_payee(&request.payee).map(|p| p.region),
        CommandBody::CreateTransfer(request) => {
            state.quote(&request.quote).map(|q| q.corridor.destination_region.clone())
        }
        CommandBody::CreateRefund(request) => state.payer_region_of(&request.transfer, recall),
        CommandBody::CreatePayment(request) => state.lookup_payee(&request.payee).map(|p| p.region),
        _ => None,
    };
    let refused = destination.filter(|region| region != state.region()).and_then(|region| refuses(&region))?;
    match body {
        CommandBody::CreateTransfer(request) if state.replay_transfer_request(request, recall).is_some() => None,
        CommandBody::CreateRefund(request)
            if matches!(state.look_up_refund_request(request, recall), KeyLookup::Answered(_)) =>
        {
            None
        }
        CommandBody::CreatePayment(request)
            if matches!(state.look_up_payment_request(request, recall), KeyLookup::Answered(_)) =>
        {
            None
        }
        CommandBody::CreateKeyedQuote(request)
            if matches!(state.look_up_quote_request(request, recall), KeyLookup::Answered(_)) =>
        {
            None
        }
        _ => Some(refused),
    }
}

#[cfg(test)]
mod tests;
