//! A node's configuration file (TOML). Every key is documented in
//! `deploy/node.example.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paymesh_core::id::RegionId;
use paymesh_store::NodeAddr;
use serde::Deserialize;

use crate::tls::TlsFiles;

/// The most voters a region may have.
pub const REGION_MEMBERS_MAX: usize = 7;

/// The most remote regions one region may exchange transfers with.
pub const REMOTE_REGIONS_MAX: usize = 32;

/// The longest `raft.group_commit_interval_ms` accepted.
pub const GROUP_COMMIT_INTERVAL_MS_MAX: u64 = 100;

/// Whether `addr` has the form `host:port`.
fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

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

/// Another region this node's region exchanges cross-border transfers with,
/// as listed under `[[remote_regions]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteRegionConfig {
    /// The remote region's id.
    pub region: RegionId,
    /// The inter-region addresses (`host:port`) of its nodes; any of them
    /// accepts and forwards to its leader.
    pub endpoints: Vec<String>,
    /// The remote region's CA certificate (PEM): it signed the remote nodes'
    /// certificates, which this node verifies when it dials them and when they
    /// call it. Required with `[tls]`.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Draining the region before removing it: new quotes, transfers and
    /// refunds toward it are refused (`RegionDraining`), the transfers in
    /// flight with it finish. Once none is left it can be taken off this
    /// list; a SIGHUP applies either change without a restart.
    #[serde(default)]
    pub draining: bool,
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
    /// catch up from the log rather than by snapshot, and so a node whose
    /// newest checkpoint is damaged can fall back to the previous one and
    /// replay the log after it. The default (15,000) covers the longest
    /// stretched snapshot interval of the default `snapshot_after_entries`
    /// (23/16 of 10,000); below [`NodeConfig::snapshot_threshold`] the
    /// fallback cannot replay and the node is rebuilt from its peers instead.
    pub logs_kept_after_snapshot: u64,
    /// The most entries in one AppendEntries message.
    pub max_entries_per_append: u64,
    /// How long sending one whole snapshot may take, in milliseconds.
    pub snapshot_timeout_ms: u64,
    /// Group commit under load, in milliseconds: once an entry carried at
    /// least `GROUP_COMMIT_SIBLINGS` (8) commands, the leader proposes the next
    /// no sooner than this long after it, so that the commands arriving
    /// meanwhile share one entry (one `fdatasync` and one replication round
    /// on every node). 0 proposes as soon as the previous entry is applied.
    /// See the proposer (`engine/proposer.rs`).
    pub group_commit_interval_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_after_entries: 10_000,
            logs_kept_after_snapshot: 15_000,
            max_entries_per_append: 64,
            snapshot_timeout_ms: 60_000,
            group_commit_interval_ms: 0,
        }
    }
}

/// Limits an operator sizes to the region, under `[limits]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Connections the API listener holds open at once; a connection beyond
    /// them is closed as soon as it is accepted. 1 to 65,536.
    pub api_connections_max: usize,
    /// Event streams (`StreamEvents`) one partner may hold open on the
    /// leader at once; the next is RESOURCE_EXHAUSTED. 1 to 1,024.
    pub event_streams_per_partner_max: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings { api_connections_max: 4_096, event_streams_per_partner_max: 16 }
    }
}

/// The shortest `history.retention_days` accepted: the longest window in
/// which applying a command consults history
/// ([`paymesh_core::limits::HISTORY_RETENTION_MIN_MS`], 400 days). Every
/// replica must hold what any of them may consult.
pub const HISTORY_RETENTION_DAYS_MIN: u32 =
    (paymesh_core::limits::HISTORY_RETENTION_MIN_MS / paymesh_core::limits::DAY_MS) as u32;

/// The longest `history.retention_days` accepted (100 years).
pub const HISTORY_RETENTION_DAYS_MAX: u32 = 36_525;

/// How long history is kept, under `[history]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Days a record of finished work is kept, by its own time against the
    /// applied state's clock: once older, and archived
    /// (`paymesh history export`), this node deletes it (checked at most
    /// once an hour). Never deleted unarchived. At least 400
    /// ([`HISTORY_RETENTION_DAYS_MIN`]); 2557 (seven years) by default.
    pub retention_days: u32,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings { retention_days: 2_557 }
    }
}

impl HistorySettings {
    /// The retention, in milliseconds.
    pub fn retention_ms(&self) -> u64 {
        u64::from(self.retention_days) * paymesh_core::limits::DAY_MS
    }
}

/// How the leader delivers webhooks, under `[webhooks]`. Every node of a
/// region should have the same values: whichever leads delivers.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// A PEM file of CA certificates endpoints' certificates may chain to,
    /// besides the system's roots (a partner's private CA, or a test CA).
    pub ca_cert: Option<PathBuf>,
    /// How long one delivery may take, connection included, before it
    /// counts as failed and is retried. 10,000 by default.
    pub timeout_ms: u64,
    /// The first retry's delay; each later one doubles, up to
    /// `retry_max_ms`, and each is drawn at random between half and all of
    /// that ("equal jitter"). 1,000 by default.
    pub retry_initial_ms: u64,
    /// The longest delay between retries. 300,000 (five minutes) by default.
    pub retry_max_ms: u64,
    /// After failing for this long without a success, delivery to the
    /// endpoint stops in the dead-letter state until an operator replays
    /// or changes it. 259,200,000 (three days) by default.
    pub dead_letter_after_ms: u64,
    /// The most events in one delivery. 100 by default.
    pub events_per_delivery: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            ca_cert: None,
            timeout_ms: 10_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 300_000,
            dead_letter_after_ms: 3 * 24 * 60 * 60 * 1_000,
            events_per_delivery: 100,
        }
    }
}

/// The most events one webhook delivery may carry.
pub const WEBHOOK_EVENTS_PER_DELIVERY_MAX: usize = 1_000;

impl WebhookSettings {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let range = |key, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err((key, format!("{value} is outside {min}..={max}")))
            }
        };
        const DAY_MS: u64 = paymesh_core::limits::DAY_MS;
        range("webhooks.timeout_ms", self.timeout_ms, 100, 120_000)?;
        range("webhooks.retry_initial_ms", self.retry_initial_ms, 10, 3_600_000)?;
        range("webhooks.retry_max_ms", self.retry_max_ms, self.retry_initial_ms, DAY_MS)?;
        range("webhooks.dead_letter_after_ms", self.dead_letter_after_ms, 1_000, 30 * DAY_MS)?;
        let events = self.events_per_delivery as u64;
        range("webhooks.events_per_delivery", events, 1, WEBHOOK_EVENTS_PER_DELIVERY_MAX as u64)?;
        if self.ca_cert.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(("webhooks.ca_cert", "must name a file".into()));
        }
        Ok(())
    }
}

/// Under `[metrics]`: where the node serves its Prometheus metrics.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Serve `GET /metrics` (the OpenMetrics text format) over plain HTTP
    /// on this address; no listener when unset. The metrics carry no
    /// personal data and no amounts, only counts, durations and states, but
    /// bind it to loopback or the network the scraper reaches, not to the
    /// partners' network.
    pub listen: Option<SocketAddr>,
}

/// Under `[console]`: where the node serves the operator console.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// Serve the operator console (read-only web pages) over HTTPS on this
    /// address; no listener when unset. A browser must present an
    /// operator's certificate of the region (mutual TLS, as the admin API
    /// asks): it needs the `[tls]` section.
    pub listen: Option<SocketAddr>,
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
    /// Where to listen for API calls: the partner and admin APIs, cluster
    /// operations, health and reflection.
    pub api_listen: SocketAddr,
    /// This node's data: the Raft log and the state machine's checkpoints.
    pub data_dir: PathBuf,
    /// Serve and call plaintext gRPC, with callers naming themselves in
    /// metadata (development and loopback only). Exactly one of this and
    /// `tls` is set.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// With `insecure_plaintext`, also listen on addresses other than
    /// loopback. Without it a plaintext node refuses to start on any other
    /// address: over plaintext anyone who reaches a port can name itself any
    /// partner, operator or node.
    #[serde(default)]
    pub insecure_plaintext_beyond_loopback: bool,
    /// The mutual-TLS files, under `[tls]`: the region's CA, this node's
    /// certificate and its key. Exactly one of this and `insecure_plaintext`
    /// is set.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The region's initial members, this node included.
    pub peers: Vec<PeerConfig>,
    /// Where to listen for the inter-region protocol from other regions'
    /// nodes. Required when `remote_regions` is not empty.
    #[serde(default)]
    pub interregion_listen: Option<SocketAddr>,
    /// The other regions this region exchanges cross-border transfers with.
    /// Re-read on SIGHUP: a region added, drained or removed takes effect
    /// without a restart.
    #[serde(default)]
    pub remote_regions: Vec<RemoteRegionConfig>,
    /// Raft timing and compaction.
    #[serde(default)]
    pub raft: RaftSettings,
    /// Connection and stream limits.
    #[serde(default)]
    pub limits: LimitSettings,
    /// History retention.
    #[serde(default)]
    pub history: HistorySettings,
    /// Webhook delivery.
    #[serde(default)]
    pub webhooks: WebhookSettings,
    /// The Prometheus metrics listener.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// The operator console's listener.
    #[serde(default)]
    pub console: ConsoleSettings,
    /// Under `[raft_dial]`: peers whose Raft listener this node reaches at
    /// another address than the one in the membership (a proxy, a NAT, a
    /// network of its own), keyed by node id (`2 = "10.0.0.2:7000"`). Other
    /// peers are dialled at their membership address.
    #[serde(default)]
    pub raft_dial: BTreeMap<String, String>,
    /// The file this configuration was read from ([`NodeConfig::load`]),
    /// read again on SIGHUP for the remote regions; none when parsed from
    /// text.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl NodeConfig {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config = NodeConfig::parse(&text, path)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
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
        self.webhooks.validate().map_err(|(key, reason)| invalid(key, reason))?;
        match (&self.tls, self.insecure_plaintext) {
            (Some(_), true) => {
                return Err(invalid(
                    "insecure_plaintext",
                    "a [tls] section and insecure_plaintext = true exclude each other; remove one".into(),
                ))
            }
            (None, false) => {
                return Err(invalid(
                    "tls",
                    "a [tls] section (ca_cert, cert, key) is required unless insecure_plaintext = true \
                     (development only)"
                        .into(),
                ))
            }
            (Some(tls), false) => {
                for (key, file) in [("tls.ca_cert", &tls.ca_cert), ("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                    if file.as_os_str().is_empty() {
                        return Err(invalid(key, "must name a file".into()));
                    }
                }
            }
            (None, true) => {
                let listeners = [("raft_listen", Some(self.raft_listen)), ("api_listen", Some(self.api_listen))]
                    .into_iter()
                    .chain([("interregion_listen", self.interregion_listen)]);
                for (key, addr) in listeners {
                    match addr {
                        Some(addr) if !addr.ip().is_loopback() && !self.insecure_plaintext_beyond_loopback => {
                            return Err(invalid(
                                key,
                                format!(
                                    "{addr} is not a loopback address, and insecure_plaintext serves only \
                                     loopback; use a [tls] section (or, for a development network only, set \
                                     insecure_plaintext_beyond_loopback = true)"
                                ),
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        let mut taken = vec![Some(self.raft_listen), Some(self.api_listen), self.interregion_listen];
        for (field, listen) in [("metrics.listen", self.metrics.listen), ("console.listen", self.console.listen)] {
            if let Some(addr) = listen {
                if addr.port() != 0 && taken.contains(&Some(addr)) {
                    return Err(invalid(field, format!("{addr} is another listener's address")));
                }
                taken.push(Some(addr));
            }
        }
        if self.console.listen.is_some() && self.tls.is_none() {
            return Err(invalid(
                "console.listen",
                "the console admits operators by their certificate: it needs the [tls] section".into(),
            ));
        }
        if self.insecure_plaintext_beyond_loopback && !self.insecure_plaintext {
            return Err(invalid(
                "insecure_plaintext_beyond_loopback",
                "only means something with insecure_plaintext = true; remove it".into(),
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
                if !is_host_port(addr) {
                    return Err(invalid(key, format!("{addr:?} is not host:port")));
                }
            }
        }
        for (id, addr) in &self.raft_dial {
            if id.parse::<u64>().map_or(true, |id| id == 0) {
                return Err(invalid("raft_dial", format!("{id:?} is not a node id")));
            }
            if !is_host_port(addr) {
                return Err(invalid("raft_dial", format!("{addr:?} is not host:port")));
            }
        }
        self.validate_remote_regions(path)?;
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
        if r.group_commit_interval_ms > GROUP_COMMIT_INTERVAL_MS_MAX {
            return Err(invalid(
                "raft.group_commit_interval_ms",
                format!("at most {GROUP_COMMIT_INTERVAL_MS_MAX} (it delays every commit under load)"),
            ));
        }
        let l = &self.limits;
        if !(1..=65_536).contains(&l.api_connections_max) {
            return Err(invalid("limits.api_connections_max", "1 to 65536".into()));
        }
        if !(1..=1_024).contains(&l.event_streams_per_partner_max) {
            return Err(invalid("limits.event_streams_per_partner_max", "1 to 1024".into()));
        }
        let days = self.history.retention_days;
        if days < HISTORY_RETENTION_DAYS_MIN {
            return Err(invalid(
                "history.retention_days",
                format!(
                    "{days} is below the minimum of {HISTORY_RETENTION_DAYS_MIN}: applying a command consults \
                     history up to {HISTORY_RETENTION_DAYS_MIN} days back (a repeated top-up reference), and every \
                     replica must still hold what any of them may consult"
                ),
            ));
        }
        if days > HISTORY_RETENTION_DAYS_MAX {
            return Err(invalid("history.retention_days", format!("{days} is above {HISTORY_RETENTION_DAYS_MAX}")));
        }
        Ok(())
    }

    fn validate_remote_regions(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { path: path.into(), key, reason };
        if !self.remote_regions.is_empty() && self.interregion_listen.is_none() {
            return Err(invalid("interregion_listen", "required when remote_regions are listed".into()));
        }
        if self.remote_regions.len() > REMOTE_REGIONS_MAX {
            return Err(invalid("remote_regions", format!("list at most {REMOTE_REGIONS_MAX} regions")));
        }
        let mut seen = BTreeSet::new();
        for remote in &self.remote_regions {
            if remote.region == self.region {
                return Err(invalid("remote_regions.region", format!("{} is this node's own region", remote.region)));
            }
            if !seen.insert(&remote.region) {
                return Err(invalid("remote_regions.region", format!("{} is listed twice", remote.region)));
            }
            if remote.endpoints.is_empty() || remote.endpoints.len() > REGION_MEMBERS_MAX {
                return Err(invalid(
                    "remote_regions.endpoints",
                    format!("{}: list 1 to {REGION_MEMBERS_MAX} addresses", remote.region),
                ));
            }
            if let Some(bad) = remote.endpoints.iter().find(|addr| !is_host_port(addr)) {
                return Err(invalid("remote_regions.endpoints", format!("{bad:?} is not host:port")));
            }
            match (&self.tls, &remote.ca_cert) {
                (Some(_), None) => {
                    return Err(invalid(
                        "remote_regions.ca_cert",
                        format!("{}: the remote region's CA certificate is required with [tls]", remote.region),
                    ))
                }
                (_, Some(file)) if file.as_os_str().is_empty() => {
                    return Err(invalid("remote_regions.ca_cert", "must name a file".into()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Where this node dials each peer listed under `[raft_dial]`.
    pub fn raft_dial(&self) -> BTreeMap<u64, String> {
        self.raft_dial.iter().filter_map(|(id, addr)| Some((id.parse().ok()?, addr.clone()))).collect()
    }

    /// The remote region `region`, if configured.
    pub fn remote_region(&self, region: &RegionId) -> Option<&RemoteRegionConfig> {
        self.remote_regions.iter().find(|r| &r.region == region)
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
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_threshold()),
            max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
            install_snapshot_timeout: r.snapshot_timeout_ms,
            // Catch a learner up to within this many entries before promoting it.
            replication_lag_threshold: 1_000,
            ..openraft::Config::default()
        }
    }

    /// This node's snapshot threshold: `snapshot_after_entries` stretched by
    /// 0 to 7/16 of itself, by a fraction fixed by the region and node id. All
    /// nodes see the same log, so with one threshold every node of a region (and
    /// of regions with similar traffic) would write its snapshot at the same
    /// moment; on shared disks and cores that stalls commits everywhere at once.
    pub fn snapshot_threshold(&self) -> u64 {
        let n = self.raft.snapshot_after_entries;
        // FNV-1a over the region name and node id: stable across restarts.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.region.as_str().bytes().chain(self.node_id.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        n.saturating_add(n / 16 * (h % 8))
    }

    /// Whether the log kept behind a snapshot reaches back to the previous
    /// one, so a damaged newest checkpoint can fall back to the previous
    /// generation and replay the log after it.
    pub fn keeps_log_for_fallback(&self) -> bool {
        self.raft.logs_kept_after_snapshot >= self.snapshot_threshold()
    }

    /// How long the leader waits between entries under load (see
    /// [`RaftSettings::group_commit_interval_ms`]).
    pub fn group_commit_interval(&self) -> Duration {
        Duration::from_millis(self.raft.group_commit_interval_ms)
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

    #[test]
    fn metrics_are_served_only_where_the_configuration_says() {
        assert_eq!(parse(GOOD).unwrap().metrics.listen, None);
        let config = parse(&format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n")).unwrap();
        assert_eq!(config.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config.console.listen, None);
    }

    #[test]
    fn history_retention_defaults_to_seven_years_and_takes_400_days_or_more() {
        assert_eq!(parse(GOOD).unwrap().history.retention_days, 2_557);
        let config = parse(&format!("{GOOD}\n[history]\nretention_days = 400\n")).unwrap();
        assert_eq!(config.history.retention_ms(), 400 * 24 * 3600 * 1000);
        assert_eq!(HISTORY_RETENTION_DAYS_MIN, 400);
    }

    #[test]
    fn raft_dial_overrides_are_parsed_and_checked() {
        let config = parse(&format!("{GOOD}\n[raft_dial]\n2 = \"127.0.0.1:9002\"\n")).unwrap();
        assert_eq!(config.raft_dial(), BTreeMap::from([(2, "127.0.0.1:9002".to_owned())]));
        for bad in ["x = \"127.0.0.1:9002\"", "0 = \"127.0.0.1:9002\"", "2 = \"nowhere\""] {
            let err = parse(&format!("{GOOD}\n[raft_dial]\n{bad}\n")).unwrap_err();
            assert!(err.to_string().contains("raft_dial"), "{bad}: {err}");
        }
    }

    /// Nodes stretch the snapshot threshold differently (so a region's nodes do
    /// not all write snapshots at once), within 7/16 of the setting, and the
    /// same node always gets the same threshold.
    /// With the defaults every node keeps enough log behind its newest
    /// snapshot to replay it from the previous checkpoint: the fallback to the
    /// previous checkpoint generation restarts a node by itself.
    #[test]
    fn by_default_the_log_behind_a_snapshot_reaches_back_to_the_previous_checkpoint() {
        let mut config = parse(GOOD).unwrap();
        config.raft = RaftSettings::default();
        for region in ["us-west", "ap-southeast", "cn-east", "eu-central"] {
            for id in 1..=7 {
                config.region = region.parse().unwrap();
                config.node_id = id;
                assert!(config.keeps_log_for_fallback(), "{region}/{id}: threshold {}", config.snapshot_threshold());
            }
        }
        config.raft.logs_kept_after_snapshot = 1_000;
        assert!(!config.keeps_log_for_fallback());
    }

    #[test]
    fn snapshot_thresholds_are_spread_over_nodes_and_stable() {
        let mut config = parse(GOOD).unwrap();
        let mut thresholds = BTreeSet::new();
        for region in ["us-west", "ap-southeast", "cn-east"] {
            for id in 1..=3 {
                config.region = region.parse().unwrap();
                config.node_id = id;
                let t = config.snapshot_threshold();
                assert_eq!(t, config.snapshot_threshold());
                assert!((10_000..=14_375).contains(&t), "{region}/{id}: {t}");
                thresholds.insert(t);
            }
        }
        assert!(thresholds.len() >= 4, "thresholds barely spread: {thresholds:?}");
    }

    /// The documented example is a valid configuration and names every key,
    /// so it cannot drift from the code.
    #[test]
    fn the_example_configuration_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/node.example.toml");
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.raft, RaftSettings::default(), "the example shows the defaults");
        assert_eq!(config.history, HistorySettings::default(), "the example shows the defaults");
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
            "[tls]",
            "ca_cert",
            "cert =",
            "key =",
            "[raft]",
            "heartbeat_interval_ms",
            "election_timeout_min_ms",
            "election_timeout_max_ms",
            "snapshot_after_entries",
            "logs_kept_after_snapshot",
            "max_entries_per_append",
            "snapshot_timeout_ms",
            "group_commit_interval_ms",
            "interregion_listen",
            "[[remote_regions]]",
            "endpoints",
            "ca_cert =",
            "[raft_dial]",
            "[history]",
            "retention_days",
            "[metrics]",
            "[console]",
        ];
        for key in keys {
            assert!(text.contains(key), "deploy/node.example.toml does not document {key}");
        }
    }

    /// The example's `[tls]` section, commented out because the example runs
    /// plaintext, is a valid configuration once uncommented in place of
    /// `insecure_plaintext = true`.
    #[test]
    fn the_example_tls_section_is_valid_when_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/node.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("insecure_plaintext"))
            .map(|line| match line.strip_prefix('#') {
                Some(rest)
                    if ["[tls]", "ca_cert =", "cert =", "key =", "[console]", "listen ="]
                        .iter()
                        .any(|k| rest.starts_with(k)) =>
                {
                    rest
                }
                _ => line,
            })
            .collect();
        let config = parse(&uncommented.join("\n")).unwrap();
        assert!(!config.insecure_plaintext);
        let tls = config.tls.unwrap();
        assert_eq!(tls.ca_cert, Path::new("/etc/paymesh/tls/ca.pem"));
        assert_eq!(tls.cert, Path::new("/etc/paymesh/tls/node-us-west-1.pem"));
        assert_eq!(tls.key, Path::new("/etc/paymesh/tls/node-us-west-1.key"));
        assert_eq!(config.console.listen, Some("127.0.0.1:9465".parse().unwrap()));
        let config = NodeConfig::load(&path).unwrap();
        assert!(config.insecure_plaintext && config.tls.is_none(), "the example itself stays plaintext");
    }

    #[test]
    fn a_tls_section_replaces_insecure_plaintext() {
        let text = GOOD.replace("insecure_plaintext = true\n", "")
            + "[tls]\nca_cert = \"tls/ca.pem\"\ncert = \"tls/node-us-west-1.pem\"\nkey = \"tls/node-us-west-1.key\"\n";
        let config = parse(&text).unwrap();
        assert!(!config.insecure_plaintext);
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                ca_cert: "tls/ca.pem".into(),
                cert: "tls/node-us-west-1.pem".into(),
                key: "tls/node-us-west-1.key".into(),
                revoked: None,
            })
        );
        assert!(parse(GOOD).unwrap().tls.is_none());
    }

    #[test]
    fn plaintext_beyond_loopback_needs_its_own_explicit_setting() {
        let everywhere = GOOD.replace("api_listen = \"127.0.0.1:8001\"", "api_listen = \"0.0.0.0:8001\"");
        assert!(parse(&everywhere).is_err());
        let allowed = everywhere.replace(
            "insecure_plaintext = true\n",
            "insecure_plaintext = true\ninsecure_plaintext_beyond_loopback = true\n",
        );
        assert!(parse(&allowed).unwrap().insecure_plaintext_beyond_loopback);
    }

    #[test]
    fn bad_configurations_are_refused_with_the_key_named() {
        let tls = "\n[tls]\nca_cert = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n";
        let tls_only = GOOD.replace("insecure_plaintext = true\n", "");
        let cases = [
            (GOOD.replace("node_id = 1\n", "node_id = 0\n"), "node_id"),
            (GOOD.replace("region = \"us-west\"", "region = \"US West\""), "region id"),
            (GOOD.replace("insecure_plaintext = true", "insecure_plaintext = false"), "tls: a [tls] section"),
            (GOOD.replace("insecure_plaintext = true\n", ""), "tls: a [tls] section"),
            (GOOD.to_owned() + tls, "insecure_plaintext: a [tls] section and insecure_plaintext = true exclude"),
            (tls_only.clone() + &tls.replace("key = ", "private_key = "), "unknown field `private_key`"),
            (tls_only.clone() + &tls.replace("key = \"node.key\"\n", ""), "missing field `key`"),
            (tls_only.clone() + &tls.replace("\"node.pem\"", "\"\""), "tls.cert: must name a file"),
            (GOOD.replace("{ node_id = 2,", "{ node_id = 1,"), "unique"),
            (GOOD.replace("127.0.0.1:8002", "localhost"), "host:port"),
            (GOOD.replace("heartbeat_interval_ms = 50", "heartbeat_interval_ms = 400"), "three heartbeat"),
            (GOOD.replace("[raft]", "[raft]\nelection_timeout_max_ms = 100"), "election_timeout_max_ms"),
            (GOOD.replace("[raft]", "[raft]\ngroup_commit_interval_ms = 101"), "group_commit_interval_ms: at most 100"),
            (format!("{GOOD}\n[limits]\napi_connections_max = 0\n"), "limits.api_connections_max: 1 to 65536"),
            (format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:8001\"\n"), "metrics.listen: 127.0.0.1:8001 is another"),
            (format!("{GOOD}\n[metrics]\nport = 9464\n"), "unknown field `port`"),
            (format!("{GOOD}\n[console]\nlisten = \"127.0.0.1:9465\"\n"), "console.listen: the console admits"),
            (
                tls_only.clone()
                    + &format!(
                        "\n[metrics]\nlisten = \"127.0.0.1:9465\"\n[console]\nlisten = \"127.0.0.1:9465\"\n{tls}"
                    ),
                "console.listen: 127.0.0.1:9465 is another",
            ),
            (
                format!("{GOOD}\n[limits]\nevent_streams_per_partner_max = 1025\n"),
                "limits.event_streams_per_partner_max: 1 to 1024",
            ),
            (
                GOOD.replace("api_listen = \"127.0.0.1:8001\"", "api_listen = \"0.0.0.0:8001\""),
                "api_listen: 0.0.0.0:8001 is not a loopback address",
            ),
            (
                GOOD.replace("insecure_plaintext = true\n", "insecure_plaintext_beyond_loopback = true\n") + tls,
                "insecure_plaintext_beyond_loopback: only means something with insecure_plaintext",
            ),
            (GOOD.replace("data_dir", "data_directory"), "unknown field"),
            (
                format!("{GOOD}\n[history]\nretention_days = 399\n"),
                "history.retention_days: 399 is below the minimum of 400",
            ),
            (format!("{GOOD}\n[history]\nretention_days = 36526\n"), "history.retention_days: 36526 is above"),
            (format!("{GOOD}\n[history]\nretention = 500\n"), "unknown field `retention`"),
            (GOOD.replace("raft_listen = \"127.0.0.1:7001\"", "raft_listen = \"nowhere\""), "raft_listen"),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "expected {expected:?} in {error:?}");
        }
    }
}
