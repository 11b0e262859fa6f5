//! The coordinator's side of the two-phase protocol: the links to the other
//! regions, their circuit breakers, and the shipper that empties the
//! replicated outbox.
//!
//! The outbox lives in the replicated state: the entry that reserves a
//! payer's funds also holds the Prepare to send, and the entry that records
//! the payee region's answer also holds the decision. Only the leader ships.
//! For each remote region it sends the outbox's messages in batches of up to
//! [`BATCH_ITEMS_MAX`] items, at most [`RPCS_IN_FLIGHT_MAX`] batches at a
//! time, and proposes each answer (`PrepareReplied`, `DecisionAcked`), which
//! removes or replaces the message. A message stays "in flight" in the
//! shipper's memory from its send until its answer is applied, so it is not
//! sent twice meanwhile; a failed call releases its messages and the next
//! send waits a capped exponential backoff with jitter. A new leader starts
//! with an empty memory and sends whatever the outbox holds: duplicates are
//! harmless, as the receiver is idempotent by (transfer id, phase).
//!
//! The breaker: after [`BREAKER_FAILURES`] calls in a row to a region fail,
//! new quotes and transfers to it are refused at once (UNAVAILABLE) rather
//! than reserving funds that would only wait for their deadline. Transfers
//! already in flight keep being retried; the first call that succeeds (or,
//! with nothing to send, a health probe) closes the breaker.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::join_all;
use paymesh_client::{Credentials, Region, RetryPolicy};
use paymesh_core::command::{CommandBody, OutboxMessage, PrepareMessage};
use paymesh_core::id::{RegionId, TransferId};
use paymesh_proto::interregion::v1 as wire;
use paymesh_proto::interregion::v1::inter_region_service_client::InterRegionServiceClient;
use rand::Rng;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Status;

use crate::config::NodeConfig;
use crate::gateway::Gateway;
use crate::interregion::{decision_out, prepare_out, reply_in, BATCH_ITEMS_MAX, INTERREGION_MESSAGE_BYTES_MAX};
use crate::telemetry;
use crate::tls::TlsMaterial;
use tracing::Instrument;

/// Batches in flight to one region, at most.
pub const RPCS_IN_FLIGHT_MAX: usize = 32;

/// How long one inter-region call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The first pause after a failed call, and the largest.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// See [`BACKOFF_FIRST`].
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Failed calls in a row that open a region's breaker.
pub const BREAKER_FAILURES: u32 = 3;

/// How often the shipper looks at the outbox when nothing wakes it.
const RESCAN: Duration = Duration::from_millis(100);

/// A message's place in the shipper's memory: its transfer and whether it is
/// the decision (rather than the prepare).
type Key = (TransferId, bool);

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_since: Option<std::time::Instant>,
}

/// The link to one remote region: its client and its breaker.
#[derive(Debug)]
pub struct Link {
    /// The remote region.
    pub region: RegionId,
    /// Its CA file (`remote_regions.ca_cert`), when configured (always, with
    /// TLS).
    ca_file: Option<PathBuf>,
    /// Its CA, read from `ca_file` at start and again on SIGHUP.
    ca: RwLock<Option<Arc<RemoteCa>>>,
    /// What this node presents and trusts when it dials the region: its own
    /// certificate and the region's CA (the client follows it).
    credentials: tokio::sync::watch::Sender<Credentials>,
    client: Region,
    breaker: Mutex<Breaker>,
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
        let client = Region::live(endpoints, following, policy).with_call_timeout(CALL_TIMEOUT);
        Link { region, ca_file, ca: RwLock::new(ca.map(Arc::new)), credentials, client, breaker: Mutex::default() }
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

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the breaker has been open, if it is.
    pub fn open_for(&self) -> Option<Duration> {
        self.breaker().open_since.map(|since| since.elapsed())
    }

    fn failed(&self, status: &Status) {
        let mut breaker = self.breaker();
        breaker.failures = breaker.failures.saturating_add(1);
        if breaker.failures >= BREAKER_FAILURES && breaker.open_since.is_none() {
            breaker.open_since = Some(std::time::Instant::now());
            tracing::warn!(region = %self.region, code = ?status.code(), error = %telemetry::bounded_text(status.message(), 512),
                "region unreachable: circuit open, new transfers to it are refused");
        }
    }

    fn succeeded(&self) {
        let mut breaker = self.breaker();
        if let Some(since) = breaker.open_since.take() {
            tracing::info!(region = %self.region, open_for = ?since.elapsed(), "region reachable again: circuit closed");
        }
        breaker.failures = 0;
    }
}

/// The links to every configured remote region.
#[derive(Debug, Default)]
pub struct Links {
    links: BTreeMap<RegionId, Arc<Link>>,
}

impl Links {
    /// The links `config` describes; this node presents `tls` (or, in
    /// plaintext, names itself) and trusts each remote region's own CA.
    pub fn from_config(config: &NodeConfig, tls: Option<&TlsMaterial>) -> Result<Links, String> {
        let mut links = BTreeMap::new();
        for remote in &config.remote_regions {
            let ca = remote.ca_cert.as_deref().map(RemoteCa::load).transpose()?;
            let credentials = match (tls, &ca) {
                (Some(material), Some(ca)) => material.credentials_trusting(ca.pem.clone()),
                (Some(_), None) => return Err(format!("remote region {}: ca_cert is required", remote.region)),
                (None, _) => Credentials::Plaintext { identity: format!("node:{}:{}", config.region, config.node_id) },
            };
            let link =
                Link::new(remote.region.clone(), remote.endpoints.clone(), credentials, remote.ca_cert.clone(), ca);
            links.insert(remote.region.clone(), Arc::new(link));
        }
        Ok(Links { links })
    }

    /// Every link.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.links.values()
    }

    /// The link to `region`, if it is a configured remote region.
    pub fn get(&self, region: &RegionId) -> Option<&Arc<Link>> {
        self.links.get(region)
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
        let Some(link) = self.links.get(region) else {
            return Err(Status::failed_precondition(format!(
                "RegionUnreachable: region {region} is not linked to this region (no remote_regions entry)"
            )));
        };
        match link.open_for() {
            None => Ok(()),
            Some(open_for) => Err(Status::unavailable(format!(
                "RegionUnreachable: region {region} has not answered for {:.1} s; new transfers to it are refused \
                 until it does (transfers in flight finish when it returns)",
                open_for.as_secs_f64()
            ))),
        }
    }
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

/// Ship the outbox to `link`'s region while this node leads; the task is
/// aborted when leadership is lost.
pub async fn ship(gateway: Gateway, link: Arc<Link>) {
    let in_flight: Arc<Mutex<HashSet<Key>>> = Arc::default();
    let mut tasks: JoinSet<Result<(), Status>> = JoinSet::new();
    let mut applied = gateway.node.state_machine.watch_applied();
    let mut backoff = BACKOFF_FIRST;
    let mut not_before = Instant::now();
    tracing::info!(region = %link.region, "shipping the outbox");
    // The loop wakes when the outbox may have changed (entries applied), a
    // batch finished, or the rescan timer fired; each time it looks again.
    loop {
        if Instant::now() >= not_before && tasks.len() < RPCS_IN_FLIGHT_MAX {
            let (prepares, decisions) = collect(&gateway, &link.region, &in_flight);
            if !prepares.is_empty() {
                tasks.spawn(send_prepares(gateway.clone(), link.clone(), prepares, in_flight.clone()));
            }
            if !decisions.is_empty() && tasks.len() < RPCS_IN_FLIGHT_MAX {
                tasks.spawn(send_decisions(gateway.clone(), link.clone(), decisions, in_flight.clone()));
            } else {
                release(&in_flight, decisions.iter().map(|(t, _)| (t.clone(), true)));
            }
        }
        if tasks.is_empty() && link.open_for().is_some() {
            tasks.spawn(probe(link.clone()));
        }
        let wake = not_before.max(Instant::now() + RESCAN);
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(joined) = tasks.join_next() => {
                match joined {
                    Ok(Ok(())) => {
                        backoff = BACKOFF_FIRST;
                        link.succeeded();
                    }
                    Ok(Err(status)) => {
                        link.failed(&status);
                        tracing::debug!(region = %link.region, code = ?status.code(), error = %telemetry::bounded_text(status.message(), 512), "batch failed");
                        let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
                        not_before = Instant::now() + backoff + Duration::from_millis(jitter);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    Err(join) => tracing::error!(%join, "outbox batch task failed"),
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The outbox messages for `region` not in flight, up to a batch of each
/// kind; they are marked in flight.
fn collect(
    gateway: &Gateway,
    region: &RegionId,
    in_flight: &Mutex<HashSet<Key>>,
) -> (Vec<PrepareMessage>, Vec<(TransferId, paymesh_core::command::Decision)>) {
    let applied = gateway.node.state_machine.applied();
    let mut in_flight = in_flight.lock().unwrap_or_else(|p| p.into_inner());
    let (mut prepares, mut decisions) = (Vec::new(), Vec::new());
    for message in applied.state.outbox_for(region) {
        // Marking a message in flight is part of taking it.
        match message {
            OutboxMessage::Prepare(prepare)
                if prepares.len() < BATCH_ITEMS_MAX && in_flight.insert((prepare.transfer.clone(), false)) =>
            {
                prepares.push(prepare.clone());
            }
            OutboxMessage::Decision { transfer, decision }
                if decisions.len() < BATCH_ITEMS_MAX && in_flight.insert((transfer.clone(), true)) =>
            {
                decisions.push((transfer.clone(), *decision));
            }
            _ => {}
        }
        if prepares.len() >= BATCH_ITEMS_MAX && decisions.len() >= BATCH_ITEMS_MAX {
            break;
        }
    }
    (prepares, decisions)
}

fn release(in_flight: &Mutex<HashSet<Key>>, keys: impl IntoIterator<Item = Key>) {
    let mut in_flight = in_flight.lock().unwrap_or_else(|p| p.into_inner());
    for key in keys {
        in_flight.remove(&key);
    }
}

fn client(channel: paymesh_client::NodeChannel) -> InterRegionServiceClient<paymesh_client::NodeChannel> {
    InterRegionServiceClient::new(channel)
        .max_decoding_message_size(INTERREGION_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(INTERREGION_MESSAGE_BYTES_MAX)
}

fn gave_up(error: paymesh_client::ClientError) -> Status {
    error.status().cloned().unwrap_or_else(|| Status::unavailable(error.to_string()))
}

async fn send_prepares(
    gateway: Gateway,
    link: Arc<Link>,
    items: Vec<PrepareMessage>,
    in_flight: Arc<Mutex<HashSet<Key>>>,
) -> Result<(), Status> {
    let keys: Vec<Key> = items.iter().map(|m| (m.transfer.clone(), false)).collect();
    // A span per item, a child of its transfer's trace, open until the call returns.
    let spans = step_spans(
        &gateway,
        items.iter().map(|m| &m.transfer),
        |transfer| tracing::info_span!("prepare.send", transfer = %transfer, to = %link.region),
    );
    let batch = wire::PrepareBatch {
        from_region: gateway.node.config.region.to_string(),
        items: items.iter().zip(&spans).map(|(m, span)| prepare_out(m, telemetry::traceparent(span))).collect(),
    };
    let answer = link
        .client
        .call(None, |channel| {
            let batch = batch.clone();
            async move { client(channel).prepare(batch).await.map(|r| r.into_inner()) }
        })
        .await;
    let replies = match answer {
        Ok(replies) if replies.replies.len() == items.len() => replies.replies,
        Ok(replies) => {
            release(&in_flight, keys);
            return Err(Status::internal(format!("{} replies to {} prepares", replies.replies.len(), items.len())));
        }
        Err(error) => {
            release(&in_flight, keys);
            return Err(gave_up(error));
        }
    };
    drop(spans);
    let applied = gateway.node.state_machine.applied();
    let proposals = items.iter().zip(&replies).filter_map(|(item, reply)| {
        let answer = reply_in(reply).filter(|_| reply.transfer_id == item.transfer.to_string())?;
        let span = tracing::info_span!("prepare.replied", transfer = %item.transfer, reply = ?answer);
        telemetry::continue_from(
            &span,
            &gateway.node.traces.of(&applied.state, gateway.node.state_machine.history(), &item.transfer),
        );
        Some((CommandBody::PrepareReplied { transfer: item.transfer.clone(), reply: answer }, span))
    });
    let outcomes = join_all(proposals.map(|(body, span)| gateway.operate(body).instrument(span))).await;
    release(&in_flight, keys);
    outcomes.into_iter().find_map(Result::err).map_or(Ok(()), |status| {
        // Recording the answers failed (leadership lost, most likely); the
        // call itself succeeded, so the link is fine.
        tracing::debug!(code = ?status.code(), "recording prepare replies failed");
        Ok(())
    })
}

async fn send_decisions(
    gateway: Gateway,
    link: Arc<Link>,
    items: Vec<(TransferId, paymesh_core::command::Decision)>,
    in_flight: Arc<Mutex<HashSet<Key>>>,
) -> Result<(), Status> {
    let keys: Vec<Key> = items.iter().map(|(t, _)| (t.clone(), true)).collect();
    let spans = step_spans(
        &gateway,
        items.iter().map(|(t, _)| t),
        |transfer| tracing::info_span!("decide.send", transfer = %transfer, to = %link.region),
    );
    let batch = wire::DecisionBatch {
        from_region: gateway.node.config.region.to_string(),
        items: items
            .iter()
            .zip(&spans)
            .map(|((transfer, decision), span)| wire::DecisionItem {
                transfer_id: transfer.to_string(),
                decision: decision_out(*decision),
                traceparent: telemetry::traceparent(span),
            })
            .collect(),
    };
    let answer = link
        .client
        .call(None, |channel| {
            let batch = batch.clone();
            async move { client(channel).decide(batch).await.map(|r| r.into_inner()) }
        })
        .await;
    let acks = match answer {
        Ok(acks) if acks.acks.len() == items.len() => acks.acks,
        Ok(acks) => {
            release(&in_flight, keys);
            return Err(Status::internal(format!("{} acks to {} decisions", acks.acks.len(), items.len())));
        }
        Err(error) => {
            release(&in_flight, keys);
            return Err(gave_up(error));
        }
    };
    drop(spans);
    let mut proposals = Vec::new();
    let mut done = Vec::new();
    for ((transfer, decision), ack) in items.iter().zip(&acks) {
        match wire::AckResult::try_from(ack.result) {
            Ok(wire::AckResult::Acked) if ack.transfer_id == transfer.to_string() => {
                proposals.push(CommandBody::DecisionAcked { region: link.region.clone(), transfer: transfer.clone() });
                done.push((transfer.clone(), true));
            }
            Ok(wire::AckResult::ProtocolViolation) => {
                // Resending will not help: kept in flight (not resent) for
                // this leadership term, and reported.
                tracing::error!(region = %link.region, %transfer, ?decision,
                    "the remote region calls this decision a protocol violation; operators must investigate");
            }
            _ => done.push((transfer.clone(), true)),
        }
    }
    let outcomes = join_all(proposals.into_iter().map(|body| gateway.operate(body))).await;
    release(&in_flight, done);
    if let Some(status) = outcomes.into_iter().find_map(Result::err) {
        tracing::debug!(code = ?status.code(), "recording decision acks failed");
    }
    Ok(())
}

/// A span per transfer for one protocol step, each continuing its
/// transfer's trace (when this leader remembers it).
fn step_spans<'a>(
    gateway: &Gateway,
    transfers: impl Iterator<Item = &'a TransferId>,
    span_of: impl Fn(&TransferId) -> tracing::Span,
) -> Vec<tracing::Span> {
    let applied = gateway.node.state_machine.applied();
    transfers
        .map(|transfer| {
            let span = span_of(transfer);
            telemetry::continue_from(
                &span,
                &gateway.node.traces.of(&applied.state, gateway.node.state_machine.history(), transfer),
            );
            span
        })
        .collect()
}

/// With the breaker open and nothing to send: is the region back?
async fn probe(link: Arc<Link>) -> Result<(), Status> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    tokio::time::sleep(BACKOFF_MAX).await;
    link.client
        .call(None, |channel| async move {
            HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.map(|_| ())
        })
        .await
        .map_err(gave_up)
}
