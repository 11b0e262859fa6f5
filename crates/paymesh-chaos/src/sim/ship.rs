//! Between regions: the coordinator's shipper and the payee region's
//! receiver, over the simulated network.
//!
//! The shipper is the node's own engine,
//! [`paymesh_node::engine::shipper::Shipper`], one per leadership and remote
//! region, driven here as `paymesh_node::outbox::ship` drives it: polled
//! when the outbox may have changed, a call finished, or its wake time came;
//! each call it returns sent over the simulated network (or, for a probe,
//! the region's health looked at after the probe's delay); each answer,
//! failure and recorded command reported back to it.
//!
//! The receiver is the node's engine too,
//! [`paymesh_node::engine::receiver::Inbound`], one per batch being
//! answered, as the node's inter-region service drives it: each item's
//! command proposed to the leader, each outcome given to it, the batch
//! answered once complete.
//!
//! Messages cross the network in their wire form, built by the node's own
//! conversions (`prepare_out`, `decision_out`) and parsed by the engines.

use paymesh_core::Outcome;
use paymesh_node::engine::receiver::{self, Inbound, Reply};
use paymesh_node::engine::shipper::{Answer, Call, CallId, Shipper, CALL_TIMEOUT, PROBE_DELAY, RESCAN};
use paymesh_node::interregion::{decision_out, prepare_out};
use paymesh_proto::interregion::v1 as wire;

use super::engine::Event;
use super::region::{Answering, Region, Waiter};
use super::{engine_time, sim_ms, Ms, Sim};
use crate::world::REGIONS;

/// A message between two regions.
#[derive(Clone, Debug)]
pub(crate) enum Message {
    /// A shipper's call carrying Prepares.
    Prepares {
        /// The call.
        call: u64,
        /// The batch.
        batch: wire::PrepareBatch,
    },
    /// The answer to a `Prepares` call.
    PrepareReplies {
        /// The call answered.
        call: u64,
        /// The replies.
        batch: wire::PrepareReplyBatch,
    },
    /// A shipper's call carrying decisions.
    Decisions {
        /// The call.
        call: u64,
        /// The batch.
        batch: wire::DecisionBatch,
    },
    /// The answer to a `Decisions` call.
    Acks {
        /// The call answered.
        call: u64,
        /// The acknowledgements.
        batch: wire::AckBatch,
    },
    /// A call refused as a whole (UNAVAILABLE: no leader, or the batch failed).
    Refused {
        /// The call refused.
        call: u64,
    },
}

impl Sim<'_> {
    /// Have `region`'s shipper look at the outbox at `at` (or earlier, if
    /// it is due earlier anyway).
    pub(crate) fn request_scan(&mut self, index: usize, at: Ms) {
        let region = &mut self.regions[index];
        if region.leader.is_none() || region.scan_at.is_some_and(|t| t <= at) {
            return;
        }
        region.scan_at = Some(at);
        self.at(at, Event::Scan { region: index });
    }

    /// The shipper's loop body: send what the outbox holds to every region.
    pub(crate) fn scan(&mut self, index: usize) {
        if self.regions[index].scan_at != Some(self.now) {
            return; // superseded by an earlier scan
        }
        self.regions[index].scan_at = None;
        if self.regions[index].leader.is_none() {
            return;
        }
        for dest in (0..REGIONS.len()).filter(|d| *d != index) {
            self.ship(index, dest);
        }
        self.request_scan(index, self.now + sim_ms(RESCAN));
    }

    /// Poll the leader's shipper to `dest` and make the calls it returns.
    fn ship(&mut self, index: usize, dest: usize) {
        let now = self.now;
        let mut next_id = self.next_id;
        let Region { id, nodes, leader, .. } = &mut self.regions[index];
        let from_region = id.to_string();
        let Some(leader) = leader.as_mut() else { return };
        let term = leader.term;
        let state = &nodes[leader.node].state;
        let protocol = state.protocol().number();
        let shipper = &mut leader.shippers[dest];
        let dest_id = shipper.region().clone();
        let calls = shipper.poll(engine_time(now), state.outbox_for(&dest_id), || {
            next_id += 1;
            next_id
        });
        self.next_id = next_id;
        for outgoing in calls {
            let call = outgoing.id;
            let message = match outgoing.call {
                Call::Prepares(prepares) => Message::Prepares {
                    call,
                    batch: wire::PrepareBatch {
                        from_region: from_region.clone(),
                        items: prepares.iter().map(|p| prepare_out(p, &dest_id, String::new())).collect(),
                        protocol,
                    },
                },
                Call::Decisions(decisions) => Message::Decisions {
                    call,
                    batch: wire::DecisionBatch {
                        from_region: from_region.clone(),
                        items: decisions
                            .iter()
                            .map(|(transfer, decision, window)| wire::DecisionItem {
                                transfer_id: transfer.to_string(),
                                decision: decision_out(*decision),
                                traceparent: String::new(),
                                window: *window,
                            })
                            .collect(),
                        protocol,
                    },
                },
                Call::Probe => {
                    self.at(now + sim_ms(PROBE_DELAY), Event::Probe { region: index, term, dest, call });
                    continue;
                }
            };
            self.stats.calls += 1;
            self.send(index, dest, message);
            self.at(now + sim_ms(CALL_TIMEOUT), Event::CallTimeout { region: index, term, dest, call });
        }
    }

    /// Put `message` on the link from `from` to `to`: lost, delayed,
    /// sometimes delivered twice, as the link's conditions say.
    pub(crate) fn send(&mut self, from: usize, to: usize, message: Message) {
        self.stats.messages += 1;
        if self.net.is_cut(from, to) {
            self.stats.dropped += 1;
            return;
        }
        let conditions = self.net.conditions(from, to);
        if self.rng.chance(conditions.loss_permille) {
            self.stats.dropped += 1;
            return;
        }
        let delay = conditions.one_way_ms(&mut self.rng);
        if self.rng.chance(conditions.dup_permille) {
            self.stats.duplicated += 1;
            let again = conditions.one_way_ms(&mut self.rng);
            self.stats.late += u64::from(again >= 1_000);
            self.at(self.now + again, Event::Deliver { from, to, message: message.clone() });
        }
        self.stats.late += u64::from(delay >= 1_000);
        self.at(self.now + delay, Event::Deliver { from, to, message });
    }

    /// A message arrives, unless the link is cut by now (a black hole).
    pub(crate) fn deliver(&mut self, from: usize, to: usize, message: Message) {
        if self.net.is_cut(from, to) {
            self.stats.dropped += 1;
            return;
        }
        match message {
            Message::Prepares { call, batch } => self.receive_prepares(to, from, call, &batch),
            Message::Decisions { call, batch } => self.receive_decisions(to, from, call, &batch),
            Message::PrepareReplies { call, batch } => self.replies_arrived(to, from, call, &batch),
            Message::Acks { call, batch } => self.acks_arrived(to, from, call, &batch),
            Message::Refused { call } => self.fail_call(to, from, call),
        }
    }

    // ---- the payee region's receiver ------------------------------------------------

    /// Whether `batch` may be served by `at` now: as many items as the
    /// receiver admits, from the calling region, and a leader to propose
    /// to. Refuses it otherwise.
    fn admit(&mut self, at: usize, from: usize, call: u64, items: usize, from_region: &str) -> bool {
        let ok = receiver::admit(items).is_ok()
            && from_region == self.regions[from].id.as_str()
            && self.regions[at].leader.is_some();
        if !ok {
            self.send(at, from, Message::Refused { call });
        }
        ok
    }

    fn receive_prepares(&mut self, at: usize, from: usize, call: u64, batch: &wire::PrepareBatch) {
        if self.admit(at, from, call, batch.items.len(), &batch.from_region) {
            let (inbound, proposals) = Inbound::prepares(batch, &self.regions[from].id);
            self.start_inbound(at, Answering { from, call, inbound }, proposals);
        }
    }

    fn receive_decisions(&mut self, at: usize, from: usize, call: u64, batch: &wire::DecisionBatch) {
        if self.admit(at, from, call, batch.items.len(), &batch.from_region) {
            let (inbound, proposals) = Inbound::decisions(batch, &self.regions[from].id);
            self.start_inbound(at, Answering { from, call, inbound }, proposals);
        }
    }

    fn start_inbound(&mut self, at: usize, answering: Answering, proposals: Vec<receiver::Proposal>) {
        let batch = self.fresh_id();
        let Some(leader) = self.regions[at].leader.as_mut() else { return };
        leader.inbound.insert(batch, answering);
        if proposals.is_empty() {
            self.finish_inbound(at, batch);
            return;
        }
        for proposal in proposals {
            self.propose(at, proposal.body, Waiter::Inbound { batch, item: proposal.item });
        }
    }

    /// An item's command was applied: its answer is known.
    pub(crate) fn inbound_answered(&mut self, at: usize, batch: u64, item: usize, outcome: Outcome) {
        let Some(leader) = self.regions[at].leader.as_mut() else { return };
        let Some(answering) = leader.inbound.get_mut(&batch) else { return };
        match answering.inbound.answered(item, outcome) {
            Err(_) => {
                // An unexpected outcome fails the whole batch (Status::internal).
                let (from, call) = (answering.from, answering.call);
                leader.inbound.remove(&batch);
                self.send(at, from, Message::Refused { call });
            }
            Ok(_) if answering.inbound.complete() => self.finish_inbound(at, batch),
            Ok(_) => {}
        }
    }

    fn finish_inbound(&mut self, at: usize, batch: u64) {
        let region = self.regions[at].id.clone();
        let Region { nodes, leader, .. } = &mut self.regions[at];
        let Some(leader) = leader.as_mut() else { return };
        let protocol = nodes[leader.node].state.protocol().number();
        let Some(Answering { from, call, inbound }) = leader.inbound.remove(&batch) else { return };
        let message = match inbound.reply(&region, protocol) {
            Reply::Prepares(batch) => Message::PrepareReplies { call, batch },
            Reply::Acks(batch) => Message::Acks { call, batch },
        };
        self.send(at, from, message);
    }

    // ---- the coordinator's shipper: answers -----------------------------------------

    /// The leader's shipper of `origin` to `dest`, if `origin` has a leader.
    fn shipper(&mut self, origin: usize, dest: usize) -> Option<&mut Shipper> {
        self.regions[origin].leader.as_mut().map(|leader| &mut leader.shippers[dest])
    }

    fn replies_arrived(&mut self, origin: usize, dest: usize, call: CallId, batch: &wire::PrepareReplyBatch) {
        let now = self.now;
        let Some(shipper) = self.shipper(origin, dest) else { return };
        let answer = shipper.prepares_answered(call, engine_time(now), &batch.replies);
        self.answer_taken(origin, dest, call, answer);
    }

    fn acks_arrived(&mut self, origin: usize, dest: usize, call: CallId, batch: &wire::AckBatch) {
        let now = self.now;
        let Some(shipper) = self.shipper(origin, dest) else { return };
        let answer = shipper.decisions_answered(call, engine_time(now), &batch.acks);
        self.answer_taken(origin, dest, call, answer);
    }

    /// Carry out what the shipper made of an answer: propose its commands.
    fn answer_taken(&mut self, origin: usize, dest: usize, call: CallId, answer: Answer) {
        match answer {
            Answer::Stale => {}
            Answer::Malformed { .. } => {
                self.stats.failed_calls += 1;
                self.rescan_after_failure(origin, dest);
            }
            Answer::Taken { proposals, violations } => {
                self.stats.protocol_violations += violations.len() as u64;
                let finished = proposals.is_empty();
                for body in proposals {
                    self.propose(origin, body, Waiter::Shipper { dest, call });
                }
                if finished {
                    self.request_scan(origin, self.now);
                }
            }
        }
    }

    /// One of a call's answers was applied.
    pub(crate) fn shipper_recorded(&mut self, origin: usize, dest: usize, call: CallId) {
        let Some(shipper) = self.shipper(origin, dest) else { return };
        shipper.recorded(call);
        self.request_scan(origin, self.now);
    }

    /// A call's time ran out without an answer.
    pub(crate) fn call_timed_out(&mut self, origin: usize, term: u64, dest: usize, call: CallId) {
        if self.regions[origin].leader_term() == Some(term) {
            self.fail_call(origin, dest, call);
        }
    }

    /// A call failed (timed out, or refused).
    fn fail_call(&mut self, origin: usize, dest: usize, call: CallId) {
        let now = self.now;
        let Some(shipper) = self.shipper(origin, dest) else { return };
        let was_open = shipper.open_since().is_some();
        let Some(failed) = shipper.failed(call, engine_time(now)) else { return };
        let opened = !was_open && shipper.open_since().is_some();
        self.stats.failed_calls += 1;
        self.stats.breaker_opened += u64::from(opened);
        for body in failed.proposals {
            // Only with a deliberate bug switched on.
            self.propose(origin, body, Waiter::Nobody);
        }
        self.rescan_after_failure(origin, dest);
    }

    /// After a failure: poll again when the shipper's backoff allows.
    fn rescan_after_failure(&mut self, origin: usize, dest: usize) {
        let now = self.now;
        if let Some(wake) = self.shipper(origin, dest).map(|shipper| sim_ms(shipper.next_wake(engine_time(now)))) {
            self.request_scan(origin, wake);
        }
    }

    /// A probe's delay passed: a health call, which answers if the link is
    /// up and one of the region's nodes is.
    pub(crate) fn probe(&mut self, origin: usize, term: u64, dest: usize, call: CallId) {
        if self.regions[origin].leader_term() != Some(term) {
            return;
        }
        let now = self.now;
        let healthy = !self.net.is_cut(origin, dest) && self.regions[dest].nodes.iter().any(|n| n.down == 0);
        let Some(shipper) = self.shipper(origin, dest) else { return };
        shipper.probed(call, engine_time(now), healthy);
        let wake = sim_ms(shipper.next_wake(engine_time(now)));
        self.stats.probes.0 += 1;
        self.stats.probes.1 += u64::from(healthy);
        self.request_scan(origin, if healthy { now } else { wake });
    }
}
