//! A partner's actor on the leader: in-flight bound, the
//! idempotency fast path, refusals answered from the applied state, and its
//! event stream subscribers.
//!
//! It is a cache and a scheduler: every decision about money is made again by
//! the state machine when the command is applied. The fast path answers a
//! retried transfer request from the applied state without a Raft round trip,
//! and joins a retry to an identical request still in flight; both give the
//! answer applying the request again would give.
//!
//! A quote or transfer request that the state machine would refuse without
//! changing anything (an unknown, foreign, expired or used quote, a payee
//! mismatch, a suspended partner or corridor, the partner at one of its caps)
//! is refused here, from the applied state, through the very checks `apply`
//! makes (`State::check_quote`, `State::check_transfer_request`): it is
//! neither proposed nor logged nor remembered, and no idempotency record is
//! made, so a retry under the same key with a valid quote is a new request.
//! A key with a record is answered by the record, and a key with another
//! request in flight is left to the state machine. If the applied state
//! changes between this check and the apply (a quote used, a limit raised),
//! the state machine's answer is the one that counts.
//!
//! The request rate is the partner's replicated limit
//! (`PartnerLimits::requests_per_second` and `requests_burst`, set by an
//! operator), read from the applied state on every request, so a change
//! applies at once on the leader. Every call, subscriptions included, is
//! charged by the gateway before it reaches this actor (see [`crate::rate`]).

use std::collections::HashMap;

use actix::prelude::*;
use paymesh_core::command::{CommandBody, Fingerprint, TransferRequest};
use paymesh_core::id::{IdempotencyKey, PartnerId};
use paymesh_core::partner::BusinessStatus;
use paymesh_core::state::{CursorExpired, Event};
use paymesh_core::Outcome;
use paymesh_store::StateMachineStore;
use tokio::sync::{mpsc, oneshot};

use super::corridor::{CorridorActor, PriceQuote};
use super::proposer::{Propose, Proposer};
use super::{EntriesApplied, Refusal};
use crate::engine::fair::Lane;
use paymesh_core::corridor::QuoteAmount;
use paymesh_core::Timestamp;

/// A partner's requests waiting for their outcome, at most.
pub const PARTNER_IN_FLIGHT_MAX: usize = 8_192;

/// Events buffered per subscriber; a subscriber that falls this far behind is
/// disconnected (it resumes from its cursor).
pub const SUBSCRIBER_BUFFER_EVENTS: usize = 4_096;

/// Events read from the state per notification, per subscriber.
const EVENTS_PER_PUSH_MAX: usize = 1_024;

type Answer = oneshot::Sender<Result<Outcome, Refusal>>;

/// Where an admitted command goes.
pub enum Route {
    /// Straight to the proposer.
    Proposer,
    /// A quote: priced first by its corridor's actor.
    Corridor {
        /// The corridor's actor.
        actor: Addr<CorridorActor>,
        /// The amount the partner fixed.
        amount: QuoteAmount,
        /// The leader's time.
        now: Timestamp,
    },
}

/// Submit a command on the partner's behalf.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Submit {
    /// The command.
    pub body: CommandBody,
    /// Where it goes once admitted.
    pub route: Route,
    /// Where the outcome goes.
    pub reply: Answer,
}

/// Start streaming the partner's events with a cursor above `after`.
/// Refused (`Overloaded`) when the partner holds its most streams already, or
/// is out of request tokens: a subscription is charged like a request.
#[derive(Message)]
#[rtype(result = "Result<Result<(), CursorExpired>, Refusal>")]
pub struct Subscribe {
    /// The last cursor the subscriber has seen (0 = from the oldest retained).
    pub after: u64,
    /// Where events go; closed by the actor when the subscriber falls behind
    /// or leadership is lost.
    pub events: mpsc::Sender<Event>,
}

struct Subscriber {
    events: mpsc::Sender<Event>,
    /// The last cursor sent.
    sent: u64,
}

/// One partner's actor.
pub struct PartnerActor {
    partner: PartnerId,
    state: StateMachineStore,
    proposer: Addr<Proposer>,
    in_flight: usize,
    /// Transfer requests in flight by key: their fingerprint and who waits.
    pending: HashMap<IdempotencyKey, (Fingerprint, Vec<Answer>)>,
    subscribers: Vec<Subscriber>,
    /// The most subscribers at once.
    subscribers_max: usize,
}

impl PartnerActor {
    /// The actor of `partner`, proposing through `proposer`, holding at most
    /// `subscribers_max` event streams.
    pub fn new(
        partner: PartnerId,
        state: StateMachineStore,
        proposer: Addr<Proposer>,
        subscribers_max: usize,
    ) -> PartnerActor {
        PartnerActor {
            partner,
            state,
            proposer,
            subscribers_max,
            in_flight: 0,
            pending: HashMap::new(),
            subscribers: Vec::new(),
        }
    }

    fn propose(
        &mut self,
        body: CommandBody,
        route: Route,
        ctx: &mut Context<Self>,
        done: impl FnOnce(&mut Self, Result<Outcome, Refusal>) + 'static,
    ) {
        let (reply, outcome) = oneshot::channel();
        self.in_flight += 1;
        match route {
            Route::Proposer => {
                self.proposer.do_send(Propose { lane: Lane::Partner(self.partner.clone()), body, reply })
            }
            Route::Corridor { actor, amount, now } => actor.do_send(PriceQuote { body, amount, now, reply }),
        }
        ctx.spawn(async move { outcome.await.unwrap_or(Err(Refusal::NotLeader)) }.into_actor(self).map(
            move |result, actor, _| {
                actor.in_flight -= 1;
                done(actor, result);
            },
        ));
    }

    fn submit_transfer(&mut self, request: TransferRequest, reply: Answer, ctx: &mut Context<Self>) {
        // Already applied: answer from the state.
        if let Some(outcome) = self.state.applied().state.replay_transfer_request(&request, self.state.history()) {
            let _ = reply.send(Ok(outcome));
            return;
        }
        // An identical request in flight: wait for its answer. A different
        // body under the same key is proposed on its own and decided by the
        // state machine; only the request that registered the key hands its
        // answer to the waiters and unregisters it.
        let fingerprint = request.fingerprint();
        let owner = match self.pending.get_mut(&request.idempotency_key) {
            Some((pending_print, waiters)) if *pending_print == fingerprint => {
                waiters.push(reply);
                return;
            }
            Some(_) => false,
            None => {
                self.pending.insert(request.idempotency_key.clone(), (fingerprint, Vec::new()));
                true
            }
        };
        if owner {
            // No record and nothing else in flight under this key: a request
            // the state machine would refuse without changing anything is
            // refused here, and leaves nothing behind.
            let applied = self.state.applied();
            let now = crate::gateway::now().max(applied.state.clock());
            if let Err(code) = applied.state.check_transfer_request(&request, now) {
                self.pending.remove(&request.idempotency_key);
                let _ = reply.send(Ok(Outcome::Rejected(code)));
                return;
            }
        }
        let key = request.idempotency_key.clone();
        self.propose(CommandBody::CreateTransfer(request), Route::Proposer, ctx, move |actor, result| {
            if owner {
                if let Some((_, waiters)) = actor.pending.remove(&key) {
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                }
            }
            let _ = reply.send(result);
        });
    }

    fn push_events(&mut self) {
        if self.subscribers.is_empty() {
            return;
        }
        let state = self.state.applied().state;
        let history = self.state.history();
        if state.partner(&self.partner).is_none_or(|p| p.status == BusinessStatus::Suspended) {
            // A suspended partner's streams end; reopening one is refused
            // until it is reactivated.
            self.subscribers.clear();
            return;
        }
        self.subscribers.retain_mut(|subscriber| {
            loop {
                let events = match state.events_after(&self.partner, subscriber.sent, EVENTS_PER_PUSH_MAX, history) {
                    Ok(events) => events,
                    // Retention overtook a slow subscriber: close it; it resumes
                    // from its cursor and is told the cursor expired.
                    Err(_) => return false,
                };
                if events.is_empty() {
                    return !subscriber.events.is_closed();
                }
                for event in events {
                    let cursor = event.cursor;
                    if subscriber.events.try_send(event).is_err() {
                        // Full (too slow) or closed: disconnect.
                        return false;
                    }
                    subscriber.sent = cursor;
                }
            }
        });
    }
}

impl Actor for PartnerActor {
    type Context = Context<Self>;
}

impl Handler<Submit> for PartnerActor {
    type Result = ();

    fn handle(&mut self, message: Submit, ctx: &mut Context<Self>) {
        // The gateway charged the request to the partner's rate already.
        if self.in_flight >= PARTNER_IN_FLIGHT_MAX {
            let _ = message.reply.send(Err(Refusal::Overloaded("too many of this partner's requests are in flight")));
            return;
        }
        match message.body {
            CommandBody::CreateTransfer(request) => self.submit_transfer(request, message.reply, ctx),
            CommandBody::CreateQuote { partner, payee, amount } => {
                let applied = self.state.applied();
                let now = crate::gateway::now().max(applied.state.clock());
                if let Err(code) = applied.state.check_quote(&partner, &payee, amount, now) {
                    let _ = message.reply.send(Ok(Outcome::Rejected(code)));
                    return;
                }
                let reply = message.reply;
                let body = CommandBody::CreateQuote { partner, payee, amount };
                self.propose(body, message.route, ctx, move |_, result| {
                    let _ = reply.send(result);
                });
            }
            body => {
                let reply = message.reply;
                self.propose(body, message.route, ctx, move |_, result| {
                    let _ = reply.send(result);
                });
            }
        }
    }
}

impl Handler<Subscribe> for PartnerActor {
    type Result = Result<Result<(), CursorExpired>, Refusal>;

    fn handle(&mut self, message: Subscribe, _ctx: &mut Context<Self>) -> Self::Result {
        // Streams whose reader went away free their places first.
        self.subscribers.retain(|subscriber| !subscriber.events.is_closed());
        if self.subscribers.len() >= self.subscribers_max {
            return Err(Refusal::Overloaded(
                "this partner holds its most event streams on this node (limits.event_streams_per_partner_max); \
                 close one, or resume on one already open",
            ));
        }
        // Check the cursor now, so an expired one is an error, not a silent gap.
        if let Err(expired) =
            self.state.applied().state.events_after(&self.partner, message.after, 0, self.state.history())
        {
            return Ok(Err(expired));
        }
        self.subscribers.push(Subscriber { events: message.events, sent: message.after });
        self.push_events();
        Ok(Ok(()))
    }
}

impl Handler<EntriesApplied> for PartnerActor {
    type Result = ();

    fn handle(&mut self, _: EntriesApplied, _ctx: &mut Context<Self>) {
        self.push_events();
    }
}
