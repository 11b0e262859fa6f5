//! The server side of the Raft transport: decodes openraft's messages and
//! hands them to the Raft group the request names.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use paymesh_core::history::Record;
use paymesh_proto::raft::v1 as wire;
use paymesh_proto::raft::v1::raft_service_server::RaftService;
use paymesh_store::raft_types::{Raft, Snapshot, SnapshotMeta, Vote};
use paymesh_store::{HistoryStart, StateMachineStore};
use tonic::{Request, Response, Status};

use crate::codec;
use crate::identity::{require_node_of, Authenticator};
use crate::members::Members;
use paymesh_core::id::RegionId;

/// The largest snapshot a node accepts, in bytes (it is held in memory while
/// it is installed).
pub const SNAPSHOT_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// Why a second snapshot stream is refused while one is being received: a
/// node holds at most one received snapshot in memory at a time (one leader
/// sends one at a time; a second stream is a stale leader's or a fault's).
pub const SNAPSHOT_BUSY: &str = "a snapshot is being received already; send again once it is installed";

/// Serves the Raft transport for the groups this node hosts, to the nodes of
/// its region only.
#[derive(Clone)]
pub struct RaftServer {
    groups: BTreeMap<u64, Raft>,
    /// Each group's state machine, whose history a leader appends to.
    stores: BTreeMap<u64, StateMachineStore>,
    region: RegionId,
    auth: Authenticator,
    members: Members,
    /// One permit: the snapshot stream being received.
    receiving: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for RaftServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftServer").field("groups", &self.groups.keys().collect::<Vec<_>>()).finish()
    }
}

impl RaftServer {
    /// A server for these groups of `region`, learning callers through
    /// `auth` and admitting the nodes `members` admits.
    pub fn new(
        groups: BTreeMap<u64, (Raft, StateMachineStore)>,
        region: RegionId,
        auth: Authenticator,
        members: Members,
    ) -> RaftServer {
        let stores = groups.iter().map(|(id, (_, store))| (*id, store.clone())).collect();
        let groups = groups.into_iter().map(|(id, (raft, _))| (id, raft)).collect();
        RaftServer { groups, stores, region, auth, members, receiving: Arc::new(tokio::sync::Semaphore::new(1)) }
    }

    /// Only this region's nodes, and none it removed, may send Raft
    /// messages; the caller's node id.
    fn check_caller<T>(&self, request: &Request<T>) -> Result<u64, Status> {
        let id = require_node_of(self.auth.identify(request)?, &self.region)?;
        self.members.admit(id)?;
        Ok(id)
    }

    fn group(&self, id: u64) -> Result<&Raft, Status> {
        self.groups.get(&id).ok_or_else(|| Status::not_found(format!("no raft group {id} on this node")))
    }
}

fn undecodable(what: &str, e: codec::CodecError) -> Status {
    Status::invalid_argument(format!("{what}: {e}"))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    type AppendEntriesStream = BoxStream<'static, Result<wire::AppendEntriesReply, Status>>;

    /// One stream per leader and follower: each request is answered, in
    /// order, once this node's Raft has handled it. The caller is checked
    /// when the stream opens and again before each request (it may have been
    /// removed from the region since). The first request that fails ends
    /// the stream with its status.
    async fn append_entries(
        &self,
        request: Request<tonic::Streaming<wire::AppendEntriesRequest>>,
    ) -> Result<Response<Self::AppendEntriesStream>, Status> {
        let caller = self.check_caller(&request)?;
        let server = Arc::new(self.clone());
        let replies = request.into_inner().then(move |request| {
            let server = Arc::clone(&server);
            async move {
                let request = request?;
                server.members.admit(caller)?;
                let raft = server.group(request.group_id)?;
                let rpc = codec::decode(&request.payload).map_err(|e| undecodable("append entries", e))?;
                let result = raft.append_entries(rpc).await;
                Ok(wire::AppendEntriesReply { payload: codec::encode(&result) })
            }
        });
        // `scan` ends the stream after its first error, which is sent.
        let replies = replies.scan(false, |failed, reply: Result<_, Status>| {
            let item = (!*failed).then(|| {
                *failed = reply.is_err();
                reply
            });
            futures::future::ready(item)
        });
        Ok(Response::new(replies.boxed()))
    }

    async fn vote(&self, request: Request<wire::VoteRequest>) -> Result<Response<wire::VoteReply>, Status> {
        self.check_caller(&request)?;
        let request = request.into_inner();
        let raft = self.group(request.group_id)?;
        let rpc = codec::decode(&request.payload).map_err(|e| undecodable("vote", e))?;
        let result = raft.vote(rpc).await;
        Ok(Response::new(wire::VoteReply { payload: codec::encode(&result) }))
    }

    async fn install_snapshot(
        &self,
        request: Request<tonic::Streaming<wire::SnapshotChunk>>,
    ) -> Result<Response<wire::InstallSnapshotReply>, Status> {
        self.check_caller(&request)?;
        let _receiving = self.receiving.try_acquire().map_err(|_| Status::resource_exhausted(SNAPSHOT_BUSY))?;
        let mut stream = request.into_inner();
        let first = stream.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let raft = self.group(first.group_id)?.clone();
        let vote: Vote = codec::decode(&first.vote).map_err(|e| undecodable("snapshot vote", e))?;
        let meta: SnapshotMeta = codec::decode(&first.meta).map_err(|e| undecodable("snapshot meta", e))?;
        let mut data = Vec::new();
        let mut chunk = first;
        loop {
            if chunk.offset != data.len() as u64 {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {} where {} was expected",
                    chunk.offset,
                    data.len()
                )));
            }
            if data.len() as u64 + chunk.data.len() as u64 > SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted("snapshot larger than this node accepts"));
            }
            data.extend_from_slice(&chunk.data);
            if chunk.done {
                break;
            }
            chunk = stream
                .next()
                .await
                .ok_or_else(|| Status::invalid_argument("snapshot stream ended before its last chunk"))??;
        }
        let snapshot = Snapshot { meta, snapshot: Box::new(Cursor::new(data)) };
        let result = raft.install_full_snapshot(vote, snapshot).await;
        Ok(Response::new(wire::InstallSnapshotReply { payload: codec::encode(&result) }))
    }

    /// Write the batches a leader sends, in order, skipping those history
    /// holds already; then, if the leader says its history holds nothing
    /// more through `through`, history is complete through it. Or, given
    /// where the leader's history begins after retention, begin there.
    async fn append_history(
        &self,
        request: Request<wire::AppendHistoryRequest>,
    ) -> Result<Response<wire::AppendHistoryReply>, Status> {
        self.check_caller(&request)?;
        let request = request.into_inner();
        let store = self
            .stores
            .get(&request.group_id)
            .ok_or_else(|| Status::not_found(format!("no raft group {} on this node", request.group_id)))?
            .clone();
        let batches: Vec<(u64, Vec<Record>)> = postcard::from_bytes(&request.batches)
            .map_err(|e| Status::invalid_argument(format!("history batches: {e}")))?;
        if batches.windows(2).any(|w| w[0].0 >= w[1].0)
            || batches.last().is_some_and(|(i, _)| request.through != 0 && *i > request.through)
        {
            return Err(Status::invalid_argument("history batches out of order"));
        }
        let start: Option<HistoryStart> = (!request.start.is_empty())
            .then(|| postcard::from_bytes(&request.start))
            .transpose()
            .map_err(|e| Status::invalid_argument(format!("history start: {e}")))?;
        if start.is_some() && !batches.is_empty() {
            return Err(Status::invalid_argument("a history start comes alone, without batches"));
        }
        let through = request.through;
        let last_index = tokio::task::spawn_blocking(move || match start {
            Some(start) => store.history().adopt(&start),
            None => store.history().append(&batches, through),
        })
        .await
        .map_err(|e| Status::internal(format!("writing history: {e}")))?
        .map_err(|e| Status::internal(format!("writing history: {e}")))?;
        Ok(Response::new(wire::AppendHistoryReply { last_index }))
    }
}
