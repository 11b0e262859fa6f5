//! Backup and restore on real processes: `paymesh backup take` copies a
//! node of a region while a partner keeps paying; then every node's disk is
//! lost, `paymesh restore` seeds three new data directories from the file,
//! and the region comes back at the backup's index: every transfer the
//! backup holds is readable and its key still answers with it, the
//! transfers after it are gone (and said to be), new transfer ids skip the
//! gap so none is issued twice, and the books balance.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{money, Region};
use paymesh_proto::partner::v1 as wire;

const QR: &str = "pay://merchant/m-1";

/// Payments before the backup.
const BEFORE: usize = 200;

fn payment(key: &str) -> wire::CreatePaymentRequest {
    wire::CreatePaymentRequest {
        idempotency_key: key.into(),
        qr_payload: QR.into(),
        amount: Some(wire::create_payment_request::Amount::SourceAmount(money("1.00", "USD"))),
        max_total_debit: None,
        payer: Some(wire::PayerDetails {
            name: "Ada Traveller".into(),
            account: "acct-77".into(),
            reference: format!("ref-{key}"),
        }),
    }
}

/// The number in a transfer id `us-west:<n>`.
fn sequence(id: &str) -> u64 {
    id.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_whose_disks_are_lost_comes_back_from_a_backup_taken_while_it_paid() {
    let mut region = Region::start(3, "");
    region.initialize(1).await;
    region.two_payers_and_a_merchant("100", common::ten_cents()).await;
    let wallet = region.partner("wallet-a");
    let mut paid = Vec::new();
    for n in 0..BEFORE {
        let key = format!("before-{n}");
        let transfer = wallet.create_payment(payment(&key)).await.unwrap().transfer.unwrap();
        paid.push((key, transfer.transfer_id));
    }

    // The backup, while payments go on.
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let during = {
        let (wallet, made) = (region.partner("wallet-a"), made.clone());
        tokio::spawn(async move {
            let mut paid = Vec::new();
            for n in 0..50 {
                let key = format!("during-{n}");
                let transfer = wallet.create_payment(payment(&key)).await.unwrap().transfer.unwrap();
                paid.push((key, transfer.transfer_id));
                made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            paid
        })
    };
    while made.load(std::sync::atomic::Ordering::Relaxed) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let file = region.path().join("us-west.pmbackup");
    let started = Instant::now();
    let (code, out, err) = region.cli(&region.operator_stem(), &["backup", "take", "--out", file.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("written and checked"), "{out}");
    paid.extend(during.await.unwrap());
    // Only an operator takes a backup: it holds every partner's data.
    for stem in ["partner-wallet-a", "node-us-west-2"] {
        let policy = paymesh_node::cluster_client::RetryPolicy { attempts: 1, deadline: Duration::from_secs(10) };
        let client = paymesh_node::cluster_client::ClusterClient::with_credentials(
            region.api_addrs(),
            region.credentials(stem),
            policy,
        );
        let refused = client.backup(&region.api_addrs()[0]).await.err().unwrap_or_else(|| panic!("{stem} got one"));
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{stem}: {refused:?}");
    }
    let mut lost = Vec::new();
    for n in 0..10 {
        let key = format!("after-{n}");
        let transfer = wallet.create_payment(payment(&key)).await.unwrap().transfer.unwrap();
        lost.push((key, transfer.transfer_id));
    }
    let header = paymesh_store::backup::check(&file).unwrap();
    let checked = Command::new(env!("CARGO_BIN_EXE_paymesh")).args(["backup", "check"]).arg(&file).output().unwrap();
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{out}");
    assert!(out.contains(&header.region_digest) && out.contains("checksum ok"), "{out}");
    // Every payment before the backup is in it; the ones after are not.
    let issued = header.transfers_issued;
    assert!(paid.iter().take(BEFORE).all(|(_, id)| sequence(id) <= issued), "{issued} {paid:?}");
    assert!(lost.iter().all(|(_, id)| sequence(id) > issued));

    // The disaster: every node's disk is lost.
    region.stop().unwrap();
    for id in 1..=3 {
        region.wipe(id);
    }
    // A damaged file is refused and leaves nothing behind.
    let damaged = region.path().join("damaged.pmbackup");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&damaged, &bytes).unwrap();
    let config = region.nodes[&1].config.clone();
    let refused = Command::new(env!("CARGO_BIN_EXE_paymesh"))
        .args(["restore", "--backup", damaged.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a readable backup"), "{refused:?}");
    assert!(!region.nodes[&1].data_dir.join("state").exists(), "a failed restore leaves its state behind");
    let restoring = Instant::now();
    for id in 1..=3 {
        let config = region.nodes[&id].config.clone();
        let output = Command::new(env!("CARGO_BIN_EXE_paymesh"))
            .args(["restore", "--backup", file.to_str().unwrap(), "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "restoring node {id}: {text}");
        assert!(text.contains(&format!("at index {}", header.index)), "{text}");
        // A second restore into the same directory is refused.
        if id == 1 {
            let again = Command::new(env!("CARGO_BIN_EXE_paymesh"))
                .args(["restore", "--backup", file.to_str().unwrap(), "--config", config.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(!again.status.success());
            assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));
        }
    }
    for id in 1..=3 {
        region.spawn(id);
    }
    // No `paymesh init`: the restored nodes elect a leader among themselves.
    let statuses = region.wait_converged(Duration::from_secs(60)).await;
    let restored_in = restoring.elapsed();
    assert!(statuses.iter().all(|s| s.applied_index.unwrap() >= header.index), "{statuses:?}");

    // What the backup holds is there, and its keys still answer with it.
    let mut recovered = 0;
    for (key, id) in &paid {
        let found = wallet.get_transfer(wire::GetTransferRequest { transfer_id: id.clone() }).await;
        if sequence(id) <= issued {
            let transfer = found.unwrap().transfer.unwrap();
            assert_eq!(transfer.state, wire::TransferState::Committed as i32, "{transfer:?}");
            let again = wallet.create_payment(payment(key)).await.unwrap().transfer.unwrap();
            assert_eq!(&again.transfer_id, id, "the key {key} answers with its transfer");
            recovered += 1;
        } else {
            assert_eq!(found.unwrap_err().status().unwrap().code(), tonic::Code::NotFound, "{id}");
        }
    }
    for (_, id) in &lost {
        let found = wallet.get_transfer(wire::GetTransferRequest { transfer_id: id.clone() }).await;
        assert_eq!(found.unwrap_err().status().unwrap().code(), tonic::Code::NotFound, "{id} is after the backup");
    }
    // New transfers get ids beyond every id issued before the disaster.
    let fresh = wallet.create_payment(payment("after-restore")).await.unwrap().transfer.unwrap();
    assert!(sequence(&fresh.transfer_id) > issued + paymesh_cli_gap(), "{}", fresh.transfer_id);
    let retried = wallet.create_payment(payment("after-0")).await.unwrap().transfer.unwrap();
    assert_ne!(retried.transfer_id, lost[0].1, "a lost transfer's id is never issued again");
    let (code, out, err) = region.cli(&region.operator_stem(), &["ledger"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("balanced"), "{out}");
    let bytes = std::fs::metadata(&file).unwrap().len();
    println!(
        "backup of {bytes} bytes at index {} taken in {took:?} while paying; three nodes restored and converged in \
         {restored_in:?}; {recovered} of {} payments made before or during the backup recovered, {} made during or after it not \
         (they are after its index)",
        header.index,
        paid.len(),
        lost.len() + paid.len() - recovered
    );
}

/// The gap `paymesh restore` skips by default.
fn paymesh_cli_gap() -> u64 {
    1_000_000_000_000
}
