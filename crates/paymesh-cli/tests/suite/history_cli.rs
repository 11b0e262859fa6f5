//! Archiving a region's history with the `paymesh` command, against a
//! single-node region of a real process over mutual TLS whose log holds
//! transfers of two years ago (seeded before the node first starts) and one
//! made now: `history export` writes and verifies the archive and confirms
//! it with the node, `history verify` and `history get` read it back
//! offline, `history delete` deletes what was archived and is past the
//! 400-day window, and the node still serves the rest. Damaged archives are
//! refused with the reason.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Region;
use paymesh_core::limits::DAY_MS;
use paymesh_node::testing::seed_old_log;
use paymesh_proto::partner::v1 as wire;
use paymesh_store::archive::verify_file;
use paymesh_store::NodeAddr;

const OPERATOR: &str = "operator-tests";

/// Run `paymesh` as the operator against the region; exit code, stdout and
/// stderr.
fn online(region: &Region, args: &[&str]) -> (i32, String, String) {
    region.cli(OPERATOR, args)
}

/// Run `paymesh` with `args` only (the offline commands).
fn offline(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_paymesh")).args(args).output().unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

fn ok((code, stdout, stderr): (i32, String, String)) -> String {
    assert_eq!(code, 0, "failed:\n{stdout}\n{stderr}");
    stdout
}

fn failed((code, stdout, stderr): (i32, String, String)) -> (String, String) {
    assert_eq!(code, 1, "should have failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A transfer of the seeded payer made now, with `key`: its id.
async fn pay_now(region: &Region, key: &str) -> String {
    let wallet = region.partner("wallet-a");
    let quote = wallet
        .create_quote(wire::CreateQuoteRequest {
            qr_payload: "pay://merchant/now".into(),
            amount: Some(wire::create_quote_request::Amount::SourceAmount(common::money("7", "USD"))),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .quote
        .unwrap();
    wallet
        .create_transfer(wire::CreateTransferRequest {
            idempotency_key: key.into(),
            quote_id: quote.quote_id,
            qr_payload: "pay://merchant/now".into(),
            payer: Some(wire::PayerDetails { name: "Ada".into(), account: "a-1".into(), reference: "r".into() }),
        })
        .await
        .unwrap()
        .transfer
        .unwrap()
        .transfer_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_archives_old_history_reads_it_back_and_deletes_it_from_the_node() {
    let mut region = Region::plan(1, "");
    let now = paymesh_node::gateway::now();
    let node = (region.nodes[&1].raft_addr.clone(), region.nodes[&1].api_addr.clone());
    let member = (1, NodeAddr { raft_addr: node.0, api_addr: node.1.clone() });
    let region_id = region.region().clone();
    let seeded =
        seed_old_log(&region.nodes[&1].data_dir, &region_id, &[member], now.minus_ms(730 * DAY_MS), 3).await.unwrap();
    region.launch();
    region.wait_leader(Duration::from_secs(20)).await;
    let client = region.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.status(&node.1, false).await.ok().and_then(|s| s.applied_index) < Some(seeded.last_index) {
        assert!(Instant::now() < deadline, "the seeded log is not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A transfer now.
    let wallet = region.partner("wallet-a");
    let fresh = pay_now(&region, "now-1").await;

    // Export what is older than a year: the seeded entries.
    let archive = region.path().join("old.pmarchive");
    let before = "1577836800000"; // 2020-01-01: nothing that old
    let out = ok(online(&region, &["history", "export", "--before", before, "--out", path(&archive)]));
    assert!(out.contains("nothing older than 2020-01-01T00:00:00.000Z to archive"), "{out}");
    std::fs::remove_file(&archive).unwrap();
    let year_ago = now.minus_ms(365 * DAY_MS).unix_ms();
    let before = format!("{}", year_ago);
    let out = ok(online(&region, &["history", "export", "--before", &before, "--out", path(&archive)]));
    assert!(out.contains("OK: verified") && out.contains("confirmed by"), "{out}");
    let summary = verify_file(&archive).unwrap();
    assert!(summary.records > 20, "{summary:?}");
    assert!(out.contains(&hex::encode(summary.sha256)), "{out}");
    assert!(out.contains(&format!("archived through index {}", summary.header.last_index)), "{out}");
    // Never over an existing file.
    let (_, err) = failed(online(&region, &["history", "export", "--before", &before, "--out", path(&archive)]));
    assert!(err.contains("exists"), "{err}");

    // Offline: verify, and a transfer's records as JSON.
    let out = ok(offline(&["history", "verify", path(&archive)]));
    assert!(out.contains("OK") && out.contains(&format!("records {}", summary.records)), "{out}");
    let out = ok(offline(&["history", "get", path(&archive), "--transfer", "us-west:2"]));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = json["records"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for kind in ["listed", "transfer", "idempotency", "movement", "event"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let transfer = json["records"].as_array().unwrap().iter().find(|r| r["kind"] == "transfer").unwrap();
    assert_eq!(transfer["record"]["Transfer"]["view"]["id"], "us-west:2", "{transfer}");
    let (_, err) = failed(offline(&["history", "get", path(&archive), "--transfer", &fresh]));
    assert!(err.contains(&format!("no record of transfer {fresh}")), "{err}");

    // Delete: as far as archived, not beyond.
    let last = summary.header.last_index;
    let (out, err) = failed(online(&region, &["history", "delete", "--through", &(last + 50).to_string()]));
    assert!(out.contains(&format!("history deleted through {last} (was 0)")), "{out}");
    assert!(out.contains("stopped: not archived beyond"), "{out}");
    assert!(out.contains(&format!("deleted {} records", summary.records)), "{out}");
    assert!(err.contains("is not deleted through"), "{err}");
    let out = ok(online(&region, &["history", "delete", "--through", &last.to_string()]));
    assert!(out.contains("deleted 0 records"), "{out}");
    // The deleted range's archive can no longer be confirmed.
    let (out, _) = failed(online(&region, &["history", "confirm", path(&archive)]));
    assert!(out.contains("NOT confirmed") && out.contains("starts at"), "{out}");

    // The node serves the rest.
    let got = wallet.get_transfer(wire::GetTransferRequest { transfer_id: fresh.clone() }).await.unwrap();
    assert_eq!(got.transfer.unwrap().transfer_id, fresh);
    let gone = wallet.get_transfer(wire::GetTransferRequest { transfer_id: "us-west:2".into() }).await.unwrap_err();
    assert_eq!(gone.status().map(tonic::Status::code), Some(tonic::Code::NotFound), "{gone:?}");
    let Err(expired) = wallet.stream_events(0).await else { panic!("a deleted cursor is refused") };
    let status = expired.status().unwrap();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert!(status.message().contains("events before 4 are no longer retained"), "{status:?}");
    let mut events = wallet.stream_events(3).await.unwrap();
    let event = events.message().await.unwrap().unwrap().event.unwrap();
    assert_eq!((event.cursor, event.transfer_id.as_str()), (4, fresh.as_str()));

    // Damaged archives: each refused, exit status 1, with the reason.
    let bytes = std::fs::read(&archive).unwrap();
    let damaged = region.path().join("damaged.pmarchive");
    let mut flipped = bytes.clone();
    let middle = bytes.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    let (_, err) = failed(offline(&["history", "verify", path(&damaged)]));
    assert!(err.contains("DAMAGED") && err.contains("checksum mismatch"), "{err}");
    std::fs::write(&damaged, &bytes[..bytes.len() - 30]).unwrap();
    let (_, err) = failed(offline(&["history", "verify", path(&damaged)]));
    assert!(err.contains("truncated: the file ends inside the trailer"), "{err}");
    let (_, err) = failed(offline(&["history", "get", path(&damaged), "--transfer", "us-west:2"]));
    assert!(err.contains("truncated"), "{err}");
}

/// A node wiped after its region archived and deleted its old history
/// rejoins: the leader can no longer send the deleted batches, so the node
/// begins its history where the leader's now begins (deleted through the
/// same index, with the digest there) and takes the rest; then every
/// replica's digest is equal, and the node applies what comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_wiped_after_retention_rejoins_where_the_regions_history_now_begins() {
    let mut region = Region::plan(3, "logs_kept_after_snapshot = 0");
    let now = paymesh_node::gateway::now();
    let members: Vec<(u64, NodeAddr)> = (1..=3)
        .map(|id| {
            let node = &region.nodes[&id];
            (id, NodeAddr { raft_addr: node.raft_addr.clone(), api_addr: node.api_addr.clone() })
        })
        .collect();
    let region_id = region.region().clone();
    let old = now.minus_ms(730 * DAY_MS);
    for id in 1..=3 {
        seed_old_log(&region.nodes[&id].data_dir, &region_id, &members, old, 3).await.unwrap();
    }
    region.launch();
    region.wait_leader(Duration::from_secs(20)).await;
    region.wait_converged(Duration::from_secs(30)).await;
    let fresh = pay_now(&region, "now-1").await;

    // Archive and delete what is older than a year, on every node.
    let archive = region.path().join("old.pmarchive");
    let before = now.minus_ms(365 * DAY_MS).unix_ms().to_string();
    ok(online(&region, &["history", "export", "--before", &before, "--out", path(&archive)]));
    let deleted = verify_file(&archive).unwrap().header.last_index;
    let through = deleted.to_string();
    ok(online(&region, &["history", "delete", "--through", &through]));
    let client = region.client();
    for addr in region.api_addrs() {
        client.trigger_snapshot(&addr).await.unwrap();
    }

    // Node 3 loses everything; the leader's log starts after its snapshot.
    region.kill(3);
    region.wipe(3);
    region.spawn(3);
    region.wait_converged(Duration::from_secs(60)).await;
    let out = ok(online(&region, &["history", "delete", "--through", &through]));
    let node3 = &region.nodes[&3].api_addr;
    assert!(
        out.contains(&format!("{node3}: deleted 0 records; history deleted through {deleted} (was {deleted})")),
        "{out}"
    );

    // It goes on: a transfer after, the same digests, both transfers read.
    let later = pay_now(&region, "now-2").await;
    region.wait_converged(Duration::from_secs(30)).await;
    let wallet = region.partner("wallet-a");
    for id in [&fresh, &later] {
        let got = wallet.get_transfer(wire::GetTransferRequest { transfer_id: id.clone() }).await.unwrap();
        assert_eq!(&got.transfer.unwrap().transfer_id, id);
    }
}

/// `/usr/bin/time -v` around `paymesh` with `args`: exit code, stdout,
/// elapsed seconds and peak resident memory in KiB.
fn timed(args: &[String]) -> (i32, String, f64, u64) {
    let output =
        Command::new("/usr/bin/time").arg("-v").arg(env!("CARGO_BIN_EXE_paymesh")).args(args).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let field = |name: &str| stderr.lines().find_map(|l| l.trim().strip_prefix(name)).unwrap_or("0").trim().to_owned();
    let elapsed = field("Elapsed (wall clock) time (h:mm:ss or m:ss):");
    let seconds = elapsed.rsplit(':').next().unwrap().parse::<f64>().unwrap()
        + elapsed.rsplit(':').nth(1).unwrap_or("0").parse::<f64>().unwrap() * 60.0;
    let rss = field("Maximum resident set size (kbytes):").parse().unwrap();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    (output.status.code().unwrap_or(-1), String::from_utf8(output.stdout).unwrap(), seconds, rss)
}

/// Export and verify throughput for docs/BENCHMARKS.md. Run with
/// `cargo test --release -p paymesh-cli --test suite history_cli:: -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
async fn measure_export_and_verify_of_over_100_000_records() {
    const TRANSFERS: u64 = 13_000;
    let mut region = Region::plan(1, "");
    let now = paymesh_node::gateway::now();
    let (raft_addr, api_addr) = (region.nodes[&1].raft_addr.clone(), region.nodes[&1].api_addr.clone());
    let region_id = region.region().clone();
    let member = (1, NodeAddr { raft_addr, api_addr: api_addr.clone() });
    let seeded = seed_old_log(&region.nodes[&1].data_dir, &region_id, &[member], now.minus_ms(730 * DAY_MS), TRANSFERS)
        .await
        .unwrap();
    region.launch();
    region.wait_leader(Duration::from_secs(60)).await;
    let client = region.client();
    let deadline = Instant::now() + Duration::from_secs(600);
    while client.status(&api_addr, false).await.ok().and_then(|s| s.applied_index) < Some(seeded.last_index) {
        assert!(Instant::now() < deadline, "the seeded log is not applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let archive = region.path().join("big.pmarchive");
    let [ca, cert, key] = region.cert_files(OPERATOR);
    let before = now.minus_ms(365 * DAY_MS).unix_ms().to_string();
    let args: Vec<String> = ["history", "export", "--before", &before, "--out", path(&archive), "--node", &api_addr]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(["--ca", path(&ca), "--cert", path(&cert), "--key", path(&key)].iter().map(|s| (*s).to_owned()))
        .collect();
    let (_, out, export_seconds, export_rss) = timed(&args);
    let summary = verify_file(&archive).unwrap();
    assert!(summary.records >= 100_000, "{summary:?}");
    let (_, _, verify_seconds, verify_rss) = timed(&["history".into(), "verify".into(), path(&archive).into()]);
    let mb = summary.file_bytes as f64 / 1e6;
    println!("{out}");
    println!(
        "EXPORT {} records, {:.1} MB: {:.2} s wall for export + verify + confirm ({:.0} records/s, {:.1} MB/s), CLI peak RSS {} KiB",
        summary.records,
        mb,
        export_seconds,
        summary.records as f64 / export_seconds,
        mb / export_seconds,
        export_rss
    );
    println!(
        "VERIFY {} records, {:.1} MB: {:.2} s ({:.0} records/s, {:.1} MB/s), peak RSS {} KiB",
        summary.records,
        mb,
        verify_seconds,
        summary.records as f64 / verify_seconds,
        mb / verify_seconds,
        verify_rss
    );
}
