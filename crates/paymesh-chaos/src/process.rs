//! The process backend: the mesh as `paymesh start` processes on loopback
//! (a [`LocalMesh`]), every inter-region link and every Raft link between
//! two nodes of a region through a user-space proxy the nemeses control.
//!
//! A node reaches each peer through a proxy of its own for that peer (its
//! `[raft_dial]`), so cutting a node's proxies both ways isolates it from
//! its region exactly, whichever side opened a connection.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use paymesh_harness::mesh::LocalMesh;
use paymesh_harness::wan::{WanLink, WanSettings};
use tokio::task::JoinSet;

use crate::world;
use paymesh_harness::history::REGION_FILES;
use paymesh_harness::locality::ScanRoot;
use paymesh_harness::webhook_receiver::ReceiverCa;

/// Nodes per region.
pub const MEMBERS: u64 = 3;

/// The `[raft]` settings of every node: snapshots often enough that
/// restarted and isolated nodes catch up by snapshot as well as by log.
pub const RAFT_SETTINGS: &str = "snapshot_after_entries = 2000\nlogs_kept_after_snapshot = 500";

/// A mesh of local processes with controllable links.
#[derive(Debug)]
pub struct ProcessMesh {
    /// The regions' processes and the inter-region links.
    pub mesh: LocalMesh,
    /// (region, from, to) → the link node `from` dials node `to` through.
    raft_links: BTreeMap<(String, u64, u64), WanLink>,
    /// The Raft proxies.
    _proxies: JoinSet<()>,
    /// The CA of the partners' webhook receivers, which every node trusts.
    pub webhook_ca: ReceiverCa,
}

impl ProcessMesh {
    /// Plan, proxy, start and initialise the mesh of [`world::REGIONS`]
    /// under `dir` with the `paymesh` binary `exe`, inter-region links under
    /// `wan`.
    pub async fn start(dir: &Path, exe: &Path, wan: WanSettings) -> anyhow::Result<ProcessMesh> {
        let mut mesh = LocalMesh::plan(dir, exe, &world::regions()?, MEMBERS, RAFT_SETTINGS, wan, &[]).await?;
        let webhook_ca = ReceiverCa::new(dir)?;
        // Retries capped at 5 s, so a receiver's outage ends soon after it does.
        let webhooks = webhook_ca.node_config("retry_max_ms = 5000");
        let mut raft_links = BTreeMap::new();
        let mut proxies = JoinSet::new();
        for (name, region) in &mut mesh.regions {
            let targets: Vec<(u64, String)> = region.nodes.values().map(|n| (n.id, n.raft_addr.clone())).collect();
            for node in region.nodes.values_mut() {
                let mut dial = String::from("[raft_dial]\n");
                for (to, upstream) in targets.iter().filter(|(to, _)| *to != node.id) {
                    let link = WanLink::new(WanSettings::default());
                    let addr = link.proxy(upstream.clone(), &mut proxies).await?;
                    dial.push_str(&format!("{to} = \"{addr}\"\n"));
                    raft_links.insert((name.clone(), node.id, *to), link);
                }
                node.extra_config = format!("{dial}{webhooks}");
            }
        }
        mesh.launch().await?;
        Ok(ProcessMesh { mesh, raft_links, _proxies: proxies, webhook_ca })
    }

    /// SIGKILL node `id` of `region`.
    pub fn kill(&mut self, region: &str, id: u64) -> anyhow::Result<()> {
        self.mesh.region_mut(region)?.kill(id)
    }

    /// Start node `id` of `region` again (its data kept).
    pub fn restart(&mut self, region: &str, id: u64) -> anyhow::Result<()> {
        self.mesh.region_mut(region)?.spawn(id)
    }

    /// SIGSTOP (`pause`) or SIGCONT node `id` of `region`.
    pub fn pause(&mut self, region: &str, id: u64, pause: bool) -> anyhow::Result<()> {
        let node = self.mesh.region(region)?.nodes.get(&id).with_context(|| format!("no node {region}/{id}"))?;
        let pid = node
            .child
            .as_ref()
            .map(std::process::Child::id)
            .with_context(|| format!("{region}/{id} is not running"))?;
        let signal = if pause { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").arg(signal).arg(pid.to_string()).status().context("running kill")?;
        if !status.success() {
            bail!("kill {signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// Cut (or heal) every Raft link of node `id` of `region`, both ways.
    pub fn isolate(&self, region: &str, id: u64, cut: bool) -> anyhow::Result<()> {
        let mut found = false;
        for ((r, from, to), link) in &self.raft_links {
            if r == region && (*from == id || *to == id) {
                link.update(|s| s.cut = cut);
                found = true;
            }
        }
        if !found {
            bail!("no Raft links for {region}/{id}");
        }
        Ok(())
    }

    /// Cut (or heal) every inter-region link of `region`.
    pub fn cut_region(&self, region: &str, cut: bool) -> anyhow::Result<()> {
        for other in world::REGIONS.iter().filter(|r| **r != region) {
            self.mesh.link(region, other)?.update(|s| s.cut = cut);
        }
        Ok(())
    }

    /// Set the conditions on the link between regions `a` and `b`.
    pub fn set_wan(&self, a: &str, b: &str, settings: WanSettings) -> anyhow::Result<()> {
        self.mesh.link(a, b)?.set(settings);
        Ok(())
    }

    /// The node ids of `region` whose processes run.
    pub fn running(&self, region: &str) -> anyhow::Result<Vec<u64>> {
        Ok(self.mesh.region(region)?.nodes.values().filter(|n| n.child.is_some()).map(|n| n.id).collect())
    }

    /// SIGTERM everything.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.mesh.stop()
    }

    /// Everything each region's processes wrote, for the data-locality
    /// scan: every entry of the region's directory, owned by the node whose
    /// data directory, output (`node-<id>.log`, its stdout and stderr) or
    /// configuration it is, else by the region (its certificates, its
    /// revocation list).
    pub fn scan_roots(&self) -> anyhow::Result<Vec<ScanRoot>> {
        let mut roots = Vec::new();
        for (name, region) in &self.mesh.regions {
            let dir = region.dir();
            let mut entries = std::fs::read_dir(dir)
                .with_context(|| format!("listing {}", dir.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<Vec<_>>>()
                .with_context(|| format!("listing {}", dir.display()))?;
            entries.sort();
            for path in entries {
                let owner = region
                    .nodes
                    .values()
                    .find(|n| path == n.data_dir || path == n.log || path == n.config)
                    .map_or_else(|| REGION_FILES.to_owned(), |n| n.id.to_string());
                roots.push(ScanRoot::new(name, owner, path));
            }
            for node in region.nodes.values() {
                for path in [&node.data_dir, &node.log] {
                    if !roots.iter().any(|r| r.path == *path) {
                        roots.push(ScanRoot::new(name, node.id.to_string(), path));
                    }
                }
            }
        }
        Ok(roots)
    }
}
