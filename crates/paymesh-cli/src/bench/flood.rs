//! `paymesh bench --flood`: one partner floods the region while the others
//! run the normal workload.
//!
//! The flooder ([`FLOODER`]) runs [`FLOOD_WORKERS`] loops as fast as the
//! answers come back, each alternating a `CreateTransfer` with a fresh
//! idempotency key and a quote that does not exist, and a valid
//! `CreateQuote` it never uses (so its unused quotes climb to its cap), and
//! holds [`FLOOD_STREAMS`] event streams open (twice what one partner may
//! hold). The normal workload is measured once without the flood and once
//! with it, on the same region, and the nodes' resident memory is read
//! before and after.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use paymesh_client::PartnerClient;
use paymesh_harness::admin_calls::reject_name;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;
use tokio::task::JoinHandle;

use super::workload::{decimal, CURRENCY};

/// The flooding partner's id.
pub const FLOODER: &str = "flooder";

/// Concurrent request loops of the flooder.
pub const FLOOD_WORKERS: usize = 64;

/// Event streams the flooder tries to hold open.
pub const FLOOD_STREAMS: usize = 32;

/// What the flood did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FloodReport {
    /// How long it ran, in seconds.
    pub seconds: f64,
    /// Requests sent.
    pub requests: u64,
    /// Answers by kind ("ok", or the gRPC code, or the reject code).
    pub answers: BTreeMap<String, u64>,
    /// Event streams opened, and refused.
    pub streams_open: u64,
    /// Event streams refused.
    pub streams_refused: u64,
}

/// A running flood.
pub struct Flood {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    requests: Arc<AtomicU64>,
    answers: Arc<Mutex<BTreeMap<String, u64>>>,
    streams: Arc<(AtomicU64, AtomicU64)>,
    started: Instant,
}

impl std::fmt::Debug for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flood").field("tasks", &self.tasks.len()).finish_non_exhaustive()
    }
}

fn count(answers: &Mutex<BTreeMap<String, u64>>, kind: String) {
    *answers.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default() += 1;
}

impl Flood {
    /// Start flooding through `client`, quoting payee QR code `qr`.
    pub fn start(client: Arc<PartnerClient>, qr: String) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let answers = Arc::new(Mutex::new(BTreeMap::new()));
        let streams = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let mut tasks = Vec::with_capacity(FLOOD_WORKERS + 1);
        {
            let (client, stop, streams) = (client.clone(), stop.clone(), streams.clone());
            tasks.push(tokio::spawn(async move {
                let mut held = Vec::new();
                for _ in 0..FLOOD_STREAMS {
                    match client.stream_events(0).await {
                        Ok(stream) => {
                            streams.0.fetch_add(1, Ordering::Relaxed);
                            held.push(stream);
                        }
                        Err(_) => {
                            streams.1.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                drop(held);
            }));
        }
        for worker in 0..FLOOD_WORKERS {
            let (client, stop, requests, answers, qr) =
                (client.clone(), stop.clone(), requests.clone(), answers.clone(), qr.clone());
            tasks.push(tokio::spawn(async move {
                let mut sequence = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    sequence += 1;
                    requests.fetch_add(1, Ordering::Relaxed);
                    let kind = if sequence.is_multiple_of(2) {
                        let request = wire::CreateTransferRequest {
                            idempotency_key: format!("flood-{worker}-{sequence}"),
                            quote_id: "bench:q999999999".to_owned(),
                            qr_payload: qr.clone(),
                            payer: Some(wire::PayerDetails {
                                name: "Mallory".into(),
                                account: "acct-0".into(),
                                reference: "flood".into(),
                            }),
                        };
                        match client.create_transfer(request).await {
                            Ok(answer) if answer.reject_code == 0 => "transfer: ok".to_owned(),
                            Ok(answer) => format!("transfer: {}", reject_name(answer.reject_code)),
                            Err(e) => format!("transfer: {:?}", e.status().map(|s| s.code())),
                        }
                    } else {
                        let request = wire::CreateQuoteRequest {
                            qr_payload: qr.clone(),
                            amount: Some(wire::create_quote_request::Amount::SourceAmount(common::Money {
                                amount: decimal(1_000),
                                currency: CURRENCY.to_owned(),
                            })),
                            idempotency_key: String::new(),
                        };
                        match client.create_quote(request).await {
                            Ok(answer) if answer.reject_code == 0 => "quote: ok".to_owned(),
                            Ok(answer) => format!("quote: {}", reject_name(answer.reject_code)),
                            Err(e) => format!("quote: {:?}", e.status().map(|s| s.code())),
                        }
                    };
                    count(&answers, kind);
                }
            }));
        }
        Flood { stop, tasks, requests, answers, streams, started: Instant::now() }
    }

    /// Stop the flood and report what it did.
    pub async fn stop(self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        FloodReport {
            seconds: self.started.elapsed().as_secs_f64(),
            requests: self.requests.load(Ordering::Relaxed),
            answers,
            streams_open: self.streams.0.load(Ordering::Relaxed),
            streams_refused: self.streams.1.load(Ordering::Relaxed),
        }
    }
}
