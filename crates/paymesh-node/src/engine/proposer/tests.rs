//! The proposer's rules with the time as a number: linger, full entries,
//! one entry in flight, group commit's hold, numbering, fairness, refusals,
//! the tick.

use paymesh_core::id::PartnerId;

use super::*;

const INTERVAL: Duration = Duration::from_millis(5);

fn at_us(us: u64) -> Time {
    Duration::from_micros(us)
}

fn partner(name: &str) -> Lane {
    Lane::Partner(PartnerId::new(name).unwrap())
}

/// A proposer on node 2 and `n` ticks submitted to it at `now` in lane
/// `lane`, the waiters numbered from 0.
fn submit_ticks(proposer: &mut Proposer<u32>, now: Time, lane: &Lane, n: u32) {
    for waiter in 0..n {
        proposer.submit(now, lane.clone(), CommandBody::Tick, waiter).unwrap();
    }
}

#[test]
fn a_lone_command_waits_the_linger_and_goes_alone() {
    let mut proposer = Proposer::new(2, 7, Duration::ZERO);
    submit_ticks(&mut proposer, at_us(1_000), &Lane::Region, 1);
    assert!(proposer.poll(at_us(1_000)).is_none(), "lingering");
    assert_eq!(proposer.next_wake(), Some(at_us(1_000) + LINGER));
    let entry = proposer.poll(at_us(1_000) + LINGER).expect("due after the linger");
    assert_eq!(entry.waiters, vec![0]);
    assert_eq!(entry.commands[0].id, CommandId { session: proposer.session(), sequence: 1 });
    assert_eq!(proposer.next_wake(), None);
}

#[test]
fn a_full_batch_goes_at_once_and_one_entry_is_in_flight_at_a_time() {
    let mut proposer = Proposer::new(2, 7, Duration::ZERO);
    let n = u32::try_from(BATCH_COMMANDS_MAX).unwrap() + 3;
    submit_ticks(&mut proposer, at_us(0), &Lane::Region, n);
    let first = proposer.poll(at_us(0)).expect("a full batch is due at once");
    assert_eq!(first.commands.len(), BATCH_COMMANDS_MAX);
    assert!(proposer.poll(at_us(0)).is_none(), "one entry in flight");
    assert_eq!(proposer.next_wake(), None, "nothing to wake for until it ends");
    // Ended: the rest goes at once, without a linger, numbered on.
    proposer.settled(at_us(100));
    let second = proposer.poll(at_us(100)).expect("the rest at once");
    assert_eq!(second.waiters, vec![n - 3, n - 2, n - 1]);
    let sequences: Vec<u64> = second.commands.iter().map(|c| c.id.sequence).collect();
    let first_next = BATCH_COMMANDS_MAX as u64 + 1;
    assert_eq!(sequences, vec![first_next, first_next + 1, first_next + 2]);
}

#[test]
fn commands_are_numbered_when_taken_one_from_each_lane_in_turn() {
    let mut proposer = Proposer::new(2, 7, Duration::ZERO);
    submit_ticks(&mut proposer, at_us(0), &partner("flood"), 5);
    proposer.submit(at_us(0), partner("calm"), CommandBody::Tick, 100).unwrap();
    let entry = proposer.poll(LINGER).unwrap();
    assert_eq!(entry.waiters, vec![0, 100, 1, 2, 3, 4], "calm's command waits one round at most");
    let sequences: Vec<u64> = entry.commands.iter().map(|c| c.id.sequence).collect();
    assert_eq!(sequences, (1..=6).collect::<Vec<_>>(), "numbered in the entry's order");
}

#[test]
fn a_busy_region_holds_the_next_entry_until_the_interval_has_passed() {
    let mut proposer = Proposer::new(2, 7, INTERVAL);
    let siblings = u32::try_from(GROUP_COMMIT_SIBLINGS).unwrap();
    submit_ticks(&mut proposer, at_us(0), &Lane::Region, siblings);
    let proposed = LINGER;
    assert_eq!(proposer.poll(proposed).unwrap().commands.len(), GROUP_COMMIT_SIBLINGS);
    submit_ticks(&mut proposer, proposed, &Lane::Region, 3);
    proposer.settled(proposed + at_us(2_000));
    assert!(proposer.poll(proposed + at_us(2_000)).is_none(), "held");
    assert_eq!(proposer.next_wake(), Some(proposed + INTERVAL));
    assert_eq!(proposer.poll(proposed + INTERVAL).unwrap().commands.len(), 3);

    // After a small entry nothing is held.
    proposer.settled(proposed + INTERVAL);
    submit_ticks(&mut proposer, proposed + INTERVAL, &Lane::Region, 1);
    proposer.settled(proposed + INTERVAL);
    assert!(proposer.poll(proposed + INTERVAL + at_us(1)).is_some(), "the last entry was small");
}

#[test]
fn a_quiet_region_a_full_batch_or_no_interval_holds_nothing() {
    let proposed = at_us(0);
    let now = proposed + Duration::from_millis(1);
    let small = Some((proposed, GROUP_COMMIT_SIBLINGS - 1));
    assert_eq!(hold(INTERVAL, small, 3, now), None, "the last entry was small");
    assert_eq!(hold(INTERVAL, None, 3, now), None, "no entry yet");
    let busy = Some((proposed, BATCH_COMMANDS_MAX));
    assert_eq!(hold(INTERVAL, busy, BATCH_COMMANDS_MAX, now), None, "a full batch waits");
    assert_eq!(hold(Duration::ZERO, busy, 3, now), None, "group commit off");
    assert_eq!(hold(INTERVAL, busy, 3, now), Some(proposed + INTERVAL));
    assert_eq!(hold(INTERVAL, busy, 3, proposed + INTERVAL), None, "due now");
}

#[test]
fn full_lanes_and_a_full_queue_refuse_at_once_and_a_drain_returns_every_waiter() {
    let mut proposer: Proposer<usize> = Proposer::new(2, 7, Duration::ZERO);
    for n in 0..QUEUE_COMMANDS_PER_PARTNER_MAX {
        proposer.submit(at_us(0), partner("a"), CommandBody::Tick, n).unwrap();
    }
    let refused = proposer.submit(at_us(0), partner("a"), CommandBody::Tick, 9_999).unwrap_err();
    assert_eq!(refused.waiter, 9_999);
    assert!(refused.why.contains("QUEUE_COMMANDS_PER_PARTNER_MAX"));
    let mut n = QUEUE_COMMANDS_PER_PARTNER_MAX;
    while n < QUEUE_COMMANDS_MAX {
        proposer.submit(at_us(0), Lane::Region, CommandBody::Tick, n).unwrap();
        n += 1;
    }
    let refused = proposer.submit(at_us(0), partner("b"), CommandBody::Tick, n).unwrap_err();
    assert!(refused.why.contains("queue is full"));
    let drained = proposer.drain();
    assert_eq!(drained.len(), QUEUE_COMMANDS_MAX);
    assert_eq!(proposer.queued(), 0);
    assert!(proposer.poll(Duration::from_secs(1)).is_none());
}

#[test]
fn one_tick_at_a_time_and_again_at_once_after_a_full_one() {
    let mut proposer: Proposer<()> = Proposer::new(2, 7, Duration::ZERO);
    assert!(!proposer.tick(false), "no work due");
    assert!(proposer.tick(true));
    assert!(!proposer.tick(true), "one in flight");
    assert!(proposer.ticked(true), "a full tick: look again at once");
    assert!(proposer.tick(true));
    assert!(!proposer.ticked(false));
    assert!(proposer.tick(true));
}

#[test]
fn a_session_names_its_node_and_is_fresh_each_leadership() {
    let one = session(3, 0x1234_5678_9abc_def0);
    assert_eq!(one >> 48, 3);
    assert_eq!(one & ((1 << 48) - 1), 0x5678_9abc_def0);
    assert_eq!(session(3, 0) & ((1 << 48) - 1), 1, "never 0");
    assert_ne!(
        Proposer::<()>::new(3, 1, Duration::ZERO).session(),
        Proposer::<()>::new(3, 2, Duration::ZERO).session()
    );

    let mut buggy: Proposer<()> = Proposer::new(3, 1, Duration::ZERO);
    buggy.inject(ProposerBug::SessionPerNode);
    assert_eq!(buggy.session(), 3, "the bug: the node alone");
}
