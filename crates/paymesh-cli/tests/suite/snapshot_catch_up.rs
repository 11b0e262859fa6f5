//! A node whose data directory is wiped rejoins empty and catches up by
//! snapshot, because the leader's log no longer reaches back to the start;
//! afterwards every replica's digest is equal. Also: SIGTERM stops a node
//! cleanly.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{assert_all_present, Region, Writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_catches_up_by_snapshot() {
    let mut region = Region::start(3, "logs_kept_after_snapshot = 0");
    region.initialize(1).await;
    let writer = Writer::new(&region);
    let client = region.client();
    writer.partner().await;
    let mut acknowledged = Vec::new();
    for round in 0..150 {
        let references: Vec<String> = (0..20).map(|i| format!("wire-{round}-{i}")).collect();
        for answer in writer.top_ups(&references).await {
            answer.unwrap();
        }
        acknowledged.extend(references);
    }
    region.wait_converged(Duration::from_secs(30)).await;
    // Every node compacts its log behind a snapshot.
    let mut snapshot_index = 0;
    for addr in region.api_addrs() {
        snapshot_index = client.trigger_snapshot(&addr).await.unwrap();
    }

    // Node 3 stops cleanly on SIGTERM and loses its data.
    let status = region.terminate(3);
    assert!(status.success(), "SIGTERM must stop a node cleanly, got {status}");
    region.wipe(3);
    // More writes while it is gone, so it needs the snapshot and the log after it.
    let writer = Writer::new(&region);
    for round in 150..200 {
        let references: Vec<String> = (0..20).map(|i| format!("wire-{round}-{i}")).collect();
        for answer in writer.top_ups(&references).await {
            answer.unwrap();
        }
        acknowledged.extend(references);
    }
    let started = Instant::now();
    region.spawn(3);
    let statuses = region.wait_converged(Duration::from_secs(60)).await;
    let caught_up = started.elapsed();
    let rejoined = statuses.iter().find(|s| s.node_id == 3).unwrap();
    assert!(
        rejoined.snapshot_index.is_some_and(|i| i >= snapshot_index),
        "node 3 must have installed the snapshot at {snapshot_index}: {rejoined:?}"
    );
    println!(
        "wiped node 3 caught up to applied index {:?} in {caught_up:?} (snapshot at {snapshot_index}, {} top-ups)",
        rejoined.applied_index,
        acknowledged.len()
    );
    assert_all_present(&Writer::new(&region), &acknowledged).await;
    region.wait_converged(Duration::from_secs(30)).await;
}
