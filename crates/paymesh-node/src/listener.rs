//! What every listener of a node does with the connections it accepts, and
//! the HTTP/2 limits of its servers.
//!
//! tonic applies its own `tcp_nodelay` and `tcp_keepalive` only to listeners
//! it binds itself, and has no connection cap, so the node binds its
//! listeners and sets both here, and holds a permit of the listener's
//! connection budget for as long as each connection lives. A connection
//! beyond the budget is closed at once (its client sees the connection reset
//! and retries elsewhere or later) rather than left waiting in the kernel's
//! backlog, and the refusal is logged at most once per
//! [`REFUSAL_LOG_INTERVAL`].

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::Server;

/// Idle time before the kernel probes a silent peer's TCP connection.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// How often an HTTP/2 PING checks that a connection's peer still answers.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// How long a PING may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Concurrent HTTP/2 streams (calls, open event streams) on one connection
/// (tonic's default leaves it unbounded).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1_024;

/// Connections a node's Raft listener accepts at once: its region's peers
/// need one or two each.
pub const RAFT_CONNECTIONS_MAX: usize = 64;

/// Connections a node's inter-region listener accepts at once.
pub const INTERREGION_CONNECTIONS_MAX: usize = 1_024;

/// An API or inter-region connection is asked to close (GOAWAY) after this
/// long, so clients spread over the nodes again and no connection holds its
/// resources forever; event streams on it end and resume from their cursor.
pub const CONNECTION_AGE_MAX: Duration = Duration::from_secs(3_600);

/// Calls still running on a connection past its age get this long to finish.
pub const CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

/// At most one log line per this interval about refused connections.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A server builder with the keepalives and the per-connection stream limit
/// every listener of a node uses.
pub fn server() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
}

/// A server builder for listeners whose connections also age out: the API
/// and the inter-region listener.
pub fn aging_server() -> Server {
    server().max_connection_age(CONNECTION_AGE_MAX).max_connection_age_grace(CONNECTION_AGE_GRACE)
}

/// An accepted connection holding its place in the listener's budget.
#[derive(Debug)]
pub struct Accepted {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
}

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Accepted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Counts refusals and logs them at most once per interval.
#[derive(Debug)]
struct Refusals {
    name: &'static str,
    limit: usize,
    started: Instant,
    /// Refusals since the last log line.
    count: AtomicU64,
    /// When the last line was logged, in milliseconds since `started`
    /// (`u64::MAX`: never).
    logged_ms: AtomicU64,
}

impl Refusals {
    fn record(&self) {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.logged_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= REFUSAL_LOG_INTERVAL.as_millis() as u64;
        if due && self.logged_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.count.fetch_sub(count, Ordering::Relaxed);
            tracing::warn!(
                listener = self.name,
                limit = self.limit,
                refused = count,
                "connections refused: the listener holds its most connections"
            );
        }
    }
}

/// The connections `listener` accepts, at most `limit` open at once, with
/// Nagle's algorithm off (a reply held back by Nagle waits for the peer's
/// delayed ACK: about 40 ms added to one call in ten under light load) and
/// TCP keepalive on. `name` names the listener in log lines.
pub fn accepted(listener: TcpListener, limit: usize, name: &'static str) -> impl Stream<Item = io::Result<Accepted>> {
    let places = Arc::new(Semaphore::new(limit));
    let refusals = Refusals {
        name,
        limit,
        started: Instant::now(),
        count: AtomicU64::new(0),
        logged_ms: AtomicU64::new(u64::MAX),
    };
    TcpListenerStream::new(listener).filter_map(move |accepted| {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => return Some(Err(e)),
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            refusals.record();
            return None;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(%e, "cannot turn off Nagle's algorithm on an accepted connection");
        }
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::warn!(%e, "cannot turn on TCP keepalive on an accepted connection");
        }
        Some(Ok(Accepted { stream, _place: place }))
    })
}

/// Handshakes under way at once per listener, beyond which new connections
/// wait (each already holds a place in the connection budget).
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;

/// The connections [`accepted`] yields, after a TLS handshake with the
/// configuration `tls` holds when each arrives (so a reload on SIGHUP takes
/// effect for the next connection, without a restart). Handshakes run
/// concurrently, each bounded by [`crate::tls::TLS_HANDSHAKE_TIMEOUT`]; one
/// that fails or times out closes its connection and is logged at debug
/// level (a scanner's probe is no news).
pub fn accepted_tls(
    listener: TcpListener,
    limit: usize,
    name: &'static str,
    tls: crate::tls::LiveServerTls,
) -> impl Stream<Item = io::Result<tokio_rustls::server::TlsStream<Accepted>>> {
    let (ready, incoming) = tokio::sync::mpsc::channel(HANDSHAKES_IN_FLIGHT_MAX);
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    tokio::spawn(async move {
        let mut connections = Box::pin(accepted(listener, limit, name));
        loop {
            // The server stopped (it dropped the stream): stop accepting and
            // free the port.
            let connection = tokio::select! {
                () = ready.closed() => return,
                connection = connections.next() => match connection {
                    Some(connection) => connection,
                    None => return,
                },
            };
            let connection = match connection {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::debug!(listener = name, %e, "accept failed");
                    continue;
                }
            };
            let Ok(turn) = handshakes.clone().acquire_owned().await else { return };
            let (acceptor, ready) = (tls.acceptor(), ready.clone());
            tokio::spawn(async move {
                let _turn = turn;
                match tokio::time::timeout(crate::tls::TLS_HANDSHAKE_TIMEOUT, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(listener = name, %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(listener = name, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// Serve HTTP/1.1 on every connection `connections` yields, until
/// `shutdown`: each on a task of its own with the service `service_for`
/// makes for it, closed after `lifetime` whatever it is doing (the node's
/// plain web listeners: metrics and probes, the operator console).
pub async fn serve_http1<C, S, B>(
    connections: impl Stream<Item = io::Result<C>>,
    name: &'static str,
    lifetime: Duration,
    shutdown: impl std::future::Future<Output = ()>,
    service_for: impl Fn(&C) -> S,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connections = std::pin::pin!(connections);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let connection = tokio::select! {
            () = &mut shutdown => return,
            connection = connections.next() => match connection {
                Some(Ok(connection)) => connection,
                Some(Err(e)) => {
                    tracing::debug!(listener = name, %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                None => return,
            },
        };
        let service = service_for(&connection);
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(connection), service);
            let _ = tokio::time::timeout(lifetime, connection).await;
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The next connection the server side was handed, if one comes soon.
    async fn next(served: &mut tokio::sync::mpsc::UnboundedReceiver<Accepted>) -> Option<Accepted> {
        tokio::time::timeout(Duration::from_secs(5), served.recv()).await.ok().flatten()
    }

    #[tokio::test]
    async fn a_connection_beyond_the_limit_is_closed_and_its_place_returns_when_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The server's side: drive the listener, hand over what it yields.
        let (sender, mut served) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut accepted = Box::pin(accepted(listener, 2, "test"));
            while let Some(connection) = accepted.next().await {
                let _ = sender.send(connection.unwrap());
            }
        });
        let _first = TcpStream::connect(addr).await.unwrap();
        let a = next(&mut served).await.expect("the first connection is served");
        let _second = TcpStream::connect(addr).await.unwrap();
        let _b = next(&mut served).await.expect("the second connection is served");
        // The third is refused: closed by the listener, never handed over.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut third, &mut byte))
            .await
            .expect("the refused connection is closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(served.try_recv().is_err(), "a connection beyond the limit was served");
        // Closing a served one frees a place for the next.
        drop(a);
        let _fourth = TcpStream::connect(addr).await.unwrap();
        assert!(next(&mut served).await.is_some(), "the freed place was not given to the next connection");
    }
}

/// The start of the message tonic's decoder gives a request over its
/// service's size limit, as it travels in `grpc-message` (percent-encoded).
const OVER_LIMIT_MESSAGE: &str = "Error,%20decoded%20message%20length%20too%20large";

/// A service whose answer to a request over its size limit is
/// RESOURCE_EXHAUSTED, as gRPC's conventions have it (the reference
/// implementations answer so), rather than the OUT_OF_RANGE tonic's decoder
/// gives: the API's contract keeps OUT_OF_RANGE for a cursor past what
/// history holds. Only that answer changes; everything else passes through.
#[derive(Clone, Debug)]
pub struct SizeLimited<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for SizeLimited<S> {
    const NAME: &'static str = S::NAME;
}

type Response = tonic::codegen::http::Response<tonic::body::Body>;

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for SizeLimited<S>
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(Response) -> Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        use futures::TryFutureExt as _;
        self.0.call(request).map_ok(over_limit_exhausted as fn(Response) -> Response)
    }
}

/// `response`, with RESOURCE_EXHAUSTED for the decoder's OUT_OF_RANGE of a
/// request over the size limit.
fn over_limit_exhausted(mut response: Response) -> Response {
    let headers = response.headers();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let over_limit =
        headers.get("grpc-message").is_some_and(|v| v.as_bytes().starts_with(OVER_LIMIT_MESSAGE.as_bytes()));
    if out_of_range && over_limit {
        let exhausted = tonic::codegen::http::HeaderValue::from_static("8");
        response.headers_mut().insert("grpc-status", exhausted);
    }
    response
}

/// A service whose every answer names the node that gave it: the response
/// header [`paymesh_client::NODE_ID`], on successes and errors alike. A
/// follower's redirect names the leader by id and by the address its region
/// knows it by; the SDK finds its own address for that id from these
/// headers, so a client that reaches the nodes through other addresses (a
/// published port, a proxy) follows the redirect there and knows when the
/// node named is one that just failed to answer.
#[derive(Clone, Debug)]
pub struct Answering<S> {
    inner: S,
    node: tonic::codegen::http::HeaderValue,
}

impl<S> Answering<S> {
    /// `inner`, its answers naming node `node_id`.
    pub fn new(node_id: u64, inner: S) -> Answering<S> {
        Answering { inner, node: tonic::codegen::http::HeaderValue::from(node_id) }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Answering<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Answering<S>
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<B>, Response = tonic::codegen::http::Response<R>>,
    S::Future: Unpin,
{
    type Response = tonic::codegen::http::Response<R>;
    type Error = S::Error;
    type Future = Naming<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        Naming { answer: self.inner.call(request), node: Some(self.node.clone()) }
    }
}

/// An [`Answering`] service's answer on its way: the inner service's, with
/// the node's header added when it comes (no allocation of its own on the
/// API's path; the services it wraps answer with boxed futures, which are
/// `Unpin`).
#[derive(Debug)]
pub struct Naming<F> {
    answer: F,
    node: Option<tonic::codegen::http::HeaderValue>,
}

impl<F, R, E> std::future::Future for Naming<F>
where
    F: std::future::Future<Output = Result<tonic::codegen::http::Response<R>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut response = std::task::ready!(Pin::new(&mut this.answer).poll(cx))?;
        if let Some(node) = this.node.take() {
            response.headers_mut().insert(paymesh_client::NODE_ID, node);
        }
        Poll::Ready(Ok(response))
    }
}
