//! Where a run's mesh lives: local processes or containers. The same
//! nemeses act on both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paymesh_harness::local::LocalRegion;
use paymesh_harness::wan::WanSettings;

use crate::docker::DockerMesh;
use crate::process::ProcessMesh;
use paymesh_harness::locality::ScanRoot;

/// Which backend, and what it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `paymesh start` processes on loopback, under this directory.
    Process,
    /// Containers of `deploy/`, this directory.
    Docker(PathBuf),
}

impl Backend {
    /// Its name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Process => "process",
            Backend::Docker(_) => "docker",
        }
    }
}

/// A running mesh.
#[derive(Debug)]
pub enum Mesh {
    /// Local processes.
    Process(ProcessMesh),
    /// Containers.
    Docker(DockerMesh),
}

impl Mesh {
    /// The CA of the partners' webhook receivers the nodes trust, where the
    /// receivers (on this machine's loopback) are reachable from the nodes:
    /// the process backend's.
    pub fn webhook_ca(&self) -> Option<&paymesh_harness::webhook_receiver::ReceiverCa> {
        match self {
            Mesh::Process(m) => Some(&m.webhook_ca),
            Mesh::Docker(_) => None,
        }
    }

    /// Start the mesh of `backend` (process data, or the containers' saved
    /// output, under `dir`) with the `paymesh` binary `exe`, inter-region
    /// links under `wan`.
    pub async fn start(backend: &Backend, dir: &Path, exe: &Path, wan: WanSettings) -> anyhow::Result<Mesh> {
        Ok(match backend {
            Backend::Process => Mesh::Process(ProcessMesh::start(dir, exe, wan).await?),
            Backend::Docker(deploy) => Mesh::Docker(DockerMesh::start(deploy, dir, exe, wan).await?),
        })
    }

    /// The regions by name.
    pub fn regions(&self) -> &BTreeMap<String, LocalRegion> {
        match self {
            Mesh::Process(m) => &m.mesh.regions,
            Mesh::Docker(m) => &m.regions,
        }
    }

    /// The region `name`.
    pub fn region(&self, name: &str) -> anyhow::Result<&LocalRegion> {
        use anyhow::Context;
        self.regions().get(name).with_context(|| format!("no region {name}"))
    }

    /// SIGKILL a node.
    pub fn kill(&mut self, region: &str, node: u64) -> anyhow::Result<()> {
        match self {
            Mesh::Process(m) => m.kill(region, node),
            Mesh::Docker(m) => m.kill(region, node),
        }
    }

    /// Start a killed node again.
    pub fn restart(&mut self, region: &str, node: u64) -> anyhow::Result<()> {
        match self {
            Mesh::Process(m) => m.restart(region, node),
            Mesh::Docker(m) => m.restart(region, node),
        }
    }

    /// Pause or resume a node.
    pub fn pause(&mut self, region: &str, node: u64, pause: bool) -> anyhow::Result<()> {
        match self {
            Mesh::Process(m) => m.pause(region, node, pause),
            Mesh::Docker(m) => m.pause(region, node, pause),
        }
    }

    /// Cut a node off from its region, or heal it.
    pub fn isolate(&self, region: &str, node: u64, cut: bool) -> anyhow::Result<()> {
        match self {
            Mesh::Process(m) => m.isolate(region, node, cut),
            Mesh::Docker(m) => m.isolate(region, node, cut),
        }
    }

    /// Cut a region off from the others, or heal it.
    pub fn cut_region(&self, region: &str, cut: bool) -> anyhow::Result<()> {
        match self {
            Mesh::Process(m) => m.cut_region(region, cut),
            Mesh::Docker(m) => m.cut_region(region, cut),
        }
    }

    /// Set the conditions between two regions.
    pub fn set_wan(&self, a: &str, b: &str, settings: WanSettings) -> anyhow::Result<()> {
        match self {
            Mesh::Process(m) => m.set_wan(a, b, settings),
            Mesh::Docker(m) => m.set_wan(a, b, settings),
        }
    }

    /// The nodes of `region` that run.
    pub fn running(&self, region: &str) -> anyhow::Result<Vec<u64>> {
        match self {
            Mesh::Process(m) => m.running(region),
            Mesh::Docker(m) => m.running(region),
        }
    }

    /// The leader of `region`, if one is found within `timeout`.
    pub async fn leader(&self, region: &str, timeout: Duration) -> Option<u64> {
        self.region(region).ok()?.wait_leader(timeout).await.ok()
    }

    /// Stop everything.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        match self {
            Mesh::Process(m) => m.stop(),
            Mesh::Docker(m) => m.stop(),
        }
    }

    /// Once stopped: every file and directory the nodes of every region
    /// wrote, with its region and node, for the data-locality scan; and
    /// what the nodes may have written that cannot be reached.
    pub fn scan_roots(&self) -> anyhow::Result<(Vec<ScanRoot>, Vec<String>)> {
        match self {
            Mesh::Process(m) => Ok((m.scan_roots()?, Vec::new())),
            Mesh::Docker(m) => Ok(m.scan_roots()),
        }
    }
}
