//! One chaos run: bring the mesh up, configure the world, drive the
//! workload while the nemeses work through the seed's schedule, heal, wait
//! for every transfer to settle, observe, stop the mesh, scan its files,
//! check, report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paymesh_harness::wan::WanSettings;
use paymesh_harness::world::configure_world;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backend::{Backend, Mesh};
use crate::nemesis::{Fault, Schedule};
use crate::report;
use crate::workload::{self, Recorder};
use crate::world::{MERCHANTS, RATES, REGIONS, WALLETS};
use paymesh_harness::history::{self, History, LocalityScan, Observation};
use paymesh_harness::{check, locality, observe, settlement, webhooks};

/// How long the mesh may take to be live again after a heal.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);

/// How long after the last heal every transfer must be final: the 10 s
/// cross-border deadline, the shipper's retries and a leader election.
pub const RESOLVE_BOUND: Duration = Duration::from_secs(60);

/// Quiet time before the first fault.
const WARM_UP: Duration = Duration::from_secs(3);
/// The longest wait, once the mesh settled, for every webhook receiver to
/// get every event its partner's region holds.
const WEBHOOKS_BOUND: Duration = Duration::from_secs(90);
/// How often the operator closes every region's settlement window while
/// the workload and the faults run.
const CLOSE_EVERY: Duration = Duration::from_secs(20);
/// Longest an operator's close may take before it is given up (a region
/// without a leader).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The seed of the schedule and the workload.
    pub seed: u64,
    /// How long the workload runs (faults included).
    pub duration: Duration,
    /// Where the mesh runs.
    pub backend: Backend,
    /// Where the mesh (process backend), the history and the report go.
    pub dir: PathBuf,
    /// The `paymesh` binary.
    pub exe: PathBuf,
    /// Concurrent payment workers, each paying any corridor (ignored with
    /// `per_corridor`).
    pub workers: u32,
    /// Workers of each corridor (a wallet and the region of the merchants
    /// it pays), each paying only that corridor, so that a stalled corridor
    /// holds only its own; `None`: `workers` over every corridor.
    pub per_corridor: Option<u32>,
    /// Payments offered per second on each corridor, spread over its
    /// workers (with `per_corridor`); `None`: as fast as they answer.
    pub rate_per_corridor: Option<f64>,
    /// The normal round trip between regions.
    pub rtt_ms: u64,
}

/// How many violations of each failing checker a run prints when it ends
/// (the report keeps up to [`check::DETAILS_PER_CHECKER_MAX`]).
pub const FAILURES_SHOWN: usize = 5;

/// A run's verdict: the violations counted and where the report is.
#[derive(Debug)]
pub struct RunResult {
    /// Violations of all checkers.
    pub violations: usize,
    /// The report's directory.
    pub report: report::ReportPaths,
}

/// Run the chaos suite once.
pub async fn run(config: &RunConfig) -> anyhow::Result<RunResult> {
    std::fs::create_dir_all(&config.dir).with_context(|| format!("creating {}", config.dir.display()))?;
    let base = WanSettings { delay_ms: config.rtt_ms / 2, jitter_ms: 2, ..WanSettings::default() };
    eprintln!(
        "chaos: seed {}, starting 3 regions × 3 nodes ({} backend); results in {}",
        config.seed,
        config.backend.name(),
        config.dir.display()
    );
    let mut mesh = Mesh::start(&config.backend, &config.dir.join("mesh"), &config.exe, base).await?;
    configure_world(mesh.regions(), &WALLETS, &MERCHANTS, &RATES).await.context("configuring the world")?;

    let operators = {
        let regions = REGIONS.iter().map(|r| Ok((*r, mesh.region(r)?))).collect::<anyhow::Result<Vec<_>>>()?;
        Arc::new(settlement::operators(&regions)?)
    };
    // Every partner's webhook, where the nodes can reach this machine's
    // receivers (the process backend).
    let watched = match mesh.webhook_ca() {
        Some(ca) => {
            let partners: Vec<(&str, &str)> =
                WALLETS.iter().map(|w| (w.0, w.1)).chain(MERCHANTS.iter().map(|m| (m.0, m.1))).collect();
            let watched = webhooks::register(ca, &operators, &partners).await.context("registering webhooks")?;
            eprintln!("chaos: {} webhooks registered", watched.len());
            Some(Arc::new(watched))
        }
        None => None,
    };
    let recorder = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    let mut clients = workload::Clients { wallets: Vec::new(), merchants: Vec::new() };
    for wallet in &WALLETS {
        clients.wallets.push((*wallet, workload::client(mesh.region(wallet.0)?, wallet.1)?));
    }
    for merchant in &MERCHANTS {
        clients.merchants.push((*merchant, workload::client(mesh.region(merchant.0)?, merchant.1)?));
    }
    let clients = Arc::new(clients);
    let plans: Vec<workload::Plan> = match config.per_corridor {
        Some(each) => {
            let pace = config.rate_per_corridor.map(|rate| Duration::from_secs_f64(f64::from(each) / rate));
            let corridors = workload::corridors(&clients);
            eprintln!(
                "chaos: {each} workers on each of {} corridors{}",
                corridors.len(),
                config.rate_per_corridor.map_or_else(String::new, |rate| format!(", {rate}/s offered on each"))
            );
            corridors
                .into_iter()
                .flat_map(|corridor| (0..each).map(move |_| workload::Plan { corridor: Some(corridor), pace }))
                .collect()
        }
        None => vec![workload::Plan::default(); config.workers as usize],
    };
    for (id, plan) in (0u32..).zip(plans) {
        tasks.spawn(workload::worker(id, config.seed, plan, clients.clone(), recorder.clone(), stop.clone()));
    }
    tasks.spawn(close_windows(operators.clone(), stop.clone()));
    if let Some(watched) = &watched {
        // The receivers' own outage, from a quarter of the run for 15 % of it.
        let (watched, duration) = (watched.clone(), config.duration);
        tasks.spawn(async move {
            tokio::time::sleep(duration / 4).await;
            eprintln!("chaos: every webhook receiver refuses deliveries");
            webhooks::outage(&watched, true);
            tokio::time::sleep(duration * 15 / 100).await;
            webhooks::outage(&watched, false);
            eprintln!("chaos: every webhook receiver accepts deliveries again");
        });
    }
    let followed = WALLETS.iter().map(|w| (w.0, w.1)).chain(MERCHANTS.iter().map(|m| (m.0, m.1)));
    for (n, (region, partner)) in followed.enumerate() {
        let client = workload::client(mesh.region(region)?, partner)?;
        let id = 1_000 + u32::try_from(n).unwrap_or(0);
        tasks.spawn(workload::follow(id, region.into(), partner.into(), client, recorder.clone(), stop.clone()));
    }

    let started = Instant::now();
    let deadline = started + config.duration;
    let mut schedule = Schedule::new(config.seed, base);
    let mut faults = Vec::new();
    tokio::time::sleep(WARM_UP.min(config.duration)).await;
    loop {
        let step = schedule.next_step();
        if Instant::now() + step.hold + step.rest > deadline {
            break;
        }
        // A node's fault that hits its region's leader is the region's
        // pause, not a follower's: the target says so (for the blast
        // radius' follower targets).
        let hits_leader = match &step.fault {
            Fault::Kill { region, node } | Fault::Pause { region, node } | Fault::Isolate { region, node } => {
                mesh.leader(region, Duration::from_secs(2)).await == Some(*node)
            }
            _ => false,
        };
        let start_ms = recorder.now_ms();
        let (sent, ok) = recorder.counts();
        eprintln!(
            "chaos: {:>4} s  {} {} for {} ms  ({sent} transfer requests, {ok} acknowledged)",
            started.elapsed().as_secs(),
            step.fault.nemesis(),
            step.fault.target(),
            step.hold.as_millis()
        );
        let injected_at = Instant::now();
        let injected = inject(&mut mesh, &step.fault).await?;
        let elected = match (&step.fault, injected) {
            (Fault::KillLeader { region }, Some(killed)) => {
                tokio::time::timeout(step.hold, elected(&mesh, region, killed)).await.ok().flatten()
            }
            _ => None,
        }
        .map(|_| injected_at.elapsed());
        tokio::time::sleep(step.hold.saturating_sub(injected_at.elapsed())).await;
        heal(&mut mesh, &step.fault, &injected, base)?;
        let end_ms = recorder.now_ms();
        let recovered = wait_live(&mesh, RECOVERY_BOUND).await;
        if recovered.is_none() {
            eprintln!("chaos: the mesh was not live {} s after the heal", RECOVERY_BOUND.as_secs());
        }
        faults.push(history::Fault {
            nemesis: step.fault.nemesis().to_owned(),
            target: match (injected, hits_leader) {
                (Some(node), _) => format!("{}/{node}", step.fault.target()),
                (None, true) => format!("{} (leader)", step.fault.target()),
                (None, false) => step.fault.target(),
            },
            start_ms,
            end_ms,
            recovered_after_ms: recovered.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            elected_after_ms: elected.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        });
        tokio::time::sleep(step.rest.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    tokio::time::sleep_until(deadline).await;
    stop.store(true, Ordering::Relaxed);
    let drained =
        tokio::time::timeout(Duration::from_secs(30), async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.abort_all();
    }
    let duration_ms = recorder.now_ms();
    let healed_ms = faults.last().map_or(0, |f| f.end_ms);

    eprintln!("chaos: workload stopped; waiting for every transfer to settle");
    let mut observation = settle(&mesh, &recorder).await;
    match &mut observation {
        Err(e) => eprintln!("chaos: could not observe the mesh: {e:#}"),
        // Every payment in a closed window, and each region pair's
        // figures cross-checked for every window.
        Ok(observed) => match settlement::gather(&operators).await {
            Ok(gathered) => {
                let windows: usize = gathered.windows.values().map(Vec::len).sum();
                eprintln!("chaos: {windows} settlement windows gathered, {} pair cross-checks", gathered.pairs.len());
                // The first and the last window's reconciliation files of
                // every partner, beside its region's files for the
                // data-locality scan.
                let ends: BTreeMap<String, Vec<u64>> = gathered
                    .windows
                    .iter()
                    .map(|(region, w)| (region.clone(), [1, w.len() as u64].into_iter().filter(|n| *n >= 1).collect()))
                    .collect();
                match download_files(&mesh, &ends).await {
                    Ok(files) => eprintln!("chaos: {files} reconciliation files written for the data-locality scan"),
                    Err(e) => eprintln!("chaos: could not download the reconciliation files: {e:#}"),
                }
                observed.settlement = Some(gathered);
            }
            Err(e) => eprintln!("chaos: could not gather the settlement windows: {e:#}"),
        },
    }
    let webhooks = match &watched {
        Some(watched) => match webhooks::observe(watched, &operators, WEBHOOKS_BOUND).await {
            Ok(observed) => {
                let delivered: usize = observed.iter().map(|o| o.delivered.len()).sum();
                let refused: usize = observed.iter().map(|o| o.refused).sum();
                eprintln!(
                    "chaos: {} webhooks observed: {delivered} events delivered (repeats included), {refused} \
                     deliveries refused during the receivers' outage",
                    observed.len()
                );
                Some(observed)
            }
            Err(e) => {
                eprintln!("chaos: could not observe the webhooks: {e:#}");
                Some(Vec::new())
            }
        },
        None => None,
    };
    mesh.stop()?;
    let locality = scan_files(&mesh).await?;
    let history = History {
        seed: config.seed,
        backend: config.backend.name().into(),
        duration_ms,
        ops: recorder.take(),
        faults,
        observation: observation.ok().map(|mut o| {
            o.healed_ms = healed_ms;
            o
        }),
        locality: Some(locality),
        webhooks,
    };
    let history_file = config.dir.join("history.json");
    std::fs::write(&history_file, serde_json::to_vec(&history)?)
        .with_context(|| format!("writing {}", history_file.display()))?;
    let verdict = check::check_all(&history);
    let report = report::write(&config.dir.join("report"), &history, &verdict)?;
    let radii = crate::blast::blast_radius(&history);
    eprintln!(
        "chaos: blast radius (acknowledged transfers of the corridors each fault touched and of the others, the \
         {} s before it -> during it):\n{}",
        crate::blast::BASELINE_MS / 1000,
        crate::blast::table(&radii)
    );
    eprintln!(
        "chaos: blast-radius targets (faults that met each, of those it applies to):\n{}",
        crate::blast::targets_table(&crate::blast::targets(&radii))
    );
    eprint!("{}", verdict.failures(FAILURES_SHOWN));
    Ok(RunResult { violations: verdict.violations(), report })
}

/// The operator: every [`CLOSE_EVERY`], close every region's settlement
/// window, whatever the faults; a close that fails (no leader) is tried
/// again at the next turn.
async fn close_windows(operators: Arc<Vec<(String, paymesh_client::Region)>>, stop: Arc<AtomicBool>) {
    loop {
        let turn = Instant::now() + CLOSE_EVERY;
        while Instant::now() < turn {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match tokio::time::timeout(CLOSE_TIMEOUT * 3, settlement::close_all(&operators)).await {
            Ok(closed) => {
                for (region, result) in closed {
                    match result {
                        Ok(number) => eprintln!("chaos: {region}'s settlement window {number} closed"),
                        Err(e) => eprintln!("chaos: {region}'s settlement window not closed: {e:#}"),
                    }
                }
            }
            Err(_) => eprintln!("chaos: closing the settlement windows took over {:?}", CLOSE_TIMEOUT * 3),
        }
    }
}

/// Every partner's reconciliation files of `windows`, under its region's
/// directory.
async fn download_files(mesh: &Mesh, windows: &BTreeMap<String, Vec<u64>>) -> anyhow::Result<usize> {
    let regions = REGIONS.iter().map(|r| Ok((*r, mesh.region(r)?))).collect::<anyhow::Result<Vec<_>>>()?;
    let partners: Vec<(&str, &str)> =
        WALLETS.iter().map(|w| (w.0, w.1)).chain(MERCHANTS.iter().map(|m| (m.0, m.1))).collect();
    let mut ends = windows.clone();
    for numbers in ends.values_mut() {
        numbers.dedup();
    }
    settlement::download_files(&regions, &partners, &ends).await
}

/// Scan every file the stopped mesh's nodes wrote for other regions' payer
/// markers (`paymesh_harness::locality`).
async fn scan_files(mesh: &Mesh) -> anyhow::Result<LocalityScan> {
    let (roots, unreachable) = mesh.scan_roots().context("listing the nodes' files")?;
    let markers = locality::markers(&REGIONS);
    let mut scan = tokio::task::spawn_blocking(move || locality::scan(&roots, &markers))
        .await
        .context("scanning the nodes' files")?;
    scan.not_scanned.extend(unreachable);
    eprintln!(
        "chaos: data locality: {} files, {} bytes scanned in {} ms; {} other regions' payer markers found",
        scan.files(),
        scan.bytes(),
        scan.elapsed_ms,
        scan.hits()
    );
    Ok(scan)
}

/// Inject `fault`; for a killed leader, which node it was.
async fn inject(mesh: &mut Mesh, fault: &Fault) -> anyhow::Result<Option<u64>> {
    match fault {
        Fault::Kill { region, node } => mesh.kill(region, *node).map(|()| None),
        Fault::KillLeader { region } => match mesh.leader(region, Duration::from_secs(10)).await {
            Some(leader) => mesh.kill(region, leader).map(|()| Some(leader)),
            None => Ok(None),
        },
        Fault::Pause { region, node } => mesh.pause(region, *node, true).map(|()| None),
        Fault::Isolate { region, node } => mesh.isolate(region, *node, true).map(|()| None),
        Fault::CutRegion { region } => mesh.cut_region(region, true).map(|()| None),
        Fault::Wan { a, b, settings } => mesh.set_wan(a, b, *settings).map(|()| None),
        Fault::RestartRegion { region } => {
            for node in mesh.running(region)? {
                mesh.kill(region, node)?;
            }
            Ok(None)
        }
    }
}

/// Wait until a node of `region` other than `killed` says it leads; its
/// id, or `None` if the region cannot be asked. Polls every 20 ms (the
/// caller bounds the wait).
async fn elected(mesh: &Mesh, region: &str, killed: u64) -> Option<u64> {
    let local = mesh.region(region).ok()?;
    let client = local.client().ok()?;
    loop {
        for node in local.nodes.values().filter(|node| node.id != killed) {
            let asked = tokio::time::timeout(Duration::from_millis(200), client.status(&node.api_addr, false)).await;
            if let Ok(Ok(status)) = asked {
                if status.role == paymesh_proto::admin::v1::NodeRole::Leader as i32 {
                    return Some(node.id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Undo `fault`.
fn heal(mesh: &mut Mesh, fault: &Fault, injected: &Option<u64>, base: WanSettings) -> anyhow::Result<()> {
    match fault {
        Fault::Kill { region, node } => mesh.restart(region, *node),
        Fault::KillLeader { region } => match injected {
            Some(node) => mesh.restart(region, *node),
            None => Ok(()),
        },
        Fault::Pause { region, node } => mesh.pause(region, *node, false),
        Fault::Isolate { region, node } => mesh.isolate(region, *node, false),
        Fault::CutRegion { region } => mesh.cut_region(region, false),
        Fault::Wan { a, b, .. } => mesh.set_wan(a, b, base),
        Fault::RestartRegion { region } => {
            for node in 1..=crate::process::MEMBERS {
                mesh.restart(region, node)?;
            }
            Ok(())
        }
    }
}

/// Wait until every region has a leader and every node answers; how long
/// that took, or `None` past `bound`.
async fn wait_live(mesh: &Mesh, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < bound {
        let mut live = true;
        for region in REGIONS {
            let Ok(local) = mesh.region(region) else { return None };
            let Ok(client) = local.client() else { return None };
            let mut leaders = 0;
            for node in local.nodes.values() {
                let status = tokio::time::timeout(Duration::from_secs(1), client.status(&node.api_addr, false)).await;
                match status {
                    Ok(Ok(status)) => {
                        leaders += usize::from(status.role == paymesh_proto::admin::v1::NodeRole::Leader as i32);
                    }
                    _ => live = false,
                }
            }
            live &= leaders == 1;
        }
        if live {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Observe the mesh until every transfer is final in every region, or
/// [`RESOLVE_BOUND`] passes; the last observation.
async fn settle(mesh: &Mesh, recorder: &Recorder) -> anyhow::Result<Observation> {
    let regions = REGIONS.iter().map(|r| Ok((*r, mesh.region(r)?))).collect::<anyhow::Result<Vec<_>>>()?;
    let partners = observe::Partners { wallets: &WALLETS, merchants: &MERCHANTS };
    observe::settle(&regions, partners, RESOLVE_BOUND, || recorder.now_ms()).await
}
