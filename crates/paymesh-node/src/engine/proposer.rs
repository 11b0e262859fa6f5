//! The proposer: group commit of commands into Raft entries, and the
//! leader's housekeeping tick.
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
//! Each command gets an id from the proposer's session (this node and 48
//! random bits, new for each leadership: [`session`]) and a sequence number,
//! so a proposal repeated by openraft or by a retry is applied once. The
//! number is given when the command is put into an entry, not when it is
//! queued: lanes are served out of arrival order, and a session forgets
//! outcomes below its newest `SESSION_OUTCOMES_MAX`, so a command numbered
//! on arrival could be applied after thousands of higher numbers and be
//! refused as stale.
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
//! The proposer also keeps the region's house: every [`TICK_INTERVAL`] its
//! driver asks [`Proposer::tick`] whether to propose a `Tick` (deadlines,
//! retention), which it does when the applied state says one has work and
//! none is in flight, and proposes the next at once while a tick used its
//! whole budget ([`Proposer::ticked`]).
//!
//! The driver (`crate::actors::proposer`, and the simulation) submits
//! commands ([`Proposer::submit`]), polls for entries to propose
//! ([`Proposer::poll`]) when [`Proposer::next_wake`] comes or after a
//! submit, and reports each entry's end ([`Proposer::settled`]): applied,
//! with its outcomes going to the waiters in order, or refused.

use std::time::Duration;

use paymesh_core::command::{Command, CommandBody, CommandId};
use paymesh_core::limits::BATCH_COMMANDS_MAX;

use super::fair::{FairQueue, Full, Lane};
use super::Time;

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

/// The session of a proposer on node `node_id`: the node in the top 16
/// bits, then 48 bits of `random` (never 0). Not derived from the term
/// alone: a restarted node can lead again in the very term it led before it
/// crashed (openraft re-establishes a committed vote of its own), and a
/// session reused with its sequence numbers restarted would have new
/// commands answered with the old ones' recorded outcomes, and not applied.
pub fn session(node_id: u64, random: u64) -> u64 {
    ((node_id & 0xffff) << 48) | (random & ((1 << 48) - 1)).max(1)
}

/// A command refused at once, with the waiter it came with.
#[derive(Debug)]
pub struct Refused<W> {
    /// Why (for the caller's RESOURCE_EXHAUSTED).
    pub why: &'static str,
    /// The command's waiter.
    pub waiter: W,
}

/// Commands to propose as one entry, and who waits for each one's outcome,
/// in the same order.
#[derive(Clone, Debug)]
pub struct Entry<W> {
    /// The commands, numbered.
    pub commands: Vec<Command>,
    /// Their waiters.
    pub waiters: Vec<W>,
}

/// Deliberate bugs, switched on only by the simulation's tests
/// ([`Proposer::inject`]) to show that its checkers catch them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposerBug {
    /// The session is the node alone and numbers start at 1 again, so a node
    /// that leads a second time reuses command ids: the state machine answers
    /// them with the outcomes recorded for the earlier commands and does not
    /// apply them.
    SessionPerNode,
}

/// The proposer of one leadership. See the module documentation.
#[derive(Clone, Debug)]
pub struct Proposer<W> {
    node_id: u64,
    session: u64,
    next_sequence: u64,
    queue: FairQueue<(CommandBody, W)>,
    in_flight: usize,
    group_commit_interval: Duration,
    /// When the last entry was proposed, and how many commands it carried.
    last_entry: Option<(Time, usize)>,
    /// When the waiting commands may be proposed: the linger's end, a
    /// hold's end, or at once.
    due: Option<Time>,
    ticking: bool,
}

/// How much longer the waiting commands are held back for company, if at
/// all: only after an entry of at least [`GROUP_COMMIT_SIBLINGS`] commands,
/// until `interval` after that entry was proposed, and not once a full batch
/// is waiting.
fn hold(interval: Duration, last_entry: Option<(Time, usize)>, queued: usize, now: Time) -> Option<Time> {
    let (proposed, commands) = last_entry?;
    if commands < GROUP_COMMIT_SIBLINGS || queued >= BATCH_COMMANDS_MAX {
        return None;
    }
    let due = proposed + interval;
    (due > now).then_some(due)
}

impl<W> Proposer<W> {
    /// A proposer on node `node_id` whose session takes 48 bits of `random`,
    /// holding entries back under load for `group_commit_interval` (zero:
    /// never).
    pub fn new(node_id: u64, random: u64, group_commit_interval: Duration) -> Proposer<W> {
        Proposer {
            node_id,
            session: session(node_id, random),
            next_sequence: 1,
            queue: FairQueue::new(QUEUE_COMMANDS_PER_PARTNER_MAX, QUEUE_COMMANDS_MAX),
            in_flight: 0,
            group_commit_interval,
            last_entry: None,
            due: None,
            ticking: false,
        }
    }

    /// Switch on a deliberate bug (the simulation's tests only), before the
    /// first entry.
    #[doc(hidden)]
    pub fn inject(&mut self, bug: ProposerBug) {
        match bug {
            ProposerBug::SessionPerNode => {
                self.session = self.node_id;
                self.next_sequence = 1;
            }
        }
    }

    /// The session its commands carry.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Commands waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Queue a command in its lane; a full lane or queue refuses it at once.
    pub fn submit(&mut self, now: Time, lane: Lane, body: CommandBody, waiter: W) -> Result<(), Refused<W>> {
        if let Err((full, (_, waiter))) = self.queue.push(lane, (body, waiter)) {
            let why = match full {
                Full::Lane => {
                    "this partner has its most commands waiting to be proposed \
                     (QUEUE_COMMANDS_PER_PARTNER_MAX); retry with backoff"
                }
                Full::Queue => "the proposal queue is full; retry with backoff",
            };
            return Err(Refused { why, waiter });
        }
        if self.queue.len() >= BATCH_COMMANDS_MAX {
            self.due = Some(self.due.map_or(now, |due| due.min(now)));
        } else if self.due.is_none() {
            self.due = Some(now + LINGER);
        }
        Ok(())
    }

    /// The next entry to propose now, if one is due: numbered commands
    /// taken one from each waiting lane in turn, at most
    /// [`BATCH_COMMANDS_MAX`]. The driver polls until it gets `None`.
    pub fn poll(&mut self, now: Time) -> Option<Entry<W>> {
        if self.queue.is_empty() || self.in_flight >= BATCHES_IN_FLIGHT_MAX {
            return None;
        }
        if self.due.is_none_or(|due| due > now) {
            return None;
        }
        if let Some(due) = hold(self.group_commit_interval, self.last_entry, self.queue.len(), now) {
            self.due = Some(due);
            return None;
        }
        let taken = self.queue.take(BATCH_COMMANDS_MAX);
        self.last_entry = Some((now, taken.len()));
        self.in_flight += 1;
        self.due = (!self.queue.is_empty()).then_some(now);
        let (commands, waiters) = taken
            .into_iter()
            .map(|(body, waiter)| {
                let id = CommandId { session: self.session, sequence: self.next_sequence };
                self.next_sequence += 1;
                (Command { id, body }, waiter)
            })
            .unzip();
        Some(Entry { commands, waiters })
    }

    /// When to poll next at the latest, if commands wait and may be
    /// proposed then (none while the entries in flight are at their bound:
    /// [`Proposer::settled`] says when one ends).
    pub fn next_wake(&self) -> Option<Time> {
        if self.queue.is_empty() || self.in_flight >= BATCHES_IN_FLIGHT_MAX {
            return None;
        }
        self.due
    }

    /// An entry proposed ended (applied, or refused by Raft): the next may
    /// be proposed at once.
    pub fn settled(&mut self, now: Time) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if !self.queue.is_empty() {
            self.due = Some(now);
        }
    }

    /// Every waiting command's waiter, in serving order, the queue emptied:
    /// leadership was lost, and none of them will be proposed.
    pub fn drain(&mut self) -> Vec<W> {
        self.due = None;
        self.queue.drain().into_iter().map(|(_, waiter)| waiter).collect()
    }

    /// Whether to submit a `Tick` now: `work_due` (the applied state has
    /// housekeeping due) and none is in flight. A `true` counts one in
    /// flight until [`Proposer::ticked`].
    pub fn tick(&mut self, work_due: bool) -> bool {
        if self.ticking || !work_due {
            return false;
        }
        self.ticking = true;
        true
    }

    /// The `Tick` in flight ended; `used_whole_budget` if it did as much as
    /// one tick may. Returns whether to look for more at once.
    pub fn ticked(&mut self, used_whole_budget: bool) -> bool {
        self.ticking = false;
        used_whole_budget
    }
}

#[cfg(test)]
mod tests;
