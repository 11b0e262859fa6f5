//! The coordinator's shipper to one remote region: which outbox messages
//! to send and when, what the answers mean, the backoff after a failed
//! call and the region's circuit breaker.
//!
//! The outbox lives in the replicated state: the entry that reserves a
//! payer's funds also holds the Prepare to send, and the entry that records
//! the payee region's answer also holds the decision. Only the leader ships.
//! Each time the driver polls, the shipper takes from the outbox the
//! messages not in flight, up to a batch of [`BATCH_ITEMS_MAX`] prepares and
//! one of decisions, while fewer than [`RPCS_IN_FLIGHT_MAX`] of its calls
//! are unfinished. A message stays in flight from its send until the answer
//! to it is applied (the driver proposes each answer, `PrepareReplied` or
//! `DecisionAcked`, which removes or replaces the message), so it is not
//! sent twice meanwhile. A failed call releases its messages, and the next
//! send waits a capped exponential backoff with jitter. A new leader starts
//! a new shipper, its memory empty, and sends whatever the outbox holds:
//! duplicates are harmless, as the receiver is idempotent by (transfer id,
//! phase).
//!
//! The breaker: after [`BREAKER_FAILURES`] calls in a row fail, or when a
//! call has waited [`BREAKER_SILENCE`] and nothing at all was heard from
//! the region meanwhile, the region is called unreachable
//! ([`Shipper::open_since`]) and the node refuses new quotes and transfers
//! to it at once rather than reserving funds that would only wait for
//! their deadline. (A cut link drops packets: failures come only as call
//! timeouts, [`CALL_TIMEOUT`] each, so counting them alone left the region
//! taking payments for its first seconds; a region that answers anything
//! at all within the silence is not cut.) Transfers already in flight keep
//! being retried; the first call that succeeds closes it, or, with nothing
//! to send, a probe (a health call [`PROBE_DELAY`] after it is made).
//!
//! The driver calls [`Shipper::poll`] when the outbox may have changed, a
//! call finished, or [`Shipper::next_wake`] came; it makes each [`Call`]
//! returned and reports how it went ([`Shipper::prepares_answered`],
//! [`Shipper::decisions_answered`], [`Shipper::probed`],
//! [`Shipper::failed`]) and when each command it proposed for a call was
//! applied or refused ([`Shipper::recorded`]). A call it gives up on (after
//! [`CALL_TIMEOUT`], or refused) is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use paymesh_core::command::{CommandBody, Decision, OutboxMessage, Preparing};
use paymesh_core::id::{RegionId, TransferId};
use paymesh_proto::interregion::v1 as wire;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::Time;
use crate::interregion::{reply_in, BATCH_ITEMS_MAX};

/// Calls to one region unfinished at once, at most.
pub const RPCS_IN_FLIGHT_MAX: usize = 32;

/// How long one inter-region call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The first pause after a failed call, and the largest. The largest is
/// short for the reason the SDK's is: the commonest run of failures is a
/// remote region electing a leader (1.6 to 3 s here), each call answered
/// at once with "no leader known", and the first call after the election
/// should come within a few hundred milliseconds of it. With pauses
/// doubling to 2 s it came up to 2 s later, the corridor into the region
/// refused meanwhile (its breaker open): leader kills stalled such
/// corridors 1.5 s past the election plus a second in the container runs.
/// A cut region's calls end at their timeout, so the short pause does not
/// make them many.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// See [`BACKOFF_FIRST`].
pub const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Failed calls in a row that open a region's breaker.
pub const BREAKER_FAILURES: u32 = 3;

/// How long a call may wait with nothing heard from its region before
/// the region's breaker opens: a few of its commits' worst latency, under
/// [`CALL_TIMEOUT`].
pub const BREAKER_SILENCE: Duration = Duration::from_secs(1);

/// How often the shipper looks at the outbox when nothing wakes it.
pub const RESCAN: Duration = Duration::from_millis(100);

/// How long a probe waits before it asks the region's health.
pub const PROBE_DELAY: Duration = BACKOFF_MAX;

/// A call's id, chosen by the driver (unique among the calls it makes).
pub type CallId = u64;

/// A message's place in the shipper's memory: its transfer and whether it is
/// the decision (rather than the prepare).
pub type Key = (TransferId, bool);

/// The key of an outbox message.
pub fn key_of(message: &OutboxMessage) -> Key {
    match message {
        OutboxMessage::Prepare(prepare) => (prepare.transfer.clone(), false),
        OutboxMessage::PrepareRefund(prepare) => (prepare.refund.clone(), false),
        OutboxMessage::RequestCancel(request) => (request.cancel.clone(), false),
        OutboxMessage::Decision { transfer, .. } => (transfer.clone(), true),
    }
}

/// A call to make to the region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// Send these Prepares, one batch.
    Prepares(Vec<Preparing>),
    /// Send these decisions, one batch.
    Decisions(Vec<(TransferId, Decision, u64)>),
    /// Wait [`PROBE_DELAY`], then ask whether the region answers at all.
    Probe,
}

/// A call the shipper asks its driver to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Its id, for the answer.
    pub id: CallId,
    /// What to send.
    pub call: Call,
}

/// What an answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Late, duplicated, or for a call the shipper no longer waits for (it
    /// failed meanwhile, or another shipper made it): ignored.
    Stale,
    /// Not an answer to the call (`got` items for `sent`): the call failed.
    Malformed {
        /// Items sent.
        sent: usize,
        /// Items answered.
        got: usize,
    },
    /// The call succeeded; its answers are to be recorded.
    Taken {
        /// Commands to propose, each reported to [`Shipper::recorded`] once
        /// applied or refused. None: the call is finished already.
        proposals: Vec<CommandBody>,
        /// Decisions the region calls a protocol violation: resending will
        /// not help, so they stay in flight (not sent again) for this
        /// shipper's life, for operators to look at.
        violations: Vec<(TransferId, Decision, u64)>,
    },
}

/// What a failed call leaves to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    /// No call before this.
    pub retry_at: Time,
    /// Commands to propose (none, unless a deliberate bug is switched on).
    pub proposals: Vec<CommandBody>,
}

/// Deliberate bugs, switched on only by the simulation's tests
/// ([`Shipper::inject`]) to show that its checkers catch them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShipperBug {
    /// A Decide call that failed (lost, timed out, refused) is taken for
    /// acknowledged: `DecisionAcked` is proposed and the decision leaves the
    /// outbox undelivered.
    AckFailedDecisions,
    /// The first poll takes every message in the outbox for already in
    /// flight (as if a predecessor's memory were this shipper's own) and
    /// never sends them.
    NewLeaderTrustsMemory,
}

/// A call not finished.
#[derive(Clone, Debug)]
struct Unfinished {
    /// The messages it carries.
    keys: Vec<Key>,
    /// The decisions it carries, in order (empty for prepares and probes).
    decisions: Vec<(TransferId, Decision, u64)>,
    /// Whether its answer came.
    answered: bool,
    /// Answers proposed and not recorded yet.
    pending: usize,
    /// When it was made.
    sent_at: Time,
    /// The messages to release once they are.
    release: Vec<Key>,
}

/// The shipper to one remote region, for one leadership. See the module
/// documentation.
#[derive(Clone, Debug)]
pub struct Shipper {
    region: RegionId,
    in_flight: BTreeSet<Key>,
    calls: BTreeMap<CallId, Unfinished>,
    backoff: Time,
    not_before: Time,
    failures: u32,
    open_since: Option<Time>,
    /// When the region last answered a call; never, if `None`.
    heard_at: Option<Time>,
    jitter: SmallRng,
    bug: Option<ShipperBug>,
    polled: bool,
}

impl Shipper {
    /// A shipper to `region` with an empty memory; its backoff's jitter
    /// drawn from `jitter_seed`.
    pub fn new(region: RegionId, jitter_seed: u64) -> Shipper {
        Shipper {
            region,
            in_flight: BTreeSet::new(),
            calls: BTreeMap::new(),
            backoff: BACKOFF_FIRST,
            not_before: Time::ZERO,
            failures: 0,
            open_since: None,
            heard_at: None,
            jitter: SmallRng::seed_from_u64(jitter_seed),
            bug: None,
            polled: false,
        }
    }

    /// Switch on a deliberate bug (the simulation's tests only).
    #[doc(hidden)]
    pub fn inject(&mut self, bug: ShipperBug) {
        self.bug = Some(bug);
    }

    /// The region it ships to.
    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// Since when the region's breaker is open, if it is.
    pub fn open_since(&self) -> Option<Time> {
        self.open_since
    }

    /// Failed calls in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Calls not finished (made, and not failed or answered and recorded).
    pub fn unfinished(&self) -> usize {
        self.calls.len()
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// When to poll again at the latest, if nothing else wakes the driver.
    pub fn next_wake(&self, now: Time) -> Time {
        self.not_before.max(now + RESCAN)
    }

    /// The calls to make now: the messages of `outbox` (the region's, in
    /// the outbox's order) not in flight, unless the backoff or the limit on
    /// calls holds them back; or, with the breaker open and no call
    /// unfinished, a probe. `fresh_id` names each call.
    pub fn poll<'a>(
        &mut self,
        now: Time,
        outbox: impl IntoIterator<Item = &'a OutboxMessage>,
        mut fresh_id: impl FnMut() -> CallId,
    ) -> Vec<Outgoing> {
        let mut outbox = outbox.into_iter();
        if self.open_since.is_none() && self.silent_since().is_some_and(|since| now >= since + BREAKER_SILENCE) {
            self.open_since = Some(now);
        }
        if !std::mem::replace(&mut self.polled, true) && self.bug == Some(ShipperBug::NewLeaderTrustsMemory) {
            self.in_flight.extend(outbox.by_ref().map(key_of));
        }
        let mut calls = Vec::new();
        if now >= self.not_before && self.calls.len() < RPCS_IN_FLIGHT_MAX {
            let (mut prepares, mut decisions) = (Vec::new(), Vec::new());
            for message in outbox {
                // Marking a message in flight is part of taking it.
                match message {
                    OutboxMessage::Prepare(_) | OutboxMessage::PrepareRefund(_) | OutboxMessage::RequestCancel(_)
                        if prepares.len() < BATCH_ITEMS_MAX && self.in_flight.insert(key_of(message)) =>
                    {
                        prepares.extend(message.preparing());
                    }
                    OutboxMessage::Decision { transfer, decision, window }
                        if decisions.len() < BATCH_ITEMS_MAX && self.in_flight.insert((transfer.clone(), true)) =>
                    {
                        decisions.push((transfer.clone(), *decision, *window));
                    }
                    _ => {}
                }
                if prepares.len() >= BATCH_ITEMS_MAX && decisions.len() >= BATCH_ITEMS_MAX {
                    break;
                }
            }
            if !prepares.is_empty() {
                let keys = prepares.iter().map(|p| (p.id().clone(), false)).collect();
                calls.push(self.start(now, fresh_id(), keys, Vec::new(), Call::Prepares(prepares)));
            }
            if !decisions.is_empty() && self.calls.len() < RPCS_IN_FLIGHT_MAX {
                let keys = decisions.iter().map(|(t, _, _)| (t.clone(), true)).collect();
                calls.push(self.start(now, fresh_id(), keys, decisions.clone(), Call::Decisions(decisions)));
            } else {
                for (transfer, _, _) in decisions {
                    self.in_flight.remove(&(transfer, true));
                }
            }
        }
        if calls.is_empty() && self.calls.is_empty() && self.open_since.is_some() {
            calls.push(self.start(now, fresh_id(), Vec::new(), Vec::new(), Call::Probe));
        }
        calls
    }

    /// Since when the region has been silent with a call waiting: the
    /// later of the oldest unanswered call's start and the last answer;
    /// `None` with no call waiting.
    fn silent_since(&self) -> Option<Time> {
        let oldest = self.calls.values().filter(|call| !call.answered).map(|call| call.sent_at).min()?;
        Some(self.heard_at.map_or(oldest, |heard| heard.max(oldest)))
    }

    fn start(
        &mut self,
        now: Time,
        id: CallId,
        keys: Vec<Key>,
        decisions: Vec<(TransferId, Decision, u64)>,
        call: Call,
    ) -> Outgoing {
        let unfinished = Unfinished { keys, decisions, answered: false, pending: 0, release: Vec::new(), sent_at: now };
        self.calls.insert(id, unfinished);
        Outgoing { id, call }
    }

    /// The call `id` waiting for its answer, if it is one.
    fn waiting(&mut self, id: CallId) -> Option<&mut Unfinished> {
        self.calls.get_mut(&id).filter(|call| !call.answered)
    }

    /// The replies to Prepare call `id` arrived.
    pub fn prepares_answered(&mut self, id: CallId, now: Time, replies: &[wire::PrepareReply]) -> Answer {
        let Some(call) = self.waiting(id) else { return Answer::Stale };
        if replies.len() != call.keys.len() || call.keys.is_empty() || !call.decisions.is_empty() {
            return self.malformed(id, now, replies.len());
        }
        let proposals = call
            .keys
            .iter()
            .zip(replies)
            .filter_map(|((transfer, _), reply)| {
                let answer = reply_in(reply).filter(|_| reply.transfer_id == transfer.to_string())?;
                Some(CommandBody::PrepareReplied { transfer: transfer.clone(), reply: answer })
            })
            .collect();
        call.release = call.keys.clone();
        self.taken(id, now, proposals, Vec::new())
    }

    /// The acknowledgements of decision call `id` arrived.
    pub fn decisions_answered(&mut self, id: CallId, now: Time, acks: &[wire::Ack]) -> Answer {
        let region = self.region.clone();
        let Some(call) = self.waiting(id) else { return Answer::Stale };
        if acks.len() != call.decisions.len() || call.decisions.is_empty() {
            return self.malformed(id, now, acks.len());
        }
        let (mut proposals, mut violations) = (Vec::new(), Vec::new());
        for ((transfer, decision, window), ack) in call.decisions.iter().zip(acks) {
            match wire::AckResult::try_from(ack.result) {
                Ok(wire::AckResult::Acked) if ack.transfer_id == transfer.to_string() => {
                    proposals.push(CommandBody::DecisionAcked { region: region.clone(), transfer: transfer.clone() });
                    call.release.push((transfer.clone(), true));
                }
                Ok(wire::AckResult::ProtocolViolation) => violations.push((transfer.clone(), *decision, *window)),
                _ => call.release.push((transfer.clone(), true)),
            }
        }
        self.taken(id, now, proposals, violations)
    }

    /// The probe `id` asked the region's health: it answered (`healthy`) or
    /// not.
    pub fn probed(&mut self, id: CallId, now: Time, healthy: bool) {
        if !self.waiting(id).is_some_and(|call| call.keys.is_empty()) {
            return;
        }
        if healthy {
            self.calls.remove(&id);
            self.succeeded(now);
        } else {
            self.failed(id, now);
        }
    }

    fn malformed(&mut self, id: CallId, now: Time, got: usize) -> Answer {
        let sent = self.calls.get(&id).map_or(0, |call| call.keys.len());
        self.failed(id, now);
        Answer::Malformed { sent, got }
    }

    fn taken(
        &mut self,
        id: CallId,
        now: Time,
        proposals: Vec<CommandBody>,
        violations: Vec<(TransferId, Decision, u64)>,
    ) -> Answer {
        if let Some(call) = self.calls.get_mut(&id) {
            call.answered = true;
            call.pending = proposals.len();
        }
        self.succeeded(now);
        if proposals.is_empty() {
            self.finish(id);
        }
        Answer::Taken { proposals, violations }
    }

    /// A call succeeded at `now`: the link works.
    fn succeeded(&mut self, now: Time) {
        self.heard_at = Some(now);
        self.failures = 0;
        self.open_since = None;
        self.backoff = BACKOFF_FIRST;
    }

    /// One command proposed for call `id`'s answers was applied (or
    /// refused, as when leadership is lost): once all are, its messages
    /// are released.
    pub fn recorded(&mut self, id: CallId) {
        let Some(call) = self.calls.get_mut(&id).filter(|call| call.answered) else { return };
        call.pending = call.pending.saturating_sub(1);
        if call.pending == 0 {
            self.finish(id);
        }
    }

    fn finish(&mut self, id: CallId) {
        if let Some(call) = self.calls.remove(&id) {
            for key in &call.release {
                self.in_flight.remove(key);
            }
        }
    }

    /// Call `id` failed (no answer within [`CALL_TIMEOUT`], refused, the
    /// connection lost): its messages are released, the failure counts
    /// toward the breaker, and no call is made before a backoff. `None` if
    /// the shipper was not waiting for it.
    pub fn failed(&mut self, id: CallId, now: Time) -> Option<Failed> {
        self.waiting(id)?;
        let call = self.calls.remove(&id)?;
        for key in &call.keys {
            self.in_flight.remove(key);
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= BREAKER_FAILURES && self.open_since.is_none() {
            self.open_since = Some(now);
        }
        let jitter = Duration::from_micros(self.jitter.random_range(0..=self.backoff.as_micros() as u64 / 2));
        self.not_before = now + self.backoff + jitter;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        let mut proposals = Vec::new();
        if self.bug == Some(ShipperBug::AckFailedDecisions) {
            for (transfer, _, _) in call.decisions {
                proposals.push(CommandBody::DecisionAcked { region: self.region.clone(), transfer });
            }
        }
        Some(Failed { retry_at: self.not_before, proposals })
    }
}

#[cfg(test)]
mod tests;
