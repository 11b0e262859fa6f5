//! A region of `paymesh start` processes on this machine's loopback, with
//! its own development CA: what `paymesh bench` measures and what the
//! integration tests run against.
//!
//! Everything lives under one directory: `certs/` (the CA and every holder's
//! certificate), and per node `node-<id>.toml`, `data-<id>/` and
//! `node-<id>.log` (its stdout and stderr). Every wait is bounded. Dropping
//! the region kills its processes; the directory is left for inspection.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use paymesh_client::{Credentials, PartnerClient, Region, RetryPolicy};
use paymesh_node::cluster_client::{ClusterClient, RetryPolicy as ClusterRetry};
use paymesh_node::identity::Identity;
use paymesh_node::tls::certs::{self, CertSpec};
use paymesh_proto::admin::v1 as wire;
use paymesh_proto::admin::v1::admin_service_client::AdminServiceClient;

use paymesh_core::id::RegionId;

/// Longest wait for a stopped node to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Log lines per node that [`LocalRegion::logs`] shows.
const LOG_TAIL_LINES: usize = 25;

/// One node process.
#[derive(Debug)]
pub struct LocalNode {
    /// Its Raft node id.
    pub id: u64,
    /// Its Raft listener, `127.0.0.1:<port>`.
    pub raft_addr: String,
    /// Its API listener, `127.0.0.1:<port>`.
    pub api_addr: String,
    /// Its inter-region listener, `127.0.0.1:<port>`.
    pub interregion_addr: String,
    /// Its Prometheus metrics listener, `127.0.0.1:<port>` (empty for a
    /// node someone else runs).
    pub metrics_addr: String,
    /// Its operator console listener, `127.0.0.1:<port>` (empty for a node
    /// someone else runs).
    pub console_addr: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its output goes.
    pub log: PathBuf,
    /// The process, while it runs.
    pub child: Option<Child>,
    /// Configuration appended to this node's file (its `[raft_dial]`, say).
    pub extra_config: String,
}

/// A region of node processes on loopback.
#[derive(Debug)]
pub struct LocalRegion {
    dir: PathBuf,
    region: RegionId,
    exe: PathBuf,
    operator: String,
    raft_settings: String,
    /// Configuration appended to every node's file (the `[[remote_regions]]`
    /// of a mesh).
    pub remote_regions: String,
    /// Environment variables every node process gets (besides this process's).
    pub env: Vec<(String, String)>,
    /// Arguments every node's `paymesh start` gets after its `--config`
    /// (`--log-format json`, say).
    pub start_args: Vec<String>,
    /// The nodes by id, running or not.
    pub nodes: BTreeMap<u64, LocalNode>,
    /// The region's CA and every holder's certificate and key.
    certs: PathBuf,
    /// Nodes run by someone else (containers, say): this value only talks
    /// to them, at every node's address, and starts or stops nothing.
    attached: bool,
}

/// Where node ports are chosen: below Linux's ephemeral range (32768 and
/// up by default), so a port checked free here is not handed to another
/// socket's outgoing connection or port-0 bind before the node binds it.
const NODE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// The longest a [`LocalRegion::cli`] command may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Five free loopback ports that differ, from [`NODE_PORTS`].
fn free_ports() -> anyhow::Result<[u16; 5]> {
    free_ports_in(NODE_PORTS)
}

/// Five free loopback ports that differ, from `range`, claimed for the
/// rest of this process: a port is checked free by binding it, and the
/// node binds it only later, so regions started side by side would
/// otherwise both find free a port that neither of their nodes has bound
/// yet. That happens across processes too (a test and the `paymesh demo`
/// it runs, each starting regions), so a port is claimed by an exclusive
/// lock on a file named after it in the temporary directory
/// ([`PORT_CLAIMS`]), held until this process exits (the kernel releases
/// it then, however the process ends): another process skips a port whose
/// file it cannot lock.
fn free_ports_in(range: std::ops::Range<u16>) -> anyhow::Result<[u16; 5]> {
    use rand::Rng;
    static CLAIMED: std::sync::Mutex<BTreeMap<u16, fs::File>> = std::sync::Mutex::new(BTreeMap::new());
    let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    let claims = std::env::temp_dir().join(PORT_CLAIMS);
    fs::create_dir_all(&claims).with_context(|| format!("create {}", claims.display()))?;
    let mut rng = rand::rng();
    let mut ports = Vec::with_capacity(5);
    for _ in 0..1_000 {
        if ports.len() == 5 {
            break;
        }
        let port = rng.random_range(range.clone());
        if claimed.contains_key(&port) {
            continue;
        }
        let path = claims.join(port.to_string());
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        if file.try_lock().is_err() {
            // Another process holds it (or the lock failed: skip it either way).
            continue;
        }
        // Free now: the listener is closed when it goes out of scope.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            claimed.insert(port, file);
            ports.push(port);
        }
    }
    ports.try_into().map_err(|_| anyhow::anyhow!("no five free loopback ports in {range:?}"))
}

/// The directory, under the temporary directory, of the files whose locks
/// claim node ports across processes.
const PORT_CLAIMS: &str = "paymesh-node-ports";

impl LocalRegion {
    /// Issue certificates for the operator `operator` and `holders` under
    /// `dir`, configure nodes 1..=`members` (with `raft_settings` as the
    /// body of their `[raft]` table) and start them with the `paymesh`
    /// binary `exe`. The region is not initialised yet.
    pub fn start(
        dir: &Path,
        region: &str,
        exe: &Path,
        operator: &str,
        holders: Vec<Identity>,
        members: u64,
        raft_settings: &str,
    ) -> anyhow::Result<LocalRegion> {
        let mut local = LocalRegion::plan(dir, region, exe, operator, holders, members, raft_settings)?;
        local.launch()?;
        Ok(local)
    }

    /// As [`LocalRegion::start`], without starting anything: certificates
    /// issued and addresses allocated, so a mesh can name every region's
    /// endpoints in every other's configuration before [`LocalRegion::launch`].
    pub fn plan(
        dir: &Path,
        region: &str,
        exe: &Path,
        operator: &str,
        holders: Vec<Identity>,
        members: u64,
        raft_settings: &str,
    ) -> anyhow::Result<LocalRegion> {
        let region_id = RegionId::new(region).with_context(|| format!("region name {region:?}"))?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut local = LocalRegion {
            dir: dir.to_owned(),
            region: region_id,
            exe: exe.to_owned(),
            operator: operator.to_owned(),
            raft_settings: raft_settings.to_owned(),
            remote_regions: String::new(),
            env: Vec::new(),
            start_args: Vec::new(),
            nodes: BTreeMap::new(),
            certs: dir.join("certs"),
            attached: false,
        };
        let mut everyone = vec![Identity::operator(operator)?];
        everyone.extend(holders);
        local.issue(everyone)?;
        for id in 1..=members {
            local.configure(id)?;
        }
        Ok(local)
    }

    /// A region whose nodes someone else runs (containers, say), reached at
    /// `api_addrs` (node id → `host:port`), its certificates (`ca.pem`,
    /// `<holder>.pem`, `<holder>.key`) in `certs`, operated by `operator`.
    /// Its `spawn`, `kill` and `stop` have nothing to act on.
    pub fn attach(
        certs: &Path,
        region: &str,
        operator: &str,
        api_addrs: BTreeMap<u64, String>,
    ) -> anyhow::Result<LocalRegion> {
        let region_id = RegionId::new(region).with_context(|| format!("region name {region:?}"))?;
        let nodes = api_addrs
            .into_iter()
            .map(|(id, api_addr)| {
                let node = LocalNode {
                    id,
                    raft_addr: String::new(),
                    api_addr,
                    interregion_addr: String::new(),
                    metrics_addr: String::new(),
                    console_addr: String::new(),
                    config: PathBuf::new(),
                    data_dir: PathBuf::new(),
                    log: PathBuf::new(),
                    child: None,
                    extra_config: String::new(),
                };
                (id, node)
            })
            .collect();
        Ok(LocalRegion {
            dir: certs.to_owned(),
            region: region_id,
            exe: PathBuf::new(),
            operator: operator.to_owned(),
            raft_settings: String::new(),
            remote_regions: String::new(),
            env: Vec::new(),
            start_args: Vec::new(),
            nodes,
            certs: certs.to_owned(),
            attached: true,
        })
    }

    /// Write every planned node's configuration and start it.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        let peers: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &peers {
            self.write_config(*id, &peers)?;
            self.spawn(*id)?;
        }
        Ok(())
    }

    /// The region's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The region's name.
    pub fn region(&self) -> &RegionId {
        &self.region
    }

    fn certs(&self) -> PathBuf {
        self.certs.clone()
    }

    /// Issue certificates for more holders (the CA is reused; a holder's
    /// files from an earlier run in this directory are replaced).
    pub fn issue(&self, holders: Vec<Identity>) -> anyhow::Result<()> {
        let spec =
            CertSpec { region: self.region.clone(), holders, node_hosts: vec!["127.0.0.1".into(), "localhost".into()] };
        certs::generate_with(&self.certs(), &spec, certs::Existing::Replace)?;
        Ok(())
    }

    /// The CA, certificate and key files of a holder (`operator-ops`,
    /// `partner-wallet-a`, `node-us-west-1`, …).
    pub fn cert_files(&self, stem: &str) -> [PathBuf; 3] {
        let certs = self.certs();
        [certs.join("ca.pem"), certs.join(format!("{stem}.pem")), certs.join(format!("{stem}.key"))]
    }

    /// Run the region's `paymesh` binary as `stem` (`operator-ops`,
    /// `node-us-west-1`, …) with the region's nodes as its target, after
    /// `args` (the subcommand and its own options). The exit code, stdout
    /// and stderr; killed after [`CLI_TIMEOUT`].
    pub fn cli(&self, stem: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let [ca, cert, key] = self.cert_files(stem);
        let mut command = Command::new(&self.exe);
        command.args(args);
        for addr in self.api_addrs() {
            command.args(["--node", &addr]);
        }
        command.arg("--ca").arg(ca).arg("--cert").arg(cert).arg("--key").arg(key);
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        let deadline = Instant::now() + CLI_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                bail!("paymesh {args:?} did not finish within {CLI_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let output = child.wait_with_output()?;
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        Ok((output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr)))
    }

    /// The region's CA certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.certs().join("ca.pem")
    }

    /// TLS credentials of a holder.
    pub fn credentials(&self, stem: &str) -> anyhow::Result<Credentials> {
        let [ca, cert, key] = self.cert_files(stem);
        Ok(Credentials::from_files(&ca, &cert, &key)?)
    }

    /// Allocate addresses and a certificate for node `id` (not started).
    pub fn configure(&mut self, id: u64) -> anyhow::Result<()> {
        self.issue(vec![Identity::Node { region: self.region.clone(), node_id: id }])?;
        let [raft_port, api_port, interregion_port, metrics_port, console_port] = free_ports()?;
        let node = LocalNode {
            id,
            raft_addr: format!("127.0.0.1:{raft_port}"),
            api_addr: format!("127.0.0.1:{api_port}"),
            interregion_addr: format!("127.0.0.1:{interregion_port}"),
            metrics_addr: format!("127.0.0.1:{metrics_port}"),
            console_addr: format!("127.0.0.1:{console_port}"),
            config: self.dir.join(format!("node-{id}.toml")),
            data_dir: self.dir.join(format!("data-{id}")),
            log: self.dir.join(format!("node-{id}.log")),
            child: None,
            extra_config: String::new(),
        };
        self.nodes.insert(id, node);
        Ok(())
    }

    fn node(&self, id: u64) -> anyhow::Result<&LocalNode> {
        self.nodes.get(&id).with_context(|| format!("no node {id} in this region"))
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut LocalNode> {
        self.nodes.get_mut(&id).with_context(|| format!("no node {id} in this region"))
    }

    /// Write node `id`'s configuration, listing `peers`.
    pub fn write_config(&self, id: u64, peers: &[u64]) -> anyhow::Result<()> {
        let node = self.node(id)?;
        let mut peer_lines = Vec::with_capacity(peers.len());
        for p in peers {
            let peer = self.node(*p)?;
            peer_lines.push(format!(
                "  {{ node_id = {p}, raft_addr = \"{}\", api_addr = \"{}\" }},",
                peer.raft_addr, peer.api_addr
            ));
        }
        let [ca, cert, key] = self.cert_files(&Identity::Node { region: self.region.clone(), node_id: id }.file_stem());
        let revoked = self.revoked_file();
        if !revoked.exists() {
            fs::write(&revoked, "# SHA-256 fingerprints of revoked certificates, one per line\n")
                .with_context(|| format!("writing {}", revoked.display()))?;
        }
        let text = format!(
            "node_id = {id}\nregion = \"{}\"\nraft_listen = \"{}\"\napi_listen = \"{}\"\n\
             {}data_dir = \"{}\"\n\
             peers = [\n{}\n]\n[raft]\n{}\n[tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             revoked = \"{}\"\n[metrics]\nlisten = \"{}\"\n[console]\nlisten = \"{}\"\n{}\n{}",
            self.region,
            node.raft_addr,
            node.api_addr,
            if self.remote_regions.is_empty() {
                String::new()
            } else {
                format!("interregion_listen = \"{}\"\n", node.interregion_addr)
            },
            node.data_dir.display(),
            peer_lines.join("\n"),
            self.raft_settings,
            ca.display(),
            cert.display(),
            key.display(),
            revoked.display(),
            node.metrics_addr,
            node.console_addr,
            self.remote_regions,
            node.extra_config,
        );
        fs::write(&node.config, text).with_context(|| format!("writing {}", node.config.display()))
    }

    /// The region's revocation list, named in every node's `[tls]`.
    pub fn revoked_file(&self) -> PathBuf {
        self.ca_file().with_file_name("revoked.txt")
    }

    /// Revoke `stem`'s certificate: add its fingerprint to the region's
    /// revocation list. Nodes read the list again on SIGHUP ([`Self::hangup`]).
    pub fn revoke(&self, stem: &str) -> anyhow::Result<()> {
        let [_, cert, _] = self.cert_files(stem);
        let line =
            format!("{}  # {stem}\n", paymesh_node::identity::fingerprint_file(&cert).map_err(anyhow::Error::msg)?);
        let mut file = fs::OpenOptions::new().append(true).open(self.revoked_file())?;
        std::io::Write::write_all(&mut file, line.as_bytes())?;
        Ok(())
    }

    /// Send node `id` SIGHUP (it reloads its revocation list).
    pub fn hangup(&self, id: u64) -> anyhow::Result<()> {
        let pid = self.node(id)?.child.as_ref().with_context(|| format!("node {id} is not running"))?.id();
        let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status()?;
        if !status.success() {
            bail!("kill -HUP {pid}: {status}");
        }
        Ok(())
    }

    /// Start node processes from `exe` from now on (a node's binary
    /// replaced, as in an upgrade; running ones are not touched).
    pub fn set_exe(&mut self, exe: &Path) {
        exe.clone_into(&mut self.exe);
    }

    /// Whether node `id`'s process has exited (it is reaped then), with its
    /// status; `None` while it runs or if it was not started.
    pub fn exited(&mut self, id: u64) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let node = self.node_mut(id)?;
        let Some(child) = node.child.as_mut() else { return Ok(None) };
        let status = child.try_wait()?;
        if status.is_some() {
            node.child = None;
        }
        Ok(status)
    }

    /// Start node `id`'s process; its output is appended to its log.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let exe = self.exe.clone();
        let env = self.env.clone();
        let start_args = self.start_args.clone();
        let node = self.node_mut(id)?;
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        let child = Command::new(&exe)
            .args(["start", "--config"])
            .arg(&node.config)
            .args(&start_args)
            .env("RUST_LOG", std::env::var("PAYMESH_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(mut child) = self.node_mut(id)?.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM node `id` and wait (bounded) for it to exit.
    pub fn terminate(&mut self, id: u64) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.node_mut(id)?.child.take().with_context(|| format!("node {id} is not running"))?;
        let pid = child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("node {id} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM every running node, in id order.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let running: Vec<u64> = self.nodes.values().filter(|n| n.child.is_some()).map(|n| n.id).collect();
        for id in running {
            self.terminate(id)?;
        }
        Ok(())
    }

    /// Delete node `id`'s data directory (the node must be stopped).
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id)?;
        if node.child.is_some() {
            bail!("stop node {id} before wiping it");
        }
        fs::remove_dir_all(&node.data_dir).with_context(|| format!("removing {}", node.data_dir.display()))
    }

    /// API addresses of the running nodes (of every node, if attached).
    pub fn api_addrs(&self) -> Vec<String> {
        self.nodes.values().filter(|n| self.attached || n.child.is_some()).map(|n| n.api_addr.clone()).collect()
    }

    /// The operator's holder name, `operator-<name>`.
    pub fn operator_stem(&self) -> String {
        format!("operator-{}", self.operator)
    }

    /// A cluster client of the running nodes, as the operator.
    pub fn client(&self) -> anyhow::Result<ClusterClient> {
        Ok(ClusterClient::with_credentials(
            self.api_addrs(),
            self.credentials(&self.operator_stem())?,
            ClusterRetry { attempts: 200, deadline: Duration::from_secs(60) },
        ))
    }

    /// An SDK region of the running nodes, presenting `stem`'s certificate.
    pub fn sdk(&self, stem: &str) -> anyhow::Result<Region> {
        let policy = RetryPolicy { attempts: 200, deadline: Duration::from_secs(60) };
        Ok(Region::with_policy(self.api_addrs(), self.credentials(stem)?, policy))
    }

    /// A partner's client, presenting the partner's certificate.
    pub fn partner(&self, id: &str) -> anyhow::Result<PartnerClient> {
        Ok(PartnerClient::new(self.sdk(&format!("partner-{id}"))?))
    }

    /// A client for partner `id` that sends each call as its own request
    /// (no batching).
    pub fn partner_unbatched(&self, id: &str) -> anyhow::Result<PartnerClient> {
        Ok(PartnerClient::unbatched(self.sdk(&format!("partner-{id}"))?))
    }

    /// Run one admin call, as the operator, on whichever node leads.
    pub async fn admin<T, F, Fut>(&self, call: F) -> anyhow::Result<T>
    where
        F: Fn(AdminServiceClient<paymesh_client::NodeChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        crate::admin_calls::call_region(&self.sdk(&self.operator_stem())?, call).await
    }

    /// Initialise the region through node `id` and wait for a leader; the
    /// leader's id.
    pub async fn initialize(&self, id: u64, timeout: Duration) -> anyhow::Result<u64> {
        // Every running node serving first: the first election then reaches
        // them all, rather than logging the ones still starting as
        // unreachable peers (openraft's ERROR, which tests read as a fault).
        let client = self.client()?;
        let deadline = Instant::now() + timeout;
        for addr in self.api_addrs() {
            while client.status(&addr, false).await.is_err() {
                if Instant::now() >= deadline {
                    bail!("node at {addr} not serving within {timeout:?}\n{}", self.logs());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        client.initialize(&self.node(id)?.api_addr).await?;
        self.wait_leader(timeout).await
    }

    /// Wait until a running node reports itself leader; its id.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let client = self.client()?;
        let deadline = Instant::now() + timeout;
        loop {
            for addr in self.api_addrs() {
                if let Ok(status) = client.status(&addr, false).await {
                    if status.role == wire::NodeRole::Leader as i32 {
                        return Ok(status.node_id);
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("no leader within {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status of every running node that answers `client` (`digest`:
    /// with the state digest, which costs each node a hash of its state).
    pub async fn statuses(&self, client: &ClusterClient, digest: bool) -> Vec<wire::GetNodeStatusResponse> {
        let mut statuses = Vec::new();
        for addr in self.api_addrs() {
            if let Ok(status) = client.status(&addr, digest).await {
                statuses.push(status);
            }
        }
        statuses
    }

    /// Wait until every running node has applied the same index with the same
    /// state digest; their statuses.
    pub async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<Vec<wire::GetNodeStatusResponse>> {
        let client = self.client()?;
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses(&client, true).await;
            let complete = statuses.len() == self.api_addrs().len();
            let agree = complete
                && statuses.iter().all(|s| {
                    s.applied_index.is_some()
                        && s.applied_index == statuses[0].applied_index
                        && s.state_digest == statuses[0].state_digest
                        && s.last_log_index == statuses[0].last_log_index
                });
            if agree {
                return Ok(statuses);
            }
            if Instant::now() >= deadline {
                let summary: Vec<String> = statuses
                    .iter()
                    .map(|s| {
                        let digest: String = s.state_digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
                        format!("node {}: applied {:?} digest {digest}", s.node_id, s.applied_index)
                    })
                    .collect();
                bail!("replicas did not converge within {timeout:?}: {summary:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every node's log, for error messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            let text = fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(LOG_TAIL_LINES).collect();
            out.push_str(&format!("--- node {} ({}) ---\n", node.id, node.log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for LocalRegion {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_another_process_claimed_is_not_handed_out() {
        // Another process's claims are locks on other open files (a lock
        // taken through a second open of the same file conflicts within a
        // process as it does across processes).
        let range = 31_900..31_940;
        let claims = std::env::temp_dir().join(PORT_CLAIMS);
        fs::create_dir_all(&claims).unwrap();
        let mut theirs = BTreeMap::new();
        for port in range.clone().step_by(2) {
            let path = claims.join(port.to_string());
            let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
            if file.try_lock().is_ok() {
                theirs.insert(port, file);
            }
        }
        assert!(theirs.len() >= 15, "the test claims most even ports of {range:?}");
        let mut ours = Vec::new();
        for _ in 0..2 {
            ours.extend(free_ports_in(range.clone()).unwrap());
        }
        assert_eq!(ours.len(), 10);
        for port in &ours {
            assert!(range.contains(port));
            assert!(!theirs.contains_key(port), "port {port} is claimed by another holder, yet handed out");
        }
        let distinct: std::collections::BTreeSet<_> = ours.iter().collect();
        assert_eq!(distinct.len(), 10, "ports are handed out once: {ours:?}");
    }
}
