//! Webhook receivers for tests: HTTPS servers on loopback whose behaviour a
//! test sets (accept, fail with a status, never answer) and which keep
//! every request they got.
//!
//! [`ReceiverCa`] is a CA of the receivers' own (as a partner's private CA
//! would be): the nodes trust it through `[webhooks] ca_cert`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use paymesh_client::webhook::{verify, WebhookEvent};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The longest a hanging receiver holds a request before it lets go (every
/// wait in the harness is bounded).
const HANG_MAX: Duration = Duration::from_secs(600);

/// What a receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 OK.
    Accept,
    /// This status, with an empty body.
    Fail(u16),
    /// Nothing: the request is read and never answered.
    Hang,
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// When it arrived, Unix milliseconds.
    pub at_unix_ms: u64,
    /// Its `Paymesh-Signature` header (empty without one).
    pub signature: String,
    /// Its body.
    pub body: Vec<u8>,
    /// What it was answered (0 when it was not).
    pub status: u16,
}

/// The receivers' CA.
pub struct ReceiverCa {
    issuer: Issuer<'static, KeyPair>,
    ca_file: PathBuf,
}

impl std::fmt::Debug for ReceiverCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverCa").field("ca_file", &self.ca_file).finish_non_exhaustive()
    }
}

impl ReceiverCa {
    /// A new CA, its certificate written to `dir/webhook-ca.pem`.
    pub fn new(dir: &Path) -> anyhow::Result<ReceiverCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(rcgen::DnType::CommonName, "paymesh test webhook receivers");
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join("webhook-ca.pem");
        std::fs::write(&ca_file, cert.pem()).with_context(|| format!("writing {}", ca_file.display()))?;
        Ok(ReceiverCa { issuer: Issuer::new(params, key), ca_file })
    }

    /// The CA certificate's file, for the nodes' `[webhooks] ca_cert`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A node configuration's `[webhooks]` section trusting this CA, with
    /// `settings` (more lines of the section, or nothing).
    pub fn node_config(&self, settings: &str) -> String {
        format!("[webhooks]\nca_cert = \"{}\"\n{settings}\n", self.ca_file.display())
    }

    /// Start a receiver on a free loopback port, answering with `behaviour`.
    pub async fn receiver(&self, behaviour: Behaviour) -> anyhow::Result<Receiver> {
        let key = KeyPair::generate()?;
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { behaviour: Mutex::new(behaviour), received: Mutex::new(Vec::new()) });
        let mut tasks = JoinSet::new();
        let state = shared.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let service = hyper::service::service_fn(move |request| answer(state.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Receiver { addr, shared, _tasks: tasks })
    }
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
}

async fn answer(state: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let at = Instant::now();
    let at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let signature =
        request.headers().get("paymesh-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = request.into_body().collect().await?.to_bytes().to_vec();
    let behaviour = *state.behaviour.lock().unwrap_or_else(|p| p.into_inner());
    let status = match behaviour {
        Behaviour::Accept => 200,
        Behaviour::Fail(status) => status,
        Behaviour::Hang => 0,
    };
    state.received.lock().unwrap_or_else(|p| p.into_inner()).push(Received { at, at_unix_ms, signature, body, status });
    if behaviour == Behaviour::Hang {
        tokio::time::sleep(HANG_MAX).await;
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(status.max(200)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok(response)
}

/// A running receiver; stopped when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _tasks: JoinSet<()>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Receiver {
    /// Its URL, `https://localhost:<port>/paymesh`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/paymesh", self.addr.port())
    }

    /// Answer from now on with `behaviour`.
    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap_or_else(|p| p.into_inner()) = behaviour;
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The requests answered 2xx so far, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| (200..300).contains(&r.status)).collect()
    }

    /// The events of every delivery accepted so far, in arrival order
    /// (repeats included), each with its delivery's arrival in Unix
    /// milliseconds; a delivery is counted, not read, unless it verifies
    /// with one of `secrets` at its arrival within `tolerance_ms`. The
    /// events, and how many deliveries did not verify.
    pub fn events(&self, secrets: &[&str], tolerance_ms: u64) -> (Vec<(u64, WebhookEvent)>, usize) {
        let (mut events, mut bad) = (Vec::new(), 0);
        for received in self.accepted() {
            let arrived = received.at_unix_ms;
            match verify(secrets.iter().copied(), &received.signature, &received.body, arrived, tolerance_ms) {
                Ok(delivery) => events.extend(delivery.events.into_iter().map(|e| (arrived, e))),
                Err(_) => bad += 1,
            }
        }
        (events, bad)
    }
}
