//! A client of the cluster operations of a region, for the `paymesh` command
//! and tests.
//!
//! Writes may be sent to any node: followers forward them to the leader. When
//! a node answers UNAVAILABLE (no leader yet, leadership moving, node down),
//! the client retries with capped exponential backoff, going first to the
//! leader the node named (metadata `paymesh-leader-addr`), else to the next
//! node it knows, within a bounded number of attempts and a deadline. Retrying
//! a proposal is safe because every command carries its own id: a command the
//! region already applied is answered with its original outcome.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use paymesh_core::command::Command;
use paymesh_core::Outcome;
use paymesh_proto::admin::v1 as wire;
use paymesh_proto::admin::v1::cluster_service_client::ClusterServiceClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::codec;
use crate::network::REGION_GROUP;

/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The first and the largest pause between retries.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why a cluster call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A node refused the request itself; retrying would not help.
    #[error("refused: {0}")]
    Refused(Status),
    /// Every attempt failed with a retryable error until the attempts or the
    /// deadline ran out.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: Status,
    },
    /// A node answered with outcomes this build cannot decode.
    #[error("undecodable answer: {0}")]
    Codec(#[from] codec::CodecError),
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
        RetryPolicy { attempts: 40, deadline: Duration::from_secs(30) }
    }
}

/// A client of one region's nodes.
#[derive(Debug)]
pub struct ClusterClient {
    nodes: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    /// The node to try first: the last one that answered or was named leader.
    preferred: Mutex<Option<String>>,
    policy: RetryPolicy,
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled | Code::Aborted
    )
}

impl ClusterClient {
    /// A client of the nodes at these API addresses (`host:port`).
    pub fn new(nodes: Vec<String>) -> ClusterClient {
        ClusterClient::with_policy(nodes, RetryPolicy::default())
    }

    /// A client with a chosen retry policy.
    pub fn with_policy(nodes: Vec<String>, policy: RetryPolicy) -> ClusterClient {
        ClusterClient { nodes, channels: Mutex::default(), preferred: Mutex::default(), policy }
    }

    /// The nodes this client knows.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// A client of the node at `addr`; connects lazily.
    pub fn connect(&self, addr: &str) -> Result<ClusterServiceClient<Channel>, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| Status::invalid_argument(format!("address {addr}: {e}")))?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(CALL_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(ClusterServiceClient::new(channel))
    }

    /// One node's status.
    pub async fn status(&self, addr: &str, with_digest: bool) -> Result<wire::GetNodeStatusResponse, Status> {
        let request = wire::GetNodeStatusRequest { with_digest };
        Ok(self.connect(addr)?.get_node_status(request).await?.into_inner())
    }

    /// Bootstrap the region through the node at `addr` with its configured
    /// peers. Returns whether it had been initialised already.
    pub async fn initialize(&self, addr: &str) -> Result<bool, ClientError> {
        self.retry(Some(addr), |mut client| async move {
            client.initialize(wire::InitializeRequest { members: Vec::new() }).await.map(|r| r.into_inner())
        })
        .await
        .map(|response| response.already_initialized)
    }

    /// Propose commands as one log entry; returns the entry's index and one
    /// outcome per command.
    pub async fn propose(&self, commands: &[Command]) -> Result<(u64, Vec<Outcome>), ClientError> {
        let payload = codec::encode(commands);
        let response = self
            .retry(None, |mut client| {
                let request =
                    wire::ProposeRequest { group_id: REGION_GROUP, commands: payload.clone(), forwarded: false };
                async move { client.propose(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok((response.log_index, codec::decode(&response.outcomes)?))
    }

    /// Add a node (learner, caught up, then voter).
    pub async fn add_node(&self, node: wire::NodeAddress) -> Result<u64, ClientError> {
        self.retry(None, |mut client| {
            let request = wire::AddNodeRequest { node: Some(node.clone()) };
            async move { client.add_node(request).await.map(|r| r.into_inner().log_index) }
        })
        .await
    }

    /// Remove a node.
    pub async fn remove_node(&self, node_id: u64) -> Result<u64, ClientError> {
        self.retry(None, |mut client| async move {
            client.remove_node(wire::RemoveNodeRequest { node_id }).await.map(|r| r.into_inner().log_index)
        })
        .await
    }

    /// Build a snapshot on the node at `addr` and purge its log behind it.
    pub async fn trigger_snapshot(&self, addr: &str) -> Result<u64, Status> {
        let mut client = self.connect(addr)?;
        Ok(client.trigger_snapshot(wire::TriggerSnapshotRequest {}).await?.into_inner().snapshot_index)
    }

    /// Run `call` against a node, retrying retryable failures on the named
    /// leader or the next node. `only` pins every attempt to one node.
    async fn retry<T, F, Fut>(&self, only: Option<&str>, call: F) -> Result<T, ClientError>
    where
        F: Fn(ClusterServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut backoff = BACKOFF_FIRST;
        let mut next = 0usize;
        let mut last = Status::unavailable("no attempt made");
        for attempt in 1..=self.policy.attempts {
            let target = match only {
                Some(addr) => addr.to_owned(),
                None => {
                    let preferred = self.preferred.lock().unwrap_or_else(|p| p.into_inner()).take();
                    preferred.unwrap_or_else(|| {
                        next += 1;
                        self.nodes[(next - 1) % self.nodes.len().max(1)].clone()
                    })
                }
            };
            let result = match self.connect(&target) {
                Ok(client) => call(client).await,
                Err(status) => Err(status),
            };
            match result {
                Ok(value) => {
                    *self.preferred.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
                    return Ok(value);
                }
                Err(status) if retryable(&status) => {
                    let hint = status.metadata().get("paymesh-leader-addr").and_then(|v| v.to_str().ok());
                    if let Some(leader) = hint {
                        *self.preferred.lock().unwrap_or_else(|p| p.into_inner()) = Some(leader.to_owned());
                    }
                    tracing::debug!(%target, attempt, code = ?status.code(), message = status.message(), "retrying");
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
