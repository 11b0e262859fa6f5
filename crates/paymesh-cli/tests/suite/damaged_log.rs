//! A follower whose Raft log is damaged (a flipped byte in a committed entry
//! in the middle of its last segment) refuses to start and names the damage,
//! while the other two nodes keep committing; `paymesh node rebuild` then
//! brings it back, and its state digest equals the others'.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{money, Region};
use paymesh_client::NodeChannel;
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::admin::v1::admin_service_client::AdminServiceClient;

const OPERATOR: &str = "operator-tests";
const PARTNER: &str = "wallet-a";

/// One top-up of 1.00 USD with `reference` through whichever node leads,
/// retried (the same reference credits once) until it is acknowledged. The
/// posted balance it answers.
async fn top_up(sdk: &paymesh_client::Region, reference: &str) -> String {
    let request = admin::TopUpPositionRequest {
        partner_id: PARTNER.into(),
        amount: Some(money("1", "USD")),
        reference: reference.into(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = sdk
            .call(None, |channel: NodeChannel| {
                let request = request.clone();
                async move { AdminServiceClient::new(channel).top_up_position(request).await.map(|r| r.into_inner()) }
            })
            .await;
        match answer {
            Ok(answer) => {
                assert_eq!(answer.reject_code, 0, "top-up {reference}");
                return answer.position.unwrap().posted_balance.unwrap().amount;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("top-up {reference}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("top-up {reference} not acknowledged within 60 s: {e}"),
        }
    }
}

/// Byte offsets of the records of a segment file (version 3 format: an
/// 8-byte file header, then records with a 28-byte header whose first 4
/// bytes hold the payload's length in their low 26 bits).
fn record_offsets(segment: &Path) -> Vec<u64> {
    let data = std::fs::read(segment).unwrap();
    assert!(data.starts_with(b"pmlogv3\n"), "a version 3 segment");
    let mut offsets = Vec::new();
    let mut at = 8;
    while at + 28 <= data.len() {
        offsets.push(at as u64);
        at += 28 + (u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) & ((1 << 26) - 1)) as usize;
    }
    offsets
}

fn last_segment(data_dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data_dir.join("raft-log/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_damaged_log_refuses_to_start_and_is_rebuilt() {
    let mut region = Region::start(3, "");
    let leader = region.initialize(1).await;
    region.upsert_partner(PARTNER, admin::PartnerRole::Payer, "0").await;

    // A workload of top-ups with unique references runs throughout.
    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sdk = region.sdk(OPERATOR).unwrap();
    let writer = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            let mut references = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reference = format!("fund-{}", references.len());
                top_up(&sdk, &reference).await;
                references.push(reference);
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            references
        })
    };
    let wait_for = |count: u64, acknowledged: Arc<AtomicU64>| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acknowledged.load(Ordering::Relaxed) < count {
            assert!(Instant::now() < deadline, "the workload stalled at {}", acknowledged.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_for(150, acknowledged.clone()).await;

    // Stop a follower and flip a byte in an entry in the middle of its last
    // segment: later appends follow it, so it was acknowledged.
    let follower = if leader == 3 { 2 } else { 3 };
    region.kill(follower);
    let data_dir = common::data_dir(&region, follower).to_path_buf();
    let segment = last_segment(&data_dir);
    let offsets = record_offsets(&segment);
    assert!(offsets.len() > 100, "{} records", offsets.len());
    let damaged = offsets[offsets.len() / 2];
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&segment).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, damaged + 28 + 3).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], damaged + 28 + 3).unwrap();
    drop(file);
    let bytes_before = std::fs::read(&segment).unwrap();

    // It refuses to start, naming the file, the offset and the indexes.
    region.spawn(follower);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let child = region.nodes.get_mut(&follower).unwrap().child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the damaged node did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    region.nodes.get_mut(&follower).unwrap().child = None;
    assert_eq!(status.code(), Some(1), "{status}");
    let log = std::fs::read_to_string(&region.nodes[&follower].log).unwrap();
    for expected in [
        "raft log damaged".to_owned(),
        format!("segment {} at byte {damaged}", segment.display()),
        "may have been acknowledged".to_owned(),
        "this node refuses to start".to_owned(),
        "A damaged Raft log".to_owned(),
    ] {
        assert!(log.contains(&expected), "the node's output lacks {expected:?}:\n{log}");
    }
    assert_eq!(std::fs::read(&segment).unwrap(), bytes_before, "the refusal changes nothing");
    println!("{}", log.lines().rfind(|l| l.contains("raft log damaged")).unwrap());
    // The offline check says the same.
    let check = Command::new(env!("CARGO_BIN_EXE_paymesh"))
        .args(["log", "check", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let check_stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{check_stderr}");
    assert!(check_stderr.contains(&format!("at byte {damaged}")), "{check_stderr}");

    // The other two keep committing.
    let at_refusal = acknowledged.load(Ordering::Relaxed);
    wait_for(at_refusal + 50, acknowledged.clone()).await;

    // The operator's procedure: one command, while the node's supervisor
    // (here: the test) starts it again once its data is moved aside.
    let [ca, cert, key] = region.cert_files(OPERATOR);
    let started = Instant::now();
    let mut rebuild = Command::new(env!("CARGO_BIN_EXE_paymesh"))
        .args(["node", "rebuild", "--config"])
        .arg(&region.nodes[&follower].config)
        .arg("--ca")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["--wait-secs", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let marker = data_dir.join(paymesh_cli::rebuild::REBUILD_MARKER);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        if let Some(status) = rebuild.try_wait().unwrap() {
            panic!("paymesh node rebuild stopped early: {status}: {:?}", rebuild.wait_with_output().unwrap());
        }
        assert!(Instant::now() < deadline, "the data directory was not moved aside");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    region.spawn(follower);
    let deadline = Instant::now() + Duration::from_secs(180);
    while rebuild.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "paymesh node rebuild did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = rebuild.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "paymesh node rebuild failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("raft log damaged") && stdout.contains("rebuilt"), "{stdout}");
    let rebuilt_in = started.elapsed();

    // Writes go on a little longer, then stop; every acknowledged top-up is
    // there, once, on every node.
    let after_rebuild = acknowledged.load(Ordering::Relaxed);
    wait_for(after_rebuild + 20, acknowledged.clone()).await;
    stop.store(true, Ordering::Relaxed);
    let references = writer.await.unwrap();
    let statuses = region.wait_converged(Duration::from_secs(60)).await;
    assert_eq!(statuses.len(), 3);
    for status in &statuses {
        assert_eq!(status.voters, [1, 2, 3], "node {}: {status:?}", status.node_id);
    }
    let expected = format!("{}.00", references.len());
    let sdk = region.sdk(OPERATOR).unwrap();
    for reference in [&references[0], &references[references.len() / 2], references.last().unwrap()] {
        assert_eq!(top_up(&sdk, reference).await, expected, "a repeated top-up {reference} credits nothing");
    }
    let digest = statuses[0].state_digest.clone();
    assert!(statuses.iter().all(|s| s.state_digest == digest));
    println!(
        "{} top-ups acknowledged; node {follower} refused at {at_refusal}, rebuilt in {rebuilt_in:?}; digest {}",
        references.len(),
        common::hex(&digest)
    );
}
