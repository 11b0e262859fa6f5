//! `paymesh backup` and `paymesh restore`: a running node's state and
//! history in one checksummed file, and a new region's nodes seeded from
//! it (the file's format and what a restore does: paymesh-store's `backup`
//! module; the procedure: README.md, "Backup and restore").

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use paymesh_node::NodeConfig;
use paymesh_store::backup::{self, BackupHeader, RestoreTarget};
use paymesh_store::meta_file::{MetaFile, RaftMeta};
use paymesh_store::raft_types::Vote;
use paymesh_store::NodeAddr;

use crate::rebuild::raft_log_dir;
use crate::Target;

/// How often a backup in progress says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The numbers a restored region skips in every sequence partners hold
/// numbers of (transfer and quote ids, event cursors), by default: more
/// than a region issues in a year at 25,000 a second.
pub const ID_GAP_DEFAULT: u64 = 1_000_000_000_000;

#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Take a backup of a running node (the first --node, or --config's
    /// own node): the region's state at the node's applied index and its
    /// history through it, into --out, checked once written.
    Take {
        #[command(flatten)]
        target: Target,
        /// The backup file to write (written as FILE.tmp, then renamed).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a backup file's checksum and print what it holds; exits 1 if
    /// it is damaged.
    Check {
        /// The backup file.
        file: PathBuf,
    },
}

/// Run a `paymesh backup` command.
pub async fn run(command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Take { target, out } => take(&target, &out).await,
        BackupCommand::Check { file } => {
            let header = backup::check(&file).with_context(|| format!("checking {}", file.display()))?;
            print_header(&file, &header);
            println!("checksum ok");
            Ok(())
        }
    }
}

async fn take(target: &Target, out: &Path) -> anyhow::Result<()> {
    let (client, addresses) = target.client()?;
    let node = &addresses[0];
    let started = Instant::now();
    let mut stream = client.backup(node).await.with_context(|| format!("asking {node} for a backup"))?;
    let tmp = out.with_extension("tmp");
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let (mut bytes, mut said) = (0u64, Instant::now());
    while let Some(chunk) = stream.message().await.with_context(|| format!("the backup from {node}"))? {
        file.write_all(&chunk.data).with_context(|| format!("writing {}", tmp.display()))?;
        bytes += chunk.data.len() as u64;
        if said.elapsed() >= PROGRESS_EVERY {
            eprintln!("backup: {:.1} MiB received", bytes as f64 / (1 << 20) as f64);
            said = Instant::now();
        }
    }
    backup::commit_file(file, &tmp, out)?;
    // Read back before it is called a backup.
    let header = backup::check(out).with_context(|| format!("checking {}", out.display()))?;
    print_header(out, &header);
    println!(
        "backup of {} at index {} written and checked: {:.1} MiB in {:.1} s",
        header.region,
        header.index,
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_header(file: &Path, header: &BackupHeader) {
    println!("{}:", file.display());
    println!("  region {} (node {}), taken by paymesh {}", header.region, header.node_id, header.paymesh_version);
    println!(
        "  at log index {} (term {}), the region's clock {}",
        header.index,
        header.term,
        paymesh_core::Timestamp::from_unix_ms(header.clock_unix_ms).to_rfc3339()
    );
    println!("  {} transfer ids issued; state image {} bytes", header.transfers_issued, header.image_bytes);
    println!("  region digest {}", header.region_digest);
}

/// `paymesh restore`: seed the node of `config` (its data directory must not
/// exist or be empty) from the backup at `file`, for the region its
/// configuration's peers make.
pub fn restore(file: &Path, config_path: &Path, gap: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = NodeConfig::load(config_path)?;
    let data_dir = &config.data_dir;
    if fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} is not empty: a restore seeds a new node; move the old data directory away first",
            data_dir.display()
        );
    }
    let members: Vec<(u64, NodeAddr)> = config
        .peers
        .iter()
        .map(|p| (p.node_id, NodeAddr { raft_addr: p.raft_addr.clone(), api_addr: p.api_addr.clone() }))
        .collect();
    // Every node of the region is restored with its own configuration;
    // their remote regions must agree (they name the same mesh), or the
    // replicas' states differ and `paymesh status` says so.
    let reconcile_with = config.remote_regions.iter().map(|remote| remote.region.clone()).collect();
    let target = RestoreTarget { region: config.region.clone(), members, gap, reconcile_with };
    let state_dir = data_dir.join(paymesh_node::node::STATE_DIR);
    fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let restored = match backup::restore(file, &state_dir, &target) {
        Ok(restored) => restored,
        Err(error) => {
            // The directory was empty or absent: what the failed restore
            // wrote goes, so the next attempt starts clean.
            let note = match fs::remove_dir_all(&state_dir) {
                Ok(()) => String::new(),
                Err(e) => format!(" (and {} could not be removed: {e})", state_dir.display()),
            };
            return Err(anyhow::Error::new(error).context(format!("restoring {}{note}", file.display())));
        }
    };
    // The node starts in the backup's term, having voted for itself: it
    // campaigns in the next, and its log's terms never go backwards.
    let vote = Vote::new(restored.header.term, config.node_id);
    let log_dir = raft_log_dir(data_dir);
    fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    MetaFile::new(log_dir.join("raft-meta")).save(&RaftMeta { vote: Some(vote), last_purged: None })?;
    // The vote's file synced its own directory; the data directory holds
    // the two new ones.
    fs::File::open(data_dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", data_dir.display()))?;
    println!(
        "node {} of {} restored from {} at index {} in {:.1} s: {} history batches; transfer ids continue from {}",
        config.node_id,
        config.region,
        file.display(),
        restored.header.index,
        started.elapsed().as_secs_f64(),
        restored.history_batches,
        restored.next_transfer
    );
    println!(
        "  region digest {} (the same on every node restored from this file)",
        hex::encode(restored.region_digest)
    );
    println!(
        "  what the region did after index {} (clock {}) is not in the backup: once started, the region's leader \
         reconciles with {} before exchanging transfers with them again (`paymesh status` shows the report)",
        restored.header.index,
        paymesh_core::Timestamp::from_unix_ms(restored.header.clock_unix_ms).to_rfc3339(),
        if config.remote_regions.is_empty() {
            "no other region".to_owned()
        } else {
            config.remote_regions.iter().map(|remote| remote.region.to_string()).collect::<Vec<_>>().join(", ")
        }
    );
    Ok(())
}
