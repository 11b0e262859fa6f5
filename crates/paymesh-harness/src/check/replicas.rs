//! Replicas agree: once the faults healed and the mesh settled, every
//! replica of a region has applied the same log and holds the same state.

use std::collections::BTreeSet;

use super::{Checker, Violation};
use crate::history::History;

/// Every region the run touched was observed with at least one replica, and
/// all replicas of a region are at the same applied index with the same
/// state digest.
#[derive(Clone, Copy, Debug, Default)]
pub struct Replicas;

impl Checker for Replicas {
    fn name(&self) -> &'static str {
        "replicas"
    }

    fn describe(&self) -> &'static str {
        "every replica of a region has the same applied index and state digest, and every region has one observed"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let Some(observation) = &history.observation else { return Vec::new() };
        let mut found = Vec::new();
        // Regions the workload called or transfers name must have been observed.
        let mut named: BTreeSet<&str> = history.ops.iter().map(|op| op.request.region()).collect();
        for (_, transfer) in observation.transfers() {
            named.insert(transfer.source_region.as_str());
            named.insert(transfer.destination_region.as_str());
        }
        for region in named.into_iter().filter(|r| !observation.regions.contains_key(*r)) {
            found.push(Violation::new(
                self.name(),
                format!("region {region} was called or named by a transfer but not observed"),
            ));
        }
        for (region, held) in &observation.regions {
            let Some(first) = held.replicas.first() else {
                found.push(Violation::new(self.name(), format!("no replica of {region} was observed")));
                continue;
            };
            let agree =
                held.replicas.iter().all(|r| r.applied_index == first.applied_index && r.digest == first.digest);
            if !agree {
                let each: Vec<String> = held
                    .replicas
                    .iter()
                    .map(|r| format!("node {} at {} digest {}", r.node_id, r.applied_index, r.digest))
                    .collect();
                found.push(Violation::new(
                    self.name(),
                    format!("the replicas of {region} disagree: {}", each.join("; ")),
                ));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{self, CN, US};

    #[test]
    fn agreeing_replicas_pass() {
        assert_eq!(Replicas.check(&fixtures::good_history()), Vec::new());
    }

    #[test]
    fn a_replica_with_another_digest_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::region_mut(&mut history, CN).replicas[2].digest = "bb03".to_owned();
        let found = Replicas.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("node 3 at 80 digest bb03"), "{}", found[0].detail);
    }

    #[test]
    fn a_replica_behind_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::region_mut(&mut history, US).replicas[0].applied_index = 119;
        let found = Replicas.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("replicas of us-west disagree"), "{}", found[0].detail);
    }

    #[test]
    fn a_region_without_replicas_or_unobserved_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::region_mut(&mut history, US).replicas.clear();
        fixtures::observation_mut(&mut history).regions.remove(CN);
        let found = Replicas.check(&history);
        let details = fixtures::details(&found);
        assert_eq!(found.len(), 2, "{details:?}");
        assert!(details.iter().any(|d| d.contains("region cn-east was called")), "{details:?}");
        assert!(details.iter().any(|d| d.contains("no replica of us-west")), "{details:?}");
    }
}
