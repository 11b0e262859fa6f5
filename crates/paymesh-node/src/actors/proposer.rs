//! The proposer's driver: the group-commit engine
//! ([`crate::engine::proposer`], which says what it does and why) on the
//! leader's actix thread, its entries written through openraft, its timers
//! actix's.
//!
//! Commands arrive as [`Propose`] messages, a partner's request's items in
//! one; each command is submitted to the engine (a full queue answers it at
//! once), then the engine is polled, and every entry it returns is written
//! with `client_write`. When an entry's write ends, its outcomes go to the
//! waiters in order (or the refusal to all of them; [`Reply::send_all`]),
//! the engine is told, and polled again. A timer polls at the
//! engine's wake time (the linger's end, or a group-commit hold's). Every
//! [`TICK_INTERVAL`] the engine is asked whether to propose a `Tick`.

use std::time::Instant;

use actix::prelude::*;
use openraft::error::{ClientWriteError, RaftError};
use paymesh_core::command::{Batch, CommandBody};
use paymesh_core::limits::TICK_WORK_MAX;
use paymesh_core::Outcome;
use paymesh_store::raft_types::Raft;
use paymesh_store::StateMachineStore;
use tokio::sync::oneshot;

use super::{Refusal, Reply};
use crate::engine::fair::Lane;
use crate::engine::proposer::{self as engine, Entry, Refused, TICK_INTERVAL};
use crate::engine::Time;

type Waiter = Reply;

/// Propose commands of one lane, in order; each answered with its outcome
/// once applied.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Propose {
    /// Whose they are: the lane they wait in.
    pub lane: Lane,
    /// What to do, and where each outcome goes.
    pub commands: Vec<(CommandBody, Waiter)>,
}

impl Propose {
    /// One command of `lane`.
    pub fn one(lane: Lane, body: CommandBody, reply: Waiter) -> Propose {
        Propose { lane, commands: vec![(body, reply)] }
    }
}

/// Stop proposing: leadership was lost. Waiting commands are refused.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The group-commit proposer of one leadership term.
pub struct Proposer {
    raft: Raft,
    state: StateMachineStore,
    engine: engine::Proposer<Waiter>,
    /// The engine's clock starts here.
    epoch: Instant,
    /// The earliest timer set to poll the engine, if one is.
    timer: Option<Time>,
}

impl Proposer {
    /// A proposer for `raft` (whose applied state is `state`) on node
    /// `node_id`, with a fresh session, holding entries back under load for
    /// `group_commit_interval` (zero: never).
    pub fn new(
        raft: Raft,
        state: StateMachineStore,
        node_id: u64,
        group_commit_interval: std::time::Duration,
    ) -> Proposer {
        let engine = engine::Proposer::new(node_id, rand::random(), group_commit_interval);
        Proposer { raft, state, engine, epoch: Instant::now(), timer: None }
    }

    /// The session its commands carry.
    pub fn session(&self) -> u64 {
        self.engine.session()
    }

    fn now(&self) -> Time {
        self.epoch.elapsed()
    }

    /// Queue commands of one lane; a full lane or queue refuses each it
    /// cannot take at once. The engine is polled once, after the last.
    fn submit(&mut self, lane: Lane, commands: Vec<(CommandBody, Waiter)>, ctx: &mut Context<Self>) {
        let now = self.now();
        for (body, reply) in commands {
            if let Err(Refused { why, waiter }) = self.engine.submit(now, lane.clone(), body, reply) {
                waiter.send(Err(Refusal::Overloaded(why)));
            }
        }
        self.pump(ctx);
    }

    /// Write every entry the engine has due, and set a timer for its next
    /// wake (unless an earlier one is set).
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        while let Some(entry) = self.engine.poll(now) {
            self.write(entry, ctx);
        }
        crate::metrics::events().proposer_queued(self.engine.queued());
        if let Some(wake) = self.engine.next_wake() {
            if self.timer.is_none_or(|timer| wake < timer) {
                self.timer = Some(wake);
                ctx.run_later(wake.saturating_sub(now), move |proposer, ctx| {
                    if proposer.timer == Some(wake) {
                        proposer.timer = None;
                    }
                    proposer.pump(ctx);
                });
            }
        }
    }

    fn write(&mut self, Entry { commands, waiters }: Entry<Waiter>, ctx: &mut Context<Self>) {
        crate::metrics::events().proposer_wrote(commands.len());
        let batch = match Batch::new(crate::gateway::now(), commands) {
            Ok(batch) => batch,
            Err(e) => {
                // Cannot happen (1..=BATCH_COMMANDS_MAX commands); refuse rather than panic.
                for waiter in waiters {
                    waiter.send(Err(Refusal::Unavailable(e.to_string())));
                }
                self.engine.settled(self.now());
                return;
            }
        };
        let raft = self.raft.clone();
        let write = async move { raft.client_write(batch.into()).await };
        ctx.spawn(write.into_actor(self).map(move |result, proposer, ctx| {
            match result {
                Ok(written) => {
                    let outcomes = written.data.outcomes;
                    debug_assert_eq!(outcomes.len(), waiters.len());
                    Reply::send_all(waiters.into_iter().zip(outcomes.into_iter().map(Ok)));
                }
                Err(error) => {
                    let refusal = match error {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Refusal::NotLeader,
                        other => Refusal::Unavailable(other.to_string()),
                    };
                    Reply::send_all(waiters.into_iter().map(|waiter| (waiter, Err(refusal.clone()))));
                }
            }
            proposer.engine.settled(proposer.now());
            proposer.pump(ctx);
        }));
    }

    /// Propose a `Tick` if the engine says so (none in flight, and the
    /// applied state has work for one); when it used its whole budget, look
    /// again at once.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if !self.engine.tick(self.state.applied().state.tick_due(crate::gateway::now())) {
            return;
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Lane::Region, vec![(CommandBody::Tick, Reply::new(reply))], ctx);
        ctx.spawn(answer.into_actor(self).map(|answer, proposer, ctx| {
            let again = match answer {
                Ok(Ok(Outcome::Ticked(report))) => {
                    tracing::debug!(aborted = report.aborted, purged = report.purged, "tick applied");
                    proposer.engine.ticked(report.aborted as usize + report.purged as usize >= TICK_WORK_MAX)
                }
                other => {
                    tracing::warn!(?other, "tick not applied; retrying at the next interval");
                    proposer.engine.ticked(false)
                }
            };
            if again {
                proposer.tick(ctx);
            }
        }));
    }
}

impl Actor for Proposer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK_INTERVAL, |proposer, ctx| proposer.tick(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        Reply::send_all(self.engine.drain().into_iter().map(|waiter| (waiter, Err(Refusal::NotLeader))));
        crate::metrics::events().proposer_queued(0);
    }
}

impl Handler<Propose> for Proposer {
    type Result = ();

    fn handle(&mut self, message: Propose, ctx: &mut Context<Self>) {
        self.submit(message.lane, message.commands, ctx);
    }
}

impl Handler<Stop> for Proposer {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
