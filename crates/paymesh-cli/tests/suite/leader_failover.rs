//! A 3-node region of real processes takes a few thousand top-ups through
//! the admin API while its leader is killed with SIGKILL mid-stream. A new leader takes over, the
//! client follows it, and after the killed node restarts every acknowledged
//! write is present and every replica's state digest is equal.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{assert_all_present, Region, Writer};

/// Top-ups sent at once in each round.
const TOP_UPS_PER_ROUND: usize = 10;
/// Rounds in all: 3,000 top-ups.
const ROUNDS: usize = 300;
/// The leader is killed after this many rounds.
const KILL_AFTER: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_leader_kill() {
    let mut region = Region::start(3, "");
    let first_leader = region.initialize(1).await;
    let writer = Writer::new(&region);
    writer.partner().await;

    let mut acknowledged: Vec<String> = Vec::new();
    let mut unknown = 0usize;
    let mut killed_at = None;
    let mut longest_wait = Duration::ZERO;
    for round in 0..ROUNDS {
        if round == KILL_AFTER {
            region.kill(first_leader);
            killed_at = Some(Instant::now());
        }
        let references: Vec<String> = (0..TOP_UPS_PER_ROUND).map(|i| format!("wire-{round}-{i}")).collect();
        let started = Instant::now();
        // The client retries across the running nodes; a retry after a lost
        // reply is safe because the reference makes the top-up idempotent.
        let answers = writer.top_ups(&references).await;
        for (reference, answer) in references.into_iter().zip(answers) {
            match answer {
                Ok(()) => acknowledged.push(reference),
                Err(e) => {
                    eprintln!("top-up {reference} not acknowledged: {e}");
                    unknown += 1;
                }
            }
        }
        longest_wait = longest_wait.max(started.elapsed());
    }
    let new_leader = region.wait_leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, first_leader, "a new leader took over");
    assert!(
        unknown <= 2 * TOP_UPS_PER_ROUND,
        "{unknown} top-ups failed outright; the client should have followed the new leader"
    );

    // The killed node restarts and catches up; all three agree.
    region.spawn(first_leader);
    let statuses = region.wait_converged(Duration::from_secs(60)).await;
    assert_eq!(statuses.len(), 3);
    assert_all_present(&writer, &acknowledged).await;
    let statuses = region.wait_converged(Duration::from_secs(60)).await;
    println!(
        "acknowledged {} top-ups ({} unknown); leader {first_leader} killed, {new_leader} took over; \
         longest round {longest_wait:?} (killed {:?} before the end); replicas at applied index {:?} \
         with digest {}",
        acknowledged.len(),
        unknown,
        killed_at.map(|k| k.elapsed()),
        statuses[0].applied_index,
        common::hex(&statuses[0].state_digest)
    );
    assert_eq!(acknowledged.len() + unknown, ROUNDS * TOP_UPS_PER_ROUND);
}
