//! A region's disks are lost and it comes back from a backup while the
//! mesh keeps paying, on real processes (3 regions × 3 nodes on loopback).
//!
//! The wallets in `us-west` and `ap-southeast` pay `cn-east`'s merchants
//! the whole time. `cn-east` is backed up while paying; more payments
//! commit after the backup; then every `cn-east` node is killed and its
//! data directory deleted, and `paymesh restore` seeds three new ones from
//! the backup. The restored region reconciles with the other two before it
//! exchanges anything with them: the credits it lost are recreated from
//! their records, the transfers it held prepared take their decisions.
//! Then every payment of the run is final, every region's books balance,
//! each committed payment was credited exactly once in `cn-east`, and the
//! report says what was reconciled (nothing was unrecoverable: `cn-east`
//! coordinates none of these payments).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paymesh_client::PartnerClient;
use paymesh_harness::history::TransferState;
use paymesh_harness::mesh::LocalMesh;
use paymesh_harness::wan::WanSettings;
use paymesh_harness::{check, locality, observe, world};
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;

const RAFT: &str = "heartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600";

/// Payments each wallet makes at most (the loops stop by themselves).
const PAYMENTS_MAX: usize = 3_000;

/// A wallet paying WeChat merchants one payment after another until told
/// to stop; the ids of the payments it was answered with.
fn pay_until(
    client: PartnerClient,
    region: &'static str,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut ids = Vec::new();
        for n in 0..PAYMENTS_MAX {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let [name, account, reference] = locality::payer_fields(region, 0, n as u64);
            let request = wire::CreatePaymentRequest {
                idempotency_key: format!("{region}-{n}"),
                qr_payload: format!("wxp://test/{region}-{n}"),
                amount: Some(wire::create_payment_request::Amount::DestinationAmount(common::Money {
                    amount: "7.10".into(),
                    currency: "CNY".into(),
                })),
                max_total_debit: None,
                payer: Some(wire::PayerDetails { name, account, reference }),
            };
            match client.create_payment(request).await {
                Ok(answer) => {
                    ids.push(answer.transfer.unwrap().transfer_id);
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                // Refused while cn-east is away (its breaker open, or
                // reconciling): the wallet waits a little and goes on.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        ids
    })
}

async fn wait_for(count: &AtomicUsize, at_least: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while count.load(Ordering::Relaxed) < at_least {
        assert!(
            Instant::now() < deadline,
            "{} payments, not {at_least}, within {within:?}",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The restore's report once every node applied its reconciliation's end.
async fn reconciled(mesh: &LocalMesh, within: Duration) -> admin::RestoreReport {
    let region = mesh.region("cn-east").unwrap();
    let client = region.client().unwrap();
    let deadline = Instant::now() + within;
    loop {
        let statuses = region.statuses(&client, false).await;
        let reports: Vec<&admin::RestoreReport> = statuses.iter().filter_map(|s| s.restore.as_ref()).collect();
        if reports.len() == 3 && reports.iter().all(|r| r.regions.iter().all(|g| g.done)) {
            return reports[0].clone();
        }
        assert!(Instant::now() < deadline, "not reconciled within {within:?}: {reports:?}\n{}", region.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_restored_from_a_backup_reconciles_with_the_mesh_and_loses_no_payment() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_paymesh"));
    let mut mesh =
        LocalMesh::start(dir.path(), exe, &world::regions(), 3, RAFT, WanSettings::default(), &[]).await.unwrap();
    world::configure(&mesh).await.unwrap();
    let (stop, acknowledged) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let wallets = [("us-west", "paypal-us"), ("ap-southeast", "gcash-ph")];
    let workers: Vec<_> = wallets
        .iter()
        .map(|(region, wallet)| {
            let client = mesh.region(region).unwrap().partner(wallet).unwrap();
            pay_until(client, region, stop.clone(), acknowledged.clone())
        })
        .collect();

    // The backup, while both wallets pay.
    wait_for(&acknowledged, 60, Duration::from_secs(60)).await;
    let file = dir.path().join("cn-east.pmbackup");
    let cn = mesh.region("cn-east").unwrap();
    let started = Instant::now();
    let (code, out, err) = cn.cli(&cn.operator_stem(), &["backup", "take", "--out", file.to_str().unwrap()]).unwrap();
    let backup_took = started.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    let at_backup = acknowledged.load(Ordering::Relaxed);
    // Payments the backup does not hold.
    wait_for(&acknowledged, at_backup + 80, Duration::from_secs(60)).await;

    // The disaster: every cn-east node and its disk are lost, while the
    // wallets keep paying (and are refused once cn-east's breaker opens).
    let cn = mesh.region_mut("cn-east").unwrap();
    for id in 1..=3 {
        cn.kill(id).unwrap();
        cn.wipe(id).unwrap();
    }
    let before_loss = acknowledged.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let restoring = Instant::now();
    for id in 1..=3 {
        let config = cn.nodes[&id].config.clone();
        let output = Command::new(exe)
            .args(["restore", "--backup", file.to_str().unwrap(), "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "restoring node {id}: {text}");
        assert!(text.contains("reconciles with ap-southeast, us-west"), "{text}");
    }
    let restored_in = restoring.elapsed();
    for id in 1..=3 {
        cn.spawn(id).unwrap();
    }
    let report = reconciled(&mesh, Duration::from_secs(120)).await;
    let reconciled_in = restoring.elapsed();
    let after_restore = acknowledged.load(Ordering::Relaxed);
    // Payments into cn-east flow again.
    wait_for(&acknowledged, after_restore + 40, Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    let mut paid = 0;
    for worker in workers {
        paid += worker.await.unwrap().len();
    }

    // Every payment final, books balanced, every commit credited once.
    let partners = observe::Partners { wallets: &world::WALLETS, merchants: &world::MERCHANTS };
    let observed = observe::live_mesh(&mesh, partners, Duration::from_secs(90), "process").await.unwrap();
    let verdict = check::check_with(&check::of_observation(), &observed);
    assert!(verdict.passed(), "{}", verdict.failures(5));
    let observation = observed.observation.as_ref().unwrap();
    let committed_in = |region: &str| {
        let transfers = observation.regions[region].transfers.iter();
        transfers.filter(|t| t.is_origin_side_in(region) && t.state == TransferState::Committed).count()
    };
    let (west, south) = (committed_in("us-west"), committed_in("ap-southeast"));

    assert_eq!(report.regions.len(), 2, "{report:?}");
    let mut recovered = 0;
    for region in &report.regions {
        assert_eq!((region.unrecoverable_count, region.conflict_count), (0, 0), "{region:?}");
        recovered += region.credits_recovered + region.committed;
    }
    assert!(recovered > 0, "the payments committed after the backup were recovered: {report:?}");
    let cn = mesh.region("cn-east").unwrap();
    let (code, out, err) = cn.cli(&cn.operator_stem(), &["status"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restored from a backup at index") && out.contains("0 unrecoverable, 0 conflicts"), "{out}");
    println!("{out}");
    let size = std::fs::metadata(&file).unwrap().len();
    println!(
        "{paid} payments acknowledged ({at_backup} before the backup, {} between it and the loss, {} while cn-east was \
         away or reconciling, {} after); backup of {size} bytes in {backup_took:?}; three nodes restored in \
         {restored_in:?}, reconciled with both regions {reconciled_in:?} after the restore began; {west} us-west and \
         {south} ap-southeast payments committed, every check passed",
        before_loss - at_backup,
        after_restore - before_loss,
        paid - after_restore,
    );
    for region in &report.regions {
        println!(
            "  {}: {} records, {} credits recovered, {} committed, {} aborted, {} aborts sent",
            region.region,
            region.records,
            region.credits_recovered,
            region.committed,
            region.aborted,
            region.aborts_sent
        );
    }
    mesh.stop().unwrap();
}
