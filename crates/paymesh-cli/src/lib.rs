//! The `paymesh` command line: argument parsing and the commands.
//!
//! * `paymesh start --config node.toml` runs one node until SIGTERM or SIGINT.
//! * `paymesh init` bootstraps a region's membership; running it again is
//!   harmless.
//! * `paymesh status [--json]` shows every node's role, term, log and applied
//!   indexes, replication lag, and a digest of its state.
//! * `paymesh node add` / `paymesh node remove` change the membership;
//!   `paymesh node rebuild` brings back a node whose Raft log is damaged, and
//!   `paymesh log check` diagnoses a data directory offline.
//! * `paymesh partner|corridor|fx|position|route|ledger` configure a region
//!   and read its books (the admin API).
//! * `paymesh history export|confirm|verify|get|delete` archive a node's
//!   history of finished work to a file, check and read an archive offline,
//!   and delete what was archived once past the 400-day window.
//! * `paymesh certs` issues development certificates; `paymesh bench`
//!   measures throughput and latency; `paymesh demo` runs three regions on
//!   this machine with a mixed workload and checks the invariants.
//!
//! Commands that talk to a region take `--config node.toml` (the region's
//! peers are read from it) or one or more `--node host:port` API addresses.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use paymesh_client::Credentials;
use paymesh_node::cluster_client::{ClusterClient, RetryPolicy};
use paymesh_node::{Node, NodeConfig};
use paymesh_proto::admin::v1 as wire;

mod admin;
mod backup;
mod bench;
mod certs;
pub mod demo;
mod history;
mod otel;
pub mod rebuild;
mod settlement;
mod status;
pub mod steps;
mod webhook;

/// paymesh: a multi-region payment mesh.
#[derive(Debug, Parser)]
#[command(name = "paymesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where to find a region's nodes, and who is asking.
#[derive(Clone, Debug, clap::Args)]
struct Target {
    /// A node configuration file; the region's peers are read from it, and
    /// its [tls] files are used unless --cert is given.
    #[arg(long, conflicts_with = "node")]
    config: Option<PathBuf>,
    /// A node's API address, host:port (repeat for several).
    #[arg(long = "node")]
    node: Vec<String>,
    /// The region's CA certificate (PEM), with --cert and --key.
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// An operator (or node) certificate (PEM).
    #[arg(long, requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
    /// Call a development region that runs `insecure_plaintext`, without
    /// certificates, as the operator `paymesh-cli`. Never implied.
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    plaintext: bool,
}

impl Target {
    /// Who to present: the given certificate, else the node's own from
    /// --config; plaintext (an operator identity header) only when asked
    /// for, by --plaintext or by a --config whose node runs
    /// `insecure_plaintext`. Nothing falls back to plaintext silently.
    fn credentials(&self) -> anyhow::Result<Credentials> {
        let plaintext = || Ok(Credentials::Plaintext { identity: "operator:paymesh-cli".into() });
        if let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) {
            return Ok(Credentials::from_files(ca, cert, key)?);
        }
        if let Some(path) = &self.config {
            let config = NodeConfig::load(path)?;
            return match config.tls {
                Some(tls) => Ok(Credentials::from_files(&tls.ca_cert, &tls.cert, &tls.key)?),
                None => plaintext(),
            };
        }
        if self.plaintext {
            return plaintext();
        }
        bail!(
            "no credentials: give --ca, --cert and --key (an operator certificate), or --config of a node whose \
             [tls] files to use; --plaintext only for a development region running insecure_plaintext"
        )
    }

    /// A cluster client of the target's nodes.
    fn client(&self) -> anyhow::Result<(ClusterClient, Vec<String>)> {
        let addresses = self.addresses()?;
        let client = ClusterClient::with_credentials(addresses.clone(), self.credentials()?, RetryPolicy::default());
        Ok((client, addresses))
    }

    /// The API addresses to contact, this node's own first.
    fn addresses(&self) -> anyhow::Result<Vec<String>> {
        if let Some(path) = &self.config {
            let config = NodeConfig::load(path)?;
            let mut peers = config.peers.clone();
            peers.sort_by_key(|p| p.node_id != config.node_id);
            return Ok(peers.into_iter().map(|p| p.api_addr).collect());
        }
        if self.node.is_empty() {
            bail!("give --config node.toml or at least one --node host:port");
        }
        Ok(self.node.clone())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node until SIGTERM or SIGINT.
    Start {
        /// The node's configuration file (see deploy/node.example.toml).
        #[arg(long)]
        config: PathBuf,
        /// How the log is written to stderr: `text` for people, `json` for
        /// a log pipeline (one object per line, with the fields of the
        /// spans it happened in: partner, transfer, trace_id).
        #[arg(long, value_enum, default_value_t = otel::LogFormat::Text)]
        log_format: otel::LogFormat,
    },
    /// Bootstrap the region's membership from the peers of the contacted
    /// node's configuration. Harmless if already done.
    Init {
        #[command(flatten)]
        target: Target,
    },
    /// Show every node's role, term, indexes, replication lag and state digest.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change the region's membership.
    Node {
        #[command(subcommand)]
        change: NodeChange,
    },
    /// Upgrading a region node by node: finalize, once every node runs
    /// the new release.
    Upgrade {
        #[command(subcommand)]
        command: UpgradeCommand,
    },
    /// Inspect a node's Raft log offline.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Configure partners: upsert, suspend, activate, show, list.
    Partner {
        #[command(subcommand)]
        command: admin::PartnerCommand,
    },
    /// Configure corridors: upsert, suspend, activate, show, list.
    Corridor {
        #[command(subcommand)]
        command: admin::CorridorCommand,
    },
    /// Set FX rates with their validity window.
    Fx {
        #[command(subcommand)]
        command: admin::FxCommand,
    },
    /// The region's settings (replicated): show, set.
    Settings {
        #[command(subcommand)]
        command: admin::SettingsCommand,
    },
    /// Fund partner positions (prefunding top-ups).
    Position {
        #[command(subcommand)]
        command: admin::PositionCommand,
    },
    /// Settlement windows: close, show, record a settlement, cross-check
    /// with another region.
    Settlement {
        #[command(subcommand)]
        command: settlement::SettlementCommand,
    },
    /// Act on a transfer as an operator: reverse it (a dispute's outcome).
    Transfer {
        #[command(subcommand)]
        command: admin::TransferCommand,
    },
    /// Route QR payload prefixes to payee partners (the payee directory).
    Route {
        #[command(subcommand)]
        command: admin::RouteCommand,
    },
    /// Partners' webhooks: set, rotate, remove, replay, list.
    Webhook {
        #[command(subcommand)]
        command: webhook::WebhookCommand,
    },
    /// Archive history to a file, verify an archive and read it back, and
    /// delete what was archived (export, confirm, verify, get, delete).
    History {
        #[command(subcommand)]
        command: history::HistoryCommand,
    },
    /// Back a running node up into one checksummed file (take), or check
    /// a backup file (check).
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Seed a new node's data directory from a backup, for the region its
    /// configuration's peers make (run for each node, before starting it;
    /// no `paymesh init` after).
    Restore {
        /// The backup file.
        #[arg(long)]
        backup: PathBuf,
        /// The new node's configuration; its data directory must not exist
        /// or be empty.
        #[arg(long)]
        config: PathBuf,
        /// Numbers skipped in every sequence partners hold numbers of
        /// (transfer and quote ids, event cursors): the region issued some
        /// after the backup that it must never issue again. The same on
        /// every node of the region.
        #[arg(long, default_value_t = backup::ID_GAP_DEFAULT)]
        id_gap: u64,
    },
    /// Show the region's ledger totals and whether its books balance.
    Ledger {
        #[command(flatten)]
        target: Target,
    },
    /// Print an account's statement from the region's history: every
    /// movement between two instants, oldest first, with the balances after
    /// each (all pages).
    Statement {
        /// The account: partner:<id>:<currency>, clearing:<region>:<currency>,
        /// fees:<currency> or settlement:<currency>.
        #[arg(long)]
        account: String,
        /// Movements at or after this instant, Unix milliseconds.
        #[arg(long, default_value_t = 0)]
        from_ms: i64,
        /// Movements before this instant, Unix milliseconds (0: no end).
        #[arg(long, default_value_t = 0)]
        to_ms: i64,
        /// At most this many lines (the newest pages are not read).
        #[arg(long, default_value_t = 100_000)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
    /// Measure committed transfers per second and their latency percentiles
    /// (closed or open loop), side by side with the PostgreSQL baseline.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// Start 3 regions × 3 nodes on this machine, drive a mixed cross-border
    /// and domestic workload, print the summary and check the invariants.
    Demo {
        #[command(flatten)]
        args: demo::DemoArgs,
    },
    /// Make a region's development CA (or reuse the one in --out) and issue
    /// node, partner and operator certificates as PEM files.
    Certs {
        #[command(flatten)]
        args: certs::CertsArgs,
    },
    /// Print the SHA-256 fingerprint of each certificate file's (first)
    /// certificate: the line to add to the region's revocation list
    /// (`[tls] revoked`) to revoke it. Nodes read the list again on SIGHUP.
    Fingerprint {
        /// Certificate files (PEM).
        #[arg(required = true)]
        certs: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum NodeChange {
    /// Add a node: as a learner, then, once it has caught up, as a voter.
    Add {
        #[command(flatten)]
        target: Target,
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// The new node's Raft address, host:port.
        #[arg(long)]
        raft_addr: String,
        /// The new node's API address, host:port.
        #[arg(long)]
        api_addr: String,
    },
    /// Remove a node from the membership.
    Remove {
        #[command(flatten)]
        target: Target,
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
    /// Bring back a node whose Raft log is damaged (it refuses to start):
    /// remove it from the membership, move its data directory aside keeping
    /// only its vote, wait for it to be started empty, and add it back as a
    /// learner, then a voter. Run on the node's machine with its --config
    /// (and an operator's --ca/--cert/--key); safe to run again.
    Rebuild {
        #[command(flatten)]
        target: Target,
        /// How long to wait for the node to be started again, in seconds.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
enum UpgradeCommand {
    /// Move the region to the newest protocol every node supports: run once
    /// every node of the region runs the new release (`paymesh status`
    /// shows each node's release and protocol). Until then the region
    /// writes the old protocol, which both releases read; after it, a node
    /// of the old release stops rather than follow. Safe to run again.
    Finalize {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Check a node's Raft log without changing it; exits 1 if it is damaged.
    Check {
        /// The node's data directory (data_dir in its configuration).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// Parse `args` and run the command; errors are printed, and the exit code
/// is 1 for a failed command and 2 for bad arguments.
pub fn run(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    if !cli.command.runs_on() {
        quiet_on_closed_pipe();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("paymesh: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paymesh: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Tasks still running (a snapshot being built, say) are dropped here; one
    // may be stuck in a disk write (and a sled database's drop, used for
    // checkpoints before, was seen to wait forever). Everything acknowledged is already synced to
    // disk by then, so the wait is bounded rather than trusted.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    code
}

impl Command {
    /// Whether the command keeps running, with processes of its own to
    /// stop on the way out (a node, the demo's mesh, a benchmark's region),
    /// rather than printing an answer and exiting.
    fn runs_on(&self) -> bool {
        matches!(self, Command::Start { .. } | Command::Demo { .. } | Command::Bench { .. })
    }
}

/// A command whose reader has gone (`paymesh status --json | head`) ends
/// at its next write, quietly, as other Unix tools do: SIGPIPE back to its
/// default action. Rust ignores SIGPIPE, so a write to a closed pipe would
/// otherwise be an error, and `println!` panics on it. Not for the commands
/// that run on ([`Command::runs_on`]), which must stop what they started.
fn quiet_on_closed_pipe() {
    // Before any thread of ours starts.
    sigpipe::reset();
}

/// How long `paymesh init` waits for the region's members to be in step.
const INIT_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Wait, at most `within`, until every node at `addresses` answers as the
/// leader or a follower of one leader, at one applied index: the leader
/// and the number of voters then.
async fn in_step(client: &ClusterClient, addresses: &[String], within: std::time::Duration) -> Option<(u64, usize)> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut answers = Vec::new();
        for addr in addresses {
            answers.push(client.status(addr, false).await.ok());
        }
        let answers: Option<Vec<_>> = answers.into_iter().collect();
        if let Some(answers) = answers {
            let leader = answers.iter().find(|a| a.role == wire::NodeRole::Leader as i32);
            let steady = |a: &&wire::GetNodeStatusResponse| {
                [wire::NodeRole::Leader as i32, wire::NodeRole::Follower as i32].contains(&a.role)
            };
            if let Some(leader) = leader {
                let applied = leader.applied_index;
                if answers
                    .iter()
                    .all(|a| steady(&a) && a.applied_index == applied && a.leader_id == Some(leader.node_id))
                {
                    return Some((leader.node_id, leader.voters.len()));
                }
            }
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How long the process waits, on its way out, for tasks still running.
const RUNTIME_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Start { config, log_format } => start(config, log_format).await,
        Command::Backup { command } => backup::run(command).await,
        Command::Restore { backup: file, config, id_gap } => backup::restore(&file, &config, id_gap),
        Command::Init { target } => {
            let (client, addresses) = target.client()?;
            let already = client.initialize(&addresses[0]).await?;
            if already {
                println!("region already initialised; nothing changed");
            } else {
                println!("region initialised through {}", addresses[0]);
            }
            match in_step(&client, &addresses, INIT_SETTLE).await {
                Some((leader, voters)) => println!("leader: node {leader}; {voters} voters in step"),
                None => println!(
                    "not every node answered in step within {INIT_SETTLE:?}: see paymesh status (a node still \
                     starting joins when it is up)"
                ),
            }
            Ok(())
        }
        Command::Status { target, json } => {
            let (client, addresses) = target.client()?;
            status::show(&client, &addresses, json).await
        }
        Command::Node { change: NodeChange::Add { target, id, raft_addr, api_addr } } => {
            let (client, _) = target.client()?;
            let node = wire::NodeAddress { node_id: id, raft_addr, api_addr };
            let index = client.add_node(node).await?;
            println!("node {id} added as a voter (membership entry {index})");
            Ok(())
        }
        Command::Node { change: NodeChange::Remove { target, id } } => {
            let (client, _) = target.client()?;
            let index = client.remove_node(id).await?;
            println!("node {id} removed (membership entry {index}); stop its process");
            Ok(())
        }
        Command::Node { change: NodeChange::Rebuild { target, wait_secs } } => {
            rebuild::rebuild(&target, std::time::Duration::from_secs(wait_secs)).await
        }
        Command::Upgrade { command: UpgradeCommand::Finalize { target } } => {
            let (client, _) = target.client()?;
            let answer = client.finalize_upgrade().await?;
            for member in &answer.members {
                println!("node {}: release {}, protocols up to {}", member.node_id, member.release, member.protocol);
            }
            if answer.protocol > answer.protocol_before {
                println!("the region moved from protocol {} to {}", answer.protocol_before, answer.protocol);
            } else {
                println!(
                    "the region runs protocol {}, the newest all its nodes support: nothing to finalize",
                    answer.protocol
                );
            }
            Ok(())
        }
        Command::Log { command: LogCommand::Check { data_dir } } => rebuild::log_check(&data_dir),
        Command::Partner { command } => admin::partner(command).await,
        Command::Corridor { command } => admin::corridor(command).await,
        Command::Fx { command } => admin::fx(command).await,
        Command::Settings { command } => admin::settings(command).await,
        Command::Position { command } => admin::position(command).await,
        Command::Route { command } => admin::route(command).await,
        Command::Webhook { command } => webhook::run(command).await,
        Command::Transfer { command } => admin::transfer(command).await,
        Command::Settlement { command } => settlement::run(command).await,
        Command::Ledger { target } => admin::ledger(target).await,
        Command::Statement { account, from_ms, to_ms, limit, target } => {
            admin::statement(target, &account, from_ms, to_ms, limit).await
        }
        Command::History { command } => history::run(command).await,
        Command::Bench { args } => bench::run(args).await,
        Command::Certs { args } => certs::run(&args),
        Command::Fingerprint { certs } => {
            for path in certs {
                let print = paymesh_node::identity::fingerprint_file(&path).map_err(anyhow::Error::msg)?;
                println!("{print}  # {}", path.display());
            }
            Ok(())
        }
        Command::Demo { args } => {
            if demo::run(&args).await? {
                Ok(())
            } else {
                bail!("an invariant was violated (see the summary above)")
            }
        }
    }
}

async fn start(config_path: PathBuf, log_format: otel::LogFormat) -> anyhow::Result<()> {
    let config = NodeConfig::load(&config_path)?;
    let traces = otel::init(config.region.as_str(), config.node_id, log_format)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let node = match Node::open(config).await {
        Ok(node) => node,
        // Once, not once per error in the chain: a damaged log's message is
        // what the operator acts on (README.md, "A damaged Raft log").
        Err(paymesh_node::NodeError::Storage(e)) => bail!("storage: {e}"),
        Err(e) => return Err(e.into()),
    };
    let served = node.serve(shutdown_signal()).await;
    if let Some(provider) = traces {
        if let Err(e) = provider.shutdown() {
            tracing::warn!(%e, "exporting the last spans failed");
        }
    }
    served?;
    Ok(())
}

/// Resolves at the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot listen for signals; stopping");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM"),
        _ = interrupt.recv() => tracing::info!("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_never_falls_back_to_plaintext_by_itself() {
        let target = |args: &[&str]| {
            let mut argv = vec!["paymesh", "status"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Status { target, .. }) => target,
                other => panic!("{other:?}"),
            }
        };
        let error = target(&["--node", "127.0.0.1:8001"]).credentials().err().map(|e| e.to_string());
        assert!(error.as_deref().is_some_and(|e| e.contains("no credentials")), "{error:?}");
        let asked = target(&["--node", "127.0.0.1:8001", "--plaintext"]).credentials();
        assert!(matches!(asked, Ok(Credentials::Plaintext { .. })), "{asked:?}");
        assert!(Cli::try_parse_from(["paymesh", "status", "--plaintext", "--ca", "a", "--cert", "b", "--key", "c"])
            .is_err());
    }
}
