//! `paymesh.admin.v1.ClusterService`: bootstrap, status, membership changes
//! and log compaction.
//!
//! It writes no payment commands. Only the region's own write path (the
//! partner, admin and inter-region services, through the leader's proposer)
//! builds commands and assigns their ids; an earlier raw proposal RPC let any
//! operator or node certificate append commands of its choosing, under ids of
//! its choosing, and is gone from the contract.
//!
//! Membership writes go to the leader. A follower forwards them itself, one
//! hop; if no leader is known the caller gets UNAVAILABLE with the leader's id
//! and address in the metadata when known.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState};
use paymesh_client::{Credentials, NodeChannel, Region, RetryPolicy};
use paymesh_proto::admin::v1 as wire;
use paymesh_proto::admin::v1::cluster_service_client::ClusterServiceClient;
use paymesh_proto::admin::v1::cluster_service_server::ClusterService;
use paymesh_store::log_store::LogStats;
use paymesh_store::raft_types::Raft;
use paymesh_store::{NodeAddr, NodeId, StateMachineStore};
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::config::{NodeConfig, REGION_MEMBERS_MAX};
use crate::identity::{require_node_of, Authenticator, Identity};
use crate::members::Members;
use paymesh_core::version::{Protocol, PROTOCOL};
use paymesh_core::CommandBody;

/// How long a forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long FinalizeUpgrade waits for each member's status.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// This node's paymesh release.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// How long TriggerSnapshot waits for the snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(120);

/// Serves cluster operations for one node, to operators and to the nodes of
/// its region (which forward writes).
#[derive(Clone)]
pub struct ClusterServer {
    config: Arc<NodeConfig>,
    raft: Raft,
    state_machine: StateMachineStore,
    log_stats: Arc<LogStats>,
    auth: Authenticator,
    members: Members,
    /// Channels to leaders for forwarding, as this node (a channel factory).
    leaders: Arc<Region>,
    /// The node's write path, for the one command this service proposes
    /// (an upgrade's finalization, which takes no argument from the caller).
    gateway: crate::gateway::Gateway,
}

impl std::fmt::Debug for ClusterServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterServer").field("node_id", &self.config.node_id).finish_non_exhaustive()
    }
}

impl ClusterServer {
    /// The service of the node configured by `config`, whose Raft group is
    /// `raft` over `state_machine` (its log's counters in `log_stats`),
    /// telling callers apart with `auth`, and dialing the leader as
    /// `dialing` says.
    pub fn new(
        config: Arc<NodeConfig>,
        raft: Raft,
        state_machine: StateMachineStore,
        log_stats: Arc<LogStats>,
        auth: Authenticator,
        dialing: watch::Receiver<Credentials>,
        gateway: crate::gateway::Gateway,
    ) -> ClusterServer {
        let leaders = Region::live(Vec::new(), dialing, RetryPolicy::default()).with_call_timeout(FORWARD_TIMEOUT);
        let members = Members::new(raft.clone(), state_machine.clone());
        ClusterServer { config, raft, state_machine, log_stats, auth, members, leaders: Arc::new(leaders), gateway }
    }

    /// Every member's release and newest supported protocol, this node's
    /// from itself; an error naming the first member that does not answer.
    async fn member_releases(&self) -> Result<Vec<wire::MemberRelease>, Status> {
        let applied = self.state_machine.applied();
        let membership = &applied.membership;
        let mut members = Vec::new();
        for (id, addr) in membership.membership().nodes() {
            if *id == self.config.node_id {
                members.push(wire::MemberRelease { node_id: *id, release: RELEASE.to_owned(), protocol: PROTOCOL });
                continue;
            }
            let mut client = ClusterServiceClient::new(self.leaders.channel(&addr.api_addr)?);
            let request = wire::GetNodeStatusRequest { with_digest: false };
            let answer = tokio::time::timeout(MEMBER_STATUS_TIMEOUT, client.get_node_status(request)).await;
            let status = match answer {
                Ok(Ok(status)) => status.into_inner(),
                unanswered => {
                    let why = match unanswered {
                        Ok(Err(e)) => format!(": {}", e.message()),
                        _ => format!(" within {MEMBER_STATUS_TIMEOUT:?}"),
                    };
                    return Err(Status::failed_precondition(format!(
                        "node {id} ({}) did not answer{why}; every member must answer before the region's protocol \
                         moves",
                        addr.api_addr
                    )));
                }
            };
            // A release before protocols reports none: it runs protocol 1.
            members.push(wire::MemberRelease {
                node_id: *id,
                release: status.release,
                protocol: status.protocol.max(1),
            });
        }
        Ok(members)
    }

    /// Only operators and this region's nodes (none it removed) may operate
    /// the cluster.
    fn check_caller<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match self.auth.identify(request)? {
            Identity::Operator(_) => Ok(()),
            node @ Identity::Node { .. } => self.members.admit(require_node_of(node, &self.config.region)?),
            other => Err(Status::permission_denied(format!("{other} may not operate the cluster"))),
        }
    }

    /// A client of the leader's ClusterService, or UNAVAILABLE if there is
    /// none to forward to (no leader known).
    fn leader_client(
        &self,
        forward: &ForwardToLeader<NodeId, NodeAddr>,
    ) -> Result<ClusterServiceClient<NodeChannel>, Status> {
        let Some(leader) = &forward.leader_node else {
            return Err(not_leader(forward, "no leader is known; retry shortly"));
        };
        Ok(ClusterServiceClient::new(self.leaders.channel(&leader.api_addr)?))
    }
}

/// Backup chunks sent ahead of the caller, at most.
const BACKUP_CHUNKS_BUFFERED: usize = 4;

/// The size of a backup chunk, about.
const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;

/// The stream of a backup's chunks.
type BackupStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<wire::BackupChunk, Status>> + Send>>;

/// Bytes written to it go to the caller as backup chunks (blocking while
/// the caller is [`BACKUP_CHUNKS_BUFFERED`] chunks behind); a caller gone
/// is a broken pipe.
struct ChunkSender(tokio::sync::mpsc::Sender<Result<wire::BackupChunk, Status>>);

impl std::io::Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // At most a chunk's size per message, whatever is written at once
        // (a large history batch), so no message nears a gRPC limit.
        let taken = bytes.len().min(BACKUP_CHUNK_BYTES);
        let chunk = wire::BackupChunk { data: bytes[..taken].to_vec() };
        self.0
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the caller went away"))?;
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// UNAVAILABLE naming the leader, if one is known.
fn not_leader(forward: &ForwardToLeader<NodeId, NodeAddr>, why: &str) -> Status {
    let mut status = Status::unavailable(why.to_owned());
    if let Some(id) = forward.leader_id {
        status.metadata_mut().insert(paymesh_client::LEADER_ID, MetadataValue::from(id));
    }
    if let Some(addr) = forward.leader_node.as_ref().and_then(|n| MetadataValue::try_from(n.api_addr.as_str()).ok()) {
        status.metadata_mut().insert(paymesh_client::LEADER_ADDR, addr);
    }
    status
}

fn fatal(error: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("this node's raft group has stopped: {error}"))
}

/// A refused Raft write: either it must go to the leader, or it fails with a status.
enum Refused {
    /// This node is not the leader.
    Forward(ForwardToLeader<NodeId, NodeAddr>),
    /// Any other refusal, as the status to return.
    Status(Status),
}

fn refused(error: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> Refused {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => Refused::Forward(forward),
        RaftError::APIError(e) => Refused::Status(Status::failed_precondition(e.to_string())),
        RaftError::Fatal(e) => Refused::Status(fatal(e)),
    }
}

impl ClusterServer {
    fn voters(&self) -> BTreeSet<NodeId> {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterServer {
    async fn initialize(
        &self,
        request: Request<wire::InitializeRequest>,
    ) -> Result<Response<wire::InitializeResponse>, Status> {
        self.check_caller(&request)?;
        let requested = request.into_inner().members;
        let members: BTreeMap<NodeId, NodeAddr> = if requested.is_empty() {
            self.config.peers.iter().map(|p| (p.node_id, p.addr())).collect()
        } else {
            requested
                .into_iter()
                .map(|m| (m.node_id, NodeAddr { raft_addr: m.raft_addr, api_addr: m.api_addr }))
                .collect()
        };
        if members.is_empty() || members.len() > REGION_MEMBERS_MAX || members.contains_key(&0) {
            return Err(Status::invalid_argument(format!("members: 1 to {REGION_MEMBERS_MAX} positive node ids")));
        }
        // A node with a log or a vote is initialised already: say so
        // without asking openraft, which logs an ERROR for it. (A race with
        // an initialisation under way still ends in NotAllowed below.)
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.last_log_index.is_some() || metrics.current_term > 0 {
            return Ok(Response::new(wire::InitializeResponse { already_initialized: true }));
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(Response::new(wire::InitializeResponse { already_initialized: false })),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Ok(Response::new(wire::InitializeResponse { already_initialized: true }))
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => Err(Status::invalid_argument(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
        }
    }

    async fn get_node_status(
        &self,
        request: Request<wire::GetNodeStatusRequest>,
    ) -> Result<Response<wire::GetNodeStatusResponse>, Status> {
        self.check_caller(&request)?;
        let with_digest = request.into_inner().with_digest;
        let metrics = self.raft.metrics().borrow().clone();
        let role = match metrics.state {
            ServerState::Leader => wire::NodeRole::Leader,
            ServerState::Follower => wire::NodeRole::Follower,
            ServerState::Candidate => wire::NodeRole::Candidate,
            ServerState::Learner => wire::NodeRole::Learner,
            ServerState::Shutdown => wire::NodeRole::Shutdown,
        };
        let membership = metrics.membership_config.membership();
        let last_log = metrics.last_log_index;
        let replication = metrics
            .replication
            .iter()
            .flatten()
            .map(|(id, matched)| {
                let matched_index = matched.map(|m| m.index);
                let lag = last_log.unwrap_or(0).saturating_sub(matched_index.unwrap_or(0));
                wire::ReplicationProgress { node_id: *id, matched_index, lag }
            })
            .collect();
        let mut applied_index = metrics.last_applied.map(|l| l.index);
        let mut digest = Vec::new();
        if with_digest {
            // The digest and the index it belongs to come from one copy.
            let applied = self.state_machine.applied();
            applied_index = applied.last_applied.map(|l| l.index);
            digest = tokio::task::spawn_blocking(move || applied.digest().to_vec())
                .await
                .map_err(|e| Status::internal(format!("digest: {e}")))?;
        }
        let applied = self.state_machine.applied();
        let applied_state = &applied.state;
        let stats = &self.log_stats;
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(wire::GetNodeStatusResponse {
            node_id: self.config.node_id,
            region: self.config.region.to_string(),
            role: role as i32,
            current_term: metrics.current_term,
            leader_id: metrics.current_leader,
            last_log_index: last_log,
            applied_index,
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, addr)| wire::NodeAddress {
                    node_id: *id,
                    raft_addr: addr.raft_addr.clone(),
                    api_addr: addr.api_addr.clone(),
                })
                .collect(),
            replication,
            state_digest: digest,
            log_appends: load(&stats.appends),
            log_entries: load(&stats.entries),
            log_syncs: load(&stats.syncs),
            log_slow_syncs: load(&stats.slow_syncs),
            log_sync_max_micros: load(&stats.sync_max_micros),
            restore: applied_state.reconciliation().map(crate::reconcile::report_out),
            release: RELEASE.to_owned(),
            protocol: PROTOCOL,
            region_protocol: applied_state.protocol().number(),
        }))
    }

    async fn add_node(
        &self,
        request: Request<wire::AddNodeRequest>,
    ) -> Result<Response<wire::AddNodeResponse>, Status> {
        self.check_caller(&request)?;
        let node = request.into_inner().node.ok_or_else(|| Status::invalid_argument("node is required"))?;
        if node.node_id == 0 {
            return Err(Status::invalid_argument("node.node_id must be positive"));
        }
        if self.voters().contains(&node.node_id) {
            return Err(Status::already_exists(format!("node {} is already a voter", node.node_id)));
        }
        let addr = NodeAddr { raft_addr: node.raft_addr.clone(), api_addr: node.api_addr.clone() };
        // First a learner, caught up (blocking), then a voter.
        if let Err(error) = self.raft.add_learner(node.node_id, addr, true).await {
            return match refused(error) {
                Refused::Forward(forward) => {
                    self.leader_client(&forward)?.add_node(wire::AddNodeRequest { node: Some(node) }).await
                }
                Refused::Status(status) => Err(status),
            };
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([node.node_id]));
        match self.raft.change_membership(change, false).await.map_err(refused) {
            Ok(written) => Ok(Response::new(wire::AddNodeResponse { log_index: written.log_id.index })),
            Err(Refused::Forward(forward)) => {
                Err(not_leader(&forward, "leadership moved while adding the node; retry"))
            }
            Err(Refused::Status(status)) => Err(status),
        }
    }

    async fn remove_node(
        &self,
        request: Request<wire::RemoveNodeRequest>,
    ) -> Result<Response<wire::RemoveNodeResponse>, Status> {
        self.check_caller(&request)?;
        let id = request.into_inner().node_id;
        let voters = self.voters();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::invalid_argument("cannot remove the last voter"));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        match self.raft.change_membership(change, false).await.map_err(refused) {
            Ok(written) => Ok(Response::new(wire::RemoveNodeResponse { log_index: written.log_id.index })),
            Err(Refused::Forward(forward)) => {
                self.leader_client(&forward)?.remove_node(wire::RemoveNodeRequest { node_id: id }).await
            }
            Err(Refused::Status(status)) => Err(status),
        }
    }

    type BackupStream = BackupStream;

    async fn backup(&self, request: Request<wire::BackupRequest>) -> Result<Response<BackupStream>, Status> {
        let operator = self.auth.identify(&request).and_then(crate::identity::require_operator)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_BUFFERED);
        let (store, node_id) = (self.state_machine.clone(), self.config.node_id);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let applied = store.applied();
            let mut out = std::io::BufWriter::with_capacity(BACKUP_CHUNK_BYTES, ChunkSender(sender.clone()));
            let created = crate::gateway::now().unix_ms();
            // `write` flushes what it wrote through the buffer.
            let written = paymesh_store::backup::write(&applied, store.history(), node_id, created, &mut out);
            match written {
                Ok(written) => tracing::info!(
                    operator,
                    index = written.header.index,
                    history_batches = written.history_batches,
                    took_ms = started.elapsed().as_millis() as u64,
                    "backup taken"
                ),
                Err(error) => {
                    tracing::warn!(operator, %error, "backup failed");
                    let _ = sender.blocking_send(Err(Status::internal(format!("backup failed: {error}"))));
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn trigger_snapshot(
        &self,
        request: Request<wire::TriggerSnapshotRequest>,
    ) -> Result<Response<wire::TriggerSnapshotResponse>, Status> {
        self.check_caller(&request)?;
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index);
        let Some(applied) = applied else {
            return Err(Status::failed_precondition("nothing applied yet; no snapshot to build"));
        };
        self.raft.trigger().snapshot().await.map_err(fatal)?;
        let metrics = self
            .raft
            .wait(Some(SNAPSHOT_WAIT))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= applied), "snapshot built")
            .await
            .map_err(|e| Status::deadline_exceeded(format!("snapshot: {e}")))?;
        let index = metrics.snapshot.map_or(applied, |s| s.index);
        self.raft.trigger().purge_log(index).await.map_err(fatal)?;
        Ok(Response::new(wire::TriggerSnapshotResponse { snapshot_index: index }))
    }

    async fn finalize_upgrade(
        &self,
        request: Request<wire::FinalizeUpgradeRequest>,
    ) -> Result<Response<wire::FinalizeUpgradeResponse>, Status> {
        let operator = self.auth.identify(&request).and_then(crate::identity::require_operator)?;
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.config.node_id) {
            let leader_node =
                metrics.current_leader.and_then(|id| metrics.membership_config.membership().get_node(&id).cloned());
            let forward = ForwardToLeader { leader_id: metrics.current_leader, leader_node };
            return Err(not_leader(&forward, "an upgrade is finalized by the leader; call it there"));
        }
        let members = self.member_releases().await?;
        let before = self.state_machine.applied().state.protocol();
        let newest_common = members.iter().map(|m| m.protocol).min().unwrap_or(PROTOCOL);
        let mut protocol = before;
        if newest_common > before.number() {
            let to = Protocol::new(newest_common).expect("members report protocols from 1");
            match self.gateway.operate_by(&operator, CommandBody::RaiseProtocol { to }).await? {
                paymesh_core::Outcome::Done => protocol = to,
                other => return Err(Status::aborted(format!("the raise was not applied: {other:?}"))),
            }
            tracing::info!(operator, from = %before, to = %to, "the region's protocol raised");
        }
        Ok(Response::new(wire::FinalizeUpgradeResponse {
            protocol_before: before.number(),
            protocol: protocol.number(),
            members,
        }))
    }
}
