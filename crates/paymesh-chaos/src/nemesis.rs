//! The nemeses and the fault schedule a seed draws.
//!
//! Faults come one at a time: inject, hold, heal, wait for the mesh to be
//! live again, rest, next. Each round of the schedule fires every nemesis
//! once, in an order and on targets the seed picks, so a run of `n` rounds
//! fires each at least `n` times.

use std::time::Duration;

use paymesh_harness::wan::WanSettings;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::world::REGIONS;

/// One fault, with its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a node, restart it at the heal.
    Kill {
        /// The region.
        region: &'static str,
        /// The node.
        node: u64,
    },
    /// SIGKILL whichever node leads the region, restart it at the heal.
    KillLeader {
        /// The region.
        region: &'static str,
    },
    /// SIGSTOP a node (`docker pause`), SIGCONT at the heal.
    Pause {
        /// The region.
        region: &'static str,
        /// The node.
        node: u64,
    },
    /// Cut a node's Raft links to the rest of its region, both ways.
    Isolate {
        /// The region.
        region: &'static str,
        /// The node.
        node: u64,
    },
    /// Cut a region's links to both other regions.
    CutRegion {
        /// The region cut off.
        region: &'static str,
    },
    /// Delay, jitter and loss on the link between two regions.
    Wan {
        /// One end.
        a: &'static str,
        /// The other end.
        b: &'static str,
        /// The conditions while the fault lasts.
        settings: WanSettings,
    },
    /// SIGKILL every node of a region, restart them all at the heal.
    RestartRegion {
        /// The region.
        region: &'static str,
    },
}

/// The nemeses by name, in a fixed order.
pub const NEMESES: [&str; 7] = ["kill", "kill-leader", "pause", "isolate", "cut-region", "wan", "restart-region"];

impl Fault {
    /// The nemesis's name.
    pub fn nemesis(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => NEMESES[0],
            Fault::KillLeader { .. } => NEMESES[1],
            Fault::Pause { .. } => NEMESES[2],
            Fault::Isolate { .. } => NEMESES[3],
            Fault::CutRegion { .. } => NEMESES[4],
            Fault::Wan { .. } => NEMESES[5],
            Fault::RestartRegion { .. } => NEMESES[6],
        }
    }

    /// What it hits, for the report.
    pub fn target(&self) -> String {
        match self {
            Fault::Kill { region, node } | Fault::Pause { region, node } | Fault::Isolate { region, node } => {
                format!("{region}/{node}")
            }
            Fault::KillLeader { region } | Fault::CutRegion { region } | Fault::RestartRegion { region } => {
                (*region).to_owned()
            }
            Fault::Wan { a, b, settings } => format!(
                "{a}<->{b} +{}±{} ms one way, {}‰ loss",
                settings.delay_ms, settings.jitter_ms, settings.loss_permille
            ),
        }
    }

    /// Draw the fault of nemesis `name` on a random target.
    fn draw(name: &str, rng: &mut StdRng, base: WanSettings) -> Fault {
        let region = REGIONS[rng.random_range(0..REGIONS.len())];
        let node = rng.random_range(1..=3);
        match name {
            "kill" => Fault::Kill { region, node },
            "kill-leader" => Fault::KillLeader { region },
            "pause" => Fault::Pause { region, node },
            "isolate" => Fault::Isolate { region, node },
            "cut-region" => Fault::CutRegion { region },
            "wan" => {
                let others: Vec<&'static str> = REGIONS.iter().copied().filter(|r| *r != region).collect();
                let b = others[rng.random_range(0..others.len())];
                let settings = WanSettings {
                    delay_ms: base.delay_ms + rng.random_range(20..=150),
                    jitter_ms: rng.random_range(10..=80),
                    loss_permille: rng.random_range(10..=100),
                    cut: false,
                };
                Fault::Wan { a: region.min(b), b: region.max(b), settings }
            }
            _ => Fault::RestartRegion { region },
        }
    }
}

/// One step of the schedule: a fault, how long it holds, and the rest after
/// its heal (and recovery).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The fault.
    pub fault: Fault,
    /// How long it holds.
    pub hold: Duration,
    /// The quiet time after recovery, before the next fault.
    pub rest: Duration,
}

/// The schedule: rounds of every nemesis in a seeded order, each held for
/// 2 to 8 s (a region cut off for up to 14 s, past the 10 s cross-border
/// deadline, so both the commit and the abort outcome are exercised).
#[derive(Debug)]
pub struct Schedule {
    rng: StdRng,
    round: Vec<&'static str>,
    base: WanSettings,
}

impl Schedule {
    /// The schedule of `seed`, on links whose normal conditions are `base`.
    pub fn new(seed: u64, base: WanSettings) -> Schedule {
        use rand::SeedableRng;
        Schedule { rng: StdRng::seed_from_u64(seed), round: Vec::new(), base }
    }

    /// The next step.
    pub fn next_step(&mut self) -> Step {
        if self.round.is_empty() {
            self.round = NEMESES.to_vec();
            self.round.shuffle(&mut self.rng);
        }
        let name = self.round.pop().unwrap_or(NEMESES[0]);
        let fault = Fault::draw(name, &mut self.rng, self.base);
        let hold_ms = match fault {
            Fault::CutRegion { .. } => self.rng.random_range(3_000..=14_000),
            Fault::RestartRegion { .. } => self.rng.random_range(500..=3_000),
            _ => self.rng.random_range(2_000..=8_000),
        };
        Step {
            fault,
            hold: Duration::from_millis(hold_ms),
            rest: Duration::from_millis(self.rng.random_range(1_000..=3_000)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_the_same_schedule_and_every_round_fires_every_nemesis() {
        let base = WanSettings { delay_ms: 25, ..WanSettings::default() };
        let draw = |seed| {
            let mut schedule = Schedule::new(seed, base);
            (0..NEMESES.len() * 3).map(|_| schedule.next_step()).collect::<Vec<_>>()
        };
        let steps = draw(7);
        assert_eq!(steps, draw(7));
        assert_ne!(steps, draw(8));
        for round in steps.chunks(NEMESES.len()) {
            let mut names: Vec<&str> = round.iter().map(|s| s.fault.nemesis()).collect();
            names.sort_unstable();
            let mut all = NEMESES.to_vec();
            all.sort_unstable();
            assert_eq!(names, all);
        }
        for step in &steps {
            assert!(step.hold >= Duration::from_millis(500) && step.hold <= Duration::from_secs(14));
            if let Fault::Wan { a, b, settings } = &step.fault {
                assert!(a < b && settings.delay_ms > base.delay_ms && !settings.cut);
            }
        }
    }
}
