//! The in-process simulation: the chaos suite's checkers over a mesh of
//! three simulated regions and a fault-injecting network, driven by a seed,
//! fast enough to run hundreds of seeds in CI. A failing seed is printed
//! with the command that replays it; the same seed gives the same history.
//!
//! What runs for real: each region's replicated state is the core's
//! `State`, changed only by `State::apply_batch` on committed batches, as
//! on a node; commands are the core's, world configuration included (the
//! admin API's requests parsed by the node's conversions); messages between
//! regions travel in their wire form, built and parsed by the node's
//! `interregion` conversions; observations go through the node's `convert`
//! as the partner and admin APIs would, and replica digests are
//! `paymesh_store::state_digest`; each partner's admission on the leader,
//! the leader's group-commit proposer, the outbox shipper with its breaker
//! and the inter-region receiver are the node's own engines
//! (`paymesh_node::engine`), driven here as the node's drivers drive them,
//! and a new request to a region whose breaker is open is refused by the
//! gateway's own rule (`engine::admission::link_refuses`). The history is checked by
//! the very checkers of `paymesh-chaos run` ([`paymesh_harness::check::check_all`]).
//!
//! What is modelled: Raft, abstractly (a majority commits; a leader's
//! memory dies with it; a leader cut off or paused goes on believing it
//! leads until it is back; a restarted replica loads its checkpoint and
//! replays the log; a replica may lag; an entry appended commits 2 ms
//! later), the partner SDK's retry rules, the gateway's breaker refusal, the
//! network between regions and the partners' links (see the submodules).
//! Everything happens at simulated times on one thread, from one seeded
//! generator; nothing sleeps.
//!
//! What is not: Raft's own messages, logs and elections (a committed entry
//! is simply appended; an election picks a serving replica and takes 0.3 to
//! 1.2 s), snapshots sent between replicas, disks (a crash loses nothing
//! committed), TLS and identities, the actix actors' admission limits, a
//! deposed leader's shipper (it stops shipping when deposed) and tracing.
//!
//! ```text
//! paymesh-chaos sim --seeds 500 [--first 1]     # many seeds; failing ones printed
//! paymesh-chaos sim --seed 17                   # replay one, history and report written
//! ```

#![warn(missing_docs)]

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use anyhow::{bail, Context as _};

use crate::report;
use paymesh_harness::check::{self, Verdict};
use paymesh_harness::history::{History, Observation};

mod engine;
mod nemesis;
mod net;
mod observe;
mod region;
mod rng;
mod setup;
mod ship;
mod workload;

#[cfg(test)]
mod tests;

use engine::Sim;

/// Simulated milliseconds.
type Ms = u64;

/// A simulated moment as the node's engines take time: the time since the
/// run started.
fn engine_time(ms: Ms) -> paymesh_node::engine::Time {
    std::time::Duration::from_millis(ms)
}

/// An engine's moment or duration in simulated milliseconds, rounded up
/// (an engine's wake time is never brought forward).
fn sim_ms(time: paymesh_node::engine::Time) -> Ms {
    u64::try_from(time.as_micros().div_ceil(1_000)).unwrap_or(Ms::MAX)
}

/// What a simulated run does; the seed decides the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// How long the workload runs, in simulated milliseconds (faults
    /// included; every fault heals before it ends).
    pub duration_ms: u64,
    /// Concurrent payment workers.
    pub workers: u32,
    /// A worker's pause between two payments, at least and at most, in
    /// simulated milliseconds.
    pub think_ms: (u64, u64),
    /// Whether faults are injected (node faults, partitions, WAN faults).
    /// The network's everyday loss, duplication and jitter stay either way.
    pub faults: bool,
    /// The most events one run may process: a guard against a run that
    /// would not end (the resolution checker then fails it).
    pub events_max: u64,
    /// A deliberate bug, to show the checkers catch it.
    #[cfg(test)]
    pub(crate) bug: Option<Bug>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            duration_ms: 20_000,
            workers: 3,
            think_ms: (150, 600),
            faults: true,
            events_max: 5_000_000,
            #[cfg(test)]
            bug: None,
        }
    }
}

/// Deliberate bugs, switched on only by tests (`SimConfig::bug`), to prove
/// the simulation can fail: each is an engine's own test-only switch
/// (`paymesh_node::engine::shipper::ShipperBug`,
/// `paymesh_node::engine::proposer::ProposerBug`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bug {
    /// The shipper takes a Decide call that failed (lost, timed out,
    /// refused) for acknowledged and records `DecisionAcked`: the decision
    /// leaves the outbox undelivered.
    AckFailedDecisions,
    /// A new leader's shipper takes every message in the outbox for already
    /// in flight (as if its predecessor's memory were its own) and never
    /// sends them.
    NewLeaderTrustsMemory,
    /// A new leader's proposer names its session after the node alone and
    /// numbers commands from 1 again, so a node that leads a second time
    /// reuses command ids: the state machine answers them with the outcomes
    /// recorded for the earlier commands and does not apply them (the bug
    /// the cross-border tests once caught, see ARCHITECTURE.md).
    SessionPerNode,
}

/// What happened in a run, beyond its history: how hostile it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Events processed.
    pub(crate) events: u64,
    /// Whether the event budget ran out.
    pub(crate) budget_exhausted: bool,
    /// Commands committed through a leader's proposer.
    pub(crate) commands: u64,
    /// Leaders elected (the first three included).
    pub(crate) elections: u64,
    /// Leaderships lost to a fault.
    pub(crate) leader_losses: u64,
    /// Queued commands committed after their leader was lost.
    pub(crate) posthumous_commits: u64,
    /// Replicas restarted from their checkpoint.
    pub(crate) restarts: u64,
    /// Inter-region calls made by shippers.
    pub(crate) calls: u64,
    /// Shipper calls that failed.
    pub(crate) failed_calls: u64,
    /// Times a breaker opened.
    pub(crate) breaker_opened: u64,
    /// Partners' requests the leader's admission answered at once (from a
    /// record, or refused from the applied state), and those it joined to
    /// an identical request in flight.
    pub(crate) admission: (u64, u64),
    /// Health probes a shipper made with its breaker open, and those that
    /// found the region back (closing the breaker).
    pub(crate) probes: (u64, u64),
    /// Quotes and transfers refused because their region's breaker was open.
    pub(crate) breaker_refusals: u64,
    /// Refunds the merchants asked for, and those refused before they
    /// existed (past the transfer, not committed yet, ...).
    pub(crate) refunds: (u64, u64),
    /// Messages put on the network.
    pub(crate) messages: u64,
    /// Messages lost (dropped, or into a cut link).
    pub(crate) dropped: u64,
    /// Messages delivered twice.
    pub(crate) duplicated: u64,
    /// Deliveries a second or more late.
    pub(crate) late: u64,
    /// Decisions the payee region called a protocol violation.
    pub(crate) protocol_violations: u64,
    /// How the transfers ended, counted by side, kind, state and reason
    /// ("origin cross-border Aborted DeadlineExceeded", "payee Tombstone").
    pub(crate) endings: std::collections::BTreeMap<String, u64>,
}

/// One simulated run: its history and how it went.
#[derive(Clone, Debug)]
pub(crate) struct Simulation {
    /// The history, as the checkers read it.
    pub(crate) history: History,
    /// How hostile it was.
    pub(crate) stats: Stats,
}

/// Simulate `seed`.
pub(crate) fn simulate(seed: u64, config: &SimConfig) -> Simulation {
    let mut sim = match Sim::new(seed, config) {
        Ok(sim) => sim,
        // The world failed to configure: a run with no observation, which
        // the checkers report.
        Err(e) => {
            eprintln!("sim: seed {seed}: configuring the world failed: {e:#}");
            let history = History { seed, backend: "sim".to_owned(), ..History::default() };
            return Simulation { history, stats: Stats::default() };
        }
    };
    sim.run();
    sim.stats.endings = endings(&sim);
    let healed_ms = sim.faults.iter().map(|f| f.end_ms).max().unwrap_or(0);
    let bound = u64::try_from(crate::run::RESOLVE_BOUND.as_millis()).unwrap_or(u64::MAX);
    let regions = sim
        .regions
        .iter()
        .zip(crate::world::REGIONS)
        .map(|(region, name)| (name.to_owned(), observe::region(name, region)))
        .collect();
    let observation =
        Observation { healed_ms, resolved_ms: sim.resolved_ms, resolve_bound_ms: bound, regions, settlement: None };
    let history = History {
        seed,
        backend: "sim".to_owned(),
        duration_ms: sim.workload_done_ms.unwrap_or(sim.now),
        ops: std::mem::take(&mut sim.ops),
        faults: std::mem::take(&mut sim.faults),
        observation: Some(observation),
        locality: None,
        webhooks: None,
    };
    Simulation { history, stats: sim.stats }
}

/// How the transfers ended in every region, counted.
fn endings(sim: &Sim<'_>) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for region in &sim.regions {
        let node = region.freshest();
        for transfer in node.state.transfers().chain(node.history.transfers()) {
            let view = &transfer.view;
            let kind = if view.corridor.is_same_region() { "domestic" } else { "cross-border" };
            let reason = view.reason.map(|r| format!(" {r:?}")).unwrap_or_default();
            *out.entry(format!("origin {kind} {:?}{reason}", view.state)).or_default() += 1;
        }
        for (_, participation) in node.state.participations().chain(node.history.participations()) {
            let reason = participation.reason.map(|r| format!(" {r:?}")).unwrap_or_default();
            *out.entry(format!("payee {:?}{reason}", participation.state)).or_default() += 1;
        }
        for refund in node.state.refunds().chain(node.history.refunds()) {
            let view = &refund.view;
            let kind = if &refund.payer_region == node.state.region() { "domestic" } else { "cross-border" };
            let reason = view.reason.map(|r| format!(" {r:?}")).unwrap_or_default();
            *out.entry(format!("refund {kind} {:?}{reason}", view.state)).or_default() += 1;
        }
        for (_, credited) in node.state.refund_participations().chain(node.history.refund_participations()) {
            let reason = credited.reason.map(|r| format!(" {r:?}")).unwrap_or_default();
            *out.entry(format!("refund payer {:?}{reason}", credited.state)).or_default() += 1;
        }
    }
    out
}

/// The history of `seed`'s simulated run. Deterministic: the same seed and
/// configuration give the same history.
pub fn run_seed(seed: u64, config: &SimConfig) -> History {
    simulate(seed, config).history
}

/// What the checkers found in one seed's run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Violations of all checkers.
    pub violations: usize,
    /// What every checker found (a run that panicked: one violation of
    /// `panic`, with the panic's message).
    pub verdict: Verdict,
    /// CreateTransfer requests the workload made.
    pub transfer_requests: usize,
    /// Faults injected.
    pub faults: usize,
    /// Events the simulation processed.
    pub events: u64,
}

/// Run and check `seed`. A run that panics (the core stops on a broken
/// invariant) is a failing seed too.
pub fn check_seed(seed: u64, config: &SimConfig) -> SeedResult {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Simulation { history, stats } = simulate(seed, config);
        let verdict = check::check_all(&history);
        (history, stats, verdict)
    }));
    match run {
        Ok((history, stats, verdict)) => SeedResult {
            events: stats.events,
            seed,
            violations: verdict.violations(),
            transfer_requests: history.ops.iter().filter(|op| op.request.kind() == "create_transfer").count(),
            faults: history.faults.len(),
            verdict,
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            let checker = check::CheckerVerdict {
                name: "panic",
                description: "the simulated run ends without a panic",
                violations: 1,
                details: vec![check::Violation::new("panic", message)],
            };
            SeedResult {
                seed,
                violations: 1,
                verdict: Verdict { checkers: vec![checker] },
                transfer_requests: 0,
                faults: 0,
                events: 0,
            }
        }
    }
}

/// Run and check seeds `first` to `first + count - 1` on `threads` threads
/// (at least one; each seed is a single-threaded run), handing each result
/// to `on_result` in seed order. Returns the first failing seed, if any.
pub fn run_seeds(
    first: u64,
    count: u64,
    config: &SimConfig,
    threads: usize,
    mut on_result: impl FnMut(&SeedResult),
) -> Option<u64> {
    let threads = threads.clamp(1, usize::try_from(count).unwrap_or(usize::MAX).max(1));
    let next = AtomicU64::new(0);
    let (sender, receiver) = mpsc::channel::<SeedResult>();
    let mut first_failing = None;
    thread::scope(|scope| {
        for _ in 0..threads {
            let sender = sender.clone();
            let next = &next;
            scope.spawn(move || loop {
                let offset = next.fetch_add(1, Ordering::Relaxed);
                if offset >= count {
                    break;
                }
                if sender.send(check_seed(first.wrapping_add(offset), config)).is_err() {
                    break;
                }
            });
        }
        drop(sender);
        // Hand results over in seed order, whatever order they finish in.
        let mut waiting = std::collections::BTreeMap::new();
        let mut expected = 0u64;
        for result in receiver {
            waiting.insert(result.seed.wrapping_sub(first), result);
            while let Some(result) = waiting.remove(&expected) {
                if result.violations > 0 && first_failing.is_none() {
                    first_failing = Some(result.seed);
                }
                on_result(&result);
                expected += 1;
            }
        }
    });
    first_failing
}

/// The command that replays `seed` with `config` (its non-default options
/// included).
pub fn replay_command(seed: u64, config: &SimConfig) -> String {
    let defaults = SimConfig::default();
    let mut command = format!("paymesh-chaos sim --seed {seed}");
    if config.duration_ms != defaults.duration_ms {
        command.push_str(&format!(" --duration-ms {}", config.duration_ms));
    }
    if config.workers != defaults.workers {
        command.push_str(&format!(" --workers {}", config.workers));
    }
    if !config.faults {
        command.push_str(" --no-faults");
    }
    command
}

/// The most simulated workload time one run may ask for: an hour.
pub const DURATION_MAX_MS: u64 = 3_600_000;
/// The most workers one run may ask for.
pub const WORKERS_MAX: u32 = 256;

fn validate(config: &SimConfig) -> anyhow::Result<()> {
    if config.workers == 0 || config.workers > WORKERS_MAX {
        bail!("--workers must be 1..={WORKERS_MAX}, not {}", config.workers);
    }
    if config.duration_ms < 1_000 || config.duration_ms > DURATION_MAX_MS {
        bail!("--duration-ms must be 1000..={DURATION_MAX_MS}, not {}", config.duration_ms);
    }
    if config.think_ms.0 > config.think_ms.1 {
        bail!("a worker's think time must be a range, not {:?}", config.think_ms);
    }
    Ok(())
}

/// `paymesh-chaos sim --seed S`: simulate one seed, write its
/// `history.json` and its report (`report/`) into `dir` (emptied first),
/// print what each checker found; the violations counted.
pub fn replay(seed: u64, config: &SimConfig, dir: &Path) -> anyhow::Result<usize> {
    validate(config)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let history = run_seed(seed, config);
    let verdict = check::check_all(&history);
    let history_file = dir.join("history.json");
    std::fs::write(&history_file, serde_json::to_vec(&history)?)
        .with_context(|| format!("writing {}", history_file.display()))?;
    let paths = report::write(&dir.join("report"), &history, &verdict)?;
    for checker in verdict.checkers.iter().filter(|c| c.violations > 0) {
        println!("{}: {} violation(s); {}", checker.name, checker.violations, checker.description);
        for violation in &checker.details {
            println!("  {}", violation.detail);
        }
    }
    eprintln!("sim: seed {seed} in {} ms: {}", started.elapsed().as_millis(), report::summary_line(&history, &verdict));
    eprintln!("sim: history in {}, report in {}", history_file.display(), paths.markdown.display());
    Ok(verdict.violations())
}

/// `paymesh-chaos sim --seeds N --first S`: simulate and check `count`
/// seeds from `first` on `threads` threads, print every failing seed with
/// the command that replays it, then the rate; the violations of all seeds
/// together.
pub fn sweep(first: u64, count: u64, config: &SimConfig, threads: usize) -> anyhow::Result<usize> {
    validate(config)?;
    if count == 0 {
        bail!("--seeds must be at least 1");
    }
    let started = Instant::now();
    let (mut violations, mut failing) = (0, 0u64);
    run_seeds(first, count, config, threads, |result| {
        if result.violations > 0 {
            failing += 1;
            violations += result.violations;
            let checkers: Vec<String> = result
                .verdict
                .checkers
                .iter()
                .filter(|c| c.violations > 0)
                .map(|c| format!("{} {}", c.name, c.violations))
                .collect();
            println!(
                "seed {}: {} violation(s) ({}); replay: {}",
                result.seed,
                result.violations,
                checkers.join(", "),
                replay_command(result.seed, config)
            );
        }
    });
    let elapsed = started.elapsed();
    eprintln!(
        "sim: {count} seeds from {first} in {:.1} s, {:.1} seeds/s on {threads} thread(s); {failing} failing",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64().max(0.001)
    );
    Ok(violations)
}

/// The threads [`run_seeds`] uses by default: one per core.
pub fn default_threads() -> usize {
    thread::available_parallelism().map_or(1, NonZeroUsize::get)
}
