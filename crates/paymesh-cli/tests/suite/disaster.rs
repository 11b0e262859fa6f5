//! A region's disks are lost and it comes back from a backup while the
//! mesh keeps paying, on real processes (3 regions × 3 nodes on loopback).
//!
//! The wallets in `us-west` and `ap-southeast` pay `cn-east`'s merchants
//! the whole time. One region is backed up while paying; more payments
//! commit after the backup; then every node of that region is killed and
//! its data directory deleted, and `paymesh restore` seeds three new ones
//! from the backup. The restored region reconciles with the other two
//! before it exchanges anything with them.
//!
//! * `cn-east` lost (the payees' region): the credits it lost are
//!   recreated from the payer regions' records, the transfers it held
//!   prepared take their decisions; every payment of the run is final,
//!   every region's books balance, each committed payment was credited
//!   exactly once, and nothing is unrecoverable.
//! * `us-west` lost (a payer region): what it paid after the backup and
//!   cn-east credited cannot be recovered (the payer's debit and personal
//!   data were on the lost disks). The report lists each such transfer
//!   with its amounts, and they are exactly what the mesh's checkers find
//!   unbalanced; cn-east's credits for lost transfers still prepared are
//!   released by the aborts the restored region sends.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paymesh_harness::history::TransferState;
use paymesh_harness::mesh::LocalMesh;
use paymesh_harness::wan::WanSettings;
use paymesh_harness::{check, observe, world};
use paymesh_proto::admin::v1 as admin;

const RAFT: &str = "heartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600";

/// The restore's report once every node of `lost` applied its
/// reconciliation's end.
async fn reconciled(mesh: &LocalMesh, lost: &str, within: Duration) -> admin::RestoreReport {
    let region = mesh.region(lost).unwrap();
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

/// What a disaster run found.
struct Run {
    mesh: LocalMesh,
    report: admin::RestoreReport,
    observed: paymesh_harness::history::History,
    status: String,
    summary: String,
    _dir: tempfile::TempDir,
}

/// Both wallets pay cn-east's merchants; `lost` is backed up while they
/// pay, loses every node's disk after more payments, is restored from the
/// backup and reconciles; the run ends once payments into cn-east flow
/// again and every transfer of the mesh is final.
async fn disaster(lost: &str) -> Run {
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
            common::pay_until(client, region, 0, stop.clone(), acknowledged.clone())
        })
        .collect();

    // The backup, while both wallets pay.
    common::wait_for(&acknowledged, 60, Duration::from_secs(60)).await;
    let file = dir.path().join(format!("{lost}.pmbackup"));
    let region = mesh.region(lost).unwrap();
    let started = Instant::now();
    let (code, out, err) =
        region.cli(&region.operator_stem(), &["backup", "take", "--out", file.to_str().unwrap()]).unwrap();
    let backup_took = started.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    let at_backup = acknowledged.load(Ordering::Relaxed);
    // Payments the backup does not hold.
    common::wait_for(&acknowledged, at_backup + 80, Duration::from_secs(60)).await;

    // The disaster: every node of the region and its disk are lost, while
    // the wallets keep paying (and are refused once a breaker opens).
    let region = mesh.region_mut(lost).unwrap();
    for id in 1..=3 {
        region.kill(id).unwrap();
        region.wipe(id).unwrap();
    }
    let before_loss = acknowledged.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let restoring = Instant::now();
    let others: Vec<&str> = ["ap-southeast", "cn-east", "us-west"].into_iter().filter(|r| *r != lost).collect();
    for id in 1..=3 {
        let config = region.nodes[&id].config.clone();
        let output = Command::new(exe)
            .args(["restore", "--backup", file.to_str().unwrap(), "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "restoring node {id}: {text}");
        assert!(text.contains(&format!("reconciles with {}", others.join(", "))), "{text}");
    }
    let restored_in = restoring.elapsed();
    for id in 1..=3 {
        region.spawn(id).unwrap();
    }
    let report = reconciled(&mesh, lost, Duration::from_secs(120)).await;
    let reconciled_in = restoring.elapsed();
    let after_restore = acknowledged.load(Ordering::Relaxed);
    // Payments flow again.
    common::wait_for(&acknowledged, after_restore + 40, Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    let mut paid = 0;
    for worker in workers {
        paid += worker.await.unwrap().len();
    }

    let partners = observe::Partners { wallets: &world::WALLETS, merchants: &world::MERCHANTS };
    let observed = observe::live_mesh(&mesh, partners, Duration::from_secs(90), "process").await.unwrap();
    let region = mesh.region(lost).unwrap();
    let (code, status, err) = region.cli(&region.operator_stem(), &["status"]).unwrap();
    assert_eq!(code, 0, "{status}{err}");
    assert!(status.contains("restored from a backup at index"), "{status}");
    let size = std::fs::metadata(&file).unwrap().len();
    let mut summary = format!(
        "{lost} lost and restored: {paid} payments acknowledged ({at_backup} before the backup, {} between it and the \
         loss, {} while {lost} was away or reconciling, {} after); backup of {size} bytes in {backup_took:?}; three \
         nodes restored in {restored_in:?}, reconciled with both regions {reconciled_in:?} after the restore began",
        before_loss - at_backup,
        after_restore - before_loss,
        paid - after_restore,
    );
    for r in &report.regions {
        summary +=
            &format!(
            "\n  {}: {} records, {} credits recovered, {} committed, {} aborted, {} aborts sent, {} unrecoverable, {} \
             conflicts",
            r.region, r.records, r.credits_recovered, r.committed, r.aborted, r.aborts_sent, r.unrecoverable_count,
            r.conflict_count
        );
    }
    Run { mesh, report, observed, status, summary, _dir: dir }
}

fn reconciliation<'a>(report: &'a admin::RestoreReport, region: &str) -> &'a admin::RegionReconciliation {
    report.regions.iter().find(|r| r.region == region).unwrap_or_else(|| panic!("no {region} in {report:?}"))
}

/// The payee region is lost: every credit it lost is recovered from the
/// payer regions' records; nothing is unrecoverable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payee_region_restored_from_a_backup_reconciles_with_the_mesh_and_loses_no_payment() {
    let mut run = disaster("cn-east").await;
    let verdict = check::check_with(&check::of_observation(), &run.observed);
    assert!(verdict.passed(), "{}", verdict.failures(5));
    assert_eq!(run.report.regions.len(), 2, "{:?}", run.report);
    let mut recovered = 0;
    for region in &run.report.regions {
        assert_eq!((region.unrecoverable_count, region.conflict_count), (0, 0), "{region:?}");
        recovered += region.credits_recovered + region.committed;
    }
    assert!(recovered > 0, "the payments committed after the backup were recovered: {:?}", run.report);
    assert!(run.status.contains("0 unrecoverable, 0 conflicts"), "{}", run.status);
    // The JSON form: every node with the report and its release.
    let cn = run.mesh.region("cn-east").unwrap();
    let (code, json, err) = cn.cli(&cn.operator_stem(), &["status", "--json"]).unwrap();
    assert_eq!(code, 0, "{json}{err}");
    let view: serde_json::Value = serde_json::from_str(&json).unwrap();
    for node in view["nodes"].as_array().unwrap() {
        assert_eq!(node["release"], env!("CARGO_PKG_VERSION"), "{node}");
        let regions = node["restore"]["regions"].as_array().unwrap();
        assert!(regions.len() == 2 && regions.iter().all(|r| r["done"] == true), "{node}");
    }
    let observation = run.observed.observation.as_ref().unwrap();
    let committed = |region: &str| {
        let transfers = observation.regions[region].transfers.iter();
        transfers.filter(|t| t.is_origin_side_in(region) && t.state == TransferState::Committed).count()
    };
    println!("{}", run.status);
    println!(
        "{}\n{} us-west and {} ap-southeast payments committed; every check passed",
        run.summary,
        committed("us-west"),
        committed("ap-southeast")
    );
    run.mesh.stop().unwrap();
}

/// A payer region is lost: the payments it made after the backup that
/// cn-east credited cannot be recovered (the payer's debit and personal
/// data were on the lost disks); they are reported, each of them, and are
/// exactly what the mesh's checkers find unbalanced. Those cn-east held
/// prepared are aborted, and the rest of the mesh is consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payer_region_restored_from_a_backup_reports_every_payment_it_could_not_recover() {
    let mut run = disaster("us-west").await;
    let cn = reconciliation(&run.report, "cn-east");
    assert_eq!(cn.conflict_count, 0, "{cn:?}");
    assert!(cn.unrecoverable_count > 0, "payments committed after the backup are lost: {cn:?}");
    assert_eq!(cn.unrecoverable.len() as u64, cn.unrecoverable_count);
    let reported: std::collections::BTreeSet<&str> = cn.unrecoverable.iter().map(|u| u.transfer_id.as_str()).collect();
    // What cn-east credited that us-west no longer knows is exactly what
    // the report lists.
    let observation = run.observed.observation.as_ref().unwrap();
    let held_west: std::collections::BTreeSet<&str> =
        observation.regions["us-west"].transfers.iter().map(|t| t.transfer_id.as_str()).collect();
    let unknown_west: Vec<_> = observation.regions["cn-east"]
        .transfers
        .iter()
        .filter(|t| t.source_region == "us-west" && !held_west.contains(t.transfer_id.as_str()))
        .collect();
    // Those cn-east held prepared were aborted (their credit released).
    let aborted = unknown_west.iter().filter(|t| t.state == TransferState::Aborted).count();
    let orphaned: std::collections::BTreeSet<&str> = unknown_west
        .iter()
        .filter(|t| t.state != TransferState::Aborted)
        .inspect(|t| assert_eq!(t.state, TransferState::Committed, "a credit left neither posted nor released: {t:?}"))
        .map(|t| t.transfer_id.as_str())
        .collect();
    assert_eq!(orphaned, reported, "the report lists exactly the credits whose payer side was lost");
    for lost in &cn.unrecoverable {
        assert!(run.status.contains(&lost.transfer_id) || cn.unrecoverable.len() > 20, "{}", run.status);
    }
    // The checkers see those and nothing else.
    let verdict = check::check_with(&check::of_observation(), &run.observed);
    for checker in &verdict.checkers {
        if checker.violations == 0 {
            continue;
        }
        for violation in &checker.details {
            assert!(
                reported.iter().any(|id| violation.detail.contains(id)),
                "{}: a violation the report does not explain: {}",
                checker.name,
                violation.detail
            );
        }
    }
    println!("{}", run.status);
    println!(
        "{}\n{aborted} of cn-east's credits for lost us-west transfers released; {} unrecoverable, reported; the \
         checkers' findings: {}",
        run.summary,
        reported.len(),
        verdict.failures(2)
    );
    run.mesh.stop().unwrap();
}
