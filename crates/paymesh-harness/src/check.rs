//! The checkers: one per invariant, each reading a whole [`History`] and
//! returning what it found broken.
//!
//! A chaos run is only as good as its verdict: the nemesis makes faults, the
//! workload makes requests, and these checkers decide whether the mesh kept
//! its promises through them (no money lost, made up or moved twice; both
//! regions of a cross-border transfer agree; every replica agrees; everything
//! settles once the faults heal). Each checker is independent of the others
//! and reads the history only, so a failure names exactly one broken rule.
//!
//! A history without an observation is one violation, of [`Observed`]; the
//! other checkers of the observation find nothing to check in it and report
//! nothing. [`DataLocality`] reads the scan of the nodes' files instead.
//!
//! The checkers index what they need in hash maps once, so a history of a
//! million requests is checked in seconds.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use serde::Serialize;

use crate::history::{History, Observation, ObservedRefund, ObservedTransfer};

mod atomicity;
mod conservation;
mod data_locality;
mod idempotency;
mod lost;
mod observed;
mod phantom;
mod positions;
mod reads;
mod refunds;
mod replicas;
mod resolution;
mod settlement;
mod webhooks;

#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;

pub use atomicity::Atomicity;
pub use conservation::Conservation;
pub use data_locality::DataLocality;
pub use idempotency::Idempotency;
pub use lost::Lost;
pub use observed::Observed;
pub use phantom::Phantom;
pub use positions::{posted_by_transfers, Positions};
pub use reads::Reads;
pub use refunds::Refunds;
pub use replicas::Replicas;
pub use resolution::Resolution;
pub use settlement::Settlement;
pub use webhooks::Webhooks;

/// How many violations a [`Verdict`] keeps in full per checker; it counts
/// them all.
pub const DETAILS_PER_CHECKER_MAX: usize = 20;

/// One broken invariant, found by one checker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The checker's [`Checker::name`].
    pub checker: &'static str,
    /// What is wrong, naming the region, partner, key or transfer involved.
    pub detail: String,
}

impl Violation {
    /// A violation found by `checker`.
    pub fn new(checker: &'static str, detail: impl Into<String>) -> Self {
        Violation { checker, detail: detail.into() }
    }
}

/// One invariant over a history.
pub trait Checker: Send + Sync {
    /// A short name (`lost`, `phantom`, …), unique among the checkers.
    fn name(&self) -> &'static str;
    /// The invariant, in one sentence.
    fn describe(&self) -> &'static str;
    /// Every violation of the invariant in `history`; empty if it holds.
    fn check(&self, history: &History) -> Vec<Violation>;
}

/// Every checker, in the order reports list them.
pub fn all() -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(Observed),
        Box::new(Conservation),
        Box::new(Lost),
        Box::new(Phantom),
        Box::new(Idempotency),
        Box::new(Atomicity),
        Box::new(Positions),
        Box::new(Refunds),
        Box::new(Replicas),
        Box::new(Resolution),
        Box::new(Reads),
        Box::new(DataLocality),
    ]
}

/// What one checker found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckerVerdict {
    /// The checker's name.
    pub name: &'static str,
    /// The invariant it checks.
    pub description: &'static str,
    /// How many violations it found.
    pub violations: usize,
    /// The first [`DETAILS_PER_CHECKER_MAX`] of them.
    pub details: Vec<Violation>,
}

impl CheckerVerdict {
    fn new(checker: &dyn Checker, found: Vec<Violation>) -> Self {
        let violations = found.len();
        let mut details = found;
        details.truncate(DETAILS_PER_CHECKER_MAX);
        CheckerVerdict { name: checker.name(), description: checker.describe(), violations, details }
    }
}

/// What every checker found in one history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// One entry per checker, in the order of [`all`].
    pub checkers: Vec<CheckerVerdict>,
}

impl Verdict {
    /// Violations found by all checkers together.
    pub fn violations(&self) -> usize {
        self.checkers.iter().map(|c| c.violations).sum()
    }

    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations() == 0
    }

    /// What the checker named `name` found.
    pub fn checker(&self, name: &str) -> Option<&CheckerVerdict> {
        self.checkers.iter().find(|c| c.name == name)
    }

    /// The broken invariants in a few lines for a terminal or a CI log
    /// (which keeps no report files): each failing checker with its count
    /// and its first `details_each` violations. Empty when every invariant
    /// held.
    pub fn failures(&self, details_each: usize) -> String {
        let mut out = String::new();
        for failed in self.checkers.iter().filter(|c| c.violations > 0) {
            out.push_str(&format!("{}: {} violation(s) of: {}\n", failed.name, failed.violations, failed.description));
            for violation in failed.details.iter().take(details_each) {
                out.push_str(&format!("  - {}\n", violation.detail));
            }
            let shown = failed.details.len().min(details_each);
            if failed.violations > shown {
                out.push_str(&format!("  … and {} more in the report\n", failed.violations - shown));
            }
        }
        out
    }
}

/// Runs every checker of [`all`] over `history`, as many at a time as the
/// machine has cores (each builds its own indexes: running them all at once
/// would hold all those indexes in memory together).
pub fn check_all(history: &History) -> Verdict {
    check_with(&for_history(history), history)
}

/// The checkers for `history`: [`all`], and [`Settlement`] and
/// [`Webhooks`] for a run of real regions (processes or containers), which
/// closes every region's settlement windows as an operator does and gathers
/// them, and (processes) registers webhooks. The
/// simulation drives the regions' engines without an operator; the core's
/// property tests cover its windows.
pub fn for_history(history: &History) -> Vec<Box<dyn Checker>> {
    let mut checkers = all();
    if history.backend != "sim" {
        checkers.push(Box::new(Settlement));
        checkers.push(Box::new(Webhooks));
    }
    checkers
}

/// The checkers that read what the regions hold and the scan of their
/// files, not the requests that made it: a mesh whose workload was not
/// recorded request by request (`paymesh demo`, the process tests) is
/// checked with these, over a history whose only contents are an
/// observation and a scan ([`crate::observe::live_mesh`]).
pub fn of_observation() -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(Observed),
        Box::new(Conservation),
        Box::new(Atomicity),
        Box::new(Positions),
        Box::new(Refunds),
        Box::new(Replicas),
        Box::new(Resolution),
        Box::new(DataLocality),
    ]
}

/// Run `checkers` over `history`, on as many threads as the machine has
/// cores; their verdicts in the order given.
pub fn check_with(checkers: &[Box<dyn Checker>], history: &History) -> Verdict {
    let workers = thread::available_parallelism().map_or(1, NonZeroUsize::get).min(checkers.len());
    let next = AtomicUsize::new(0);
    let mut verdicts: Vec<Option<CheckerVerdict>> = checkers.iter().map(|_| None).collect();
    thread::scope(|scope| {
        let running: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(checker) = checkers.get(index) else { break };
                        done.push((index, CheckerVerdict::new(checker.as_ref(), checker.check(history))));
                    }
                    done
                })
            })
            .collect();
        for handle in running {
            for (index, verdict) in handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)) {
                verdicts[index] = Some(verdict);
            }
        }
    });
    Verdict { checkers: verdicts.into_iter().flatten().collect() }
}

/// The observed transfer records indexed by region, then transfer id.
///
/// A region holds at most one record per transfer id; a second record with
/// the same id is kept aside in `duplicates` (the phantom checker reports it).
#[derive(Debug, Default)]
pub(crate) struct Holdings<'a> {
    by_region: HashMap<&'a str, HashMap<&'a str, &'a ObservedTransfer>>,
    /// Each region's refunds by (refund id, partner viewing).
    refunds: HashMap<(&'a str, &'a str, &'a str), &'a ObservedRefund>,
    /// Records whose id its region already held, with that region.
    pub(crate) duplicates: Vec<(&'a str, &'a ObservedTransfer)>,
}

impl<'a> Holdings<'a> {
    /// Indexes every record of `observation`.
    pub(crate) fn new(observation: &'a Observation) -> Self {
        let mut holdings = Holdings::default();
        for (region, held) in &observation.regions {
            let by_id = holdings.by_region.entry(region.as_str()).or_default();
            by_id.reserve(held.transfers.len());
            for transfer in &held.transfers {
                match by_id.entry(transfer.transfer_id.as_str()) {
                    Entry::Vacant(vacant) => {
                        vacant.insert(transfer);
                    }
                    Entry::Occupied(_) => holdings.duplicates.push((region.as_str(), transfer)),
                }
            }
            for refund in &held.refunds {
                let key = (region.as_str(), refund.refund_id.as_str(), refund.partner.as_str());
                holdings.refunds.insert(key, refund);
            }
        }
        holdings
    }

    /// Refund `id` as `region` holds it in `partner`'s view.
    pub(crate) fn refund(&self, region: &str, id: &str, partner: &str) -> Option<&'a ObservedRefund> {
        self.refunds.get(&(region, id, partner)).copied()
    }

    /// The record of transfer `id` held by `region`.
    pub(crate) fn get(&self, region: &str, id: &str) -> Option<&'a ObservedTransfer> {
        self.by_region.get(region).and_then(|by_id| by_id.get(id)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures;

    #[test]
    fn names_are_unique_and_described() {
        let checkers = all();
        let mut names: Vec<_> = checkers.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), checkers.len());
        assert!(checkers.iter().all(|c| !c.describe().is_empty()));
    }

    #[test]
    fn a_good_history_passes_every_checker() {
        let verdict = check_all(&fixtures::good_history());
        assert!(verdict.passed(), "{verdict:#?}");
        let names: Vec<_> = verdict.checkers.iter().map(|c| c.name).collect();
        assert_eq!(names, all().iter().map(|c| c.name()).collect::<Vec<_>>(), "in the order of all()");
    }

    #[test]
    fn a_missing_observation_is_exactly_one_violation() {
        let mut history = fixtures::good_history();
        history.observation = None;
        let verdict = check_all(&history);
        assert_eq!(verdict.violations(), 1, "{verdict:#?}");
        assert_eq!(verdict.checker("observed").map(|c| c.violations), Some(1));
    }

    #[test]
    fn failures_name_each_broken_invariant_and_its_first_violations() {
        assert_eq!(check_all(&fixtures::good_history()).failures(5), "");
        let mut history = fixtures::good_history();
        history.observation = None;
        let text = check_all(&history).failures(5);
        assert!(text.starts_with("observed: 1 violation(s) of: "), "{text}");
        assert_eq!(text.lines().count(), 2, "the checker and its one violation: {text}");
        let many = Verdict {
            checkers: vec![CheckerVerdict {
                name: "lost",
                description: "d",
                violations: 9,
                details: (0..9).map(|i| Violation::new("lost", format!("v{i}"))).collect(),
            }],
        };
        let text = many.failures(2);
        assert_eq!(text, "lost: 9 violation(s) of: d\n  - v0\n  - v1\n  … and 7 more in the report\n");
    }

    #[test]
    fn the_verdict_counts_every_violation_but_keeps_only_the_first_details() {
        let mut history = fixtures::good_history();
        let observation = fixtures::observation_mut(&mut history);
        observation.resolved_ms = None;
        let region = observation.regions.get_mut(fixtures::US).expect("region");
        let template = region.transfers[0].clone();
        for i in 0..DETAILS_PER_CHECKER_MAX + 5 {
            let mut stuck = template.clone();
            stuck.transfer_id = format!("stuck-{i}");
            stuck.idempotency_key = format!("stuck-key-{i}");
            stuck.state = crate::history::TransferState::Received;
            region.transfers.push(stuck);
        }
        let verdict = check_all(&history);
        let resolution = verdict.checker("resolution").expect("resolution ran");
        assert_eq!(resolution.violations, DETAILS_PER_CHECKER_MAX + 5 + 1);
        assert_eq!(resolution.details.len(), DETAILS_PER_CHECKER_MAX);
        assert!(verdict.violations() > resolution.violations, "phantom finds them too");
    }

    #[test]
    fn holdings_keep_duplicates_aside() {
        let mut history = fixtures::good_history();
        let region = fixtures::observation_mut(&mut history).regions.get_mut(fixtures::US).expect("region");
        let mut copy = region.transfers[0].clone();
        copy.state = crate::history::TransferState::Received;
        region.transfers.push(copy);
        let observation = history.observation.as_ref().expect("observed");
        let holdings = Holdings::new(observation);
        assert_eq!(holdings.duplicates.len(), 1);
        assert_eq!(holdings.duplicates[0].1.state, crate::history::TransferState::Received);
        let first = &observation.regions[fixtures::US].transfers[0];
        let id = &first.transfer_id;
        assert_eq!(holdings.get(fixtures::US, id), Some(first), "the first record is the one indexed");
        assert!(holdings.get(fixtures::CN, id).is_none());
    }
}
