//! A node's configuration file (TOML). Every key is documented in
//! `deploy/node.example.toml`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paymesh_core::id::RegionId;
use paymesh_store::NodeAddr;
use serde::Deserialize;

/// The most voters a region may have.
pub const REGION_MEMBERS_MAX: usize = 7;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a node configuration.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        source: toml::de::Error,
    },
    /// A value breaks a rule.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending key.
        key: &'static str,
        /// The rule broken.
        reason: String,
    },
}

/// One member of the region, as listed under `[[peers]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The member's node id.
    pub node_id: u64,
    /// Its Raft transport address, `host:port`.
    pub raft_addr: String,
    /// Its API address, `host:port`.
    pub api_addr: String,
}

impl PeerConfig {
    /// The address pair openraft stores in the membership.
    pub fn addr(&self) -> NodeAddr {
        NodeAddr { raft_addr: self.raft_addr.clone(), api_addr: self.api_addr.clone() }
    }
}

/// Raft timing and log-compaction settings, under `[raft]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// How often the leader sends heartbeats, in milliseconds. Also the timeout
    /// of one AppendEntries round trip, follower fsync included.
    pub heartbeat_interval_ms: u64,
    /// The shortest election timeout, in milliseconds.
    pub election_timeout_min_ms: u64,
    /// The longest election timeout, in milliseconds.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower can
    /// catch up from the log rather than by snapshot.
    pub logs_kept_after_snapshot: u64,
    /// The most entries in one AppendEntries message.
    pub max_entries_per_append: u64,
    /// How long sending one whole snapshot may take, in milliseconds.
    pub snapshot_timeout_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_after_entries: 10_000,
            logs_kept_after_snapshot: 1_000,
            max_entries_per_append: 64,
            snapshot_timeout_ms: 60_000,
        }
    }
}

/// A node's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id within its region. Positive.
    pub node_id: u64,
    /// The region this node belongs to.
    pub region: RegionId,
    /// Where to listen for Raft messages from peers.
    pub raft_listen: SocketAddr,
    /// Where to listen for API calls (cluster operations, later partners and
    /// operators).
    pub api_listen: SocketAddr,
    /// This node's data: the Raft log and the state machine's checkpoints.
    pub data_dir: PathBuf,
    /// Allow plaintext gRPC. Required for now: TLS arrives with the partner API.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The region's initial members, this node included.
    pub peers: Vec<PeerConfig>,
    /// Raft timing and compaction.
    #[serde(default)]
    pub raft: RaftSettings,
}

impl NodeConfig {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        NodeConfig::parse(&text, path)
    }

    /// Parse and validate configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig =
            toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { path: path.into(), key, reason };
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be positive".into()));
        }
        if !self.insecure_plaintext {
            return Err(invalid(
                "insecure_plaintext",
                "TLS is not available yet; set insecure_plaintext = true (development only)".into(),
            ));
        }
        if self.peers.is_empty() || self.peers.len() > REGION_MEMBERS_MAX {
            return Err(invalid("peers", format!("list 1 to {REGION_MEMBERS_MAX} members")));
        }
        let ids: BTreeSet<u64> = self.peers.iter().map(|p| p.node_id).collect();
        if ids.len() != self.peers.len() || ids.contains(&0) {
            return Err(invalid("peers", "node ids must be positive and unique".into()));
        }
        for peer in &self.peers {
            for (key, addr) in [("peers.raft_addr", &peer.raft_addr), ("peers.api_addr", &peer.api_addr)] {
                let well_formed =
                    addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !well_formed {
                    return Err(invalid(key, format!("{addr:?} is not host:port")));
                }
            }
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms < 3 * r.heartbeat_interval_ms {
            return Err(invalid("raft.election_timeout_min_ms", "must be at least three heartbeat intervals".into()));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid("raft.election_timeout_max_ms", "must exceed election_timeout_min_ms".into()));
        }
        if r.snapshot_after_entries == 0 || r.max_entries_per_append == 0 || r.max_entries_per_append > 1_024 {
            return Err(invalid("raft", "snapshot_after_entries > 0 and 1 <= max_entries_per_append <= 1024".into()));
        }
        Ok(())
    }

    /// This node's own entry in `peers`, if listed.
    pub fn me(&self) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.node_id == self.node_id)
    }

    /// The openraft configuration these settings describe.
    pub fn openraft_config(&self) -> openraft::Config {
        let r = &self.raft;
        openraft::Config {
            cluster_name: format!("paymesh-{}", self.region),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            max_payload_entries: r.max_entries_per_append,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
            max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
            install_snapshot_timeout: r.snapshot_timeout_ms,
            // Catch a learner up to within this many entries before promoting it.
            replication_lag_threshold: 1_000,
            ..openraft::Config::default()
        }
    }

    /// The time allowed for sending one snapshot.
    pub fn snapshot_timeout(&self) -> Duration {
        Duration::from_millis(self.raft.snapshot_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        node_id = 1
        region = "us-west"
        raft_listen = "127.0.0.1:7001"
        api_listen = "127.0.0.1:8001"
        data_dir = "/tmp/paymesh/1"
        insecure_plaintext = true
        peers = [
          { node_id = 1, raft_addr = "127.0.0.1:7001", api_addr = "127.0.0.1:8001" },
          { node_id = 2, raft_addr = "127.0.0.1:7002", api_addr = "127.0.0.1:8002" },
        ]
        [raft]
        heartbeat_interval_ms = 50
    "#;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("node.toml"))
    }

    #[test]
    fn a_good_configuration_parses_with_defaults_filled_in() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.me().unwrap().api_addr, "127.0.0.1:8001");
        assert_eq!(config.raft.heartbeat_interval_ms, 50);
        assert_eq!(config.raft.election_timeout_min_ms, 500);
        let raft = config.openraft_config().validate().unwrap();
        assert_eq!(raft.cluster_name, "paymesh-us-west");
    }

    /// The documented example is a valid configuration and names every key,
    /// so it cannot drift from the code.
    #[test]
    fn the_example_configuration_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/node.example.toml");
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.raft, RaftSettings::default(), "the example shows the defaults");
        let text = std::fs::read_to_string(&path).unwrap();
        let keys = [
            "node_id",
            "region",
            "raft_listen",
            "api_listen",
            "data_dir",
            "insecure_plaintext",
            "peers",
            "raft_addr",
            "api_addr",
            "[raft]",
            "heartbeat_interval_ms",
            "election_timeout_min_ms",
            "election_timeout_max_ms",
            "snapshot_after_entries",
            "logs_kept_after_snapshot",
            "max_entries_per_append",
            "snapshot_timeout_ms",
        ];
        for key in keys {
            assert!(text.contains(key), "deploy/node.example.toml does not document {key}");
        }
    }

    #[test]
    fn bad_configurations_are_refused_with_the_key_named() {
        let cases = [
            (GOOD.replace("node_id = 1\n", "node_id = 0\n"), "node_id"),
            (GOOD.replace("region = \"us-west\"", "region = \"US West\""), "region id"),
            (GOOD.replace("insecure_plaintext = true", "insecure_plaintext = false"), "insecure_plaintext"),
            (GOOD.replace("{ node_id = 2,", "{ node_id = 1,"), "unique"),
            (GOOD.replace("127.0.0.1:8002", "localhost"), "host:port"),
            (GOOD.replace("heartbeat_interval_ms = 50", "heartbeat_interval_ms = 400"), "three heartbeat"),
            (GOOD.replace("[raft]", "[raft]\nelection_timeout_max_ms = 100"), "election_timeout_max_ms"),
            (GOOD.replace("data_dir", "data_directory"), "unknown field"),
            (GOOD.replace("raft_listen = \"127.0.0.1:7001\"", "raft_listen = \"nowhere\""), "raft_listen"),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "expected {expected:?} in {error:?}");
        }
    }
}
