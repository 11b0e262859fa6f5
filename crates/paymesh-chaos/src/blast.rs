//! The blast radius of each fault: what it cost the corridors that need
//! what it hit, and what it cost the others.
//!
//! A corridor here is the workload's: the region the payer called and the
//! payee's region (`us-west->cn-east`; `us-west->us-west` for a domestic
//! payment). A fault touches a corridor when either of its regions is one
//! the fault hit: the node's region for a node's fault (`us-west/2`), the
//! region for a region's (`cn-east`), both for a link's
//! (`us-west<->cn-east`). For each fault the corridors fall in two groups,
//! touched and untouched, and each group's acknowledged CreateTransfer
//! rate and p99 latency during the fault are set beside the same in the
//! [`BASELINE_MS`] before it. A mesh whose faults stay where they happen
//! keeps the untouched group's rate and p99 as they were. Each group's
//! longest stall during the fault (no request of it acknowledged) is what
//! to set beside an election's time.
//!
//! With the closed-loop workload (a fixed number of workers, each picking
//! a wallet and a merchant at random) the untouched group loses workers to
//! the touched one's timeouts, so its rate falls even when nothing it
//! needs is down: the table measures the workload's coupling as well as the
//! mesh's. Requests are counted when they complete.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use paymesh_harness::history::{Fault, History, Op, Outcome, Request};
use serde::Serialize;

/// How long before a fault its baseline is measured, at most.
pub const BASELINE_MS: u64 = 10_000;

/// A group of corridors during one fault and before it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Group {
    /// The corridors in the group (of those the workload used).
    pub corridors: Vec<String>,
    /// Acknowledged CreateTransfer requests per second before the fault.
    pub before_per_s: f64,
    /// The same during it.
    pub during_per_s: f64,
    /// Their p99 latency before the fault, ms.
    pub before_p99_ms: Option<u64>,
    /// The same during it.
    pub during_p99_ms: Option<u64>,
    /// The longest time during the fault in which one of the group's
    /// corridors had none of its requests acknowledged (from the fault's
    /// start to the first, between two, from the last to the heal), ms.
    pub stalled_ms: u64,
    /// CreateTransfer requests refused during the fault because their
    /// payee's region was known unreachable (`RegionUnreachable`): the
    /// region's fail-fast answer.
    pub refused: u64,
    /// Their p99 latency, ms: how fast the refusal came.
    pub refused_p99_ms: Option<u64>,
}

impl Group {
    /// The rate during the fault as a fraction of the rate before it.
    pub fn rate_ratio(&self) -> Option<f64> {
        (self.before_per_s > 0.0).then(|| self.during_per_s / self.before_per_s)
    }

    /// The p99 during the fault as a multiple of the p99 before it.
    pub fn p99_ratio(&self) -> Option<f64> {
        match (self.before_p99_ms, self.during_p99_ms) {
            (Some(before), Some(during)) if before > 0 => Some(during as f64 / before as f64),
            _ => None,
        }
    }
}

/// One fault's blast radius.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlastRadius {
    /// The nemesis.
    pub nemesis: String,
    /// What it hit.
    pub target: String,
    /// When it started and was healed, ms since the run started.
    pub start_ms: u64,
    /// When it was healed.
    pub end_ms: u64,
    /// For a killed leader, how long its region took to elect another
    /// ([`paymesh_harness::history::Fault::elected_after_ms`]), ms.
    pub elected_after_ms: Option<u64>,
    /// The corridors it touched.
    pub touched: Group,
    /// The others.
    pub untouched: Group,
}

/// How much longer than its region's election a leader kill may stall the
/// corridors it touches: the clients' failover to the new leader.
pub const STALL_BEYOND_ELECTION_MS: u64 = 1_000;

impl BlastRadius {
    /// For a leader kill with its election measured: whether the touched
    /// corridors stalled no longer than the election and
    /// [`STALL_BEYOND_ELECTION_MS`].
    pub fn stall_within_election(&self) -> Option<bool> {
        let elected = self.elected_after_ms?;
        (!self.touched.corridors.is_empty())
            .then(|| self.touched.stalled_ms <= elected.saturating_add(STALL_BEYOND_ELECTION_MS))
    }
}

/// The regions a fault's target names (`us-west/2`, `cn-east`,
/// `cn-east<->us-west +67±28 ms one way, 52‰ loss`).
fn regions_hit(target: &str) -> BTreeSet<String> {
    target
        .split("<->")
        .filter_map(|part| part.split(|c: char| c == '/' || c.is_whitespace()).next())
        .filter(|region| !region.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An acknowledged CreateTransfer's corridor and latency.
fn acknowledged(op: &Op) -> Option<((&str, &str), u64)> {
    match (&op.request, &op.outcome) {
        (Request::CreateTransfer { region, payee_region, .. }, Outcome::Ok) => {
            Some(((region.as_str(), payee_region.as_str()), op.completed_ms.saturating_sub(op.invoked_ms)))
        }
        _ => None,
    }
}

/// A payment refused as its payee's region is known unreachable (its
/// CreateTransfer, or the quote before it): its corridor and latency.
fn refused_fast(op: &Op) -> Option<((&str, &str), u64)> {
    let reason = match &op.outcome {
        Outcome::Failed { reason } | Outcome::Unknown { reason } => reason,
        Outcome::Ok => return None,
    };
    match &op.request {
        Request::CreateTransfer { region, payee_region, .. } | Request::CreateQuote { region, payee_region, .. }
            if reason.contains("RegionUnreachable") =>
        {
            Some(((region.as_str(), payee_region.as_str()), op.completed_ms.saturating_sub(op.invoked_ms)))
        }
        _ => None,
    }
}

/// The corridor's name in the tables.
fn corridor_name((from, to): (&str, &str)) -> String {
    format!("{from}->{to}")
}

/// An acknowledged request: its corridor, when it completed, its latency.
type Done = ((String, String), u64, u64);

/// The acknowledged requests of `corridors` completed in `[from, to)`.
fn acknowledged_in(history: &History, corridors: &BTreeSet<(String, String)>, from: u64, to: u64) -> Vec<Done> {
    history
        .ops
        .iter()
        .filter(|op| op.completed_ms >= from && op.completed_ms < to)
        .filter_map(|op| {
            let ((a, b), latency) = acknowledged(op)?;
            let corridor = (a.to_owned(), b.to_owned());
            corridors.contains(&corridor).then_some((corridor, op.completed_ms, latency))
        })
        .collect()
}

/// The rate per second and the p99 of `done` over `[from, to)`.
fn measure(done: &[Done], from: u64, to: u64) -> (f64, Option<u64>) {
    let seconds = to.saturating_sub(from) as f64 / 1000.0;
    let rate = if seconds > 0.0 { done.len() as f64 / seconds } else { 0.0 };
    let mut latencies: Vec<u64> = done.iter().map(|(_, _, latency)| *latency).collect();
    latencies.sort_unstable();
    (rate, crate::report::percentile(&latencies, 990))
}

/// The longest time in `[from, to)` in which one of `corridors` had
/// nothing in `done` completed.
fn longest_stall(corridors: &BTreeSet<(String, String)>, done: &[Done], from: u64, to: u64) -> u64 {
    corridors
        .iter()
        .map(|corridor| {
            let times = done.iter().filter(|(c, _, _)| c == corridor).map(|(_, at, _)| *at);
            longest_gap(times.collect(), from, to)
        })
        .max()
        .unwrap_or(0)
}

/// The longest time in `[from, to)` between `from`, the `times` and `to`.
fn longest_gap(mut times: Vec<u64>, from: u64, to: u64) -> u64 {
    times.sort_unstable();
    let mut previous = from;
    let mut longest = 0;
    for at in times.into_iter().chain([to]) {
        longest = longest.max(at.saturating_sub(previous));
        previous = at;
    }
    longest
}

fn group(history: &History, corridors: BTreeSet<(String, String)>, fault: &Fault, baseline_from: u64) -> Group {
    let before = acknowledged_in(history, &corridors, baseline_from, fault.start_ms);
    let during = acknowledged_in(history, &corridors, fault.start_ms, fault.end_ms);
    let (before_per_s, before_p99_ms) = measure(&before, baseline_from, fault.start_ms);
    let (during_per_s, during_p99_ms) = measure(&during, fault.start_ms, fault.end_ms);
    let mut refusals: Vec<u64> = history
        .ops
        .iter()
        .filter(|op| op.completed_ms >= fault.start_ms && op.completed_ms < fault.end_ms)
        .filter_map(refused_fast)
        .filter(|((from, to), _)| corridors.contains(&((*from).to_owned(), (*to).to_owned())))
        .map(|(_, latency)| latency)
        .collect();
    refusals.sort_unstable();
    Group {
        corridors: corridors.iter().map(|(a, b)| corridor_name((a, b))).collect(),
        before_per_s,
        during_per_s,
        before_p99_ms,
        during_p99_ms,
        stalled_ms: longest_stall(&corridors, &during, fault.start_ms, fault.end_ms),
        refused: refusals.len() as u64,
        refused_p99_ms: crate::report::percentile(&refusals, 990),
    }
}

/// Every fault's blast radius, in start order. A fault that starts before
/// any baseline (in the run's first instant) is measured against what
/// there is.
pub fn blast_radius(history: &History) -> Vec<BlastRadius> {
    let corridors: BTreeSet<(String, String)> = history
        .ops
        .iter()
        .filter_map(|op| match &op.request {
            Request::CreateTransfer { region, payee_region, .. }
            | Request::CreateQuote { region, payee_region, .. } => Some((region.clone(), payee_region.clone())),
            _ => None,
        })
        .collect();
    history
        .faults
        .iter()
        .map(|fault| {
            let hit = regions_hit(&fault.target);
            let (touched, untouched): (BTreeSet<_>, BTreeSet<_>) =
                corridors.iter().cloned().partition(|(from, to)| hit.contains(from) || hit.contains(to));
            let baseline_from = fault.start_ms.saturating_sub(BASELINE_MS);
            BlastRadius {
                nemesis: fault.nemesis.clone(),
                target: fault.target.clone(),
                start_ms: fault.start_ms,
                end_ms: fault.end_ms,
                elected_after_ms: fault.elected_after_ms,
                touched: group(history, touched, fault, baseline_from),
                untouched: group(history, untouched, fault, baseline_from),
            }
        })
        .collect()
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |r| format!("{:.0} %", r * 100.0))
}

fn times(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |r| format!("{r:.1}×"))
}

fn rate_cell(group: &Group) -> String {
    if group.corridors.is_empty() {
        return "none".to_owned();
    }
    format!("{:.0}/s → {:.0}/s ({})", group.before_per_s, group.during_per_s, ratio(group.rate_ratio()))
}

fn p99_cell(group: &Group) -> String {
    let ms = |v: Option<u64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v} ms"));
    if group.corridors.is_empty() {
        return "none".to_owned();
    }
    format!("{} → {} ({})", ms(group.before_p99_ms), ms(group.during_p99_ms), times(group.p99_ratio()))
}

fn refused_cell(group: &Group) -> String {
    match group.refused_p99_ms {
        Some(p99) => format!("{} (p99 {p99} ms)", group.refused),
        None => "0".to_owned(),
    }
}

fn stall_cell(group: &Group) -> String {
    if group.corridors.is_empty() {
        return "none".to_owned();
    }
    format!("{:.1} s", group.stalled_ms as f64 / 1000.0)
}

/// The touched group's stall, and for a leader kill its election and
/// whether the stall stayed within it and a second.
fn touched_stall_cell(radius: &BlastRadius) -> String {
    let stall = stall_cell(&radius.touched);
    match (radius.elected_after_ms, radius.stall_within_election()) {
        (Some(elected), Some(within)) => {
            let verdict = if within { "within" } else { "over" };
            format!("{stall} (election {:.1} s: {verdict} it + 1 s)", elected as f64 / 1000.0)
        }
        _ => stall,
    }
}

/// The table, in Markdown: one row per fault.
pub fn table(radii: &[BlastRadius]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "| Fault | Nemesis | Target | Window (s) | Untouched rate | Untouched p99 | Untouched stall | Touched rate \
         | Touched p99 | Touched stall | Touched refused fast |\n| ---: | --- | --- | --- | --- | --- | ---: | --- | --- \
         | ---: | ---: |"
    );
    for (n, r) in radii.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1}–{:.1} | {} | {} | {} | {} | {} | {} | {} |",
            n + 1,
            r.nemesis,
            r.target,
            r.start_ms as f64 / 1000.0,
            r.end_ms as f64 / 1000.0,
            rate_cell(&r.untouched),
            p99_cell(&r.untouched),
            stall_cell(&r.untouched),
            rate_cell(&r.touched),
            p99_cell(&r.touched),
            touched_stall_cell(r),
            refused_cell(&r.touched)
        );
    }
    out
}

/// The share of their rate the corridors a fault should spare keep (the
/// untouched ones in a region's cut, its region's in a follower's fault).
pub const RATE_KEPT_MIN: f64 = 0.9;
/// How much the untouched corridors' p99 may grow in a region's cut.
pub const P99_GROWTH_MAX: f64 = 2.0;
/// How fast a payment into a region known unreachable is refused (p99).
pub const REFUSED_WITHIN_MS: u64 = 100;

/// One of the blast-radius targets and how the run's faults met it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Target {
    /// What is asked.
    pub target: String,
    /// The faults it applies to (and that had something to measure).
    pub faults: usize,
    /// Those that met it.
    pub met: usize,
    /// Those that did not: the fault's number (as in the table), its
    /// target, and what it measured.
    pub missed: Vec<String>,
}

/// Whether a fault of `radius` is a follower's kill, pause or isolation
/// (a node's fault that did not hit the region's leader).
fn hits_a_follower(radius: &BlastRadius) -> bool {
    matches!(radius.nemesis.as_str(), "kill" | "pause" | "isolate") && !radius.target.contains("(leader)")
}

/// How the faults of a run met each blast-radius target: untouched
/// corridors in a region's cut keep [`RATE_KEPT_MIN`] of their rate and a
/// p99 within [`P99_GROWTH_MAX`]; a follower's kill, pause or isolation leaves its
/// region's corridors [`RATE_KEPT_MIN`] of theirs; a leader's kill stalls
/// the corridors it touches no longer than the election and
/// [`STALL_BEYOND_ELECTION_MS`]; payments into a region known unreachable
/// are refused within [`REFUSED_WITHIN_MS`]. A fault with nothing to
/// measure (no rate before it) is not counted.
pub fn targets(radii: &[BlastRadius]) -> Vec<Target> {
    type Check = fn(&BlastRadius) -> Option<(bool, String)>;
    let checks: [(String, Check); 4] = [
        (
            format!(
                "region cut: untouched corridors keep ≥ {:.0} % of their rate, p99 ≤ {P99_GROWTH_MAX:.0}×",
                RATE_KEPT_MIN * 100.0
            ),
            |r| {
                let rate = (r.nemesis == "cut-region").then(|| r.untouched.rate_ratio()).flatten()?;
                let p99 = r.untouched.p99_ratio().unwrap_or(1.0);
                let met = rate >= RATE_KEPT_MIN && p99 <= P99_GROWTH_MAX;
                Some((met, format!("{}, p99 {}", ratio(Some(rate)), times(Some(p99)))))
            },
        ),
        (
            format!(
                "follower kill, pause or isolation: its region's corridors keep ≥ {:.0} % of their rate",
                RATE_KEPT_MIN * 100.0
            ),
            |r| {
                let rate = hits_a_follower(r).then(|| r.touched.rate_ratio()).flatten()?;
                Some((rate >= RATE_KEPT_MIN, ratio(Some(rate))))
            },
        ),
        (
            format!(
                "leader kill: touched corridors stall ≤ election + {:.0} s",
                STALL_BEYOND_ELECTION_MS as f64 / 1000.0
            ),
            |r| {
                let within = r.stall_within_election()?;
                let elected = r.elected_after_ms.unwrap_or_default() as f64 / 1000.0;
                Some((within, format!("stall {}, election {elected:.1} s", stall_cell(&r.touched))))
            },
        ),
        (format!("payments into a region known unreachable refused within {REFUSED_WITHIN_MS} ms (p99)"), |r| {
            let p99 = r.touched.refused_p99_ms?;
            Some((p99 <= REFUSED_WITHIN_MS, format!("p99 {p99} ms")))
        }),
    ];
    checks
        .into_iter()
        .map(|(target, check)| {
            let measured: Vec<(usize, &BlastRadius, bool, String)> = radii
                .iter()
                .enumerate()
                .filter_map(|(n, r)| check(r).map(|(met, what)| (n + 1, r, met, what)))
                .collect();
            Target {
                target,
                faults: measured.len(),
                met: measured.iter().filter(|m| m.2).count(),
                missed: measured
                    .iter()
                    .filter(|m| !m.2)
                    .map(|(n, r, _, what)| format!("{n} {} {}: {what}", r.nemesis, r.target))
                    .collect(),
            }
        })
        .collect()
}

/// The targets, in Markdown: one row each.
pub fn targets_table(targets: &[Target]) -> String {
    let mut out = String::from("| Target | Met | Missed |\n| --- | ---: | --- |\n");
    for t in targets {
        let missed = if t.missed.is_empty() { "–".to_owned() } else { t.missed.join("; ") };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "| {} | {}/{} | {missed} |", t.target, t.met, t.faults);
    }
    out
}

#[cfg(test)]
mod tests {
    use paymesh_harness::check::fixtures;
    use paymesh_harness::history::TransferState;

    use super::*;

    fn pay(from: &str, to: &str, invoked: u64, completed: u64, outcome: Outcome) -> Op {
        let request = Request::CreateTransfer {
            region: from.to_owned(),
            partner: "p".to_owned(),
            idempotency_key: format!("k{invoked}"),
            payee_partner: "m".to_owned(),
            payee_region: to.to_owned(),
            debit: fixtures::usd("1"),
            credit: fixtures::usd("1"),
            transfer_id: Some("t".to_owned()),
            state: Some(TransferState::Committed),
        };
        fixtures::op(0, invoked, completed, request, outcome)
    }

    #[test]
    fn a_fault_splits_the_corridors_it_touches_from_the_others() {
        let mut history = fixtures::good_history();
        history.ops.clear();
        history.faults.clear();
        // Before the cut (0-10 s): 10/s on each of three corridors, 20 ms.
        // During it (10-15 s): us-west->us-west keeps 10/s at 40 ms;
        // us-west->cn-east gets 2/s at 900 ms; cn-east->cn-east none.
        for ms in (0..10_000).step_by(100) {
            history.ops.push(pay("us-west", "us-west", ms, ms + 20, Outcome::Ok));
            history.ops.push(pay("us-west", "cn-east", ms, ms + 20, Outcome::Ok));
            history.ops.push(pay("cn-east", "cn-east", ms, ms + 20, Outcome::Ok));
        }
        for ms in (10_000..15_000).step_by(100) {
            history.ops.push(pay("us-west", "us-west", ms, ms + 40, Outcome::Ok));
        }
        for ms in (10_000..15_000).step_by(500) {
            history.ops.push(pay("us-west", "cn-east", ms, ms + 900, Outcome::Ok));
            let refused = Outcome::Failed { reason: "UNAVAILABLE".to_owned() };
            history.ops.push(pay("cn-east", "cn-east", ms, ms + 5, refused));
            let fast = Outcome::Failed { reason: "RegionUnreachable".to_owned() };
            history.ops.push(pay("us-west", "cn-east", ms + 1, ms + 1 + 30, fast));
        }
        history.faults.push(fixtures::fault("cut-region", "cn-east", 10_000, 15_000, Some(300)));
        history.faults.push(fixtures::fault("kill", "us-west/2", 2_000, 3_000, Some(300)));
        history.faults.push(fixtures::fault(
            "wan",
            "cn-east<->us-west +67±28 ms one way, 52‰ loss",
            5_000,
            6_000,
            None,
        ));

        let radii = blast_radius(&history);
        let cut = &radii[0];
        assert_eq!(cut.untouched.corridors, ["us-west->us-west"]);
        assert_eq!(cut.touched.corridors, ["cn-east->cn-east", "us-west->cn-east"]);
        assert!((cut.untouched.before_per_s - 10.0).abs() < 0.2, "{cut:?}");
        assert!((cut.untouched.during_per_s - 10.0).abs() < 0.2, "{cut:?}");
        assert_eq!((cut.untouched.before_p99_ms, cut.untouched.during_p99_ms), (Some(20), Some(40)));
        assert!((cut.untouched.rate_ratio().unwrap() - 1.0).abs() < 0.02);
        assert_eq!(cut.untouched.p99_ratio(), Some(2.0));
        assert!((cut.touched.before_per_s - 20.0).abs() < 0.2, "{cut:?}");
        // 9 of the 10 sent got through within the window (the last one
        // completes after the heal): 1.8/s.
        assert!(cut.touched.during_per_s < 2.5 && cut.touched.during_per_s > 1.5, "{cut:?}");
        assert_eq!(cut.touched.during_p99_ms, Some(900));
        // A node's fault touches its region's corridors; a link's both ends'.
        assert_eq!(radii[1].untouched.corridors, ["cn-east->cn-east"]);
        assert!(radii[2].untouched.corridors.is_empty(), "{:?}", radii[2]);
        assert_eq!(regions_hit("ap-southeast/2"), BTreeSet::from(["ap-southeast".to_owned()]));
        let text = table(&radii);
        assert_eq!(text.lines().count(), 2 + 3, "{text}");
        assert!(
            text.contains(
                "| 1 | cut-region | cn-east | 10.0–15.0 | 10/s → 10/s (100 %) | 20 ms → 40 ms (2.0×) | 0.1 s |"
            ),
            "{text}"
        );
        assert!(text.contains("| none | none | none |"), "{text}");
        // cn-east's own corridor was refused at once while it was cut off,
        // as its region was known unreachable.
        assert_eq!((cut.touched.refused, cut.touched.refused_p99_ms), (10, Some(30)));
        assert_eq!((cut.untouched.refused, cut.untouched.refused_p99_ms), (0, None));
        assert!(
            text.contains("| 0.1 s | 20/s → 2/s (9 %) | 20 ms → 900 ms (45.0×) | 5.0 s | 10 (p99 30 ms) |"),
            "{text}"
        );
        // cn-east's domestic corridor had nothing acknowledged through the
        // whole cut; us-west->cn-east its first 900 ms into it.
        assert_eq!(cut.touched.stalled_ms, 5_000);
        assert_eq!(cut.untouched.stalled_ms, 100);
    }

    /// A leader kill's touched stall is set beside its region's election:
    /// within the election and a second, or over it.
    #[test]
    fn a_leader_kills_stall_is_set_beside_its_election() {
        let mut history = fixtures::good_history();
        history.ops.clear();
        history.faults.clear();
        // us-west->us-west: every 100 ms, except nothing acknowledged from
        // 10.0 s to 11.8 s (its leader killed at 10 s).
        for ms in (0..15_000).step_by(100).filter(|ms| !(10_000..11_800).contains(ms)) {
            history.ops.push(pay("us-west", "us-west", ms, ms + 20, Outcome::Ok));
        }
        for elected in [600, 900] {
            let mut fault = fixtures::fault("kill-leader", "us-west/1", 10_000, 15_000, Some(300));
            fault.elected_after_ms = Some(elected);
            history.faults.push(fault);
        }
        history.faults.push(fixtures::fault("kill", "us-west/2", 10_000, 15_000, Some(300)));
        let radii = blast_radius(&history);
        assert_eq!(radii[0].touched.stalled_ms, 1_820);
        assert_eq!(radii[0].stall_within_election(), Some(false), "1.8 s stall, 0.6 s election");
        assert_eq!(radii[1].stall_within_election(), Some(true), "1.8 s stall, 0.9 s election");
        assert_eq!(radii[2].stall_within_election(), None, "not a leader kill");
        let text = table(&radii);
        assert!(text.contains("| 1.8 s (election 0.6 s: over it + 1 s) |"), "{text}");
        assert!(text.contains("| 1.8 s (election 0.9 s: within it + 1 s) |"), "{text}");
        let verdicts = targets(&radii);
        let leader = verdicts.iter().find(|t| t.target.starts_with("leader kill")).unwrap();
        assert_eq!((leader.met, leader.faults), (1, 2));
        assert_eq!(leader.missed, ["1 kill-leader us-west/1: stall 1.8 s, election 0.6 s"]);
        // The follower's kill: us-west's corridor lost 18 of its 50 in the window.
        let follower = verdicts.iter().find(|t| t.target.starts_with("follower")).unwrap();
        assert_eq!((follower.met, follower.faults), (0, 1), "{follower:?}");
        assert_eq!(follower.missed, ["3 kill us-west/2: 64 %"]);
        let cut = verdicts.iter().find(|t| t.target.starts_with("region cut")).unwrap();
        assert_eq!(cut.faults, 0, "no cut in this run");
        let text = targets_table(&verdicts);
        assert!(text.contains("| 1/2 | 1 kill-leader us-west/1: stall 1.8 s, election 0.6 s |"), "{text}");
        assert!(text.contains("| 0/0 | – |"), "{text}");
    }

    /// A region's cut meets its target when the others keep their rate and
    /// p99; a refusal within 100 ms meets its own; a leader's pause is not
    /// a follower's.
    #[test]
    fn the_targets_count_the_faults_they_apply_to() {
        let mut history = fixtures::good_history();
        history.ops.clear();
        history.faults.clear();
        for ms in (0..20_000).step_by(100) {
            history.ops.push(pay("us-west", "us-west", ms, ms + 20, Outcome::Ok));
            if !(10_000..15_000).contains(&ms) {
                history.ops.push(pay("us-west", "cn-east", ms, ms + 20, Outcome::Ok));
            } else {
                let fast = Outcome::Failed { reason: "RegionUnreachable".to_owned() };
                history.ops.push(pay("us-west", "cn-east", ms, ms + 150, fast));
            }
        }
        history.faults.push(fixtures::fault("cut-region", "cn-east", 10_000, 15_000, Some(300)));
        history.faults.push(fixtures::fault("pause", "us-west/1 (leader)", 16_000, 17_000, Some(300)));
        let verdicts = targets(&blast_radius(&history));
        let count = |prefix: &str| {
            let t = verdicts.iter().find(|t| t.target.starts_with(prefix)).unwrap();
            (t.met, t.faults)
        };
        assert_eq!(count("region cut"), (1, 1));
        assert_eq!(count("follower"), (0, 0), "the leader's pause is not a follower's");
        assert_eq!(count("payments into"), (0, 1), "refused in 150 ms");
    }
}
