//! What an operator does about a damaged Raft log: `paymesh log check`
//! diagnoses a data directory offline; `paymesh node rebuild` takes a node
//! whose log is damaged out of the region and brings it back empty (see
//! README.md, "A damaged Raft log", and "Durability" in docs/ARCHITECTURE.md).
//!
//! A node that lost entries it may have acknowledged must not count towards
//! a majority again until it has them back, and it must not vote twice in a
//! term. So the rebuild
//!
//! 1. checks that the log really is damaged (a healthy node is left alone);
//! 2. removes the node from the membership through the other nodes: once that
//!    is committed, no remaining voter asks it for a vote or counts its
//!    acknowledgments;
//! 3. moves the data directory aside (kept for inspection) and starts a new
//!    one that holds only the node's last vote, so the empty node can never
//!    vote again in a term it voted in;
//! 4. waits for the node to be started (by its supervisor, or by hand) and
//!    adds it back, as a learner until it has caught up, then as a voter.
//!
//! Every step can be repeated: a marker file in the new data directory lets
//! an interrupted rebuild be run again and carry on with step 4.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use paymesh_node::cluster_client::{ClusterClient, RetryPolicy};
use paymesh_node::NodeConfig;
use paymesh_proto::admin::v1 as wire;
use paymesh_store::meta_file::{MetaFile, RaftMeta};
use paymesh_store::raft_types::Vote;
use paymesh_store::segment_log::{LogError, SegmentLog};

use crate::Target;

/// Written into the new data directory between the move and the re-add.
pub const REBUILD_MARKER: &str = "REBUILD-PENDING";

/// Where a node keeps its Raft log under its data directory (as
/// `paymesh_node::Node` opens it).
pub(crate) fn raft_log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(paymesh_node::node::RAFT_LOG_DIR)
}

/// What `paymesh log check` found.
#[derive(Debug)]
pub enum Health {
    /// The log opens as it is (`torn_bytes` would be cut: an unacknowledged write).
    Healthy { records: u64, torn_bytes: u64 },
    /// The log is damaged; the node refuses to start.
    Damaged(LogError),
}

/// Check the Raft log under `data_dir` without changing it.
pub fn check(data_dir: &Path) -> anyhow::Result<Health> {
    match SegmentLog::check(&raft_log_dir(data_dir).join("segments")) {
        Ok(found) => Ok(Health::Healthy { records: found.records, torn_bytes: found.truncated_bytes }),
        Err(damage @ (LogError::Damage { .. } | LogError::Damaged { .. })) => Ok(Health::Damaged(damage)),
        Err(other) => Err(other).context("reading the raft log"),
    }
}

/// `paymesh log check --data-dir DIR`: exits 1 if the log is damaged.
pub fn log_check(data_dir: &Path) -> anyhow::Result<()> {
    match check(data_dir)? {
        Health::Healthy { records, torn_bytes: 0 } => {
            println!("raft log in {}: {records} records, no damage", data_dir.display());
            Ok(())
        }
        Health::Healthy { records, torn_bytes } => {
            println!(
                "raft log in {}: {records} records, no damage; a torn tail of {torn_bytes} bytes (a write that \
                 was never acknowledged) will be cut when the node starts",
                data_dir.display()
            );
            Ok(())
        }
        Health::Damaged(damage) => bail!("{damage}"),
    }
}

/// `paymesh node rebuild --config node.toml`: see the module documentation.
pub(crate) async fn rebuild(target: &Target, wait: Duration) -> anyhow::Result<()> {
    let config_path = target.config.as_ref().context("give the damaged node's --config")?;
    let config = NodeConfig::load(config_path)?;
    let id = config.node_id;
    let me = config
        .peers
        .iter()
        .find(|p| p.node_id == id)
        .with_context(|| format!("node {id} is not among the peers of {}", config_path.display()))?
        .clone();
    let others: Vec<String> = config.peers.iter().filter(|p| p.node_id != id).map(|p| p.api_addr.clone()).collect();
    if others.is_empty() {
        bail!("node {id} has no peers to rebuild from");
    }
    let client = ClusterClient::with_credentials(
        others,
        target.credentials()?,
        RetryPolicy { attempts: 200, deadline: Duration::from_secs(60) },
    );
    let data_dir = &config.data_dir;
    let marker = data_dir.join(REBUILD_MARKER);
    if !marker.exists() {
        match check(data_dir)? {
            Health::Healthy { .. } => bail!(
                "the raft log in {} is not damaged; nothing to rebuild (to replace a healthy node, \
                 use paymesh node remove and paymesh node add)",
                data_dir.display()
            ),
            Health::Damaged(damage) => println!("{damage}"),
        }
        let index = client.remove_node(id).await.with_context(|| format!("removing node {id} from the region"))?;
        println!("node {id} removed from the membership (entry {index})");
        let aside = move_aside(data_dir, &marker)?;
        println!("its data directory is kept in {}", aside.display());
    }
    println!(
        "start node {id} now (its supervisor restarts it); waiting up to {} s for it to answer at {}",
        wait.as_secs(),
        me.api_addr
    );
    let deadline = Instant::now() + wait;
    while client.status(&me.api_addr, false).await.is_err() {
        if Instant::now() > deadline {
            bail!(
                "node {id} did not answer at {} within {} s; start it and run this again",
                me.api_addr,
                wait.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let node = wire::NodeAddress { node_id: id, raft_addr: me.raft_addr.clone(), api_addr: me.api_addr.clone() };
    let index = client.add_node(node).await.with_context(|| format!("adding node {id} back"))?;
    fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    println!("node {id} rebuilt: caught up and a voter again (membership entry {index})");
    Ok(())
}

/// Move `data_dir` aside and start a new one holding only the last vote (if
/// it can be read) and the marker. Returns where the old one went.
fn move_aside(data_dir: &Path, marker: &Path) -> anyhow::Result<PathBuf> {
    let old_meta = MetaFile::new(raft_log_dir(data_dir).join("raft-meta")).load();
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let name = data_dir.file_name().context("the data directory has no name")?.to_string_lossy().into_owned();
    let aside = data_dir.with_file_name(format!("{name}.damaged-{seconds}"));
    fs::rename(data_dir, &aside).with_context(|| format!("moving {} aside", data_dir.display()))?;
    fs::create_dir_all(raft_log_dir(data_dir)).with_context(|| format!("creating {}", data_dir.display()))?;
    match old_meta {
        Ok(RaftMeta { vote: Some(vote), .. }) => {
            // Kept uncommitted: the node is no leader, and a term it voted
            // in stays one it cannot vote in again.
            let vote = Vote::new(vote.leader_id().get_term(), vote.leader_id().voted_for().unwrap_or_default());
            let meta = RaftMeta { vote: Some(vote), last_purged: None };
            MetaFile::new(raft_log_dir(data_dir).join("raft-meta")).save(&meta)?;
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: the old vote could not be read ({e}); the node starts without it"),
    }
    fs::write(marker, b"paymesh node rebuild has not finished; run it again\n")
        .and_then(|()| fs::File::open(marker)?.sync_all())
        .and_then(|()| fs::File::open(data_dir)?.sync_all())
        .with_context(|| format!("writing {}", marker.display()))?;
    if let Some(parent) = data_dir.parent() {
        fs::File::open(parent).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", parent.display()))?;
    }
    Ok(aside)
}
