//! A corridor's actor on the leader: prices quotes against the corridor's
//! current rate, limits and status before they are proposed.
//!
//! A quote that the corridor would refuse (suspended, no valid rate, amount
//! outside its limits) is answered at once with the reject code the state
//! machine would give, without a Raft round trip. A quote that passes is
//! proposed, and the state machine prices it again: the corridor in the
//! replicated state is the one that counts.

use actix::prelude::*;
use paymesh_core::command::CommandBody;
use paymesh_core::corridor::{CorridorId, QuoteAmount};
use paymesh_core::{Outcome, Timestamp};
use paymesh_store::StateMachineStore;

use super::proposer::{Propose, Proposer};
use super::Reply;
use crate::engine::fair::Lane;

/// Quote a payment along this corridor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PriceQuote {
    /// The CreateQuote command.
    pub body: CommandBody,
    /// The amount the partner fixed (checked here before proposing).
    pub amount: QuoteAmount,
    /// The leader's time, for the rate's validity.
    pub now: Timestamp,
    /// Where the outcome goes.
    pub reply: Reply,
}

/// One corridor's actor.
pub struct CorridorActor {
    corridor: CorridorId,
    state: StateMachineStore,
    proposer: Addr<Proposer>,
}

impl CorridorActor {
    /// The actor of `corridor`.
    pub fn new(corridor: CorridorId, state: StateMachineStore, proposer: Addr<Proposer>) -> CorridorActor {
        CorridorActor { corridor, state, proposer }
    }
}

impl Actor for CorridorActor {
    type Context = Context<Self>;
}

impl Handler<PriceQuote> for CorridorActor {
    type Result = ();

    fn handle(&mut self, message: PriceQuote, _ctx: &mut Context<Self>) {
        let applied = self.state.applied();
        if let Some(corridor) = applied.state.corridor(&self.corridor) {
            if let Err(code) = corridor.price(message.amount, message.now) {
                message.reply.send(Ok(Outcome::Rejected(code)));
                return;
            }
        }
        // Unknown here (just created, or gone): the state machine decides.
        let lane = match &message.body {
            CommandBody::CreateQuote { partner, .. } => Lane::Partner(partner.clone()),
            CommandBody::CreateKeyedQuote(request) => Lane::Partner(request.partner.clone()),
            _ => Lane::Region,
        };
        self.proposer.do_send(Propose::one(lane, message.body, message.reply));
    }
}
