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
use paymesh_cli::local::LocalRegion;
use paymesh_cli::mesh::OPERATOR;
use paymesh_cli::wan::{WanLink, WanSettings};
use tokio::task::JoinSet;

use crate::world::{self, REGIONS};

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
    /// `wan`, every region initialised and led.
    pub async fn start(deploy: &Path, exe: &Path, wan: WanSettings) -> anyhow::Result<DockerMesh> {
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
        script(deploy, "up.sh", &["--timeout", "120"], &env)?;

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
        Ok(DockerMesh { deploy: deploy.to_owned(), regions, links, _proxies: proxies })
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

    /// Stop the containers (their data kept for inspection).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        script(&self.deploy, "down.sh", &[], &[])
    }
}
