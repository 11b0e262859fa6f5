//! The shipper's rules, one at a time, with the time as a number.

use paymesh_core::command::{Decision, OutboxMessage, PrepareMessage, PrepareReply};
use paymesh_core::corridor::CorridorId;
use paymesh_core::currency::Currency::{CNY, USD};
use paymesh_core::fx::Rate;
use paymesh_core::id::{MerchantId, PartnerId, PayerToken, RegionId, TransferId};
use paymesh_core::{CommandBody, Money, Timestamp};
use paymesh_proto::interregion::v1 as wire;

use std::time::Duration;

use super::*;
use crate::interregion::{ack, reply_out};

/// A moment `ms` milliseconds after the driver started.
fn at(ms: u64) -> Time {
    Duration::from_millis(ms)
}

fn region(name: &str) -> RegionId {
    RegionId::new(name).unwrap()
}

fn transfer(n: u64) -> TransferId {
    TransferId::new(region("us-west"), n)
}

fn prepare(n: u64) -> OutboxMessage {
    OutboxMessage::Prepare(PrepareMessage {
        transfer: transfer(n),
        corridor: CorridorId::parse("USD:us-west->CNY:cn-east").unwrap(),
        source: Money::parse("1", USD).unwrap(),
        destination: Money::parse("7", CNY).unwrap(),
        rate: Rate::ONE,
        payee: PartnerId::new("wechat-cn").unwrap(),
        merchant: MerchantId::new("m").unwrap(),
        payer_token: PayerToken::for_transfer(&transfer(n)),
        deadline: Timestamp::from_unix_ms(1_000_000),
    })
}

fn decision(n: u64) -> OutboxMessage {
    OutboxMessage::Decision { transfer: transfer(n), decision: Decision::Commit, window: 7 }
}

/// A shipper to cn-east and a counter naming its calls.
fn shipper() -> (Shipper, impl FnMut() -> CallId) {
    let mut next = 0;
    (Shipper::new(region("cn-east"), 7), move || {
        next += 1;
        next
    })
}

fn prepared(call: &Outgoing) -> Vec<wire::PrepareReply> {
    let Call::Prepares(items) = &call.call else { panic!("not prepares: {call:?}") };
    items.iter().map(|item| reply_out(&item.id().to_string(), PrepareReply::Prepared)).collect()
}

#[test]
fn a_message_is_sent_once_until_its_answer_is_recorded() {
    let (mut shipper, mut ids) = shipper();
    let outbox = vec![prepare(1), prepare(2)];
    let calls = shipper.poll(at(0), &outbox, &mut ids);
    assert_eq!(calls.len(), 1);
    assert!(matches!(&calls[0].call, Call::Prepares(items) if items.len() == 2));
    assert!(shipper.poll(at(10), &outbox, &mut ids).is_empty(), "in flight: not sent again");

    let Answer::Taken { proposals, violations } = shipper.prepares_answered(calls[0].id, at(20), &prepared(&calls[0]))
    else {
        panic!("the answer is taken")
    };
    assert!(violations.is_empty());
    assert_eq!(
        proposals,
        vec![
            CommandBody::PrepareReplied { transfer: transfer(1), reply: PrepareReply::Prepared },
            CommandBody::PrepareReplied { transfer: transfer(2), reply: PrepareReply::Prepared },
        ]
    );
    assert!(shipper.poll(at(30), &outbox, &mut ids).is_empty(), "still in flight until both answers are recorded");
    shipper.recorded(calls[0].id);
    assert!(shipper.poll(at(40), &outbox, &mut ids).is_empty());
    shipper.recorded(calls[0].id);
    assert_eq!((shipper.unfinished(), shipper.in_flight()), (0, 0));
    // Were the answers not applied (leadership lost, say), the outbox
    // still holds the prepares and they go again.
    assert_eq!(shipper.poll(at(50), &outbox, &mut ids).len(), 1);
}

#[test]
fn answers_that_are_late_duplicated_or_for_no_call_are_ignored() {
    let (mut shipper, mut ids) = shipper();
    let outbox = vec![prepare(1)];
    let call = shipper.poll(at(0), &outbox, &mut ids).remove(0);
    let replies = prepared(&call);
    assert_eq!(shipper.prepares_answered(999, at(1), &replies), Answer::Stale);
    assert!(matches!(shipper.prepares_answered(call.id, at(1), &replies), Answer::Taken { .. }));
    assert_eq!(shipper.prepares_answered(call.id, at(2), &replies), Answer::Stale, "a duplicate");
    assert_eq!(shipper.failed(call.id, at(3)), None, "answered: a timeout after it is not a failure");
    assert_eq!(shipper.failures(), 0);

    let (mut shipper, mut ids) = self::shipper();
    let call = shipper.poll(at(0), &outbox, &mut ids).remove(0);
    assert!(shipper.failed(call.id, at(3_000)).is_some());
    assert_eq!(shipper.prepares_answered(call.id, at(3_001), &replies), Answer::Stale, "after its timeout");
}

#[test]
fn an_answer_with_the_wrong_number_of_items_fails_the_call() {
    let (mut shipper, mut ids) = shipper();
    let outbox = vec![prepare(1), prepare(2)];
    let call = shipper.poll(at(0), &outbox, &mut ids).remove(0);
    let mut replies = prepared(&call);
    replies.pop();
    assert_eq!(shipper.prepares_answered(call.id, at(5), &replies), Answer::Malformed { sent: 2, got: 1 });
    assert_eq!((shipper.failures(), shipper.in_flight(), shipper.unfinished()), (1, 0, 0));
}

#[test]
fn failures_back_off_with_capped_doubling_and_open_the_breaker_at_the_third() {
    let (mut shipper, mut ids) = shipper();
    let outbox = vec![prepare(1)];
    let first = BACKOFF_FIRST;
    let mut now = Time::ZERO;
    let mut pauses = Vec::new();
    for failure in 1..=8u32 {
        let call = shipper.poll(now, &outbox, &mut ids).remove(0);
        assert!(matches!(call.call, Call::Prepares(_)));
        now += at(5);
        let failed = shipper.failed(call.id, now).unwrap();
        assert!(failed.proposals.is_empty());
        assert_eq!(shipper.in_flight(), 0, "released");
        // Backing off: nothing sent before the pause ends (but, once the
        // breaker is open and nothing is unfinished, one probe).
        let early = shipper.poll(failed.retry_at - at(1), &outbox, &mut ids);
        let probes = usize::from(failure == BREAKER_FAILURES);
        assert_eq!(early.iter().map(|c| &c.call).collect::<Vec<_>>(), vec![&Call::Probe; probes], "backing off");
        pauses.push(failed.retry_at - now);
        assert_eq!(shipper.open_since().is_some(), failure >= BREAKER_FAILURES, "after failure {failure}");
        if failure == BREAKER_FAILURES {
            assert_eq!(shipper.open_since(), Some(now));
        }
        now = failed.retry_at;
    }
    for (n, pause) in pauses.iter().enumerate() {
        let base = (first * (1 << n)).min(BACKOFF_MAX);
        assert!((base..=base + base / 2).contains(pause), "pause {n}: {pause:?}, base {base:?}");
    }
    // One answer closes the breaker and starts the backoff over.
    let call = shipper.poll(now, &outbox, &mut ids).remove(0);
    assert!(matches!(shipper.prepares_answered(call.id, now + at(1), &prepared(&call)), Answer::Taken { .. }));
    assert_eq!((shipper.open_since(), shipper.failures()), (None, 0));
    shipper.recorded(call.id);
    let call = shipper.poll(now + at(2), &outbox, &mut ids).remove(0);
    let failed = shipper.failed(call.id, now + at(3)).unwrap();
    assert!(failed.retry_at - (now + at(3)) <= first + first / 2);
}

/// A cut link drops packets: its calls neither answer nor fail before
/// their timeout. A call waiting [`BREAKER_SILENCE`] with nothing heard from
/// the region meanwhile opens the breaker, seconds before the timeouts
/// would; a region that answered anything within the silence is not cut;
/// an answer closes it.
#[test]
fn a_call_unanswered_for_the_silence_with_nothing_heard_opens_the_breaker() {
    let silence = BREAKER_SILENCE.as_millis() as u64;
    let (mut shipper, mut ids) = shipper();
    let first = shipper.poll(at(0), &[prepare(1)], &mut ids).remove(0);
    // Another call answered half way through: the region is alive.
    let second = shipper.poll(at(100), &[prepare(1), prepare(2)], &mut ids).remove(0);
    let half = at(silence / 2);
    assert!(matches!(shipper.prepares_answered(second.id, half, &prepared(&second)), Answer::Taken { .. }));
    shipper.recorded(second.id);
    shipper.poll(at(silence), &[prepare(1)], &mut ids);
    assert_eq!(shipper.open_since(), None, "heard from {half:?}: not silent for {BREAKER_SILENCE:?} yet");
    shipper.poll(half + BREAKER_SILENCE - at(1), &[prepare(1)], &mut ids);
    assert_eq!(shipper.open_since(), None);
    let opened = half + BREAKER_SILENCE;
    shipper.poll(opened, &[prepare(1)], &mut ids);
    assert_eq!(shipper.open_since(), Some(opened), "silent for {BREAKER_SILENCE:?} with a call waiting");
    assert_eq!(shipper.failures(), 0, "opened by the silence, before any call failed");
    // The waiting call's answer, late, closes it.
    assert!(matches!(shipper.prepares_answered(first.id, opened + at(5), &prepared(&first)), Answer::Taken { .. }));
    assert_eq!(shipper.open_since(), None);

    // Nothing waiting, nothing to hear: silence alone opens nothing.
    let (mut idle, mut ids) = self::shipper();
    idle.poll(at(0), &[], &mut ids);
    idle.poll(at(10 * silence), &[], &mut ids);
    assert_eq!(idle.open_since(), None);
    // A shipper that never heard from its region: the first call's wait.
    let (mut fresh, mut ids) = self::shipper();
    fresh.poll(at(5_000), &[prepare(1)], &mut ids);
    fresh.poll(at(5_000) + BREAKER_SILENCE - at(1), &[prepare(1)], &mut ids);
    assert_eq!(fresh.open_since(), None);
    fresh.poll(at(5_000) + BREAKER_SILENCE, &[prepare(1)], &mut ids);
    assert!(fresh.open_since().is_some());
}

#[test]
fn with_the_breaker_open_and_nothing_to_send_one_probe_runs_and_its_answer_decides() {
    let (mut shipper, mut ids) = shipper();
    let outbox = vec![prepare(1)];
    let mut now = Time::ZERO;
    for _ in 0..BREAKER_FAILURES {
        let call = shipper.poll(now, &outbox, &mut ids).remove(0);
        now = shipper.failed(call.id, now).unwrap().retry_at;
    }
    assert!(shipper.open_since().is_some());
    // Something to send: no probe beside it.
    let call = shipper.poll(now, &outbox, &mut ids).remove(0);
    assert!(matches!(call.call, Call::Prepares(_)));
    // Nothing to send and nothing unfinished: a probe, one at a time.
    now = shipper.failed(call.id, now).unwrap().retry_at;
    let probe = shipper.poll(now, &[], &mut ids);
    assert_eq!(probe.len(), 1);
    assert_eq!(probe[0].call, Call::Probe);
    assert!(shipper.poll(now + at(1), &[], &mut ids).is_empty(), "one probe at a time");
    shipper.probed(probe[0].id, now + PROBE_DELAY, false);
    assert!(shipper.open_since().is_some());
    let retry = shipper.next_wake(now + PROBE_DELAY);
    let probe = shipper.poll(retry, &[], &mut ids).remove(0);
    shipper.probed(probe.id, retry + PROBE_DELAY, true);
    assert_eq!((shipper.open_since(), shipper.failures(), shipper.unfinished()), (None, 0, 0));
    assert!(shipper.poll(retry + PROBE_DELAY, &[], &mut ids).is_empty(), "closed: no probe");
}

#[test]
fn acknowledged_decisions_are_recorded_and_violations_stay_in_flight() {
    let (mut shipper, mut ids) = shipper();
    let outbox = vec![decision(1), decision(2), decision(3)];
    let call = shipper.poll(at(0), &outbox, &mut ids).remove(0);
    assert!(matches!(&call.call, Call::Decisions(items) if items.len() == 3));
    let acks = vec![
        ack(&transfer(1).to_string(), wire::AckResult::Acked),
        ack(&transfer(2).to_string(), wire::AckResult::ProtocolViolation),
        ack(&transfer(9).to_string(), wire::AckResult::Acked),
    ];
    let Answer::Taken { proposals, violations } = shipper.decisions_answered(call.id, at(5), &acks) else {
        panic!("taken")
    };
    assert_eq!(proposals, vec![CommandBody::DecisionAcked { region: region("cn-east"), transfer: transfer(1) }]);
    assert_eq!(violations, vec![(transfer(2), Decision::Commit, 7)]);
    shipper.recorded(call.id);
    // Decision 3's ack named another transfer: released and sent again;
    // decision 2 is not sent again by this shipper.
    let again = shipper.poll(at(10), &outbox, &mut ids);
    let sent: Vec<&Call> = again.iter().map(|c| &c.call).collect();
    assert_eq!(
        sent,
        vec![&Call::Decisions(vec![(transfer(1), Decision::Commit, 7), (transfer(3), Decision::Commit, 7)])]
    );
}

#[test]
fn calls_are_bounded_and_batches_hold_at_most_their_limit() {
    let (mut shipper, mut ids) = shipper();
    let outbox: Vec<OutboxMessage> = (1..=(BATCH_ITEMS_MAX as u64 * (RPCS_IN_FLIGHT_MAX as u64 + 2)))
        .flat_map(|n| [prepare(n), decision(n)])
        .collect();
    let mut calls = Vec::new();
    for tick in 0..RPCS_IN_FLIGHT_MAX as u64 {
        calls.extend(shipper.poll(at(tick), &outbox, &mut ids));
    }
    assert_eq!(calls.len(), RPCS_IN_FLIGHT_MAX);
    assert_eq!(shipper.unfinished(), RPCS_IN_FLIGHT_MAX);
    for call in &calls {
        match &call.call {
            Call::Prepares(items) => assert_eq!(items.len(), BATCH_ITEMS_MAX),
            Call::Decisions(items) => assert_eq!(items.len(), BATCH_ITEMS_MAX),
            Call::Probe => panic!("no probe"),
        }
    }
    assert_eq!(shipper.in_flight(), RPCS_IN_FLIGHT_MAX * BATCH_ITEMS_MAX, "decisions not sent are not kept");
    assert!(shipper.poll(at(100), &outbox, &mut ids).is_empty(), "at the limit");
}

#[test]
fn the_injected_bugs_do_what_they_say() {
    let (mut shipper, mut ids) = shipper();
    shipper.inject(ShipperBug::AckFailedDecisions);
    let call = shipper.poll(at(0), &[decision(1)], &mut ids).remove(0);
    let failed = shipper.failed(call.id, at(1)).unwrap();
    assert_eq!(failed.proposals, vec![CommandBody::DecisionAcked { region: region("cn-east"), transfer: transfer(1) }]);

    let (mut shipper, mut ids) = self::shipper();
    shipper.inject(ShipperBug::NewLeaderTrustsMemory);
    assert!(shipper.poll(at(0), &[decision(1), prepare(2)], &mut ids).is_empty());
    assert_eq!(shipper.poll(at(1), &[decision(1), prepare(2), prepare(3)], &mut ids).len(), 1, "only what came later");
}

/// A region electing a new leader answers every call at once with a
/// failure (no leader known) for about two seconds. The shipper's pauses
/// stay short enough that its first call after the election comes within
/// a few hundred milliseconds of it, as a partner's SDK's do: the corridor
/// into the region (its breaker open meanwhile) resumes with the region,
/// not seconds later (a 2 s cap held it up to 2.8 s past the election in
/// the container runs).
#[test]
fn calls_resume_soon_after_a_remote_election_of_fast_failures() {
    let mut latest = Duration::ZERO;
    // Elections of 1.6 to 3 s, as measured here.
    for election in (1_600..=3_000).step_by(50).map(at) {
        let (mut shipper, mut ids) = shipper();
        let outbox = [prepare(1)];
        let mut now = at(0);
        let resumed = loop {
            let calls = shipper.poll(now, &outbox, &mut ids);
            if let Some(call) = calls.into_iter().find(|c| matches!(c.call, Call::Prepares(_))) {
                if now >= election {
                    break now;
                }
                // Answered at once: no leader known yet.
                shipper.failed(call.id, now + at(5)).unwrap();
            }
            now = shipper.next_wake(now).max(now + at(1));
            assert!(now < at(10_000), "never called again");
        };
        latest = latest.max(resumed - election);
    }
    assert!(latest <= Duration::from_millis(400), "the first call after an election came up to {latest:?} after it");
}
