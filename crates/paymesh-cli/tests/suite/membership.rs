//! Membership changes while the region keeps serving: a 4th node is added as
//! a learner and promoted, then an original node is removed; a writer runs
//! throughout and every one of its top-ups is acknowledged.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_all_present, Region, Writer};
use paymesh_proto::admin::v1 as wire;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_serves_while_a_node_is_added_and_another_removed() {
    let mut region = Region::start(3, "");
    region.initialize(1).await;
    Writer::new(&region).partner().await;

    // Node 4 starts with the full peer list but is not initialised: it waits
    // to be added.
    region.configure(4);
    let peers: Vec<u64> = vec![1, 2, 3, 4];
    region.write_config(4, &peers);
    region.spawn(4);
    let node4 = wire::NodeAddress {
        node_id: 4,
        raft_addr: region.nodes[&4].raft_addr.clone(),
        api_addr: region.nodes[&4].api_addr.clone(),
    };

    // A writer tops up continuously through nodes 2 and 3 (node 1 will go).
    let stop = Arc::new(AtomicBool::new(false));
    let writer_stop = stop.clone();
    let through = Writer::through(&region, &[2, 3]);
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut slowest = Duration::ZERO;
        let mut sent = 0;
        while !writer_stop.load(Ordering::Relaxed) && sent < 5_000 {
            let reference = format!("wire-{sent}");
            let started = Instant::now();
            through.top_up(&reference, 1).await.expect("every top-up is acknowledged");
            slowest = slowest.max(started.elapsed());
            acknowledged.push(reference);
            sent += 1;
        }
        (acknowledged, slowest)
    });

    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = region.client();
    client.add_node(node4).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.remove_node(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, slowest) = writer.await.unwrap();
    region.kill(1);

    let statuses = region.wait_converged(Duration::from_secs(30)).await;
    for status in &statuses {
        assert_eq!(status.voters, [2, 3, 4], "node {}: {status:?}", status.node_id);
    }
    assert!(acknowledged.len() > 10, "the writer made progress: {}", acknowledged.len());
    assert_all_present(&Writer::new(&region), &acknowledged).await;
    region.wait_converged(Duration::from_secs(30)).await;
    println!("{} top-ups acknowledged while node 4 joined and node 1 left; slowest {slowest:?}", acknowledged.len());
}

/// With every node on this release there is nothing to finalize: the
/// command says so, lists each node's release, and writes nothing; only an
/// operator may ask; `paymesh status` shows the protocol the region runs.
/// (The upgrade itself, to a build of the next release, is
/// `tests/rolling_upgrade.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizing_an_upgrade_with_every_node_on_this_release_changes_nothing() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    let before = region.wait_converged(Duration::from_secs(30)).await;
    let protocol = paymesh_core::version::PROTOCOL;
    assert!(before.iter().all(|s| s.region_protocol == 1 && s.protocol == protocol), "{before:?}");

    let (code, out, err) = region.cli("operator-tests", &["upgrade", "finalize"]);
    assert_eq!(code, 0, "{out}{err}");
    for id in 1..=3 {
        let line = format!("node {id}: release {}, protocols up to {protocol}", env!("CARGO_PKG_VERSION"));
        assert!(out.contains(&line), "{out}");
    }
    assert!(out.contains("the region runs protocol 1, the newest all its nodes support: nothing to finalize"), "{out}");
    let after = region.wait_converged(Duration::from_secs(30)).await;
    assert_eq!(after[0].applied_index, before[0].applied_index, "nothing was written");

    let (code, out, err) = region.cli("node-us-west-2", &["upgrade", "finalize"]);
    assert_ne!(code, 0, "a node's certificate may not finalize: {out}");
    assert!(err.contains("operator certificate"), "{err}");

    let (code, out, err) = region.cli("operator-tests", &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("protocol: the region runs 1; every reachable node supports up to {protocol}")),
        "{out}"
    );
}
