//! A running node: its stores, its Raft group, and its gRPC servers.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{RaftNetworkFactory, ServerState};
use paymesh_proto::admin::v1::admin_service_server::AdminServiceServer;
use paymesh_proto::admin::v1::cluster_service_server::ClusterServiceServer;
use paymesh_proto::interregion::v1::inter_region_service_server::InterRegionServiceServer;
use paymesh_proto::partner::v1::partner_service_server::PartnerServiceServer;
use paymesh_proto::raft::v1::raft_service_server::RaftServiceServer;
use paymesh_store::raft_types::{Raft, StorageError};
use paymesh_store::{LogStats, LogStore, StateMachineStore, TypeConfig};
use tokio::net::TcpListener;

use crate::actors;
use crate::actors::registry::{Applied, Leadership};
use crate::admin_service::AdminServer;
use crate::cluster_service::ClusterServer;
use crate::config::NodeConfig;
use crate::gateway::Gateway;
use crate::identity::Identity;
use crate::interregion::{Door, InterRegionServer, INTERREGION_MESSAGE_BYTES_MAX};
use crate::listener;
use crate::members::Members;
use crate::network::{Network, RAFT_MESSAGE_BYTES_MAX, REGION_GROUP};
use crate::outbox::Links;
use crate::partner_service::PartnerServer;
use crate::raft_service::RaftServer;
use crate::tls::TlsMaterial;
use paymesh_client::Credentials;

/// The most concurrent requests on one API connection.
const API_CONCURRENCY_PER_CONNECTION: usize = 256;

/// How long an API request may take before the server gives up on it
/// (event streams are not limited by it).
const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopping node waits for its open connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The largest partner or admin request or response, in bytes.
pub const API_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// The running partner pipeline of a node (see [`Node::start_pipeline`]).
#[derive(Debug)]
pub struct Pipeline {
    /// What the partner and admin services use.
    pub gateway: Gateway,
    /// The actor system's thread; stopped when dropped.
    pub actors: actors::ActorThread,
    /// The leadership watcher; abort it when done.
    pub watcher: tokio::task::JoinHandle<()>,
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is inconsistent (Raft settings, TLS files).
    #[error("configuration: {0}")]
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
    /// The actor system or a service could not start.
    #[error("startup: {0}")]
    Startup(String),
    /// The Raft group stopped by itself, on an error it cannot recover from.
    #[error("raft stopped: {0}")]
    RaftStopped(String),
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
    /// This node's TLS material, unless it runs plaintext (development).
    pub tls: Option<Arc<TlsMaterial>>,
    /// The links to the remote regions (the outbox's destinations).
    pub links: Arc<Links>,
    /// The trace contexts of recent transfers (see [`crate::telemetry`]).
    pub traces: Arc<crate::telemetry::Traces>,
    /// Partners' request rates (see [`crate::rate`]).
    pub rates: Arc<crate::rate::Rates>,
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
        let tls = Node::load_tls(&config)?;
        let network = Network::new(
            REGION_GROUP,
            Node::credentials_of(&config, tls.as_deref()),
            config.raft_dial(),
            config.snapshot_timeout(),
        );
        Node::open_parts(config, network, tls).await
    }

    /// Load and check this node's certificate: it must name this very node.
    fn load_tls(config: &NodeConfig) -> Result<Option<Arc<TlsMaterial>>, NodeError> {
        let Some(files) = &config.tls else { return Ok(None) };
        let material = TlsMaterial::load(files).map_err(|e| NodeError::Config(e.to_string()))?;
        let expected = Identity::Node { region: config.region.clone(), node_id: config.node_id };
        if material.identity() != &expected {
            return Err(NodeError::Config(format!("tls.cert names {} but this is {expected}", material.identity())));
        }
        Ok(Some(Arc::new(material)))
    }

    /// How this node presents itself when it dials another node: its
    /// certificate, or in development the identity header.
    fn credentials_of(config: &NodeConfig, tls: Option<&TlsMaterial>) -> Credentials {
        match tls {
            Some(material) => material.credentials(),
            None => Credentials::Plaintext {
                identity: Identity::Node { region: config.region.clone(), node_id: config.node_id }.to_string(),
            },
        }
    }

    /// How this node presents itself to other nodes.
    pub fn credentials(&self) -> Credentials {
        Node::credentials_of(&self.config, self.tls.as_deref())
    }

    /// As [`Node::open`], with another network (in-process tests inject faults).
    pub async fn open_with_network<N: RaftNetworkFactory<TypeConfig>>(
        config: NodeConfig,
        network: N,
    ) -> Result<Node, NodeError> {
        let tls = Node::load_tls(&config)?;
        Node::open_parts(config, network, tls).await
    }

    async fn open_parts<N: RaftNetworkFactory<TypeConfig>>(
        config: NodeConfig,
        network: N,
        tls: Option<Arc<TlsMaterial>>,
    ) -> Result<Node, NodeError> {
        let data: &Path = &config.data_dir;
        let log = LogStore::open(&data.join("raft-log"))?;
        let log_stats = log.stats();
        let state_machine = StateMachineStore::open(&data.join("state"), config.region.clone())?;
        let raft_config = config.openraft_config().validate().map_err(|e| NodeError::Config(e.to_string()))?;
        let links = Links::from_config(&config, tls.as_deref()).map_err(NodeError::Config)?;
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log, state_machine.clone()).await?;
        Ok(Node {
            config: Arc::new(config),
            raft,
            state_machine,
            log_stats,
            tls,
            links: Arc::new(links),
            traces: Arc::default(),
            rates: Arc::default(),
        })
    }

    /// The admission check for calls from the region's nodes.
    pub fn members(&self) -> Members {
        Members::new(self.raft.clone(), self.state_machine.clone())
    }

    /// Start the partner pipeline: the actor system, and the task that tells it
    /// when this node leads and when entries are applied. The gateway is what
    /// the partner and admin services use.
    pub fn start_pipeline(&self) -> Result<Pipeline, NodeError> {
        let (registry, actors) = actors::start(self.clone()).map_err(|e| NodeError::Startup(e.to_string()))?;
        let gateway = Gateway { node: self.clone(), registry };
        let watcher = tokio::spawn(follow_leadership(gateway.clone()));
        Ok(Pipeline { gateway, actors, watcher })
    }

    /// `builder` (one of [`listener`]'s), with mutual TLS unless this node
    /// runs plaintext.
    fn server_builder(&self, builder: tonic::transport::Server) -> Result<tonic::transport::Server, NodeError> {
        match &self.tls {
            Some(material) => Ok(builder.tls_config(material.server_config())?),
            None => Ok(builder),
        }
    }

    /// Serve the Raft transport and the API until `shutdown` resolves, then
    /// stop the servers and the Raft group.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
        let bind =
            |addr| async move { TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { addr, source }) };
        let raft_listener = bind(self.config.raft_listen).await?;
        let api_listener = bind(self.config.api_listen).await?;
        // Served only when there is a region to hear from: a TLS listener
        // with no CA to trust could not accept anyone.
        let interregion_listener = match self.config.interregion_listen {
            Some(addr) if !self.config.remote_regions.is_empty() => Some(bind(addr).await?),
            Some(addr) => {
                tracing::warn!(%addr, "interregion_listen is set but no remote_regions are: not listening");
                None
            }
            None => None,
        };
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
        let Pipeline { gateway, actors: actor_thread, watcher } = self.start_pipeline()?;
        let interregion_gateway = gateway.clone();
        let stopped_interregion = stopped.clone();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<PartnerServiceServer<PartnerServer>>().await;
        health.set_serving::<AdminServiceServer<AdminServer>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(paymesh_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| NodeError::Startup(format!("reflection: {e}")))?;
        let raft_server = RaftServer::new(
            BTreeMap::from([(REGION_GROUP, self.raft.clone())]),
            self.config.region.clone(),
            self.config.insecure_plaintext,
            self.members(),
        );
        let raft_service = RaftServiceServer::new(raft_server)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let raft_server =
            self.server_builder(listener::server())?.add_service(raft_service).serve_with_incoming_shutdown(
                listener::accepted(raft_listener, listener::RAFT_CONNECTIONS_MAX, "raft"),
                wait(stopped.clone()),
            );
        let api_server = self
            .server_builder(listener::aging_server())?
            .concurrency_limit_per_connection(API_CONCURRENCY_PER_CONNECTION)
            .timeout(API_REQUEST_TIMEOUT)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                PartnerServiceServer::new(PartnerServer::new(gateway.clone()))
                    .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(API_MESSAGE_BYTES_MAX),
            )
            .add_service(
                AdminServiceServer::new(AdminServer::new(gateway.clone()))
                    .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(API_MESSAGE_BYTES_MAX),
            )
            .add_service(ClusterServiceServer::new(ClusterServer::new(self.clone())))
            .add_service(
                InterRegionServiceServer::new(InterRegionServer::new(gateway.clone(), Door::Forwarded))
                    .max_decoding_message_size(INTERREGION_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(INTERREGION_MESSAGE_BYTES_MAX),
            )
            .serve_with_incoming_shutdown(
                listener::accepted(api_listener, self.config.limits.api_connections_max, "api"),
                wait(stopped),
            );
        let raft_task = tokio::spawn(raft_server);
        let api_task = tokio::spawn(api_server);
        let mut tasks = vec![raft_task, api_task];
        if let Some(listener) = interregion_listener {
            let server = self.interregion_server(interregion_gateway, listener, wait(stopped_interregion))?;
            tasks.push(tokio::spawn(server));
        }
        // A Raft group that stopped by itself (a storage error is fatal to
        // openraft) ends the process too, so a supervisor restarts it rather
        // than leaving a node that answers but can no longer replicate.
        // The server metrics change only with the role, the leader or the
        // membership (the full metrics are sent on every turn of openraft's
        // loop); their channel closes when the Raft group stops.
        let mut server_metrics = self.raft.server_metrics();
        let raft_stopped = async move { while server_metrics.changed().await.is_ok() {} };
        let failed = tokio::select! {
            () = shutdown => false,
            () = raft_stopped => true,
        };
        if failed {
            tracing::error!(node = self.config.node_id, "the Raft group stopped on an error; shutting down");
        } else {
            tracing::info!(node = self.config.node_id, "shutting down");
        }
        let _ = stop.send(true);
        // Graceful shutdown waits for open connections to close; one whose
        // peer vanished from the network never does, so the wait is bounded.
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            for task in tasks {
                match task.await {
                    Ok(result) => result?,
                    Err(join) => tracing::error!(%join, "server task failed"),
                }
            }
            Ok::<(), NodeError>(())
        })
        .await;
        match drained {
            Ok(result) => result?,
            Err(_) => tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing"),
        }
        watcher.abort();
        drop(actor_thread);
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(%e, "raft shutdown");
        }
        tracing::info!(node = self.config.node_id, "stopped");
        if failed {
            return Err(NodeError::RaftStopped("a fatal error; see the log above".into()));
        }
        Ok(())
    }
}

impl Node {
    /// The inter-region listener's server: TLS trusting only the remote
    /// regions' CAs, the inter-region service, and health (the peers' probe).
    fn interregion_server(
        &self,
        gateway: Gateway,
        incoming: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, NodeError> {
        let mut cas = BTreeMap::new();
        let mut bundle = Vec::new();
        for link in self.links.iter() {
            if let Some(ca) = &link.ca {
                bundle.extend_from_slice(&ca.pem);
                bundle.push(b'\n');
            }
            cas.insert(link.region.clone(), link.ca.as_ref().map(|ca| ca.subject.clone()).unwrap_or_default());
        }
        let builder = listener::aging_server();
        let builder = match &self.tls {
            Some(material) => builder.tls_config(material.server_config_trusting(&bundle))?,
            None => builder,
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        let service = InterRegionServiceServer::new(InterRegionServer::new(gateway, Door::Remote(Arc::new(cas))))
            .max_decoding_message_size(INTERREGION_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(INTERREGION_MESSAGE_BYTES_MAX);
        tracing::info!(addr = ?incoming.local_addr().ok(), "serving the inter-region protocol");
        let server = builder
            .timeout(API_REQUEST_TIMEOUT)
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming_shutdown(
                listener::accepted(incoming, listener::INTERREGION_CONNECTIONS_MAX, "interregion"),
                shutdown,
            );
        Ok(async move {
            health.set_serving::<InterRegionServiceServer<InterRegionServer>>().await;
            server.await
        })
    }
}

/// Tell the actors when this node gains or loses leadership; while it leads,
/// tell them when new entries are applied (so event subscribers get them)
/// and ship the outbox to every remote region. Runs until the Raft group
/// stops.
async fn follow_leadership(gateway: Gateway) {
    let registry = gateway.registry.clone();
    let mut server = gateway.node.raft.server_metrics();
    let mut applied = gateway.node.state_machine.watch_applied();
    let mut leading = None;
    let mut shippers: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        let now_leading = {
            let m = server.borrow_and_update();
            (m.state == ServerState::Leader).then(|| m.vote.leader_id().get_term())
        };
        if now_leading != leading {
            leading = now_leading;
            registry.do_send(Leadership(leading));
            for shipper in shippers.drain(..) {
                shipper.abort();
            }
            if leading.is_some() {
                for link in gateway.node.links.iter() {
                    shippers.push(tokio::spawn(crate::outbox::ship(gateway.clone(), link.clone())));
                }
            }
        }
        // A follower has nobody to tell about applied entries: it waits for
        // the role alone.
        let stopped = if leading.is_some() {
            tokio::select! {
                changed = server.changed() => changed.is_err(),
                changed = applied.changed() => {
                    if changed.is_ok() {
                        registry.do_send(Applied);
                    }
                    false
                }
            }
        } else {
            server.changed().await.is_err()
        };
        if stopped {
            registry.do_send(Leadership(None));
            for shipper in shippers.drain(..) {
                shipper.abort();
            }
            return;
        }
    }
}
