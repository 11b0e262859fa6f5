//! Tests of the simulation as a whole: it replays, a correct mesh passes
//! every checker, its runs reach the protocol's paths, and it fails when the
//! glue between regions or the proposer is broken on purpose.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::*;
use paymesh_harness::history::{Outcome, Request};

/// The seeds the tests of correct runs share.
const BASELINE_SEEDS: std::ops::RangeInclusive<u64> = 1..=6;

/// How many seeds a test of a deliberate bug may try before it must have
/// been caught.
const SEEDS_TO_CATCH_A_BUG: u64 = 40;

/// The simulations of [`BASELINE_SEEDS`] with the default configuration,
/// run once for all tests.
fn baseline() -> &'static [Simulation] {
    static RUNS: OnceLock<Vec<Simulation>> = OnceLock::new();
    RUNS.get_or_init(|| BASELINE_SEEDS.map(|seed| simulate(seed, &SimConfig::default())).collect())
}

fn failing_checkers(verdict: &Verdict) -> Vec<(&'static str, usize, String)> {
    verdict
        .checkers
        .iter()
        .filter(|c| c.violations > 0)
        .map(|c| (c.name, c.violations, c.details.first().map(|v| v.detail.clone()).unwrap_or_default()))
        .collect()
}

#[test]
fn a_seed_replays_to_the_same_history() {
    let config = SimConfig::default();
    let first = run_seed(3, &config);
    let again = run_seed(3, &config);
    assert!(first == again, "seed 3 gave two different histories");
    assert!(first == baseline()[2].history, "seed 3 differs from its run in another test");
    assert_ne!(first.ops, run_seed(4, &config).ops, "another seed, another run");
    assert_eq!(first.seed, 3);
    assert_eq!(first.backend, "sim");
    assert!(!first.faults.is_empty() && first.ops.len() > 100, "a run has faults and traffic");
}

#[test]
fn a_handful_of_seeds_pass_every_checker() {
    for sim in baseline() {
        let verdict = check::check_all(&sim.history);
        assert!(verdict.passed(), "seed {}: {:#?}", sim.history.seed, failing_checkers(&verdict));
        assert!(!sim.stats.budget_exhausted, "seed {} ran out of events", sim.history.seed);
        let observation = sim.history.observation.as_ref().expect("observed");
        assert!(observation.resolved_ms.is_some(), "seed {} settled", sim.history.seed);
        for (region, held) in &observation.regions {
            assert_eq!(held.replicas.len(), 3, "{region}");
            assert!(!held.transfers.is_empty(), "{region} holds transfers");
        }
    }
}

#[test]
fn the_runs_reach_every_protocol_path() {
    let mut endings: BTreeMap<String, u64> = BTreeMap::new();
    let mut stats = Stats::default();
    let (mut resent_keys, mut unknown, mut nemeses) = (0, 0, BTreeMap::new());
    for sim in baseline() {
        for (ending, count) in &sim.stats.endings {
            *endings.entry(ending.clone()).or_default() += count;
        }
        stats.leader_losses += sim.stats.leader_losses;
        stats.restarts += sim.stats.restarts;
        stats.posthumous_commits += sim.stats.posthumous_commits;
        stats.dropped += sim.stats.dropped;
        stats.duplicated += sim.stats.duplicated;
        stats.late += sim.stats.late;
        stats.failed_calls += sim.stats.failed_calls;
        stats.breaker_opened += sim.stats.breaker_opened;
        stats.breaker_refusals += sim.stats.breaker_refusals;
        stats.admission.0 += sim.stats.admission.0;
        stats.admission.1 += sim.stats.admission.1;
        stats.probes.0 += sim.stats.probes.0;
        stats.probes.1 += sim.stats.probes.1;
        stats.refunds.0 += sim.stats.refunds.0;
        stats.refunds.1 += sim.stats.refunds.1;
        let mut sends: BTreeMap<&str, u32> = BTreeMap::new();
        for op in &sim.history.ops {
            if let Request::CreateTransfer { idempotency_key, .. } = &op.request {
                *sends.entry(idempotency_key).or_default() += 1;
                unknown += usize::from(matches!(op.outcome, Outcome::Unknown { .. }));
            }
        }
        resent_keys += sends.values().filter(|n| **n > 1).count();
        for fault in &sim.history.faults {
            *nemeses.entry(fault.nemesis.clone()).or_insert(0) += 1;
        }
    }
    for ending in [
        "origin cross-border Committed",
        "origin domestic Committed",
        "origin cross-border Aborted DeadlineExceeded",
        "payee Committed",
        "payee Tombstone",
        "refund cross-border Committed",
        "refund domestic Committed",
        "refund payer Committed",
    ] {
        assert!(endings.get(ending).is_some_and(|n| *n > 0), "no {ending:?} in {endings:#?}");
    }
    assert!(stats.leader_losses > 0 && stats.restarts > 0, "{stats:?}");
    assert!(stats.dropped > 0 && stats.duplicated > 0 && stats.late > 0, "{stats:?}");
    assert!(stats.failed_calls > 0 && stats.breaker_opened > 0 && stats.breaker_refusals > 0, "{stats:?}");
    // Retries answered by the leader's admission from the applied state.
    assert!(stats.admission.0 > 0, "{stats:?}");
    // Probes, and some that closed a breaker.
    assert!(stats.probes.0 > stats.probes.1 && stats.probes.1 > 0, "{stats:?}");
    // Refunds asked for, and some refused (more than was left, or a
    // transfer not committed yet).
    assert!(stats.refunds.0 > stats.refunds.1 && stats.refunds.1 > 0, "{stats:?}");
    assert!(resent_keys > 0, "no key was sent twice (retries, deliberate duplicates)");
    assert!(unknown > 0, "no CreateTransfer ended unknown");
    for nemesis in ["kill-leader", "isolate", "partition", "cut-region", "wan", "partner-link", "restart-region"] {
        assert!(nemeses.contains_key(nemesis), "no {nemesis} fault in {nemeses:?}");
    }
}

#[test]
fn every_fault_heals_before_the_workload_ends_and_partitions_straddle_the_deadline() {
    let config = SimConfig::default();
    let (mut short, mut long) = (0, 0);
    for seed in 1..=50 {
        let mut rng = rng::Rng::new(seed);
        for fault in nemesis::plan(&mut rng, config.duration_ms) {
            assert!(fault.start + fault.hold < config.duration_ms, "seed {seed}: {fault:?}");
            if matches!(fault.kind, nemesis::FaultKind::Partition { .. } | nemesis::FaultKind::CutRegion { .. }) {
                let deadline = paymesh_core::limits::TRANSFER_PREPARE_DEADLINE_MS;
                *(if fault.hold < deadline { &mut short } else { &mut long }) += 1;
            }
        }
    }
    assert!(short > 0 && long > 0, "{short} partitions shorter than the deadline, {long} longer");
}

#[test]
fn a_run_without_faults_passes() {
    let config = SimConfig { faults: false, ..SimConfig::default() };
    let history = run_seed(11, &config);
    assert!(history.faults.is_empty());
    let verdict = check::check_all(&history);
    assert!(verdict.passed(), "{:#?}", failing_checkers(&verdict));
}

/// Runs seeds from 1 with `bug` until the checkers fail one; that seed and
/// what they found.
fn first_caught(bug: Bug) -> (u64, Vec<(&'static str, usize, String)>) {
    let config = SimConfig { bug: Some(bug), ..SimConfig::default() };
    for seed in 1..=SEEDS_TO_CATCH_A_BUG {
        let verdict = check::check_all(&run_seed(seed, &config));
        if !verdict.passed() {
            return (seed, failing_checkers(&verdict));
        }
    }
    panic!("{bug:?} went unnoticed for {SEEDS_TO_CATCH_A_BUG} seeds");
}

#[test]
fn a_decision_taken_for_delivered_is_caught() {
    let (seed, found) = first_caught(Bug::AckFailedDecisions);
    let names: Vec<&str> = found.iter().map(|f| f.0).collect();
    assert!(names.contains(&"atomicity") || names.contains(&"resolution"), "seed {seed}: {found:#?}");
}

#[test]
fn a_new_leader_trusting_its_predecessors_memory_is_caught() {
    let (seed, found) = first_caught(Bug::NewLeaderTrustsMemory);
    let names: Vec<&str> = found.iter().map(|f| f.0).collect();
    assert!(names.contains(&"atomicity") || names.contains(&"resolution"), "seed {seed}: {found:#?}");
}

#[test]
fn command_ids_reused_by_a_new_leader_are_caught() {
    let (seed, found) = first_caught(Bug::SessionPerNode);
    assert!(!found.is_empty(), "seed {seed}");
}

#[test]
fn run_seeds_reports_in_seed_order_whatever_the_threads() {
    let config = SimConfig { bug: Some(Bug::AckFailedDecisions), ..SimConfig::default() };
    let mut one_thread = Vec::new();
    let first = run_seeds(1, 4, &config, 1, |result| one_thread.push(result.clone()));
    let mut two_threads = Vec::new();
    let again = run_seeds(1, 4, &config, 2, |result| two_threads.push(result.clone()));
    assert_eq!(one_thread.iter().map(|r| r.seed).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(one_thread, two_threads);
    let expected = one_thread.iter().find(|r| r.violations > 0).map(|r| r.seed);
    assert!(expected.is_some(), "the bug is caught in one of the first four seeds");
    assert_eq!((first, again), (expected, expected));
}

#[test]
fn replay_writes_the_history_and_the_report() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = SimConfig::default();
    let violations = replay(2, &config, dir.path()).expect("replayed");
    assert_eq!(violations, 0);
    let written: History =
        serde_json::from_slice(&std::fs::read(dir.path().join("history.json")).expect("history.json")).expect("parses");
    assert!(written == baseline()[1].history, "the written history is the seed's");
    for file in [report::JSON_FILE, report::MARKDOWN_FILE, report::TIMELINE_FILE] {
        assert!(dir.path().join("report").join(file).is_file(), "{file}");
    }
    assert!(replay(2, &SimConfig { workers: 0, ..config }, dir.path()).is_err(), "no workers");
}

#[test]
fn the_replay_command_names_every_option_that_differs() {
    let config = SimConfig::default();
    assert_eq!(replay_command(17, &config), "paymesh-chaos sim --seed 17");
    let other = SimConfig { duration_ms: 5_000, workers: 2, faults: false, ..config };
    assert_eq!(replay_command(17, &other), "paymesh-chaos sim --seed 17 --duration-ms 5000 --workers 2 --no-faults");
}
