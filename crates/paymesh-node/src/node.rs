//! A running node: its stores, its Raft group, and its gRPC servers.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::RaftNetworkFactory;
use paymesh_proto::admin::v1::cluster_service_server::ClusterServiceServer;
use paymesh_proto::raft::v1::raft_service_server::RaftServiceServer;
use paymesh_store::raft_types::{Raft, StorageError};
use paymesh_store::{LogStats, LogStore, StateMachineStore, TypeConfig};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::cluster_service::ClusterServer;
use crate::config::NodeConfig;
use crate::network::{Network, RAFT_MESSAGE_BYTES_MAX, REGION_GROUP};
use crate::raft_service::RaftServer;

/// The most concurrent requests on one API connection.
const API_CONCURRENCY_PER_CONNECTION: usize = 256;

/// How long an API request may take before the server gives up on it.
const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The Raft settings are inconsistent.
    #[error("raft settings: {0}")]
    Config(String),
    /// The stores could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// openraft refused to start or stopped fatally.
    #[error("raft: {0}")]
    Raft(#[from] openraft::error::Fatal<u64>),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A gRPC server failed.
    #[error("server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A node's Raft group and the stores under it.
#[derive(Clone)]
pub struct Node {
    /// The configuration it was started with.
    pub config: Arc<NodeConfig>,
    /// The region's Raft group on this node.
    pub raft: Raft,
    /// A handle on the state machine, for reads.
    pub state_machine: StateMachineStore,
    /// The Raft log's I/O counters.
    pub log_stats: Arc<LogStats>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("node_id", &self.config.node_id).field("region", &self.config.region).finish()
    }
}

impl Node {
    /// Open the stores under `config.data_dir` and start the Raft group,
    /// talking to peers over gRPC.
    pub async fn open(config: NodeConfig) -> Result<Node, NodeError> {
        let network = Network::new(REGION_GROUP, config.snapshot_timeout());
        Node::open_with_network(config, network).await
    }

    /// As [`Node::open`], with another network (in-process tests inject faults).
    pub async fn open_with_network<N: RaftNetworkFactory<TypeConfig>>(
        config: NodeConfig,
        network: N,
    ) -> Result<Node, NodeError> {
        let data: &Path = &config.data_dir;
        let log = LogStore::open(&data.join("raft-log"))?;
        let log_stats = log.stats();
        let state_machine = StateMachineStore::open(&data.join("state"), config.region.clone())?;
        let raft_config = config.openraft_config().validate().map_err(|e| NodeError::Config(e.to_string()))?;
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log, state_machine.clone()).await?;
        Ok(Node { config: Arc::new(config), raft, state_machine, log_stats })
    }

    /// Serve the Raft transport and the API until `shutdown` resolves, then
    /// stop the servers and the Raft group.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
        let bind =
            |addr| async move { TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { addr, source }) };
        let raft_listener = bind(self.config.raft_listen).await?;
        let api_listener = bind(self.config.api_listen).await?;
        tracing::info!(
            node = self.config.node_id,
            region = %self.config.region,
            raft = %self.config.raft_listen,
            api = %self.config.api_listen,
            "node serving"
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let raft_service = RaftServiceServer::new(RaftServer::new(BTreeMap::from([(REGION_GROUP, self.raft.clone())])))
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let raft_server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(raft_service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(raft_listener), wait(stopped.clone()));
        let api_server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .concurrency_limit_per_connection(API_CONCURRENCY_PER_CONNECTION)
            .timeout(API_REQUEST_TIMEOUT)
            .add_service(ClusterServiceServer::new(ClusterServer::new(self.clone())))
            .serve_with_incoming_shutdown(TcpListenerStream::new(api_listener), wait(stopped));
        let raft_task = tokio::spawn(raft_server);
        let api_task = tokio::spawn(api_server);
        shutdown.await;
        tracing::info!(node = self.config.node_id, "shutting down");
        let _ = stop.send(true);
        for task in [raft_task, api_task] {
            match task.await {
                Ok(result) => result?,
                Err(join) => tracing::error!(%join, "server task failed"),
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(%e, "raft shutdown");
        }
        tracing::info!(node = self.config.node_id, "stopped");
        Ok(())
    }
}
