//! Between regions: the coordinator's shipper (`paymesh_node::outbox`) and
//! the payee region's receiver (`paymesh_node::interregion`), over the
//! simulated network.
//!
//! Messages cross the network in their wire form. The node's own public
//! conversions are used wherever they are library code: `prepare_out` and
//! `decision_out` to build a batch, `prepare_in` and `decision_in` to parse
//! received items, `reply_out` and `ack` to answer them, `reply_in` to read
//! an answer, the batch limits and the shipper's constants. The service's handler
//! and the shipper's task are async code bound to a node (its gateway,
//! proposer and gRPC client), so their logic is written again here, step
//! for step: each received item becomes one core command (`Prepare`,
//! `Decide`) proposed to the leader, each answer one `PrepareReplied` or
//! `DecisionAcked`, a message stays in flight from its send until its
//! answer is applied, a failed call releases its messages and backs off,
//! and three failures in a row open the breaker.

use paymesh_core::command::{OutboxMessage, PrepareReply};
use paymesh_core::{CommandBody, Outcome};
use paymesh_node::interregion::{
    ack, decision_in, decision_out, prepare_in, prepare_out, reply_in, reply_out, BATCH_ITEMS_MAX,
};
use paymesh_node::outbox::{BACKOFF_FIRST, BACKOFF_MAX, BREAKER_FAILURES, CALL_TIMEOUT, RPCS_IN_FLIGHT_MAX};
use paymesh_proto::interregion::v1 as wire;

use super::engine::Event;
use super::region::{Inbound, InboundKind, Key, Region, ShipCall, Waiter};
use super::{Bug, Ms, Sim};
use crate::world::REGIONS;

/// A duration of the node's constants in simulated milliseconds (all of
/// them far below `u64::MAX` ms).
const fn ms(duration: std::time::Duration) -> Ms {
    duration.as_millis() as Ms
}

/// The shipper's first backoff after a failed call, ms.
pub(crate) const BACKOFF_FIRST_MS: Ms = ms(BACKOFF_FIRST);

/// How often the shipper looks at the outbox when nothing wakes it
/// (`RESCAN` in `outbox.rs`).
const RESCAN_MS: Ms = 100;

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

/// The shipper's key of an outbox message.
pub(crate) fn key_of(message: &OutboxMessage) -> Key {
    match message {
        OutboxMessage::Prepare(prepare) => (prepare.transfer.clone(), false),
        OutboxMessage::Decision { transfer, .. } => (transfer.clone(), true),
    }
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
        self.request_scan(index, self.now + RESCAN_MS);
    }

    /// `outbox::collect` and the sends of `outbox::ship` for one region.
    fn ship(&mut self, index: usize, dest: usize) {
        let now = self.now;
        let dest_id = self.regions[dest].id.clone();
        let Region { id, nodes, leader, .. } = &mut self.regions[index];
        let from_region = id.to_string();
        let Some(leader) = leader.as_mut() else { return };
        let term = leader.term;
        let state = &nodes[leader.node].state;
        let shipper = &mut leader.shippers[dest];
        let (mut prepares, mut decisions) = (Vec::new(), Vec::new());
        if now >= shipper.not_before && shipper.calls.len() < RPCS_IN_FLIGHT_MAX {
            for message in state.outbox_for(&dest_id) {
                // Marking a message in flight is part of taking it.
                match message {
                    OutboxMessage::Prepare(prepare)
                        if prepares.len() < BATCH_ITEMS_MAX
                            && shipper.in_flight.insert((prepare.transfer.clone(), false)) =>
                    {
                        prepares.push(prepare.clone());
                    }
                    OutboxMessage::Decision { transfer, decision }
                        if decisions.len() < BATCH_ITEMS_MAX && shipper.in_flight.insert((transfer.clone(), true)) =>
                    {
                        decisions.push((transfer.clone(), *decision));
                    }
                    _ => {}
                }
                if prepares.len() >= BATCH_ITEMS_MAX && decisions.len() >= BATCH_ITEMS_MAX {
                    break;
                }
            }
        }
        let send_decisions =
            !decisions.is_empty() && shipper.calls.len() + usize::from(!prepares.is_empty()) < RPCS_IN_FLIGHT_MAX;
        if !send_decisions {
            for (transfer, _) in &decisions {
                shipper.in_flight.remove(&(transfer.clone(), true));
            }
            decisions.clear();
        }
        let mut sends = Vec::new();
        if !prepares.is_empty() {
            let keys = prepares.iter().map(|p| (p.transfer.clone(), false)).collect();
            let batch = wire::PrepareBatch {
                from_region: from_region.clone(),
                items: prepares.iter().map(|p| prepare_out(p, String::new())).collect(),
            };
            sends.push((keys, Vec::new(), Some(batch), None));
        }
        if !decisions.is_empty() {
            let keys = decisions.iter().map(|(t, _)| (t.clone(), true)).collect();
            let batch = wire::DecisionBatch {
                from_region,
                items: decisions
                    .iter()
                    .map(|(transfer, decision)| wire::DecisionItem {
                        transfer_id: transfer.to_string(),
                        decision: decision_out(*decision),
                        traceparent: String::new(),
                    })
                    .collect(),
            };
            sends.push((keys, decisions, None, Some(batch)));
        }
        let probe = sends.is_empty() && shipper.calls.is_empty() && shipper.open_since.is_some();
        if probe && shipper.probe_at.is_none() {
            let at = now + ms(BACKOFF_MAX);
            shipper.probe_at = Some(at);
            self.at(at, Event::Probe { region: index, term, dest });
        }
        for (keys, decisions, prepare_batch, decision_batch) in sends {
            let call = self.fresh_id();
            let entry = ShipCall { keys, decisions, answered: false, pending: 0, release: Vec::new() };
            if let Some(leader) = self.regions[index].leader.as_mut() {
                leader.shippers[dest].calls.insert(call, entry);
            }
            let message = match (prepare_batch, decision_batch) {
                (Some(batch), _) => Message::Prepares { call, batch },
                (None, Some(batch)) => Message::Decisions { call, batch },
                (None, None) => continue,
            };
            self.stats.calls += 1;
            self.send(index, dest, message);
            self.at(now + ms(CALL_TIMEOUT), Event::CallTimeout { region: index, term, dest, call });
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
            Message::Refused { call } => {
                if self.live_call(to, from, call) {
                    self.fail_call(to, from, call);
                }
            }
        }
    }

    // ---- the payee region's receiver ------------------------------------------------

    /// Whether `batch` may be served by `at` now: 1 to 1,000 items, from the
    /// calling region, and a leader to propose to. Refuses it otherwise.
    fn admit(&mut self, at: usize, from: usize, call: u64, items: usize, from_region: &str) -> bool {
        let ok = (1..=BATCH_ITEMS_MAX).contains(&items)
            && from_region == self.regions[from].id.as_str()
            && self.regions[at].leader.is_some();
        if !ok {
            self.send(at, from, Message::Refused { call });
        }
        ok
    }

    fn receive_prepares(&mut self, at: usize, from: usize, call: u64, batch: &wire::PrepareBatch) {
        if !self.admit(at, from, call, batch.items.len(), &batch.from_region) {
            return;
        }
        let from_id = self.regions[from].id.clone();
        let mut replies = Vec::new();
        let mut proposals = Vec::new();
        for (index, item) in batch.items.iter().enumerate() {
            match prepare_in(item, &from_id) {
                Err(code) => {
                    let reply = reply_out(&item.transfer_id, PrepareReply::Rejected(code));
                    replies.push((item.transfer_id.clone(), Some(reply)));
                }
                Ok(message) => {
                    replies.push((item.transfer_id.clone(), None));
                    proposals.push((index, CommandBody::Prepare(message)));
                }
            }
        }
        self.start_inbound(
            at,
            Inbound { from, call, kind: InboundKind::Prepares(replies), pending: proposals.len() },
            proposals,
        );
    }

    fn receive_decisions(&mut self, at: usize, from: usize, call: u64, batch: &wire::DecisionBatch) {
        if !self.admit(at, from, call, batch.items.len(), &batch.from_region) {
            return;
        }
        let from_id = self.regions[from].id.clone();
        let mut acks = Vec::new();
        let mut proposals = Vec::new();
        for (index, item) in batch.items.iter().enumerate() {
            match decision_in(item, &from_id) {
                None => acks
                    .push((item.transfer_id.clone(), Some(ack(&item.transfer_id, wire::AckResult::ProtocolViolation)))),
                Some((transfer, decision)) => {
                    acks.push((item.transfer_id.clone(), None));
                    proposals.push((index, CommandBody::Decide { transfer, decision }));
                }
            }
        }
        self.start_inbound(
            at,
            Inbound { from, call, kind: InboundKind::Decisions(acks), pending: proposals.len() },
            proposals,
        );
    }

    fn start_inbound(&mut self, at: usize, inbound: Inbound, proposals: Vec<(usize, CommandBody)>) {
        let batch = self.fresh_id();
        let Some(leader) = self.regions[at].leader.as_mut() else { return };
        leader.inbound.insert(batch, inbound);
        if proposals.is_empty() {
            self.finish_inbound(at, batch);
            return;
        }
        for (item, body) in proposals {
            self.propose(at, body, Waiter::Inbound { batch, item });
        }
    }

    /// An item's command was applied: its answer is known.
    pub(crate) fn inbound_answered(&mut self, at: usize, batch: u64, item: usize, outcome: Outcome) {
        let Some(leader) = self.regions[at].leader.as_mut() else { return };
        let Some(inbound) = leader.inbound.get_mut(&batch) else { return };
        let answered = match &mut inbound.kind {
            InboundKind::Prepares(replies) => {
                let reply = match outcome {
                    Outcome::PrepareReply(reply) => Some(reply),
                    Outcome::Rejected(code) => Some(PrepareReply::Rejected(code)),
                    _ => None,
                };
                reply.map(|reply| replies[item].1 = Some(reply_out(&replies[item].0, reply))).is_some()
            }
            InboundKind::Decisions(acks) => {
                let result = match outcome {
                    Outcome::Acked => Some(wire::AckResult::Acked),
                    // A decision contradicting this region's records.
                    Outcome::Rejected(_) => Some(wire::AckResult::ProtocolViolation),
                    _ => None,
                };
                result.map(|result| acks[item].1 = Some(ack(&acks[item].0, result))).is_some()
            }
        };
        inbound.pending = inbound.pending.saturating_sub(1);
        let (done, from, call) = (inbound.pending == 0, inbound.from, inbound.call);
        if !answered {
            // An unexpected outcome fails the whole batch (Status::internal).
            leader.inbound.remove(&batch);
            self.send(at, from, Message::Refused { call });
        } else if done {
            self.finish_inbound(at, batch);
        }
    }

    fn finish_inbound(&mut self, at: usize, batch: u64) {
        let region = self.regions[at].id.to_string();
        let Some(leader) = self.regions[at].leader.as_mut() else { return };
        let Some(inbound) = leader.inbound.remove(&batch) else { return };
        let message = match inbound.kind {
            InboundKind::Prepares(replies) => Message::PrepareReplies {
                call: inbound.call,
                batch: wire::PrepareReplyBatch {
                    from_region: region,
                    replies: replies.into_iter().filter_map(|(_, r)| r).collect(),
                },
            },
            InboundKind::Decisions(acks) => Message::Acks {
                call: inbound.call,
                batch: wire::AckBatch { from_region: region, acks: acks.into_iter().filter_map(|(_, a)| a).collect() },
            },
        };
        self.send(at, inbound.from, message);
    }

    // ---- the coordinator's shipper: answers -----------------------------------------

    /// Whether `call` of `origin`'s current leader to `dest` waits for its answer.
    fn live_call(&self, origin: usize, dest: usize, call: u64) -> bool {
        let leader = self.regions[origin].leader.as_ref();
        leader.and_then(|l| l.shippers[dest].calls.get(&call)).is_some_and(|c| !c.answered)
    }

    /// The call succeeded: the link works.
    fn link_succeeded(&mut self, origin: usize, dest: usize) {
        if let Some(leader) = self.regions[origin].leader.as_mut() {
            let shipper = &mut leader.shippers[dest];
            shipper.failures = 0;
            shipper.open_since = None;
            shipper.backoff_ms = BACKOFF_FIRST_MS;
        }
    }

    fn replies_arrived(&mut self, origin: usize, dest: usize, call: u64, batch: &wire::PrepareReplyBatch) {
        if !self.live_call(origin, dest, call) {
            return; // late, duplicated, or for an earlier leader: discarded
        }
        let Some(leader) = self.regions[origin].leader.as_mut() else { return };
        let Some(entry) = leader.shippers[dest].calls.get_mut(&call) else { return };
        entry.answered = true;
        if batch.replies.len() != entry.keys.len() {
            self.fail_call(origin, dest, call);
            return;
        }
        let proposals: Vec<CommandBody> = entry
            .keys
            .iter()
            .zip(&batch.replies)
            .filter_map(|((transfer, _), reply)| {
                let answer = reply_in(reply).filter(|_| reply.transfer_id == transfer.to_string())?;
                Some(CommandBody::PrepareReplied { transfer: transfer.clone(), reply: answer })
            })
            .collect();
        entry.pending = proposals.len();
        entry.release = entry.keys.clone();
        self.link_succeeded(origin, dest);
        self.record_answers(origin, dest, call, proposals);
    }

    fn acks_arrived(&mut self, origin: usize, dest: usize, call: u64, batch: &wire::AckBatch) {
        if !self.live_call(origin, dest, call) {
            return;
        }
        let dest_id = self.regions[dest].id.clone();
        let Some(leader) = self.regions[origin].leader.as_mut() else { return };
        let Some(entry) = leader.shippers[dest].calls.get_mut(&call) else { return };
        entry.answered = true;
        if batch.acks.len() != entry.decisions.len() {
            self.fail_call(origin, dest, call);
            return;
        }
        let mut proposals = Vec::new();
        let mut done = Vec::new();
        let mut violations = 0;
        for ((transfer, _), ack) in entry.decisions.iter().zip(&batch.acks) {
            match wire::AckResult::try_from(ack.result) {
                Ok(wire::AckResult::Acked) if ack.transfer_id == transfer.to_string() => {
                    proposals.push(CommandBody::DecisionAcked { region: dest_id.clone(), transfer: transfer.clone() });
                    done.push((transfer.clone(), true));
                }
                // Resending will not help: kept in flight for this term.
                Ok(wire::AckResult::ProtocolViolation) => violations += 1,
                _ => done.push((transfer.clone(), true)),
            }
        }
        entry.pending = proposals.len();
        entry.release = done;
        self.stats.protocol_violations += violations;
        self.link_succeeded(origin, dest);
        self.record_answers(origin, dest, call, proposals);
    }

    fn record_answers(&mut self, origin: usize, dest: usize, call: u64, proposals: Vec<CommandBody>) {
        if proposals.is_empty() {
            self.finish_call(origin, dest, call);
            return;
        }
        for body in proposals {
            self.propose(origin, body, Waiter::Shipper { dest, call });
        }
    }

    /// One of a call's answers was applied.
    pub(crate) fn shipper_recorded(&mut self, origin: usize, dest: usize, call: u64) {
        let Some(leader) = self.regions[origin].leader.as_mut() else { return };
        let Some(entry) = leader.shippers[dest].calls.get_mut(&call) else { return };
        entry.pending = entry.pending.saturating_sub(1);
        if entry.pending == 0 {
            self.finish_call(origin, dest, call);
        }
    }

    /// Every answer of the call is applied: release its messages.
    fn finish_call(&mut self, origin: usize, dest: usize, call: u64) {
        let Some(leader) = self.regions[origin].leader.as_mut() else { return };
        let shipper = &mut leader.shippers[dest];
        if let Some(entry) = shipper.calls.remove(&call) {
            for key in &entry.release {
                shipper.in_flight.remove(key);
            }
        }
        self.request_scan(origin, self.now);
    }

    /// A call's time ran out without an answer.
    pub(crate) fn call_timed_out(&mut self, origin: usize, term: u64, dest: usize, call: u64) {
        if self.regions[origin].leader_term() == Some(term) && self.live_call(origin, dest, call) {
            self.fail_call(origin, dest, call);
        }
    }

    /// A call failed: release its messages, count the failure (three in a
    /// row open the breaker) and back off.
    fn fail_call(&mut self, origin: usize, dest: usize, call: u64) {
        let now = self.now;
        let backoff = self.regions[origin].leader.as_ref().map_or(BACKOFF_FIRST_MS, |l| l.shippers[dest].backoff_ms);
        let jitter = self.rng.range(0, backoff / 2);
        let dest_id = self.regions[dest].id.clone();
        let Some(leader) = self.regions[origin].leader.as_mut() else { return };
        let shipper = &mut leader.shippers[dest];
        let Some(entry) = shipper.calls.remove(&call) else { return };
        for key in &entry.keys {
            shipper.in_flight.remove(key);
        }
        shipper.failures = shipper.failures.saturating_add(1);
        if shipper.failures >= BREAKER_FAILURES && shipper.open_since.is_none() {
            shipper.open_since = Some(now);
            self.stats.breaker_opened += 1;
        }
        shipper.not_before = now + backoff + jitter;
        shipper.backoff_ms = (backoff * 2).min(ms(BACKOFF_MAX));
        let retry_at = shipper.not_before;
        self.stats.failed_calls += 1;
        if self.bug(Bug::AckFailedDecisions) {
            // The bug: a decision whose call failed is taken for delivered.
            for (transfer, _) in entry.decisions {
                let body = CommandBody::DecisionAcked { region: dest_id.clone(), transfer };
                self.propose(origin, body, Waiter::Nobody);
            }
        }
        self.request_scan(origin, retry_at);
    }

    /// With the breaker open and nothing to send: is the region back? (A
    /// health call: it answers if the link is up and one of its nodes is.)
    pub(crate) fn probe(&mut self, origin: usize, term: u64, dest: usize) {
        if self.regions[origin].leader_term() != Some(term) {
            return;
        }
        let healthy = !self.net.is_cut(origin, dest) && self.regions[dest].nodes.iter().any(|n| n.down == 0);
        let Some(leader) = self.regions[origin].leader.as_mut() else { return };
        let shipper = &mut leader.shippers[dest];
        shipper.probe_at = None;
        if healthy {
            shipper.failures = 0;
            shipper.open_since = None;
            shipper.backoff_ms = BACKOFF_FIRST_MS;
        } else {
            shipper.failures = shipper.failures.saturating_add(1);
        }
        self.request_scan(origin, self.now);
    }
}
