//! Cross-border transfers between real regions of `paymesh start` processes
//! on loopback (3 regions × 3 nodes, the demo's world), through the
//! user-space WAN: faults on the link, leaders killed mid-protocol, and
//! inter-region messages replayed late and twice by the test itself.
//!
//! After every scenario: each region's ledger sums to zero per currency,
//! the source committed a transfer exactly when the payee region credited
//! it (equal amounts), and no byte of the payer's personal data is in the
//! payee region's data files.
//!
//! The scenarios run one after another in one test: three regions of
//! processes per scenario on a 2-core machine is already a crowd.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use paymesh_client::{PartnerClient, Region};
use paymesh_harness::mesh::LocalMesh;
use paymesh_harness::wan::WanSettings;
use paymesh_harness::world;
use paymesh_harness::{check, locality, observe};
use paymesh_proto::common::v1 as common;
use paymesh_proto::interregion::v1 as inter;
use paymesh_proto::interregion::v1::inter_region_service_client::InterRegionServiceClient;
use paymesh_proto::partner::v1 as wire;

const RAFT: &str = "heartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600";
const COMMITTED: i32 = wire::TransferState::Committed as i32;
const ABORTED: i32 = wire::TransferState::Aborted as i32;
const RESERVED: i32 = wire::TransferState::Reserved as i32;
/// The coordinator's prepare deadline (paymesh_core::limits).
const DEADLINE: Duration = Duration::from_secs(10);

struct Mesh {
    mesh: LocalMesh,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("the failed mesh's logs and data are kept in {}", dir.keep().display());
            }
        }
    }
}

async fn mesh(wan: WanSettings) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_paymesh"));
    let mesh = LocalMesh::start(dir.path(), exe, &world::regions(), 3, RAFT, wan, &[]).await.unwrap();
    world::configure(&mesh).await.unwrap();
    Mesh { mesh, dir: Some(dir) }
}

fn wallet(mesh: &LocalMesh) -> PartnerClient {
    mesh.region("us-west").unwrap().partner("paypal-us").unwrap()
}

/// `call`'s answer once the region stops refusing it because the other
/// region is known unreachable: after a heal its breaker closes on the next
/// call or probe that gets through, a few seconds at most, and until then
/// the refusal comes at once. A partner does the same: it tries again
/// later.
async fn once_linked<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, paymesh_client::ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Err(paymesh_client::ClientError::Refused(status))
                if status.metadata().get(paymesh_client::REFUSED).is_some() && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answer => return answer.unwrap(),
        }
    }
}

/// Quote and create one cross-border payment of `cents` to WeChat; the
/// transfer as created (RESERVED).
async fn pay(client: &PartnerClient, key: &str, cents: u64) -> wire::Transfer {
    pay_asking(client, key, cents).await.0
}

/// [`pay`], and the request that created the transfer (to send again).
async fn pay_asking(client: &PartnerClient, key: &str, cents: u64) -> (wire::Transfer, wire::CreateTransferRequest) {
    let (transfer, request) = pay_to(client, &format!("wxp://test/{key}"), key, cents).await;
    assert_eq!(transfer.state, RESERVED, "a cross-border transfer starts reserved");
    (transfer, request)
}

/// Quote and create one payment of `cents` to the QR code `qr`; the
/// transfer as created, and its request.
async fn pay_to(
    client: &PartnerClient,
    qr: &str,
    key: &str,
    cents: u64,
) -> (wire::Transfer, wire::CreateTransferRequest) {
    let qr = qr.to_owned();
    let asked = wire::CreateQuoteRequest {
        qr_payload: qr.clone(),
        amount: Some(wire::create_quote_request::Amount::SourceAmount(common::Money {
            amount: format!("{}.{:02}", cents / 100, cents % 100),
            currency: "USD".into(),
        })),
        idempotency_key: String::new(),
    };
    let quote = once_linked(|| client.create_quote(asked.clone())).await.quote.expect("a quote");
    let request = wire::CreateTransferRequest {
        idempotency_key: key.to_owned(),
        quote_id: quote.quote_id,
        qr_payload: qr,
        payer: Some({
            // Every field carries us-west's payer marker, which the data
            // locality checker looks for in every region's files.
            let marker = locality::pii_marker("us-west");
            wire::PayerDetails {
                name: format!("Alice Traveller 李爱丽 {marker}{key}"),
                account: format!("acct-{marker}{key}"),
                reference: format!("ref-{marker}{key}"),
            }
        }),
    };
    let answer = once_linked(|| client.create_transfer(request.clone())).await;
    (answer.transfer.expect("a transfer"), request)
}

async fn state_of(client: &PartnerClient, id: &str) -> wire::Transfer {
    client
        .get_transfer(wire::GetTransferRequest { transfer_id: id.to_owned() })
        .await
        .unwrap()
        .transfer
        .expect("the transfer exists")
}

/// Wait until every transfer in `ids` is final at the source; their states.
async fn wait_final(client: &PartnerClient, ids: &[String], within: Duration) -> Vec<i32> {
    let deadline = Instant::now() + within;
    loop {
        let mut states = Vec::new();
        for id in ids {
            states.push(state_of(client, id).await.state);
        }
        if states.iter().all(|s| *s == COMMITTED || *s == ABORTED) {
            return states;
        }
        assert!(Instant::now() < deadline, "not final within {within:?}: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A partner's positions: (currency, posted, pending debits, pending credits).
async fn position(client: &PartnerClient) -> Vec<(String, String, String, String)> {
    let answer = client.get_position(wire::GetPositionRequest::default()).await.unwrap();
    let show = |m: Option<common::Money>| m.map(|m| m.amount).unwrap_or_default();
    answer
        .positions
        .into_iter()
        .map(|p| (p.currency, show(p.posted_balance), show(p.pending_debits), show(p.pending_credits)))
        .collect()
}

/// The invariants every scenario ends with, checked by the chaos suite's
/// checkers of an observation once every transfer is final in every region.
async fn check_books(mesh: &LocalMesh) {
    let partners = observe::Partners { wallets: &world::WALLETS, merchants: &world::MERCHANTS };
    let observed = observe::live_mesh(mesh, partners, Duration::from_secs(30), "process").await.unwrap();
    let verdict = check::check_with(&check::of_observation(), &observed);
    assert!(verdict.passed(), "{}", verdict.failures(5));
    for checker in &verdict.checkers {
        println!("ok: {}", checker.description);
    }
}

/// A us-west node's client of cn-east's inter-region service, as the test
/// hook that replays messages.
fn replayer(mesh: &LocalMesh) -> Region {
    let cn = mesh.region("cn-east").unwrap();
    let endpoints: Vec<String> = cn.nodes.values().map(|n| n.interregion_addr.clone()).collect();
    Region::new(endpoints, mesh.node_credentials("us-west", "cn-east").unwrap())
}

async fn replay_prepare(region: &Region, item: inter::PrepareItem) -> inter::PrepareReply {
    let batch = inter::PrepareBatch { from_region: "us-west".into(), items: vec![item.clone(), item], protocol: 1 };
    let answer = region
        .call(None, |channel| {
            let batch = batch.clone();
            async move { InterRegionServiceClient::new(channel).prepare(batch).await.map(|r| r.into_inner()) }
        })
        .await
        .unwrap();
    assert_eq!(answer.replies.len(), 2);
    assert_eq!(answer.replies[0], answer.replies[1], "a repeated item gets the same answer");
    answer.replies[0].clone()
}

async fn replay_decision(region: &Region, transfer_id: &str, decision: inter::Decision) -> i32 {
    let item =
        inter::DecisionItem { transfer_id: transfer_id.to_owned(), decision: decision as i32, ..Default::default() };
    let batch = inter::DecisionBatch { from_region: "us-west".into(), items: vec![item.clone(), item], protocol: 1 };
    let answer = region
        .call(None, |channel| {
            let batch = batch.clone();
            async move { InterRegionServiceClient::new(channel).decide(batch).await.map(|r| r.into_inner()) }
        })
        .await
        .unwrap();
    assert_eq!(answer.acks[0], answer.acks[1], "a repeated item gets the same answer");
    answer.acks[0].result
}

/// The Prepare the coordinator sent for `transfer`, rebuilt from the
/// payer's view of it.
fn prepare_item(transfer: &wire::Transfer) -> inter::PrepareItem {
    inter::PrepareItem {
        transfer_id: transfer.transfer_id.clone(),
        corridor: transfer.corridor.clone(),
        source_region: "us-west".into(),
        source_amount: transfer.source_amount.clone(),
        destination_amount: transfer.destination_amount.clone(),
        rate: transfer.rate.clone(),
        payee_partner_id: transfer.payee.as_ref().unwrap().partner_id.clone(),
        merchant_id: transfer.payee.as_ref().unwrap().merchant_id.clone(),
        payer_token: transfer.payer_token.clone(),
        deadline_unix_ms: transfer.deadline_unix_ms,
        // A replay carries no trace context: it is not the transfer's step.
        traceparent: String::new(),
        refund_of: String::new(),
        cancel_of: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_late_and_duplicated_messages_change_no_outcome() {
    let fixture = mesh(WanSettings { delay_ms: 5, jitter_ms: 5, ..WanSettings::default() }).await;
    let mesh = &fixture.mesh;
    let client = wallet(mesh);
    let merchant = mesh.region("cn-east").unwrap().partner("wechat-cn").unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(pay(&client, &format!("replay-{i}"), 1_000 + i).await.transfer_id);
    }
    assert!(wait_final(&client, &ids, Duration::from_secs(30)).await.iter().all(|s| *s == COMMITTED));
    check_books(mesh).await;
    let before = position(&merchant).await;

    // Late duplicates of every prepare and every commit, each twice in its batch.
    let replay = replayer(mesh);
    for id in &ids {
        let transfer = state_of(&client, id).await;
        let reply = replay_prepare(&replay, prepare_item(&transfer)).await;
        assert_eq!(reply.result, inter::PrepareResult::Prepared as i32, "{id}: {reply:?}");
        assert_eq!(replay_decision(&replay, id, inter::Decision::Commit).await, inter::AckResult::Acked as i32);
        // An abort for a committed transfer contradicts the record: refused, no effect.
        assert_eq!(
            replay_decision(&replay, id, inter::Decision::Abort).await,
            inter::AckResult::ProtocolViolation as i32
        );
    }
    assert_eq!(position(&merchant).await, before, "replays moved no money");

    // An abort overtaking its prepare leaves a tombstone; the late prepare is refused.
    let mut ghost = prepare_item(&state_of(&client, &ids[0]).await);
    ghost.transfer_id = "us-west:999999".into();
    ghost.deadline_unix_ms =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 60_000)
            .unwrap();
    assert_eq!(
        replay_decision(&replay, &ghost.transfer_id, inter::Decision::Abort).await,
        inter::AckResult::Acked as i32
    );
    let reply = replay_prepare(&replay, ghost).await;
    assert_eq!(reply.result, inter::PrepareResult::Rejected as i32);
    assert_eq!(reply.reject_code, common::RejectCode::AbortedBeforePrepare as i32);
    assert_eq!(position(&merchant).await, before, "the tombstone reserved nothing");

    // A region may not speak for another: us-west's certificate, cn-east's from_region... refused.
    let batch = inter::DecisionBatch {
        from_region: "ap-southeast".into(),
        items: vec![inter::DecisionItem {
            transfer_id: ids[0].clone(),
            decision: inter::Decision::Abort as i32,
            ..Default::default()
        }],
        protocol: 1,
    };
    let refused = replay
        .call(None, |channel| {
            let batch = batch.clone();
            async move { InterRegionServiceClient::new(channel).decide(batch).await.map(|r| r.into_inner()) }
        })
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap().code(), tonic::Code::PermissionDenied, "{refused}");
    check_books(mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_killed_mid_protocol_and_partitions() {
    let mut fixture = mesh(WanSettings { delay_ms: 10, ..WanSettings::default() }).await;
    let mesh = &mut fixture.mesh;
    let client = wallet(mesh);
    let link = mesh.link("us-west", "cn-east").unwrap().clone();

    // 1. The coordinator's leader dies between reserve and decision: the link
    // is cut so transfers wait reserved, the leader is killed, the link heals
    // within the deadline. Each transfer finishes exactly once.
    link.update(|s| s.cut = true);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(pay(&client, &format!("kill-coordinator-{i}"), 2_000 + i).await.transfer_id);
    }
    let us = mesh.region_mut("us-west").unwrap();
    let leader = us.wait_leader(Duration::from_secs(10)).await.unwrap();
    us.kill(leader).unwrap();
    us.wait_leader(Duration::from_secs(20)).await.unwrap();
    link.update(|s| s.cut = false);
    let states = wait_final(&client, &ids, Duration::from_secs(30)).await;
    println!("coordinator leader killed: {states:?}");
    mesh.region_mut("us-west").unwrap().spawn(leader).unwrap();
    check_books(mesh).await;

    // 2. The payee region's leader dies after preparing: replies crawl back
    // (a slow link), and the payee leader is killed once its participation
    // is prepared. The decision reaches the new leader.
    link.set(WanSettings { delay_ms: 400, ..WanSettings::default() });
    let merchant = mesh.region("cn-east").unwrap().partner("wechat-cn").unwrap();
    let id = pay(&client, "kill-payee", 3_000).await.transfer_id;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = world::transfers_of(&merchant).await.unwrap();
        if seen.get(&id).is_some_and(|t| t.state == wire::TransferState::Prepared as i32) {
            break;
        }
        assert!(Instant::now() < deadline, "the payee region never prepared {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cn = mesh.region_mut("cn-east").unwrap();
    let leader = cn.wait_leader(Duration::from_secs(10)).await.unwrap();
    cn.kill(leader).unwrap();
    link.set(WanSettings { delay_ms: 10, ..WanSettings::default() });
    let states = wait_final(&client, std::slice::from_ref(&id), Duration::from_secs(30)).await;
    assert_eq!(states, [COMMITTED], "prepared before the deadline, so committed");
    mesh.region_mut("cn-east").unwrap().spawn(leader).unwrap();
    check_books(mesh).await;

    // 3. A partition shorter than the deadline: committed on both sides.
    link.update(|s| s.cut = true);
    let short: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(pay(&client, &format!("short-cut-{i}"), 4_000 + i).await.transfer_id);
        }
        ids
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    link.update(|s| s.cut = false);
    assert!(wait_final(&client, &short, Duration::from_secs(30)).await.iter().all(|s| *s == COMMITTED));
    check_books(mesh).await;

    // 4. A partition longer than the deadline: aborted on both sides, and the
    // payer's position restored. Meanwhile the breaker opens and new
    // transfers to cn-east fail fast.
    let before = position(&client).await;
    link.update(|s| s.cut = true);
    let mut long = Vec::new();
    let mut first_request = None;
    for i in 0..5 {
        let (transfer, request) = pay_asking(&client, &format!("long-cut-{i}"), 5_000 + i).await;
        long.push(transfer.transfer_id);
        first_request.get_or_insert(request);
    }
    // The breaker opens after BREAKER_FAILURES failed calls in a row. A
    // leader elected during the cut (a loaded machine, 300-600 ms election
    // timeouts) starts its own count, and its first batch carries every
    // waiting prepare, so its third failure can come three call timeouts
    // (plus backoffs) after its election, and on a machine loaded with the
    // other scenarios' regions an election may come late in the cut: twice
    // that, from now (the full suite once saw the single allowance run out).
    use paymesh_node::engine::shipper::{BACKOFF_MAX, BREAKER_FAILURES, CALL_TIMEOUT};
    let allowance = DEADLINE + BREAKER_FAILURES * (CALL_TIMEOUT + BACKOFF_MAX);
    let opened = Instant::now() + 2 * allowance + Duration::from_secs(5);
    let refused = loop {
        let quote = client
            .create_quote(wire::CreateQuoteRequest {
                qr_payload: "wxp://test/breaker".into(),
                amount: Some(wire::create_quote_request::Amount::SourceAmount(common::Money {
                    amount: "10.00".into(),
                    currency: "USD".into(),
                })),
                idempotency_key: String::new(),
            })
            .await;
        if let Err(error) = quote {
            break error;
        }
        assert!(Instant::now() < opened, "the breaker never opened");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let status = refused.status().unwrap();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("RegionUnreachable: region cn-east"), "{status:?}");
    // The region's answer, marked as such, which the SDK returns at once
    // rather than asking every node again.
    assert!(matches!(refused, paymesh_client::ClientError::Refused(_)), "{refused:?}");
    assert_eq!(status.metadata().get(paymesh_client::REFUSED).unwrap(), "region-unreachable");
    // A request the region has seen before still gets its recorded answer
    // through the open breaker.
    let retried = client.create_transfer(first_request.expect("five requests")).await;
    let retried = retried.expect("a retry passes the open breaker").transfer.expect("a transfer");
    assert_eq!(retried.transfer_id, long[0], "the retry names its first transfer");
    let states = wait_final(&client, &long, DEADLINE + Duration::from_secs(10)).await;
    assert!(states.iter().all(|s| *s == ABORTED), "{states:?}");
    assert_eq!(position(&client).await, before, "every reserved amount was released");
    link.update(|s| s.cut = false);
    check_books(mesh).await;
    let cn_merchant = mesh.region("cn-east").unwrap().partner("wechat-cn").unwrap();
    let seen = world::transfers_of(&cn_merchant).await.unwrap();
    assert!(long.iter().all(|id| seen.get(id).is_none_or(|t| t.state == ABORTED)));
    mesh.stop().unwrap();
}

/// Run `paymesh ARGS` against `region`'s nodes as its operator: the exit
/// code, and stdout then stderr.
fn operator_cli(mesh: &LocalMesh, region: &str, args: &[&str]) -> (i32, String) {
    let local = mesh.region(region).unwrap();
    let (code, stdout, stderr) = local.cli(&local.operator_stem(), args).unwrap();
    (code, format!("{stdout}{stderr}"))
}

/// Ask `merchant` to refund `amount` of `transfer` under `key`: the answer.
async fn refund(
    merchant: &PartnerClient,
    key: &str,
    transfer: &wire::Transfer,
    amount: &str,
) -> wire::CreateRefundResponse {
    let currency = transfer.destination_amount.as_ref().unwrap().currency.clone();
    let request = wire::CreateRefundRequest {
        idempotency_key: key.to_owned(),
        transfer_id: transfer.transfer_id.clone(),
        amount: Some(common::Money { amount: amount.to_owned(), currency }),
    };
    once_linked(|| merchant.create_refund(request.clone())).await
}

/// Wait until refund `id` is final; the refund.
async fn refund_final(merchant: &PartnerClient, id: &str, within: Duration) -> wire::Refund {
    let deadline = Instant::now() + within;
    loop {
        let refund = merchant.get_refund(wire::GetRefundRequest { refund_id: id.to_owned() }).await.unwrap();
        let refund = refund.refund.expect("the refund exists");
        if refund.state == COMMITTED || refund.state == ABORTED {
            return refund;
        }
        assert!(Instant::now() < deadline, "refund {id} not final within {within:?}: {refund:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event of `client`'s stream, read until none comes for a second.
async fn all_events(client: &PartnerClient) -> Vec<wire::Event> {
    let mut stream = client.stream_events(0).await.unwrap();
    let mut events = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(1), stream.message()).await.map(|m| m.transpose())
    {
        events.extend(message.event);
        assert!(events.len() < 10_000, "a bounded stream");
    }
    events
}

fn decimal(money: Option<&common::Money>) -> rust_decimal::Decimal {
    money.unwrap().amount.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_across_borders_hold_under_killed_leaders_and_long_partitions() {
    let mut fixture = mesh(WanSettings { delay_ms: 10, ..WanSettings::default() }).await;
    let mesh = &mut fixture.mesh;
    let client = wallet(mesh);
    let merchant = mesh.region("cn-east").unwrap().partner("wechat-cn").unwrap();
    // The refund's way: cn-east coordinates, us-west prepares the credit.
    let link = mesh.link("cn-east", "us-west").unwrap().clone();
    let mut payments = Vec::new();
    for i in 0..7 {
        payments.push(pay(&client, &format!("to-refund-{i}"), 10_000 + i).await);
    }
    let ids: Vec<String> = payments.iter().map(|t| t.transfer_id.clone()).collect();
    assert!(wait_final(&client, &ids, Duration::from_secs(30)).await.iter().all(|s| *s == COMMITTED));
    // Committed at the source is not yet posted at the payee: wait until
    // the merchant holds no credit pending (every decision applied there)
    // before taking the positions the refunds will move.
    let posted = Instant::now() + Duration::from_secs(30);
    while position(&merchant).await[0].3 != "0.00" {
        assert!(Instant::now() < posted, "the payee region never posted the payments");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wallet_before = position(&client).await;
    let merchant_before = position(&merchant).await;
    let full = |t: &wire::Transfer| t.destination_amount.as_ref().unwrap().amount.clone();
    let mut committed = Vec::new();

    // 1. A whole refund: the payer gets its principal back, not the fee.
    let created = refund(&merchant, "refund-0", &payments[0], &full(&payments[0])).await;
    let first = created.refund.expect("a refund");
    assert_eq!((first.state, created.reject_code), (RESERVED, 0));
    let done = refund_final(&merchant, &first.refund_id, Duration::from_secs(30)).await;
    assert_eq!(done.state, COMMITTED, "{done:?}");
    assert_eq!(done.credited_amount, payments[0].source_amount);
    committed.push(done);

    // 2. Parts past the original are refused; a retry is the same refund.
    let part = (decimal(payments[1].destination_amount.as_ref()) * rust_decimal::Decimal::new(6, 1)).round_dp(2);
    let first_part = refund(&merchant, "refund-1a", &payments[1], &part.to_string()).await.refund.unwrap();
    let again = refund(&merchant, "refund-1a", &payments[1], &part.to_string()).await.refund.unwrap();
    assert_eq!(again.refund_id, first_part.refund_id);
    let too_much = refund(&merchant, "refund-1b", &payments[1], &part.to_string()).await;
    assert!(too_much.refund.is_none());
    assert_eq!(too_much.reject_code, common::RejectCode::RefundExceedsOriginal as i32);
    committed.push(refund_final(&merchant, &first_part.refund_id, Duration::from_secs(30)).await);

    // 3. The coordinator's leader dies with the refund reserved (the link
    // cut), and the link heals within the deadline: committed once.
    link.update(|s| s.cut = true);
    let third = refund(&merchant, "refund-2", &payments[2], &full(&payments[2])).await.refund.unwrap();
    let cn = mesh.region_mut("cn-east").unwrap();
    let leader = cn.wait_leader(Duration::from_secs(10)).await.unwrap();
    cn.kill(leader).unwrap();
    cn.wait_leader(Duration::from_secs(20)).await.unwrap();
    link.update(|s| s.cut = false);
    committed.push(refund_final(&merchant, &third.refund_id, Duration::from_secs(30)).await);
    mesh.region_mut("cn-east").unwrap().spawn(leader).unwrap();

    // 4. The payer region's leader dies once it has prepared the credit
    // (answers crawl back on a slow link); the decision reaches the next.
    link.set(WanSettings { delay_ms: 400, ..WanSettings::default() });
    let fourth = refund(&merchant, "refund-3", &payments[3], &full(&payments[3])).await.refund.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while position(&client).await[0].3 == "0.00" {
        assert!(Instant::now() < deadline, "the payer region never prepared the refund's credit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let us = mesh.region_mut("us-west").unwrap();
    let leader = us.wait_leader(Duration::from_secs(10)).await.unwrap();
    us.kill(leader).unwrap();
    link.set(WanSettings { delay_ms: 10, ..WanSettings::default() });
    committed.push(refund_final(&merchant, &fourth.refund_id, Duration::from_secs(30)).await);
    mesh.region_mut("us-west").unwrap().spawn(leader).unwrap();
    for refund in &committed {
        assert_eq!(refund.state, COMMITTED, "{refund:?}");
    }

    // 5. A partition longer than the deadline: aborted on both sides, the
    // merchant's reservation released.
    link.update(|s| s.cut = true);
    let fifth = refund(&merchant, "refund-4", &payments[4], &full(&payments[4])).await.refund.unwrap();
    let aborted = refund_final(&merchant, &fifth.refund_id, DEADLINE + Duration::from_secs(15)).await;
    assert_eq!(aborted.state, ABORTED);
    assert_eq!(aborted.abort_reason, common::RejectCode::DeadlineExceeded as i32);
    link.update(|s| s.cut = false);

    // 6. A partition longer than the deadline once the payer region has
    // prepared the credit: the link is slow (1 s each way) and cut while
    // the Prepare crawls over it (once the coordinator's outbox has it in
    // a call, and a moment more for its bytes to leave), so the Prepare (on
    // the link before the cut) arrives and the payer region's answer
    // (after it, at least 2 s after the call) is lost. The
    // coordinator aborts at the deadline and the payer region voids the
    // credit when the decision reaches it after the heal; its payer still
    // lists the refund, aborted.
    link.set(WanSettings { delay_ms: 1_000, ..WanSettings::default() });
    let sixth = refund(&merchant, "refund-5", &payments[5], &full(&payments[5])).await.refund.unwrap();
    let shipped = Instant::now() + Duration::from_secs(5);
    while shipping(mesh, "cn-east", "us-west").await == 0 {
        assert!(Instant::now() < shipped, "the refund's Prepare was never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    link.update(|s| s.cut = true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while position(&client).await[0].3 == "0.00" {
        assert!(Instant::now() < deadline, "the payer region never prepared the refund's credit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sixth = refund_final(&merchant, &sixth.refund_id, DEADLINE + Duration::from_secs(15)).await;
    link.set(WanSettings { delay_ms: 10, ..WanSettings::default() });
    assert_eq!(sixth.state, ABORTED, "{sixth:?}");
    assert_eq!(sixth.abort_reason, common::RejectCode::DeadlineExceeded as i32);
    let voided = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = observe::refunds_of(&client).await.unwrap();
        let seen = listed.iter().find(|r| r.refund_id == sixth.refund_id).map(|r| r.state);
        if seen == Some(ABORTED) {
            break;
        }
        assert!(Instant::now() < voided, "the payer lists the refund as {seen:?}: {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 7. The operator has the corridor refund at the current rate and the
    // dollar weakens (7.10 to 6.50): the payer's region prices the credit
    // at 6.50, more than the principal, and the coordinator records what
    // the payer's region reserved.
    let corridor = ["--from", "us-west:USD", "--to", "cn-east:CNY"];
    let (code, out) =
        operator_cli(mesh, "us-west", &[&["corridor", "refund-rate"][..], &corridor, &["--rate", "current"]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("refunds at the current rate"), "{out}");
    let (code, out) = operator_cli(mesh, "us-west", &[&["fx", "set"][..], &corridor, &["--rate", "6.50"]].concat());
    assert_eq!(code, 0, "{out}");
    let seventh = refund(&merchant, "refund-6", &payments[6], &full(&payments[6])).await.refund.unwrap();
    let seventh = refund_final(&merchant, &seventh.refund_id, Duration::from_secs(30)).await;
    assert_eq!(seventh.state, COMMITTED, "{seventh:?}");
    let at_current = (decimal(payments[6].destination_amount.as_ref()) / rust_decimal::Decimal::new(650, 2))
        .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::ToZero);
    assert_eq!(decimal(seventh.credited_amount.as_ref()), at_current, "{seventh:?}");
    assert!(at_current > decimal(payments[6].source_amount.as_ref()));
    committed.push(seventh);

    // Each side's position moved by exactly the committed refunds, once.
    let credited: rust_decimal::Decimal = committed.iter().map(|r| decimal(r.credited_amount.as_ref())).sum();
    let debited: rust_decimal::Decimal = committed.iter().map(|r| decimal(r.debited_amount.as_ref())).sum();
    let settled = Instant::now() + Duration::from_secs(30);
    loop {
        let (wallet, merchant_now) = (position(&client).await, position(&merchant).await);
        let moved = |after: &[(String, String, String, String)], before: &[(String, String, String, String)]| {
            after[0].1.parse::<rust_decimal::Decimal>().unwrap() - before[0].1.parse::<rust_decimal::Decimal>().unwrap()
        };
        let pending_gone = [&wallet, &merchant_now].iter().all(|p| p[0].2 == "0.00" && p[0].3 == "0.00");
        if pending_gone
            && moved(&wallet, &wallet_before) == credited
            && moved(&merchant_now, &merchant_before) == -debited
        {
            break;
        }
        assert!(Instant::now() < settled, "positions {wallet:?} {merchant_now:?}; refunds {credited} / {debited}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One event per refund on each side: the payer's per committed refund,
    // the merchant's per refund, final.
    let refunded: Vec<_> =
        all_events(&client).await.into_iter().filter(|e| e.kind == wire::EventKind::Refunded as i32).collect();
    assert_eq!(refunded.len(), committed.len(), "{refunded:?}");
    let merchant_events = all_events(&merchant).await;
    let count = |kind: wire::EventKind| merchant_events.iter().filter(|e| e.kind == kind as i32).count();
    let aborted_refunds = 2;
    assert_eq!(
        (count(wire::EventKind::RefundDebited), count(wire::EventKind::RefundAborted)),
        (committed.len(), aborted_refunds)
    );

    // Every invariant of the mesh, refunds counted: books balanced,
    // positions adding up to transfers and refunds, refunds within their
    // transfers and atomic, replicas equal, no payer data abroad.
    let partners = observe::Partners { wallets: &world::WALLETS, merchants: &world::MERCHANTS };
    let observed = observe::live_mesh(mesh, partners, Duration::from_secs(30), "process").await.unwrap();
    let refunds = &observed.observation.as_ref().unwrap().regions;
    let views: usize = refunds.values().map(|r| r.refunds.len()).sum();
    // Each refund seen by its payee, each committed one by its payer too,
    // and the one aborted after the payer prepared (the one cut off before
    // never reached the payer's region).
    assert_eq!(views, 2 * committed.len() + 1 + 2);
    let checkers = check::of_observation();
    let verdict = check::check_with(&checkers, &observed);
    assert!(verdict.passed(), "{}", verdict.failures(5));
    mesh.stop().unwrap();
}

/// The messages `region`'s leader has in calls to `remote` not yet
/// answered and recorded (its metrics page).
async fn shipping(mesh: &LocalMesh, region: &str, remote: &str) -> u64 {
    let local = mesh.region(region).unwrap();
    let leader = local.wait_leader(Duration::from_secs(10)).await.unwrap();
    let addr = &local.nodes[&leader].metrics_addr;
    let page = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let series = format!("paymesh_outbox_messages_in_flight{{remote_region=\"{remote}\"}} ");
    page.lines().find_map(|line| line.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Ask to cancel `transfer` until its commit has reached the payee's
/// region (TRANSFER_NOT_COMMITTED until then); the answer.
async fn cancel(client: &PartnerClient, transfer: &str) -> wire::CancelTransferResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let request = wire::CancelTransferRequest { transfer_id: transfer.to_owned() };
        let answer = once_linked(|| client.cancel_transfer(request.clone())).await;
        if answer.reject_code != common::RejectCode::TransferNotCommitted as i32 {
            return answer;
        }
        assert!(Instant::now() < deadline, "{transfer}'s commit never reached the payee's region");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until `client`'s stream holds an event of `kind` about `transfer`;
/// that event.
async fn event_about(client: &PartnerClient, transfer: &str, kind: wire::EventKind, within: Duration) -> wire::Event {
    let deadline = Instant::now() + within;
    loop {
        let found = all_events(client).await.into_iter().find(|e| e.transfer_id == transfer && e.kind == kind as i32);
        if let Some(event) = found {
            return event;
        }
        assert!(Instant::now() < deadline, "no {kind:?} event about {transfer} within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn set_cancel_window(mesh: &LocalMesh, region: &str, minutes: u32) {
    let request = paymesh_proto::admin::v1::SetRegionSettingsRequest {
        cancel_window_minutes: Some(minutes),
        ..Default::default()
    };
    let region = mesh.region(region).unwrap();
    let set = region.admin(|mut c| async move { c.set_region_settings(request).await }).await.unwrap();
    assert_eq!(set.settings.unwrap().cancel_window_minutes, minutes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payers_cancel_within_their_window_exactly_once_across_a_killed_leader_and_never_after_it() {
    let mut fixture = mesh(WanSettings { delay_ms: 10, ..WanSettings::default() }).await;
    let mesh = &mut fixture.mesh;
    let client = wallet(mesh);
    let merchant = mesh.region("cn-east").unwrap().partner("wechat-cn").unwrap();
    let mut payments = Vec::new();
    for i in 0..3 {
        payments.push(pay(&client, &format!("to-cancel-{i}"), 5_000 + i).await);
    }
    let ids: Vec<String> = payments.iter().map(|t| t.transfer_id.clone()).collect();
    assert!(wait_final(&client, &ids, Duration::from_secs(30)).await.iter().all(|s| *s == COMMITTED));
    let before = decimal(Some(&common::Money { amount: position(&client).await[0].1.clone(), currency: "USD".into() }));

    // 1. Across the border: asked, then given back whole through cn-east.
    let asked = cancel(&client, &ids[0]).await;
    let first = asked.cancel.expect("a cancel");
    assert_eq!((first.state, asked.reject_code), (wire::CancelState::Requested as i32, 0));
    let refunded = event_about(&client, &ids[0], wire::EventKind::Refunded, Duration::from_secs(30)).await;
    assert_eq!(refunded.amount, payments[0].source_amount, "the principal comes back, not the fee");
    let again = cancel(&client, &ids[0]).await.cancel.expect("the first cancel");
    assert_eq!(again.cancel_id, first.cancel_id, "a transfer is cancelled once");
    let full = payments[0].destination_amount.as_ref().unwrap().amount.clone();
    let more = refund(&merchant, "after-cancel", &payments[0], &full).await;
    assert_eq!(more.reject_code, common::RejectCode::RefundExceedsOriginal as i32);

    // 2. The request is held back while cn-east's leader dies: the refund
    // happens once, through the next leader.
    let link = mesh.link("us-west", "cn-east").unwrap().clone();
    link.update(|s| s.cut = true);
    let second = cancel(&client, &ids[1]).await.cancel.expect("a cancel");
    assert_eq!(second.state, wire::CancelState::Requested as i32);
    let cn = mesh.region_mut("cn-east").unwrap();
    let leader = cn.wait_leader(Duration::from_secs(10)).await.unwrap();
    cn.kill(leader).unwrap();
    cn.wait_leader(Duration::from_secs(20)).await.unwrap();
    link.update(|s| s.cut = false);
    event_about(&client, &ids[1], wire::EventKind::Refunded, Duration::from_secs(30)).await;
    mesh.region_mut("cn-east").unwrap().spawn(leader).unwrap();

    // 3. After the window: refused, nothing recorded. The region's window
    // set to 0 stands for a payment older than it.
    set_cancel_window(mesh, "us-west", 0).await;
    let late = cancel(&client, &ids[2]).await;
    assert!(late.cancel.is_none(), "{late:?}");
    assert_eq!(late.reject_code, common::RejectCode::CancelWindowClosed as i32);
    set_cancel_window(mesh, "us-west", 24 * 60).await;

    // 4. Within the region: given back in the one call.
    let (home, _) = pay_to(&client, "usqr://shop/till-1", "home-to-cancel", 1_234).await;
    assert_eq!(home.state, COMMITTED);
    let done = cancel(&client, &home.transfer_id).await.cancel.expect("a cancel");
    assert_eq!(done.state, wire::CancelState::Refunded as i32);
    assert_eq!(done.credited_amount, home.source_amount);

    // The payer got back the principals of the three cancelled payments,
    // once each, and kept paying the fees; every invariant holds.
    let principals: rust_decimal::Decimal =
        [&payments[0], &payments[1]].iter().map(|t| decimal(t.source_amount.as_ref())).sum();
    let fee = decimal(home.fee.as_ref());
    let settled = Instant::now() + Duration::from_secs(30);
    loop {
        let now: rust_decimal::Decimal = position(&client).await[0].1.parse().unwrap();
        if now - before == principals - fee {
            break;
        }
        assert!(Instant::now() < settled, "the wallet moved by {}, not {}", now - before, principals - fee);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refunded = all_events(&client).await.into_iter().filter(|e| e.kind == wire::EventKind::Refunded as i32);
    assert_eq!(refunded.count(), 3, "one REFUNDED event per cancel");
    check_books(mesh).await;
    mesh.stop().unwrap();
}
