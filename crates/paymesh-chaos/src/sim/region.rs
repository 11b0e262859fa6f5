//! One region as the simulation models its Raft group: three replicas of
//! the core's `State` applying one committed log, and the volatile memory of
//! whichever replica leads (its proposer queue, its outbox shippers, the
//! inter-region batches it is answering).
//!
//! Raft itself is abstract: a command is committed when the leader flushes
//! its queue while a majority of replicas serve, and every serving replica
//! then applies it (a lagging one later). What matters to the payment
//! protocol is kept: only committed commands change state, every replica
//! applies the same commands in the same order, a leader's memory dies with
//! its leadership, and a restarted replica loads its last checkpoint and
//! applies the log after it.

use std::collections::BTreeMap;

use paymesh_core::history::MemoryHistory;
use paymesh_core::id::{PartnerId, RegionId};
use paymesh_core::{Batch, Outcome, State, Timestamp};
use paymesh_node::engine::admission::{Admission, Ticket};
use paymesh_node::engine::proposer::{Entry, Proposer};
use paymesh_node::engine::receiver::Inbound;
use paymesh_node::engine::shipper::Shipper;

use super::Ms;

/// A replica takes a checkpoint every this many applied entries.
const CHECKPOINT_EVERY: usize = 50;

/// One replica.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    /// Its state machine.
    pub(crate) state: State,
    /// Its history, written as entries apply. It survives a restart whole
    /// (as the store's does once durable), so a restarted replica re-applies
    /// entries whose history it already holds: the case where history must
    /// answer as of each entry, not as of now.
    pub(crate) history: MemoryHistory,
    /// Log entries applied.
    pub(crate) applied: usize,
    /// Its last checkpoint and the entries applied to it.
    checkpoint: (State, usize),
    /// Kills in force (down while above 0).
    pub(crate) down: u32,
    /// Isolations from the rest of the region in force.
    pub(crate) isolated: u32,
    /// Pauses (SIGSTOP) in force: the process answers nothing.
    pub(crate) paused: u32,
    /// Lag faults in force: the replica stays in the quorum but applies nothing.
    pub(crate) lagging: u32,
    /// Its clock's offset from simulated time, ms.
    pub(crate) skew_ms: i64,
}

impl Node {
    /// A replica of `region`'s empty state.
    pub(crate) fn new(region: RegionId, skew_ms: i64) -> Node {
        let state = State::new(region);
        Node {
            checkpoint: (state.clone(), 0),
            state,
            history: MemoryHistory::new(),
            applied: 0,
            down: 0,
            isolated: 0,
            paused: 0,
            lagging: 0,
            skew_ms,
        }
    }

    /// Up and in touch with its region: it votes, and it receives entries.
    pub(crate) fn serving(&self) -> bool {
        self.down == 0 && self.isolated == 0 && self.paused == 0
    }

    /// Apply one entry; its outcomes.
    pub(crate) fn apply(&mut self, batch: &Batch) -> Vec<Outcome> {
        let index = self.applied as u64 + 1;
        let applied = self.state.apply_batch(index, batch, &self.history.at(index));
        self.history.write(index, applied.history);
        let outcomes = applied.outcomes;
        self.applied += 1;
        if self.applied.is_multiple_of(CHECKPOINT_EVERY) {
            // O(1): the state's maps are persistent.
            self.checkpoint = (self.state.clone(), self.applied);
        }
        outcomes
    }

    /// Apply every entry of `log` not applied yet.
    pub(crate) fn catch_up(&mut self, log: &[Batch]) {
        for batch in log.iter().skip(self.applied) {
            self.apply(batch);
        }
    }

    /// Restart after a crash: load the last checkpoint (entries after it are
    /// applied again from the log by [`Node::catch_up`]).
    ///
    /// The checkpoint goes through its encoding, as a node's image does, so
    /// that what a state keeps only in memory (the recent idempotency keys)
    /// is lost as a restarted node loses it.
    pub(crate) fn restart(&mut self) {
        let image = serde_json::to_vec(&self.checkpoint.0).expect("a state encodes");
        self.state = serde_json::from_slice(&image).expect("a state decodes");
        self.applied = self.checkpoint.1;
    }
}

/// Who waits for a command's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiter {
    /// Attempt `attempt` of a partner's call `call`.
    Client {
        /// The call.
        call: u64,
        /// The attempt.
        attempt: u32,
    },
    /// The shipper recording an answer of call `call` to region `dest`.
    Shipper {
        /// The remote region.
        dest: usize,
        /// The call.
        call: u64,
    },
    /// The receiver answering item `item` of inter-region batch `batch`.
    Inbound {
        /// The batch.
        batch: u64,
        /// The item.
        item: usize,
    },
    /// The leader's housekeeping.
    Tick,
    /// Nobody.
    Nobody,
}

/// An inter-region batch the leader is answering.
#[derive(Clone, Debug)]
pub(crate) struct Answering {
    /// The calling region.
    pub(crate) from: usize,
    /// The caller's call id.
    pub(crate) call: u64,
    /// The batch, in the node's receiver engine.
    pub(crate) inbound: Inbound,
}

/// What only the leader holds, lost with its leadership.
#[derive(Clone, Debug)]
pub(crate) struct Leadership {
    /// The leading replica.
    pub(crate) node: usize,
    /// Its term.
    pub(crate) term: u64,
    /// Its proposer (the node's engine): commands waiting for an entry.
    pub(crate) proposer: Proposer<Waiter>,
    /// The entry appended and not committed yet, if one is.
    pub(crate) entry: Option<Entry<Waiter>>,
    /// When its proposer is polled next, if scheduled.
    pub(crate) poll_at: Option<Ms>,
    /// Each partner's admission (the node's engine).
    pub(crate) admissions: BTreeMap<PartnerId, Admission<Waiter>>,
    /// The admission ticket of each partner's call attempt proposed.
    pub(crate) tickets: BTreeMap<(u64, u32), (PartnerId, Ticket)>,
    /// One shipper per region (the node's engine; the one to itself unused).
    pub(crate) shippers: Vec<Shipper>,
    /// Inter-region batches being answered, by id.
    pub(crate) inbound: BTreeMap<u64, Answering>,
}

/// A region: its replicas, its committed log and its leader.
#[derive(Clone, Debug)]
pub(crate) struct Region {
    /// Its id.
    pub(crate) id: RegionId,
    /// The replicas; node `i` is node id `i + 1`.
    pub(crate) nodes: Vec<Node>,
    /// Every committed entry.
    pub(crate) log: Vec<Batch>,
    /// The leader, if there is one.
    pub(crate) leader: Option<Leadership>,
    /// A leader cut off or paused that does not know yet that it was
    /// deposed: what it queues never commits, until it learns and steps
    /// down (when it is back).
    pub(crate) deposed: Option<Leadership>,
    /// The latest term.
    pub(crate) term: u64,
    /// When the next election is, if one is scheduled.
    pub(crate) election_at: Option<Ms>,
    /// When the shipper looks at the outbox next, if scheduled.
    pub(crate) scan_at: Option<Ms>,
    /// Faults of the partners' links to the region in force, by fault,
    /// with the share of requests and answers each loses, per thousand.
    pub(crate) partners_loss: Vec<(usize, u32)>,
}

impl Region {
    /// Whether a majority of the replicas serve, so entries can commit.
    pub(crate) fn quorum(&self) -> bool {
        self.nodes.iter().filter(|n| n.serving()).count() * 2 > self.nodes.len()
    }

    /// The leader's state, if there is a leader.
    pub(crate) fn leader_state(&self) -> Option<&State> {
        self.leader.as_ref().map(|l| &self.nodes[l.node].state)
    }

    /// The leader's term, if there is a leader.
    pub(crate) fn leader_term(&self) -> Option<u64> {
        self.leader.as_ref().map(|l| l.term)
    }

    /// The state of the replica that has applied the most.
    pub(crate) fn freshest(&self) -> &Node {
        self.nodes.iter().max_by_key(|n| n.applied).unwrap_or(&self.nodes[0])
    }

    /// The time `node`'s clock shows at simulated `now`, from `start`.
    pub(crate) fn clock(&self, node: usize, start: Timestamp, now: Ms) -> Timestamp {
        let skewed = i128::from(now) + i128::from(self.nodes[node].skew_ms);
        start.plus_ms(u64::try_from(skewed.max(0)).unwrap_or(0))
    }

    /// Append `batch` to the log and apply it on the leader (whose outcomes
    /// are returned; none without a leader) and on every serving replica not
    /// lagging.
    pub(crate) fn commit(&mut self, batch: Batch) -> Vec<Outcome> {
        let leader = self.leader.as_ref().map(|l| l.node);
        let earlier = self.log.len();
        self.log.push(batch);
        let mut outcomes = Vec::new();
        for (index, node) in self.nodes.iter_mut().enumerate() {
            if Some(index) == leader {
                node.catch_up(&self.log[..earlier]);
                outcomes = node.apply(&self.log[earlier]);
            } else if node.serving() && node.lagging == 0 {
                node.catch_up(&self.log);
            }
        }
        outcomes
    }

    /// Bring every serving replica that is not lagging up to the log's end.
    pub(crate) fn replicate(&mut self) {
        for node in self.nodes.iter_mut().filter(|n| n.serving() && n.lagging == 0) {
            node.catch_up(&self.log);
        }
    }

    /// The share of partners' requests and answers lost now, per thousand.
    pub(crate) fn partners_loss_permille(&self) -> u32 {
        self.partners_loss.iter().map(|(_, permille)| *permille).max().unwrap_or(0)
    }

    /// Whether every replica is up and has applied the whole log.
    pub(crate) fn converged(&self) -> bool {
        self.nodes.iter().all(|n| n.down == 0 && n.applied == self.log.len())
    }
}
