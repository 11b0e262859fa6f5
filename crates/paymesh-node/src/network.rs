//! The Raft transport between the nodes of a region, over tonic
//! (`paymesh.raft.v1.RaftService`).
//!
//! Each request carries the Raft group id and openraft's message encoded by
//! [`crate::codec`]; each reply carries openraft's result the same way.
//! Channels to peers are created lazily and cached (by the SDK's
//! [`paymesh_client::Region`], which also presents this node's certificate or
//! development identity), because openraft asks for a client on every vote
//! round and linearizable read. A connection takes its channel from that
//! cache at every call rather than keeping one: when the node reloads its
//! certificate, key or CA file (SIGHUP), the cache is emptied and the next
//! call dials anew with the new material, while a stream already open stays
//! on its connection until it ends. Every call has a timeout and a message size
//! limit. A leader's `AppendEntries` to one follower travel on one long-lived
//! stream, request after reply (see [`AppendStream`]); votes are unary calls.
//! Snapshots are streamed whole, in chunks of [`SNAPSHOT_CHUNK_BYTES`], on one
//! `InstallSnapshot` stream.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse,
    VoteRequest, VoteResponse,
};
use paymesh_client::{Credentials, NodeChannel, Region, RetryPolicy};
use paymesh_core::history::Record;
use paymesh_proto::raft::v1 as wire;
use paymesh_proto::raft::v1::raft_service_client::RaftServiceClient;
use paymesh_store::raft_types::{Snapshot, Vote};
use paymesh_store::{History, HistoryError, NodeAddr, NodeId, StateMachineStore, TypeConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::codec;

/// The largest gRPC message between nodes, in bytes.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Bytes of snapshot data per streamed chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// The group id of a region's single Raft group (shards come later).
pub const REGION_GROUP: u64 = 0;

/// Creates connections to peers; shares one channel per peer address.
#[derive(Clone, Debug)]
pub struct Network {
    group: u64,
    /// Used only as a channel factory (its retries are openraft's business).
    peers: Arc<Region>,
    /// Peers dialled at another address than their membership one.
    dial: Arc<BTreeMap<NodeId, String>>,
    snapshot_timeout: Duration,
    /// This node's state machine, whose history a snapshot's receiver is
    /// sent first; set once the node has opened it.
    store: Arc<OnceLock<StateMachineStore>>,
}

impl Network {
    /// The handle through which the node gives this network its state
    /// machine once it has opened it.
    pub fn store_handle(&self) -> Arc<OnceLock<StateMachineStore>> {
        self.store.clone()
    }

    /// A network for Raft group `group`, dialing as `credentials` (the
    /// newest value at each new connection), and the peers in `dial` at the
    /// addresses given there.
    pub fn new(
        group: u64,
        credentials: tokio::sync::watch::Receiver<Credentials>,
        dial: BTreeMap<NodeId, String>,
        snapshot_timeout: Duration,
    ) -> Network {
        // The channel's own limit is the longest call (a snapshot); openraft
        // bounds the others with its own timeouts.
        let peers = Region::live(Vec::new(), credentials, RetryPolicy::default()).with_call_timeout(snapshot_timeout);
        Network { group, peers: Arc::new(peers), dial: Arc::new(dial), snapshot_timeout, store: Arc::default() }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Connection {
        let addr = self.dial.get(&target).unwrap_or(&node.raft_addr).clone();
        Connection {
            target,
            node: node.clone(),
            group: self.group,
            peers: self.peers.clone(),
            addr,
            snapshot_timeout: self.snapshot_timeout,
            store: self.store.clone(),
            append: None,
        }
    }
}

/// A connection to one peer.
#[derive(Debug)]
pub struct Connection {
    target: NodeId,
    node: NodeAddr,
    group: u64,
    /// Where the channel to the peer comes from, at every call.
    peers: Arc<Region>,
    /// The address the peer is dialled at.
    addr: String,
    snapshot_timeout: Duration,
    store: Arc<OnceLock<StateMachineStore>>,
    /// The open `AppendEntries` stream, if any: opened by the first append,
    /// replaced by the next call after one on it failed or timed out, so that
    /// a late reply can never answer a later request.
    append: Option<AppendStream>,
}

/// A leader's `AppendEntries` stream to one follower. openraft sends one
/// request at a time on a connection and waits for its reply, so replies are
/// matched to requests by order.
///
/// openraft also times the call out itself and then drops its future, so a
/// request can be left unanswered without any error reaching this code:
/// `awaiting_reply` is set from a request's send until its reply is read (so
/// it stays set when the call fails, times out or finds the stream ended),
/// and a stream still awaiting a reply when the next call starts is dropped,
/// never read, so no reply can answer a later request (a stale `Success`
/// would tell the leader that entries are stored which the follower has not
/// yet written). This is the one way a broken stream is replaced.
#[derive(Debug)]
struct AppendStream {
    requests: mpsc::Sender<wire::AppendEntriesRequest>,
    replies: tonic::Streaming<wire::AppendEntriesReply>,
    awaiting_reply: bool,
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, NodeAddr, E>;

/// How a transport failure is reported to openraft: a peer that cannot be
/// reached makes it back off; anything else is retried on the next heartbeat.
fn transport_error<E: std::error::Error>(status: &tonic::Status) -> RpcError<E> {
    let error = io::Error::other(format!("{}: {}", status.code(), status.message()));
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => RPCError::Unreachable(Unreachable::new(&error)),
        _ => RPCError::Network(NetworkError::new(&error)),
    }
}

impl Connection {
    /// A client on the cached channel to the peer: the one made with the
    /// node's current credentials.
    fn client(&self) -> Result<RaftServiceClient<NodeChannel>, io::Error> {
        let channel = self
            .peers
            .channel(&self.addr)
            .map_err(|e| io::Error::other(format!("bad address {}: {}", self.addr, e.message())))?;
        Ok(RaftServiceClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX))
    }

    /// Send one unary Raft call and decode the peer's openraft result.
    async fn unary<Resp, E, Call, Fut>(
        &self,
        option: &RPCOption,
        call: Call,
    ) -> Result<Resp, RpcError<RaftError<NodeId, E>>>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
        Call: FnOnce(RaftServiceClient<NodeChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Vec<u8>>, tonic::Status>>,
    {
        let client = self.client().map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let reply = tokio::time::timeout(option.hard_ttl(), call(client))
            .await
            .map_err(|_| timed_out())?
            .map_err(|status| transport_error(&status))?;
        self.decode_reply(&reply.into_inner())
    }

    /// The peer's openraft result from a reply's bytes.
    fn decode_reply<Resp, E>(&self, payload: &[u8]) -> Result<Resp, RpcError<RaftError<NodeId, E>>>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }

    /// Send one request on the `AppendEntries` stream, opening the stream
    /// first if none is open, and wait for its reply's bytes.
    async fn append_call(&mut self, request: wire::AppendEntriesRequest) -> Result<Vec<u8>, tonic::Status> {
        if self.append.as_ref().is_some_and(|open| open.awaiting_reply) {
            self.append = None;
        }
        let request = match &mut self.append {
            Some(open) => {
                open.awaiting_reply = true;
                open.requests.send(request).await.err().map(|unsent| unsent.0)
            }
            None => Some(request),
        };
        if let Some(request) = request {
            // No stream, or one whose sending side has ended: open a new one
            // with this request as its first.
            self.append = None;
            let mut client = self.client().map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let (requests, outgoing) = mpsc::channel(1);
            requests.send(request).await.map_err(|_| tonic::Status::internal("append stream's channel closed"))?;
            let replies = client.append_entries(ReceiverStream::new(outgoing)).await?.into_inner();
            self.append = Some(AppendStream { requests, replies, awaiting_reply: true });
        }
        let open = self.append.as_mut().ok_or_else(|| tonic::Status::internal("append stream missing"))?;
        // Cleared only once a reply is read: a stream that failed or ended
        // stays marked, and the next call replaces it.
        let reply = open.replies.message().await?;
        let reply = reply.ok_or_else(|| tonic::Status::unavailable("the follower ended the append stream"))?;
        open.awaiting_reply = false;
        Ok(reply.payload)
    }
}

fn timed_out<E: std::error::Error>() -> RpcError<E> {
    RPCError::Network(NetworkError::new(&io::Error::new(io::ErrorKind::TimedOut, "raft call timed out")))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError<RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        let payload = codec::encode(&rpc);
        if payload.len() + 64 > RAFT_MESSAGE_BYTES_MAX {
            // Ask openraft to retry at once with fewer entries.
            let fewer = (entries / 2).max(1);
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fewer)));
        }
        let request = wire::AppendEntriesRequest { group_id: self.group, payload };
        // A call that fails or times out leaves its stream awaiting a reply,
        // so the next call replaces it (see `AppendStream`).
        let reply = tokio::time::timeout(option.hard_ttl(), self.append_call(request))
            .await
            .map_err(|_| timed_out())?
            .map_err(|status| transport_error(&status))?;
        self.decode_reply(&reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError<RaftError<NodeId>>> {
        let request = wire::VoteRequest { group_id: self.group, payload: codec::encode(&rpc) };
        self.unary(
            &option,
            |mut client| async move { client.vote(request).await.map(|r| r.map(|reply| reply.payload)) },
        )
        .await
    }

    /// paymesh sends snapshots whole ([`RaftNetwork::full_snapshot`] below), so
    /// openraft never calls this per-chunk method; it exists because the trait
    /// requires it, and answers with an error if it is ever reached.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<RaftError<NodeId, InstallSnapshotError>>> {
        let error = io::Error::other("paymesh streams whole snapshots; per-chunk install is not used");
        Err(RPCError::Network(NetworkError::new(&error)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut client = self.client().map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let store = self.store.get().cloned().ok_or_else(|| {
            StreamingError::Unreachable(Unreachable::new(&io::Error::other(
                "this node's state machine is not open yet",
            )))
        })?;
        let through = snapshot.meta.last_log_id.map_or(0, |l| l.index);
        tokio::pin!(cancel);
        tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            sent = send_history(&mut client, self.group, &store, through) => sent.map_err(|status| {
                match transport_error::<Fatal<NodeId>>(&status) {
                    RPCError::Unreachable(e) => StreamingError::Unreachable(e),
                    other => StreamingError::Network(NetworkError::new(&other)),
                }
            })?,
        }
        let data = snapshot.snapshot.into_inner();
        let (group, vote, meta) = (self.group, codec::encode(&vote), codec::encode(&snapshot.meta));
        let mut chunks = Vec::with_capacity(data.len() / SNAPSHOT_CHUNK_BYTES + 1);
        let mut offset = 0usize;
        loop {
            let end = (offset + SNAPSHOT_CHUNK_BYTES).min(data.len());
            let first = offset == 0;
            chunks.push(wire::SnapshotChunk {
                group_id: if first { group } else { 0 },
                vote: if first { vote.clone() } else { Vec::new() },
                meta: if first { meta.clone() } else { Vec::new() },
                offset: offset as u64,
                data: data[offset..end].to_vec(),
                done: end == data.len(),
            });
            offset = end;
            if offset == data.len() {
                break;
            }
        }
        let send = client.install_snapshot(tokio_stream::iter(chunks));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = tokio::time::timeout(self.snapshot_timeout, send) => reply,
        };
        let reply = reply
            .map_err(|_| {
                StreamingError::Network(NetworkError::new(&io::Error::new(
                    io::ErrorKind::TimedOut,
                    "snapshot send timed out",
                )))
            })?
            .map_err(|status| match transport_error::<Fatal<NodeId>>(&status) {
                RPCError::Unreachable(e) => StreamingError::Unreachable(e),
                other => StreamingError::Network(NetworkError::new(&other)),
            })?;
        let result: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            codec::decode(&reply.into_inner().payload).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        result.map_err(|fatal| {
            StreamingError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), fatal))
        })
    }
}

/// Bytes of history records per `AppendHistory` call, about: a call holds
/// whole batches, so one may be larger (a batch is at most one log entry's
/// records, far below the 4 MiB message limit).
pub const HISTORY_CHUNK_BYTES: usize = 1024 * 1024;

/// Read the store's history on a blocking thread; a failure is INTERNAL.
async fn read_history<T: Send + 'static>(
    store: &StateMachineStore,
    read: impl FnOnce(&History) -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, tonic::Status> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || read(store.history()))
        .await
        .map_err(|e| tonic::Status::internal(format!("reading history: {e}")))?
        .map_err(|e| tonic::Status::internal(format!("reading history: {e}")))
}

/// Bring a snapshot's receiver's history through `through`: ask where it
/// ends, then send what it lacks, a chunk per call, until it is complete.
/// Each call is answered once written, so a transfer cut off resumes from
/// the receiver's last index on the next attempt.
async fn send_history(
    client: &mut RaftServiceClient<NodeChannel>,
    group: u64,
    store: &StateMachineStore,
    through: u64,
) -> Result<(), tonic::Status> {
    let call = |batches: &[(u64, Vec<Record>)], through: u64| wire::AppendHistoryRequest {
        group_id: group,
        batches: postcard::to_stdvec(batches).expect("history records encode"),
        through,
        start: Vec::new(),
    };
    let mut last = client.append_history(call(&[], 0)).await?.into_inner().last_index;
    if last < store.history().deleted_through() {
        // What the receiver lacks was deleted here: it begins where this
        // history now does.
        let start = read_history(store, History::start).await?;
        let request = wire::AppendHistoryRequest {
            start: postcard::to_stdvec(&start).expect("a history start encodes"),
            ..call(&[], 0)
        };
        last = client.append_history(request).await?.into_inner().last_index;
        tracing::info!(deleted_through = start.deleted_through, "history start sent ahead of a snapshot");
    }
    let mut sent = 0usize;
    while last < through {
        let after = last;
        let batches = read_history(store, move |history| history.journal_after(after, HISTORY_CHUNK_BYTES)).await?;
        let batches: Vec<_> = batches.into_iter().take_while(|(index, _)| *index <= through).collect();
        let complete = batches.is_empty();
        let reached = client.append_history(call(&batches, if complete { through } else { 0 })).await?;
        let reached = reached.into_inner().last_index;
        if reached <= last && !complete {
            return Err(tonic::Status::internal(format!("history stopped at {reached} while sent past {last}")));
        }
        sent += batches.len();
        last = reached;
        if complete {
            break;
        }
    }
    if sent > 0 {
        tracing::info!(through, batches = sent, "history sent ahead of a snapshot");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::stream::BoxStream;
    use futures::StreamExt;
    use openraft::{CommittedLeaderId, LogId};
    use paymesh_proto::raft::v1::raft_service_server::{RaftService, RaftServiceServer};
    use tonic::{Request, Response, Status};

    use super::*;

    /// A follower stand-in that answers every AppendEntries with
    /// `PartialSuccess(prev_log_id)`, echoing the request, and answers the
    /// first request of each stream only after `FIRST_REPLY_DELAY`.
    struct SlowFirstReply {
        streams: Arc<AtomicUsize>,
    }

    const FIRST_REPLY_DELAY: Duration = Duration::from_millis(300);

    #[tonic::async_trait]
    impl RaftService for SlowFirstReply {
        type AppendEntriesStream = BoxStream<'static, Result<wire::AppendEntriesReply, Status>>;

        async fn append_entries(
            &self,
            request: Request<tonic::Streaming<wire::AppendEntriesRequest>>,
        ) -> Result<Response<Self::AppendEntriesStream>, Status> {
            self.streams.fetch_add(1, Ordering::SeqCst);
            let replies = request.into_inner().enumerate().then(|(n, request)| async move {
                let rpc: AppendEntriesRequest<TypeConfig> =
                    codec::decode(&request?.payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
                if n == 0 {
                    tokio::time::sleep(FIRST_REPLY_DELAY).await;
                }
                let result: Result<_, RaftError<NodeId>> = Ok(AppendEntriesResponse::PartialSuccess(rpc.prev_log_id));
                Ok(wire::AppendEntriesReply { payload: codec::encode(&result) })
            });
            Ok(Response::new(replies.boxed()))
        }

        async fn vote(&self, _: Request<wire::VoteRequest>) -> Result<Response<wire::VoteReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn install_snapshot(
            &self,
            _: Request<tonic::Streaming<wire::SnapshotChunk>>,
        ) -> Result<Response<wire::InstallSnapshotReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn append_history(
            &self,
            _: Request<wire::AppendHistoryRequest>,
        ) -> Result<Response<wire::AppendHistoryReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    fn request(prev_index: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), prev_index)),
            entries: Vec::new(),
            leader_commit: None,
        }
    }

    #[tokio::test]
    async fn a_call_abandoned_before_its_reply_never_answers_the_next_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let streams = Arc::new(AtomicUsize::new(0));
        let service = RaftServiceServer::new(SlowFirstReply { streams: streams.clone() });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let credentials = Credentials::Plaintext { identity: "node:us-west:1".into() };
        let (_updates, credentials) = tokio::sync::watch::channel(credentials);
        let mut network = Network::new(REGION_GROUP, credentials, BTreeMap::new(), Duration::from_secs(5));
        let node = NodeAddr { raft_addr: addr.clone(), api_addr: addr };
        let mut connection = network.new_client(2, &node).await;
        let option = RPCOption::new(Duration::from_secs(5));

        // The caller gives up on the first request as openraft does: by
        // dropping the call's future, with no error for the network to see.
        let abandoned =
            tokio::time::timeout(Duration::from_millis(50), connection.append_entries(request(1), option.clone()));
        assert!(abandoned.await.is_err(), "the first reply is held back by the stand-in");

        // The next call must get its own reply, not the late one to index 1.
        let reply = connection.append_entries(request(2), option.clone()).await.unwrap();
        assert_eq!(reply, AppendEntriesResponse::PartialSuccess(request(2).prev_log_id));
        assert_eq!(streams.load(Ordering::SeqCst), 2, "the abandoned stream was replaced");

        // A stream whose calls complete is kept.
        let reply = connection.append_entries(request(3), option).await.unwrap();
        assert_eq!(reply, AppendEntriesResponse::PartialSuccess(request(3).prev_log_id));
        assert_eq!(streams.load(Ordering::SeqCst), 2);
    }
}
