//! A region's nodes and how to call them: connection, identity, retries.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to a node may take: the TCP connection and the TLS
/// handshake together. A paused node's kernel still accepts connections, so
/// a limit on TCP alone let a handshake wait out the whole call timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 keepalive on every connection: when nothing has come from a node
/// for `KEEPALIVE_INTERVAL` it is pinged, and with no answer within
/// `KEEPALIVE_TIMEOUT` the connection is closed, failing the calls on it
/// (which are retried on another node). A node that died or froze without
/// closing its connections (a killed container, a lost host, a pause) used
/// to hold every call sent to it for the call timeout.
/// ([`Region::with_keepalive`] for links whose round trip may come near a
/// second.)
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a node that did not answer (no connection, a connection lost,
/// no answer in time) is passed over: calls start elsewhere, and a
/// follower's hint naming it as leader is not followed (while a leader's
/// election is under way its followers still name the dead one).
const SUSPECT_FOR: Duration = Duration::from_secs(3);

/// The first and the largest pause between retries. The largest is short
/// because the longest wait a partner sees is a leader's election (about
/// 1.6 to 2 s): with pauses doubling up to a second, a client that lost
/// its leader slept through most of the second after the new one was
/// elected (no payment acknowledged for 2.6 to 3.6 s after a leader's
/// kill, elections 1.6 to 2.0 s: docs/BENCHMARKS.md, "Failover under
/// load"). The retries stay bounded by the policy's deadline.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Why a call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    /// A node answered with an error that retrying will not change.
    #[error("refused: {:?}: {}", .0.code(), .0.message())]
    Refused(Status),
    /// Every attempt failed with a retryable error until the attempts or the
    /// deadline ran out; the last error is kept.
    #[error("gave up after {attempts} attempts: {:?}: {}", .last.code(), .last.message())]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: Status,
    },
    /// The credentials could not be read or are not valid PEM.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The TLS handshake with a node was refused, one way or the other: the
    /// node does not accept this caller's certificate (none, another CA's,
    /// expired), or this caller does not trust the node's (the CA file names
    /// another CA). A gRPC client sees it as UNAVAILABLE or UNKNOWN, like a
    /// node that is down, but retrying with the same credentials cannot
    /// help, so it is not retried (except by a region whose credentials are
    /// reloaded while it runs, [`Region::live`]). `.0` is the status, whose
    /// message and source name what TLS refused.
    #[error("TLS handshake refused ({0}): the node does not accept this certificate, or this caller does not trust the node's CA; check the certificate, its key and the CA file, retrying will not help")]
    Handshake(String, Status),
}

impl ClientError {
    /// The gRPC status behind the error, if any.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Refused(status)
            | ClientError::GaveUp { last: status, .. }
            | ClientError::Handshake(_, status) => Some(status),
            ClientError::Credentials(_) => None,
        }
    }
}

/// How many times and for how long a call is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// The most attempts.
    pub attempts: u32,
    /// The time after which no new attempt starts.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Attempts enough for the deadline to be the bound (30 s of 250-ms
        // pauses), as it was with longer pauses.
        RetryPolicy { attempts: 150, deadline: Duration::from_secs(30) }
    }
}

/// Who the caller is. Its Debug form never shows the private key (nor the
/// certificates, which are long and say nothing a log needs).
#[derive(Clone)]
pub enum Credentials {
    /// Mutual TLS: the region's CA and the caller's certificate and key (PEM).
    Tls {
        /// The CA certificate that signed the nodes' certificates.
        ca: Vec<u8>,
        /// The caller's certificate.
        cert: Vec<u8>,
        /// The caller's private key.
        key: Vec<u8>,
    },
    /// Development only: plaintext, the identity sent in the
    /// `x-paymesh-identity` header (`partner:<id>`, `operator:<name>`). Nodes
    /// honour it only when they run with `insecure_plaintext = true`.
    Plaintext {
        /// The identity header's value.
        identity: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Tls { ca, cert, key } => f
                .debug_struct("Tls")
                .field("ca", &format_args!("<{} bytes>", ca.len()))
                .field("cert", &format_args!("<{} bytes>", cert.len()))
                .field("key", &format_args!("<redacted, {} bytes>", key.len()))
                .finish(),
            Credentials::Plaintext { identity } => f.debug_struct("Plaintext").field("identity", identity).finish(),
        }
    }
}

impl Credentials {
    /// TLS credentials read from PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, ClientError> {
        let read =
            |path: &Path| std::fs::read(path).map_err(|e| ClientError::Credentials(format!("{}: {e}", path.display())));
        Ok(Credentials::Tls { ca: read(ca)?, cert: read(cert)?, key: read(key)? })
    }
}

/// Adds the development identity header, when there is one.
#[derive(Clone, Debug)]
pub struct IdentityHeader(Option<AsciiMetadataValue>);

impl IdentityHeader {
    /// A header carrying `identity` (`partner:<id>`, `operator:<name>`,
    /// `node:<region>:<id>`), or none for TLS, where the certificate speaks.
    pub fn new(identity: Option<&str>) -> Result<IdentityHeader, Status> {
        identity
            .map(|text| {
                AsciiMetadataValue::try_from(text).map_err(|_| Status::invalid_argument("the identity must be ASCII"))
            })
            .transpose()
            .map(IdentityHeader)
    }
}

impl tonic::service::Interceptor for IdentityHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("x-paymesh-identity", value.clone());
        }
        Ok(request)
    }
}

/// A channel to one node, with the caller's identity attached.
pub type NodeChannel = InterceptedService<Answered, IdentityHeader>;

/// The response header in which a node names itself: its node id, on every
/// answer of its API (success or error alike).
pub const NODE_ID: &str = "paymesh-node-id";

/// The metadata of a follower's redirect naming the leader: its node id and
/// the API address its region knows it by.
pub const LEADER_ID: &str = "paymesh-leader-id";
/// See [`LEADER_ID`].
pub const LEADER_ADDR: &str = "paymesh-leader-addr";

/// Which node answered at which of the region's addresses: node id → the
/// address this client knows it by.
type Book = Arc<Mutex<HashMap<u64, String>>>;

/// A channel to one of the region's addresses that notes, from each answer's
/// [`NODE_ID`], which node answers there. A follower's redirect names the
/// leader's id and the address its region knows it by, which need not be
/// one this client can or should use (a node's address inside its network,
/// where the client reaches it through a published port or a proxy): the
/// id finds the client's own address for that node, and whether it just
/// failed to answer.
#[derive(Clone, Debug)]
pub struct Answered {
    inner: Channel,
    /// The address, when it is one of the region's (`None`: a leader's
    /// address from a hint, not noted).
    addr: Option<Arc<str>>,
    book: Book,
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Answered {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future =
        Noting<<Channel as tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        Noting { answer: self.inner.call(request), addr: self.addr.clone(), book: self.book.clone() }
    }
}

/// An [`Answered`] channel's answer on its way: the channel's, noting the
/// node named in it when it comes (no allocation of its own per call).
#[derive(Debug)]
pub struct Noting<F> {
    answer: F,
    addr: Option<Arc<str>>,
    book: Book,
}

impl<F, E> std::future::Future for Noting<F>
where
    F: std::future::Future<Output = Result<tonic::codegen::http::Response<tonic::body::Body>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let response = std::task::ready!(std::pin::Pin::new(&mut this.answer).poll(cx))?;
        let node = response.headers().get(NODE_ID).and_then(|v| v.to_str().ok()).and_then(|t| t.parse().ok());
        if let (Some(node), Some(addr)) = (node, this.addr.take()) {
            this.book.lock().unwrap_or_else(|p| p.into_inner()).insert(node, addr.to_string());
        }
        std::task::Poll::Ready(Ok(response))
    }
}

/// The nodes of one region and the caller's credentials.
#[derive(Debug)]
pub struct Region {
    nodes: Vec<String>,
    dial: Mutex<Dial>,
    /// Which node calls go to first, and which are passed over.
    routing: Mutex<Routing>,
    /// Which node answers at which address.
    book: Book,
    policy: RetryPolicy,
    call_timeout: Duration,
    connect_timeout: Duration,
    /// HTTP/2 keepalive: the interval and the timeout.
    keepalive: (Duration, Duration),
    /// How long an attempt may stay unanswered before another node is
    /// asked too ([`Region::with_hedge`]).
    hedge: Option<Duration>,
    /// Retryable answers met, since this client was made ([`Region::retries`]).
    retries: std::sync::atomic::AtomicU64,
}

/// Where a region's calls go: shared by every call of one client.
#[derive(Debug, Default)]
struct Routing {
    /// The node to try first: the last one that answered or was named leader.
    preferred: Option<String>,
    /// Nodes that did not answer, and when ([`SUSPECT_FOR`]).
    suspects: HashMap<String, Instant>,
}

impl Routing {
    fn suspected(&self, node: &str) -> bool {
        self.suspects.get(node).is_some_and(|since| since.elapsed() < SUSPECT_FOR)
    }
}

/// Whether a failed attempt never heard from its node: the connection could
/// not be made or was lost (a transport error, which carries its cause as
/// the status's source; a status a node sent has none), or nothing came in
/// time. Such a node is suspected; one that answered, even UNAVAILABLE, is not.
fn unanswered(status: &Status, timed_out: bool) -> bool {
    timed_out || std::error::Error::source(status).is_some()
}

/// The host part of `host:port` (an IP literal in brackets loses them).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The credentials channels are made with, where changes to them come from
/// (for [`Region::live`]), and the channels made with them.
struct Dial {
    credentials: Credentials,
    updates: Option<watch::Receiver<Credentials>>,
    channels: HashMap<String, Channel>,
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dial")
            .field("credentials", &self.credentials)
            .field("live", &self.updates.is_some())
            .field("channels", &self.channels.len())
            .finish()
    }
}

impl Dial {
    fn new(credentials: Credentials, updates: Option<watch::Receiver<Credentials>>) -> Dial {
        Dial { credentials, updates, channels: HashMap::new() }
    }

    /// Take the newest credentials, if they changed since the channels were
    /// made: the channels made with the previous ones are dropped.
    fn refresh(&mut self) {
        let Some(updates) = &mut self.updates else { return };
        // An error means the sender is gone: the credentials stay as they are.
        if updates.has_changed().unwrap_or(false) {
            self.credentials = updates.borrow_and_update().clone();
            self.channels.clear();
        }
    }
}

/// What TLS refused, when `status` is a failed TLS handshake, found in its
/// chain of sources (the transport error, hyper's, the I/O error that
/// carries TLS's): a rustls error (this side refused the node's
/// certificate), or the fatal alert the node sent (it refused this side's),
/// which reaches here as the I/O error's text, in rustls' words.
fn refused_handshake(status: &Status) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                return Some(tls.to_string());
            }
            let text = io.to_string();
            if io.kind() == std::io::ErrorKind::InvalidData && text.starts_with("received fatal alert: ") {
                return Some(text);
            }
        }
        source = error.source();
    }
    None
}

/// The metadata key of a region's definite refusal carried as UNAVAILABLE
/// (`region-unreachable`): the request had no effect and is not retried.
pub const REFUSED: &str = "paymesh-refused";

pub(crate) fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled | Code::Aborted
    ) && status.metadata().get(REFUSED).is_none()
}

impl Region {
    /// A region reached at these API addresses (`host:port`).
    pub fn new(nodes: Vec<String>, credentials: Credentials) -> Region {
        Region::with_policy(nodes, credentials, RetryPolicy::default())
    }

    /// A region with a chosen retry policy.
    pub fn with_policy(nodes: Vec<String>, credentials: Credentials, policy: RetryPolicy) -> Region {
        Region::with_dial(nodes, Dial::new(credentials, None), policy)
    }

    /// A region whose caller's credentials may change while it is in use (a
    /// node's certificate, key or CA file reloaded): each change is taken at
    /// the next [`Region::channel`], where the channels made with the
    /// previous credentials are dropped, so every connection made from then
    /// on presents the new certificate and trusts the new CA. Calls and
    /// streams already on a connection keep it until they end.
    pub fn live(nodes: Vec<String>, mut credentials: watch::Receiver<Credentials>, policy: RetryPolicy) -> Region {
        let current = credentials.borrow_and_update().clone();
        Region::with_dial(nodes, Dial::new(current, Some(credentials)), policy)
    }

    fn with_dial(nodes: Vec<String>, dial: Dial, policy: RetryPolicy) -> Region {
        Region {
            nodes,
            dial: Mutex::new(dial),
            routing: Mutex::default(),
            book: Book::default(),
            policy,
            call_timeout: CALL_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            keepalive: (KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT),
            hedge: None,
            retries: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many retryable answers (UNAVAILABLE, a timeout, a leader's
    /// redirect) this client's calls met, over all of them: each was
    /// followed by another attempt unless its call gave up. What callers
    /// did not see fail.
    pub fn retries(&self) -> u64 {
        self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The same region with another limit on one call (default [`CALL_TIMEOUT`]).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Region {
        self.call_timeout = timeout;
        self
    }

    /// The same region with another limit on connecting to a node, TCP and
    /// TLS together (default [`CONNECT_TIMEOUT`]; a partner near its region
    /// can choose less, so that a node that froze is passed over sooner).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Region {
        self.connect_timeout = timeout;
        self
    }

    /// The same region with another HTTP/2 keepalive (default
    /// [`KEEPALIVE_INTERVAL`] and [`KEEPALIVE_TIMEOUT`]): a connection that
    /// brought nothing for `interval` is pinged, and closed when no answer
    /// comes within `timeout`.
    pub fn with_keepalive(mut self, interval: Duration, timeout: Duration) -> Region {
        self.keepalive = (interval, timeout);
        self
    }

    /// The same region with hedged attempts: an attempt that has had no
    /// answer for `after` is suspected, and the same call is made to
    /// another node beside it; whichever ends first is the attempt's
    /// outcome (a failure goes on to the next node as usual). Only for
    /// calls whose repeats are harmless: the
    /// inter-region protocol's, whose receivers are idempotent by transfer
    /// and phase.
    ///
    /// (A link's keepalive must allow a slow round trip, so a call on a
    /// connection to a node that died waited out the call timeout; a call
    /// that is only slow is not abandoned, so a slow link still completes.)
    pub fn with_hedge(mut self, after: Duration) -> Region {
        self.hedge = Some(after);
        self
    }

    /// Whether the credentials may be reloaded while the region is in use.
    fn reloads_credentials(&self) -> bool {
        self.dial.lock().unwrap_or_else(|p| p.into_inner()).updates.is_some()
    }

    /// The nodes' API addresses.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// A channel to the node at `addr` (connected lazily, then reused).
    pub fn channel(&self, addr: &str) -> Result<NodeChannel, Status> {
        // The channel first: it takes changed credentials, which the header
        // then names.
        let answered = self.answered(addr)?;
        let header = match &self.dial.lock().unwrap_or_else(|p| p.into_inner()).credentials {
            Credentials::Plaintext { identity } => IdentityHeader::new(Some(identity))?,
            Credentials::Tls { .. } => IdentityHeader::new(None)?,
        };
        Ok(InterceptedService::new(answered, header))
    }

    /// The channel to `addr`, noting which node answers there when it is one
    /// of the region's addresses.
    fn answered(&self, addr: &str) -> Result<Answered, Status> {
        let mut dial = self.dial.lock().unwrap_or_else(|p| p.into_inner());
        dial.refresh();
        let channel = match dial.channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let (scheme, tls) = match &dial.credentials {
                    Credentials::Tls { ca, cert, key } => {
                        let tls = ClientTlsConfig::new()
                            .ca_certificate(Certificate::from_pem(ca))
                            .identity(Identity::from_pem(cert, key))
                            .domain_name(host_of(addr));
                        ("https", Some(tls))
                    }
                    Credentials::Plaintext { .. } => ("http", None),
                };
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
                    .map_err(|e| Status::invalid_argument(format!("address {addr}: {e}")))?
                    .connect_timeout(self.connect_timeout)
                    .timeout(self.call_timeout)
                    .http2_keep_alive_interval(self.keepalive.0)
                    .keep_alive_timeout(self.keepalive.1)
                    .keep_alive_while_idle(true);
                if let Some(tls) = tls {
                    endpoint = endpoint.tls_config(tls).map_err(|e| Status::invalid_argument(format!("TLS: {e}")))?;
                }
                // tonic's own connector limits the TCP connection only; one
                // given to it is wrapped, TLS included, in the connect timeout.
                let mut tcp = HttpConnector::new();
                tcp.enforce_http(false);
                tcp.set_nodelay(true);
                tcp.set_connect_timeout(Some(self.connect_timeout));
                let channel = endpoint.connect_with_connector_lazy(tcp);
                dial.channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        let addr = self.nodes.iter().any(|node| node == addr).then(|| Arc::from(addr));
        Ok(Answered { inner: channel, addr, book: self.book.clone() })
    }

    /// Where a follower's redirect sends the call: the leader it names, at
    /// this client's own address for that node when one is known (see
    /// [`Answered`]), else at the address the follower gave.
    fn leader_named(&self, status: &Status) -> Option<String> {
        let id = status.metadata().get(LEADER_ID).and_then(|v| v.to_str().ok()).and_then(|t| t.parse::<u64>().ok());
        let known = id.and_then(|id| self.book.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned());
        known.or_else(|| status.metadata().get(LEADER_ADDR).and_then(|v| v.to_str().ok()).map(str::to_owned))
    }

    /// The node an attempt goes to: the preferred one (the last that
    /// answered or was named leader), which every call of this client
    /// shares until it fails, else the next in turn after `next` that is
    /// not suspected (or the next in turn, when all are).
    ///
    /// (A call used to take the preferred node for itself, leaving the
    /// calls made meanwhile to start at the first node: a follower that
    /// redirects them, or, dead or paused, holds them for its connect or
    /// call timeout. The chaos suite's container runs showed corridors
    /// stalled for a whole pause of a follower: chaos/README.md.)
    fn pick(&self, next: &mut usize) -> String {
        let routing = self.routing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(preferred) = routing.preferred.as_ref().filter(|node| !routing.suspected(node)) {
            return preferred.clone();
        }
        let count = self.nodes.len().max(1);
        let turn = (0..count)
            .map(|k| (*next + k) % count)
            .find(|at| self.nodes.get(*at).is_some_and(|node| !routing.suspected(node)));
        let at = turn.unwrap_or(*next % count);
        *next = at + 1;
        self.nodes.get(at).cloned().unwrap_or_default()
    }

    /// An attempt at `target` failed: no call prefers it any more, it is
    /// suspected if it did not answer at all, and this call goes on with
    /// the node after it.
    fn forget(&self, target: &str, unanswered: bool, next: &mut usize) {
        let mut routing = self.routing.lock().unwrap_or_else(|p| p.into_inner());
        if routing.preferred.as_deref() == Some(target) {
            routing.preferred = None;
        }
        if unanswered {
            routing.suspects.insert(target.to_owned(), Instant::now());
        }
        if let Some(at) = self.nodes.iter().position(|node| node == target) {
            *next = at + 1;
        }
    }

    /// `node` answered, or a node that answered named it leader: calls go
    /// there first. A node that answered is no longer suspected.
    fn prefer(&self, node: &str, answered: bool) {
        let mut routing = self.routing.lock().unwrap_or_else(|p| p.into_inner());
        routing.preferred = Some(node.to_owned());
        if answered {
            routing.suspects.remove(node);
        }
    }

    /// Whether `node` failed to answer within the last [`SUSPECT_FOR`].
    fn suspected(&self, node: &str) -> bool {
        self.routing.lock().unwrap_or_else(|p| p.into_inner()).suspected(node)
    }

    /// One attempt of `call` at `target`, and whether it ran out of time.
    async fn attempt<T, F, Fut>(&self, target: &str, call: &F) -> (Result<T, Status>, bool)
    where
        F: Fn(NodeChannel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        // The channel's own timeout starts only once the request reaches
        // a connection; a request queued behind a connection that never
        // becomes ready (a link that went silent) would wait forever.
        // This limit covers the whole attempt.
        match self.channel(target) {
            Ok(channel) => match tokio::time::timeout(self.call_timeout, call(channel)).await {
                Ok(result) => (result, false),
                Err(_) => {
                    let silent = format!("no answer from {target} within {:?}", self.call_timeout);
                    (Err(Status::deadline_exceeded(silent)), true)
                }
            },
            Err(status) => (Err(status), false),
        }
    }

    /// One attempt at `target`, joined by one at another node when it has
    /// had no answer for `after` ([`Region::with_hedge`]); the node whose
    /// answer is taken, and the attempt's outcome.
    async fn hedged<T, F, Fut>(
        &self,
        target: String,
        after: Duration,
        next: &mut usize,
        call: &F,
    ) -> (String, (Result<T, Status>, bool))
    where
        F: Fn(NodeChannel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let first = self.attempt(&target, call);
        tokio::pin!(first);
        tokio::select! {
            done = &mut first => return (target.clone(), done),
            () = tokio::time::sleep(after) => {}
        }
        self.forget(&target, true, next);
        let other = self.pick(next);
        if other == target {
            return (target.clone(), first.await);
        }
        tracing::debug!(%target, %other, after_ms = after.as_millis() as u64, "no answer yet: asking another node too");
        let second = self.attempt(&other, call);
        tokio::pin!(second);
        // The first to end is the attempt's outcome, a failure too: the
        // call goes on with the next node at once rather than wait for the
        // other (which may be a node that died and has not been suspected
        // yet, holding it for the call timeout).
        tokio::select! {
            done = &mut first => (target.clone(), done),
            done = &mut second => (other.clone(), done),
        }
    }

    /// Run `call` against a node, retrying retryable failures on the named
    /// leader or the next node. `only` pins every attempt to one node.
    pub async fn call<T, F, Fut>(&self, only: Option<&str>, call: F) -> Result<T, ClientError>
    where
        F: Fn(NodeChannel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut backoff = BACKOFF_FIRST;
        let mut next = 0usize;
        let mut last = Status::unavailable("no attempt made");
        // Whether `last` is a failure rather than a redirect.
        let mut failed = false;
        for attempt in 1..=self.policy.attempts {
            let target = match only {
                Some(addr) => addr.to_owned(),
                None => self.pick(&mut next),
            };
            let (target, (result, timed_out)) = match self.hedge.filter(|_| only.is_none() && self.nodes.len() > 1) {
                Some(after) => self.hedged(target, after, &mut next, &call).await,
                None => {
                    let done = self.attempt(&target, &call).await;
                    (target, done)
                }
            };
            match result {
                Ok(value) => {
                    self.prefer(&target, true);
                    return Ok(value);
                }
                Err(status) if !self.reloads_credentials() && refused_handshake(&status).is_some() => {
                    let refused = refused_handshake(&status).unwrap_or_default();
                    return Err(ClientError::Handshake(format!("{target}: {refused}"), status));
                }
                Err(status) if retryable(&status) => {
                    // A hint naming a node that did not answer just now is
                    // stale (the dead leader, until its followers elect
                    // another): this follower's redirect counts as a
                    // failure, and the call goes on with the next node.
                    let follow =
                        self.leader_named(&status).filter(|leader| *leader != target && !self.suspected(leader));
                    tracing::debug!(
                        %target,
                        attempt,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        code = ?status.code(),
                        message = status.message(),
                        source = ?std::error::Error::source(&status),
                        "retrying"
                    );
                    self.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(leader) = follow {
                        // A leader hint is a redirect, not a failure: no
                        // pause, and the error given up with stays the last
                        // failure (a follower's redirect says nothing of why
                        // the leader refused).
                        if !failed {
                            last = status;
                        }
                        self.prefer(&leader, false);
                        continue;
                    }
                    self.forget(&target, unanswered(&status, timed_out), &mut next);
                    failed = true;
                    last = status;
                }
                Err(status) => return Err(ClientError::Refused(status)),
            }
            if started.elapsed() + backoff > self.policy.deadline {
                return Err(ClientError::GaveUp { attempts: attempt, last });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        Err(ClientError::GaveUp { attempts: self.policy.attempts, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The base64 body of a PEM block (the lines between the armour), and
    /// the bytes as `Vec<u8>`'s Debug would print them.
    pub(crate) fn key_traces(pem: &str) -> Vec<String> {
        let body: Vec<&str> = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        let mut traces: Vec<String> = body.iter().map(|line| line.to_string()).collect();
        traces.push(body.concat());
        let bytes = format!("{:?}", pem.as_bytes());
        traces.push(bytes[1..bytes.len() - 1].to_owned());
        traces
    }

    #[test]
    fn credentials_never_print_the_private_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        let pem = key.serialize_pem();
        let credentials = Credentials::Tls {
            ca: cert.pem().into_bytes(),
            cert: cert.pem().into_bytes(),
            key: pem.clone().into_bytes(),
        };
        let region = Region::new(vec!["127.0.0.1:9".into()], credentials.clone());
        for printed in [format!("{credentials:?}"), format!("{credentials:#?}"), format!("{region:?}")] {
            for trace in key_traces(&pem) {
                assert!(!printed.contains(&trace), "the key appears in {printed}");
            }
            assert!(printed.contains("redacted"), "{printed}");
        }
    }

    #[test]
    fn hosts_are_taken_from_addresses() {
        assert_eq!(host_of("127.0.0.1:8101"), "127.0.0.1");
        assert_eq!(host_of("node-1.example:443"), "node-1.example");
        assert_eq!(host_of("[::1]:8101"), "::1");
    }

    /// Every call of a client goes to its preferred node, not only the
    /// first of several made at once; a failure there makes the calls go
    /// on with the node after it, and an answer makes a node preferred.
    #[test]
    fn calls_made_at_once_share_the_preferred_node_until_it_fails() {
        let credentials = Credentials::Plaintext { identity: "partner:test".into() };
        let nodes: Vec<String> = ["127.0.0.1:9", "127.0.0.2:9", "127.0.0.3:9"].map(str::to_owned).to_vec();
        let region = Region::with_policy(nodes.clone(), credentials, RetryPolicy::default());
        region.prefer(&nodes[1], true);
        let (mut first, mut second) = (0, 0);
        assert_eq!(region.pick(&mut first), nodes[1]);
        assert_eq!(region.pick(&mut second), nodes[1], "a second call made meanwhile goes there too");
        region.forget(&nodes[1], false, &mut first);
        assert_eq!(region.pick(&mut first), nodes[2], "the failed call goes on with the node after it");
        assert_eq!(region.pick(&mut second), nodes[0], "the others take their turn, not the failed node first");
        // A failure of a node that is not the preferred one leaves it.
        region.prefer(&nodes[2], true);
        region.forget(&nodes[0], false, &mut second);
        assert_eq!(region.pick(&mut second), nodes[2]);
    }

    /// A node that did not answer is passed over for a while: calls start
    /// at the others, even when a follower names it leader; when every
    /// node is suspected, they are tried in turn all the same, and a node
    /// that answers is trusted again at once.
    #[test]
    fn a_node_that_did_not_answer_is_passed_over_and_its_leadership_hint_ignored() {
        let credentials = Credentials::Plaintext { identity: "partner:test".into() };
        let nodes: Vec<String> = ["127.0.0.1:9", "127.0.0.2:9", "127.0.0.3:9"].map(str::to_owned).to_vec();
        let region = Region::with_policy(nodes.clone(), credentials, RetryPolicy::default());
        region.prefer(&nodes[0], true);
        let mut call = 0;
        region.forget(&nodes[0], true, &mut call);
        let mut other = 0;
        assert_eq!(region.pick(&mut other), nodes[1], "a new call does not start at the silent node");
        assert_eq!(region.pick(&mut other), nodes[2]);
        assert_eq!(region.pick(&mut other), nodes[1], "its turn is skipped");
        // A follower's hint naming it does not make it preferred again.
        assert!(region.suspected(&nodes[0]));
        // An answered node is not suspected: a follower that answered
        // UNAVAILABLE is alive.
        region.forget(&nodes[1], false, &mut call);
        assert!(!region.suspected(&nodes[1]));
        // All silent: turns as before.
        region.forget(&nodes[1], true, &mut call);
        region.forget(&nodes[2], true, &mut call);
        let mut last = 0;
        assert_eq!(region.pick(&mut last), nodes[0]);
        assert_eq!(region.pick(&mut last), nodes[1]);
        region.prefer(&nodes[2], true);
        assert!(!region.suspected(&nodes[2]));
        assert_eq!(region.pick(&mut last), nodes[2]);
    }

    /// A follower's hint naming a leader that just failed to answer is not
    /// followed: the call goes on with the other nodes (which, once they
    /// have elected a new leader, name it), not back to the dead one.
    #[tokio::test]
    async fn a_hint_naming_a_node_that_did_not_answer_is_not_followed() {
        let credentials = Credentials::Plaintext { identity: "partner:test".into() };
        let policy = RetryPolicy { attempts: 4, deadline: Duration::from_secs(5) };
        let nodes: Vec<String> = ["127.0.0.1:9", "127.0.0.2:9", "127.0.0.3:9"].map(str::to_owned).to_vec();
        let region = Region::with_policy(nodes.clone(), credentials, policy);
        region.prefer(&nodes[0], true);
        let attempt = std::sync::atomic::AtomicU32::new(0);
        let result: Result<u32, ClientError> = region
            .call(None, |_channel| {
                let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    match n {
                        // The leader's connection is lost: a transport error.
                        0 => {
                            Err(Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))))
                        }
                        // A follower still names the dead leader.
                        1 => {
                            let mut redirect = Status::unavailable("this node is not the leader");
                            redirect.metadata_mut().insert(LEADER_ADDR, "127.0.0.1:9".parse().unwrap());
                            Err(redirect)
                        }
                        _ => Ok(n),
                    }
                }
            })
            .await;
        assert_eq!(result.unwrap(), 2, "the third attempt, at the third node, answers");
        let routing = region.routing.lock().unwrap();
        assert_eq!(routing.preferred.as_deref(), Some(nodes[2].as_str()), "not the dead leader");
        assert!(routing.suspected(&nodes[0]));
    }

    /// An attempt that never answers (a request stuck behind a silent
    /// connection) ends at the call timeout, and the call gives up.
    #[tokio::test]
    async fn an_attempt_that_never_answers_ends_at_the_call_timeout() {
        let credentials = Credentials::Plaintext { identity: "operator:test".into() };
        let policy = RetryPolicy { attempts: 2, deadline: Duration::from_secs(5) };
        let region = Region::with_policy(vec!["127.0.0.1:9".into()], credentials, policy)
            .with_call_timeout(Duration::from_millis(100));
        let started = Instant::now();
        let result: Result<(), ClientError> = region.call(None, |_channel| std::future::pending()).await;
        match result {
            Err(ClientError::GaveUp { attempts: 2, last }) => {
                assert_eq!(last.code(), Code::DeadlineExceeded, "{last:?}")
            }
            other => panic!("expected to give up after two timed-out attempts, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }

    /// A region of `count` nodes hedging after 100 ms (3 s per call, as
    /// many attempts as nodes), calls going to its first node first.
    fn hedging(count: u8) -> (Region, Vec<String>) {
        let credentials = Credentials::Plaintext { identity: "node:us-west:1".into() };
        let policy = RetryPolicy { attempts: u32::from(count), deadline: Duration::from_secs(5) };
        let nodes: Vec<String> = (1..=count).map(|n| format!("127.0.0.{n}:9")).collect();
        let region = Region::with_policy(nodes.clone(), credentials, policy)
            .with_call_timeout(Duration::from_secs(3))
            .with_hedge(Duration::from_millis(100));
        region.prefer(&nodes[0], true);
        (region, nodes)
    }

    /// One call through `region` whose attempts (numbered from 0) run
    /// `attempt`; its result, how long it took and the attempts made.
    async fn numbered<F, Fut>(region: &Region, attempt: F) -> (Result<u32, ClientError>, Duration, u32)
    where
        F: Fn(u32) -> Fut,
        Fut: std::future::Future<Output = Result<u32, Status>>,
    {
        let made = std::sync::atomic::AtomicU32::new(0);
        let started = Instant::now();
        let result =
            region.call(None, |_channel| attempt(made.fetch_add(1, std::sync::atomic::Ordering::Relaxed))).await;
        (result, started.elapsed(), made.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// With hedging, an attempt left unanswered (a connection to a node
    /// that died) is joined by one at the next node, whose answer is taken
    /// long before the call timeout; the silent node is suspected.
    #[tokio::test]
    async fn a_silent_attempt_is_joined_by_one_at_another_node() {
        let (region, nodes) = hedging(2);
        let (result, took, _) = numbered(&region, |n| async move {
            if n == 0 {
                std::future::pending::<()>().await;
            }
            Ok(n)
        })
        .await;
        assert_eq!(result.unwrap(), 1, "the second node's answer");
        assert!(took < Duration::from_secs(1), "took {took:?}: the silent attempt was waited out");
        assert!(region.suspected(&nodes[0]));
        assert_eq!(region.routing.lock().unwrap().preferred.as_deref(), Some(nodes[1].as_str()));
    }

    /// A silent attempt that then fails ends the hedged attempt: the call
    /// goes on with the next node rather than wait for the other one
    /// (which may be a node that died and has not been suspected yet).
    #[tokio::test]
    async fn a_hedged_attempt_ends_with_the_first_to_end_a_failure_too() {
        let (region, _) = hedging(3);
        let (result, took, _) = numbered(&region, |n| async move {
            match n {
                0 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Err(Status::unavailable("no leader is known in this region; retry shortly"))
                }
                1 => std::future::pending().await,
                _ => Ok(n),
            }
        })
        .await;
        assert_eq!(result.unwrap(), 2, "the third node's answer");
        assert!(took < Duration::from_secs(1), "took {took:?}: the hedge's silent attempt was waited out");
    }

    /// A slow answer is not abandoned for the hedge: the first success is
    /// taken, whichever node gives it (a slow link still completes).
    #[tokio::test]
    async fn a_slow_answer_is_taken_while_the_hedge_waits() {
        let (region, nodes) = hedging(2);
        let (result, took, made) = numbered(&region, |n| async move {
            let wait = if n == 0 { Duration::from_millis(300) } else { Duration::from_secs(60) };
            tokio::time::sleep(wait).await;
            Ok(n)
        })
        .await;
        assert_eq!(result.unwrap(), 0, "the first node's slow answer");
        assert_eq!(made, 2, "the other node was asked too");
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(!region.suspected(&nodes[0]), "a node that answered is trusted again");
    }

    /// A region's fail-fast refusal (UNAVAILABLE marked refused) is an
    /// answer: returned after one attempt, not retried on the other nodes.
    #[tokio::test]
    async fn a_refusal_marked_as_such_is_not_retried() {
        let credentials = Credentials::Plaintext { identity: "partner:test".into() };
        let policy = RetryPolicy { attempts: 4, deadline: Duration::from_secs(5) };
        let nodes = vec!["127.0.0.1:9".to_owned(), "127.0.0.2:9".to_owned()];
        let region = Region::with_policy(nodes, credentials, policy);
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), ClientError> = region
            .call(None, |_channel| {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    let mut refused = Status::unavailable("RegionUnreachable: region cn-east has not answered");
                    refused.metadata_mut().insert(REFUSED, "region-unreachable".parse().unwrap());
                    Err(refused)
                }
            })
            .await;
        match result {
            Err(ClientError::Refused(status)) => assert!(status.message().starts_with("RegionUnreachable")),
            other => panic!("expected the refusal as the answer, got {other:?}"),
        }
        assert_eq!(attempts.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
    }

    /// A call that gives up names the last failure, not a follower's
    /// redirect to the leader that came after it: the leader's refusal
    /// says why, "not the leader" does not.
    #[tokio::test]
    async fn giving_up_names_the_last_failure_not_a_redirect() {
        let credentials = Credentials::Plaintext { identity: "operator:test".into() };
        let policy = RetryPolicy { attempts: 2, deadline: Duration::from_secs(5) };
        let nodes = vec!["127.0.0.1:9".to_owned(), "127.0.0.2:9".to_owned()];
        let region = Region::with_policy(nodes, credentials, policy);
        let attempt = std::sync::atomic::AtomicU32::new(0);
        let result: Result<(), ClientError> = region
            .call(None, |_channel| {
                let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    if n == 0 {
                        return Err(Status::unavailable("RegionUnreachable: region cn-east has not answered"));
                    }
                    let mut redirect = Status::unavailable("this node is not the leader");
                    redirect.metadata_mut().insert(LEADER_ADDR, "127.0.0.1:9".parse().unwrap());
                    Err(redirect)
                }
            })
            .await;
        match result {
            Err(ClientError::GaveUp { attempts: 2, last }) => {
                assert!(last.message().starts_with("RegionUnreachable"), "{last:?}")
            }
            other => panic!("expected to give up after two attempts, got {other:?}"),
        }
    }

    /// A live region takes new credentials at its next channel and drops the
    /// channels made with the old ones; a fixed region never changes.
    #[tokio::test]
    async fn a_live_region_dials_anew_with_changed_credentials() {
        let identity = |name: &str| Credentials::Plaintext { identity: name.into() };
        let named = |region: &Region| match &region.dial.lock().unwrap().credentials {
            Credentials::Plaintext { identity } => identity.clone(),
            Credentials::Tls { .. } => unreachable!(),
        };
        let (updates, credentials) = watch::channel(identity("node:us-west:1"));
        let region = Region::live(Vec::new(), credentials, RetryPolicy::default());
        region.channel("127.0.0.1:9").unwrap();
        region.channel("127.0.0.1:10").unwrap();
        assert_eq!(region.dial.lock().unwrap().channels.len(), 2);
        assert_eq!(named(&region), "node:us-west:1");

        updates.send_replace(identity("node:us-west:2"));
        region.channel("127.0.0.1:9").unwrap();
        assert_eq!(named(&region), "node:us-west:2");
        assert_eq!(region.dial.lock().unwrap().channels.len(), 1, "the old credentials' channels were dropped");
        region.channel("127.0.0.1:10").unwrap();
        assert_eq!(region.dial.lock().unwrap().channels.len(), 2);

        // With the sender gone, the last credentials stay.
        drop(updates);
        region.channel("127.0.0.1:9").unwrap();
        assert_eq!(named(&region), "node:us-west:2");
        assert_eq!(region.dial.lock().unwrap().channels.len(), 2);
    }

    /// A follower's redirect names the leader by id and by the address its
    /// region knows it by; a client that has heard that node answer at one
    /// of its own addresses goes there (not to an address it may not
    /// reach, nor, through a second name, to a node it suspects).
    #[tokio::test]
    async fn a_redirect_finds_the_leader_by_its_id_at_the_clients_own_address() {
        let credentials = Credentials::Plaintext { identity: "partner:test".into() };
        let nodes: Vec<String> = ["127.0.0.1:7111", "127.0.0.1:7112"].map(str::to_owned).to_vec();
        let region = Region::with_policy(nodes.clone(), credentials, RetryPolicy::default());
        let mut redirect = Status::unavailable("this node is not the leader");
        redirect.metadata_mut().insert(LEADER_ID, "1".parse().unwrap());
        redirect.metadata_mut().insert(LEADER_ADDR, "10.77.1.11:8000".parse().unwrap());
        assert_eq!(region.leader_named(&redirect).as_deref(), Some("10.77.1.11:8000"), "nothing known of node 1 yet");
        region.book.lock().unwrap().insert(1, nodes[0].clone());
        assert_eq!(region.leader_named(&redirect).as_deref(), Some(nodes[0].as_str()));
        // Only the region's own addresses are noted.
        assert!(region.answered("10.77.1.11:8000").unwrap().addr.is_none());
        assert_eq!(region.answered(&nodes[1]).unwrap().addr.as_deref(), Some(nodes[1].as_str()));
    }

    /// A node that answered at one address and then went silent is not
    /// followed to when a follower names it, even by its other address.
    #[tokio::test]
    async fn a_redirect_to_a_suspected_node_by_its_other_name_is_not_followed() {
        let credentials = Credentials::Plaintext { identity: "partner:test".into() };
        let policy = RetryPolicy { attempts: 3, deadline: Duration::from_secs(5) };
        let nodes: Vec<String> = ["127.0.0.1:7111", "127.0.0.1:7112", "127.0.0.1:7113"].map(str::to_owned).to_vec();
        let region = Region::with_policy(nodes.clone(), credentials, policy);
        region.book.lock().unwrap().insert(1, nodes[0].clone());
        let mut first = 0;
        region.forget(&nodes[0], true, &mut first);
        let started = Instant::now();
        let result: Result<(), ClientError> = region
            .call(None, |_channel| async move {
                let mut redirect = Status::unavailable("this node is not the leader");
                redirect.metadata_mut().insert(LEADER_ID, "1".parse().unwrap());
                redirect.metadata_mut().insert(LEADER_ADDR, "10.77.1.11:8000".parse().unwrap());
                Err(redirect)
            })
            .await;
        assert!(matches!(result, Err(ClientError::GaveUp { attempts: 3, .. })), "{result:?}");
        // Following it would have made it the preferred node (and its
        // attempt, at an address that does not answer, would have waited).
        assert_eq!(region.routing.lock().unwrap().preferred, None, "never followed, by either name");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }

    /// Accepts TCP connections and never answers on them (a frozen node
    /// whose kernel still accepts): the connections are held open.
    async fn silent_node() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (addr, task)
    }

    /// One GetTransfer through `region` (one attempt), which must give up;
    /// how long it took.
    async fn one_call_given_up(region: &Region) -> Duration {
        let started = Instant::now();
        let result = region
            .call(None, |channel| async move {
                crate::partner::service(channel)
                    .get_transfer(paymesh_proto::partner::v1::GetTransferRequest::default())
                    .await
            })
            .await;
        assert!(matches!(result, Err(ClientError::GaveUp { attempts: 1, .. })), "{result:?}");
        started.elapsed()
    }

    /// A call to a node that accepted the connection and then fell silent
    /// ends within the HTTP/2 keepalive's interval and timeout, not at the
    /// call timeout, and the node is suspected.
    #[tokio::test]
    async fn a_silent_connection_fails_its_calls_at_the_keepalive_not_the_call_timeout() {
        let (node, _task) = silent_node().await;
        let credentials = Credentials::Plaintext { identity: "partner:test".into() };
        let policy = RetryPolicy { attempts: 1, deadline: Duration::from_secs(30) };
        let region = Region::with_policy(vec![node.clone()], credentials, policy);
        let took = one_call_given_up(&region).await;
        assert!(took < KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + Duration::from_secs(1), "took {took:?}");
        assert!(region.suspected(&node), "a node whose connection went silent is suspected");
    }

    /// Connecting over TLS to a node that accepts TCP but never answers
    /// the handshake ends at the connect timeout, not the call timeout.
    #[tokio::test]
    async fn a_tls_handshake_left_unanswered_ends_at_the_connect_timeout() {
        let (node, _task) = silent_node().await;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&key).unwrap();
        let credentials = Credentials::Tls {
            ca: cert.pem().into_bytes(),
            cert: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
        };
        let policy = RetryPolicy { attempts: 1, deadline: Duration::from_secs(30) };
        let region = Region::with_policy(vec![node.clone()], credentials, policy)
            .with_connect_timeout(Duration::from_millis(300));
        let took = one_call_given_up(&region).await;
        assert!(took < Duration::from_millis(1500), "took {took:?}, the call timeout is {CALL_TIMEOUT:?}");
        assert!(region.suspected(&node));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(retryable(&Status::unavailable("x")));
        assert!(retryable(&Status::deadline_exceeded("x")));
        assert!(!retryable(&Status::invalid_argument("x")));
        assert!(!retryable(&Status::already_exists("x")));
        assert!(!retryable(&Status::permission_denied("x")));
    }
}
