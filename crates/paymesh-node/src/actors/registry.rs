//! The registry: follows this node's leadership and routes requests to the
//! right actor, creating partner and corridor actors on first use.

use std::collections::HashMap;

use actix::prelude::*;
use paymesh_core::command::CommandBody;
use paymesh_core::corridor::CorridorId;
use paymesh_core::id::PartnerId;
use paymesh_core::state::{CursorExpired, Event};
use paymesh_core::Timestamp;
use paymesh_store::raft_types::Raft;
use paymesh_store::StateMachineStore;
use tokio::sync::mpsc;

use super::corridor::CorridorActor;
use super::partner::{self, PartnerActor, Route, Submit};
use super::proposer::{self, Proposer};
use super::{Answer, EntriesApplied, Refusal, Reply};
use crate::engine::fair::Lane;

/// This node's leadership changed: `Some(term)` when it leads in `term`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leadership(pub Option<u64>);

/// A partner's command (a quote or a transfer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PartnerRequest {
    /// The partner, from its certificate.
    pub partner: PartnerId,
    /// The command.
    pub body: CommandBody,
    /// The leader's time, for quote pricing.
    pub now: Timestamp,
    /// Where the outcome goes.
    pub reply: Answer,
}

/// An operator's command, proposed directly.
#[derive(Message)]
#[rtype(result = "()")]
pub struct OperatorRequest {
    /// The command.
    pub body: CommandBody,
    /// Where the outcome goes.
    pub reply: Answer,
}

/// Stream a partner's events after a cursor.
#[derive(Message)]
#[rtype(result = "Result<Result<(), CursorExpired>, Refusal>")]
pub struct SubscribeEvents {
    /// The partner, from its certificate.
    pub partner: PartnerId,
    /// The last cursor seen.
    pub after: u64,
    /// Where events go.
    pub events: mpsc::Sender<Event>,
}

/// The actors of one leadership term.
struct Term {
    term: u64,
    proposer: Addr<Proposer>,
    partners: HashMap<PartnerId, Addr<PartnerActor>>,
    corridors: HashMap<CorridorId, Addr<CorridorActor>>,
}

/// What the leader's actors are made with.
pub struct Setting {
    /// The region's Raft group on this node.
    pub raft: Raft,
    /// Its applied state and history.
    pub state_machine: StateMachineStore,
    /// This node.
    pub node_id: u64,
    /// How long the proposer holds an entry back under load (zero: never).
    pub group_commit_interval: std::time::Duration,
    /// The most event streams a partner may hold on this node.
    pub event_streams_per_partner_max: usize,
}

/// Routes requests to the actors of the current term.
pub struct Registry {
    setting: Setting,
    current: Option<Term>,
}

impl Registry {
    /// A registry whose actors are made with `setting`; it starts as a
    /// follower.
    pub fn new(setting: Setting) -> Registry {
        Registry { setting, current: None }
    }

    fn partner(&mut self, id: &PartnerId) -> Result<Addr<PartnerActor>, Refusal> {
        let term = self.current.as_mut().ok_or(Refusal::NotLeader)?;
        let (state, proposer) = (self.setting.state_machine.clone(), term.proposer.clone());
        let streams_max = self.setting.event_streams_per_partner_max;
        Ok(term
            .partners
            .entry(id.clone())
            .or_insert_with(|| PartnerActor::new(id.clone(), state, proposer, streams_max).start())
            .clone())
    }

    fn corridor(&mut self, id: &CorridorId) -> Result<Addr<CorridorActor>, Refusal> {
        let term = self.current.as_mut().ok_or(Refusal::NotLeader)?;
        let (state, proposer) = (self.setting.state_machine.clone(), term.proposer.clone());
        Ok(term
            .corridors
            .entry(id.clone())
            .or_insert_with(|| CorridorActor::new(id.clone(), state, proposer).start())
            .clone())
    }

    /// Where a partner's command goes once admitted: quotes to their
    /// corridor's actor when the corridor can be named, the rest to the proposer.
    fn route(&mut self, partner: &PartnerId, body: &CommandBody, now: Timestamp) -> Result<Route, Refusal> {
        let CommandBody::CreateQuote { payee, amount, .. } = body else { return Ok(Route::Proposer) };
        let applied = self.setting.state_machine.applied();
        let (Some(partner), Some(payee)) = (applied.state.partner(partner), applied.state.lookup_payee(payee)) else {
            // The state machine gives the precise refusal.
            return Ok(Route::Proposer);
        };
        let corridor = CorridorId {
            source_region: applied.state.region().clone(),
            source_currency: partner.config.currency,
            destination_region: payee.region,
            destination_currency: payee.currency,
        };
        Ok(Route::Corridor { actor: self.corridor(&corridor)?, amount: *amount, now })
    }

    fn stop_term(&mut self) {
        if let Some(term) = self.current.take() {
            tracing::info!(term = term.term, "leadership lost: stopping the leader's actors");
            term.proposer.do_send(proposer::Stop);
            // Partner and corridor actors stop when their addresses are dropped;
            // their subscribers' channels close, and streams end with UNAVAILABLE.
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Handler<Leadership> for Registry {
    type Result = ();

    fn handle(&mut self, message: Leadership, _ctx: &mut Context<Self>) {
        match (message.0, self.current.as_ref().map(|t| t.term)) {
            (Some(term), Some(current)) if term == current => {}
            (Some(term), _) => {
                self.stop_term();
                let proposer = Proposer::new(
                    self.setting.raft.clone(),
                    self.setting.state_machine.clone(),
                    self.setting.node_id,
                    self.setting.group_commit_interval,
                );
                let session = proposer.session();
                let proposer = proposer.start();
                tracing::info!(term, session, "leading: proposer started");
                self.current = Some(Term { term, proposer, partners: HashMap::new(), corridors: HashMap::new() });
            }
            (None, _) => self.stop_term(),
        }
    }
}

impl Handler<EntriesApplied> for Registry {
    type Result = ();

    fn handle(&mut self, _: EntriesApplied, _ctx: &mut Context<Self>) {
        if let Some(term) = &self.current {
            for partner in term.partners.values() {
                partner.do_send(EntriesApplied);
            }
        }
    }
}

impl Handler<PartnerRequest> for Registry {
    type Result = ();

    fn handle(&mut self, message: PartnerRequest, _ctx: &mut Context<Self>) {
        let routed = self.route(&message.partner, &message.body, message.now).and_then(|route| {
            let actor = self.partner(&message.partner)?;
            Ok((route, actor))
        });
        match routed {
            Ok((route, actor)) => actor.do_send(Submit { body: message.body, route, reply: message.reply }),
            Err(refusal) => {
                let _ = message.reply.send(Err(refusal));
            }
        }
    }
}

impl Handler<OperatorRequest> for Registry {
    type Result = ();

    fn handle(&mut self, message: OperatorRequest, _ctx: &mut Context<Self>) {
        match &self.current {
            Some(term) => term.proposer.do_send(proposer::Propose {
                lane: Lane::Region,
                body: message.body,
                reply: Reply::new(message.reply),
            }),
            None => {
                let _ = message.reply.send(Err(Refusal::NotLeader));
            }
        }
    }
}

impl Handler<SubscribeEvents> for Registry {
    type Result = ResponseFuture<Result<Result<(), CursorExpired>, Refusal>>;

    fn handle(&mut self, message: SubscribeEvents, _ctx: &mut Context<Self>) -> Self::Result {
        let actor = self.partner(&message.partner);
        Box::pin(async move {
            let actor = actor?;
            actor
                .send(partner::Subscribe { after: message.after, events: message.events })
                .await
                .unwrap_or(Err(Refusal::NotLeader))
        })
    }
}
