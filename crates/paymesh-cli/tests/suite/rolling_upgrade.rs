//! Upgrading a region node by node while the mesh pays, on real processes:
//! us-west's three nodes are stopped one at a time (followers first, the
//! leader last) and started again from a build of the next release (this
//! code with the feature `next-release`: the newest protocol raised by
//! one), while its wallet and ap-southeast's pay cn-east's merchants. The
//! region runs protocol 1 throughout the roll, which both releases write
//! and read; once every node runs the next release, `paymesh upgrade
//! finalize` moves it to protocol 2, and cn-east (not upgraded) sees
//! us-west's messages say so. A node of the old release started on a
//! snapshot of protocol 2 refuses to run. Nothing is lost: no payment
//! fails after the SDK's retries, and every checker passes over the three
//! regions at the end.
//!
//! It needs the next release's binary, which takes a build of its own
//! (about three minutes): `scripts/next-release.sh` builds it and runs this
//! test.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paymesh_harness::local::LocalRegion;
use paymesh_harness::mesh::LocalMesh;
use paymesh_harness::wan::WanSettings;
use paymesh_harness::world;
use paymesh_proto::admin::v1 as admin;

const RAFT: &str = "heartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600";

/// The region upgraded.
const UPGRADED: &str = "us-west";

/// Payments acknowledged between two steps of the roll, at least.
const BETWEEN_STEPS: usize = 30;

/// The next release's binary: `PAYMESH_NEXT_RELEASE_BIN`, or where
/// `scripts/next-release.sh` builds it.
fn next_release() -> PathBuf {
    let path = std::env::var_os("PAYMESH_NEXT_RELEASE_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/next-release/debug/paymesh"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no build of the next release at {}: run scripts/next-release.sh (it builds one and runs this test)",
        path.display()
    );
    path
}

/// Every node's status, by id (a node that does not answer is missing).
async fn statuses(region: &LocalRegion) -> Vec<admin::GetNodeStatusResponse> {
    let client = region.client().unwrap();
    region.statuses(&client, false).await
}

/// Wait until node `id` answers with the release of `protocol`, a member
/// of the region that has applied at least `index`.
async fn rejoined(region: &LocalRegion, id: u64, protocol: u32, index: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let all = statuses(region).await;
        if let Some(node) = all.iter().find(|s| s.node_id == id) {
            if node.protocol == protocol && node.applied_index.unwrap_or(0) >= index && node.leader_id.is_some() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "node {id} did not rejoin within {within:?}\n{}", region.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader's id and its applied index.
async fn leader(region: &LocalRegion) -> (u64, u64) {
    let id = region.wait_leader(Duration::from_secs(30)).await.unwrap();
    let all = statuses(region).await;
    let applied = all.iter().filter_map(|s| s.applied_index).max().unwrap_or(0);
    (id, applied)
}

/// A node's metrics page.
async fn metrics(region: &LocalRegion, id: u64) -> String {
    let addr = &region.nodes[&id].metrics_addr;
    reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a build of the next release (about 3 minutes): scripts/next-release.sh builds it and runs this test"]
async fn a_region_is_upgraded_node_by_node_while_the_mesh_pays_and_nothing_is_lost() {
    let next = next_release();
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_paymesh"));
    let mut mesh =
        LocalMesh::start(dir.path(), exe, &world::regions(), 3, RAFT, WanSettings::default(), &[]).await.unwrap();
    world::configure(&mesh).await.unwrap();
    let (tally, stop) = (common::Tally::default(), Arc::new(AtomicBool::new(false)));
    let acknowledged = tally.acknowledged.clone();
    let workers: Vec<_> = [("us-west", "paypal-us"), ("ap-southeast", "gcash-ph")]
        .into_iter()
        .map(|(region, wallet)| {
            let client = mesh.region(region).unwrap().partner(wallet).unwrap();
            common::pay_until_counting(client, region, 0, stop.clone(), tally.clone())
        })
        .collect();
    common::wait_for(&acknowledged, BETWEEN_STEPS, Duration::from_secs(60)).await;

    // The roll: followers first, the leader last, each node stopped with
    // SIGTERM and started from the next release's binary.
    let started = Instant::now();
    let (first_leader, _) = leader(mesh.region(UPGRADED).unwrap()).await;
    let mut order: Vec<u64> =
        mesh.region(UPGRADED).unwrap().nodes.keys().copied().filter(|id| *id != first_leader).collect();
    order.push(first_leader);
    let mut steps = Vec::new();
    for id in order {
        let step = Instant::now();
        let region = mesh.region_mut(UPGRADED).unwrap();
        let (_, applied) = leader(region).await;
        let exit = region.terminate(id).unwrap();
        assert!(exit.success(), "node {id} stopped cleanly on SIGTERM: {exit}");
        region.set_exe(&next);
        region.spawn(id).unwrap();
        rejoined(region, id, paymesh_core::version::PROTOCOL + 1, applied, Duration::from_secs(60)).await;
        // Mixed releases: the region still runs protocol 1, and finalizing
        // changes nothing while a node of the old release remains.
        if steps.len() < 2 {
            let (code, out, err) = region.cli(&region.operator_stem(), &["upgrade", "finalize"]).unwrap();
            assert_eq!(code, 0, "{out}{err}");
            assert!(out.contains("nothing to finalize"), "{out}");
        }
        for status in statuses(region).await {
            assert_eq!(status.region_protocol, 1, "node {} during the roll", status.node_id);
        }
        let at = acknowledged.load(Ordering::Relaxed);
        common::wait_for(&acknowledged, at + BETWEEN_STEPS, Duration::from_secs(60)).await;
        steps.push(step.elapsed());
    }
    let rolled_in = started.elapsed();

    // Every node runs the next release: status says so, and finalizing
    // moves the region to protocol 2 (audited; a second call changes
    // nothing).
    let region = mesh.region(UPGRADED).unwrap();
    let (code, out, err) = region.cli(&region.operator_stem(), &["status"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("finish the upgrade with `paymesh upgrade finalize`"), "{out}");
    let (code, out, err) = region.cli(&region.operator_stem(), &["upgrade", "finalize"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the region moved from protocol 1 to 2"), "{out}");
    let (code, again, _) = region.cli(&region.operator_stem(), &["upgrade", "finalize"]).unwrap();
    assert_eq!(code, 0);
    assert!(again.contains("nothing to finalize"), "{again}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while statuses(region).await.iter().any(|s| s.region_protocol != 2) {
        assert!(Instant::now() < deadline, "every node applies the raise");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = acknowledged.load(Ordering::Relaxed);
    common::wait_for(&acknowledged, at + BETWEEN_STEPS, Duration::from_secs(60)).await;
    // cn-east, not upgraded, hears us-west say so in its messages.
    let cn = mesh.region("cn-east").unwrap();
    let (cn_leader, _) = leader(cn).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = metrics(cn, cn_leader).await;
        if page.contains("paymesh_remote_region_protocol{remote_region=\"us-west\"} 2") {
            assert!(page.contains("paymesh_region_protocol 1"), "cn-east itself runs protocol 1");
            break;
        }
        assert!(Instant::now() < deadline, "cn-east never heard us-west's protocol:\n{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A node of the old release cannot follow: started on a snapshot of
    // protocol 2, it refuses, naming the protocol; the next release's
    // binary brings it back.
    let region = mesh.region_mut(UPGRADED).unwrap();
    let (current_leader, _) = leader(region).await;
    let back = *region.nodes.keys().find(|id| **id != current_leader).unwrap();
    region.client().unwrap().trigger_snapshot(&region.nodes[&back].api_addr.clone()).await.unwrap();
    region.terminate(back).unwrap();
    region.set_exe(exe);
    region.spawn(back).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        if let Some(status) = region.exited(back).unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old release ran on protocol 2's data\n{}", region.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!refused.success(), "{refused}");
    let log = std::fs::read_to_string(&region.nodes[&back].log).unwrap();
    assert!(log.contains("the region runs protocol 2"), "{}", region.logs());
    region.set_exe(&next);
    let (_, applied) = leader(region).await;
    region.spawn(back).unwrap();
    rejoined(region, back, paymesh_core::version::PROTOCOL + 1, applied, Duration::from_secs(60)).await;

    // Nothing lost: the wallets stop, every transfer is final, the books
    // balance, every commit is credited once.
    stop.store(true, Ordering::Relaxed);
    let mut made = 0;
    for worker in workers {
        made += worker.await.unwrap().len();
    }
    common::assert_every_checker_passes(&mesh, &world::WALLETS, &world::MERCHANTS, Duration::from_secs(90)).await;
    let (failed, retried) = (tally.failed.load(Ordering::Relaxed), tally.retried.load(Ordering::Relaxed));
    println!(
        "{UPGRADED} upgraded node by node in {rolled_in:?} (steps {steps:?}, the leader last) while {made} payments \
         were made; the SDK retried {retried} answers, {failed} payments failed after its retries; finalized to \
         protocol 2; every checker passed"
    );
    assert_eq!(failed, 0, "no payment fails beyond the SDK's retries");
    mesh.stop().unwrap();
}
