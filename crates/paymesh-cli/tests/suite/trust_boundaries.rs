//! Trust boundaries of a region of real processes over mutual TLS: who may
//! write what. Each test makes the call an attacker holding one of the
//! region's certificates would make and checks both the refusal and that
//! the replicated state did not move (every replica's digest and applied
//! index are what they were before the call).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::Region;
use paymesh_client::ClientError;
use paymesh_core::command::{Command, CommandBody, CommandId, Decision};
use paymesh_core::id::{PartnerId, RegionId, TopUpRef, TransferId};
use paymesh_core::partner::{PartnerConfig, PartnerRole};
use paymesh_core::{Currency, Money};
use paymesh_node::identity::Identity;
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::admin::v1::cluster_service_client::ClusterServiceClient;
use paymesh_proto::partner::v1 as partner_api;
use paymesh_proto::raft::v1 as raft_wire;
use paymesh_proto::raft::v1::raft_service_client::RaftServiceClient;
use tonic::codegen::http::uri::PathAndQuery;

/// The request of the raw proposal RPC that earlier builds served, spelled
/// out here so the test keeps sending it after the RPC left the contract.
#[derive(Clone, PartialEq, prost::Message)]
struct RawProposeRequest {
    #[prost(uint64, tag = "1")]
    group_id: u64,
    #[prost(bytes = "vec", tag = "2")]
    commands: Vec<u8>,
    #[prost(bool, tag = "3")]
    forwarded: bool,
}

/// Its response (only decoded if a node wrongly accepts the call).
#[derive(Clone, PartialEq, prost::Message)]
struct RawProposeResponse {
    #[prost(uint64, tag = "1")]
    log_index: u64,
}

const RAW_PROPOSE: &str = "/paymesh.admin.v1.ClusterService/Propose";

/// Commands no caller outside the region's own write path may write: a new
/// partner, a top-up with no audit line, a decision and an acknowledgement
/// for a transfer that never existed, all under ids the caller picked (the
/// session 1 and low sequences any proposer session might be using).
fn forged_commands() -> Vec<Command> {
    let region = RegionId::new(common::REGION).unwrap();
    let partner = PartnerId::new("forged-wallet").unwrap();
    let transfer = TransferId::new(region.clone(), 7);
    let bodies = vec![
        CommandBody::UpsertPartner(PartnerConfig {
            id: partner.clone(),
            region: region.clone(),
            role: PartnerRole::Payer,
            currency: Currency::USD,
            net_debit_cap: Money::from_units(1_000_000, Currency::USD).unwrap(),
        }),
        CommandBody::TopUp {
            partner,
            amount: Money::from_units(500_000, Currency::USD).unwrap(),
            reference: TopUpRef::new("forged-wire").unwrap(),
        },
        CommandBody::Decide { transfer: transfer.clone(), decision: Decision::Commit },
        CommandBody::DecisionAcked { region, transfer },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(n, body)| Command { id: CommandId { session: 1, sequence: n as u64 + 1 }, body })
        .collect()
}

/// Send the raw proposal to the node at `addr` as `stem`; the status if it
/// was refused, or the log index it was written at.
async fn raw_propose(region: &Region, stem: &str, addr: &str) -> Result<u64, tonic::Status> {
    let sdk = region.sdk(stem).unwrap();
    let mut grpc = tonic::client::Grpc::new(sdk.channel(addr)?);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request =
        RawProposeRequest { group_id: 0, commands: paymesh_node::codec::encode(&forged_commands()), forwarded: false };
    let codec: tonic_prost::ProstCodec<RawProposeRequest, RawProposeResponse> = tonic_prost::ProstCodec::default();
    let response = grpc.unary(tonic::Request::new(request), PathAndQuery::from_static(RAW_PROPOSE), codec).await?;
    Ok(response.into_inner().log_index)
}

/// Every replica's (node, applied index, digest), once they agree.
async fn books(region: &Region) -> Vec<(u64, Option<u64>, Vec<u8>)> {
    let statuses = region.wait_converged(Duration::from_secs(30)).await;
    statuses.into_iter().map(|s| (s.node_id, s.applied_index, s.state_digest)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_can_write_raw_commands_into_the_log() {
    let region = Region::start(3, "");
    let leader = region.initialize(1).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let before = books(&region).await;

    let node_stem = Identity::Node { region: RegionId::new(common::REGION).unwrap(), node_id: follower }.file_stem();
    let callers = [("the operator", region.operator_stem()), ("a node of the region", node_stem)];
    for (who, stem) in &callers {
        for target in [leader, follower] {
            let addr = region.nodes[&target].api_addr.clone();
            match raw_propose(&region, stem, &addr).await {
                Ok(index) => panic!("{who} wrote forged commands at log index {index} through node {target}"),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unimplemented, "{who} through node {target}: {status:?}")
                }
            }
        }
    }
    // Nothing moved: the same applied index and digest on every replica.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(books(&region).await, before, "a refused raw proposal changed the replicated state");
}

/// Set a partner's status through the admin API.
async fn set_status(region: &Region, partner: &str, status: admin::PartnerStatus) {
    let request = admin::SetPartnerStatusRequest { partner_id: partner.into(), status: status as i32 };
    let response = region
        .admin(|mut c| {
            let request = request.clone();
            async move { c.set_partner_status(request).await }
        })
        .await;
    assert_eq!(response.reject_code, 0, "{response:?}");
}

/// The status a partner call was refused with; panics if it was answered.
fn refusal<T: std::fmt::Debug>(what: &str, answer: Result<T, ClientError>) -> tonic::Status {
    match answer {
        Err(ClientError::Refused(status)) => status,
        other => panic!("{what} was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_partner_is_refused_on_every_call_reads_and_streams_included() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    let partner = "wallet-a";
    region.upsert_partner(partner, admin::PartnerRole::Payer, "0").await;
    let client = region.partner(partner);
    client.get_position(partner_api::GetPositionRequest::default()).await.expect("an active partner reads");
    let mut open = client.stream_events(0).await.expect("an active partner streams");

    set_status(&region, partner, admin::PartnerStatus::Suspended).await;
    let transfer = partner_api::GetTransferRequest { transfer_id: "us-west:1".into() };
    let refusals = [
        ("GetTransfer", refusal("a suspended partner's GetTransfer", client.get_transfer(transfer).await)),
        (
            "ListTransfers",
            refusal("a suspended partner's ListTransfers", client.list_transfers(Default::default()).await),
        ),
        ("GetPosition", refusal("a suspended partner's GetPosition", client.get_position(Default::default()).await)),
        ("StreamEvents", refusal("a suspended partner's StreamEvents", client.stream_events(0).await.map(|_| ()))),
    ];
    for (call, status) in refusals {
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{call}: {status:?}");
        assert!(status.message().starts_with("PartnerSuspended"), "{call}: {status:?}");
    }
    // The stream opened before the suspension ends too.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match open.message().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the open stream of a suspended partner ends");
    assert!(ended.is_err() || ended.as_ref().is_ok_and(Option::is_none), "{ended:?}");

    // Reactivated, it is served again.
    set_status(&region, partner, admin::PartnerStatus::Active).await;
    client.get_position(Default::default()).await.expect("a reactivated partner reads again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_holds_a_bounded_number_of_event_streams() {
    let limit = paymesh_node::config::LimitSettings::default().event_streams_per_partner_max;
    let region = Region::start(3, "");
    region.initialize(1).await;
    let partner = "wallet-a";
    region.upsert_partner(partner, admin::PartnerRole::Payer, "0").await;
    let client = region.partner(partner);
    let mut open = Vec::new();
    for n in 0..limit {
        open.push(client.stream_events(0).await.unwrap_or_else(|e| panic!("stream {n} of {limit}: {e}")));
    }
    let status = refusal("the stream beyond the limit", client.stream_events(0).await.map(|_| ()));
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("event streams"), "{status:?}");
    // Another partner is not charged for this one's streams.
    let other = region.partner("wallet-b");
    region.upsert_partner("wallet-b", admin::PartnerRole::Payer, "0").await;
    other.stream_events(0).await.expect("another partner streams");
    // A closed stream frees its place.
    drop(open.pop());
    let reopened = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.stream_events(0).await {
                Ok(stream) => break stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert!(reopened.is_ok(), "a closed stream's place was not freed");
}

/// Ask node `to` for its vote as node `from`, presenting `from`'s
/// certificate; the status if the call was refused. The request is for term
/// 0, which no node grants, so it cannot disturb the region either way.
async fn ask_vote(region: &Region, from: u64, to: u64) -> Result<(), tonic::Status> {
    let stem = Identity::Node { region: RegionId::new(common::REGION).unwrap(), node_id: from }.file_stem();
    let sdk = region.sdk(&stem).unwrap();
    let mut raft = RaftServiceClient::new(sdk.channel(&region.nodes[&to].raft_addr)?);
    let vote = openraft::raft::VoteRequest::<u64> { vote: openraft::Vote::new(0, from), last_log_id: None };
    let request = raft_wire::VoteRequest { group_id: 0, payload: paymesh_node::codec::encode(&vote) };
    raft.vote(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_certificate_no_longer_speaks_for_the_region() {
    let mut region = Region::start(3, "");
    region.initialize(1).await;
    ask_vote(&region, 3, 1).await.expect("a member's Raft call is served");
    region.client().remove_node(3).await.unwrap();
    // The process goes; its certificate, still valid, stays in a thief's hands.
    region.kill(3);
    region.wait_converged(Duration::from_secs(30)).await;
    for to in [1, 2] {
        let status = ask_vote(&region, 3, to).await.expect_err("a removed node's Vote must be refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "to node {to}: {status:?}");
        assert!(status.message().contains("removed"), "{status:?}");
        ask_vote(&region, if to == 1 { 2 } else { 1 }, to).await.expect("a member is still served");
    }
    // Its cluster calls are refused too.
    let stem = Identity::Node { region: RegionId::new(common::REGION).unwrap(), node_id: 3 }.file_stem();
    let sdk = region.sdk(&stem).unwrap();
    let mut cluster = ClusterServiceClient::new(sdk.channel(&region.nodes[&1].api_addr).unwrap());
    let status = cluster.get_node_status(admin::GetNodeStatusRequest { with_digest: false }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

/// Open a snapshot stream to node `to` as node `from` and send its first
/// chunk (term 0: no node installs it); the stream stays open until the
/// returned sender is dropped, and the handle answers once it ends.
fn send_snapshot(
    region: &Region,
    from: u64,
    to: u64,
) -> (tokio::sync::mpsc::Sender<raft_wire::SnapshotChunk>, tokio::task::JoinHandle<tonic::Status>) {
    let stem = Identity::Node { region: RegionId::new(common::REGION).unwrap(), node_id: from }.file_stem();
    let sdk = region.sdk(&stem).unwrap();
    let mut raft = RaftServiceClient::new(sdk.channel(&region.nodes[&to].raft_addr).unwrap());
    let (chunks, stream) = tokio::sync::mpsc::channel(4);
    let first = raft_wire::SnapshotChunk {
        group_id: 0,
        vote: paymesh_node::codec::encode(&openraft::Vote::<u64>::new(0, from)),
        meta: paymesh_node::codec::encode(&paymesh_store::raft_types::SnapshotMeta::default()),
        offset: 0,
        data: vec![7; 1024],
        done: false,
    };
    chunks.try_send(first).unwrap();
    let answer = tokio::spawn(async move {
        raft.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
            .expect_err("an unfinished snapshot is refused")
    });
    (chunks, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holds_one_received_snapshot_at_a_time() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    // A stream that stays open holds the node's one place.
    let (open, first) = send_snapshot(&region, 2, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (second_chunks, second) = send_snapshot(&region, 3, 1);
    drop(second_chunks);
    let status = second.await.unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("being received"), "{status:?}");
    // Once the first ends (incomplete, so discarded), the place is free.
    drop(open);
    let status = first.await.unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let (third_chunks, third) = send_snapshot(&region, 3, 1);
    drop(third_chunks);
    let status = third.await.unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ended before its last chunk"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_describes_only_what_partners_may_call() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let region = Region::start(1, "");
    region.initialize(1).await;
    let sdk = region.sdk("partner-wallet-a").unwrap();
    let mut reflection = ServerReflectionClient::new(sdk.channel(&region.nodes[&1].api_addr).unwrap());
    let ask = |request: MessageRequest| {
        futures::stream::iter([ServerReflectionRequest { host: String::new(), message_request: Some(request) }])
    };
    let mut answers =
        reflection.server_reflection_info(ask(MessageRequest::ListServices(String::new()))).await.unwrap().into_inner();
    let services = match answers.message().await.unwrap().and_then(|r| r.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(services, ["paymesh.partner.v1.PartnerService"]);
    // The operator's and the nodes' services are not described either.
    for symbol in ["paymesh.admin.v1.AdminService", "paymesh.admin.v1.ClusterService", "paymesh.raft.v1.RaftService"] {
        let mut answers = reflection
            .server_reflection_info(ask(MessageRequest::FileContainingSymbol(symbol.into())))
            .await
            .unwrap()
            .into_inner();
        match answers.message().await {
            Err(status) => assert_eq!(status.code(), tonic::Code::NotFound, "{symbol}: {status:?}"),
            Ok(answer) => {
                let answer = answer.and_then(|r| r.message_response);
                assert!(matches!(answer, Some(MessageResponse::ErrorResponse(_))), "{symbol}: {answer:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_after_a_reload_without_a_restart() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    for partner in ["wallet-a", "wallet-b"] {
        region.upsert_partner(partner, admin::PartnerRole::Payer, "0").await;
    }
    let (a, b) = (region.partner("wallet-a"), region.partner("wallet-b"));
    a.get_position(Default::default()).await.expect("wallet-a reads before the revocation");
    let pids: Vec<u32> = region.nodes.values().filter_map(|n| n.child.as_ref().map(|c| c.id())).collect();

    region.revoke("partner-wallet-a").unwrap();
    for id in 1..=3 {
        region.hangup(id).unwrap();
    }
    // The same connection (opened before the revocation) and new ones alike.
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match a.get_position(Default::default()).await {
                Err(ClientError::Refused(status)) => break status,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the revoked certificate is refused within 10 s of the reload");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    let fresh = region.partner("wallet-a");
    let status = refusal("a revoked certificate's call", fresh.get_position(Default::default()).await);
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    b.get_position(Default::default()).await.expect("another partner is unaffected");
    let after: Vec<u32> = region.nodes.values().filter_map(|n| n.child.as_ref().map(|c| c.id())).collect();
    assert_eq!(pids, after, "no node restarted");
}

/// The certificate node `id` presents to a new connection now: a TLS
/// handshake as `partner-wallet-a`, trusting the CAs in `ca_file`.
async fn served_certificate(region: &Region, id: u64, ca_file: &std::path::Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let pem_blocks = |path: &std::path::Path| {
        let pem = std::fs::read(path).unwrap();
        x509_parser::pem::Pem::iter_from_buffer(&pem).map(|b| b.unwrap()).collect::<Vec<_>>()
    };
    let mut roots = rustls::RootCertStore::empty();
    for block in pem_blocks(ca_file) {
        roots.add(CertificateDer::from(block.contents)).unwrap();
    }
    let [_, cert, key] = region.cert_files("partner-wallet-a");
    let chain = pem_blocks(&cert).into_iter().map(|b| CertificateDer::from(b.contents)).collect();
    let key = PrivateKeyDer::Pkcs8(pem_blocks(&key).remove(0).contents.into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&region.nodes[&id].api_addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let served = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    served.ok_or_else(|| "no certificate".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_and_a_new_ca_take_effect_on_sighup_without_a_restart() {
    use paymesh_node::tls::certs::{generate, CertSpec};

    let region = Region::start(3, "");
    region.initialize(1).await;
    for partner in ["wallet-a", "wallet-b"] {
        region.upsert_partner(partner, admin::PartnerRole::Payer, "0").await;
    }
    let certs = region.ca_file().parent().unwrap().to_path_buf();
    let first_der = |path: &std::path::Path| {
        let pem = std::fs::read(path).unwrap();
        x509_parser::pem::Pem::iter_from_buffer(&pem).next().unwrap().unwrap().contents
    };
    let pids: Vec<u32> = region.nodes.values().filter_map(|n| n.child.as_ref().map(|c| c.id())).collect();
    let before = served_certificate(&region, 1, &region.ca_file()).await.unwrap();
    assert_eq!(before, first_der(&certs.join("node-us-west-1.pem")));

    // A new certificate for node 1 from the same CA, and a new CA (the
    // rollover's) with a partner certificate of its own.
    let renewed = tempfile::tempdir().unwrap();
    for file in ["ca.pem", "ca.key"] {
        std::fs::copy(certs.join(file), renewed.path().join(file)).unwrap();
    }
    let us_west = RegionId::new(common::REGION).unwrap();
    let node_1 = Identity::Node { region: us_west.clone(), node_id: 1 };
    let hosts = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    generate(renewed.path(), &CertSpec { region: us_west.clone(), holders: vec![node_1], node_hosts: hosts.clone() })
        .unwrap();
    let new_ca = tempfile::tempdir().unwrap();
    let wallet = Identity::partner("wallet-a").unwrap();
    generate(new_ca.path(), &CertSpec { region: us_west, holders: vec![wallet], node_hosts: hosts }).unwrap();
    let new_partner = |trust: &std::path::Path| {
        paymesh_client::Credentials::from_files(
            trust,
            &new_ca.path().join("partner-wallet-a.pem"),
            &new_ca.path().join("partner-wallet-a.key"),
        )
        .unwrap()
    };
    let policy = paymesh_client::RetryPolicy { attempts: 2, deadline: Duration::from_secs(5) };
    let node_1_only = vec![region.nodes[&1].api_addr.clone()];
    let client = paymesh_client::PartnerClient::new(paymesh_client::Region::with_policy(
        node_1_only.clone(),
        new_partner(&region.ca_file()),
        policy,
    ));
    let status = match client.get_position(Default::default()).await {
        Err(e) => e.to_string(),
        Ok(answer) => panic!("a certificate of a CA the region does not trust yet was served: {answer:?}"),
    };

    // The rollover: both CAs in the CA file; node 1's new certificate; SIGHUP.
    let mut both = std::fs::read(region.ca_file()).unwrap();
    both.extend_from_slice(&std::fs::read(new_ca.path().join("ca.pem")).unwrap());
    std::fs::write(region.ca_file(), &both).unwrap();
    for file in ["node-us-west-1.pem", "node-us-west-1.key"] {
        std::fs::copy(renewed.path().join(file), certs.join(file)).unwrap();
    }
    region.hangup(1).unwrap();
    let rotated = first_der(&certs.join("node-us-west-1.pem"));
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match served_certificate(&region, 1, &region.ca_file()).await {
                Ok(served) if served == rotated => break served,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(served.is_ok(), "node 1 still presents its old certificate after SIGHUP (before: {status})");
    // The new CA's partner is served now (node 1 reloaded); so is the old
    // CA's.
    let client = paymesh_client::PartnerClient::new(paymesh_client::Region::with_policy(
        node_1_only,
        new_partner(&region.ca_file()),
        policy,
    ));
    client.get_position(Default::default()).await.expect("the new CA's partner certificate is served after SIGHUP");
    region.partner("wallet-b").get_position(Default::default()).await.expect("the old CA's certificate still works");
    let after: Vec<u32> = region.nodes.values().filter_map(|n| n.child.as_ref().map(|c| c.id())).collect();
    assert_eq!(pids, after, "no node restarted");
}

/// Whether node `id` accepts a new connection from `credentials` (a status
/// call on a fresh channel, not retried).
async fn accepts(region: &Region, id: u64, credentials: paymesh_client::Credentials) -> bool {
    let addr = region.nodes[&id].api_addr.clone();
    let policy = paymesh_client::RetryPolicy { attempts: 1, deadline: Duration::from_secs(5) };
    let client = paymesh_node::cluster_client::ClusterClient::with_credentials(vec![addr.clone()], credentials, policy);
    client.status(&addr, false).await.is_ok()
}

/// Wait up to 10 s for `check` to hold; panics with `what` otherwise.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A whole CA rollover with SIGHUPs alone: every node's certificate reissued
/// by a new CA, trusted next to the old one for a while, then alone. The
/// connections a node dials afterwards (Raft to a restarted peer) present its
/// new certificate and trust the new CA: the leader still replicates to
/// peers that, restarted, know nothing of the old CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dials_with_its_reloaded_certificate_and_ca_after_a_ca_rollover() {
    use paymesh_node::tls::certs::{generate, CertSpec};

    let mut region = Region::start(3, "");
    region.initialize(1).await;
    // Node 1 is to lead, so that it is the one dialing its restarted peers.
    for _ in 0..10 {
        let leader = region.wait_leader(Duration::from_secs(20)).await;
        if leader == 1 {
            break;
        }
        region.terminate(leader);
        region.wait_leader(Duration::from_secs(20)).await;
        region.spawn(leader);
        region.wait_converged(Duration::from_secs(20)).await;
    }
    assert_eq!(region.wait_leader(Duration::from_secs(20)).await, 1, "node 1 never led");
    let writer = common::Writer::through(&region, &[1]);
    writer.partner().await;
    writer.top_up("before-rollover", 1).await.unwrap();
    region.wait_converged(Duration::from_secs(20)).await;

    let certs = region.ca_file().parent().unwrap().to_path_buf();
    let first_der = |path: &std::path::Path| {
        let pem = std::fs::read(path).unwrap();
        x509_parser::pem::Pem::iter_from_buffer(&pem).next().unwrap().unwrap().contents
    };
    let old_ca = std::fs::read(region.ca_file()).unwrap();
    let old_operator = region.credentials(&region.operator_stem());
    // The new CA, with a certificate for every node and the operator.
    let new = tempfile::tempdir().unwrap();
    let us_west = RegionId::new(common::REGION).unwrap();
    let mut holders: Vec<Identity> =
        (1..=3).map(|node_id| Identity::Node { region: us_west.clone(), node_id }).collect();
    holders.push(Identity::operator("tests").unwrap());
    let hosts = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    generate(new.path(), &CertSpec { region: us_west, holders, node_hosts: hosts }).unwrap();
    let new_ca = std::fs::read(new.path().join("ca.pem")).unwrap();
    let both = [old_ca.clone(), new_ca.clone()].concat();
    let new_operator = |trust: &[u8]| {
        let read = |file: &str| std::fs::read(new.path().join(file)).unwrap();
        paymesh_client::Credentials::Tls {
            ca: trust.to_vec(),
            cert: read("operator-tests.pem"),
            key: read("operator-tests.key"),
        }
    };

    // 1. Both CAs trusted.
    std::fs::write(region.ca_file(), &both).unwrap();
    for id in 1..=3 {
        region.hangup(id).unwrap();
    }
    for id in 1..=3 {
        eventually(&format!("node {id} trusts the new CA"), || accepts(&region, id, new_operator(&old_ca))).await;
    }
    // 2. Every node's new certificate.
    for id in 1..=3 {
        for ext in ["pem", "key"] {
            let file = format!("node-us-west-{id}.{ext}");
            std::fs::copy(new.path().join(&file), certs.join(&file)).unwrap();
        }
        region.hangup(id).unwrap();
    }
    for id in 1..=3 {
        let renewed = first_der(&new.path().join(format!("node-us-west-{id}.pem")));
        eventually(&format!("node {id} presents its new certificate"), || async {
            served_certificate(&region, id, &region.ca_file()).await.is_ok_and(|served| served == renewed)
        })
        .await;
    }
    // 3. The old CA no longer trusted; the operator's certificate is the new
    // CA's from here on.
    std::fs::write(region.ca_file(), &new_ca).unwrap();
    for ext in ["pem", "key"] {
        let file = format!("operator-tests.{ext}");
        std::fs::copy(new.path().join(&file), certs.join(&file)).unwrap();
    }
    for id in 1..=3 {
        region.hangup(id).unwrap();
    }
    for id in 1..=3 {
        let old = || {
            let mut old = old_operator.clone();
            if let paymesh_client::Credentials::Tls { ca, .. } = &mut old {
                *ca = both.clone();
            }
            old
        };
        eventually(&format!("node {id} refuses the old CA"), || async { !accepts(&region, id, old()).await }).await;
        assert!(accepts(&region, id, new_operator(&new_ca)).await, "node {id} refuses the new CA's operator");
    }
    let writer = common::Writer::through(&region, &[1]);
    writer.top_up("after-rollover", 1).await.unwrap();
    region.wait_converged(Duration::from_secs(20)).await;

    // 4. Restarted, nodes 2 and 3 read only the new files; node 1, which
    // was never restarted, must dial them anew.
    for peer in [2, 3] {
        region.terminate(peer);
        region.spawn(peer);
        writer.top_up(&format!("after-restart-of-{peer}"), 1).await.unwrap();
        let converged = paymesh_harness::local::LocalRegion::wait_converged(&region, Duration::from_secs(20)).await;
        if let Err(e) = converged {
            panic!("node {peer}, restarted, does not catch up from node 1: {e}");
        }
        assert_eq!(region.wait_leader(Duration::from_secs(5)).await, 1, "node 1 still leads");
    }
    let references = ["before-rollover", "after-rollover", "after-restart-of-2", "after-restart-of-3"];
    common::assert_all_present(&writer, &references.map(String::from)).await;
}

/// A refused TLS handshake looks like a node that is down to a gRPC client
/// (UNAVAILABLE or UNKNOWN, "transport error"); the SDK tells it apart by
/// what TLS refused and reports it at once, without retrying: retrying
/// with the same certificate cannot help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tls_handshake_is_reported_as_such_and_not_retried() {
    use paymesh_node::tls::certs::{generate, CertSpec};

    let region = Region::start(3, "");
    region.initialize(1).await;
    region.upsert_partner("wallet-a", admin::PartnerRole::Payer, "0").await;
    let other = tempfile::tempdir().unwrap();
    let us_west = RegionId::new(common::REGION).unwrap();
    let wallet = Identity::partner("wallet-a").unwrap();
    let hosts = vec!["127.0.0.1".to_owned()];
    generate(other.path(), &CertSpec { region: us_west, holders: vec![wallet], node_hosts: hosts }).unwrap();
    let [ca, cert, key] = region.cert_files("partner-wallet-a");
    let foreign = (other.path().join("partner-wallet-a.pem"), other.path().join("partner-wallet-a.key"));
    // Many attempts allowed: a retried handshake would end as GaveUp.
    let policy = paymesh_client::RetryPolicy { attempts: 40, deadline: Duration::from_secs(30) };
    let nodes: Vec<String> = region.nodes.values().map(|n| n.api_addr.clone()).collect();
    let client = |credentials| {
        paymesh_client::PartnerClient::new(paymesh_client::Region::with_policy(nodes.clone(), credentials, policy))
    };
    let cases = [
        ("a certificate of another CA", paymesh_client::Credentials::from_files(&ca, &foreign.0, &foreign.1)),
        ("trusting another CA", paymesh_client::Credentials::from_files(&other.path().join("ca.pem"), &cert, &key)),
    ];
    for (case, credentials) in cases {
        match client(credentials.unwrap()).get_position(Default::default()).await {
            Err(ClientError::Handshake(refused, status)) => {
                println!("{case}: {refused} ({:?}: {})", status.code(), status.message());
                assert!(matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown), "{status:?}");
            }
            other => panic!("{case}: expected a refused handshake, got {other:?}"),
        }
    }
    // The operator's command says so too, at once.
    let operator = region.cert_files("operator-tests");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_paymesh"))
        .args(["partner", "list", "--node", &nodes[0], "--ca"])
        .arg(other.path().join("ca.pem"))
        .arg("--cert")
        .arg(&operator[1])
        .arg("--key")
        .arg(&operator[2])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("TLS handshake refused"), "{said}");
    // The right certificate is served.
    let good = paymesh_client::Credentials::from_files(&ca, &cert, &key).unwrap();
    client(good).get_position(Default::default()).await.expect("the region's own certificate is served");
}
