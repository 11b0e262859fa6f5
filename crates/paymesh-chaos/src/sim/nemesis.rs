//! The simulation's fault schedule, drawn from the seed: node faults
//! (kill a node or the leader, isolate a node from its region, pause one,
//! a replica lagging, a whole region restarted), partitions between two regions or
//! around one, shorter and longer than the 10 s cross-border deadline, WAN
//! degradation (loss, duplication, delay and jitter that reorders), and the
//! partners' links to a region cut (lost requests and answers).
//! Faults may overlap; every one heals before the workload ends.

use super::net::Conditions;
use super::rng::Rng;
use super::Ms;
use crate::world::REGIONS;

/// Quiet time before the first fault.
const WARM_UP_MS: Ms = 2_000;
/// Every fault heals this long before the workload stops, at least.
const QUIET_END_MS: Ms = 1_000;
/// Gap between the starts of two faults, at least and at most (overlap is allowed).
const GAP_MS: (Ms, Ms) = (500, 5_000);

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// Kill a replica; restart it (checkpoint and log) at the heal.
    Kill { region: usize, node: usize },
    /// Kill whichever replica leads.
    KillLeader { region: usize },
    /// Cut a replica off from the rest of its region (partners still reach it).
    Isolate { region: usize, node: usize },
    /// Pause a replica's process (SIGSTOP): it answers nothing until resumed.
    Pause { region: usize, node: usize },
    /// A follower stops applying (it still counts for the quorum), then catches up.
    Lag { region: usize },
    /// Kill every replica of a region; restart them all at the heal.
    RestartRegion { region: usize },
    /// Cut the link between two regions.
    Partition { a: usize, b: usize },
    /// Cut a region off from both others.
    CutRegion { region: usize },
    /// Degrade the link between two regions.
    Wan { a: usize, b: usize, conditions: Conditions },
    /// Trouble on the partners' links to a region: each request and each
    /// answer is lost with this probability (the SDK times out and tries
    /// again; past its deadline the outcome is unknown, and the workload
    /// sends the request again with the same key).
    PartnerLink { region: usize, loss_permille: u32 },
}

impl FaultKind {
    /// The nemesis's name in the history (the real suite's names where the
    /// fault is the same).
    pub(crate) fn nemesis(&self) -> &'static str {
        match self {
            FaultKind::Kill { .. } => "kill",
            FaultKind::KillLeader { .. } => "kill-leader",
            FaultKind::Isolate { .. } => "isolate",
            FaultKind::Pause { .. } => "pause",
            FaultKind::Lag { .. } => "lag",
            FaultKind::RestartRegion { .. } => "restart-region",
            FaultKind::Partition { .. } => "partition",
            FaultKind::CutRegion { .. } => "cut-region",
            FaultKind::Wan { .. } => "wan",
            FaultKind::PartnerLink { .. } => "partner-link",
        }
    }

    /// What it hit, as the real suite names targets (`us-west/2`,
    /// `cn-east`, `us-west<->cn-east`); `node` is the replica it hit, if any.
    pub(crate) fn target(&self, node: Option<usize>) -> String {
        let region = |r: &usize| REGIONS[*r];
        let with_node = |r: &usize| match node {
            Some(n) => format!("{}/{}", region(r), n + 1),
            None => region(r).to_owned(),
        };
        match self {
            FaultKind::Kill { region: r, .. }
            | FaultKind::KillLeader { region: r }
            | FaultKind::Isolate { region: r, .. }
            | FaultKind::Pause { region: r, .. }
            | FaultKind::Lag { region: r } => with_node(r),
            FaultKind::RestartRegion { region: r } | FaultKind::CutRegion { region: r } => region(r).to_owned(),
            FaultKind::PartnerLink { region: r, loss_permille } => {
                format!("{} partners, {loss_permille}‰ of requests and answers lost", region(r))
            }
            FaultKind::Partition { a, b } => format!("{}<->{}", region(a), region(b)),
            FaultKind::Wan { a, b, conditions } => format!(
                "{}<->{} +{}±{} ms one way, {}‰ loss, {}‰ duplicated, {}‰ late",
                region(a),
                region(b),
                conditions.delay_ms,
                conditions.jitter_ms,
                conditions.loss_permille,
                conditions.dup_permille,
                conditions.late_permille
            ),
        }
    }
}

/// A fault of the schedule.
#[derive(Clone, Debug)]
pub(crate) struct PlannedFault {
    /// What it does.
    pub(crate) kind: FaultKind,
    /// When it starts.
    pub(crate) start: Ms,
    /// How long it holds.
    pub(crate) hold: Ms,
    /// The replica it hit, once injected.
    pub(crate) node: Option<usize>,
    /// Its record in the history, once injected.
    pub(crate) record: Option<usize>,
}

/// Two different regions, in order.
fn two_regions(rng: &mut Rng) -> (usize, usize) {
    let a = rng.index(REGIONS.len());
    let b = (a + 1 + rng.index(REGIONS.len() - 1)) % REGIONS.len();
    (a.min(b), a.max(b))
}

/// A partition's hold: half of them shorter than the 10 s deadline, half longer.
fn partition_hold(rng: &mut Rng) -> Ms {
    if rng.chance(500) {
        rng.range(1_000, 8_000)
    } else {
        rng.range(11_000, 18_000)
    }
}

/// The seed's schedule for a workload of `duration` ms.
pub(crate) fn plan(rng: &mut Rng, duration: Ms) -> Vec<PlannedFault> {
    let mut faults = Vec::new();
    let mut start = WARM_UP_MS;
    let end = duration.saturating_sub(QUIET_END_MS);
    // Bounded: every step moves `start` forward by at least GAP_MS.0.
    while start < end {
        let region = rng.index(REGIONS.len());
        let node = rng.index(3);
        let (kind, hold) = match rng.below(15) {
            0 => (FaultKind::Kill { region, node }, rng.range(500, 6_000)),
            1 | 2 => (FaultKind::KillLeader { region }, rng.range(500, 6_000)),
            3 => (FaultKind::Isolate { region, node }, rng.range(500, 6_000)),
            14 => (FaultKind::Pause { region, node }, rng.range(500, 6_000)),
            4 => (FaultKind::Lag { region }, rng.range(1_000, 8_000)),
            5 => (FaultKind::RestartRegion { region }, rng.range(500, 6_000)),
            6 | 7 => {
                let (a, b) = two_regions(rng);
                (FaultKind::Partition { a, b }, partition_hold(rng))
            }
            8 | 9 => (FaultKind::CutRegion { region }, partition_hold(rng)),
            10 | 11 => {
                let loss_permille = u32::try_from(rng.range(500, 950)).unwrap_or(500);
                (FaultKind::PartnerLink { region, loss_permille }, rng.range(3_000, 10_000))
            }
            _ => {
                let (a, b) = two_regions(rng);
                (FaultKind::Wan { a, b, conditions: Conditions::degraded(rng) }, rng.range(2_000, 10_000))
            }
        };
        if start + hold <= end {
            faults.push(PlannedFault { kind, start, hold, node: None, record: None });
        }
        start += rng.range(GAP_MS.0, GAP_MS.1);
    }
    faults
}
