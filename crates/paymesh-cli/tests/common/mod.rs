//! A region of real `paymesh` processes on loopback, for integration tests.
//!
//! Every node gets free ports, a configuration file and a data directory under
//! one temporary directory; its output goes to `node-<id>.log` there, which a
//! failing test prints. Every wait is bounded. Dropping the region kills its
//! processes.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paymesh_core::command::{Command as CoreCommand, CommandBody, CommandId};
use paymesh_core::id::{PartnerId, RegionId, TopUpRef};
use paymesh_core::partner::{PartnerConfig, PartnerRole};
use paymesh_core::{Currency, Money, Outcome, RejectCode};
use paymesh_node::cluster_client::{ClusterClient, RetryPolicy};
use paymesh_node::identity::Identity;
use paymesh_node::tls::certs::{self, CertSpec};
use paymesh_proto::admin::v1 as wire;

/// The region every test uses.
pub const REGION: &str = "us-west";

/// The partners every region's certificates are issued for.
pub const PARTNERS: [&str; 3] = ["wallet-a", "wallet-b", "merchant-net"];

/// The operator the tests act as.
const OPERATOR: &str = "tests";

/// One node process.
pub struct NodeProcess {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

/// A region of node processes.
pub struct Region {
    /// The region's directory; kept (and its path printed) if a test fails.
    pub dir: Option<tempfile::TempDir>,
    pub nodes: BTreeMap<u64, NodeProcess>,
    raft_settings: String,
}

fn free_port() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

impl Region {
    /// Configure `members` nodes (ids 1..=members) with `raft_settings`
    /// appended under `[raft]`, and start them. Not initialised yet.
    pub fn start(members: u64, raft_settings: &str) -> Region {
        let dir = tempfile::tempdir().unwrap();
        let mut region = Region { dir: Some(dir), nodes: BTreeMap::new(), raft_settings: raft_settings.to_owned() };
        // A development CA, the operator and the partners; nodes get theirs
        // when they are configured.
        let mut holders = vec![Identity::operator(OPERATOR).unwrap()];
        holders.extend(PARTNERS.iter().map(|p| Identity::partner(p).unwrap()));
        region.issue(holders);
        for id in 1..=members {
            region.configure(id);
        }
        let peers: Vec<u64> = region.nodes.keys().copied().collect();
        for id in &peers {
            region.write_config(*id, &peers);
            region.spawn(*id);
        }
        region
    }

    fn certs(&self) -> PathBuf {
        self.dir.as_ref().expect("region directory").path().join("certs")
    }

    fn issue(&self, holders: Vec<Identity>) {
        let spec = CertSpec {
            region: RegionId::new(REGION).unwrap(),
            holders,
            node_hosts: vec!["127.0.0.1".into(), "localhost".into()],
        };
        certs::generate(&self.certs(), &spec).unwrap();
    }

    /// TLS credentials of a holder (`operator-tests`, `partner-wallet-a`, …).
    pub fn credentials(&self, stem: &str) -> Credentials {
        let certs = self.certs();
        Credentials::from_files(
            &certs.join("ca.pem"),
            &certs.join(format!("{stem}.pem")),
            &certs.join(format!("{stem}.key")),
        )
        .unwrap()
    }

    /// Allocate addresses and a certificate for node `id` (not yet started).
    pub fn configure(&mut self, id: u64) {
        self.issue(vec![Identity::Node { region: RegionId::new(REGION).unwrap(), node_id: id }]);
        // Hold both listeners until both ports are known, so they differ.
        let (raft_listener, raft_port) = free_port();
        let (api_listener, api_port) = free_port();
        drop((raft_listener, api_listener));
        let root = self.dir.as_ref().expect("region directory").path();
        self.nodes.insert(
            id,
            NodeProcess {
                id,
                raft_addr: format!("127.0.0.1:{raft_port}"),
                api_addr: format!("127.0.0.1:{api_port}"),
                config: root.join(format!("node-{id}.toml")),
                data_dir: root.join(format!("data-{id}")),
                log: root.join(format!("node-{id}.log")),
                child: None,
            },
        );
    }

    /// Write node `id`'s configuration listing `peers`.
    pub fn write_config(&self, id: u64, peers: &[u64]) {
        let node = &self.nodes[&id];
        let peer_lines: Vec<String> = peers
            .iter()
            .map(|p| {
                let peer = &self.nodes[p];
                format!("  {{ node_id = {p}, raft_addr = \"{}\", api_addr = \"{}\" }},", peer.raft_addr, peer.api_addr)
            })
            .collect();
        let certs = self.certs();
        let text = format!(
            "node_id = {id}\nregion = \"{REGION}\"\nraft_listen = \"{}\"\napi_listen = \"{}\"\ndata_dir = \"{}\"\n\
             peers = [\n{}\n]\n[raft]\n{}\n[tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            node.raft_addr,
            node.api_addr,
            node.data_dir.display(),
            peer_lines.join("\n"),
            self.raft_settings,
            certs.join("ca.pem").display(),
            certs.join(format!("node-{REGION}-{id}.pem")).display(),
            certs.join(format!("node-{REGION}-{id}.key")).display(),
        );
        fs::write(&node.config, text).unwrap();
    }

    /// Start node `id`'s process.
    pub fn spawn(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.child.is_none(), "node {id} is already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_paymesh"))
            .args(["start", "--config"])
            .arg(&node.config)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        node.child = Some(child);
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).unwrap().child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM node `id` and wait (bounded) for it to exit; returns its status.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let mut child = self.nodes.get_mut(&id).unwrap().child.take().expect("node is running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "node {id} did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Delete node `id`'s data directory (the node must be stopped).
    pub fn wipe(&mut self, id: u64) {
        let node = &self.nodes[&id];
        assert!(node.child.is_none(), "stop node {id} before wiping it");
        fs::remove_dir_all(&node.data_dir).unwrap();
    }

    /// API addresses of the running nodes.
    pub fn api_addrs(&self) -> Vec<String> {
        self.nodes.values().filter(|n| n.child.is_some()).map(|n| n.api_addr.clone()).collect()
    }

    /// Run the `paymesh` command as `stem` (`operator-tests`,
    /// `node-us-west-1`, …) with the running nodes as its target, after
    /// `args` (the subcommand). Returns the exit code, stdout and stderr.
    /// Killed after 60 s.
    pub fn cli(&self, stem: &str, args: &[&str]) -> (i32, String, String) {
        let certs = self.certs();
        let mut command = Command::new(env!("CARGO_BIN_EXE_paymesh"));
        command.args(args);
        for addr in self.api_addrs() {
            command.args(["--node", &addr]);
        }
        command
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join(format!("{stem}.pem")))
            .arg("--key")
            .arg(certs.join(format!("{stem}.key")));
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("paymesh {args:?} did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let output = child.wait_with_output().unwrap();
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
    }

    /// A client of the running nodes, as the operator.
    pub fn client(&self) -> ClusterClient {
        ClusterClient::with_credentials(
            self.api_addrs(),
            self.credentials(&format!("operator-{OPERATOR}")),
            RetryPolicy { attempts: 200, deadline: Duration::from_secs(60) },
        )
    }

    /// Initialise through node `id` and wait for a leader.
    pub async fn initialize(&self, id: u64) -> u64 {
        let client = self.client();
        client.initialize(&self.nodes[&id].api_addr).await.unwrap();
        self.wait_leader(Duration::from_secs(20)).await
    }

    /// Wait until a running node reports itself leader; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            for addr in self.api_addrs() {
                if let Ok(status) = client.status(&addr, false).await {
                    if status.role == wire::NodeRole::Leader as i32 {
                        return status.node_id;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every running node has applied the same index with the same
    /// state digest; returns the statuses.
    pub async fn wait_converged(&self, timeout: Duration) -> Vec<wire::GetNodeStatusResponse> {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            let mut statuses = Vec::new();
            for addr in self.api_addrs() {
                if let Ok(status) = client.status(&addr, true).await {
                    statuses.push(status);
                }
            }
            let complete = statuses.len() == self.api_addrs().len();
            let agree = complete
                && statuses.iter().all(|s| {
                    s.applied_index.is_some()
                        && s.applied_index == statuses[0].applied_index
                        && s.state_digest == statuses[0].state_digest
                        && s.last_log_index == statuses[0].last_log_index
                });
            if agree {
                return statuses;
            }
            if Instant::now() >= deadline {
                let summary: Vec<String> = statuses
                    .iter()
                    .map(|s| {
                        format!("node {}: applied {:?} digest {}", s.node_id, s.applied_index, hex(&s.state_digest))
                    })
                    .collect();
                panic!("replicas did not converge within {timeout:?}: {summary:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            let text = fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            out.push_str(&format!("--- node {} ({}) ---\n", node.id, node.log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("the failed region's logs and data are kept in {}", dir.keep().display());
            }
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Commands a test writes: a partner, then top-ups with unique references.
pub struct Writer {
    session: u64,
    sequence: u64,
}

pub fn partner() -> PartnerId {
    PartnerId::new("paypal-us").unwrap()
}

impl Writer {
    pub fn new(session: u64) -> Writer {
        Writer { session, sequence: 0 }
    }

    fn command(&mut self, body: CommandBody) -> CoreCommand {
        self.sequence += 1;
        CoreCommand { id: CommandId { session: self.session, sequence: self.sequence }, body }
    }

    pub fn partner(&mut self) -> CoreCommand {
        self.command(CommandBody::UpsertPartner(PartnerConfig {
            id: partner(),
            region: RegionId::new(REGION).unwrap(),
            role: PartnerRole::Payer,
            currency: Currency::USD,
            net_debit_cap: Money::zero(Currency::USD),
        }))
    }

    /// A top-up of `cents` with reference `reference`.
    pub fn top_up(&mut self, reference: &str, cents: u64) -> CoreCommand {
        self.command(CommandBody::TopUp {
            partner: partner(),
            amount: Money::from_units(cents, Currency::USD).unwrap(),
            reference: TopUpRef::new(reference).unwrap(),
        })
    }
}

/// Check that every reference in `acknowledged` is applied, by proposing it
/// again with a different amount: an applied top-up answers with an
/// idempotency conflict; a lost one would be applied now (and fail the test).
pub async fn assert_all_present(client: &ClusterClient, acknowledged: &[String]) {
    let mut probe = Writer::new(0xdead_beef);
    for chunk in acknowledged.chunks(200) {
        let commands: Vec<CoreCommand> = chunk.iter().map(|r| probe.top_up(r, 2)).collect();
        let (_, outcomes) = client.propose(&commands).await.unwrap();
        for (reference, outcome) in chunk.iter().zip(outcomes) {
            assert_eq!(
                outcome,
                Outcome::Rejected(RejectCode::IdempotencyConflict),
                "acknowledged top-up {reference} is missing from the region"
            );
        }
    }
}

/// The data directory's path, for tests that look inside.
pub fn data_dir(region: &Region, id: u64) -> &Path {
    &region.nodes[&id].data_dir
}

// ---- the partner pipeline ----------------------------------------------------

use paymesh_client::{Credentials, PartnerClient, Region as RegionClient, RetryPolicy as SdkRetry};

use paymesh_proto::admin::v1::admin_service_client::AdminServiceClient;
use paymesh_proto::common::v1 as common;

/// An amount on the wire.
pub fn money(amount: &str, currency: &str) -> common::Money {
    common::Money { amount: amount.into(), currency: currency.into() }
}

impl Region {
    fn sdk_region(&self, stem: &str) -> RegionClient {
        RegionClient::with_policy(
            self.api_addrs(),
            self.credentials(stem),
            SdkRetry { attempts: 200, deadline: Duration::from_secs(60) },
        )
    }

    /// A partner's client, presenting the partner's certificate.
    pub fn partner(&self, id: &str) -> PartnerClient {
        PartnerClient::new(self.sdk_region(&format!("partner-{id}")))
    }

    /// Run one admin call through whichever node leads.
    pub async fn admin<T, F, Fut>(&self, call: F) -> T
    where
        F: Fn(AdminServiceClient<paymesh_client::NodeChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let region = self.sdk_region(&format!("operator-{OPERATOR}"));
        region
            .call(None, |channel| {
                let fut = call(AdminServiceClient::new(channel));
                async move { fut.await.map(|r| r.into_inner()) }
            })
            .await
            .unwrap()
    }
}
