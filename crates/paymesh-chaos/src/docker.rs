//! The container backend: the mesh of `deploy/` (3 regions × 3 containers
//! of the `paymesh:dev` image, a network per region and a WAN network),
//! driven with the Docker CLI.
//!
//! Every node reaches the other regions through a user-space WAN link run
//! by this process on the WAN network's gateway address
//! (`PAYMESH_WAN_VIA`, see deploy/lib.sh): the kernel has no netem, so
//! delay, jitter, loss and a region's cut are applied there. A node is
//! isolated from its region by disconnecting its container from the
//! region's network, and reconnected with its fixed address.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use paymesh_harness::local::LocalRegion;
use paymesh_harness::mesh::OPERATOR;
use paymesh_harness::wan::{WanLink, WanSettings};
use tokio::task::JoinSet;

use crate::world::{self, REGIONS};
use paymesh_harness::history::REGION_FILES;
use paymesh_harness::locality::ScanRoot;

/// The WAN network's gateway: the host's address on it.
const WAN_GATEWAY: &str = "10.77.0.1";

/// deploy/lib.sh's region order (region `r` is 1-based there).
const DEPLOY_REGIONS: [&str; 3] = ["us-west", "ap-southeast", "cn-east"];

/// Nodes per region.
const MEMBERS: u64 = 3;

fn index(region: &str) -> anyhow::Result<usize> {
    DEPLOY_REGIONS.iter().position(|r| *r == region).map(|i| i + 1).with_context(|| format!("no region {region}"))
}

fn container(region: &str, node: u64) -> String {
    format!("paymesh-{region}-{node}")
}

/// Run `docker` with `args`; its standard output.
fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output().context("running docker (is Docker installed?)")?;
    if !out.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a deploy/ script with `env`.
fn script(deploy: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let path = deploy.join(name);
    let status = Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running {}", path.display()))?;
    if !status.success() {
        bail!("{} {} failed: {status}", path.display(), args.join(" "));
    }
    Ok(())
}

/// The mesh of containers.
#[derive(Debug)]
pub struct DockerMesh {
    deploy: PathBuf,
    /// Where the containers' output is saved when they stop
    /// (`<region>/node-<n>.log`).
    capture: PathBuf,
    /// What the stopped containers wrote, for the data-locality scan.
    scan_roots: Vec<ScanRoot>,
    /// What the containers may have written that [`DockerMesh::stop`]
    /// could not reach.
    unreachable: Vec<String>,
    /// The regions, reached at their published API ports.
    pub regions: BTreeMap<String, LocalRegion>,
    /// Region pair (in name order) → its WAN link, whose proxies listen on
    /// the WAN gateway at 19ftn for region f dialling node n of region t.
    links: BTreeMap<(String, String), WanLink>,
    _proxies: JoinSet<()>,
}

impl DockerMesh {
    /// Start the mesh afresh from `deploy` (its previous run removed) with
    /// the `paymesh` binary `exe` on the host, inter-region links under
    /// `wan`, every region initialised and led; the containers' output is
    /// saved under `capture` when they stop.
    pub async fn start(deploy: &Path, capture: &Path, exe: &Path, wan: WanSettings) -> anyhow::Result<DockerMesh> {
        docker(&["version", "--format", "{{.Server.Version}}"]).context("the Docker engine does not answer")?;
        let exe_text = exe.to_str().context("a UTF-8 path to paymesh")?;
        let env = [("PAYMESH_WAN_VIA", WAN_GATEWAY), ("PAYMESH_BIN", exe_text)];
        script(deploy, "down.sh", &["--all"], &env)?;
        script(deploy, "gen.sh", &[], &env)?;
        // The chaos world's partners, under each region's CA. deploy/gen.sh
        // has issued the demo's partners already, some of them the chaos
        // world's too (`sari-ph`, `shop-us`, …): those are issued again
        // (`paymesh certs` refuses an existing holder's files otherwise).
        for (region, holders) in world::regions()? {
            let partners: Vec<String> = holders.iter().map(|h| h.file_stem().replacen("partner-", "", 1)).collect();
            let certs = deploy.join("run/certs").join(region);
            let status = Command::new(exe)
                .args(["certs", "--out"])
                .arg(&certs)
                .args(["--region", region, "--partners", &partners.join(","), "--replace"])
                .stdout(std::process::Stdio::null())
                .status()
                .context("issuing the partners' certificates")?;
            if !status.success() {
                bail!("paymesh certs for {region}'s partners failed: {status}");
            }
        }
        // The image is built from this checkout every run (cargo and docker
        // both reuse what has not changed): an image left from an earlier
        // build ran old nodes under a new runner, and the run measured them.
        script(deploy, "up.sh", &["--rebuild", "--timeout", "120"], &env)?;

        let mut links = BTreeMap::new();
        let mut proxies = JoinSet::new();
        for a in REGIONS {
            for b in REGIONS.iter().filter(|b| **b > a) {
                links.insert((a.to_owned(), (*b).to_owned()), WanLink::new(wan));
            }
        }
        for from in REGIONS {
            for to in REGIONS.iter().copied().filter(|to| *to != from) {
                let key = (from.min(to).to_owned(), from.max(to).to_owned());
                let link = links.get(&key).context("a link per pair of regions")?;
                let (f, t) = (index(from)?, index(to)?);
                for n in 1..=MEMBERS {
                    let listen = format!("{WAN_GATEWAY}:19{f}{t}{n}");
                    let upstream = format!("10.77.0.{t}{n}:9000");
                    link.proxy_at(&listen, upstream, &mut proxies)
                        .await
                        .with_context(|| format!("listening at {listen}"))?;
                }
            }
        }
        let mut regions = BTreeMap::new();
        for region in REGIONS {
            let r = index(region)?;
            let addrs = (1..=MEMBERS).map(|n| (n, format!("127.0.0.1:71{r}{n}"))).collect();
            let dir = deploy.join("run/certs").join(region);
            regions.insert(region.to_owned(), LocalRegion::attach(&dir, region, OPERATOR, addrs)?);
        }
        Ok(DockerMesh {
            deploy: deploy.to_owned(),
            capture: capture.to_owned(),
            scan_roots: Vec::new(),
            unreachable: Vec::new(),
            regions,
            links,
            _proxies: proxies,
        })
    }

    /// SIGKILL a node's container.
    pub fn kill(&mut self, region: &str, node: u64) -> anyhow::Result<()> {
        docker(&["kill", "--signal", "KILL", &container(region, node)]).map(drop)
    }

    /// Start a node's container again.
    pub fn restart(&mut self, region: &str, node: u64) -> anyhow::Result<()> {
        docker(&["start", &container(region, node)]).map(drop)
    }

    /// `docker pause` or `unpause` a node's container.
    pub fn pause(&mut self, region: &str, node: u64, pause: bool) -> anyhow::Result<()> {
        docker(&[if pause { "pause" } else { "unpause" }, &container(region, node)]).map(drop)
    }

    /// Disconnect a node's container from its region's network, or connect
    /// it again at its fixed address.
    pub fn isolate(&self, region: &str, node: u64, cut: bool) -> anyhow::Result<()> {
        let network = format!("paymesh-{region}");
        let name = container(region, node);
        if cut {
            docker(&["network", "disconnect", "--force", &network, &name]).map(drop)
        } else {
            let ip = format!("10.77.{}.1{node}", index(region)?);
            docker(&["network", "connect", "--ip", &ip, &network, &name]).map(drop)
        }
    }

    /// Cut (or heal) `region`'s inter-region traffic both ways: its nodes'
    /// links into the other regions and the other regions' links into it.
    pub fn cut_region(&self, region: &str, cut: bool) -> anyhow::Result<()> {
        for other in REGIONS.iter().filter(|r| **r != region) {
            self.set_wan_with(region, other, |s| s.cut = cut)?;
        }
        Ok(())
    }

    /// Set the conditions between regions `a` and `b`.
    pub fn set_wan(&self, a: &str, b: &str, settings: WanSettings) -> anyhow::Result<()> {
        self.set_wan_with(a, b, |s| *s = settings)
    }

    fn set_wan_with(&self, a: &str, b: &str, change: impl FnOnce(&mut WanSettings)) -> anyhow::Result<()> {
        let key = (a.min(b).to_owned(), a.max(b).to_owned());
        self.links.get(&key).with_context(|| format!("no link between {a} and {b}"))?.update(change);
        Ok(())
    }

    /// The nodes of `region` whose containers run.
    pub fn running(&self, region: &str) -> anyhow::Result<Vec<u64>> {
        let mut up = Vec::new();
        for n in 1..=MEMBERS {
            let state = docker(&["inspect", "--format", "{{.State.Running}}", &container(region, n)])?;
            if state.trim() == "true" {
                up.push(n);
            }
        }
        Ok(up)
    }

    /// Stop the containers (their data kept for inspection), first saving
    /// what the data-locality scan reads: each container is stopped (SIGTERM,
    /// so its output is complete), its output saved from `docker logs`, and
    /// its mounts and whether its root file system is read-only taken from
    /// `docker inspect`, before deploy/down.sh removes the containers.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = REGIONS.iter().flat_map(|r| (1..=MEMBERS).map(move |n| container(r, n))).collect();
        for name in &names {
            // A paused container cannot be stopped; a running one is left as is.
            let _ = docker(&["unpause", name]);
        }
        let mut args = vec!["stop", "--time", "20"];
        args.extend(names.iter().map(String::as_str));
        if let Err(e) = docker(&args) {
            self.unreachable.push(format!("stopping the containers before the scan: {e:#}"));
        }
        for region in REGIONS {
            for n in 1..=MEMBERS {
                if let Err(e) = self.save_for_scan(region, n) {
                    self.unreachable.push(format!("{}: {e:#}", container(region, n)));
                }
            }
            // The region's certificates and keys on the host, which the
            // chaos world's partners were issued into.
            let certs = self.deploy.join("run/certs").join(region);
            self.scan_roots.push(ScanRoot::new(region, REGION_FILES, certs));
        }
        script(&self.deploy, "down.sh", &[], &[])
    }

    /// Save node `n` of `region`'s output under the capture directory, and
    /// note its mounts' host directories as scan roots.
    fn save_for_scan(&mut self, region: &str, n: u64) -> anyhow::Result<()> {
        let name = container(region, n);
        let owner = n.to_string();
        let log = self.capture.join(region).join(format!("node-{n}.log"));
        std::fs::create_dir_all(self.capture.join(region))?;
        // Stream `docker logs` (the container's stdout and stderr) into the
        // file: the output of a long run need not fit in memory.
        self.scan_roots.push(ScanRoot::new(region, &owner, &log));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let status = Command::new("docker")
            .args(["logs", &name])
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .context("running docker logs")?;
        if !status.success() {
            bail!("docker logs {name} failed: {status}");
        }
        let inspected: serde_json::Value = serde_json::from_str(&docker(&["inspect", &name])?)
            .with_context(|| format!("parsing docker inspect {name}"))?;
        let container = inspected.get(0).with_context(|| format!("docker inspect {name}: no container"))?;
        if container.pointer("/HostConfig/ReadonlyRootfs").and_then(serde_json::Value::as_bool) != Some(true) {
            self.unreachable
                .push(format!("{name}: its root file system is writable, and only its mounts and output are scanned"));
        }
        let mounts = container.get("Mounts").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
        if mounts.is_empty() {
            bail!("docker inspect {name}: no mounts, so no data directory to scan");
        }
        for mount in mounts {
            let source = mount.get("Source").and_then(serde_json::Value::as_str).unwrap_or_default();
            if source.is_empty() {
                bail!("docker inspect {name}: a mount without a source on the host: {mount}");
            }
            self.scan_roots.push(ScanRoot::new(region, &owner, source));
        }
        Ok(())
    }

    /// What the stopped containers wrote, and what [`DockerMesh::stop`]
    /// could not reach: a node's mounts (its data directory, its
    /// configuration and certificates) as seen on the host, its output as
    /// `docker logs` gave it, and the region's certificates on the host.
    pub fn scan_roots(&self) -> (Vec<ScanRoot>, Vec<String>) {
        (self.scan_roots.clone(), self.unreachable.clone())
    }
}
