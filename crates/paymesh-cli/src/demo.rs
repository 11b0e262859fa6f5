//! `paymesh demo`: three regions of three nodes on this machine, a tourist's
//! wallet paying Chinese merchants' QR codes, and the books checked after.
//!
//! * `us-west`: `paypal-us`, a USD wallet, and `shop-us`, a US merchant
//!   network for domestic payments.
//! * `ap-southeast`: `gcash-ph`, a PHP wallet, and `sari-ph`, a Philippine
//!   merchant network.
//! * `cn-east`: `wechat-cn` and `alipay-cn`, CNY merchant networks.
//!
//! The regions talk through user-space WAN links (see
//! [`paymesh_harness::wan`]) with a 50 ms round trip by default. The
//! workload mixes cross-border payments (a wallet pays a `wxp://` or
//! `alipay://` code) with domestic ones, a third of them in one call
//! (`CreatePayment`) and the rest as a quote then a transfer, and resubmits
//! some requests with the same idempotency key. When it stops, each merchant network refunds some
//! of the payments it received (whole or half, at home and across borders,
//! and once more than is left, which must be refused), each wallet cancels
//! its newest payments (given back whole, or refused), the operator pays
//! 100.00 USD of `paypal-us`'s prefunding back (a fund-out), and the demo waits for every
//! transfer to reach a final state, observes what every region holds, scans every
//! node's files, and runs the chaos suite's checkers that read an
//! observation ([`paymesh_harness::check::of_observation`]): every region's
//! ledger sums to zero per currency; both regions of a cross-border transfer
//! reached the same decision on the same amounts; every position is the sum
//! of its entries (refunds counted) and within its cap; refunds stay within
//! their transfers and commit on both sides or neither; every replica holds the same state;
//! every transfer is final; no file of a region holds another region's payer
//! data; plus the settlement windows' and the webhooks' checkers (every
//! partner has a webhook, with a receiver on this machine's loopback, and
//! must have received each of its events once after dedupe, in order,
//! signed). Its own checks add that every retried request got its first answer.
//!
//! The world (partners, prefunding, corridors, rates, routes) is
//! [`paymesh_harness::world`]; the observation and the checkers are the
//! harness's, shared with the chaos suite and the cross-border tests; this
//! module is the workload, its probes and its report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use paymesh_client::PartnerClient;
use paymesh_harness::admin_calls::{call_region, money};
use paymesh_harness::mesh::LocalMesh;
use paymesh_harness::wan::WanSettings;
use paymesh_harness::webhook_receiver::ReceiverCa;
use paymesh_harness::world::{configure, minor, regions, MERCHANTS, WALLETS};
use paymesh_harness::{check, locality, observe, settlement, webhooks};
use paymesh_node::config::GROUP_COMMIT_INTERVAL_MS_MAX;
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;
use rand::{Rng, SeedableRng};

use crate::steps;

/// The arguments of `paymesh demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Run the workload this many seconds, print the summary and exit (0
    /// only if every invariant holds). Without it the workload runs 30 s and
    /// the mesh stays up for grpcurl until Ctrl-C.
    #[arg(long)]
    duration: Option<u64>,
    /// Where the mesh lives (certificates, configurations, data, logs).
    /// Default: a new directory under the system's temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The emulated round trip between regions, in milliseconds.
    #[arg(long, default_value_t = 50)]
    rtt_ms: u64,
    /// The nodes' `raft.group_commit_interval_ms`: under load, each region
    /// proposes at most one Raft entry per this many milliseconds (0: as soon
    /// as the previous one is applied). Nine nodes share this machine's
    /// cores, so fewer, fuller entries leave them CPU to spare.
    #[arg(long, default_value_t = DEMO_GROUP_COMMIT_MS)]
    group_commit_ms: u64,
    /// Concurrent payments in the workload (with --rate, the most in flight).
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// What the workload pays: cross-border and domestic payments (7 to 3),
    /// or cross-border only.
    #[arg(long, value_enum, default_value_t = Mix::Mixed)]
    mix: Mix,
    /// Offer this many payments per second (open loop, at most --workers in
    /// flight; a payment due with none free is counted as skipped) instead
    /// of --workers payments back to back.
    #[arg(long)]
    rate: Option<u32>,
    /// Also show where the time of committed cross-border payments goes,
    /// step by step, from the nodes' spans (exported to a collector in the
    /// demo; costs the nodes some CPU).
    #[arg(long)]
    steps: bool,
}

/// What the workload pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Cross-border and domestic payments, 7 to 3.
    Mixed,
    /// Cross-border payments only.
    CrossBorder,
}

/// The demo's `raft.group_commit_interval_ms` (see docs/BENCHMARKS.md for
/// the runs with and without it).
const DEMO_GROUP_COMMIT_MS: u64 = 5;

/// What the operator pays back to `paypal-us` once the workload stopped,
/// in cents: a fund-out, which the books checked after must show.
const FUND_OUT_CENTS: i64 = 10_000;

/// How often the lower-bound probes run.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// The latency floor of a cross-border payment, measured while the workload
/// runs: one round trip between the regions (a gRPC health check through the
/// WAN link, TLS connection kept) and a local commit (an operator's top-up of
/// one cent through the admin API). A cross-border payment needs one round
/// trip and three commits: the payer's reserve, the payee's prepare, and
/// the payer's decision.
///
/// The top-ups are money: the books checked after the run count them. A
/// probe whose call failed is sent again with its reference (top-ups are
/// idempotent by reference) until it is answered, a few times at most.
#[derive(Debug)]
struct Probes {
    round_trip: Histogram<u64>,
    commit: Histogram<u64>,
    /// Cents topped up to `paypal-us`'s USD position by the probes.
    topped_up_cents: i64,
    /// Probes whose top-up was never answered: the books cannot be checked
    /// to the cent if there are any.
    unanswered: u64,
}

/// Calls of one probe's top-up before its outcome is called unknown.
const PROBE_ATTEMPTS: u32 = 3;

async fn probe(mesh: &LocalMesh, stop: Arc<AtomicBool>, measured_from: Instant) -> anyhow::Result<Probes> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let remote = paymesh_client::Region::new(
        mesh.endpoints("us-west", "cn-east")?.to_vec(),
        mesh.node_credentials("us-west", "cn-east")?,
    );
    let us = mesh.region("us-west")?;
    let operator = us.sdk(&us.operator_stem())?;
    let histogram = || Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram bounds");
    let mut probes = Probes { round_trip: histogram()?, commit: histogram()?, topped_up_cents: 0, unanswered: 0 };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let healthy = remote
            .call(None, |channel| async move {
                HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.map(|_| ())
            })
            .await;
        if healthy.is_ok() && started >= measured_from {
            let _ = probes.round_trip.record(micros(started.elapsed()));
        }
        let request = admin::TopUpPositionRequest {
            partner_id: "paypal-us".into(),
            amount: money("0.01", "USD"),
            reference: format!("demo-probe-{}-{n}", std::process::id()),
        };
        let started = Instant::now();
        let mut answer = Err(anyhow::anyhow!("not sent"));
        for _ in 0..PROBE_ATTEMPTS {
            answer = call_region(&operator, |mut c| {
                let request = request.clone();
                async move { c.top_up_position(request).await }
            })
            .await;
            if answer.is_ok() {
                break;
            }
        }
        match answer {
            Ok(answer) if answer.reject_code == 0 => {
                probes.topped_up_cents += 1;
                if started >= measured_from {
                    let _ = probes.commit.record(micros(started.elapsed()));
                }
            }
            Ok(_) => {}
            Err(_) => probes.unanswered += 1,
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    Ok(probes)
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Latencies count from this far into the workload (at most a tenth of it):
/// the first payments also open connections and fill caches, as
/// `paymesh bench` warms up before it measures.
const WARMUP_MAX: Duration = Duration::from_secs(2);
/// The workload's seconds when `--duration` is not given.
const INTERACTIVE_SECONDS: u64 = 30;
/// Most workers.
const WORKERS_MAX: usize = 256;
/// Longest `--duration`.
const DURATION_MAX_SECONDS: u64 = 24 * 60 * 60;
/// How long to wait for every transfer to reach a final state after the workload.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// One in this many payments is sent a second time with the same key.
const RESUBMIT_ONE_IN: u32 = 20;

/// What one payment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A wallet pays a merchant in another region.
    CrossBorder,
    /// A wallet pays a merchant in its own region.
    Domestic,
}

/// A payment's record in the demo's history.
#[derive(Clone, Debug)]
struct Record {
    kind: Kind,
    started: Instant,
    /// When CreateTransfer answered.
    answered: Instant,
    /// The state in the CreateTransfer answer.
    state: i32,
}

/// What the workload knows of each transfer.
#[derive(Debug, Default)]
struct Book {
    records: HashMap<String, Record>,
    /// Final states seen on the wallets' event streams, with when.
    finals: HashMap<String, (i32, Instant)>,
    /// Transfers recorded and not final yet, so that the progress line
    /// counts them without scanning every record under the lock (which
    /// stalled the load generator and the WAN proxies sharing its runtime).
    pending: HashSet<String>,
}

impl Book {
    fn final_state(&self, id: &str, record: &Record) -> Option<(i32, Instant)> {
        if is_final(record.state) {
            return Some((record.state, record.answered));
        }
        self.finals.get(id).copied()
    }
}

/// The workload's shared history.
#[derive(Debug, Default)]
struct History {
    book: Mutex<Book>,
    created: AtomicU64,
    skipped: AtomicU64,
    declined: AtomicU64,
    failed: AtomicU64,
    resubmitted: AtomicU64,
    resubmit_mismatch: AtomicU64,
}

fn is_final(state: i32) -> bool {
    state == wire::TransferState::Committed as i32 || state == wire::TransferState::Aborted as i32
}

impl History {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A transfer as CreateTransfer answered it.
    fn record(&self, id: String, record: Record) {
        let mut book = self.book();
        if !is_final(record.state) && !book.finals.contains_key(&id) {
            book.pending.insert(id.clone());
        }
        book.records.insert(id, record);
    }

    /// A final state seen on an event stream (the first one counts).
    fn finished(&self, id: String, state: i32) {
        let mut book = self.book();
        book.pending.remove(&id);
        book.finals.entry(id).or_insert((state, Instant::now()));
    }

    fn in_flight(&self) -> usize {
        self.book().pending.len()
    }
}

/// One invariant's verdict, as the demo prints it.
struct Check {
    /// What is checked.
    name: String,
    /// Whether it holds.
    holds: bool,
    /// The figures behind the verdict.
    detail: String,
}

/// Payments each merchant network refunds when the workload stops.
const REFUNDS_PER_MERCHANT: usize = 6;

/// What the demo's refunds came to.
#[derive(Debug, Default)]
struct Refunds {
    /// Refunds asked for, and those accepted (committed, or reserved while
    /// the payer's region is asked).
    asked: usize,
    accepted: usize,
    /// Of the accepted, those of a payment made in another region.
    cross_border: usize,
    /// Whether a refund past what its payment moved was refused.
    past_refused: Option<bool>,
}

/// Each merchant network refunds up to [`REFUNDS_PER_MERCHANT`] committed
/// payments it received, alternately whole and half; then it asks once
/// more for a cent of a payment refunded whole, which must be refused.
async fn refund_some(mesh: &LocalMesh) -> anyhow::Result<Refunds> {
    let mut out = Refunds::default();
    for (region, partner, _, _) in MERCHANTS {
        let merchant = mesh.region(region)?.partner(partner)?;
        let received = paymesh_harness::world::transfers_of(&merchant).await?;
        let mut committed: Vec<&wire::Transfer> =
            received.values().filter(|t| t.state == wire::TransferState::Committed as i32).collect();
        committed.sort_by(|a, b| a.transfer_id.cmp(&b.transfer_id));
        let mut whole = None;
        for (n, transfer) in committed.into_iter().take(REFUNDS_PER_MERCHANT).enumerate() {
            let Some(destination) = transfer.destination_amount.clone() else { continue };
            let amount = if n % 2 == 0 {
                destination.amount.clone()
            } else {
                let full: rust_decimal::Decimal = destination.amount.parse()?;
                (full / rust_decimal::Decimal::TWO)
                    .round_dp_with_strategy(full.scale(), rust_decimal::RoundingStrategy::ToZero)
                    .to_string()
            };
            let request = wire::CreateRefundRequest {
                idempotency_key: format!("demo-refund-{}-{}", std::process::id(), transfer.transfer_id),
                transfer_id: transfer.transfer_id.clone(),
                amount: Some(common::Money { amount, currency: destination.currency.clone() }),
            };
            out.asked += 1;
            let answer = merchant.create_refund(request).await?;
            if answer.refund.as_ref().is_some_and(|r| r.state != wire::TransferState::Aborted as i32) {
                out.accepted += 1;
                let abroad = transfer.corridor.as_ref().is_some_and(|c| c.source_region != c.destination_region);
                out.cross_border += usize::from(abroad);
                if n % 2 == 0 {
                    whole.get_or_insert((transfer.transfer_id.clone(), destination.currency));
                }
            }
        }
        if let (Some((transfer_id, currency)), None) = (whole, out.past_refused) {
            let request = wire::CreateRefundRequest {
                idempotency_key: format!("demo-refund-{}-{transfer_id}-more", std::process::id()),
                transfer_id,
                amount: Some(common::Money { amount: "0.01".into(), currency }),
            };
            let answer = merchant.create_refund(request).await?;
            let refused =
                answer.refund.is_none() && answer.reject_code == common::RejectCode::RefundExceedsOriginal as i32;
            out.past_refused = Some(refused);
        }
    }
    Ok(out)
}

/// Payments each wallet cancels when the workload stops.
const CANCELS_PER_WALLET: usize = 4;

/// How long the demo waits for the outcome of the wallets' cancels.
const CANCEL_OUTCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// What the demo's cancels came to.
#[derive(Debug, Default)]
struct Cancels {
    /// Cancels asked for.
    asked: usize,
    /// Payments given back whole.
    refunded: usize,
    /// Cancels refused, by reason (a payment its merchant refunded first
    /// is ALREADY_REFUNDED).
    refused: BTreeMap<String, usize>,
    /// Cancels whose outcome did not come within [`CANCEL_OUTCOME_TIMEOUT`].
    unresolved: usize,
}

/// The name of a reject code on the wire.
fn reject_name(code: i32) -> String {
    common::RejectCode::try_from(code).map_or_else(|_| format!("code {code}"), |c| c.as_str_name().to_owned())
}

/// Each wallet cancels its [`CANCELS_PER_WALLET`] newest committed
/// payments (the merchants refunded their oldest), and the demo follows
/// the wallet's event stream until each cancel's outcome comes: REFUNDED
/// (the payment given back whole) or CANCEL_REFUSED.
async fn cancel_some(mesh: &LocalMesh) -> anyhow::Result<Cancels> {
    let mut out = Cancels::default();
    for (region, partner, _, _) in WALLETS {
        let wallet = mesh.region(region)?.partner(partner)?;
        let paid = paymesh_harness::world::transfers_of(&wallet).await?;
        let mut committed: Vec<&wire::Transfer> =
            paid.values().filter(|t| t.state == wire::TransferState::Committed as i32).collect();
        committed.sort_by_key(|t| std::cmp::Reverse((t.transfer_id.len(), t.transfer_id.clone())));
        let mut waiting = HashSet::new();
        for transfer in committed.into_iter().take(CANCELS_PER_WALLET) {
            out.asked += 1;
            let answer = cancel_once_committed(&wallet, &transfer.transfer_id).await?;
            match answer.cancel {
                Some(cancel) if cancel.state == wire::CancelState::Requested as i32 => {
                    waiting.insert(transfer.transfer_id.clone());
                }
                Some(cancel) if cancel.state == wire::CancelState::Refunded as i32 => out.refunded += 1,
                _ => *out.refused.entry(reject_name(answer.reject_code)).or_default() += 1,
            }
        }
        let deadline = Instant::now() + CANCEL_OUTCOME_TIMEOUT;
        let mut cursor = 0;
        while !waiting.is_empty() && Instant::now() < deadline {
            let Ok(mut stream) = wallet.stream_events(cursor).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            while let Ok(Some(Ok(message))) =
                tokio::time::timeout(Duration::from_secs(1), stream.message()).await.map(|m| m.transpose())
            {
                let Some(event) = message.event else { continue };
                cursor = event.cursor;
                if !waiting.contains(&event.transfer_id) {
                    continue;
                }
                if event.kind == wire::EventKind::Refunded as i32 {
                    out.refunded += 1;
                } else if event.kind == wire::EventKind::CancelRefused as i32 {
                    *out.refused.entry(reject_name(event.reason)).or_default() += 1;
                } else {
                    continue;
                }
                waiting.remove(&event.transfer_id);
                if waiting.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
        }
        out.unresolved += waiting.len();
    }
    Ok(out)
}

/// Ask to cancel `transfer`, again while its commit has not reached the
/// payee's region (TRANSFER_NOT_COMMITTED), for at most ten seconds.
async fn cancel_once_committed(wallet: &PartnerClient, transfer: &str) -> anyhow::Result<wire::CancelTransferResponse> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let request = wire::CancelTransferRequest { transfer_id: transfer.to_owned() };
        let answer = wallet.cancel_transfer(request).await.with_context(|| format!("cancelling {transfer}"))?;
        if answer.reject_code != common::RejectCode::TransferNotCommitted as i32 || Instant::now() >= deadline {
            return Ok(answer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One payment: quote, transfer, sometimes the same transfer again.
/// The operator closes each region's settlement window (the first, since
/// the region began), and the demo prints each window's nets per account
/// and cross-border figures and every region pair's cross-check; the
/// windows join the observation for the settlement checker.
async fn close_windows(mesh: &LocalMesh) -> anyhow::Result<paymesh_harness::history::SettlementObservation> {
    let regions: Vec<(&str, &paymesh_harness::local::LocalRegion)> =
        mesh.regions.iter().map(|(name, region)| (name.as_str(), region)).collect();
    let operators = settlement::operators(&regions)?;
    let gathered = settlement::gather(&operators).await?;
    println!("\nsettlement:");
    for (name, operator) in &operators {
        let last = gathered.windows.get(name).and_then(|w| w.last()).map_or(0, |w| w.number);
        let window = settlement::window(operator, last).await?;
        for line in settlement::render(name, &window).lines() {
            println!("  {line}");
        }
    }
    for pair in &gathered.pairs {
        println!("  cross-check {}", pair.line);
    }
    Ok(gathered)
}

async fn pay(
    client: &PartnerClient,
    wallet: &'static str,
    kind: Kind,
    sequence: u64,
    rng: &mut rand::rngs::StdRng,
    history: &History,
) {
    let (_, _, currency, _) = WALLETS.iter().find(|w| w.1 == wallet).copied().unwrap_or(WALLETS[0]);
    let region = WALLETS.iter().find(|w| w.1 == wallet).map_or("us-west", |w| w.0);
    let merchant = match kind {
        Kind::CrossBorder => MERCHANTS[rng.random_range(0..2)],
        Kind::Domestic => MERCHANTS.iter().copied().find(|m| m.0 == region).unwrap_or(MERCHANTS[2]),
    };
    let qr = format!("{}m{:04}", merchant.3, rng.random_range(0..1000));
    let amount = rng.random_range(500..50_000i64);
    let source = common::Money { amount: minor(amount), currency: currency.to_owned() };
    let payer = {
        let [name, account, reference] = locality::payer_fields(region, 0, sequence);
        wire::PayerDetails { name, account, reference }
    };
    let idempotency_key = format!("demo-{wallet}-{sequence}");
    // One payment in ONE_CALL_ONE_IN is one call, within a bound of a
    // tenth over its amount; the others a quote, then a transfer.
    let submission = if sequence.is_multiple_of(ONE_CALL_ONE_IN) {
        Submission::Payment(wire::CreatePaymentRequest {
            idempotency_key,
            qr_payload: qr,
            amount: Some(wire::create_payment_request::Amount::SourceAmount(source)),
            max_total_debit: Some(common::Money { amount: minor(amount + amount / 10), currency: currency.to_owned() }),
            payer: Some(payer),
        })
    } else {
        // Quotes are asked for under a key of their own: a retry of the
        // call gets the same quote.
        let quote = wire::CreateQuoteRequest {
            qr_payload: qr.clone(),
            amount: Some(wire::create_quote_request::Amount::SourceAmount(source)),
            idempotency_key: format!("{idempotency_key}-quote"),
        };
        let quote = match client.create_quote(quote).await {
            Ok(answer) => match answer.quote {
                Some(quote) => quote,
                None => {
                    history.declined.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            Err(_) => {
                history.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        Submission::Transfer(wire::CreateTransferRequest {
            idempotency_key,
            quote_id: quote.quote_id,
            qr_payload: qr,
            payer: Some(payer),
        })
    };
    let started = Instant::now();
    let transfer = match submission.send(client).await {
        Ok(Some(transfer)) => transfer,
        Ok(None) => {
            history.declined.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            history.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    history.created.fetch_add(1, Ordering::Relaxed);
    let record = Record { kind, started, answered: Instant::now(), state: transfer.state };
    history.record(transfer.transfer_id.clone(), record);
    if rng.random_range(0..RESUBMIT_ONE_IN) == 0 {
        history.resubmitted.fetch_add(1, Ordering::Relaxed);
        let again = submission.send(client).await;
        let same = again.ok().flatten().is_some_and(|t| t.transfer_id == transfer.transfer_id);
        if !same {
            history.resubmit_mismatch.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One payment in this many is made in one call (`CreatePayment`).
const ONE_CALL_ONE_IN: u64 = 3;

/// A payment's request that creates its transfer: after a quote, or in one
/// call.
enum Submission {
    Transfer(wire::CreateTransferRequest),
    Payment(wire::CreatePaymentRequest),
}

impl Submission {
    /// Send it (again): the transfer, or none when it was refused.
    async fn send(&self, client: &PartnerClient) -> Result<Option<wire::Transfer>, paymesh_client::ClientError> {
        match self {
            Submission::Transfer(request) => client.create_transfer(request.clone()).await.map(|a| a.transfer),
            Submission::Payment(request) => client.create_payment(request.clone()).await.map(|a| a.transfer),
        }
    }
}

/// Follow a wallet's events, recording final states, until `stop`.
async fn follow(client: PartnerClient, history: Arc<History>, stop: Arc<AtomicBool>) {
    let mut cursor = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = client.stream_events(cursor).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match next {
                Err(_) => continue,
                Ok(Some(Ok(message))) => {
                    let Some(event) = message.event else { continue };
                    cursor = event.cursor;
                    if is_final(event.state) {
                        history.finished(event.transfer_id, event.state);
                    }
                }
                Ok(Some(Err(_)) | None) => break,
            }
        }
    }
}

/// The Raft log syncs of every node of the mesh since it started.
#[derive(Debug, Default)]
struct LogSyncs {
    all: u64,
    slow: u64,
    max_micros: u64,
}

/// Sum the nodes' log sync counters; `None` if no node answered.
async fn log_syncs(mesh: &LocalMesh) -> Option<LogSyncs> {
    let mut syncs = LogSyncs::default();
    let mut answered = false;
    for region in mesh.regions.values() {
        let Ok(client) = region.client() else { continue };
        for status in region.statuses(&client, false).await {
            answered = true;
            syncs.all += status.log_syncs;
            syncs.slow += status.log_slow_syncs;
            syncs.max_micros = syncs.max_micros.max(status.log_sync_max_micros);
        }
    }
    answered.then_some(syncs)
}

/// The machine's CPU time so far, from the first line of `/proc/stat`
/// (Linux; `None` elsewhere): busy ticks (iowait counted as idle) and all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuTicks {
    busy: u64,
    total: u64,
}

impl CpuTicks {
    fn read() -> Option<CpuTicks> {
        CpuTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<CpuTicks> {
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        let total: u64 = (0..8).map(field).sum();
        let idle = field(3) + field(4);
        Some(CpuTicks { busy: total - idle, total })
    }

    /// The busy share of the CPU time between `start` and this reading.
    fn busy_since(&self, start: &CpuTicks) -> Option<f64> {
        let total = self.total.checked_sub(start.total).filter(|t| *t > 0)?;
        let busy = self.busy.checked_sub(start.busy)?;
        Some(busy as f64 / total as f64)
    }
}

fn percentile(histogram: &Histogram<u64>, q: f64) -> String {
    if histogram.is_empty() {
        return "-".into();
    }
    format!("{:.1}", histogram.value_at_quantile(q) as f64 / 1000.0)
}

/// Run the demo.
pub async fn run(args: &DemoArgs) -> anyhow::Result<bool> {
    if args.workers == 0 || args.workers > WORKERS_MAX {
        bail!("--workers must be 1 to {WORKERS_MAX}");
    }
    if args.duration.is_some_and(|d| d == 0 || d > DURATION_MAX_SECONDS) {
        bail!("--duration must be 1 to {DURATION_MAX_SECONDS} seconds");
    }
    if args.rtt_ms > 10_000 {
        bail!("--rtt-ms must be at most 10000");
    }
    if args.group_commit_ms > GROUP_COMMIT_INTERVAL_MS_MAX {
        bail!("--group-commit-ms must be at most {GROUP_COMMIT_INTERVAL_MS_MAX}");
    }
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("paymesh-demo-{}", std::process::id())),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    let exe = std::env::current_exe().context("finding the paymesh binary")?;
    println!(
        "paymesh demo: 3 regions × 3 nodes under {}, {} ms round trip between regions",
        dir.display(),
        args.rtt_ms
    );
    let wan = WanSettings { delay_ms: args.rtt_ms / 2, ..WanSettings::default() };
    let raft = format!(
        "heartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n\
         group_commit_interval_ms = {}",
        args.group_commit_ms
    );
    let started = Instant::now();
    let (collector, node_env) = if args.steps {
        let (collector, endpoint) = steps::Collector::start().await?;
        (Some(collector), steps::Collector::node_env(&endpoint))
    } else {
        (None, Vec::new())
    };
    let node_env: Vec<(&str, &str)> = node_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut mesh = LocalMesh::plan(&dir, &exe, &regions(), 3, &raft, wan, &node_env).await?;
    // Every partner gets a webhook: receivers on this machine's loopback
    // under a CA of their own, which every node trusts.
    let webhook_ca = ReceiverCa::new(&dir)?;
    let section = webhook_ca.node_config("");
    for region in mesh.regions.values_mut() {
        for node in region.nodes.values_mut() {
            node.extra_config.push_str(&section);
        }
    }
    let prometheus = dir.join("prometheus.yml");
    std::fs::write(&prometheus, mesh.prometheus_config("5s"))
        .with_context(|| format!("writing {}", prometheus.display()))?;
    mesh.launch().await?;
    configure(&mesh).await?;
    let operators = {
        let named = mesh.regions.iter().map(|(name, region)| (name.as_str(), region)).collect::<Vec<_>>();
        settlement::operators(&named)?
    };
    let partners: Vec<(&str, &str)> =
        WALLETS.iter().map(|w| (w.0, w.1)).chain(MERCHANTS.iter().map(|m| (m.0, m.1))).collect();
    let watched = webhooks::register(&webhook_ca, &operators, &partners).await.context("registering webhooks")?;
    println!("mesh up and configured in {:.1} s", started.elapsed().as_secs_f64());
    for (name, region) in &mesh.regions {
        let consoles: Vec<String> = region.nodes.values().map(|n| format!("https://{}/", n.console_addr)).collect();
        println!("operator console of {name}: {}", consoles.join(", "));
    }
    println!(
        "  (a browser presents an operator certificate, {}/<region>/certs/operator-ops.pem; see docs/OPERATIONS.md)",
        dir.display()
    );

    let seconds = args.duration.unwrap_or(INTERACTIVE_SECONDS);
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut followers = Vec::new();
    let mut clients = BTreeMap::new();
    for (region, wallet, _, _) in WALLETS {
        let client = mesh.region(region)?.partner(wallet)?;
        followers.push(tokio::spawn(follow(mesh.region(region)?.partner(wallet)?, history.clone(), stop.clone())));
        clients.insert(wallet, Arc::new(client));
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let warmup = WARMUP_MAX.min(Duration::from_secs(seconds) / 10);
    let measured_from = Instant::now() + warmup;
    let mix = args.mix;
    let one = move |history: Arc<History>, clients: BTreeMap<&'static str, Arc<PartnerClient>>, sequence: u64| async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(sequence);
        let wallet = WALLETS[rng.random_range(0..WALLETS.len())].1;
        let kind =
            if mix == Mix::CrossBorder || rng.random_range(0..10) < 7 { Kind::CrossBorder } else { Kind::Domestic };
        if let Some(client) = clients.get(wallet) {
            pay(client, wallet, kind, sequence, &mut rng, &history).await;
        }
    };
    let stop_probes = Arc::new(AtomicBool::new(false));
    let probes = {
        let stop = stop_probes.clone();
        let mesh = &mesh;
        async move { probe(mesh, stop, measured_from).await }
    };
    let mut workers = Vec::new();
    match args.rate {
        None => {
            for worker in 0..args.workers {
                let (history, clients) = (history.clone(), clients.clone());
                workers.push(tokio::spawn(async move {
                    let mut sequence = (worker as u64) << 32;
                    while Instant::now() < deadline {
                        sequence += 1;
                        one(history.clone(), clients.clone(), sequence).await;
                    }
                }));
            }
        }
        Some(rate) => {
            let (history, clients) = (history.clone(), clients.clone());
            let slots = Arc::new(tokio::sync::Semaphore::new(args.workers));
            workers.push(tokio::spawn(async move {
                let interval = Duration::from_secs(1) / rate.max(1);
                let mut due = tokio::time::Instant::now();
                let mut sequence = 0u64;
                let mut running = tokio::task::JoinSet::new();
                while Instant::now() < deadline {
                    tokio::time::sleep_until(due).await;
                    due += interval;
                    sequence += 1;
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let task = one(history.clone(), clients.clone(), sequence);
                            running.spawn(async move {
                                task.await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            history.skipped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    while running.try_join_next().is_some() {}
                }
                while running.join_next().await.is_some() {}
            }));
        }
    }
    let probing = probes;
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let workload_started = Instant::now();
    let cpu_at_start = CpuTicks::read();
    let clock = steps::Clock::now();
    let watch = async {
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let created = history.created.load(Ordering::Relaxed);
            progress.set_message(format!(
                "{:>5.1} s  {created} transfers ({:.0}/s)  {} in flight  {} declined  {} failed",
                workload_started.elapsed().as_secs_f64(),
                created as f64 / workload_started.elapsed().as_secs_f64(),
                history.in_flight(),
                history.declined.load(Ordering::Relaxed),
                history.failed.load(Ordering::Relaxed),
            ));
            progress.tick();
        }
        for worker in workers {
            let _ = worker.await;
        }
        stop_probes.store(true, Ordering::Relaxed);
    };
    let (probes, ()) = tokio::join!(probing, watch);
    let probes = probes?;
    let elapsed = workload_started.elapsed();
    let cpu_busy = cpu_at_start.zip(CpuTicks::read()).and_then(|(start, end)| end.busy_since(&start));
    let log_syncs = log_syncs(&mesh).await;
    let settle = Instant::now();
    while history.in_flight() > 0 && settle.elapsed() < SETTLE_TIMEOUT {
        progress.set_message(format!("settling: {} in flight", history.in_flight()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish_and_clear();
    stop.store(true, Ordering::Relaxed);
    for follower in followers {
        let _ = follower.await;
    }

    // Counts and latencies.
    let mut counts: BTreeMap<(Kind, &str), u64> = BTreeMap::new();
    let mut latency: BTreeMap<Kind, Histogram<u64>> = BTreeMap::new();
    let mut committed = 0u64;
    let mut measured = 0u64;
    let mut traced = Vec::new();
    {
        let book = history.book();
        for (id, record) in &book.records {
            let state = match book.final_state(id, record) {
                Some((state, at)) => {
                    let is_committed = state == wire::TransferState::Committed as i32;
                    committed += u64::from(is_committed);
                    if is_committed && record.started >= measured_from {
                        measured += 1;
                        let micros = at.saturating_duration_since(record.started).as_micros().max(1);
                        let histogram = latency.entry(record.kind).or_insert_with(|| {
                            Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
                        });
                        let _ = histogram.record(u64::try_from(micros).unwrap_or(u64::MAX));
                        if record.kind == Kind::CrossBorder && collector.is_some() {
                            traced.push(steps::Payment {
                                transfer: id.clone(),
                                started: record.started,
                                committed: at,
                            });
                        }
                    }
                    if is_committed {
                        "committed"
                    } else {
                        "aborted"
                    }
                }
                None => "in flight",
            };
            *counts.entry((record.kind, state)).or_default() += 1;
        }
    }
    println!("\nworkload: {:.1} s, {} workers", elapsed.as_secs_f64(), args.workers);
    if let Some(busy) = cpu_busy {
        // Every node, proxy and the load generator share this machine: a
        // tail measured on a saturated one is the machine's as much as the mesh's.
        println!("this machine's CPUs were {:.0} % busy during the workload", busy * 100.0);
    }
    if let Some(syncs) = log_syncs {
        // All nine nodes share this machine's disk: when it stalls, every
        // region's commits wait at once.
        println!(
            "the nodes' Raft log fdatasyncs: {} of {} took over {} ms (the disk stalled), the longest {:.1} ms",
            syncs.slow,
            syncs.all,
            paymesh_store::log_store::SLOW_SYNC.as_millis(),
            syncs.max_micros as f64 / 1000.0
        );
    }
    println!(
        "latencies: the {measured} committed payments started after the first {:.1} s (the warm-up, in which \
         connections open and caches fill), as are the probes below",
        warmup.as_secs_f64()
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "kind", "committed", "aborted", "in flight", "p50 ms", "p99 ms", "p999 ms"
    );
    for kind in [Kind::CrossBorder, Kind::Domestic] {
        let get = |state| counts.get(&(kind, state)).copied().unwrap_or(0);
        let empty = Histogram::new(3).expect("valid histogram");
        let h = latency.get(&kind).unwrap_or(&empty);
        println!(
            "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            match kind {
                Kind::CrossBorder => "cross-border",
                Kind::Domestic => "domestic",
            },
            get("committed"),
            get("aborted"),
            get("in flight"),
            percentile(h, 0.5),
            percentile(h, 0.99),
            percentile(h, 0.999)
        );
    }
    println!(
        "throughput: {:.0} committed transfers/s; {} declined at quote or transfer, {} calls failed, {} resubmitted, \
         {} skipped (open loop, no worker free)",
        committed as f64 / elapsed.as_secs_f64(),
        history.declined.load(Ordering::Relaxed),
        history.failed.load(Ordering::Relaxed),
        history.resubmitted.load(Ordering::Relaxed),
        history.skipped.load(Ordering::Relaxed),
    );
    let (rtt, commit) = (&probes.round_trip, &probes.commit);
    if !rtt.is_empty() && !commit.is_empty() {
        let bound = rtt.value_at_quantile(0.5) + 3 * commit.value_at_quantile(0.5);
        println!(
            "lower bound of a cross-border payment: {:.1} ms = one round trip ({} ms p50, {} ms p99 of {} probes) + \
             3 local commits ({} ms p50, {} ms p99 of {} probes)",
            bound as f64 / 1000.0,
            percentile(rtt, 0.5),
            percentile(rtt, 0.99),
            rtt.len(),
            percentile(commit, 0.5),
            percentile(commit, 0.99),
            commit.len()
        );
    }
    if let Some(collector) = &collector {
        collector.settle().await;
        println!("\n{}", steps::Breakdown::of(collector, &traced, clock)?);
    }

    let in_flight = counts.iter().filter(|((_, s), _)| *s == "in flight").map(|(_, n)| n).sum::<u64>();
    let refunds = refund_some(&mesh).await.context("refunding payments")?;
    println!(
        "refunds: {} asked by the merchant networks (whole and half), {} accepted ({} of payments from another \
         region)",
        refunds.asked, refunds.accepted, refunds.cross_border
    );
    let cancels = cancel_some(&mesh).await.context("cancelling payments")?;
    let refused: Vec<String> = cancels.refused.iter().map(|(why, n)| format!("{n} {why}")).collect();
    println!(
        "cancels: {} asked by the wallets, {} given back whole, refused: {}",
        cancels.asked,
        cancels.refunded,
        if refused.is_empty() { "none".to_owned() } else { refused.join(", ") }
    );
    // The operator pays some prefunding back; the books must show it.
    let paid_back_cents = FUND_OUT_CENTS;
    let fund_out = admin::FundOutPositionRequest {
        partner_id: "paypal-us".into(),
        amount: money(&minor(paid_back_cents), "USD"),
        reference: format!("demo-fund-out-{}", std::process::id()),
    };
    let us = mesh.region("us-west")?;
    let operator = us.sdk(&us.operator_stem())?;
    let answer = call_region(&operator, |mut c| {
        let request = fund_out.clone();
        async move { c.fund_out_position(request).await }
    })
    .await
    .context("paying prefunding back to paypal-us")?;
    paymesh_harness::admin_calls::accepted(answer.reject_code).context("paying prefunding back to paypal-us")?;
    println!("fund-out: {} USD paid back to paypal-us", minor(paid_back_cents));
    let partners = observe::Partners { wallets: &WALLETS, merchants: &MERCHANTS };
    let mut observed = observe::live_mesh(&mesh, partners, SETTLE_TIMEOUT, "demo").await?;
    if let Some(us) = observed.observation.as_mut().and_then(|o| o.regions.get_mut("us-west")) {
        let usd = us.top_ups.entry("paypal-us".into()).or_default().entry("USD".into()).or_default();
        *usd += rust_decimal::Decimal::new(probes.topped_up_cents - paid_back_cents, 2);
    }
    let gathered = close_windows(&mesh).await.context("closing the settlement windows")?;
    if let Some(observation) = observed.observation.as_mut() {
        observation.settlement = Some(gathered);
    }
    let delivered = webhooks::observe(&watched, &operators, SETTLE_TIMEOUT).await.context("observing the webhooks")?;
    println!(
        "webhooks: {} partners, {} events delivered ({} distinct)",
        delivered.len(),
        delivered.iter().map(|w| w.delivered.len()).sum::<usize>(),
        delivered.iter().map(|w| w.delivered.iter().collect::<HashSet<_>>().len()).sum::<usize>()
    );
    observed.webhooks = Some(delivered);
    let mut checkers = check::of_observation();
    checkers.push(Box::new(check::Settlement));
    checkers.push(Box::new(check::Webhooks));
    let verdict = check::check_with(&checkers, &observed);
    let mut checks: Vec<Check> = verdict
        .checkers
        .iter()
        .map(|c| Check {
            name: c.description.to_owned(),
            holds: c.violations == 0,
            detail: match c.details.first() {
                None => "holds".to_owned(),
                Some(first) => format!("{} violations, first: {}", c.violations, first.detail),
            },
        })
        .collect();
    checks.push(Check {
        name: "every transfer the workload made was seen final on its wallet's event stream".into(),
        holds: in_flight == 0,
        detail: format!("{in_flight} still in flight after {SETTLE_TIMEOUT:?}"),
    });
    checks.push(Check {
        name: "a refund past what its payment moved is refused".into(),
        holds: refunds.past_refused == Some(true),
        detail: match refunds.past_refused {
            Some(true) => "a cent more of a payment refunded whole: REFUND_EXCEEDS_ORIGINAL".to_owned(),
            Some(false) => "a cent more of a payment refunded whole was not refused".to_owned(),
            None => "no payment was refunded whole to try it on".to_owned(),
        },
    });
    checks.push(Check {
        name: "every cancel the wallets asked for reached its outcome".into(),
        holds: cancels.asked > 0 && cancels.unresolved == 0,
        detail: format!(
            "{} asked, {} given back whole, {} refused, {} without an outcome after {CANCEL_OUTCOME_TIMEOUT:?}",
            cancels.asked,
            cancels.refunded,
            cancels.refused.values().sum::<usize>(),
            cancels.unresolved
        ),
    });
    checks.push(Check {
        name: "every probe's top-up was answered, so the books are known to the cent".into(),
        holds: probes.unanswered == 0,
        detail: format!("{} cents topped up by probes, {} unanswered", probes.topped_up_cents, probes.unanswered),
    });
    checks.push(Check {
        name: "a resubmitted request returns its first transfer".into(),
        holds: history.resubmit_mismatch.load(Ordering::Relaxed) == 0,
        detail: format!(
            "{} resubmitted, {} answered differently",
            history.resubmitted.load(Ordering::Relaxed),
            history.resubmit_mismatch.load(Ordering::Relaxed)
        ),
    });
    if let Some(observation) = &observed.observation {
        for (name, held) in &observation.regions {
            println!(
                "observed {name}: {} transfers, {} replicas at index {}",
                held.transfers.len(),
                held.replicas.len(),
                held.replicas.first().map_or(0, |r| r.applied_index)
            );
        }
    }
    if let Some(scan) = &observed.locality {
        println!(
            "scanned {} files, {} bytes of the nodes' data for other regions' payer data in {} ms",
            scan.files(),
            scan.bytes(),
            scan.elapsed_ms
        );
    }
    println!("\ninvariants:");
    let mut all = true;
    for check in &checks {
        all &= check.holds;
        println!("  [{}] {} — {}", if check.holds { "ok" } else { "FAILED" }, check.name, check.detail);
    }

    if args.duration.is_none() {
        println!("\nthe mesh stays up; try it with grpcurl (partner certificates are under each region's certs/):");
        for (name, region) in &mesh.regions {
            println!("  {name}: {}", region.api_addrs().join(", "));
        }
        if let Some(addr) = mesh.region("us-west")?.api_addrs().first() {
            let certs = dir.join("us-west/certs");
            println!(
                "  grpcurl -cacert {0}/ca.pem -cert {0}/partner-paypal-us.pem -key {0}/partner-paypal-us.key {addr} \
                 paymesh.partner.v1.PartnerService/GetPosition",
                certs.display()
            );
        }
        println!(
            "every node serves Prometheus metrics at /metrics; to scrape them all: prometheus --config.file={}",
            prometheus.display()
        );
        println!("press Ctrl-C to stop");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    }
    mesh.stop()?;
    println!("{}", if all { "all invariants hold" } else { "INVARIANT VIOLATED" });
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_busy_share_comes_from_the_first_line_of_proc_stat_with_iowait_as_idle() {
        let start = CpuTicks::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(start, CpuTicks { busy: 150, total: 1000 });
        let end = CpuTicks::parse("cpu  400 0 120 1350 100 0 30 0 0 0\n").unwrap();
        // 1,000 more ticks, of which 300 + 70 + 30 busy.
        let share = end.busy_since(&start).unwrap();
        assert!((share - 0.4).abs() < 1e-9, "{share}");
        assert_eq!(end.busy_since(&end), None, "no time passed, no share");
        assert_eq!(CpuTicks::parse("intr 1 2 3\n"), None);
        assert_eq!(CpuTicks::parse("cpu  1 x 3\n"), None);
    }
}
