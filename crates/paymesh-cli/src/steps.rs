//! Where a cross-border payment's time goes: `paymesh demo --steps`.
//!
//! The demo runs an OTLP/gRPC collector of its own on loopback and points
//! every node's trace export at it (the nodes' spans are described in
//! `paymesh_node::telemetry`). For each committed cross-border payment it
//! joins, by transfer id, the payer region's `create_transfer`,
//! `prepare.send` and `prepare.replied` spans and the payee region's
//! `prepare.apply` span with the demo's own clock readings (when the partner
//! sent `CreateTransfer`, when its COMMITTED event arrived), and cuts the
//! latency into consecutive steps that add up to it. All processes share
//! the machine's clock, so the spans of different nodes compare directly.
//!
//! The table gives each step's p50 and p99, and its mean over the slowest
//! 1 % of payments next to its mean over all: the step whose mean grows in
//! the tail is where the tail comes from.
//!
//! Exporting spans costs the nodes some CPU (a few spans per payment), so a
//! run with `--steps` is a little slower than one without.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use tonic::{Request, Response, Status};

/// Transfers the collector keeps spans for, at most; later ones are counted
/// and dropped.
pub const TRANSFERS_MAX: usize = 2_000_000;

/// The largest export request the collector accepts.
const EXPORT_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How long the collector must hear nothing new before the spans count as
/// all in, and the longest it waits for that.
const QUIET: Duration = Duration::from_millis(1_500);
const QUIET_WAIT_MAX: Duration = Duration::from_secs(20);

/// A span's start and end, in nanoseconds since the Unix epoch.
type Interval = (u64, u64);

/// The spans of one transfer that the breakdown uses.
#[derive(Debug, Default)]
struct Spans {
    create: Vec<Interval>,
    send: Vec<Interval>,
    apply: Vec<Interval>,
    replied: Vec<Interval>,
}

#[derive(Debug, Default)]
struct Received {
    transfers: HashMap<String, Spans>,
    spans: u64,
    dropped: u64,
}

/// The demo's OTLP collector.
#[derive(Clone, Debug, Default)]
pub struct Collector {
    received: Arc<Mutex<Received>>,
}

/// The string value of the OTLP attribute `key`, if there is one.
pub fn attribute_text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| match &v.value {
        Some(Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    })
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        for span in spans {
            received.spans += 1;
            let Some(transfer) = attribute_text(&span.attributes, "transfer") else { continue };
            let interval = (span.start_time_unix_nano, span.end_time_unix_nano);
            if received.transfers.len() >= TRANSFERS_MAX && !received.transfers.contains_key(&transfer) {
                received.dropped += 1;
                continue;
            }
            let spans = received.transfers.entry(transfer).or_default();
            match span.name.as_str() {
                "create_transfer" => spans.create.push(interval),
                "prepare.send" => spans.send.push(interval),
                "prepare.apply" => spans.apply.push(interval),
                "prepare.replied" => spans.replied.push(interval),
                _ => {}
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Start a collector on a loopback port; returns it and the endpoint to
    /// give the nodes. It serves until the process ends.
    pub async fn start() -> anyhow::Result<(Collector, String)> {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the span collector")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let service = TraceServiceServer::new(collector.clone()).max_decoding_message_size(EXPORT_BYTES_MAX);
        let server = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("span collector stopped: {e}");
            }
        });
        Ok((collector, endpoint))
    }

    /// The environment that makes a node export its spans here, promptly
    /// and without dropping any under the demo's load.
    pub fn node_env(endpoint: &str) -> Vec<(String, String)> {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "500"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "262144"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn spans(&self) -> u64 {
        self.received.lock().unwrap_or_else(|p| p.into_inner()).spans
    }

    /// Wait until no new span has arrived for a while (the nodes export in
    /// batches), at most [`QUIET_WAIT_MAX`].
    pub async fn settle(&self) {
        let started = Instant::now();
        let mut seen = self.spans();
        let mut quiet_since = Instant::now();
        while started.elapsed() < QUIET_WAIT_MAX && quiet_since.elapsed() < QUIET {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.spans();
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
    }
}

/// The demo's readings of one committed cross-border payment.
#[derive(Clone, Debug)]
pub struct Payment {
    /// Its transfer id.
    pub transfer: String,
    /// When the partner sent `CreateTransfer`.
    pub started: Instant,
    /// When its COMMITTED event arrived.
    pub committed: Instant,
}

/// Converts the demo's `Instant`s to the spans' Unix nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    instant: Instant,
    unix_ns: u64,
}

impl Clock {
    /// Read both clocks now.
    pub fn now() -> Clock {
        let unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Clock { instant: Instant::now(), unix_ns: u64::try_from(unix_ns).unwrap_or(u64::MAX) }
    }

    fn unix_ns(&self, at: Instant) -> u64 {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if at >= self.instant {
            self.unix_ns.saturating_add(nanos(at - self.instant))
        } else {
            self.unix_ns.saturating_sub(nanos(self.instant - at))
        }
    }
}

/// The consecutive steps of a cross-border payment, in order; they add up
/// to the latency the demo reports.
pub const STEPS: [&str; 7] = [
    "request reaches the payer region's leader",
    "reserve committed, prepare picked up",
    "prepare crosses to the payee region",
    "prepare committed in the payee region",
    "reply crosses back",
    "decision committed in the payer region",
    "COMMITTED event reaches the payer",
];

/// The latency of committed cross-border payments, cut into [`STEPS`].
#[derive(Debug)]
pub struct Breakdown {
    /// Payments with one span of each kind.
    pub traced: usize,
    /// Payments with a step's span missing or repeated (a prepare sent
    /// again, a leader change), left out.
    pub incomplete: usize,
    /// Export requests' spans received, and spans dropped at the bound.
    pub spans: (u64, u64),
    /// Per step, in microseconds: p50, p99, mean over all, mean over the
    /// slowest 1 %; the last row is the total.
    pub rows: Vec<(String, [f64; 4])>,
}

/// Cut each payment into steps; `None` for a payment without exactly one
/// span of each protocol step. Of its `create_transfer` spans the first
/// counts: a request sent again is answered from the state.
fn cut(spans: &Spans, payment: &Payment, clock: Clock) -> Option<[i64; 7]> {
    let one = |v: &[Interval]| if v.len() == 1 { Some(v[0]) } else { None };
    let create = spans.create.iter().min().copied()?;
    let (send, apply, replied) = (one(&spans.send)?, one(&spans.apply)?, one(&spans.replied)?);
    let points = [
        clock.unix_ns(payment.started),
        create.0,
        send.0,
        apply.0,
        apply.1,
        send.1,
        replied.1,
        clock.unix_ns(payment.committed),
    ];
    let micros = |later: u64, earlier: u64| (i128::from(later) - i128::from(earlier)) / 1_000;
    let mut steps = [0i64; 7];
    for (step, pair) in steps.iter_mut().zip(points.windows(2)) {
        *step = i64::try_from(micros(pair[1], pair[0])).unwrap_or(i64::MAX);
    }
    Some(steps)
}

impl Breakdown {
    /// The breakdown of `payments` from what `collector` received.
    pub fn of(collector: &Collector, payments: &[Payment], clock: Clock) -> anyhow::Result<Breakdown> {
        let received = collector.received.lock().unwrap_or_else(|p| p.into_inner());
        let mut cuts = Vec::new();
        let mut incomplete = 0;
        for payment in payments {
            match received.transfers.get(&payment.transfer).and_then(|spans| cut(spans, payment, clock)) {
                Some(steps) => cuts.push(steps),
                None => incomplete += 1,
            }
        }
        let spans = (received.spans, received.dropped);
        drop(received);
        let total = |steps: &[i64; 7]| steps.iter().sum::<i64>();
        cuts.sort_by_key(total);
        let tail_from = cuts.len() - cuts.len().div_ceil(100);
        let mut rows = Vec::new();
        for index in 0..=STEPS.len() {
            let value = |steps: &[i64; 7]| if index < STEPS.len() { steps[index] } else { total(steps) };
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")?;
            for steps in &cuts {
                histogram.record(u64::try_from(value(steps)).unwrap_or(0).max(1)).context("recording a step")?;
            }
            let mean = |of: &[[i64; 7]]| {
                if of.is_empty() {
                    0.0
                } else {
                    of.iter().map(|s| value(s) as f64).sum::<f64>() / of.len() as f64
                }
            };
            let name = STEPS.get(index).map_or("total", |s| s).to_owned();
            let p = |q| if histogram.is_empty() { 0.0 } else { histogram.value_at_quantile(q) as f64 };
            rows.push((name, [p(0.5), p(0.99), mean(&cuts), mean(&cuts[tail_from..])]));
        }
        Ok(Breakdown { traced: cuts.len(), incomplete, spans, rows })
    }
}

impl fmt::Display for Breakdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "where a committed cross-border payment's time goes ({} traced, {} left out: a step's span missing or \
             repeated; {} spans received, {} dropped):",
            self.traced, self.incomplete, self.spans.0, self.spans.1
        )?;
        writeln!(f, "  {:<44} {:>9} {:>9} {:>10} {:>16}", "step", "p50 ms", "p99 ms", "mean ms", "slowest 1% ms")?;
        for (name, [p50, p99, mean, tail]) in &self.rows {
            let ms = |us: &f64| us / 1000.0;
            writeln!(f, "  {name:<44} {:>9.1} {:>9.1} {:>10.1} {:>16.1}", ms(p50), ms(p99), ms(mean), ms(tail))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_add_up_to_the_latency_and_the_tail_names_its_step() {
        let clock = Clock::now();
        let base = clock.unix_ns;
        let ms = |n: u64| n * 1_000_000;
        let collector = Collector::default();
        let mut payments = Vec::new();
        {
            let mut received = collector.received.lock().unwrap();
            for n in 0..200u64 {
                // The reply's trip is 25 ms, except in two payments where it is 95 ms.
                let back = if n % 100 == 7 { 95 } else { 25 };
                let transfer = format!("t{n}");
                let spans = received.transfers.entry(transfer.clone()).or_default();
                spans.create.push((base + ms(1), base + ms(12)));
                spans.send.push((base + ms(11), base + ms(11 + 25 + 10 + back)));
                spans.apply.push((base + ms(36), base + ms(46)));
                let replied_end = base + ms(46 + back + 10);
                spans.replied.push((base + ms(46 + back), replied_end));
                payments.push(Payment {
                    transfer,
                    started: clock.instant,
                    committed: clock.instant + Duration::from_nanos(replied_end - base + ms(2)),
                });
            }
            // A payment whose prepare was sent twice is left out; one whose
            // request was sent twice is not.
            received.transfers.entry("t0".into()).or_default().send.push((base, base + ms(1)));
            received.transfers.entry("t1".into()).or_default().create.push((base + ms(20), base + ms(21)));
        }
        let breakdown = Breakdown::of(&collector, &payments, clock).unwrap();
        assert_eq!((breakdown.traced, breakdown.incomplete), (199, 1));
        let row = |name: &str| breakdown.rows.iter().find(|(n, _)| n == name).unwrap().1;
        // Percentiles come from a histogram with three significant digits.
        let close = |got: f64, want: f64| (got - want).abs() <= want / 1000.0;
        assert!(close(row("request reaches the payer region's leader")[0], 1000.0));
        assert!(close(row("reply crosses back")[0], 25_000.0));
        assert!(row("reply crosses back")[3] > 90_000.0, "the slow payments are the slowest 1 %");
        assert!(close(row("prepare committed in the payee region")[3], 10_000.0), "no tail in the payee's commit");
        assert!(close(row("total")[0], 83_000.0), "1 + 10 + 25 + 10 + 25 + 10 + 2 ms");
        assert!(breakdown.to_string().contains("199 traced"));
    }
}
