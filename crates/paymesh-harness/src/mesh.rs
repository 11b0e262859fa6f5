//! A mesh of regions on this machine: one [`LocalRegion`] of `paymesh start`
//! processes per region, each with its own CA, every pair of regions joined
//! by a [`WanLink`] of user-space proxies. What `paymesh demo` runs and what
//! the cross-border tests run against.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use paymesh_client::Credentials;
use paymesh_node::identity::Identity;
use tokio::task::JoinSet;

use crate::local::LocalRegion;
use crate::wan::{WanLink, WanSettings};

/// The operator every region of a local mesh is configured by.
pub const OPERATOR: &str = "ops";

/// Longest wait for a region's first leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Regions of processes on loopback, linked through WAN proxies.
#[derive(Debug)]
pub struct LocalMesh {
    /// The regions by name.
    pub regions: BTreeMap<String, LocalRegion>,
    links: BTreeMap<(String, String), WanLink>,
    /// (from, to) → the proxied inter-region endpoints `from` dials for `to`.
    endpoints: BTreeMap<(String, String), Vec<String>>,
    /// (from, to) where `from` drains `to` (`remote_regions.draining`).
    draining: std::collections::BTreeSet<(String, String)>,
    proxies: JoinSet<()>,
}

impl LocalMesh {
    /// Start `regions` (a name and the partners to certify) of `members`
    /// nodes each under `dir`, with `raft_settings` as every node's `[raft]`
    /// body and `env` in every node's environment, every pair of regions
    /// linked under `wan`; each region initialised and led.
    pub async fn start(
        dir: &Path,
        exe: &Path,
        regions: &[(&str, Vec<Identity>)],
        members: u64,
        raft_settings: &str,
        wan: WanSettings,
        env: &[(&str, &str)],
    ) -> anyhow::Result<LocalMesh> {
        let mut mesh = LocalMesh::plan(dir, exe, regions, members, raft_settings, wan, env).await?;
        mesh.launch().await?;
        Ok(mesh)
    }

    /// As [`LocalMesh::start`], without starting any node: certificates
    /// issued, addresses allocated and links proxied, so a caller can adjust
    /// the nodes' configuration before [`LocalMesh::launch`].
    pub async fn plan(
        dir: &Path,
        exe: &Path,
        regions: &[(&str, Vec<Identity>)],
        members: u64,
        raft_settings: &str,
        wan: WanSettings,
        env: &[(&str, &str)],
    ) -> anyhow::Result<LocalMesh> {
        let mut mesh = LocalMesh {
            regions: BTreeMap::new(),
            links: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            draining: std::collections::BTreeSet::new(),
            proxies: JoinSet::new(),
        };
        for (name, holders) in regions {
            let mut region =
                LocalRegion::plan(&dir.join(name), name, exe, OPERATOR, holders.clone(), members, raft_settings)?;
            region.env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            mesh.regions.insert((*name).to_owned(), region);
        }
        let names: Vec<String> = mesh.regions.keys().cloned().collect();
        for a in &names {
            for b in names.iter().filter(|b| *b != a) {
                mesh.proxy(a, b, wan).await?;
            }
        }
        for a in &names {
            let text = mesh.remote_regions_of(a)?;
            mesh.region_mut(a)?.remote_regions = text;
        }
        Ok(mesh)
    }

    /// Proxy the link from `a` to `b`'s inter-region listeners (the link
    /// between them made under `wan` if it is the pair's first).
    async fn proxy(&mut self, a: &str, b: &str, wan: WanSettings) -> anyhow::Result<()> {
        let key = (a.min(b).to_owned(), a.max(b).to_owned());
        let link = self.links.entry(key).or_insert_with(|| WanLink::new(wan)).clone();
        let mut endpoints = Vec::new();
        let targets: Vec<String> = self.region(b)?.nodes.values().map(|node| node.interregion_addr.clone()).collect();
        for target in targets {
            endpoints.push(link.proxy(target, &mut self.proxies).await?);
        }
        self.endpoints.insert((a.to_owned(), b.to_owned()), endpoints);
        Ok(())
    }

    /// Region `a`'s `[[remote_regions]]`: every region it dials, drained
    /// or not.
    fn remote_regions_of(&self, a: &str) -> anyhow::Result<String> {
        let mut text = String::new();
        for ((from, to), endpoints) in &self.endpoints {
            if from != a {
                continue;
            }
            let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
            let draining = self.draining.contains(&(from.clone(), to.clone()));
            text.push_str(&format!(
                "\n[[remote_regions]]\nregion = \"{to}\"\nendpoints = [{}]\nca_cert = \"{}\"\n{}",
                quoted.join(", "),
                self.region(to)?.ca_file().display(),
                if draining { "draining = true\n" } else { "" }
            ));
        }
        Ok(text)
    }

    /// Write region `name`'s remote regions into every node's configuration
    /// and SIGHUP the running ones, which take them without a restart.
    fn reconfigure(&mut self, name: &str) -> anyhow::Result<()> {
        let text = self.remote_regions_of(name)?;
        let region = self.region_mut(name)?;
        region.remote_regions = text;
        let peers: Vec<u64> = region.nodes.keys().copied().collect();
        for id in &peers {
            region.write_config(*id, &peers)?;
            if region.nodes[id].child.is_some() {
                region.hangup(*id)?;
            }
        }
        Ok(())
    }

    /// Add region `name` (certifying `holders`) of `members` nodes to the
    /// running mesh: started, initialised and led, linked both ways under
    /// `wan` with every region, which learn of it from their configuration
    /// files on SIGHUP, without a restart.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_region(
        &mut self,
        dir: &Path,
        exe: &Path,
        name: &str,
        holders: Vec<Identity>,
        members: u64,
        raft_settings: &str,
        wan: WanSettings,
    ) -> anyhow::Result<()> {
        let mut region = LocalRegion::plan(&dir.join(name), name, exe, OPERATOR, holders, members, raft_settings)?;
        region.env = self.regions.values().next().map(|r| r.env.clone()).unwrap_or_default();
        let others: Vec<String> = self.regions.keys().cloned().collect();
        self.regions.insert(name.to_owned(), region);
        for other in &others {
            self.proxy(name, other, wan).await?;
            self.proxy(other, name, wan).await?;
        }
        let text = self.remote_regions_of(name)?;
        let region = self.region_mut(name)?;
        region.remote_regions = text;
        region.launch()?;
        region.initialize(1, LEADER_TIMEOUT).await.with_context(|| format!("initialising {name}"))?;
        for other in &others {
            self.reconfigure(other)?;
        }
        Ok(())
    }

    /// Drain region `name` in both directions: every other region refuses
    /// new transfers to it and it refuses new ones to them (configuration
    /// files and SIGHUP); transfers in flight finish.
    pub fn drain_region(&mut self, name: &str) -> anyhow::Result<()> {
        let names: Vec<String> = self.regions.keys().cloned().collect();
        for other in names.iter().filter(|other| *other != name) {
            self.draining.insert((other.clone(), name.to_owned()));
            self.draining.insert((name.to_owned(), other.clone()));
        }
        for region in &names {
            self.reconfigure(region)?;
        }
        Ok(())
    }

    /// Take region `name` out of every other region's configuration (SIGHUP
    /// applies it; a node refuses while transfers are in flight with it) and
    /// out of this mesh; the region, still running, for the caller to stop.
    pub fn remove_region(&mut self, name: &str) -> anyhow::Result<LocalRegion> {
        self.endpoints.retain(|(from, to), _| from != name && to != name);
        self.draining.retain(|(from, to)| from != name && to != name);
        let others: Vec<String> = self.regions.keys().filter(|other| *other != name).cloned().collect();
        for other in &others {
            self.reconfigure(other)?;
        }
        self.regions.remove(name).with_context(|| format!("no region {name} in this mesh"))
    }

    /// Start every planned node and initialise every region; returns once
    /// each is led.
    pub async fn launch(&mut self) -> anyhow::Result<()> {
        for region in self.regions.values_mut() {
            region.launch()?;
        }
        for (name, region) in &self.regions {
            region.initialize(1, LEADER_TIMEOUT).await.with_context(|| format!("initialising {name}"))?;
        }
        Ok(())
    }

    /// A Prometheus configuration scraping every node's metrics listener
    /// every `interval` (`5s`), each node labelled with its region.
    pub fn prometheus_config(&self, interval: &str) -> String {
        let mut text = format!(
            "# Written by paymesh for this mesh: prometheus --config.file=<this file>\n\
             global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
             scrape_configs:\n  - job_name: paymesh\n    static_configs:\n"
        );
        for (name, region) in &self.regions {
            let targets: Vec<String> = region
                .nodes
                .values()
                .filter(|node| !node.metrics_addr.is_empty())
                .map(|node| format!("\"{}\"", node.metrics_addr))
                .collect();
            text.push_str(&format!(
                "      - targets: [{}]\n        labels: {{ region: {name} }}\n",
                targets.join(", ")
            ));
        }
        text
    }

    /// The region `name`.
    pub fn region(&self, name: &str) -> anyhow::Result<&LocalRegion> {
        self.regions.get(name).with_context(|| format!("no region {name} in this mesh"))
    }

    /// The region `name`, to stop or start its nodes.
    pub fn region_mut(&mut self, name: &str) -> anyhow::Result<&mut LocalRegion> {
        self.regions.get_mut(name).with_context(|| format!("no region {name} in this mesh"))
    }

    /// The link between regions `a` and `b` (both directions).
    pub fn link(&self, a: &str, b: &str) -> anyhow::Result<&WanLink> {
        let key = (a.min(b).to_owned(), a.max(b).to_owned());
        self.links.get(&key).with_context(|| format!("no link between {a} and {b}"))
    }

    /// The inter-region endpoints region `from` dials to reach `to`, through
    /// their link.
    pub fn endpoints(&self, from: &str, to: &str) -> anyhow::Result<&[String]> {
        let key = (from.to_owned(), to.to_owned());
        self.endpoints.get(&key).map(Vec::as_slice).with_context(|| format!("no link from {from} to {to}"))
    }

    /// How a node of region `from` presents itself to region `to`: node 1's
    /// certificate, trusting `to`'s CA (for calls to `to`'s inter-region
    /// listeners, as a probe or a test replaying messages).
    pub fn node_credentials(&self, from: &str, to: &str) -> anyhow::Result<Credentials> {
        let [_, cert, key] = self.region(from)?.cert_files(&format!("node-{from}-1"));
        let ca = self.region(to)?.ca_file();
        let read = |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        Ok(Credentials::Tls { ca: read(&ca)?, cert: read(&cert)?, key: read(&key)? })
    }

    /// Set the conditions on every link.
    pub fn set_wan(&self, settings: WanSettings) {
        for link in self.links.values() {
            link.set(settings);
        }
    }

    /// SIGTERM every node of every region.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        for region in self.regions.values_mut() {
            region.stop()?;
        }
        self.proxies.abort_all();
        Ok(())
    }
}
