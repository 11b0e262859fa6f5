//! A user-space WAN between regions on one machine: TCP proxies that add
//! delay, jitter and loss to the inter-region links, and can cut them.
//!
//! This kernel has no netem, so each inter-region endpoint is reached
//! through a proxy on loopback. Every chunk of bytes read is released to the
//! other side after the one-way delay plus a random jitter, in order (a
//! chunk never overtakes the one before it, as on one TCP stream). Loss is
//! what TCP makes of it: a lost segment is retransmitted after a timeout, so
//! a "lost" chunk is released [`RETRANSMIT_DELAY`] later, and so is
//! everything behind it. A cut is a black hole: bytes are dropped and
//! nothing answers, as in a real partition (callers time out, they are not
//! refused); when the cut heals, connections that lost bytes are closed, as
//! their streams can no longer be trusted, and callers reconnect.
//!
//! Settings are per link (a pair of regions, both directions) and take
//! effect at once, also on open connections.
//!
//! The proxies run on a thread of their own (one for all links, started on
//! first use), not on the caller's runtime: a benchmark's load generator
//! shares that runtime, and a link's delay must not stretch while its
//! tasks wait for the generator's.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long a lost chunk waits for its retransmission.
pub const RETRANSMIT_DELAY: Duration = Duration::from_millis(200);

/// Bytes read at once.
const CHUNK_BYTES: usize = 16 * 1024;

/// Chunks queued per direction of one connection before reading pauses.
const CHUNKS_QUEUED_MAX: usize = 1_024;

/// The conditions on one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WanSettings {
    /// One-way delay, in milliseconds (the round trip is twice this).
    pub delay_ms: u64,
    /// Up to this much more delay per chunk, uniformly, in milliseconds.
    pub jitter_ms: u64,
    /// Chance per thousand that a chunk is lost (and retransmitted).
    pub loss_permille: u32,
    /// The link is cut: nothing gets through.
    pub cut: bool,
}

/// A link's controls, shared by its proxies.
#[derive(Clone, Debug)]
pub struct WanLink {
    settings: watch::Sender<WanSettings>,
}

impl WanLink {
    /// A link with `settings`.
    pub fn new(settings: WanSettings) -> WanLink {
        WanLink { settings: watch::Sender::new(settings) }
    }

    /// Change the conditions, at once.
    pub fn set(&self, settings: WanSettings) {
        self.settings.send_replace(settings);
    }

    /// Change the conditions with `change`.
    pub fn update(&self, change: impl FnOnce(&mut WanSettings)) {
        self.settings.send_modify(change);
    }

    /// The conditions now.
    pub fn get(&self) -> WanSettings {
        *self.settings.borrow()
    }

    /// Proxy a new loopback port to `upstream` under this link's conditions;
    /// the port's address. The proxy runs until `tasks` is dropped.
    pub async fn proxy(&self, upstream: String, tasks: &mut JoinSet<()>) -> std::io::Result<String> {
        self.proxy_at("127.0.0.1:0", upstream, tasks).await
    }

    /// As [`WanLink::proxy`], listening at `listen` (`host:port`).
    pub async fn proxy_at(&self, listen: &str, upstream: String, tasks: &mut JoinSet<()>) -> std::io::Result<String> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let settings = self.settings.subscribe();
        // Registered with the proxies' runtime, inside it.
        tasks.spawn_on(
            async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => accept(listener, upstream, settings).await,
                    Err(e) => eprintln!("WAN proxy for {upstream}: {e}"),
                }
            },
            proxy_runtime()?,
        );
        Ok(addr)
    }
}

/// The runtime every proxy runs on: one thread, started on first use, for
/// the life of the process.
fn proxy_runtime() -> std::io::Result<&'static tokio::runtime::Handle> {
    static HANDLE: std::sync::OnceLock<Result<tokio::runtime::Handle, String>> = std::sync::OnceLock::new();
    let start = || -> std::io::Result<tokio::runtime::Handle> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("wan-proxies".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(handle)
    };
    match HANDLE.get_or_init(|| start().map_err(|e| e.to_string())) {
        Ok(handle) => Ok(handle),
        Err(e) => Err(std::io::Error::other(format!("starting the WAN proxies' thread: {e}"))),
    }
}

async fn accept(listener: TcpListener, upstream: String, settings: watch::Receiver<WanSettings>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                connections.spawn(connection(client, upstream.clone(), settings.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One proxied connection: dialled only when the link is not cut (a cut
/// link accepts and then says nothing until it heals, when the connection is
/// closed).
async fn connection(client: TcpStream, upstream: String, mut settings: watch::Receiver<WanSettings>) {
    if settings.borrow().cut {
        let _ = settings.wait_for(|s| !s.cut).await;
        return;
    }
    let Ok(server) = TcpStream::connect(&upstream).await else { return };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let damaged = Arc::new(tokio::sync::Notify::new());
    tokio::select! {
        () = pump(client_read, server_write, settings.clone(), damaged.clone()) => {}
        () = pump(server_read, client_write, settings.clone(), damaged.clone()) => {}
        () = damaged.notified() => {}
    }
}

/// Carry bytes one way, released at their due times; returns when either
/// side closes, or when a cut that lost bytes heals.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    settings: watch::Receiver<WanSettings>,
    damaged: Arc<tokio::sync::Notify>,
) {
    let (queue, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_QUEUED_MAX);
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut last_due = Instant::now();
        let mut lost_bytes = false;
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let read = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let now = *settings.borrow();
            if now.cut {
                lost_bytes = true;
                continue;
            }
            if lost_bytes {
                // The cut healed, but this stream lost bytes on the way.
                damaged.notify_one();
                return;
            }
            let delay = {
                let mut rng = rand::rng();
                let mut delay = Duration::from_millis(now.delay_ms);
                if now.jitter_ms > 0 {
                    delay += Duration::from_millis(rng.random_range(0..=now.jitter_ms));
                }
                if now.loss_permille > 0 && rng.random_range(0..1000) < now.loss_permille {
                    delay += RETRANSMIT_DELAY;
                }
                delay
            };
            last_due = last_due.max(Instant::now() + delay);
            if queue.send((last_due, buffer[..read].to_vec())).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(writer, reader);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; its address.
    async fn echo(tasks: &mut JoinSet<()>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tasks.spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, byte: u8) -> std::io::Result<Duration> {
        let started = Instant::now();
        stream.write_all(&[byte]).await?;
        let mut answer = [0u8; 1];
        let n = stream.read(&mut answer).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        assert_eq!(answer[0], byte, "bytes arrive unchanged and in order");
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn delay_applies_both_ways_and_a_cut_is_a_black_hole_until_it_heals() {
        let mut tasks = JoinSet::new();
        let upstream = echo(&mut tasks).await;
        let link = WanLink::new(WanSettings { delay_ms: 40, ..WanSettings::default() });
        let proxy = link.proxy(upstream, &mut tasks).await.unwrap();
        let mut stream = TcpStream::connect(&proxy).await.unwrap();
        let rtt = round_trip(&mut stream, 1).await.unwrap();
        assert!(rtt >= Duration::from_millis(80), "a 40 ms one-way delay gives at least 80 ms: {rtt:?}");

        // Cut: nothing comes back (the read times out, nothing is refused).
        link.update(|s| s.cut = true);
        stream.write_all(&[2]).await.unwrap();
        let mut answer = [0u8; 1];
        let silent = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut answer)).await;
        assert!(silent.is_err(), "a cut link answers nothing: {silent:?}");

        // Healed: the damaged connection is closed; a new one works.
        link.set(WanSettings::default());
        let damaged = round_trip(&mut stream, 3).await;
        assert!(damaged.is_err(), "a connection that lost bytes is closed after the cut: {damaged:?}");
        let mut fresh = TcpStream::connect(&proxy).await.unwrap();
        assert!(round_trip(&mut fresh, 4).await.unwrap() < Duration::from_millis(80));
    }

    #[tokio::test]
    async fn loss_delays_by_a_retransmission() {
        let mut tasks = JoinSet::new();
        let upstream = echo(&mut tasks).await;
        let link = WanLink::new(WanSettings { loss_permille: 1000, ..WanSettings::default() });
        let proxy = link.proxy(upstream, &mut tasks).await.unwrap();
        let mut stream = TcpStream::connect(&proxy).await.unwrap();
        let rtt = round_trip(&mut stream, 7).await.unwrap();
        assert!(rtt >= 2 * RETRANSMIT_DELAY, "every chunk lost once, both ways: {rtt:?}");
    }
}
