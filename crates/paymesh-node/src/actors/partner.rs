//! A partner's actor on the leader: the driver of its admission engine
//! (`crate::engine::admission`: the bound on requests in flight, the
//! idempotency fast path, refusals answered from the applied state), and
//! its event stream subscribers.
//!
//! The request rate is the partner's replicated limit
//! (`PartnerLimits::requests_per_second` and `requests_burst`, set by an
//! operator), read from the applied state on every request, so a change
//! applies at once on the leader. Every call, subscriptions included, is
//! charged by the gateway before it reaches this actor (see [`crate::rate`]).

use actix::prelude::*;
use paymesh_core::command::CommandBody;
use paymesh_core::id::PartnerId;
use paymesh_core::partner::BusinessStatus;
use paymesh_core::state::{CursorExpired, Event};
use paymesh_core::Outcome;
use paymesh_store::StateMachineStore;
use tokio::sync::mpsc;

use super::corridor::{CorridorActor, PriceQuote};
use super::proposer::{Propose, Proposer};
use super::{Answer, EntriesApplied, Refusal, Reply};
use crate::engine::admission::{Admission, Step, Ticket};
use crate::engine::fair::Lane;
use paymesh_core::corridor::QuoteAmount;
use paymesh_core::Timestamp;

/// Events buffered per subscriber; a subscriber that falls this far behind is
/// disconnected (it resumes from its cursor).
pub const SUBSCRIBER_BUFFER_EVENTS: usize = 4_096;

/// Events read from the state per notification, per subscriber.
const EVENTS_PER_PUSH_MAX: usize = 1_024;

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

/// Submit commands on the partner's behalf: one request's (a batch's
/// items, in order; a single call's one).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Submit {
    /// The commands.
    pub items: Vec<Submitted>,
}

/// A command submitted on the partner's behalf.
pub struct Submitted {
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
    admission: Admission<Answer>,
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
            admission: Admission::default(),
            subscribers: Vec::new(),
        }
    }

    /// Carry out what admission decided: answer now, wait for the request
    /// joined, or propose (through `route`) and answer the request and every
    /// request joined to it with the outcome. What goes to the proposer is
    /// gathered in `proposals`, for one message with the request's others.
    fn carry(
        &mut self,
        step: Step<Answer>,
        route: Route,
        proposals: &mut Vec<(CommandBody, Reply)>,
        ctx: &mut Context<Self>,
    ) {
        let Step::Propose { body, waiter, ticket } = step else {
            if let Step::Answer(waiter, outcome) = step {
                let _ = waiter.send(Ok(outcome));
            }
            return;
        };
        // The caller's own channel, which also tells this actor (Completed).
        let reply = Reply::admitted(waiter, ctx.address(), ticket);
        match route {
            Route::Proposer => proposals.push((body, reply)),
            Route::Corridor { actor, amount, now } => actor.do_send(PriceQuote { body, amount, now, reply }),
        }
    }

    fn push_events(&mut self) {
        if self.subscribers.is_empty() {
            return;
        }
        let applied = self.state.applied();
        let state = &applied.state;
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
        let applied = self.state.applied();
        let through = applied.last_applied.map_or(0, |l| l.index);
        let now = crate::gateway::now();
        let mut proposals = Vec::with_capacity(message.items.len());
        for Submitted { body, route, reply } in message.items {
            // The gateway charged the request to the partner's rate already.
            if let Err(why) = self.admission.admit() {
                let _ = reply.send(Err(Refusal::Overloaded(why)));
                continue;
            }
            let history = self.state.history();
            let step = match body {
                CommandBody::CreateTransfer(request) => {
                    self.admission.transfer(request, reply, (&applied.state, through), history, now)
                }
                body @ CommandBody::CreateQuote { .. } => self.admission.quote(body, reply, &applied.state, now),
                CommandBody::CreateRefund(request) => {
                    self.admission.refund(request, reply, &applied.state, history, now)
                }
                CommandBody::CreatePayment(request) => {
                    self.admission.payment(request, reply, (&applied.state, through), history, now)
                }
                CommandBody::CreateKeyedQuote(request) => {
                    self.admission.keyed_quote(request, reply, &applied.state, history, now)
                }
                body => self.admission.other(body, reply),
            };
            self.carry(step, route, &mut proposals, ctx);
        }
        if !proposals.is_empty() {
            self.proposer.do_send(Propose { lane: Lane::Partner(self.partner.clone()), commands: proposals });
        }
    }
}

/// Requests this actor admitted were settled (see [`Reply`]): the requests
/// joined to each get the same result, and they are no longer in flight.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Completed {
    /// What admission gave each request, and its outcome (or why there is
    /// none) when other requests joined it.
    pub done: Vec<(Ticket, Option<Result<Outcome, Refusal>>)>,
}

impl Handler<Completed> for PartnerActor {
    type Result = ();

    fn handle(&mut self, message: Completed, _ctx: &mut Context<Self>) {
        for (ticket, result) in message.done {
            let joined = self.admission.completed(ticket);
            if let Some(result) = result {
                for waiter in joined {
                    let _ = waiter.send(result.clone());
                }
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
