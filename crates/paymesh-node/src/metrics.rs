//! Prometheus metrics: what a node counts as it works, and what it reads off
//! its Raft group, its state and its links when scraped.
//!
//! Two kinds. Events are counted where they happen, in one process-wide set
//! ([`events`]): gRPC calls by service, method and code with their latency
//! (the [`Measured`] wrapper around each service), partners' calls and
//! business refusals, transfers by corridor and state, the proposer's queue
//! and batch sizes, open event streams. A node is one process, so the
//! process-wide set is the node's (tests that run several nodes in one
//! process add theirs up). Levels are read at scrape time from the node's
//! own handles ([`Sources`]): Raft (role, term, leader, indexes, each
//! follower's lag, the log's fsync latency), snapshots, history's size, the
//! outbox and the breaker per remote region, partners' transfers in flight,
//! corridors' daily use, and the process (memory, CPU, file descriptors).
//!
//! Names and labels follow Prometheus' conventions (base units, `_total`
//! counters, `_seconds` and `_bytes`); every label value comes from a
//! bounded set: the proto's services and methods (an unknown method is
//! `unknown`), gRPC and reject code names, the partners and corridors
//! configured in the region, the configured remote regions, the region's
//! node ids. The list is in docs/OPERATIONS.md, and the alert rules and the
//! dashboard under deploy/monitoring read them.
//!
//! Served as the OpenMetrics text format by `GET /metrics` on the listener
//! `[metrics] listen` names, over plain HTTP (as node_exporter serves): the
//! metrics hold counts, durations and states, never amounts or personal
//! data. The same listener answers an orchestrator's probes: `/healthz`
//! (the process serves) and `/readyz` (its Raft group runs and knows a
//! leader).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use openraft::ServerState;
use paymesh_core::command::OutboxMessage;
use paymesh_core::corridor::CorridorId;
use paymesh_core::id::PartnerId;
use paymesh_core::transfer::CoordinatorState;
use paymesh_core::Outcome;
use paymesh_store::log_store::LogStats;
use paymesh_store::raft_types::Raft;
use paymesh_store::StateMachineStore;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tonic::transport::server::Connected;

use crate::outbox::Links;

/// The most scrapes served at once.
const SCRAPES_AT_ONCE: usize = 8;

/// How long one scrape connection may stay open.
const SCRAPE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A method label: the gRPC service (its last name part) and the method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    service: &'static str,
    method: String,
}

/// A method label and the call's gRPC code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    service: &'static str,
    method: String,
    code: &'static str,
}

/// A partner's call: the partner, the method and the gRPC code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartnerCodeLabels {
    partner: String,
    method: String,
    code: &'static str,
}

/// A partner and a method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartnerMethodLabels {
    partner: String,
    method: String,
}

/// A partner and a reject code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    partner: String,
    code: String,
}

/// A corridor and a transfer's state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CorridorStateLabels {
    corridor: String,
    state: &'static str,
}

/// How many latency buckets there are (besides +Inf).
pub const LATENCY_BUCKETS: usize = 16;

/// The latency buckets' upper bounds in seconds: 0.5 ms to about 16 s,
/// doubling.
pub fn latency_bounds() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_5, 2.0, LATENCY_BUCKETS as u16)
}

/// Builds latency histograms with [`latency_bounds`].
#[derive(Clone, Copy, Debug)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(latency_bounds())
    }
}

/// Every partner call this node answered, with its latency in the buckets
/// of [`latency_bounds`] (the last one +Inf): all partners and methods in
/// one, which the operator console samples for its charts.
#[derive(Debug, Default)]
pub struct CallTally {
    calls: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
}

/// A reading of a [`CallTally`]: totals since the process started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Partner calls answered.
    pub calls: u64,
    /// Those answered with a gRPC code other than OK.
    pub errors: u64,
    /// Calls per latency bucket of [`latency_bounds`], then +Inf.
    pub buckets: [u64; LATENCY_BUCKETS + 1],
}

impl CallTally {
    fn record(&self, ok: bool, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = latency_bounds().position(|bound| seconds <= bound).unwrap_or(LATENCY_BUCKETS);
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The totals now.
    pub fn read(&self) -> CallCounts {
        CallCounts {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

/// What a node counts as it works (see the module's documentation).
#[derive(Debug)]
pub struct Events {
    registry: Registry,
    grpc_requests: Family<CodeLabels, Counter>,
    grpc_duration: Family<MethodLabels, Histogram, LatencyBuckets>,
    partner_requests: Family<PartnerCodeLabels, Counter>,
    partner_duration: Family<PartnerMethodLabels, Histogram, LatencyBuckets>,
    partner_rejections: Family<RejectLabels, Counter>,
    corridor_transfers: Family<CorridorStateLabels, Counter>,
    corridor_duration: Family<CorridorLabel, Histogram, LatencyBuckets>,
    /// Each kind of call's handles in the families above, found once:
    /// a call then costs one lookup here, not four label sets built
    /// (their strings copied) and looked up. As bounded as the families.
    calls: RwLock<HashMap<CallKey, CallHandles>>,
    /// Each corridor's handles in the corridor families, found once.
    corridors: RwLock<HashMap<CorridorId, CorridorHandles>>,
    proposer_queue: Gauge,
    proposer_batch: Histogram,
    subscribers: Gauge,
    /// Partner calls in one tally, for the console.
    pub partner_calls: CallTally,
}

impl Events {
    fn new() -> Events {
        let mut registry = Registry::with_prefix("paymesh");
        let grpc_requests = Family::<CodeLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls served, by service, method and gRPC code",
            grpc_requests.clone(),
        );
        let grpc_duration = Family::new_with_constructor(LatencyBuckets);
        registry.register_with_unit(
            "grpc_request_duration",
            "Time to each gRPC call's response headers (a unary call's whole handling), by service and method",
            Unit::Seconds,
            grpc_duration.clone(),
        );
        let partner_requests = Family::<PartnerCodeLabels, Counter>::default();
        registry.register(
            "partner_requests",
            "Partner API calls by the partner that made them, method and gRPC code",
            partner_requests.clone(),
        );
        let partner_duration = Family::new_with_constructor(LatencyBuckets);
        registry.register_with_unit(
            "partner_request_duration",
            "Partner API call latency, by partner and method",
            Unit::Seconds,
            partner_duration.clone(),
        );
        let partner_rejections = Family::<RejectLabels, Counter>::default();
        registry.register(
            "partner_rejections",
            "Partners' requests refused by the region's rules (the response's reject code, or an aborted \
             transfer's reason), by partner and code",
            partner_rejections.clone(),
        );
        let corridor_transfers = Family::<CorridorStateLabels, Counter>::default();
        registry.register(
            "corridor_transfers",
            "Transfers created on this node's leadership, by corridor and the state they were answered in",
            corridor_transfers.clone(),
        );
        let corridor_duration = Family::new_with_constructor(LatencyBuckets);
        registry.register_with_unit(
            "corridor_transfer_duration",
            "From a transfer's request reaching the leader's pipeline to its answer (one commit, and for a \
             cross-border transfer its reservation), by corridor",
            Unit::Seconds,
            corridor_duration.clone(),
        );
        let proposer_queue = Gauge::default();
        registry.register(
            "proposer_queue_commands",
            "Commands waiting in the leader's proposer",
            proposer_queue.clone(),
        );
        let proposer_batch = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "proposer_batch_commands",
            "Commands per log entry the leader's proposer wrote",
            proposer_batch.clone(),
        );
        let subscribers = Gauge::default();
        registry.register("event_subscribers", "Partner event streams open on this node", subscribers.clone());
        Events {
            registry,
            grpc_requests,
            grpc_duration,
            partner_requests,
            partner_duration,
            partner_rejections,
            corridor_transfers,
            corridor_duration,
            calls: RwLock::default(),
            corridors: RwLock::default(),
            proposer_queue,
            proposer_batch,
            subscribers,
            partner_calls: CallTally::default(),
        }
    }

    /// The proposer holds `commands` now.
    pub fn proposer_queued(&self, commands: usize) {
        self.proposer_queue.set(i64::try_from(commands).unwrap_or(i64::MAX));
    }

    /// The proposer wrote an entry of `commands` commands.
    pub fn proposer_wrote(&self, commands: usize) {
        self.proposer_batch.observe(commands as f64);
    }

    /// An event stream opened; it counts as open until the guard drops.
    pub fn subscribed(&'static self) -> SubscriberGuard {
        self.subscribers.inc();
        SubscriberGuard(self)
    }

    /// `partner`'s request was answered `outcome` by the region, `took`
    /// after it was submitted.
    pub fn answered(&self, partner: &PartnerId, outcome: &Outcome, took: Duration) {
        let reject = |code: &dyn std::fmt::Debug| {
            let labels = RejectLabels { partner: partner.to_string(), code: format!("{code:?}") };
            self.partner_rejections.get_or_create(&labels).inc();
        };
        match outcome {
            Outcome::Rejected(code) => reject(code),
            Outcome::Transfer(view) => {
                self.corridor(&view.corridor, |handles| {
                    handles.duration.observe(took.as_secs_f64());
                    match view.state {
                        CoordinatorState::Committed => &handles.committed,
                        CoordinatorState::Aborted => &handles.aborted,
                        _ => &handles.reserved,
                    }
                    .inc();
                });
                if let (CoordinatorState::Aborted, Some(code)) = (view.state, view.reason) {
                    reject(&code);
                }
            }
            _ => {}
        }
    }

    fn called(
        &self,
        service: &'static str,
        method: String,
        code: tonic::Code,
        took: Duration,
        partner: Option<&PartnerId>,
    ) {
        let code = code_name(code);
        if partner.is_some() {
            self.partner_calls.record(code == "OK", took);
        }
        let key = CallKey { service, method, code, partner: partner.cloned() };
        let seconds = took.as_secs_f64();
        if let Some(handles) = self.calls.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            handles.record(seconds);
            return;
        }
        let handles = self.call_handles(&key);
        handles.record(seconds);
        self.calls.write().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert(handles);
    }

    /// The handles a call labelled `key` updates, from the families.
    fn call_handles(&self, key: &CallKey) -> CallHandles {
        let (service, method, code) = (key.service, key.method.clone(), key.code);
        let partner = key.partner.as_ref().map(|partner| {
            let labels = PartnerCodeLabels { partner: partner.to_string(), method: method.clone(), code };
            let requests = self.partner_requests.get_or_create(&labels).clone();
            let labels = PartnerMethodLabels { partner: partner.to_string(), method: method.clone() };
            (requests, self.partner_duration.get_or_create(&labels).clone())
        });
        CallHandles {
            requests: self.grpc_requests.get_or_create(&CodeLabels { service, method: method.clone(), code }).clone(),
            duration: self.grpc_duration.get_or_create(&MethodLabels { service, method }).clone(),
            partner,
        }
    }

    /// Update `corridor`'s handles with `update`, finding them in the
    /// families the first time.
    fn corridor(&self, corridor: &CorridorId, update: impl FnOnce(&CorridorHandles)) {
        if let Some(handles) = self.corridors.read().unwrap_or_else(|p| p.into_inner()).get(corridor) {
            update(handles);
            return;
        }
        let name = corridor.to_string();
        let state = |state: &'static str| {
            self.corridor_transfers.get_or_create(&CorridorStateLabels { corridor: name.clone(), state }).clone()
        };
        let handles = CorridorHandles {
            duration: self.corridor_duration.get_or_create(&CorridorLabel { corridor: name.clone() }).clone(),
            committed: state("committed"),
            aborted: state("aborted"),
            reserved: state("reserved"),
        };
        update(&handles);
        self.corridors.write().unwrap_or_else(|p| p.into_inner()).entry(corridor.clone()).or_insert(handles);
    }
}

/// What labels a call's metrics: its service, method and code, and the
/// partner that made it.
#[derive(Debug, Hash, PartialEq, Eq)]
struct CallKey {
    service: &'static str,
    method: String,
    code: &'static str,
    partner: Option<PartnerId>,
}

/// A kind of call's metrics (clones share the families' series).
#[derive(Debug)]
struct CallHandles {
    requests: Counter,
    duration: Histogram,
    /// The partner's count and latency, for a partner's call.
    partner: Option<(Counter, Histogram)>,
}

impl CallHandles {
    fn record(&self, seconds: f64) {
        self.requests.inc();
        self.duration.observe(seconds);
        if let Some((requests, duration)) = &self.partner {
            requests.inc();
            duration.observe(seconds);
        }
    }
}

/// A corridor's metrics: its answers' latency and its transfers by the
/// state they were answered in.
#[derive(Debug)]
struct CorridorHandles {
    duration: Histogram,
    committed: Counter,
    aborted: Counter,
    reserved: Counter,
}

/// The process-wide event metrics.
pub fn events() -> &'static Events {
    static EVENTS: LazyLock<Events> = LazyLock::new(Events::new);
    &EVENTS
}

/// An open event stream, counted in `paymesh_event_subscribers` until it
/// drops.
#[derive(Debug)]
pub struct SubscriberGuard(&'static Events);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}

/// The gRPC code's name as the label says it (`OK`, `UNAVAILABLE`, …).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Where the gateway writes the partner it identified for a call, so the
/// call's metrics carry it: put in the request's extensions by
/// [`Measured`], set by [`crate::gateway::Gateway::partner`] once the
/// partner is known to the region (so a label names only configured
/// partners).
#[derive(Clone, Debug, Default)]
pub struct CallerSlot(Arc<OnceLock<PartnerId>>);

impl CallerSlot {
    /// Name the call's partner (the first naming stands).
    pub fn set(&self, partner: &PartnerId) {
        let _ = self.0.set(partner.clone());
    }
}

/// A gRPC service whose every call is counted and timed in [`events`].
#[derive(Clone, Debug)]
pub struct Measured<S> {
    inner: S,
}

impl<S: tonic::server::NamedService> Measured<S> {
    /// Measure `inner`'s calls.
    pub fn new(inner: S) -> Measured<S> {
        Measured { inner }
    }

    /// The service's label: the last part of its full name.
    fn service() -> &'static str {
        S::NAME.rsplit('.').next().unwrap_or(S::NAME)
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Measured<S> {
    const NAME: &'static str = S::NAME;
}

type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Measured<S>
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<B>, Response = HttpResponse> + tonic::server::NamedService,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: tonic::codegen::http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        let slot = CallerSlot::default();
        request.extensions_mut().insert(slot.clone());
        let call = self.inner.call(request);
        Box::pin(async move {
            let answer = call.await;
            if let Ok(response) = &answer {
                // An error is answered in the headers (trailers-only); a
                // success's status comes in the trailers, after the body.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|text| text.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32);
                // A method the service does not have is not a label value.
                let method = if code == tonic::Code::Unimplemented { "unknown".to_owned() } else { method };
                events().called(Self::service(), method, code, started.elapsed(), slot.0.get());
            }
            answer
        })
    }
}

/// What a scrape reads the node's levels from.
#[derive(Clone)]
pub struct Sources {
    /// The node's id.
    pub node_id: u64,
    /// The region's Raft group on this node.
    pub raft: Raft,
    /// The applied state and history.
    pub state_machine: StateMachineStore,
    /// The Raft log's I/O counters.
    pub log_stats: Arc<LogStats>,
    /// The links to the remote regions.
    pub links: Arc<Links>,
    /// The node's data directory (its file system's space is reported).
    pub data_dir: std::path::PathBuf,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

/// A remote region and a kind of outbox message. (`region` is left to
/// the scrape's target labels: the node's own region.)
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    remote_region: String,
    kind: &'static str,
}

/// A remote region.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabel {
    remote_region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabel {
    follower: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartnerLabel {
    partner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CorridorLabel {
    corridor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    node_region: String,
    node_id: String,
    version: &'static str,
}

/// A gauge of integer `value`, registered under `name`.
fn int_gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, gauge);
}

/// A gauge of `value` in `unit`, registered under `name`.
fn unit_gauge(registry: &mut Registry, name: &str, help: &str, unit: Unit, value: f64) {
    let gauge = Gauge::<f64, AtomicU64>::default();
    gauge.set(value);
    registry.register_with_unit(name, help, unit, gauge);
}

/// The levels a scrape reads, in a registry of their own.
fn levels(sources: &Sources) -> Registry {
    let mut registry = Registry::with_prefix("paymesh");
    let info = Family::<InfoLabels, Gauge>::default();
    let applied = sources.state_machine.applied();
    let state = &applied.state;
    info.get_or_create(&InfoLabels {
        node_region: state.region().to_string(),
        node_id: sources.node_id.to_string(),
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    registry.register("node_info", "This node: its region, id and version (always 1)", info);
    let protocol = Gauge::<i64>::default();
    protocol.set(i64::from(state.protocol().number()));
    registry.register("region_protocol", "The protocol the region runs, as this node applied it", protocol);
    let supported = Gauge::<i64>::default();
    supported.set(i64::from(paymesh_core::version::PROTOCOL));
    registry.register("node_protocol_supported", "The newest protocol this node's release supports", supported);
    raft_levels(&mut registry, sources);

    let (snapshot_bytes, snapshot_took) = sources.state_machine.last_snapshot();
    unit_gauge(&mut registry, "snapshot_size", "The last snapshot this node built", Unit::Bytes, snapshot_bytes as f64);
    unit_gauge(
        &mut registry,
        "snapshot_build_duration",
        "How long building the last snapshot took",
        Unit::Seconds,
        snapshot_took.as_secs_f64(),
    );
    let built = Counter::<u64>::default();
    built.inc_by(sources.state_machine.snapshots_built());
    registry.register("snapshots_built", "Snapshots this node built since it started", built);
    let history = sources.state_machine.history();
    unit_gauge(
        &mut registry,
        "history_size",
        "History's files on disk",
        Unit::Bytes,
        history.size_on_disk().unwrap_or(0) as f64,
    );
    int_gauge(&mut registry, "history_last_index", "The last log index history holds", history.last_index());
    // The data directory's file system: the log, checkpoints and history.
    if let (Ok(available), Ok(total)) = (fs2::available_space(&sources.data_dir), fs2::total_space(&sources.data_dir)) {
        unit_gauge(
            &mut registry,
            "data_dir_available",
            "Space left to this node on its data directory's file system",
            Unit::Bytes,
            available as f64,
        );
        unit_gauge(
            &mut registry,
            "data_dir_capacity",
            "The size of the data directory's file system",
            Unit::Bytes,
            total as f64,
        );
    }

    // The outbox and the breaker, per remote region.
    let outbox = Family::<OutboxLabels, Gauge>::default();
    let oldest = Family::<RegionLabel, Gauge<f64, AtomicU64>>::default();
    let breaker = Family::<RegionLabel, Gauge>::default();
    let open_for = Family::<RegionLabel, Gauge<f64, AtomicU64>>::default();
    let calls = Family::<RegionLabel, Gauge>::default();
    let in_flight = Family::<RegionLabel, Gauge>::default();
    let remote_protocol = Family::<RegionLabel, Gauge>::default();
    let now = state.clock();
    for remote in remote_regions(state, &sources.links) {
        let region = remote.region.to_string();
        let label = RegionLabel { remote_region: region.clone() };
        for (kind, count) in remote.outbox {
            outbox
                .get_or_create(&OutboxLabels { remote_region: region.clone(), kind })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        oldest.get_or_create(&label).set(remote.oldest_prepare_age.as_secs_f64());
        breaker.get_or_create(&label).set(i64::from(remote.open_for.is_some()));
        open_for.get_or_create(&label).set(remote.open_for.unwrap_or_default().as_secs_f64());
        calls.get_or_create(&label).set(i64::try_from(remote.calls).unwrap_or(i64::MAX));
        in_flight.get_or_create(&label).set(i64::try_from(remote.messages).unwrap_or(i64::MAX));
        remote_protocol.get_or_create(&label).set(i64::from(remote.protocol));
    }
    registry.register("outbox_messages", "Messages waiting for a remote region, by region and kind", outbox);
    registry.register_with_unit(
        "outbox_oldest_prepare_age",
        "How long the oldest prepare waiting for a region has waited (its transfer aborts at the prepare \
         deadline, 10 s)",
        Unit::Seconds,
        oldest,
    );
    registry.register("breaker_open", "Whether the circuit to a remote region is open (1) or closed (0)", breaker);
    registry.register_with_unit(
        "breaker_open_duration",
        "How long the circuit to a remote region has been open",
        Unit::Seconds,
        open_for,
    );
    registry.register("outbox_calls_in_flight", "Calls to a remote region not finished (leader only)", calls);
    registry.register("outbox_messages_in_flight", "Messages in calls to a remote region (leader only)", in_flight);
    registry.register(
        "remote_region_protocol",
        "The protocol a remote region said it runs in its last message or answer to this node (0: not yet)",
        remote_protocol,
    );

    // Partners and corridors of the region.
    let partners_in_flight = Family::<PartnerLabel, Gauge>::default();
    for partner in state.partners() {
        let usage = state.partner_usage(&partner.config.id);
        partners_in_flight
            .get_or_create(&PartnerLabel { partner: partner.config.id.to_string() })
            .set(i64::from(usage.transfers_in_flight));
    }
    registry.register("partner_transfers_in_flight", "A partner's transfers not yet final", partners_in_flight);
    let daily = Family::<CorridorLabel, Gauge<f64, AtomicU64>>::default();
    let suspended = Family::<CorridorLabel, Gauge>::default();
    for corridor in state.corridors() {
        let label = CorridorLabel { corridor: corridor.id.to_string() };
        daily.get_or_create(&label).set(daily_cap_used(corridor, now));
        suspended
            .get_or_create(&label)
            .set(i64::from(corridor.status == paymesh_core::partner::BusinessStatus::Suspended));
    }
    registry.register("corridor_daily_cap_used_ratio", "The share of a corridor's daily cap used today (UTC)", daily);
    registry.register("corridor_suspended", "Whether a corridor is suspended (1) or active (0)", suspended);
    registry
}

/// A remote region as this node sees it: what waits for it in the
/// outbox, and the link's circuit and calls.
#[derive(Clone, Debug)]
pub struct RemoteRegion {
    /// The region.
    pub region: paymesh_core::id::RegionId,
    /// Messages waiting for it, by kind (`prepare`, `decision`,
    /// `refund_prepare`, `cancel_request`), every kind listed.
    pub outbox: [(&'static str, u64); 4],
    /// How long the oldest prepare waiting for it has waited.
    pub oldest_prepare_age: Duration,
    /// How long its circuit has been open; `None` while closed.
    pub open_for: Option<Duration>,
    /// Calls to it not finished (leader only).
    pub calls: usize,
    /// Messages in those calls.
    pub messages: usize,
    /// The protocol it last said it runs (0: not yet).
    pub protocol: u32,
}

/// Every configured remote region, as of `state`.
pub fn remote_regions(state: &paymesh_core::State, links: &Links) -> Vec<RemoteRegion> {
    let now = state.clock();
    links
        .iter()
        .map(|link| {
            let mut outbox = [("prepare", 0), ("decision", 0), ("refund_prepare", 0), ("cancel_request", 0)];
            let mut oldest_deadline = None;
            for message in state.outbox_for(&link.region) {
                let slot = match message {
                    OutboxMessage::Prepare(prepare) => {
                        let deadline = prepare.deadline;
                        oldest_deadline = Some(oldest_deadline.map_or(deadline, |oldest| deadline.min(oldest)));
                        0
                    }
                    OutboxMessage::Decision { .. } => 1,
                    OutboxMessage::PrepareRefund(_) => 2,
                    OutboxMessage::RequestCancel(_) => 3,
                };
                outbox[slot].1 += 1;
            }
            // A prepare is queued when its transfer is created, its
            // deadline that long after.
            let age_ms = oldest_deadline.map_or(0, |deadline| {
                let queued = deadline.unix_ms().saturating_sub(paymesh_core::limits::TRANSFER_PREPARE_DEADLINE_MS);
                now.unix_ms().saturating_sub(queued)
            });
            let (calls, messages) = link.shipping();
            RemoteRegion {
                region: link.region.clone(),
                outbox,
                oldest_prepare_age: Duration::from_millis(age_ms),
                open_for: link.open_for(),
                calls,
                messages,
                protocol: link.protocol(),
            }
        })
        .collect()
}

/// The share of a corridor's daily cap used on the UTC day of `now`.
pub fn daily_cap_used(corridor: &paymesh_core::corridor::Corridor, now: paymesh_core::Timestamp) -> f64 {
    let used = if corridor.usage.day == now.utc_day() { corridor.usage.used.units() } else { 0 };
    used as f64 / corridor.terms.daily_cap().units().max(1) as f64
}

/// Raft's levels: role, term, leader, indexes, lag and the log's syncs.
fn raft_levels(registry: &mut Registry, sources: &Sources) {
    let metrics = sources.raft.metrics().borrow().clone();
    let roles = Family::<RoleLabel, Gauge>::default();
    for (state, role) in [
        (ServerState::Leader, "leader"),
        (ServerState::Follower, "follower"),
        (ServerState::Candidate, "candidate"),
        (ServerState::Learner, "learner"),
        (ServerState::Shutdown, "shutdown"),
    ] {
        roles.get_or_create(&RoleLabel { role }).set(i64::from(metrics.state == state));
    }
    registry.register("raft_role", "This node's Raft role (1 for the role it has)", roles);
    int_gauge(registry, "raft_term", "The current Raft term", metrics.current_term);
    int_gauge(
        registry,
        "raft_leader_id",
        "The leader this node knows of (0: none)",
        metrics.current_leader.unwrap_or(0),
    );
    let last_log = metrics.last_log_index.unwrap_or(0);
    int_gauge(registry, "raft_last_log_index", "The last index in this node's log", last_log);
    let applied = metrics.last_applied.map_or(0, |l| l.index);
    int_gauge(registry, "raft_applied_index", "The last index this node applied", applied);
    int_gauge(
        registry,
        "raft_snapshot_index",
        "The index of this node's last snapshot",
        metrics.snapshot.map_or(0, |l| l.index),
    );
    int_gauge(
        registry,
        "raft_purged_index",
        "The last index purged from this node's log",
        metrics.purged.map_or(0, |l| l.index),
    );
    // The leader knows what a quorum holds: the commit index, and each
    // follower's lag behind its log.
    let lag = Family::<FollowerLabel, Gauge>::default();
    if let Some(replication) = &metrics.replication {
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        let mut matched: Vec<u64> = voters
            .iter()
            .map(|id| {
                if *id == metrics.id {
                    last_log
                } else {
                    replication.get(id).copied().flatten().map_or(0, |m| m.index)
                }
            })
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let committed = matched.get(voters.len() / 2).copied().unwrap_or(0);
        int_gauge(registry, "raft_commit_index", "The last index a quorum holds (leader only)", committed);
        for (id, matched) in replication.iter().filter(|(id, _)| **id != metrics.id) {
            let behind = last_log.saturating_sub(matched.map_or(0, |m| m.index));
            lag.get_or_create(&FollowerLabel { follower: id.to_string() })
                .set(i64::try_from(behind).unwrap_or(i64::MAX));
        }
        let quorum_age = metrics.millis_since_quorum_ack.map_or(f64::NAN, |ms| ms as f64 / 1000.0);
        unit_gauge(
            registry,
            "raft_quorum_ack_age",
            "How long ago a quorum last acknowledged this leader (leader only)",
            Unit::Seconds,
            quorum_age,
        );
    }
    registry.register("raft_replication_lag_entries", "Entries a follower lacks of the leader's log", lag);
    let stats = &sources.log_stats;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    for (name, help, value) in [
        ("log_appends", "Appends to the Raft log", load(&stats.appends)),
        ("log_entries", "Entries appended to the Raft log", load(&stats.entries)),
        ("log_slow_syncs", "Raft log fdatasync calls over 50 ms", load(&stats.slow_syncs)),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
    registry.register_with_unit(
        "log_sync_duration",
        "Raft log fdatasync latency",
        Unit::Seconds,
        stats.sync_seconds.clone(),
    );
}

/// The process's memory, CPU time, open files and start, from /proc (the
/// names every Prometheus client uses). Linux reports CPU time in ticks of
/// 1/100 s (USER_HZ, fixed by its ABI).
fn process_levels() -> Registry {
    let mut process = Registry::default();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        if let Some(rss) = kib("VmRSS:") {
            unit_gauge(&mut process, "process_resident_memory", "Resident memory", Unit::Bytes, (rss * 1024) as f64);
        }
        if let Some(virt) = kib("VmSize:") {
            unit_gauge(&mut process, "process_virtual_memory", "Virtual memory", Unit::Bytes, (virt * 1024) as f64);
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command (which may hold spaces), from field 3.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let ticks = |at: usize| fields.get(at).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15: 11 and 12 after the command.
        let seconds = (ticks(11) + ticks(12)) as f64 / 100.0;
        let cpu = Counter::<f64, AtomicU64>::default();
        cpu.inc_by(seconds);
        process.register_with_unit("process_cpu", "User and system CPU time", Unit::Seconds, cpu);
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        int_gauge(&mut process, "process_open_fds", "Open file descriptors", entries.count() as u64);
    }
    process
}

/// The whole exposition: the events, then the node's levels, then the
/// process's.
pub fn render(sources: &Sources) -> String {
    let mut text = String::new();
    let levels = levels(sources);
    // Writing to a String cannot fail.
    let _ = encode_registry(&mut text, &events().registry);
    let _ = encode_registry(&mut text, &levels);
    let _ = encode_registry(&mut text, &process_levels());
    let _ = encode_eof(&mut text);
    text
}

/// Serve `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, sources: Sources, shutdown: impl Future<Output = ()> + Send + 'static) {
    let sources = Arc::new(sources);
    tracing::info!(addr = ?listener.local_addr().ok(), "serving Prometheus metrics at /metrics");
    let connections = crate::listener::accepted(listener, SCRAPES_AT_ONCE, "metrics");
    crate::listener::serve_http1(connections, "metrics", SCRAPE_CONNECTION_TIMEOUT, shutdown, |connection| {
        let sources = sources.clone();
        let peer = connection.connect_info().remote_addr().unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        hyper::service::service_fn(move |request| {
            let sources = sources.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(&request, &sources, peer)) }
        })
    })
    .await;
}

/// The answer to one HTTP request of the metrics listener.
fn answer<B>(request: &hyper::Request<B>, sources: &Sources, peer: SocketAddr) -> hyper::Response<Full<Bytes>> {
    let respond = |status: hyper::StatusCode, content_type: &'static str, body: String| {
        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
        response
    };
    match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => respond(
            hyper::StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(sources),
        ),
        // Liveness: the process serves. Readiness: its Raft group runs and
        // knows a leader (so calls it takes reach one); an orchestrator's
        // probes, which cannot present a certificate to the API.
        (&hyper::Method::GET, "/healthz") => respond(hyper::StatusCode::OK, "text/plain", "ok\n".into()),
        (&hyper::Method::GET, "/readyz") => {
            let metrics = sources.raft.metrics().borrow().clone();
            match (&metrics.running_state, metrics.current_leader) {
                (Ok(()), Some(leader)) => {
                    respond(hyper::StatusCode::OK, "text/plain", format!("ready: leader is node {leader}\n"))
                }
                (Ok(()), None) => {
                    respond(hyper::StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: no leader known\n".into())
                }
                (Err(fatal), _) => respond(
                    hyper::StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: the Raft group stopped: {fatal}\n"),
                ),
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz") => {
            respond(hyper::StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into())
        }
        (_, path) => {
            tracing::debug!(%peer, path, "metrics listener: not found");
            respond(hyper::StatusCode::NOT_FOUND, "text/plain", "the metrics are at /metrics\n".into())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use paymesh_core::outcome::RejectCode;
    use tonic::codegen::{http, Service as _};

    use super::*;

    /// A service that answers every call with `status` in the headers, as
    /// a generated server answers an error or an unknown method.
    #[derive(Clone)]
    struct Answering(&'static str);

    impl tonic::server::NamedService for Answering {
        const NAME: &'static str = "paymesh.test.v1.MeteredService";
    }

    impl tonic::codegen::Service<http::Request<()>> for Answering {
        type Response = HttpResponse;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<HttpResponse, std::convert::Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut response = http::Response::new(tonic::body::Body::empty());
            response.headers_mut().insert("grpc-status", http::HeaderValue::from_static(self.0));
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test]
    async fn a_method_the_service_lacks_is_counted_as_unknown_not_by_its_name() {
        let mut unimplemented = Measured::new(Answering("12"));
        for junk in ["Bogus", "Bogus2", "x".repeat(200).as_str()] {
            let request =
                http::Request::builder().uri(format!("/paymesh.test.v1.MeteredService/{junk}")).body(()).unwrap();
            unimplemented.call(request).await.unwrap();
        }
        let mut failing = Measured::new(Answering("14"));
        let request = http::Request::builder().uri("/paymesh.test.v1.MeteredService/Real").body(()).unwrap();
        failing.call(request).await.unwrap();
        let mut text = String::new();
        encode_registry(&mut text, &events().registry).unwrap();
        let ours: Vec<&str> =
            text.lines().filter(|l| l.starts_with("paymesh_grpc_requests_total{service=\"MeteredService\"")).collect();
        assert_eq!(ours.len(), 2, "{ours:?}");
        assert!(
            ours.contains(
                &r#"paymesh_grpc_requests_total{service="MeteredService",method="unknown",code="UNIMPLEMENTED"} 3"#
            ),
            "{ours:?}"
        );
        assert!(
            ours.contains(
                &r#"paymesh_grpc_requests_total{service="MeteredService",method="Real",code="UNAVAILABLE"} 1"#
            ),
            "{ours:?}"
        );
    }

    /// The handles found on a kind's first call count every later call of
    /// that kind in the same series, and other kinds in their own.
    #[test]
    fn calls_and_corridor_answers_count_through_their_kept_handles() {
        let partner = PartnerId::new("metrics-kept-partner").unwrap();
        for _ in 0..3 {
            let took = Duration::from_millis(2);
            events().called("PartnerService", "GetQuote".into(), tonic::Code::Ok, took, Some(&partner));
        }
        events().called("PartnerService", "GetQuote".into(), tonic::Code::NotFound, Duration::ZERO, Some(&partner));
        let corridor = CorridorId::parse("USD:metrics-kept->CNY:metrics-kept").unwrap();
        for _ in 0..2 {
            events().corridor(&corridor, |handles| {
                handles.committed.inc();
            });
        }
        events().corridor(&corridor, |handles| handles.duration.observe(0.001));
        let mut text = String::new();
        encode_registry(&mut text, &events().registry).unwrap();
        for line in [
            r#"paymesh_partner_requests_total{partner="metrics-kept-partner",method="GetQuote",code="OK"} 3"#,
            r#"paymesh_partner_requests_total{partner="metrics-kept-partner",method="GetQuote",code="NOT_FOUND"} 1"#,
            r#"paymesh_partner_request_duration_seconds_count{partner="metrics-kept-partner",method="GetQuote"} 4"#,
            r#"paymesh_corridor_transfers_total{corridor="USD:metrics-kept->CNY:metrics-kept",state="committed"} 2"#,
            r#"paymesh_corridor_transfer_duration_seconds_count{corridor="USD:metrics-kept->CNY:metrics-kept"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn refusals_and_calls_are_counted_under_bounded_label_values() {
        let partner = PartnerId::new("metrics-test-partner").unwrap();
        let took = Duration::from_millis(1);
        events().answered(&partner, &Outcome::Rejected(RejectCode::AmountBelowMinimum), took);
        events().answered(&partner, &Outcome::Rejected(RejectCode::AmountBelowMinimum), took);
        events().called(
            "PartnerService",
            "CreateQuote".into(),
            tonic::Code::Unavailable,
            Duration::from_millis(3),
            Some(&partner),
        );
        let guard = events().subscribed();
        let mut text = String::new();
        encode_registry(&mut text, &events().registry).unwrap();
        assert!(
            text.contains(
                r#"paymesh_partner_rejections_total{partner="metrics-test-partner",code="AmountBelowMinimum"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"paymesh_partner_requests_total{partner="metrics-test-partner",method="CreateQuote",code="UNAVAILABLE"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"paymesh_grpc_request_duration_seconds_bucket{le="0.004",service="PartnerService",method="CreateQuote"} 1"#), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("paymesh_event_subscribers ") && l != "paymesh_event_subscribers 0"),
            "{text}"
        );
        drop(guard);
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
