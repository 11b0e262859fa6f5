//! Mutual TLS end to end: a real tonic server on loopback, configured by
//! `tls::server_tls`, serving the standard health service behind an
//! interceptor that asks `identity::identity_of` who is calling and records
//! the answer. Clients are configured by `tls::client_tls` from certificates
//! made by `tls::certs::generate`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paymesh_core::id::{PartnerId, RegionId};
use paymesh_node::identity::{identity_of, Identity, IDENTITY_METADATA};
use paymesh_node::tls::certs::{generate, CertSpec, DEFAULT_NODE_HOSTS};
use paymesh_node::tls::{client_tls, server_tls, TlsFiles};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server, ServerTlsConfig};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long a test client waits to connect, and for an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Issue certificates for node 1, partner paypal-us and operator ops of
/// us-west under a new CA in `dir`.
fn issue(dir: &Path) {
    let spec = CertSpec {
        region: RegionId::new("us-west").unwrap(),
        holders: ["node:us-west:1", "partner:paypal-us", "operator:ops"]
            .into_iter()
            .map(|text| Identity::parse(text).unwrap())
            .collect(),
        node_hosts: DEFAULT_NODE_HOSTS.iter().map(|h| h.to_string()).collect(),
    };
    generate(dir, &spec).unwrap();
}

/// The files of the holder whose files start with `stem`, trusting the CA in `dir`.
fn files(dir: &Path, stem: &str) -> TlsFiles {
    TlsFiles {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
        revoked: None,
    }
}

fn partner(id: &str) -> Identity {
    Identity::Partner(PartnerId::new(id).unwrap())
}

/// A health server that records the identity of every caller it lets in.
struct IdentifyingServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Identity>>>,
    _stop: oneshot::Sender<()>,
}

impl IdentifyingServer {
    /// Serve on 127.0.0.1 with `tls`, or in plaintext mode when `None`.
    async fn start(tls: Option<ServerTlsConfig>) -> IdentifyingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let plaintext = tls.is_none();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let service = InterceptedService::new(health, move |request: Request<()>| {
            let identity = identity_of(&request, plaintext)?;
            recorder.lock().unwrap().push(identity);
            Ok(request)
        });
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let server =
            builder.add_service(service).serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stopped.await;
            });
        tokio::spawn(server);
        IdentifyingServer { addr, seen, _stop: stop }
    }

    fn seen(&self) -> Vec<Identity> {
        self.seen.lock().unwrap().clone()
    }

    /// One health check over TLS (`tls`) or plaintext, with the identity
    /// metadata set to `claim` if given. Returns the serving status, or why
    /// the connection or the call failed.
    async fn check(&self, tls: Option<ClientTlsConfig>, claim: Option<&str>) -> Result<ServingStatus, String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.addr))
            .unwrap()
            .connect_timeout(CLIENT_TIMEOUT)
            .timeout(CLIENT_TIMEOUT);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
        let mut request = Request::new(HealthCheckRequest { service: String::new() });
        if let Some(claim) = claim {
            request.metadata_mut().insert(IDENTITY_METADATA, claim.parse().unwrap());
        }
        let response = HealthClient::new(channel).check(request).await.map_err(|s: Status| describe(&s))?;
        Ok(response.into_inner().status())
    }
}

fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// That the TLS layer refused the connection, before any handler (or
/// `identity_of`) could: connecting failed, or the first call failed as a
/// transport error rather than with a status from the server.
fn assert_refused_by_tls(outcome: Result<ServingStatus, String>) {
    match outcome {
        Err(e) if e.starts_with("connect:") || e.contains("transport error") => {}
        other => panic!("expected the TLS layer to refuse, got {other:?}"),
    }
}

#[tokio::test]
async fn a_partner_certificate_identifies_the_partner() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path());
    let server = IdentifyingServer::start(Some(server_tls(&files(dir.path(), "node-us-west-1")).unwrap())).await;
    let client = client_tls(&files(dir.path(), "partner-paypal-us"), "127.0.0.1").unwrap();
    assert_eq!(server.check(Some(client), None).await, Ok(ServingStatus::Serving));
    assert_eq!(server.seen(), [partner("paypal-us")]);
}

#[tokio::test]
async fn node_and_operator_certificates_identify_their_holders() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path());
    let server = IdentifyingServer::start(Some(server_tls(&files(dir.path(), "node-us-west-1")).unwrap())).await;
    // The server is verified by the host name in its certificate, here
    // `localhost`, while the connection goes to 127.0.0.1.
    let node = client_tls(&files(dir.path(), "node-us-west-1"), "localhost").unwrap();
    let operator = client_tls(&files(dir.path(), "operator-ops"), "127.0.0.1").unwrap();
    assert_eq!(server.check(Some(node), None).await, Ok(ServingStatus::Serving));
    assert_eq!(server.check(Some(operator), None).await, Ok(ServingStatus::Serving));
    let us_west = RegionId::new("us-west").unwrap();
    assert_eq!(server.seen(), [Identity::Node { region: us_west, node_id: 1 }, Identity::Operator("ops".into())]);
}

#[tokio::test]
async fn a_server_not_named_as_dialled_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path());
    let server = IdentifyingServer::start(Some(server_tls(&files(dir.path(), "node-us-west-1")).unwrap())).await;
    let client = client_tls(&files(dir.path(), "partner-paypal-us"), "node-9.example").unwrap();
    let refused = server.check(Some(client), None).await.unwrap_err();
    assert!(refused.contains("NotValidForName"), "{refused}");
    assert_eq!(server.seen(), []);
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path());
    let server = IdentifyingServer::start(Some(server_tls(&files(dir.path(), "node-us-west-1")).unwrap())).await;
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let anonymous = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("127.0.0.1");
    // Under TLS 1.3 the client finishes its handshake before the server has
    // judged its certificate, so the refusal may surface on the first call
    // rather than on connect; either way nothing reaches the service.
    assert_refused_by_tls(server.check(Some(anonymous), Some("partner:paypal-us")).await);
    assert_refused_by_tls(server.check(None, Some("partner:paypal-us")).await);
    assert_eq!(server.seen(), []);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    issue(ours.path());
    issue(theirs.path());
    let server = IdentifyingServer::start(Some(server_tls(&files(ours.path(), "node-us-west-1")).unwrap())).await;

    // Same holder name, same CA name, another CA key: the server refuses it.
    let impostor = TlsFiles { ca_cert: ours.path().join("ca.pem"), ..files(theirs.path(), "partner-paypal-us") };
    assert_refused_by_tls(server.check(Some(client_tls(&impostor, "127.0.0.1").unwrap()), None).await);

    // And a client trusting only the other CA refuses the server.
    let misled = TlsFiles { ca_cert: theirs.path().join("ca.pem"), ..files(ours.path(), "partner-paypal-us") };
    let refused = server.check(Some(client_tls(&misled, "127.0.0.1").unwrap()), None).await.unwrap_err();
    assert!(refused.contains("InvalidCertificate(BadSignature)"), "{refused}");
    assert_eq!(server.seen(), []);

    let genuine = client_tls(&files(ours.path(), "partner-paypal-us"), "127.0.0.1").unwrap();
    assert_eq!(server.check(Some(genuine), None).await, Ok(ServingStatus::Serving));
    assert_eq!(server.seen(), [partner("paypal-us")]);
}

#[tokio::test]
async fn with_tls_the_identity_metadata_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path());
    let server = IdentifyingServer::start(Some(server_tls(&files(dir.path(), "node-us-west-1")).unwrap())).await;
    let client = client_tls(&files(dir.path(), "partner-paypal-us"), "127.0.0.1").unwrap();
    assert_eq!(server.check(Some(client.clone()), Some("operator:ops")).await, Ok(ServingStatus::Serving));
    assert_eq!(server.check(Some(client), Some("partner:Not Valid")).await, Ok(ServingStatus::Serving));
    assert_eq!(server.seen(), [partner("paypal-us"), partner("paypal-us")]);
}

#[tokio::test]
async fn over_plaintext_the_identity_metadata_names_the_caller() {
    let server = IdentifyingServer::start(None).await;
    assert_eq!(server.check(None, Some("partner:gcash-ph")).await, Ok(ServingStatus::Serving));
    assert_eq!(server.check(None, Some("node:us-west:2")).await, Ok(ServingStatus::Serving));

    let missing = server.check(None, None).await.unwrap_err();
    assert!(missing.starts_with(&format!("{:?}", Code::Unauthenticated)), "{missing}");
    assert!(missing.contains("no x-paymesh-identity"), "{missing}");
    let malformed = server.check(None, Some("partner:PayPal")).await.unwrap_err();
    assert!(malformed.starts_with(&format!("{:?}", Code::Unauthenticated)), "{malformed}");
    assert!(malformed.contains("invalid partner id"), "{malformed}");

    let us_west = RegionId::new("us-west").unwrap();
    assert_eq!(server.seen(), [partner("gcash-ph"), Identity::Node { region: us_west, node_id: 2 }]);
}
