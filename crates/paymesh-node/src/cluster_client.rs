//! A client of the cluster operations of a region, for the `paymesh` command
//! and tests.
//!
//! Writes may be sent to any node: followers forward them to the leader. The
//! retry rules are the SDK's ([`paymesh_client::Region`]): follow a leader
//! hint at once, otherwise retry the next node with capped backoff within
//! bounds. Payment commands are not written here: they go through the typed
//! partner and admin APIs.

pub use paymesh_client::{ClientError, RetryPolicy};
use paymesh_client::{Credentials, Region};
use paymesh_proto::admin::v1 as wire;
use paymesh_proto::admin::v1::cluster_service_client::ClusterServiceClient;
use tonic::Status;

/// A client of one region's nodes.
#[derive(Debug)]
pub struct ClusterClient {
    region: Region,
}

impl ClusterClient {
    /// A client of the nodes at these API addresses (`host:port`),
    /// presenting `credentials` (an operator's or a node's).
    pub fn with_credentials(nodes: Vec<String>, credentials: Credentials, policy: RetryPolicy) -> ClusterClient {
        ClusterClient { region: Region::with_policy(nodes, credentials, policy) }
    }

    /// The nodes this client knows.
    pub fn nodes(&self) -> &[String] {
        self.region.nodes()
    }

    /// One node's status (not retried: a down node is an answer here).
    pub async fn status(&self, addr: &str, with_digest: bool) -> Result<wire::GetNodeStatusResponse, Status> {
        let mut client = ClusterServiceClient::new(self.region.channel(addr)?);
        Ok(client.get_node_status(wire::GetNodeStatusRequest { with_digest }).await?.into_inner())
    }

    /// Bootstrap the region through the node at `addr` with its configured
    /// peers. Returns whether it had been initialised already.
    pub async fn initialize(&self, addr: &str) -> Result<bool, ClientError> {
        self.region
            .call(Some(addr), |channel| async move {
                let request = wire::InitializeRequest { members: Vec::new() };
                ClusterServiceClient::new(channel).initialize(request).await.map(|r| r.into_inner())
            })
            .await
            .map(|response| response.already_initialized)
    }

    /// Add a node (learner, caught up, then voter).
    pub async fn add_node(&self, node: wire::NodeAddress) -> Result<u64, ClientError> {
        self.region
            .call(None, |channel| {
                let request = wire::AddNodeRequest { node: Some(node.clone()) };
                async move { ClusterServiceClient::new(channel).add_node(request).await.map(|r| r.into_inner().log_index) }
            })
            .await
    }

    /// Remove a node.
    pub async fn remove_node(&self, node_id: u64) -> Result<u64, ClientError> {
        self.region
            .call(None, |channel| async move {
                let request = wire::RemoveNodeRequest { node_id };
                ClusterServiceClient::new(channel).remove_node(request).await.map(|r| r.into_inner().log_index)
            })
            .await
    }

    /// Move the region to the newest protocol all its members support
    /// (the leader answers; retried while leadership moves: a second raise
    /// to the protocol the region runs changes nothing).
    pub async fn finalize_upgrade(&self) -> Result<wire::FinalizeUpgradeResponse, ClientError> {
        self.region
            .call(None, |channel| async move {
                let request = wire::FinalizeUpgradeRequest {};
                ClusterServiceClient::new(channel).finalize_upgrade(request).await.map(|r| r.into_inner())
            })
            .await
    }

    /// Build a snapshot on the node at `addr` and purge its log behind it.
    pub async fn trigger_snapshot(&self, addr: &str) -> Result<u64, Status> {
        let mut client = ClusterServiceClient::new(self.region.channel(addr)?);
        Ok(client.trigger_snapshot(wire::TriggerSnapshotRequest {}).await?.into_inner().snapshot_index)
    }

    /// A backup of the node at `addr`, as a stream of the file's bytes (not
    /// retried: a backup cut off is taken again).
    pub async fn backup(&self, addr: &str) -> Result<tonic::Streaming<wire::BackupChunk>, Status> {
        let mut client = ClusterServiceClient::new(self.region.channel(addr)?);
        Ok(client.backup(wire::BackupRequest {}).await?.into_inner())
    }
}
