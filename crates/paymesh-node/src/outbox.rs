//! The coordinator's side of the two-phase protocol as the node runs it:
//! the links to the other regions, and the driver of each region's
//! shipper.
//!
//! What to send, when, and what the answers and failures mean is the
//! shipper engine's (`crate::engine::shipper`, which the simulation runs
//! too). [`ship`] drives it while this node leads: it polls the engine when
//! entries are applied, a call finishes, or the engine's wake time comes;
//! makes the calls it returns over the region's gRPC client (a span per
//! item, continuing its transfer's trace); proposes the commands its
//! answers bring; and mirrors its breaker into the [`Link`], where the
//! gateway reads it to refuse new quotes and transfers to a region that
//! does not answer.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::join_all;
use paymesh_client::{Credentials, Region, RetryPolicy};
use paymesh_core::command::{CommandBody, Decision, Preparing};
use paymesh_core::id::{RegionId, TransferId};
use paymesh_proto::interregion::v1 as wire;
use paymesh_proto::interregion::v1::inter_region_service_client::InterRegionServiceClient;
use paymesh_store::AppliedState;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Status;

use crate::config::{NodeConfig, RemoteRegionConfig};
use crate::engine;
use crate::engine::shipper::{Answer, Call, CallId, Outgoing, Shipper, BREAKER_SILENCE, CALL_TIMEOUT, PROBE_DELAY};
use crate::gateway::Gateway;
use crate::interregion::{decision_out, prepare_out, INTERREGION_MESSAGE_BYTES_MAX};
use crate::telemetry;
use crate::tls::TlsMaterial;
use tracing::Instrument;

/// The link to one remote region: its client and its breaker.
#[derive(Debug)]
pub struct Link {
    /// The remote region.
    pub region: RegionId,
    /// Its endpoints, as configured.
    endpoints: Vec<String>,
    /// New work toward it is refused while it drains
    /// (`remote_regions.draining`).
    draining: std::sync::atomic::AtomicBool,
    /// Its CA file (`remote_regions.ca_cert`), when configured (always, with
    /// TLS).
    ca_file: Option<PathBuf>,
    /// Its CA, read from `ca_file` at start and again on SIGHUP.
    ca: RwLock<Option<Arc<RemoteCa>>>,
    /// What this node presents and trusts when it dials the region: its own
    /// certificate and the region's CA (the client follows it).
    credentials: tokio::sync::watch::Sender<Credentials>,
    pub(crate) client: Region,
    /// Since when the region's breaker is open, if it is: the shipper's,
    /// mirrored by its driver (closed while this node does not lead).
    open_since: Mutex<Option<std::time::Instant>>,
    /// The shipper's calls not finished and the messages in them, mirrored
    /// by its driver (zeros while this node does not lead), for metrics.
    shipping: (AtomicUsize, AtomicUsize),
    /// The protocol the region last said it runs, in a message or an
    /// answer (0 until it has; a release before protocols says 0 too).
    protocol: std::sync::atomic::AtomicU32,
}

/// A remote region's CA certificate, as its file was last read.
#[derive(Debug)]
pub struct RemoteCa {
    /// The PEM file's contents.
    pub pem: Vec<u8>,
    /// The public keys of its CA certificates (several during a rollover):
    /// one of them must have signed a certificate of a node of that region.
    pub keys: Vec<crate::interregion::CaKey>,
}

impl RemoteCa {
    /// Read and check a remote region's CA file: it must hold certificates.
    pub fn load(file: &std::path::Path) -> Result<RemoteCa, String> {
        let failed = |e: String| format!("remote_regions.ca_cert {}: {e}", file.display());
        let pem = std::fs::read(file).map_err(|e| failed(e.to_string()))?;
        let keys = crate::interregion::ca_keys(&pem).map_err(failed)?;
        Ok(RemoteCa { pem, keys })
    }
}

impl Link {
    fn new(
        region: RegionId,
        endpoints: Vec<String>,
        credentials: Credentials,
        ca_file: Option<PathBuf>,
        ca: Option<RemoteCa>,
    ) -> Link {
        let attempts = u32::try_from(endpoints.len()).unwrap_or(u32::MAX).saturating_mul(2);
        let policy = RetryPolicy { attempts, deadline: CALL_TIMEOUT };
        let (credentials, following) = tokio::sync::watch::channel(credentials);
        // A WAN round trip, a retransmission included, may come near the
        // SDK's one-second keepalive timeout: a link is closed for silence
        // only after a whole call's time (the breaker's silence rule has
        // opened it long before). Connecting takes a TLS handshake's round
        // trips over the WAN, so it too may take a whole call's time (with
        // the SDK's 2 s, a link of 1 s each way could never connect: the
        // cross-border refund test's slow link caught it). So a call on a
        // connection to a node that died is not ended by the keepalive in
        // time; instead, once it has waited the breaker's silence, the same
        // call goes to another node of the region beside it (receivers are
        // idempotent by transfer and phase), and a slow call still answers.
        // (Without it, a leader's kill held its region's corridors from
        // abroad for the whole call timeout: chaos/README.md.)
        let client = Region::live(endpoints.clone(), following, policy)
            .with_call_timeout(CALL_TIMEOUT)
            .with_connect_timeout(CALL_TIMEOUT)
            .with_keepalive(BREAKER_SILENCE, CALL_TIMEOUT)
            .with_hedge(BREAKER_SILENCE);
        Link {
            region,
            endpoints,
            draining: std::sync::atomic::AtomicBool::new(false),
            ca_file,
            ca: RwLock::new(ca.map(Arc::new)),
            credentials,
            client,
            open_since: Mutex::default(),
            shipping: (AtomicUsize::new(0), AtomicUsize::new(0)),
            protocol: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The link `remote` configures for a node of `config`, presenting
    /// `tls` (or naming itself, in plaintext).
    fn configured(config: &NodeConfig, remote: &RemoteRegionConfig, tls: Option<&TlsMaterial>) -> Result<Link, String> {
        let ca = remote.ca_cert.as_deref().map(RemoteCa::load).transpose()?;
        let credentials = match (tls, &ca) {
            (Some(material), Some(ca)) => material.credentials_trusting(ca.pem.clone()),
            (Some(_), None) => return Err(format!("remote region {}: ca_cert is required", remote.region)),
            (None, _) => Credentials::Plaintext { identity: format!("node:{}:{}", config.region, config.node_id) },
        };
        let link = Link::new(remote.region.clone(), remote.endpoints.clone(), credentials, remote.ca_cert.clone(), ca);
        link.draining.store(remote.draining, Ordering::Relaxed);
        Ok(link)
    }

    /// Whether new work toward the region is refused while it drains.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The region's CA in force.
    pub fn ca(&self) -> Option<Arc<RemoteCa>> {
        self.ca.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What this node presents and trusts when it next dials the region.
    pub fn credentials(&self) -> Credentials {
        self.credentials.borrow().clone()
    }

    /// The region's CA file read again, if it has one.
    pub fn read_ca(&self) -> Result<Option<RemoteCa>, String> {
        self.ca_file.as_deref().map(RemoteCa::load).transpose()
    }

    /// Use `ca` (read by [`Link::read_ca`]) to check the region's callers, and
    /// `tls` with it to dial the region: new connections present `tls`'s
    /// certificate and trust `ca`.
    pub fn install(&self, tls: &TlsMaterial, ca: Option<RemoteCa>) {
        if let Some(ca) = &ca {
            self.credentials.send_replace(tls.credentials_trusting(ca.pem.clone()));
        }
        *self.ca.write().unwrap_or_else(|p| p.into_inner()) = ca.map(Arc::new);
    }

    fn open_since(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        self.open_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The calls to the region not finished and the messages in them.
    pub fn shipping(&self) -> (usize, usize) {
        (self.shipping.0.load(Ordering::Relaxed), self.shipping.1.load(Ordering::Relaxed))
    }

    fn record_shipping(&self, calls: usize, messages: usize) {
        self.shipping.0.store(calls, Ordering::Relaxed);
        self.shipping.1.store(messages, Ordering::Relaxed);
    }

    /// The protocol the region last said it runs (0 until it has).
    pub fn protocol(&self) -> u32 {
        self.protocol.load(Ordering::Relaxed)
    }

    /// Note the protocol the region says it runs, in a message or an
    /// answer; logged when it changes (the region finalized an upgrade).
    pub fn note_protocol(&self, protocol: u32) {
        let before = self.protocol.swap(protocol, Ordering::Relaxed);
        if before != protocol && before != 0 {
            tracing::info!(region = %self.region, from = before, to = protocol, "the region runs another protocol");
        }
    }

    /// How long the breaker has been open, if it is.
    pub fn open_for(&self) -> Option<Duration> {
        self.open_since().map(|since| since.elapsed())
    }

    /// A new shipper starts (this node leads now) with its breaker closed;
    /// one left open by an earlier leadership of this node is forgotten.
    fn reset_breaker(&self) {
        if self.open_since().take().is_some() {
            tracing::info!(region = %self.region, "a new leadership ships with the circuit closed until calls fail again");
        }
    }

    /// Take the shipper's breaker (`open_since`), and say so when it opens
    /// (`cause`: the failure that opened it) or closes.
    fn mirror(&self, open_since: Option<std::time::Instant>, cause: Option<&Status>) {
        let mut held = self.open_since();
        match (*held, open_since) {
            (None, Some(_)) => match cause {
                Some(status) => {
                    let error = telemetry::bounded_text(status.message(), 512);
                    tracing::warn!(region = %self.region, code = ?status.code(), error,
                        "region unreachable: circuit open, new transfers to it are refused");
                }
                None => tracing::warn!(region = %self.region, silence = ?BREAKER_SILENCE,
                    "region unreachable: a call waited with nothing heard from it; circuit open, new transfers to it \
                     are refused"),
            },
            (Some(since), None) => {
                tracing::info!(region = %self.region, open_for = ?since.elapsed(), "region reachable again: circuit closed");
            }
            _ => {}
        }
        *held = open_since;
    }
}

/// The links to every configured remote region: read at start and again on
/// SIGHUP ([`Links::update`]).
#[derive(Debug)]
pub struct Links {
    links: RwLock<BTreeMap<RegionId, Arc<Link>>>,
    /// Counts the changes to which links exist (one added, replaced or
    /// removed): the leader's shippers follow it.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Links {
    fn default() -> Links {
        Links { links: RwLock::default(), changes: tokio::sync::watch::Sender::new(0) }
    }
}

/// What [`Links::update`] changed, in words for the log.
pub type LinkChanges = Vec<String>;

impl Links {
    /// The links `config` describes; this node presents `tls` (or, in
    /// plaintext, names itself) and trusts each remote region's own CA.
    pub fn from_config(config: &NodeConfig, tls: Option<&TlsMaterial>) -> Result<Links, String> {
        let mut links = BTreeMap::new();
        for remote in &config.remote_regions {
            links.insert(remote.region.clone(), Arc::new(Link::configured(config, remote, tls)?));
        }
        Ok(Links { links: RwLock::new(links), ..Links::default() })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<RegionId, Arc<Link>>> {
        self.links.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every link, in region order, as they are now.
    pub fn iter(&self) -> impl Iterator<Item = Arc<Link>> {
        self.read().values().cloned().collect::<Vec<_>>().into_iter()
    }

    /// The link to `region`, if it is a configured remote region.
    pub fn get(&self, region: &RegionId) -> Option<Arc<Link>> {
        self.read().get(region).cloned()
    }

    /// Told of every change to which links exist.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Take the remote regions of `config` (read again on SIGHUP): a
    /// region new to the list gets a link, one whose endpoints or CA file
    /// changed a new link, `draining` is set or cleared, and a region no
    /// longer listed loses its link, unless `in_flight` counts transfers
    /// still in flight with it: then nothing changes and the error says
    /// to drain it first. Every new link's CA file is read before anything
    /// changes. What changed, in words.
    pub fn update(
        &self,
        config: &NodeConfig,
        tls: Option<&TlsMaterial>,
        in_flight: impl Fn(&RegionId) -> usize,
    ) -> Result<LinkChanges, String> {
        let current = self.read().clone();
        let listed: BTreeMap<&RegionId, &RemoteRegionConfig> =
            config.remote_regions.iter().map(|remote| (&remote.region, remote)).collect();
        let mut said = Vec::new();
        for region in current.keys().filter(|region| !listed.contains_key(region)) {
            let left = in_flight(region);
            if left > 0 {
                return Err(format!(
                    "region {region} is no longer listed but {left} cross-border messages or transfers are in flight \
                     with it: list it again with draining = true, and remove it once none is left"
                ));
            }
            said.push(format!("region {region} removed"));
        }
        let mut next = BTreeMap::new();
        let mut structural = said.len();
        for (region, remote) in listed {
            match current.get(region) {
                Some(link) if link.endpoints == remote.endpoints && link.ca_file == remote.ca_cert => {
                    if link.draining.swap(remote.draining, Ordering::Relaxed) != remote.draining {
                        said.push(if remote.draining {
                            format!("region {region} draining: new transfers to it are refused")
                        } else {
                            format!("region {region} no longer draining")
                        });
                    }
                    next.insert(region.clone(), link.clone());
                }
                existing => {
                    let link = Link::configured(config, remote, tls)?;
                    said.push(match existing {
                        Some(_) => format!("region {region}: its endpoints or CA file changed, linked anew"),
                        None => format!("region {region} added: {} endpoints", remote.endpoints.len()),
                    });
                    structural += 1;
                    next.insert(region.clone(), Arc::new(link));
                }
            }
        }
        *self.links.write().unwrap_or_else(|p| p.into_inner()) = next;
        if structural > 0 {
            self.changes.send_modify(|changes| *changes += 1);
        }
        Ok(said)
    }

    /// Every link's CA file read again (a link without one reads as `None`):
    /// all of them, or the first error.
    pub fn read_cas(&self) -> Result<Vec<Option<RemoteCa>>, String> {
        self.iter().map(|link| link.read_ca()).collect()
    }

    /// The remote regions' CA certificates in force, one PEM bundle: the
    /// inter-region listener trusts it.
    pub fn ca_bundle(&self) -> Vec<u8> {
        let cas: Vec<Arc<RemoteCa>> = self.iter().filter_map(|link| link.ca()).collect();
        ca_bundle(cas.iter().map(|ca| &**ca))
    }

    /// Install CAs read by [`Links::read_cas`] (in the same order), with
    /// `tls` to dial: see [`Link::install`].
    pub fn install(&self, tls: &TlsMaterial, cas: Vec<Option<RemoteCa>>) {
        for (link, ca) in self.iter().zip(cas) {
            link.install(tls, ca);
        }
    }

    /// Refuse new work for `region` while its breaker is open, or when it is
    /// not a configured remote region.
    pub fn check(&self, region: &RegionId) -> Result<(), Status> {
        let Some(link) = self.get(region) else {
            return Err(Status::failed_precondition(format!(
                "RegionUnreachable: region {region} is not linked to this region (no remote_regions entry)"
            )));
        };
        if link.draining() {
            return Err(Status::failed_precondition(format!(
                "RegionDraining: region {region} is being removed from this region's mesh; new transfers to it are \
                 refused (transfers in flight finish)"
            )));
        }
        match link.open_for() {
            None => Ok(()),
            Some(open_for) => Err(region_unreachable(format!(
                "RegionUnreachable: region {region} has not answered for {:.1} s; new transfers to it are refused \
                 until it does (transfers in flight finish when it returns)",
                open_for.as_secs_f64()
            ))),
        }
    }
}

/// A refusal because a region is known unreachable: UNAVAILABLE (the
/// condition passes), marked `paymesh-refused` so clients take it as the
/// answer it is (the request had no effect) instead of retrying it at once
/// on the other nodes ([`paymesh_client::REFUSED`]).
pub fn region_unreachable(message: String) -> Status {
    let mut status = Status::unavailable(message);
    status
        .metadata_mut()
        .insert(paymesh_client::REFUSED, tonic::metadata::MetadataValue::from_static("region-unreachable"));
    status
}

/// One PEM bundle of `cas`' certificates.
pub fn ca_bundle<'a>(cas: impl IntoIterator<Item = &'a RemoteCa>) -> Vec<u8> {
    let mut bundle = Vec::new();
    for ca in cas {
        bundle.extend_from_slice(&ca.pem);
        bundle.push(b'\n');
    }
    bundle
}

/// Zeroes a link's shipping counters when its driver ends.
struct ShippingGuard(Arc<Link>);

impl Drop for ShippingGuard {
    fn drop(&mut self) {
        self.0.record_shipping(0, 0);
    }
}

/// How a call's task ended, for the driver's loop to tell the shipper.
enum Done {
    /// Prepare call `id` was answered, or failed.
    Prepares { id: CallId, answer: Result<Vec<wire::PrepareReply>, Status> },
    /// Decision call `id` was answered, or failed.
    Decisions { id: CallId, answer: Result<Vec<wire::Ack>, Status> },
    /// Probe `id` found the region answering, or not.
    Probe { id: CallId, answer: Result<(), Status> },
    /// `commands` proposed for call `id` were applied or refused.
    Recorded { id: CallId, commands: usize },
}

/// Ship the outbox to `link`'s region while this node leads, driving a
/// shipper engine (see the module documentation); the task is aborted when
/// leadership is lost.
pub async fn ship(gateway: Gateway, link: Arc<Link>) {
    let epoch = Instant::now();
    let clock = move || epoch.elapsed();
    let mut shipper = Shipper::new(link.region.clone(), rand::random());
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut applied = gateway.state_machine.watch_applied();
    let mut last_id: CallId = 0;
    link.reset_breaker();
    // Aborted when leadership is lost: nothing is in flight from here then.
    let _shipping = ShippingGuard(link.clone());
    // A restored region agrees with the other on what happened before it
    // sends it anything (a no-op otherwise).
    crate::reconcile::run(&gateway, &link).await;
    tracing::info!(region = %link.region, "shipping the outbox");
    // The loop wakes when the outbox may have changed (entries applied), a
    // call's task finished, or the shipper's wake time came; each time it
    // polls the shipper again.
    loop {
        let now = clock();
        let calls = {
            let applied = gateway.state_machine.applied();
            shipper.poll(now, applied.state.outbox_for(&link.region), || {
                last_id += 1;
                last_id
            })
        };
        for Outgoing { id, call } in calls {
            match call {
                Call::Prepares(items) => tasks.spawn(send_prepares(gateway.clone(), link.clone(), id, items)),
                Call::Decisions(items) => tasks.spawn(send_decisions(gateway.clone(), link.clone(), id, items)),
                Call::Probe => tasks.spawn(probe(link.clone(), id)),
            };
        }
        link.record_shipping(shipper.unfinished(), shipper.in_flight());
        // Polling may open the breaker: a call waiting with nothing heard.
        link.mirror(shipper.open_since().map(|at| (epoch + at).into_std()), None);
        let wake = epoch + shipper.next_wake(now);
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(joined) = tasks.join_next() => match joined {
                Ok(done) => {
                    let cause = take(&gateway, &link, &mut shipper, &mut tasks, clock(), done);
                    let open_since = shipper.open_since().map(|at| (epoch + at).into_std());
                    link.mirror(open_since, cause.as_ref());
                }
                Err(join) => tracing::error!(%join, "outbox call task failed"),
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Tell `shipper` how a call ended and carry out what it answers: the
/// commands to propose (recorded by a task of their own). Returns the
/// call's failure, if it failed.
fn take(
    gateway: &Gateway,
    link: &Link,
    shipper: &mut Shipper,
    tasks: &mut JoinSet<Done>,
    now: engine::Time,
    done: Done,
) -> Option<Status> {
    let (id, answer) = match done {
        Done::Recorded { id, commands } => {
            for _ in 0..commands {
                shipper.recorded(id);
            }
            return None;
        }
        Done::Probe { id, answer } => {
            shipper.probed(id, now, answer.is_ok());
            return answer.err();
        }
        Done::Prepares { id, answer: Ok(replies) } => (id, shipper.prepares_answered(id, now, &replies)),
        Done::Decisions { id, answer: Ok(acks) } => (id, shipper.decisions_answered(id, now, &acks)),
        Done::Prepares { id, answer: Err(status) } | Done::Decisions { id, answer: Err(status) } => {
            tracing::debug!(region = %link.region, code = ?status.code(), error = %telemetry::bounded_text(status.message(), 512), "call failed");
            if let Some(failed) = shipper.failed(id, now) {
                record(gateway, tasks, id, failed.proposals);
            }
            return Some(status);
        }
    };
    match answer {
        Answer::Stale => None,
        Answer::Malformed { sent, got } => {
            let status = Status::internal(format!("{got} answers to a call of {sent} items"));
            tracing::debug!(region = %link.region, error = %status.message(), "call failed");
            Some(status)
        }
        Answer::Taken { proposals, violations } => {
            for (transfer, decision, _) in violations {
                tracing::error!(region = %link.region, %transfer, ?decision,
                    "the remote region calls this decision a protocol violation; operators must investigate");
            }
            record(gateway, tasks, id, proposals);
            None
        }
    }
}

/// Propose `proposals` for call `id`, in a task that reports when they are
/// applied or refused.
fn record(gateway: &Gateway, tasks: &mut JoinSet<Done>, id: CallId, proposals: Vec<CommandBody>) {
    if proposals.is_empty() {
        return;
    }
    let applied = gateway.state_machine.applied();
    let spanned: Vec<(CommandBody, tracing::Span)> = proposals
        .into_iter()
        .map(|body| {
            let span = match &body {
                CommandBody::PrepareReplied { transfer, reply } => {
                    let span = tracing::info_span!("prepare.replied", transfer = %transfer, reply = ?reply);
                    continue_trace(gateway, &applied, &span, transfer);
                    span
                }
                _ => tracing::Span::none(),
            };
            (body, span)
        })
        .collect();
    let gateway = gateway.clone();
    tasks.spawn(async move {
        let commands = spanned.len();
        let outcomes = join_all(spanned.into_iter().map(|(body, span)| gateway.operate(body).instrument(span))).await;
        if let Some(status) = outcomes.into_iter().find_map(Result::err) {
            // Recording the answers failed (leadership lost, most likely);
            // the call itself succeeded, so the link is fine.
            tracing::debug!(code = ?status.code(), "recording answers failed");
        }
        Done::Recorded { id, commands }
    });
}

/// An inter-region client over `channel`, with the protocol's message size.
pub(crate) fn client(channel: paymesh_client::NodeChannel) -> InterRegionServiceClient<paymesh_client::NodeChannel> {
    InterRegionServiceClient::new(channel)
        .max_decoding_message_size(INTERREGION_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(INTERREGION_MESSAGE_BYTES_MAX)
}

fn gave_up(error: paymesh_client::ClientError) -> Status {
    error.status().cloned().unwrap_or_else(|| Status::unavailable(error.to_string()))
}

async fn send_prepares(gateway: Gateway, link: Arc<Link>, id: CallId, items: Vec<Preparing>) -> Done {
    // A span per item, a child of its transfer's trace, open until the call returns.
    let spans = step_spans(
        &gateway,
        items.iter().map(|m| m.id()),
        |transfer| tracing::info_span!("prepare.send", transfer = %transfer, to = %link.region),
    );
    let batch = wire::PrepareBatch {
        from_region: gateway.region.to_string(),
        items: items
            .iter()
            .zip(&spans)
            .map(|(m, span)| prepare_out(m, &link.region, telemetry::traceparent(span)))
            .collect(),
        protocol: gateway.state_machine.protocol().number(),
    };
    let answer = link
        .client
        .call(None, |channel| {
            let batch = batch.clone();
            async move { client(channel).prepare(batch).await.map(|r| r.into_inner()) }
        })
        .await;
    let answer = answer.map(|replies| {
        link.note_protocol(replies.protocol);
        replies.replies
    });
    Done::Prepares { id, answer: answer.map_err(gave_up) }
}

async fn send_decisions(
    gateway: Gateway,
    link: Arc<Link>,
    id: CallId,
    items: Vec<(TransferId, Decision, u64)>,
) -> Done {
    let spans = step_spans(
        &gateway,
        items.iter().map(|(t, _, _)| t),
        |transfer| tracing::info_span!("decide.send", transfer = %transfer, to = %link.region),
    );
    let batch = wire::DecisionBatch {
        from_region: gateway.region.to_string(),
        items: items
            .iter()
            .zip(&spans)
            .map(|((transfer, decision, window), span)| wire::DecisionItem {
                transfer_id: transfer.to_string(),
                decision: decision_out(*decision),
                traceparent: telemetry::traceparent(span),
                window: *window,
            })
            .collect(),
        protocol: gateway.state_machine.protocol().number(),
    };
    let answer = link
        .client
        .call(None, |channel| {
            let batch = batch.clone();
            async move { client(channel).decide(batch).await.map(|r| r.into_inner()) }
        })
        .await;
    let answer = answer.map(|acks| {
        link.note_protocol(acks.protocol);
        acks.acks
    });
    Done::Decisions { id, answer: answer.map_err(gave_up) }
}

/// A span per transfer for one protocol step, each continuing its
/// transfer's trace (when this leader remembers it).
fn step_spans<'a>(
    gateway: &Gateway,
    transfers: impl Iterator<Item = &'a TransferId>,
    span_of: impl Fn(&TransferId) -> tracing::Span,
) -> Vec<tracing::Span> {
    let applied = gateway.state_machine.applied();
    transfers
        .map(|transfer| {
            let span = span_of(transfer);
            continue_trace(gateway, &applied, &span, transfer);
            span
        })
        .collect()
}

/// Make `span` a child of `transfer`'s trace, when this leader remembers it.
fn continue_trace(gateway: &Gateway, applied: &AppliedState, span: &tracing::Span, transfer: &TransferId) {
    let parent = gateway.traces.of(&applied.state, gateway.state_machine.history(), transfer);
    telemetry::continue_from(span, &parent);
}

/// With the breaker open and nothing to send: is the region back?
async fn probe(link: Arc<Link>, id: CallId) -> Done {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    tokio::time::sleep(PROBE_DELAY).await;
    let answer = link
        .client
        .call(None, |channel| async move {
            HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.map(|_| ())
        })
        .await
        .map_err(gave_up);
    Done::Probe { id, answer }
}
