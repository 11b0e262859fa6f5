//! The proposer: group commit of commands into Raft entries.
//!
//! Every command the leader accepts goes through here. Commands are gathered
//! until [`BATCH_COMMANDS_MAX`] are waiting or [`LINGER`] has passed since the
//! first, then proposed as one entry; one entry is in flight at a time
//! ([`BATCHES_IN_FLIGHT_MAX`]), and the commands that arrive meanwhile go
//! into the next. openraft 0.9 writes each proposal to the log as its own
//! entry with its own `fdatasync`, one after another, its core waiting on
//! each: entries proposed while one is in flight would mostly queue there,
//! each costing a sync, a replication message and an apply on every node.
//! Gathered here instead, they share one, so the batches grow with the load
//! by themselves (measured in docs/BENCHMARKS.md: at half of peak, 16 entries
//! in flight gave a p99 of 144-151 ms, one gave 104-107 ms).
//!
//! The waiting commands are not one FIFO but a [`FairQueue`]: a lane per
//! partner and one for the region's own commands (operators, ticks,
//! inter-region messages), and each entry takes one command from each
//! waiting lane in turn. A partner's backlog delays another lane's command
//! by one round at most. The queue is bounded as a whole
//! ([`QUEUE_COMMANDS_MAX`]) and per partner ([`QUEUE_COMMANDS_PER_PARTNER_MAX`]):
//! beyond either a new command is refused at once (the caller answers
//! RESOURCE_EXHAUSTED) rather than waiting without limit.
//!
//! Each command gets an id from the proposer's session (this node and its
//! term as leader) and a sequence number, so a proposal repeated by openraft
//! or by a retry is applied once. The number is given when the command is
//! put into an entry, not when it is queued: lanes are served out of arrival
//! order, and a session forgets outcomes below its newest
//! `SESSION_OUTCOMES_MAX`, so a command numbered on arrival could be applied
//! after thousands of higher numbers and be refused as stale.
//!
//! Under load the proposer can also hold the next entry back
//! (`raft.group_commit_interval_ms`, [`GROUP_COMMIT_SIBLINGS`]): once an
//! entry carried at least that many commands, more are surely coming, so the
//! next entry is proposed no sooner than the interval after it, and the
//! commands arriving meanwhile share it. Each entry costs a write, an
//! `fdatasync` and a replication round on every node whatever it carries,
//! and with one entry in flight a busy region proposes the next as soon as
//! the last is applied: cheaper entries only become more entries. On nodes
//! that share cores, fewer and fuller entries leave CPU to spare, and the
//! tail shortens by more than the interval adds (measured in
//! docs/BENCHMARKS.md). An entry of fewer commands (a quiet region, a lone
//! client) is never held. It is off (0) unless configured: with cores to
//! spare it only adds latency, and it costs throughput to a few clients that
//! each wait for their last answer, since no one else arrives while they wait.
//!
//! The proposer also keeps the region's house: every [`TICK_INTERVAL`] it
//! proposes a `Tick` (deadlines, retention) if the applied state says one has
//! work, and proposes the next at once while a tick used its whole budget.
//! At most one tick is in flight.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use openraft::error::{ClientWriteError, RaftError};
use paymesh_core::command::{Batch, Command, CommandBody, CommandId};
use paymesh_core::limits::{BATCH_COMMANDS_MAX, TICK_WORK_MAX};
use paymesh_core::{Outcome, Timestamp};
use paymesh_store::raft_types::Raft;
use paymesh_store::StateMachineStore;
use tokio::sync::oneshot;

use super::fair::{FairQueue, Full, Lane};
use super::Refusal;

/// How long the first command of a batch waits for company.
pub const LINGER: Duration = Duration::from_micros(500);

/// Entries proposed and not yet applied, at most (see the module's notes).
pub const BATCHES_IN_FLIGHT_MAX: usize = 1;

/// An entry of at least this many commands marks the region busy: the next
/// is held back for `raft.group_commit_interval_ms` (see the module's notes).
pub const GROUP_COMMIT_SIBLINGS: usize = 8;

/// Commands waiting to be proposed, at most; beyond this new ones are refused.
pub const QUEUE_COMMANDS_MAX: usize = 32_768;

/// One partner's commands waiting to be proposed, at most (four full
/// entries); beyond this its new ones are refused. The region's own lane is
/// bounded by [`QUEUE_COMMANDS_MAX`] only.
pub const QUEUE_COMMANDS_PER_PARTNER_MAX: usize = 4 * BATCH_COMMANDS_MAX;

/// How often the leader looks for housekeeping due: a cross-border transfer
/// past its deadline is aborted at most this late.
pub const TICK_INTERVAL: Duration = Duration::from_millis(250);

type Waiter = oneshot::Sender<Result<Outcome, Refusal>>;

/// Propose one command; answered with its outcome once applied.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Propose {
    /// Whose it is: the lane it waits in.
    pub lane: Lane,
    /// What to do.
    pub body: CommandBody,
    /// Where the outcome goes.
    pub reply: Waiter,
}

/// Stop proposing: leadership was lost. Waiting commands are refused.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The group-commit proposer of one leadership term.
pub struct Proposer {
    raft: Raft,
    state: StateMachineStore,
    ticking: bool,
    session: u64,
    next_sequence: u64,
    queue: FairQueue<(CommandBody, Waiter)>,
    /// A timer (the linger's or group commit's) will call `flush`.
    flush_scheduled: bool,
    in_flight: usize,
    group_commit_interval: Duration,
    /// When the last entry was proposed, and how many commands it carried.
    last_entry: Option<(Instant, usize)>,
}

/// How much longer the waiting commands are held back for company, if at
/// all: only after an entry of at least [`GROUP_COMMIT_SIBLINGS`] commands,
/// until `interval` after that entry was proposed, and not once a full batch
/// is waiting.
fn hold(interval: Duration, last_entry: Option<(Instant, usize)>, queued: usize, now: Instant) -> Option<Duration> {
    let (proposed, commands) = last_entry?;
    if commands < GROUP_COMMIT_SIBLINGS || queued >= BATCH_COMMANDS_MAX {
        return None;
    }
    let due = proposed + interval;
    (due > now).then(|| due - now)
}

impl Proposer {
    /// A proposer for `raft` (whose applied state is `state`) whose commands
    /// carry `session`, holding entries back under load for
    /// `group_commit_interval` (zero: never).
    pub fn new(raft: Raft, state: StateMachineStore, session: u64, group_commit_interval: Duration) -> Proposer {
        Proposer {
            raft,
            state,
            ticking: false,
            session,
            next_sequence: 1,
            queue: FairQueue::new(QUEUE_COMMANDS_PER_PARTNER_MAX, QUEUE_COMMANDS_MAX),
            flush_scheduled: false,
            in_flight: 0,
            group_commit_interval,
            last_entry: None,
        }
    }

    /// Queue a command in its lane; a full lane or queue refuses it at once.
    fn enqueue(&mut self, lane: Lane, body: CommandBody, reply: Waiter, ctx: &mut Context<Self>) {
        if let Err((full, (_, reply))) = self.queue.push(lane, (body, reply)) {
            let why = match full {
                Full::Lane => {
                    "this partner has its most commands waiting to be proposed \
                     (QUEUE_COMMANDS_PER_PARTNER_MAX); retry with backoff"
                }
                Full::Queue => "the proposal queue is full; retry with backoff",
            };
            let _ = reply.send(Err(Refusal::Overloaded(why)));
            return;
        }
        if self.queue.len() >= BATCH_COMMANDS_MAX {
            self.flush(ctx);
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(LINGER, |proposer, ctx| {
                proposer.flush_scheduled = false;
                proposer.flush(ctx);
            });
        }
    }

    /// Propose a `Tick` if none is in flight and the applied state has work
    /// for one; when it used its whole budget, look again at once.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.ticking || !self.state.applied().state.tick_due(Self::leader_now()) {
            return;
        }
        self.ticking = true;
        let (reply, answer) = oneshot::channel();
        self.enqueue(Lane::Region, CommandBody::Tick, reply, ctx);
        ctx.spawn(answer.into_actor(self).map(|answer, proposer, ctx| {
            proposer.ticking = false;
            match answer {
                Ok(Ok(Outcome::Ticked(report))) => {
                    tracing::debug!(aborted = report.aborted, purged = report.purged, "tick applied");
                    if report.aborted as usize + report.purged as usize >= TICK_WORK_MAX {
                        proposer.tick(ctx);
                    }
                }
                other => tracing::warn!(?other, "tick not applied; retrying at the next interval"),
            }
        }));
    }

    fn leader_now() -> Timestamp {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Timestamp::from_unix_ms(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// Propose the waiting commands, in entries of at most BATCH_COMMANDS_MAX,
    /// while the in-flight bound allows and group commit holds nothing back.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        while !self.queue.is_empty() && self.in_flight < BATCHES_IN_FLIGHT_MAX {
            if let Some(wait) = hold(self.group_commit_interval, self.last_entry, self.queue.len(), Instant::now()) {
                // A pending timer flushes sooner (the linger) or at this
                // time; a linger that finds the hold still on sets this one.
                if !self.flush_scheduled {
                    self.flush_scheduled = true;
                    ctx.run_later(wait, |proposer, ctx| {
                        proposer.flush_scheduled = false;
                        proposer.flush(ctx);
                    });
                }
                return;
            }
            let taken = self.queue.take(BATCH_COMMANDS_MAX);
            self.last_entry = Some((Instant::now(), taken.len()));
            let (commands, waiters): (Vec<Command>, Vec<Waiter>) = taken
                .into_iter()
                .map(|(body, waiter)| {
                    let id = CommandId { session: self.session, sequence: self.next_sequence };
                    self.next_sequence += 1;
                    (Command { id, body }, waiter)
                })
                .unzip();
            let batch = match Batch::new(Self::leader_now(), commands) {
                Ok(batch) => batch,
                Err(e) => {
                    // Cannot happen (1..=BATCH_COMMANDS_MAX commands); refuse rather than panic.
                    for waiter in waiters {
                        let _ = waiter.send(Err(Refusal::Unavailable(e.to_string())));
                    }
                    continue;
                }
            };
            self.in_flight += 1;
            let raft = self.raft.clone();
            let write = async move { raft.client_write(batch).await };
            ctx.spawn(write.into_actor(self).map(move |result, proposer, ctx| {
                proposer.in_flight -= 1;
                match result {
                    Ok(written) => {
                        let outcomes = written.data.outcomes;
                        debug_assert_eq!(outcomes.len(), waiters.len());
                        for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                            let _ = waiter.send(Ok(outcome));
                        }
                    }
                    Err(error) => {
                        let refusal = match error {
                            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Refusal::NotLeader,
                            other => Refusal::Unavailable(other.to_string()),
                        };
                        for waiter in waiters {
                            let _ = waiter.send(Err(refusal.clone()));
                        }
                    }
                }
                proposer.flush(ctx);
            }));
        }
    }
}

impl Actor for Proposer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK_INTERVAL, |proposer, ctx| proposer.tick(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for (_, waiter) in self.queue.drain() {
            let _ = waiter.send(Err(Refusal::NotLeader));
        }
    }
}

impl Handler<Propose> for Proposer {
    type Result = ();

    fn handle(&mut self, message: Propose, ctx: &mut Context<Self>) {
        self.enqueue(message.lane, message.body, message.reply, ctx);
    }
}

impl Handler<Stop> for Proposer {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(5);

    #[test]
    fn a_busy_region_holds_the_next_entry_until_the_interval_has_passed() {
        let proposed = Instant::now();
        let last = Some((proposed, GROUP_COMMIT_SIBLINGS));
        let now = proposed + Duration::from_millis(2);
        assert_eq!(hold(INTERVAL, last, 3, now), Some(Duration::from_millis(3)));
        assert_eq!(hold(INTERVAL, last, 3, proposed + INTERVAL), None, "due now");
        assert_eq!(hold(INTERVAL, last, 3, proposed + Duration::from_millis(9)), None, "overdue");
    }

    #[test]
    fn a_quiet_region_a_full_batch_or_no_interval_holds_nothing() {
        let proposed = Instant::now();
        let now = proposed + Duration::from_millis(1);
        let small = Some((proposed, GROUP_COMMIT_SIBLINGS - 1));
        assert_eq!(hold(INTERVAL, small, 3, now), None, "the last entry was small");
        assert_eq!(hold(INTERVAL, None, 3, now), None, "no entry yet");
        let busy = Some((proposed, BATCH_COMMANDS_MAX));
        assert_eq!(hold(INTERVAL, busy, BATCH_COMMANDS_MAX, now), None, "a full batch waits");
        assert_eq!(hold(Duration::ZERO, busy, 3, now), None, "group commit off");
    }
}
