//! Growing and shrinking a running mesh, on real processes: a fourth
//! region joins a three-region mesh while its wallets pay, without any
//! running node restarting (the others take it from their configuration
//! files on SIGHUP); it is configured live (partners, corridors, rates,
//! routes through the admin API); payments go into it and out of it; then
//! it is drained (new transfers to it refused, the ones in flight finish)
//! and removed, and the rest of the mesh pays on. Nothing is lost: every
//! payment that touched the fourth region is final and every checker
//! passes over the four regions before it leaves.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paymesh_client::PartnerClient;
use paymesh_harness::locality;
use paymesh_harness::mesh::LocalMesh;
use paymesh_harness::wan::WanSettings;
use paymesh_harness::world::{self, Merchant, Rate, Wallet};
use paymesh_node::identity::Identity;
use paymesh_proto::partner::v1 as wire;

const RAFT: &str = "heartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600";

/// The region that joins.
const EU: &str = "eu-central";
const EU_WALLET: Wallet = ("eu-central", "wise-eu", "EUR", 1_000_000_000);
const EU_MERCHANT: Merchant = ("eu-central", "shop-eu", "EUR", "euqr://shop/");
/// The rates the new corridors need: the EUR wallet to the CNY merchants
/// and its own, the USD wallet to the EUR merchant.
const EU_RATES: [Rate; 3] = [("EUR", "CNY", "7.8000"), ("EUR", "EUR", "1"), ("USD", "EUR", "0.9200")];

/// Payments of each kind that touch the new region.
const EACH: usize = 25;

/// Wait until every node of `regions` logged `text` since it started,
/// sending it SIGHUP again every 2 s (a removal is refused while a decision
/// to the region still waits for its acknowledgement; the operator's
/// answer is to try again).
async fn logged(mesh: &LocalMesh, regions: &[&str], text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    for name in regions {
        let region = mesh.region(name).unwrap();
        for node in region.nodes.values() {
            let mut polls = 0u32;
            while !std::fs::read_to_string(&node.log).unwrap_or_default().contains(text) {
                assert!(Instant::now() < deadline, "{name} node {} never logged {text:?}\n{}", node.id, region.logs());
                polls += 1;
                if polls.is_multiple_of(40) {
                    region.hangup(node.id).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One payment of `amount` to the payee `qr` names; its id, or the refusal.
async fn pay(
    client: &PartnerClient,
    region: &str,
    key: &str,
    qr: &str,
    amount: (&str, &str),
) -> Result<String, tonic::Status> {
    let [name, account, reference] = locality::payer_fields(region, 1, 0);
    let request = wire::CreatePaymentRequest {
        idempotency_key: key.to_owned(),
        qr_payload: qr.to_owned(),
        amount: Some(wire::create_payment_request::Amount::DestinationAmount(common::money(amount.0, amount.1))),
        max_total_debit: None,
        payer: Some(wire::PayerDetails { name: format!("{name} {key}"), account, reference }),
    };
    match client.create_payment(request).await {
        Ok(answer) => match answer.transfer {
            Some(transfer) => Ok(transfer.transfer_id),
            None => {
                Err(tonic::Status::failed_precondition(paymesh_harness::admin_calls::reject_name(answer.reject_code)))
            }
        },
        Err(e) => Err(e.status().cloned().unwrap_or_else(|| tonic::Status::unknown(e.to_string()))),
    }
}

/// Wait until every transfer in `ids` is final where `client` sees it;
/// how many committed.
async fn committed(client: &PartnerClient, ids: &[String], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut states = Vec::new();
        for id in ids {
            let transfer = client.get_transfer(wire::GetTransferRequest { transfer_id: id.clone() }).await.unwrap();
            states.push(transfer.transfer.unwrap().state);
        }
        let (done, aborted) = (wire::TransferState::Committed as i32, wire::TransferState::Aborted as i32);
        if states.iter().all(|s| *s == done || *s == aborted) {
            return states.iter().filter(|s| **s == done).count();
        }
        assert!(Instant::now() < deadline, "not final within {within:?}: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The world's two wallets paying cn-east's merchants in the background.
struct Workload {
    stop: Arc<AtomicBool>,
    workers: Vec<(&'static str, &'static str, tokio::task::JoinHandle<Vec<String>>)>,
}

impl Workload {
    fn start(mesh: &LocalMesh, first: usize, acknowledged: &Arc<AtomicUsize>) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = [("us-west", "paypal-us"), ("ap-southeast", "gcash-ph")]
            .into_iter()
            .map(|(region, wallet)| {
                let client = mesh.region(region).unwrap().partner(wallet).unwrap();
                (region, wallet, common::pay_until(client, region, first, stop.clone(), acknowledged.clone()))
            })
            .collect();
        Workload { stop, workers }
    }

    /// Stop, and check the last payments of each wallet committed; how many
    /// payments were made.
    async fn finish(self, mesh: &LocalMesh) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut made = 0;
        for (region, wallet, worker) in self.workers {
            let ids = worker.await.unwrap();
            let client = mesh.region(region).unwrap().partner(wallet).unwrap();
            let tail: Vec<String> = ids.iter().rev().take(20).cloned().collect();
            assert_eq!(committed(&client, &tail, Duration::from_secs(60)).await, tail.len(), "{region} pays on");
            made += ids.len();
        }
        made
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_joins_a_running_mesh_pays_both_ways_and_leaves_drained_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_paymesh"));
    let mut mesh =
        LocalMesh::start(dir.path(), exe, &world::regions(), 3, RAFT, WanSettings::default(), &[]).await.unwrap();
    world::configure(&mesh).await.unwrap();
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let workload = Workload::start(&mesh, 0, &acknowledged);
    common::wait_for(&acknowledged, 40, Duration::from_secs(60)).await;

    // The fourth region joins; the running ones take it on SIGHUP.
    let joining = Instant::now();
    let partners = vec![Identity::Partner("wise-eu".parse().unwrap()), Identity::Partner("shop-eu".parse().unwrap())];
    mesh.add_region(dir.path(), exe, EU, partners, 3, RAFT, WanSettings::default()).await.unwrap();
    let others = ["ap-southeast", "cn-east", "us-west"];
    logged(&mesh, &others, "region eu-central added", Duration::from_secs(30)).await;
    let joined_in = joining.elapsed();
    // Configured live: the new region's partners, its wallet's corridors
    // to every merchant it has a rate for, and us-west's corridor and
    // route to the new merchant.
    let merchants: Vec<Merchant> = world::MERCHANTS.iter().copied().chain([EU_MERCHANT]).collect();
    let rates: Vec<Rate> = world::RATES.iter().copied().chain(EU_RATES).collect();
    world::configure_world(&mesh.regions, &[EU_WALLET], &merchants, &rates).await.unwrap();
    world::configure_world(&mesh.regions, &world::WALLETS[..1], &[EU_MERCHANT], &EU_RATES).await.unwrap();
    let at_join = acknowledged.load(Ordering::Relaxed);

    // Out of it, into it, and within it.
    let wise = mesh.region(EU).unwrap().partner("wise-eu").unwrap();
    let paypal = mesh.region("us-west").unwrap().partner("paypal-us").unwrap();
    let (mut out_of, mut into, mut within) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..EACH {
        out_of.push(
            pay(&wise, EU, &format!("eu-out-{n}"), &format!("wxp://test/eu-{n}"), ("15.60", "CNY")).await.unwrap(),
        );
        into.push(
            pay(&paypal, "us-west", &format!("eu-in-{n}"), &format!("euqr://shop/{n}"), ("5.00", "EUR")).await.unwrap(),
        );
        within.push(
            pay(&wise, EU, &format!("eu-home-{n}"), &format!("euqr://shop/h{n}"), ("5.00", "EUR")).await.unwrap(),
        );
    }
    let paid = (
        committed(&wise, &out_of, Duration::from_secs(60)).await,
        committed(&paypal, &into, Duration::from_secs(60)).await,
        committed(&wise, &within, Duration::from_secs(60)).await,
    );
    assert_eq!(paid, (EACH, EACH, EACH), "every payment into, out of and within the new region committed");

    // Drain it: new transfers to and from it are refused, in flight ones
    // finish.
    let mut in_flight = Vec::new();
    for n in 0..EACH {
        in_flight.push(
            pay(&paypal, "us-west", &format!("eu-last-{n}"), &format!("euqr://shop/l{n}"), ("5.00", "EUR"))
                .await
                .unwrap(),
        );
    }
    mesh.drain_region(EU).unwrap();
    logged(&mesh, &others, "region eu-central draining", Duration::from_secs(30)).await;
    logged(&mesh, &[EU], "region us-west draining", Duration::from_secs(30)).await;
    let refused = pay(&paypal, "us-west", "eu-refused", "euqr://shop/r", ("5.00", "EUR")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("RegionDraining"), "{refused:?}");
    let refused = pay(&wise, EU, "eu-refused", "wxp://test/r", ("15.60", "CNY")).await.unwrap_err();
    assert!(refused.message().contains("RegionDraining"), "{refused:?}");
    // Its own payments go on.
    let home = pay(&wise, EU, "eu-home-drained", "euqr://shop/d", ("5.00", "EUR")).await.unwrap();
    assert_eq!(committed(&wise, &[home], Duration::from_secs(30)).await, 1);
    let last = committed(&paypal, &in_flight, Duration::from_secs(60)).await;
    assert_eq!(last, EACH, "the transfers in flight when draining began committed");

    // Before it leaves: every region final, books balanced, every commit
    // credited once (the other wallets stop for the look, and go on after).
    let before_look = workload.finish(&mesh).await;
    let wallets: Vec<Wallet> = world::WALLETS.iter().copied().chain([EU_WALLET]).collect();
    common::assert_every_checker_passes(&mesh, &wallets, &merchants, Duration::from_secs(90)).await;

    // It leaves; the others take that on SIGHUP too, and pay on.
    let workload = Workload::start(&mesh, common::PAYMENTS_MAX, &acknowledged);
    let mut eu = mesh.remove_region(EU).unwrap();
    logged(&mesh, &others, "region eu-central removed", Duration::from_secs(30)).await;
    eu.stop().unwrap();
    let gone = pay(&paypal, "us-west", "eu-gone", "euqr://shop/g", ("5.00", "EUR")).await.unwrap_err();
    assert!(gone.message().contains("not linked"), "{gone:?}");
    let at_removal = acknowledged.load(Ordering::Relaxed);
    common::wait_for(&acknowledged, at_removal + 40, Duration::from_secs(60)).await;
    let after_removal = workload.finish(&mesh).await;
    println!(
        "{EU} joined in {joined_in:?} (started, led, and taken by every node of the three running regions on SIGHUP); \
         {EACH} payments out of it, {EACH} into it, {EACH} within it and {EACH} in flight when draining began all \
         committed; the other wallets' payments went on throughout ({at_join} before the join, {before_look} until \
         the look at four regions, in which every checker passed, {after_removal} from the removal on)"
    );
    mesh.stop().unwrap();
}
