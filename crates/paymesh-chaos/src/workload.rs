//! The bank workload: wallets paying merchants at home and abroad with
//! idempotency keys, retrying with the same key after a timeout, sometimes
//! submitting a request twice on purpose, reading transfers and positions,
//! and following their events from cursors; every request recorded with its
//! times and outcome. Merchants refund: after one payment in six, the payee
//! of a payment a worker saw accepted gives back all or half of it (sent
//! again with its key while the outcome is unknown); the refunds are judged
//! from what the regions hold after the run, not recorded as requests.
//! One payment in [`ONE_CALL_ONE_IN`] is made in one call (`CreatePayment`)
//! after its quote, bounded by the quote's total, so the amounts recorded
//! are the quote's either way; the SDK batches the wallets' calls in
//! flight into `CreateTransfers` requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use paymesh_client::{ClientError, PartnerClient, Region, RetryPolicy};
use paymesh_harness::local::LocalRegion;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::Code;

use crate::world;
use paymesh_harness::history::{Op, Outcome, Request};
use paymesh_harness::locality::payer_fields;
use paymesh_harness::observe::{amount_of, position_of, state_of};
use paymesh_harness::world::{minor, Merchant, Wallet};

/// Attempts of one CreateTransfer with one key while its outcome is unknown.
const ATTEMPTS: u32 = 4;

/// One call's time limit; the SDK's own retries stop within [`SDK_DEADLINE`].
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the SDK retries one call across the region's nodes.
const SDK_DEADLINE: Duration = Duration::from_secs(5);

/// Events recorded per stream connection before the follower reconnects
/// from its cursor (so resumption happens in quiet runs too).
const EVENTS_PER_CONNECTION: usize = 500;

/// Where the workload's requests go, and what it has recorded.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder { started: Instant::now(), ops: Mutex::new(Vec::new()) }
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn record(&self, client: u32, invoked_ms: u64, request: Request, outcome: Outcome) {
        let op = Op { client, invoked_ms, completed_ms: self.now_ms(), request, outcome };
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    /// CreateTransfers answered so far (for the progress line).
    pub fn counts(&self) -> (usize, usize) {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let transfers = ops.iter().filter(|o| matches!(o.request, Request::CreateTransfer { .. }));
        let (mut all, mut ok) = (0, 0);
        for op in transfers {
            all += 1;
            ok += usize::from(op.outcome == Outcome::Ok);
        }
        (all, ok)
    }

    /// Everything recorded, in completion order.
    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// A partner's client of a region, retrying briefly (the workload does its
/// own retries, and records each).
pub fn client(region: &LocalRegion, partner: &str) -> anyhow::Result<PartnerClient> {
    let addrs: Vec<String> = region.nodes.values().map(|n| n.api_addr.clone()).collect();
    let credentials = region.credentials(&format!("partner-{partner}"))?;
    let policy = RetryPolicy { attempts: 3, deadline: SDK_DEADLINE };
    Ok(PartnerClient::new(Region::with_policy(addrs, credentials, policy).with_call_timeout(CALL_TIMEOUT)))
}

/// How a failed call ended: a definite refusal, or unknown.
pub fn classify(error: &ClientError) -> Outcome {
    match error {
        // The region's fail-fast answer: nothing was done.
        ClientError::Refused(status) if status.metadata().get(paymesh_client::REFUSED).is_some() => {
            Outcome::Failed { reason: format!("{:?}: {}", status.code(), status.message()) }
        }
        ClientError::Refused(status) => match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted => Outcome::Unknown { reason: format!("{:?}: {}", status.code(), status.message()) },
            code => Outcome::Failed { reason: format!("{code:?}") },
        },
        ClientError::GaveUp { last, .. } => {
            Outcome::Unknown { reason: format!("{:?}: {}", last.code(), last.message()) }
        }
        ClientError::Credentials(e) => Outcome::Failed { reason: format!("credentials: {e}") },
        ClientError::Handshake(refused, _) => Outcome::Failed { reason: format!("TLS handshake: {refused}") },
    }
}

/// The payments a worker keeps for its merchants to refund, the newest.
const REFUNDABLE_KEPT: usize = 16;

/// One payment in this many is made in one call (`CreatePayment`).
const ONE_CALL_ONE_IN: u32 = 3;

/// The partners' clients the workers share: the wallets', and the
/// merchants' (for refunds).
#[derive(Debug)]
pub struct Clients {
    /// Each wallet and its client.
    pub wallets: Vec<(Wallet, PartnerClient)>,
    /// Each merchant and its client.
    pub merchants: Vec<(Merchant, PartnerClient)>,
}

/// What one worker pays.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plan {
    /// One corridor only: the wallet (an index into [`Clients::wallets`])
    /// and the region of the merchants it pays. `None`: a wallet and a
    /// merchant at random for every payment, seven in ten abroad.
    pub corridor: Option<(usize, &'static str)>,
    /// A new payment at most this often (a tick missed while a payment is
    /// still under way is skipped, not made up); `None`: one after another.
    pub pace: Option<Duration>,
}

/// Every corridor of the world's wallets: each wallet with each region of
/// the merchants it can pay.
pub fn corridors(clients: &Clients) -> Vec<(usize, &'static str)> {
    let mut corridors = Vec::new();
    for (w, (wallet, _)) in clients.wallets.iter().enumerate() {
        let mut regions: Vec<&'static str> = world::payees_of(wallet).iter().map(|m| m.0).collect();
        regions.sort_unstable();
        regions.dedup();
        corridors.extend(regions.into_iter().map(|region| (w, region)));
    }
    corridors
}

/// One worker: payments until `stop`, each recorded.
pub async fn worker(id: u32, seed: u64, plan: Plan, all: Arc<Clients>, recorder: Arc<Recorder>, stop: Arc<AtomicBool>) {
    let clients = &all.wallets;
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(id) << 32));
    let mut acknowledged: Vec<(usize, String)> = Vec::new();
    let mut refundable: Vec<(&'static str, wire::Transfer)> = Vec::new();
    let mut refunds = 0u64;
    let mut sequence = 0u64;
    let mut pace = plan.pace.map(|every| {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticks
    });
    while !stop.load(Ordering::Relaxed) {
        if let Some(ticks) = &mut pace {
            ticks.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        sequence += 1;
        let w = match plan.corridor {
            Some((w, _)) => w,
            None => rng.random_range(0..clients.len()),
        };
        let (wallet, client) = &clients[w];
        let payees = world::payees_of(wallet);
        let merchant = if let Some((_, region)) = plan.corridor {
            let there: Vec<_> = payees.iter().filter(|m| m.0 == region).collect();
            there[rng.random_range(0..there.len())]
        } else {
            let abroad: Vec<_> = payees.iter().filter(|m| m.0 != wallet.0).collect();
            let home: Vec<_> = payees.iter().filter(|m| m.0 == wallet.0).collect();
            if rng.random_range(0..10) < 7 || home.is_empty() {
                abroad[rng.random_range(0..abroad.len())]
            } else {
                home[rng.random_range(0..home.len())]
            }
        };
        let qr = format!("{}m{:04}", merchant.3, rng.random_range(0..1000));
        // 5.00 to 500.00 in the wallet's currency (more for the weak ones).
        let scale = if wallet.2 == "USD" { 1 } else { 10 };
        let amount = rng.random_range(500..50_000i64) * scale;
        let source = common::Money { amount: minor(amount), currency: wallet.2.to_owned() };
        let quote = wire::CreateQuoteRequest {
            qr_payload: qr.clone(),
            amount: Some(wire::create_quote_request::Amount::SourceAmount(source.clone())),
            idempotency_key: String::new(),
        };
        let invoked = recorder.now_ms();
        let quote = match client.create_quote(quote).await {
            Ok(answer) => answer.quote,
            Err(error) => {
                // The payment is not tried: a final refusal (the payee's
                // region known unreachable) is its answer, and a quote the
                // SDK got no answer to is a payment the partner could not
                // make. Both are recorded, for the blast radius.
                let request = Request::CreateQuote {
                    region: wallet.0.to_owned(),
                    partner: wallet.1.to_owned(),
                    payee_region: merchant.0.to_owned(),
                };
                recorder.record(id, invoked, request, classify(&error));
                None
            }
        };
        let Some(quote) = quote else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (Some(debit), Some(credit)) =
            (amount_of(quote.total_debit.as_ref()), amount_of(quote.destination_amount.as_ref()))
        else {
            continue;
        };
        let key = format!("chaos-{seed}-{id}-{sequence}");
        let [name, account, reference] = payer_fields(wallet.0, id, sequence);
        let payer = Some(wire::PayerDetails { name, account, reference });
        // Priced as the quote was (the world's rates hold all day), so
        // bounded by its total a payment is never priced otherwise unseen.
        let one_call = rng.random_range(0..ONE_CALL_ONE_IN) == 0;
        let payment = wire::CreatePaymentRequest {
            idempotency_key: key.clone(),
            qr_payload: qr.clone(),
            amount: Some(wire::create_payment_request::Amount::SourceAmount(source)),
            max_total_debit: quote.total_debit.clone(),
            payer: payer.clone(),
        };
        let request = wire::CreateTransferRequest {
            idempotency_key: key.clone(),
            quote_id: quote.quote_id,
            qr_payload: qr,
            payer,
        };
        let record = |transfer: Option<&wire::Transfer>| Request::CreateTransfer {
            region: wallet.0.to_owned(),
            partner: wallet.1.to_owned(),
            idempotency_key: key.clone(),
            payee_partner: merchant.1.to_owned(),
            payee_region: merchant.0.to_owned(),
            debit: debit.clone(),
            credit: credit.clone(),
            transfer_id: transfer.map(|t| t.transfer_id.clone()),
            state: transfer.and_then(|t| state_of(t.state)),
        };
        // Send; while the outcome is unknown, send again with the same key;
        // sometimes send an answered request again on purpose.
        let duplicate = rng.random_range(0..10) == 0;
        let mut sends = 0;
        let mut attempts = 0;
        while attempts < ATTEMPTS && !(stop.load(Ordering::Relaxed) && attempts > 0) {
            attempts += 1;
            let invoked = recorder.now_ms();
            let answer = if one_call {
                client.create_payment(payment.clone()).await.map(|a| (a.transfer, a.reject_code))
            } else {
                client.create_transfer(request.clone()).await.map(|a| (a.transfer, a.reject_code))
            };
            let (outcome, transfer) = match answer {
                Ok((Some(t), _)) => (Outcome::Ok, Some(t)),
                Ok((None, reject_code)) => (Outcome::Failed { reason: format!("reject {reject_code}") }, None),
                Err(e) => (classify(&e), None),
            };
            let unknown = matches!(outcome, Outcome::Unknown { .. });
            if let Some(t) = &transfer {
                acknowledged.push((w, t.transfer_id.clone()));
                let known = refundable.iter().any(|(_, r)| r.transfer_id == t.transfer_id);
                if t.state != wire::TransferState::Aborted as i32 && !known {
                    if refundable.len() >= REFUNDABLE_KEPT {
                        refundable.remove(0);
                    }
                    refundable.push((merchant.1, t.clone()));
                }
            }
            recorder.record(id, invoked, record(transfer.as_ref()), outcome);
            sends += 1;
            if unknown {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempts))).await;
                continue;
            }
            if duplicate && sends == 1 {
                continue;
            }
            break;
        }
        if rng.random_range(0..6) == 0 && !refundable.is_empty() && !stop.load(Ordering::Relaxed) {
            let (merchant, transfer) = refundable[rng.random_range(0..refundable.len())].clone();
            refunds += 1;
            let whole = rng.random_range(0..2) == 0;
            let key = format!("chaos-refund-{seed}-{id}-{refunds}");
            if let Some((_, client)) = all.merchants.iter().find(|(m, _)| m.1 == merchant) {
                refund(client, &transfer, &key, whole, &stop).await;
            }
        }
        if rng.random_range(0..4) == 0 && !acknowledged.is_empty() {
            let (w, transfer_id) = acknowledged[rng.random_range(0..acknowledged.len())].clone();
            let (wallet, client) = &clients[w];
            let invoked = recorder.now_ms();
            let result = client.get_transfer(wire::GetTransferRequest { transfer_id: transfer_id.clone() }).await;
            let (state, outcome) = match result {
                Ok(answer) => (answer.transfer.and_then(|t| state_of(t.state)), Outcome::Ok),
                Err(e) => (None, classify(&e)),
            };
            let request =
                Request::GetTransfer { region: wallet.0.to_owned(), partner: wallet.1.to_owned(), transfer_id, state };
            recorder.record(id, invoked, request, outcome);
        }
        if rng.random_range(0..8) == 0 {
            let invoked = recorder.now_ms();
            let result = client.get_position(wire::GetPositionRequest { currency: wallet.2.to_owned() }).await;
            let (position, outcome) = match result {
                Ok(answer) => (answer.positions.first().and_then(position_of), Outcome::Ok),
                Err(e) => (None, classify(&e)),
            };
            let request = Request::GetPosition { region: wallet.0.to_owned(), partner: wallet.1.to_owned(), position };
            recorder.record(id, invoked, request, outcome);
        }
    }
}

/// Have a merchant refund `transfer`, whole or half of it (rounded down to
/// the currency's minor unit), under `key`: sent again while its outcome is
/// unknown, up to [`ATTEMPTS`] times.
async fn refund(client: &PartnerClient, transfer: &wire::Transfer, key: &str, whole: bool, stop: &AtomicBool) {
    let Some(destination) = transfer.destination_amount.clone() else { return };
    let mut amount = destination.amount.clone();
    if !whole {
        let digits = amount.split_once('.').map_or(0, |(_, fraction)| fraction.len());
        if let Ok(full) = amount.parse::<rust_decimal::Decimal>() {
            let half = (full / rust_decimal::Decimal::TWO)
                .round_dp_with_strategy(u32::try_from(digits).unwrap_or(0), rust_decimal::RoundingStrategy::ToZero);
            if !half.is_zero() {
                amount = half.to_string();
            }
        }
    }
    let request = wire::CreateRefundRequest {
        idempotency_key: key.to_owned(),
        transfer_id: transfer.transfer_id.clone(),
        amount: Some(common::Money { amount, currency: destination.currency }),
    };
    for attempt in 1..=ATTEMPTS {
        match client.create_refund(request.clone()).await {
            Err(e) if matches!(classify(&e), Outcome::Unknown { .. }) && !stop.load(Ordering::Relaxed) => {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            _ => return,
        }
    }
}

/// Follow `partner`'s events from cursor 0 until `stop`, reconnecting from
/// the last cursor after every error and every `EVENTS_PER_CONNECTION`
/// events; each connection recorded as one `Events` request.
pub async fn follow(
    id: u32,
    region: String,
    partner: String,
    client: PartnerClient,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut cursor = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let invoked = recorder.now_ms();
        let from_cursor = cursor;
        let mut events = Vec::new();
        let outcome = match client.stream_events(cursor).await {
            Err(e) => classify(&e),
            Ok(mut stream) => loop {
                if stop.load(Ordering::Relaxed) || events.len() >= EVENTS_PER_CONNECTION {
                    break Outcome::Ok;
                }
                match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                    Err(_) => continue,
                    Ok(Some(Ok(message))) => {
                        let Some(event) = message.event else { continue };
                        cursor = event.cursor;
                        if let Some(state) = state_of(event.state) {
                            events.push((event.cursor, event.transfer_id, state));
                        }
                    }
                    Ok(Some(Err(status))) => break Outcome::Unknown { reason: format!("{:?}", status.code()) },
                    Ok(None) => break Outcome::Unknown { reason: "stream ended".into() },
                }
            },
        };
        let failed = !matches!(outcome, Outcome::Ok);
        let request = Request::Events { region: region.clone(), partner: partner.clone(), from_cursor, events };
        recorder.record(id, invoked, request, outcome);
        if failed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
