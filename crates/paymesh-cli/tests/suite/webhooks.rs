//! Webhooks on a 3-node region of real processes, delivering to real HTTPS
//! receivers on loopback: signatures that verify (and keep verifying across
//! a secret rotation), every event exactly once after dedupe and in cursor
//! order across a five-minute outage and across a leader kill, isolation
//! from an endpoint that never answers, and the dead letter with its
//! replay.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{money, Region};
use paymesh_client::webhook::{verify, Delivery, WebhookEvent};
use paymesh_harness::webhook_receiver::{Behaviour, Received, Receiver, ReceiverCa};
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::partner::v1 as wire;

const QR: &str = "pay://merchant/m-1";
const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// How long verifying a delivery tolerates between its signing and its
/// arrival.
const TOLERANCE_MS: u64 = 60_000;

async fn region(settings: &str) -> (Region, ReceiverCa) {
    common::region_with_webhooks(settings).await
}

async fn webhook(region: &Region, partner: &str) -> admin::Webhook {
    let all = region.admin(|mut c| async move { c.list_webhooks(admin::ListWebhooksRequest {}).await }).await;
    all.webhooks.into_iter().find(|h| h.partner_id == partner).unwrap()
}

/// One payment of 1.00 from `partner` to the merchant; how long it took.
async fn pay(client: &paymesh_client::PartnerClient, key: &str) -> Duration {
    let started = Instant::now();
    let request = wire::CreatePaymentRequest {
        idempotency_key: key.into(),
        qr_payload: QR.into(),
        amount: Some(wire::create_payment_request::Amount::SourceAmount(money("1", "USD"))),
        max_total_debit: None,
        payer: Some(wire::PayerDetails { name: "Ada".into(), account: "acct-1".into(), reference: key.into() }),
    };
    let response = client.create_payment(request).await.unwrap();
    assert_eq!(response.reject_code, 0, "{response:?}");
    started.elapsed()
}

/// The events of every delivery a receiver accepted, in arrival order,
/// each delivery verified with one of `secrets` at its arrival.
fn accepted_events(receiver: &Receiver, secrets: &[&str]) -> Vec<WebhookEvent> {
    let (events, unverified) = receiver.events(secrets, TOLERANCE_MS);
    assert_eq!(unverified, 0, "deliveries that did not verify");
    events.into_iter().map(|(_, event)| event).collect()
}

fn verified(received: &Received, secrets: &[&str]) -> Delivery {
    verify(secrets.iter().copied(), &received.signature, &received.body, received.at_unix_ms, TOLERANCE_MS)
        .unwrap_or_else(|e| panic!("a delivery did not verify: {e}"))
}

/// Wait (at most `timeout`) until the receiver accepted events through
/// `newest`; the accepted events.
async fn wait_through(receiver: &Receiver, secrets: &[&str], newest: u64, timeout: Duration) -> Vec<WebhookEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let events = accepted_events(receiver, secrets);
        if events.iter().any(|e| e.cursor >= newest) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "events through {newest} not delivered within {timeout:?}; accepted {:?}",
            events.iter().map(|e| e.cursor).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cursors of `events` after dropping repeats of an id already seen;
/// and how many were repeats.
fn deduped(events: &[WebhookEvent]) -> (Vec<u64>, usize) {
    let mut seen = BTreeSet::new();
    let mut cursors = Vec::new();
    for event in events {
        if seen.insert(event.id.clone()) {
            cursors.push(event.cursor);
        }
    }
    (cursors, events.len() - seen.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_verify_with_either_secret_across_a_rotation() {
    let (region, ca) = region("").await;
    let receiver = ca.receiver(Behaviour::Accept).await.unwrap();
    let a = region.partner("wallet-a");
    pay(&a, "before-1").await;
    // Under TLS an endpoint must be https://.
    let plain = admin::SetWebhookRequest {
        partner_id: "wallet-a".into(),
        url: "http://localhost:1/x".into(),
        secret: SECRET.into(),
    };
    let refused = paymesh_harness::local::LocalRegion::admin(&region, |mut c| {
        let r = plain.clone();
        async move { c.set_webhook(r).await }
    })
    .await
    .unwrap_err();
    assert!(format!("{refused:#}").contains("must be https://"), "{refused:#}");
    let hook = region.set_webhook("wallet-a", &receiver.url(), SECRET).await;
    let start = hook.delivered_cursor;
    assert!(start > 0, "a new webhook starts after the newest event: {hook:?}");
    for i in 0..10 {
        pay(&a, &format!("pay-{i}")).await;
    }
    let newest = webhook(&region, "wallet-a").await.newest_cursor;
    let events = wait_through(&receiver, &[SECRET], newest, Duration::from_secs(20)).await;
    let (cursors, _) = deduped(&events);
    assert_eq!(cursors, (start + 1..=newest).collect::<Vec<_>>(), "from the one after registration, no gap");
    assert!(events.iter().all(|e| e.id == format!("us-west/wallet-a/{}", e.cursor)));
    assert!(events.iter().any(|e| e.kind == "EVENT_KIND_COMMITTED" && e.amount == "1.10" && e.currency == "USD"));
    // No other secret verifies them.
    let first = &receiver.accepted()[0];
    assert!(verify(["another-secret-of-at-least-24-bytes"], &first.signature, &first.body, first.at_unix_ms, 60_000)
        .is_err());

    // Rotate with the CLI: it prints the new secret once; deliveries then
    // carry two signatures, each secret verifying them.
    let (code, out, err) = region.cli(&region.operator_stem(), &["webhook", "rotate", "--partner", "wallet-a"]);
    assert_eq!(code, 0, "{out}{err}");
    let rotated = out.lines().find_map(|l| l.strip_prefix("secret ")).unwrap().trim().to_owned();
    assert_eq!(rotated.len(), 64, "{out}");
    let before = receiver.accepted().len();
    pay(&a, "after-rotation").await;
    let newest = webhook(&region, "wallet-a").await.newest_cursor;
    wait_through(&receiver, &[&rotated, SECRET], newest, Duration::from_secs(20)).await;
    for delivery in &receiver.accepted()[before..] {
        assert_eq!(delivery.signature.matches("v1=").count(), 2, "{}", delivery.signature);
        verified(delivery, &[&rotated]);
        verified(delivery, &[SECRET]);
    }
    // The region records the endpoint's progress.
    let deadline = Instant::now() + Duration::from_secs(10);
    let hook = loop {
        let hook = webhook(&region, "wallet-a").await;
        if hook.delivered_cursor == newest || Instant::now() > deadline {
            break hook;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hook.delivered_cursor, newest, "{hook:?}");
    assert!(
        !hook.previous_secret_fingerprint.is_empty() && hook.previous_secret_fingerprint != hook.secret_fingerprint
    );
}

/// How long the receiver fails in the outage test.
const OUTAGE: Duration = Duration::from_secs(300);
/// A payment every this often during the outage.
const OUTAGE_PAYMENT_EVERY: Duration = Duration::from_secs(5);

/// The test itself is at the suite's root (`main.rs`), where its name sorts
/// first, so that it starts first and the rest of the suite runs beside it.
pub(crate) async fn a_receiver_failing_for_five_minutes_then_gets_every_event_once_in_cursor_order() {
    // Retries back off to at most 10 s, so the recovery is seen soon.
    let (region, ca) = region("retry_initial_ms = 500\nretry_max_ms = 10000").await;
    let receiver = ca.receiver(Behaviour::Fail(503)).await.unwrap();
    let a = region.partner("wallet-a");
    let start = region.set_webhook("wallet-a", &receiver.url(), SECRET).await.delivered_cursor;
    let began = Instant::now();
    let mut payments = 0;
    while began.elapsed() < OUTAGE {
        pay(&a, &format!("outage-{payments}")).await;
        payments += 1;
        tokio::time::sleep(OUTAGE_PAYMENT_EVERY).await;
    }
    let failing = webhook(&region, "wallet-a").await;
    assert_eq!(failing.state, admin::WebhookState::Active as i32, "{failing:?}");
    assert!(failing.failures > 0 && failing.last_error.contains("503"), "{failing:?}");
    assert_eq!(receiver.accepted().len(), 0);
    let attempts = receiver.received().len();
    receiver.set(Behaviour::Accept);
    let recovered = Instant::now();
    let newest = webhook(&region, "wallet-a").await.newest_cursor;
    let events = wait_through(&receiver, &[SECRET], newest, Duration::from_secs(60)).await;
    let (cursors, repeats) = deduped(&events);
    assert_eq!(cursors, (start + 1..=newest).collect::<Vec<_>>(), "every event once, in cursor order");
    println!(
        "outage {OUTAGE:?}: {payments} payments, {} events; {attempts} failed attempts; all delivered {:?} after \
         recovery; {repeats} repeats",
        newest - start,
        recovered.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_delays_neither_another_partners_deliveries_nor_payments() {
    let (region, ca) = region("timeout_ms = 10000").await;
    let stuck = ca.receiver(Behaviour::Accept).await.unwrap();
    let healthy = ca.receiver(Behaviour::Accept).await.unwrap();
    region.set_webhook("wallet-a", &stuck.url(), SECRET).await;
    region.set_webhook("wallet-b", &healthy.url(), SECRET).await;
    let (a, b) = (region.partner("wallet-a"), region.partner("wallet-b"));

    // Two phases of the same paced load: wallet-a's endpoint answering, then
    // never answering. Each measures wallet-b's delivery latency (event time
    // to arrival) and the payments' latency.
    let mut figures = Vec::new();
    for (phase, behaviour) in [("answering", Behaviour::Accept), ("never-answering", Behaviour::Hang)] {
        stuck.set(behaviour);
        let already = healthy.accepted().len();
        let mut paid = Vec::new();
        for i in 0..40 {
            paid.push(pay(&a, &format!("{phase}-a-{i}")).await);
            paid.push(pay(&b, &format!("{phase}-b-{i}")).await);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let newest = webhook(&region, "wallet-b").await.newest_cursor;
        wait_through(&healthy, &[SECRET], newest, Duration::from_secs(20)).await;
        let mut latencies: Vec<u64> = healthy.accepted()[already..]
            .iter()
            .flat_map(|r| {
                let arrived = r.at_unix_ms;
                verified(r, &[SECRET]).events.into_iter().map(move |e| arrived.saturating_sub(e.at_unix_ms as u64))
            })
            .collect();
        latencies.sort_unstable();
        paid.sort_unstable();
        let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        let payment_p99 = paid[(paid.len() - 1) * 99 / 100];
        println!(
            "wallet-a's endpoint {phase}: wallet-b deliveries p50 {} ms, p99 {} ms, max {} ms over {} events; \
             payments p99 {payment_p99:?}, max {:?}",
            p(0.5),
            p(0.99),
            latencies[latencies.len() - 1],
            latencies.len(),
            paid[paid.len() - 1]
        );
        figures.push((latencies[latencies.len() - 1], paid[paid.len() - 1]));
    }
    assert!(stuck.received().iter().any(|r| r.status == 0), "wallet-a's endpoint was called while hanging");
    let (delivery_max, payment_max) = figures[1];
    // Waiting behind wallet-a's deliveries would cost wallet-b a whole
    // timeout (10 s) per stuck attempt; payments waiting for deliveries the
    // same.
    assert!(delivery_max < 5_000, "wallet-b's deliveries waited {delivery_max} ms behind wallet-a's endpoint");
    assert!(payment_max < Duration::from_secs(5), "a payment waited {payment_max:?} behind wallet-a's endpoint");
    let failing = webhook(&region, "wallet-a").await;
    assert_eq!(webhook(&region, "wallet-b").await.failures, 0);
    println!("wallet-a's webhook while its endpoint hangs: {failing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_resume_after_a_leader_kill_with_every_event_once() {
    let (mut region, ca) = region("").await;
    let receiver = ca.receiver(Behaviour::Accept).await.unwrap();
    let start = region.set_webhook("wallet-a", &receiver.url(), SECRET).await.delivered_cursor;
    let a = region.partner("wallet-a");
    for i in 0..20 {
        pay(&a, &format!("before-{i}")).await;
    }
    let leader = region.wait_leader(Duration::from_secs(10)).await;
    region.kill(leader);
    for i in 0..20 {
        pay(&a, &format!("after-{i}")).await;
    }
    let newer = region.wait_leader(Duration::from_secs(20)).await;
    assert_ne!(newer, leader);
    region.spawn(leader);
    let newest = webhook(&region, "wallet-a").await.newest_cursor;
    let events = wait_through(&receiver, &[SECRET], newest, Duration::from_secs(30)).await;
    let (cursors, repeats) = deduped(&events);
    assert_eq!(cursors, (start + 1..=newest).collect::<Vec<_>>(), "every event once, in cursor order");
    println!("leader {leader} killed, {newer} took over: {} events, {repeats} delivered again", newest - start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_dead_lettered_and_a_replay_delivers_from_any_cursor() {
    let (region, ca) = region("retry_initial_ms = 200\nretry_max_ms = 1000\ndead_letter_after_ms = 3000").await;
    let receiver = ca.receiver(Behaviour::Fail(500)).await.unwrap();
    let a = region.partner("wallet-a");
    for i in 0..3 {
        pay(&a, &format!("before-{i}")).await;
    }
    region.set_webhook("wallet-a", &receiver.url(), SECRET).await;
    for i in 0..3 {
        pay(&a, &format!("after-{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let hook = webhook(&region, "wallet-a").await;
        if hook.state == admin::WebhookState::DeadLettered as i32 {
            break hook;
        }
        assert!(Instant::now() < deadline, "not dead-lettered: {hook:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(dead.dead_letter_reason.contains("500"), "{dead:?}");
    // Dead: the endpoint recovering brings nothing until an operator acts.
    receiver.set(Behaviour::Accept);
    let attempts = receiver.received().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), attempts, "a dead-lettered webhook was called");
    let (code, out, err) = region.cli(&region.operator_stem(), &["webhook", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["state"], "DEAD_LETTERED", "{out}");

    // A replay from cursor 0 delivers every event the partner ever had.
    let (code, out, err) =
        region.cli(&region.operator_stem(), &["webhook", "replay", "--partner", "wallet-a", "--after", "0"]);
    assert_eq!(code, 0, "{out}{err}");
    let newest = dead.newest_cursor;
    let events = wait_through(&receiver, &[SECRET], newest, Duration::from_secs(20)).await;
    assert_eq!(deduped(&events).0, (1..=newest).collect::<Vec<_>>());
    // Beyond the newest event is refused.
    let (code, _, err) = region.cli(
        &region.operator_stem(),
        &["webhook", "replay", "--partner", "wallet-a", "--after", &(newest + 100).to_string()],
    );
    assert_ne!(code, 0);
    assert!(err.contains("beyond the newest event"), "{err}");
}

/// `paymesh bench --webhooks` registers a webhook for every payee and
/// reports what the receivers got: every event at the answering ones,
/// requests held at the one that never answers.
#[test]
fn the_benchmark_reports_what_the_payees_webhooks_received() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_paymesh"))
        .args(["bench", "--target", "paymesh", "--paymesh-calls", "one-call", "--webhooks", "--webhooks-stuck", "1"])
        .args(["--workers", "8", "--payers", "2", "--payees", "3", "--warmup", "0.5", "--duration", "1.5"])
        .args(["--no-progress", "--json"])
        .arg(&json)
        .arg("--paymesh-dir")
        .arg(dir.path().join("region"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json.with_extension("webhooks.json")).unwrap()).unwrap();
    assert_eq!((figures["answering"].as_u64(), figures["stuck"].as_u64()), (Some(2), Some(1)), "{figures}");
    assert!(figures["events"].as_u64().unwrap() > 0, "{figures}");
    assert_eq!(figures["events"], figures["expected"], "{figures}");
    assert!(figures["caught_up_after_s"].is_number(), "{figures}");
    assert!(figures["stuck_requests"].as_u64().unwrap() >= 1, "{figures}");
    assert!(stdout.contains("webhooks: 2 answering receivers got"), "{stdout}");
}
