//! A running node: its stores, its Raft group, and its gRPC servers.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{RaftNetworkFactory, ServerState};
use paymesh_proto::admin::v1::admin_service_server::AdminServiceServer;
use paymesh_proto::admin::v1::cluster_service_server::ClusterServiceServer;
use paymesh_proto::admin::v1::history_service_server::HistoryServiceServer;
use paymesh_proto::interregion::v1::inter_region_service_server::InterRegionServiceServer;
use paymesh_proto::partner::v1::partner_service_server::PartnerServiceServer;
use paymesh_proto::raft::v1::raft_service_server::RaftServiceServer;
use paymesh_store::raft_types::{Raft, StorageError};
use paymesh_store::{LogStats, LogStore, StateMachineStore, TypeConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use paymesh_core::id::RegionId;

use crate::actors;
use crate::admin_service::AdminServer;
use crate::cluster_service::ClusterServer;
use crate::config::NodeConfig;
use crate::gateway::Gateway;
use crate::history_service::{HistoryServer, HISTORY_MESSAGE_BYTES_MAX};
use crate::identity::{Authenticator, Identity};
use crate::interregion::{Door, InterRegionServer, INTERREGION_MESSAGE_BYTES_MAX};
use crate::listener::{self, Answering, SizeLimited};
use crate::members::Members;
use crate::metrics::{Measured, Sources};
use crate::network::{Network, RAFT_MESSAGE_BYTES_MAX, REGION_GROUP};
use crate::outbox::{ca_bundle, Links};
use crate::partner_service::PartnerServer;
use crate::raft_service::RaftServer;
use crate::tls::{LiveServerTls, TlsError, TlsMaterial};
use paymesh_client::Credentials;

/// The most concurrent requests on one API connection.
const API_CONCURRENCY_PER_CONNECTION: usize = 256;

/// How long an API request may take before the server gives up on it
/// (event streams are not limited by it).
const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopping node waits for its open connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often a serving node checks that its actor system still runs.
const ACTORS_CHECK_INTERVAL: Duration = Duration::from_millis(250);

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
    /// The actor system (the leader's proposer and partner actors) stopped:
    /// the node could no longer take a write.
    #[error("the actor system stopped; see the log above")]
    ActorsStopped,
}

/// Where a node keeps its Raft log (its segments and its vote) under its
/// data directory.
pub const RAFT_LOG_DIR: &str = "raft-log";

/// Where a node keeps its state machine (checkpoints, and history under
/// them) under its data directory.
pub const STATE_DIR: &str = "state";

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
    /// This node's TLS material as read at start, unless it runs plaintext
    /// (development). A SIGHUP replaces what the servers and the clients use
    /// (see `LiveTls`), not this.
    pub tls: Option<Arc<TlsMaterial>>,
    /// How this node presents itself when it dials the region's nodes, and
    /// whom it trusts: its certificate and the region's CA file, replaced
    /// when a SIGHUP reloads them (clients follow it with
    /// [`paymesh_client::Region::live`]).
    pub dialing: Arc<watch::Sender<Credentials>>,
    /// The links to the remote regions (the outbox's destinations).
    pub links: Arc<Links>,
    /// The trace contexts of recent transfers (see [`crate::telemetry`]).
    pub traces: Arc<crate::telemetry::Traces>,
    /// Who is calling, and whether its certificate is revoked.
    pub auth: Authenticator,
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
        let dialing = Arc::new(watch::Sender::new(Node::credentials_of(&config, tls.as_deref())));
        let network = Network::new(REGION_GROUP, dialing.subscribe(), config.raft_dial(), config.snapshot_timeout());
        let store = network.store_handle();
        let node = Node::open_parts(config, network, tls, dialing).await?;
        let _ = store.set(node.state_machine.clone());
        Ok(node)
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

    /// How this node presents itself to other nodes, and any change to it
    /// (for [`paymesh_client::Region::live`]).
    pub fn dialing(&self) -> watch::Receiver<Credentials> {
        self.dialing.subscribe()
    }

    /// As [`Node::open`], with another network (in-process tests inject faults).
    pub async fn open_with_network<N: RaftNetworkFactory<TypeConfig>>(
        config: NodeConfig,
        network: N,
    ) -> Result<Node, NodeError> {
        let tls = Node::load_tls(&config)?;
        let dialing = Arc::new(watch::Sender::new(Node::credentials_of(&config, tls.as_deref())));
        Node::open_parts(config, network, tls, dialing).await
    }

    async fn open_parts<N: RaftNetworkFactory<TypeConfig>>(
        config: NodeConfig,
        network: N,
        tls: Option<Arc<TlsMaterial>>,
        dialing: Arc<watch::Sender<Credentials>>,
    ) -> Result<Node, NodeError> {
        if !config.keeps_log_for_fallback() {
            tracing::warn!(
                logs_kept_after_snapshot = config.raft.logs_kept_after_snapshot,
                snapshot_threshold = config.snapshot_threshold(),
                "raft.logs_kept_after_snapshot is below this node's snapshot interval: if its newest checkpoint is \
                 damaged, the previous one cannot be replayed from the log and the node must be rebuilt from its peers"
            );
        }
        let data: &Path = &config.data_dir;
        let log = LogStore::open(&data.join(RAFT_LOG_DIR))?;
        let log_stats = log.stats();
        let state_machine = StateMachineStore::open(&data.join(STATE_DIR), config.region.clone())?;
        let raft_config = config.openraft_config().validate().map_err(|e| NodeError::Config(e.to_string()))?;
        let links = Links::from_config(&config, tls.as_deref()).map_err(NodeError::Config)?;
        let revoked = config.tls.as_ref().and_then(|files| files.revoked.clone());
        let auth = Authenticator::new(config.insecure_plaintext, revoked).map_err(NodeError::Config)?;
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log, state_machine.clone()).await?;
        Ok(Node {
            config: Arc::new(config),
            raft,
            state_machine,
            log_stats,
            tls,
            dialing,
            links: Arc::new(links),
            traces: Arc::default(),
            auth,
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
        let setting = actors::Setting {
            raft: self.raft.clone(),
            state_machine: self.state_machine.clone(),
            node_id: self.config.node_id,
            group_commit_interval: self.config.group_commit_interval(),
            event_streams_per_partner_max: self.config.limits.event_streams_per_partner_max,
        };
        let (registry, actors) = actors::start(setting).map_err(|e| NodeError::Startup(e.to_string()))?;
        let gateway = Gateway {
            region: self.config.region.clone(),
            raft: self.raft.clone(),
            state_machine: self.state_machine.clone(),
            auth: self.auth.clone(),
            rates: self.rates.clone(),
            links: self.links.clone(),
            traces: self.traces.clone(),
            registry,
            webhooks: Arc::new(crate::webhooks::Webhooks::new(
                self.config.webhooks.clone(),
                self.config.insecure_plaintext,
            )),
        };
        let watcher = tokio::spawn(follow_leadership(gateway.clone()));
        Ok(Pipeline { gateway, actors, watcher })
    }

    /// The node's live TLS material (see [`LiveTls`]), from `material`: the
    /// region's listeners trust the region's CA, the inter-region listener
    /// the remote regions' CAs.
    fn live_tls(&self, material: &TlsMaterial) -> Result<LiveTls, NodeError> {
        let failed = |e: TlsError| NodeError::Config(format!("tls: {e}"));
        let region = LiveServerTls::new(material.rustls_server_config(material.ca_pem()).map_err(failed)?);
        let bundle = self.links.ca_bundle();
        let interregion = if bundle.is_empty() {
            None
        } else {
            Some(LiveServerTls::new(material.rustls_server_config(&bundle).map_err(failed)?))
        };
        let console = match self.config.console.listen {
            Some(_) => Some(LiveServerTls::new(material.rustls_console_config(material.ca_pem()).map_err(failed)?)),
            None => None,
        };
        Ok(LiveTls { region, interregion, console, dialing: self.dialing.clone(), links: self.links.clone() })
    }

    /// Serve the Raft transport and the API until `shutdown` resolves, then
    /// stop the servers and the Raft group.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
        self.serve_with(shutdown, |_| {}).await
    }

    /// As [`Node::serve`], handing the started pipeline to `started` first
    /// (tests use it to break the pipeline under a serving node).
    #[doc(hidden)]
    pub async fn serve_with(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        started: impl FnOnce(&Pipeline),
    ) -> Result<(), NodeError> {
        let bind =
            |addr| async move { TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { addr, source }) };
        let raft_listener = bind(self.config.raft_listen).await?;
        let api_listener = bind(self.config.api_listen).await?;
        let metrics_listener = match self.config.metrics.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let console_listener = match self.config.console.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
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
        if self.config.insecure_plaintext {
            tracing::warn!(
                beyond_loopback = self.config.insecure_plaintext_beyond_loopback,
                "INSECURE: insecure_plaintext is set. Every listener serves plaintext gRPC and callers name \
                 themselves in metadata: anyone who reaches a port can act as any partner, operator or node. \
                 For development only; use a [tls] section anywhere else."
            );
        }
        tracing::info!(
            node = self.config.node_id,
            region = %self.config.region,
            raft = %self.config.raft_listen,
            api = %self.config.api_listen,
            "node serving"
        );
        let tls = self.tls.as_deref().map(|material| self.live_tls(material)).transpose()?;
        let reloader =
            tokio::spawn(reload_on_hangup(self.config.clone(), self.auth.clone(), tls.clone(), self.remotes()));
        let retention =
            tokio::spawn(crate::retention::run(self.state_machine.clone(), self.config.history.retention_ms()));
        let (stop, stopped) = watch::channel(false);
        let wait = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let pipeline = self.start_pipeline()?;
        started(&pipeline);
        let Pipeline { gateway, actors: actor_thread, watcher } = pipeline;
        let interregion_gateway = gateway.clone();
        let stopped_interregion = stopped.clone();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<PartnerServiceServer<PartnerServer>>().await;
        health.set_serving::<AdminServiceServer<AdminServer>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(partner_descriptors()?)
            .with_service_name(PARTNER_SERVICE)
            .build_v1()
            .map_err(|e| NodeError::Startup(format!("reflection: {e}")))?;
        let raft_server = RaftServer::new(
            BTreeMap::from([(REGION_GROUP, (self.raft.clone(), self.state_machine.clone()))]),
            self.config.region.clone(),
            self.auth.clone(),
            self.members(),
        );
        let raft_service = RaftServiceServer::new(raft_server)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let region_tls = tls.as_ref().map(|tls| &tls.region);
        let raft_router = listener::server().add_service(raft_service);
        let raft_task = spawn_server(
            raft_router,
            raft_listener,
            (listener::RAFT_CONNECTIONS_MAX, "raft"),
            region_tls,
            wait(stopped.clone()),
        );
        let node_id = self.config.node_id;
        let api_router = listener::aging_server()
            .concurrency_limit_per_connection(API_CONCURRENCY_PER_CONNECTION)
            .timeout(API_REQUEST_TIMEOUT)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(Answering::new(
                node_id,
                Measured::new(SizeLimited(
                    PartnerServiceServer::new(PartnerServer::new(gateway.clone()))
                        .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
                        .max_encoding_message_size(API_MESSAGE_BYTES_MAX),
                )),
            ))
            .add_service(Answering::new(
                node_id,
                Measured::new(SizeLimited(
                    AdminServiceServer::new(AdminServer::new(gateway.clone()))
                        .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
                        .max_encoding_message_size(API_MESSAGE_BYTES_MAX),
                )),
            ))
            .add_service(Answering::new(
                node_id,
                Measured::new(ClusterServiceServer::new(ClusterServer::new(
                    self.config.clone(),
                    self.raft.clone(),
                    self.state_machine.clone(),
                    self.log_stats.clone(),
                    self.auth.clone(),
                    self.dialing(),
                    gateway.clone(),
                ))),
            ))
            .add_service(Answering::new(
                node_id,
                Measured::new(SizeLimited(
                    HistoryServiceServer::new(HistoryServer::new(
                        self.config.clone(),
                        self.state_machine.clone(),
                        self.auth.clone(),
                    ))
                    .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(HISTORY_MESSAGE_BYTES_MAX),
                )),
            ))
            .add_service(Answering::new(
                node_id,
                Measured::new(
                    InterRegionServiceServer::new(InterRegionServer::new(
                        gateway.clone(),
                        Door::Forwarded,
                        self.dialing(),
                        self.config.insecure_plaintext,
                    ))
                    .max_decoding_message_size(INTERREGION_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(INTERREGION_MESSAGE_BYTES_MAX),
                ),
            ));
        let api_task = spawn_server(
            api_router,
            api_listener,
            (self.config.limits.api_connections_max, "api"),
            region_tls,
            wait(stopped),
        );
        let mut tasks = vec![raft_task, api_task];
        if let Some(listener) = metrics_listener {
            let sources = Sources {
                node_id: self.config.node_id,
                raft: self.raft.clone(),
                state_machine: self.state_machine.clone(),
                log_stats: self.log_stats.clone(),
                links: self.links.clone(),
                data_dir: self.config.data_dir.clone(),
            };
            let stopped_metrics = stop.subscribe();
            tokio::spawn(crate::metrics::serve(listener, sources, wait(stopped_metrics)));
        }
        if let (Some(listener), Some(console_tls)) = (console_listener, tls.as_ref().and_then(|t| t.console.clone())) {
            let console = crate::console::Console::new(
                self.config.node_id,
                self.raft.clone(),
                self.state_machine.clone(),
                self.links.clone(),
                self.auth.clone(),
                self.dialing(),
            );
            tokio::spawn(console.serve(listener, console_tls, wait(stop.subscribe())));
        }
        if let Some(listener) = interregion_listener {
            let interregion_tls = tls.as_ref().and_then(|tls| tls.interregion.as_ref());
            let task = self
                .interregion_server(interregion_gateway, listener, interregion_tls, wait(stopped_interregion))
                .await;
            tasks.push(task);
        }
        // A Raft group that stopped by itself (a storage error is fatal to
        // openraft) ends the process too, so a supervisor restarts it rather
        // than leaving a node that answers but can no longer replicate.
        // The server metrics change only with the role, the leader or the
        // membership (the full metrics are sent on every turn of openraft's
        // loop); their channel closes when the Raft group stops.
        let mut server_metrics = self.raft.server_metrics();
        let raft_stopped = async move { while server_metrics.changed().await.is_ok() {} };
        // So does the actor system ending (a panic on its thread, or a stop):
        // a leader without its proposer would refuse every write while still
        // holding leadership. Its arbiter refusing work is the signal.
        let registry = gateway.registry.clone();
        let actors_stopped = async move {
            let mut check = tokio::time::interval(ACTORS_CHECK_INTERVAL);
            while registry.running() {
                check.tick().await;
            }
        };
        let failed = tokio::select! {
            () = shutdown => None,
            () = raft_stopped => Some(NodeError::RaftStopped("a fatal error; see the log above".into())),
            () = actors_stopped => Some(NodeError::ActorsStopped),
        };
        match &failed {
            Some(NodeError::ActorsStopped) => {
                tracing::error!(node = self.config.node_id, "the actor system stopped; shutting down")
            }
            Some(_) => tracing::error!(node = self.config.node_id, "the Raft group stopped on an error; shutting down"),
            None => tracing::info!(node = self.config.node_id, "shutting down"),
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
        reloader.abort();
        retention.abort();
        drop(actor_thread);
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(%e, "raft shutdown");
        }
        tracing::info!(node = self.config.node_id, "stopped");
        failed.map_or(Ok(()), Err)
    }
}

impl Node {
    /// The inter-region listener's server: TLS trusting only the remote
    /// regions' CAs, the inter-region service, and health (the peers' probe).
    async fn interregion_server(
        &self,
        gateway: Gateway,
        incoming: TcpListener,
        tls: Option<&LiveServerTls>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> ServerTask {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<InterRegionServiceServer<InterRegionServer>>().await;
        let service = InterRegionServiceServer::new(InterRegionServer::new(
            gateway,
            Door::Remote(self.links.clone()),
            self.dialing(),
            self.config.insecure_plaintext,
        ))
        .max_decoding_message_size(INTERREGION_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(INTERREGION_MESSAGE_BYTES_MAX);
        tracing::info!(addr = ?incoming.local_addr().ok(), "serving the inter-region protocol");
        let router = listener::aging_server()
            .timeout(API_REQUEST_TIMEOUT)
            .add_service(health_service)
            .add_service(Measured::new(service));
        spawn_server(router, incoming, (listener::INTERREGION_CONNECTIONS_MAX, "interregion"), tls, shutdown)
    }
}

/// A server's task.
type ServerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Serve `router` on `incoming` (at most `limit.0` connections; `limit.1`
/// names the listener) until `shutdown`: over TLS with the configuration
/// `tls` holds at each connection, or plaintext without one.
fn spawn_server(
    router: tonic::transport::server::Router,
    incoming: TcpListener,
    limit: (usize, &'static str),
    tls: Option<&LiveServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ServerTask {
    let (connections, name) = limit;
    match tls {
        Some(tls) => {
            tokio::spawn(router.serve_with_incoming_shutdown(
                listener::accepted_tls(incoming, connections, name, tls.clone()),
                shutdown,
            ))
        }
        None => {
            tokio::spawn(router.serve_with_incoming_shutdown(listener::accepted(incoming, connections, name), shutdown))
        }
    }
}

/// A node's live TLS material: what its servers present and trust, and what
/// it presents and trusts when it dials (the region's nodes, and each remote
/// region). A SIGHUP replaces all of it at once ([`LiveTls::reload`]); every
/// connection made from then on, either way, uses the new material, and
/// connections already open keep theirs until they close.
#[derive(Clone, Debug)]
struct LiveTls {
    /// The Raft and API listeners': the region's CA.
    region: LiveServerTls,
    /// The inter-region listener's: the remote regions' CAs.
    interregion: Option<LiveServerTls>,
    /// The operator console's: the region's CA, over HTTP/1.1.
    console: Option<LiveServerTls>,
    /// Dialing the region's nodes (Raft, forwarding to the leader).
    dialing: Arc<watch::Sender<Credentials>>,
    /// Dialing each remote region, and the CA keys its callers are checked
    /// against.
    links: Arc<Links>,
}

impl LiveTls {
    /// Read this node's `[tls]` files and the remote regions' CA files again
    /// and use them for the next connections, accepted and dialed: a rotated
    /// certificate and key, a CA file with another CA added or an old one
    /// removed (a rollover), a remote region's new CA. Every file is read
    /// and checked before anything is replaced: on an error nothing is.
    fn reload(&self, config: &NodeConfig) -> Result<(), String> {
        // The same loading and identity check as at start.
        let material = Node::load_tls(config).map_err(|e| e.to_string())?.ok_or("no [tls] section")?;
        let remote_cas = self.links.read_cas()?;
        let region = material.rustls_server_config(material.ca_pem()).map_err(|e| e.to_string())?;
        let interregion = match &self.interregion {
            Some(_) => {
                let bundle = ca_bundle(remote_cas.iter().flatten());
                Some(material.rustls_server_config(&bundle).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let console = match &self.console {
            Some(_) => Some(material.rustls_console_config(material.ca_pem()).map_err(|e| e.to_string())?),
            None => None,
        };
        // Clients first: once a server presents the new certificate, the
        // node also dials with it.
        self.dialing.send_replace(material.credentials());
        self.links.install(&material, remote_cas);
        self.region.replace(region);
        if let (Some(live), Some(config)) = (&self.interregion, interregion) {
            live.replace(config);
        }
        if let (Some(live), Some(config)) = (&self.console, console) {
            live.replace(config);
        }
        Ok(())
    }
}

/// What a SIGHUP needs to take a changed list of remote regions: the links
/// and the applied state (to count what is in flight with a region).
#[derive(Clone)]
struct Remotes {
    links: Arc<Links>,
    state_machine: StateMachineStore,
}

impl Node {
    fn remotes(&self) -> Remotes {
        Remotes { links: self.links.clone(), state_machine: self.state_machine.clone() }
    }
}

impl Remotes {
    /// Read the configuration file again and take its remote regions
    /// ([`Links::update`]); the configuration read, for the TLS reload that
    /// follows. The node's own identity and listeners are not changed by a
    /// reload: a file that changes them is refused.
    fn reload(&self, config: &NodeConfig) -> Result<(NodeConfig, crate::outbox::LinkChanges), String> {
        let path = config.source.as_deref().ok_or("the configuration was not read from a file")?;
        let fresh = NodeConfig::load(path).map_err(|e| e.to_string())?;
        if (fresh.region.clone(), fresh.node_id, fresh.interregion_listen)
            != (config.region.clone(), config.node_id, config.interregion_listen)
        {
            return Err(format!(
                "{}: the region, node id or interregion_listen changed; those take a restart",
                path.display()
            ));
        }
        let material = Node::load_tls(&fresh).map_err(|e| e.to_string())?;
        let applied = self.state_machine.applied();
        let in_flight = |region: &RegionId| {
            applied.state.outbox_for(region).count() + applied.state.reconcile_asks(region, None, usize::MAX).len()
        };
        let changes = self.links.update(&fresh, material.as_deref(), in_flight)?;
        Ok((fresh, changes))
    }
}

/// On every SIGHUP, without a restart: read the revocation list again; the
/// configuration file's remote regions (one added, drained, removed); and
/// this node's certificate, key and CA file and the remote regions' CA files
/// for the next connections, accepted and dialed. What does not read leaves
/// what is in force (and says why).
async fn reload_on_hangup(config: Arc<NodeConfig>, auth: Authenticator, tls: Option<LiveTls>, remotes: Remotes) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: certificates and the revocation list are read only at start");
        return;
    };
    while hangups.recv().await.is_some() {
        match auth.reload() {
            Ok(revoked) => tracing::info!(revoked, "SIGHUP: revocation list reloaded"),
            Err(e) => tracing::error!(%e, "SIGHUP: revocation list not reloaded; the previous one stays in force"),
        }
        let config = match remotes.reload(&config) {
            Ok((fresh, changes)) => {
                for change in &changes {
                    tracing::info!(change = %change, "SIGHUP: remote regions");
                }
                Arc::new(fresh)
            }
            Err(e) => {
                tracing::error!(%e, "SIGHUP: remote regions not reloaded; the ones in force stay");
                config.clone()
            }
        };
        if let Some(tls) = &tls {
            match tls.reload(&config) {
                Ok(()) => tracing::info!(
                    "SIGHUP: certificate, key, CA file and remote regions' CA files reloaded for new connections, \
                     accepted and dialed"
                ),
                Err(e) => tracing::error!(%e, "SIGHUP: certificates not reloaded; the previous ones stay in force"),
            }
        }
    }
}

/// The one service server reflection advertises.
const PARTNER_SERVICE: &str = "paymesh.partner.v1.PartnerService";

/// The proto packages reflection describes: the partner API and the types it
/// uses. The API listener also serves operators and the region's nodes, but
/// reflection describes only what partners may call, so a partner (or anyone
/// with a certificate of the region) learns nothing of the operator and node
/// services from it.
const REFLECTED_PACKAGES: [&str; 2] = ["paymesh.partner.v1", "paymesh.common.v1"];

/// The descriptors of [`REFLECTED_PACKAGES`] out of the whole contract.
fn partner_descriptors() -> Result<prost_types::FileDescriptorSet, NodeError> {
    use prost::Message;
    let all = prost_types::FileDescriptorSet::decode(paymesh_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| NodeError::Startup(format!("reflection: the contract's descriptors do not decode: {e}")))?;
    let file = all.file.into_iter().filter(|f| REFLECTED_PACKAGES.contains(&f.package())).collect();
    Ok(prost_types::FileDescriptorSet { file })
}

/// Tell the actors when this node gains or loses leadership; while it leads,
/// tell them when new entries are applied (so event subscribers get them),
/// ship the outbox to every remote region and deliver webhooks. Runs until the Raft group
/// stops.
async fn follow_leadership(gateway: Gateway) {
    let registry = gateway.registry.clone();
    let mut server = gateway.raft.server_metrics();
    let mut applied = gateway.state_machine.watch_applied();
    let mut links = gateway.links.watch();
    let mut leading = None;
    let mut tasks = LeaderTasks::default();
    loop {
        let now_leading = {
            let m = server.borrow_and_update();
            (m.state == ServerState::Leader).then(|| m.vote.leader_id().get_term())
        };
        if now_leading != leading {
            leading = now_leading;
            registry.lead(leading);
            tasks.stop();
            if leading.is_some() {
                tasks.ship(&gateway);
                tasks.webhooks = Some(tokio::spawn(crate::webhooks::deliver(gateway.clone())));
            }
        }
        // A follower has nobody to tell about applied entries: it waits for
        // the role alone.
        let stopped = if leading.is_some() {
            tokio::select! {
                changed = server.changed() => changed.is_err(),
                changed = applied.changed() => {
                    if changed.is_ok() {
                        registry.entries_applied();
                    }
                    false
                }
                changed = links.changed() => {
                    if changed.is_ok() {
                        tasks.ship(&gateway);
                    }
                    false
                }
            }
        } else {
            server.changed().await.is_err()
        };
        if stopped {
            registry.lead(None);
            tasks.stop();
            return;
        }
    }
}

/// The tasks a leader runs: one shipper per remote region's link, and
/// webhook delivery.
#[derive(Default)]
struct LeaderTasks {
    shippers: BTreeMap<RegionId, (Arc<crate::outbox::Link>, tokio::task::JoinHandle<()>)>,
    webhooks: Option<tokio::task::JoinHandle<()>>,
}

impl LeaderTasks {
    /// A shipper for every link there is now: one started for a link
    /// added or replaced (a SIGHUP), one stopped for a link removed, the
    /// others left running.
    fn ship(&mut self, gateway: &Gateway) {
        let links: BTreeMap<RegionId, Arc<crate::outbox::Link>> =
            gateway.links.iter().map(|link| (link.region.clone(), link)).collect();
        self.shippers.retain(|region, (link, task)| {
            let kept = links.get(region).is_some_and(|now| Arc::ptr_eq(now, link));
            if !kept {
                task.abort();
            }
            kept
        });
        for (region, link) in links {
            if let std::collections::btree_map::Entry::Vacant(vacant) = self.shippers.entry(region) {
                let task = tokio::spawn(crate::outbox::ship(gateway.clone(), link.clone()));
                vacant.insert((link, task));
            }
        }
    }

    fn stop(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.shippers) {
            task.abort();
        }
        if let Some(task) = self.webhooks.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PeerConfig, RaftSettings, RemoteRegionConfig};

    /// The actor system ending under a serving node (a panic on its thread,
    /// or a stop) ends `serve` with an error, so the process exits non-zero
    /// and its supervisor restarts it, instead of a leader refusing every
    /// write.
    fn config(dir: &Path) -> NodeConfig {
        NodeConfig {
            node_id: 1,
            region: RegionId::new("us-west").unwrap(),
            raft_listen: "127.0.0.1:0".parse().unwrap(),
            api_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.join("node-1"),
            insecure_plaintext: true,
            insecure_plaintext_beyond_loopback: false,
            tls: None,
            peers: vec![PeerConfig { node_id: 1, raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:1".into() }],
            interregion_listen: None,
            remote_regions: Vec::new(),
            raft_dial: Default::default(),
            source: None,
            limits: Default::default(),
            history: Default::default(),
            webhooks: Default::default(),
            metrics: crate::config::MetricsSettings::default(),
            console: crate::config::ConsoleSettings::default(),
            raft: RaftSettings::default(),
        }
    }

    /// Whether the inter-region listener's TLS in force accepts a client
    /// presenting `holder`'s certificate from `dir` and trusting `trust`.
    async fn handshake(live: &LiveTls, trust: &Path, dir: &Path, holder: &str) -> bool {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let blocks = |path: &Path| {
            let pem = std::fs::read(path).unwrap();
            x509_parser::pem::Pem::iter_from_buffer(&pem).map(|b| b.unwrap().contents).collect::<Vec<_>>()
        };
        let mut roots = rustls::RootCertStore::empty();
        for der in blocks(trust) {
            roots.add(CertificateDer::from(der)).unwrap();
        }
        let chain = blocks(&dir.join(format!("{holder}.pem"))).into_iter().map(CertificateDer::from).collect();
        let key = PrivateKeyDer::Pkcs8(blocks(&dir.join(format!("{holder}.key"))).remove(0).into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = live.interregion.as_ref().expect("an inter-region listener").acceptor();
        let name = ServerName::try_from("localhost").unwrap();
        let (accepted, _) = tokio::join!(acceptor.accept(server_io), connector.connect(name, client_io));
        accepted.is_ok()
    }

    /// A SIGHUP re-reads a remote region's CA file for both directions: the
    /// inter-region listener's trust and the CA keys its callers are pinned
    /// by, and the trust root this node dials the region with; its own files
    /// too. A reload with a file that does not read changes nothing.
    #[tokio::test]
    async fn a_reload_rereads_the_remote_regions_ca_files_for_calls_either_way() {
        use crate::config::RemoteRegionConfig;
        use crate::tls::certs::{generate, CertSpec};
        use crate::tls::TlsFiles;
        let dir = tempfile::tempdir().unwrap();
        let issue = |sub: &str, holder: &str| {
            let out = dir.path().join(sub);
            let identity = Identity::parse(holder).unwrap();
            let region = match &identity {
                Identity::Node { region, .. } => region.clone(),
                _ => unreachable!(),
            };
            let hosts = vec!["localhost".to_owned()];
            generate(&out, &CertSpec { region, holders: vec![identity], node_hosts: hosts }).unwrap();
            out
        };
        let (us, old_east, new_east) =
            (issue("us", "node:us-west:1"), issue("old-east", "node:cn-east:1"), issue("new-east", "node:cn-east:1"));
        let remote_ca = dir.path().join("cn-east-ca.pem");
        std::fs::copy(old_east.join("ca.pem"), &remote_ca).unwrap();
        let east = RegionId::new("cn-east").unwrap();
        let config = NodeConfig {
            insecure_plaintext: false,
            tls: Some(TlsFiles {
                ca_cert: us.join("ca.pem"),
                cert: us.join("node-us-west-1.pem"),
                key: us.join("node-us-west-1.key"),
                revoked: None,
            }),
            remote_regions: vec![RemoteRegionConfig {
                region: east.clone(),
                endpoints: vec!["127.0.0.1:1".into()],
                ca_cert: Some(remote_ca.clone()),
                draining: false,
            }],
            ..config(dir.path())
        };
        let node = Node::open(config.clone()).await.unwrap();
        let live = node.live_tls(node.tls.as_deref().unwrap()).unwrap();
        let link = node.links.get(&east).unwrap().clone();
        let trusted = |link: &crate::outbox::Link| match link.credentials() {
            Credentials::Tls { ca, .. } => ca,
            Credentials::Plaintext { .. } => unreachable!(),
        };
        let pem = |path: &Path| std::fs::read(path).unwrap();
        let keys = |path: &Path| crate::interregion::ca_keys(&pem(path)).unwrap();
        let (trust, holder) = (us.join("ca.pem"), "node-cn-east-1");
        assert!(handshake(&live, &trust, &old_east, holder).await);
        assert!(!handshake(&live, &trust, &new_east, holder).await);
        assert_eq!(link.ca().unwrap().keys, keys(&old_east.join("ca.pem")));
        assert_eq!(trusted(&link), pem(&old_east.join("ca.pem")));

        // A remote CA file that does not read: the reload fails, and every
        // part stays as it was.
        std::fs::write(&remote_ca, "not a certificate").unwrap();
        let mut dialing = node.dialing();
        let error = live.reload(&config).unwrap_err();
        assert!(error.contains("cn-east-ca.pem"), "{error}");
        assert!(handshake(&live, &trust, &old_east, holder).await);
        assert_eq!(link.ca().unwrap().keys, keys(&old_east.join("ca.pem")));
        assert_eq!(trusted(&link), pem(&old_east.join("ca.pem")));
        assert!(!dialing.has_changed().unwrap(), "the region's dialing credentials were replaced");

        // The region's new CA: trusted and pinned on the listener, and the
        // root this node dials the region with, all at once.
        std::fs::copy(new_east.join("ca.pem"), &remote_ca).unwrap();
        live.reload(&config).unwrap();
        assert!(handshake(&live, &trust, &new_east, holder).await);
        assert!(!handshake(&live, &trust, &old_east, holder).await);
        assert_eq!(link.ca().unwrap().keys, keys(&new_east.join("ca.pem")));
        assert_eq!(trusted(&link), pem(&new_east.join("ca.pem")));
        assert!(dialing.has_changed().unwrap(), "the region's dialing credentials were not replaced");
        let dialed = dialing.borrow_and_update().clone();
        match dialed {
            Credentials::Tls { ca, cert, .. } => {
                assert_eq!(ca, pem(&us.join("ca.pem")));
                assert_eq!(cert, pem(&us.join("node-us-west-1.pem")));
            }
            Credentials::Plaintext { .. } => panic!("plaintext credentials with TLS"),
        }
    }

    #[tokio::test]
    async fn serve_ends_with_an_error_when_the_actors_stop() {
        // With its actors running, a node serves until told to stop.
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(config(dir.path())).await.unwrap();
        let stop = tokio::time::sleep(Duration::from_millis(1_500));
        let served = tokio::time::timeout(Duration::from_secs(10), node.serve_with(stop, |_| {})).await;
        assert!(matches!(served, Ok(Ok(()))), "{served:?}");

        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(config(dir.path())).await.unwrap();
        let served = tokio::time::timeout(
            Duration::from_secs(10),
            node.serve_with(std::future::pending(), |pipeline| pipeline.actors.system().stop()),
        )
        .await;
        match served {
            Ok(Err(NodeError::ActorsStopped)) => {}
            other => panic!("expected serve to end with ActorsStopped, got {other:?}"),
        }
    }

    /// A SIGHUP's list of remote regions: a region added gets a link (and
    /// the leader's shippers are told), one drained refuses new work with
    /// `RegionDraining`, and one removed loses its link only once nothing
    /// is in flight with it.
    #[tokio::test]
    async fn remote_regions_are_added_drained_and_removed_only_when_nothing_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let remote = |name: &str, draining: bool| RemoteRegionConfig {
            region: RegionId::new(name).unwrap(),
            endpoints: vec!["127.0.0.1:1".into()],
            ca_cert: None,
            draining,
        };
        let with = |remotes: Vec<RemoteRegionConfig>| NodeConfig {
            interregion_listen: Some("127.0.0.1:0".parse().unwrap()),
            remote_regions: remotes,
            ..config(dir.path())
        };
        let (east, eu) = (RegionId::new("cn-east").unwrap(), RegionId::new("eu-central").unwrap());
        let links = Links::from_config(&with(vec![remote("cn-east", false)]), None).unwrap();
        let mut changes = links.watch();
        let none = |_: &RegionId| 0;

        let said = links.update(&with(vec![remote("cn-east", false), remote("eu-central", false)]), None, none);
        assert_eq!(said.unwrap(), ["region eu-central added: 1 endpoints"]);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(links.get(&eu).is_some() && links.check(&eu).is_ok());

        let said = links.update(&with(vec![remote("cn-east", false), remote("eu-central", true)]), None, none);
        assert_eq!(said.unwrap(), ["region eu-central draining: new transfers to it are refused"]);
        assert!(!changes.has_changed().unwrap(), "draining keeps the link and its shipper");
        let refused = links.check(&eu).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().starts_with("RegionDraining"), "{refused:?}");
        assert!(links.check(&east).is_ok());

        let busy = |region: &RegionId| if region.as_str() == "eu-central" { 3 } else { 0 };
        let refused = links.update(&with(vec![remote("cn-east", false)]), None, busy).unwrap_err();
        assert!(refused.contains("3 cross-border messages or transfers are in flight"), "{refused}");
        assert!(links.get(&eu).is_some(), "a refused reload changes nothing");

        let said = links.update(&with(vec![remote("cn-east", false)]), None, none);
        assert_eq!(said.unwrap(), ["region eu-central removed"]);
        assert!(changes.has_changed().unwrap());
        assert!(links.get(&eu).is_none());
        assert!(links.check(&eu).unwrap_err().message().contains("not linked"));
    }
}
