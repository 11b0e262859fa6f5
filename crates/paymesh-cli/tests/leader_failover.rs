//! A 3-node region of real processes takes a few thousand commands while its
//! leader is killed with SIGKILL mid-stream. A new leader takes over, the
//! client follows it, and after the killed node restarts every acknowledged
//! write is present and every replica's state digest is equal.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{assert_all_present, Region, Writer};
use paymesh_core::Outcome;

/// Commands per proposal (one log entry each).
const COMMANDS_PER_PROPOSAL: usize = 10;
/// Proposals in all: 3,000 commands.
const PROPOSALS: usize = 300;
/// The leader is killed after this many acknowledged proposals.
const KILL_AFTER: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_leader_kill() {
    let mut region = Region::start(3, "");
    let first_leader = region.initialize(1).await;
    let mut writer = Writer::new(1);
    region.client().propose(&[writer.partner()]).await.unwrap();

    let mut acknowledged: Vec<String> = Vec::new();
    let mut unknown = 0usize;
    let mut killed_at = None;
    let mut longest_wait = Duration::ZERO;
    for proposal in 0..PROPOSALS {
        if proposal == KILL_AFTER {
            region.kill(first_leader);
            killed_at = Some(Instant::now());
        }
        let references: Vec<String> = (0..COMMANDS_PER_PROPOSAL).map(|i| format!("wire-{proposal}-{i}")).collect();
        let commands: Vec<_> = references.iter().map(|r| writer.top_up(r, 1)).collect();
        let started = Instant::now();
        // The client retries across the running nodes; a retry after a lost
        // reply is safe because the commands keep their ids.
        match region.client().propose(&commands).await {
            Ok((_, outcomes)) => {
                assert!(outcomes.iter().all(|o| *o == Outcome::Done), "{outcomes:?}");
                acknowledged.extend(references);
            }
            Err(e) => {
                eprintln!("proposal {proposal} not acknowledged: {e}");
                unknown += 1;
            }
        }
        longest_wait = longest_wait.max(started.elapsed());
    }
    let new_leader = region.wait_leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, first_leader, "a new leader took over");
    assert!(unknown <= 2, "{unknown} proposals failed outright; the client should have followed the new leader");

    // The killed node restarts and catches up; all three agree.
    region.spawn(first_leader);
    let statuses = region.wait_converged(Duration::from_secs(60)).await;
    assert_eq!(statuses.len(), 3);
    assert_all_present(&region.client(), &acknowledged).await;
    let statuses = region.wait_converged(Duration::from_secs(60)).await;
    println!(
        "acknowledged {} commands ({} proposals unknown); leader {first_leader} killed, {new_leader} took over; \
         longest single proposal wait {longest_wait:?} (killed {:?} before the end); replicas at applied index {:?} \
         with digest {}",
        acknowledged.len(),
        unknown,
        killed_at.map(|k| k.elapsed()),
        statuses[0].applied_index,
        common::hex(&statuses[0].state_digest)
    );
    assert_eq!(acknowledged.len() + unknown * COMMANDS_PER_PROPOSAL, PROPOSALS * COMMANDS_PER_PROPOSAL);
}
