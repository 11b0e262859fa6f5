//! The registry: the actors of this node's current leadership term, reached
//! directly by whoever has a request for them.
//!
//! It is a handle, not an actor: the gateway sends a partner's request
//! straight to the partner's actor (made on first use, on the actor
//! system's thread), so a request crosses one mailbox before the
//! proposer's, not two, and waits for nobody's acknowledgement. The
//! leadership follower ([`Registry::lead`]) replaces the term's actors when
//! this node gains leadership and drops them when it loses it: the proposer
//! refuses what it holds, and partner and corridor actors stop once the
//! last address is dropped (their subscribers' channels close).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use actix::prelude::*;
use paymesh_core::command::CommandBody;
use paymesh_core::corridor::CorridorId;
use paymesh_core::id::PartnerId;
use paymesh_core::state::{CursorExpired, Event};
use paymesh_core::{State, Timestamp};
use paymesh_store::raft_types::Raft;
use paymesh_store::StateMachineStore;
use tokio::sync::mpsc;

use super::corridor::CorridorActor;
use super::partner::{self, PartnerActor, Route, Submit, Submitted};
use super::proposer::{self, Proposer};
use super::{Answer, EntriesApplied, Refusal, Reply};
use crate::engine::fair::Lane;

/// The actors of one leadership term.
struct Term {
    term: u64,
    proposer: Addr<Proposer>,
    partners: Mutex<HashMap<PartnerId, Addr<PartnerActor>>>,
    corridors: Mutex<HashMap<CorridorId, Addr<CorridorActor>>>,
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

struct Shared {
    setting: Setting,
    /// The actor system's arbiter, where the term's actors run.
    arbiter: ArbiterHandle,
    current: RwLock<Option<Arc<Term>>>,
}

/// The actors of the current term; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

impl Registry {
    /// A registry whose actors are made with `setting` and run on
    /// `arbiter`; it starts as a follower's, with none.
    pub fn new(setting: Setting, arbiter: ArbiterHandle) -> Registry {
        Registry { shared: Arc::new(Shared { setting, arbiter, current: RwLock::new(None) }) }
    }

    fn term(&self) -> Result<Arc<Term>, Refusal> {
        self.shared.current.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or(Refusal::NotLeader)
    }

    /// Whether this node leads now (it has the term's actors).
    pub fn leads(&self) -> bool {
        self.term().is_ok()
    }

    /// This node's leadership changed: `Some(term)` when it leads in `term`.
    pub fn lead(&self, leading: Option<u64>) {
        let mut current = self.shared.current.write().unwrap_or_else(PoisonError::into_inner);
        if let (Some(term), Some(held)) = (leading, current.as_ref()) {
            if held.term == term {
                return;
            }
        }
        if let Some(ended) = current.take() {
            tracing::info!(term = ended.term, "leadership lost: stopping the leader's actors");
            ended.proposer.do_send(proposer::Stop);
        }
        if let Some(term) = leading {
            let setting = &self.shared.setting;
            let proposer = Proposer::new(
                setting.raft.clone(),
                setting.state_machine.clone(),
                setting.node_id,
                setting.group_commit_interval,
            );
            let session = proposer.session();
            let proposer = Proposer::start_in_arbiter(&self.shared.arbiter, move |_| proposer);
            tracing::info!(term, session, "leading: proposer started");
            let partners = Mutex::new(HashMap::new());
            *current = Some(Arc::new(Term { term, proposer, partners, corridors: Mutex::new(HashMap::new()) }));
        }
    }

    /// Whether the actor system still runs (it ends on a panic on its
    /// thread, or a stop).
    pub fn running(&self) -> bool {
        self.shared.arbiter.spawn(async {})
    }

    /// New entries were applied on this node: every partner actor pushes
    /// new events to its subscribers. The notices are sent from the actor
    /// system's thread, in one task.
    pub fn entries_applied(&self) {
        let Ok(term) = self.term() else { return };
        self.shared.arbiter.spawn(async move {
            for partner in term.partners.lock().unwrap_or_else(PoisonError::into_inner).values() {
                partner.do_send(EntriesApplied);
            }
        });
    }

    fn partner(&self, term: &Term, id: &PartnerId) -> Addr<PartnerActor> {
        let mut partners = term.partners.lock().unwrap_or_else(PoisonError::into_inner);
        partners
            .entry(id.clone())
            .or_insert_with(|| {
                let setting = &self.shared.setting;
                let actor = PartnerActor::new(
                    id.clone(),
                    setting.state_machine.clone(),
                    term.proposer.clone(),
                    setting.event_streams_per_partner_max,
                );
                PartnerActor::start_in_arbiter(&self.shared.arbiter, move |_| actor)
            })
            .clone()
    }

    fn corridor(&self, term: &Term, id: &CorridorId) -> Addr<CorridorActor> {
        let mut corridors = term.corridors.lock().unwrap_or_else(PoisonError::into_inner);
        corridors
            .entry(id.clone())
            .or_insert_with(|| {
                let actor =
                    CorridorActor::new(id.clone(), self.shared.setting.state_machine.clone(), term.proposer.clone());
                CorridorActor::start_in_arbiter(&self.shared.arbiter, move |_| actor)
            })
            .clone()
    }

    /// Where a partner's command goes once admitted: quotes to their
    /// corridor's actor when `state` names the corridor, the rest to the
    /// proposer.
    fn route(&self, term: &Term, state: &State, partner: &PartnerId, body: &CommandBody, now: Timestamp) -> Route {
        let (payee, amount) = match body {
            CommandBody::CreateQuote { payee, amount, .. } => (payee, amount),
            CommandBody::CreateKeyedQuote(request) => (&request.payee, &request.amount),
            _ => return Route::Proposer,
        };
        let (Some(partner), Some(payee)) = (state.partner(partner), state.lookup_payee(payee)) else {
            // The state machine gives the precise refusal.
            return Route::Proposer;
        };
        let corridor = CorridorId {
            source_region: state.region().clone(),
            source_currency: partner.config.currency,
            destination_region: payee.region,
            destination_currency: payee.currency,
        };
        Route::Corridor { actor: self.corridor(term, &corridor), amount: *amount, now }
    }

    /// Send a partner's commands (one request's: quotes, transfers,
    /// payments, refunds) to its actor in one message, each routed by
    /// `state` (the applied state the caller checked them against); each
    /// outcome goes to its reply.
    pub fn submit(&self, partner: &PartnerId, commands: Vec<(CommandBody, Answer)>, state: &State, now: Timestamp) {
        let term = match self.term() {
            Ok(term) => term,
            Err(refusal) => {
                for (_, reply) in commands {
                    let _ = reply.send(Err(refusal.clone()));
                }
                return;
            }
        };
        let items = commands
            .into_iter()
            .map(|(body, reply)| Submitted { route: self.route(&term, state, partner, &body, now), body, reply })
            .collect();
        self.partner(&term, partner).do_send(Submit { items });
    }

    /// Propose an operator's command (an operator's, or the shipper's and
    /// the receiver's); its outcome goes to `reply`. It is handed to the
    /// actor system's thread in a task that sends it on to the proposer
    /// there: sent from tokio's threads straight into the proposer's
    /// mailbox, the cross-border benchmark committed 5 % less in each of
    /// six rounds (docs/BENCHMARKS.md, "The registry's hop").
    pub fn operate(&self, body: CommandBody, reply: Answer) {
        match self.term() {
            Ok(term) => {
                let proposer = term.proposer.clone();
                self.shared.arbiter.spawn(async move {
                    proposer.do_send(proposer::Propose::one(Lane::Region, body, Reply::new(reply)))
                });
            }
            Err(refusal) => {
                let _ = reply.send(Err(refusal));
            }
        }
    }

    /// Stream `partner`'s events with a cursor above `after` to `events`.
    pub async fn subscribe(
        &self,
        partner: &PartnerId,
        after: u64,
        events: mpsc::Sender<Event>,
    ) -> Result<Result<(), CursorExpired>, Refusal> {
        let actor = self.partner(&*self.term()?, partner);
        actor.send(partner::Subscribe { after, events }).await.unwrap_or(Err(Refusal::NotLeader))
    }
}
