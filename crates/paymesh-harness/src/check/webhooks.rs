//! Every event reaches its partner's webhook: after dropping repeats
//! (deliveries are at least once), each registered partner's receiver got
//! every event after its registration through the partner's newest, once,
//! in cursor order, each delivery signed with the webhook's secret, and the
//! webhook is still delivering at the end.
//!
//! A violation is a missing, out-of-order or unexpected cursor, a delivery
//! whose signature did not verify, a webhook dead-lettered, or, for a run of
//! real processes, no webhook observed at all. The simulation and the
//! container backend register none (their receivers would not be
//! reachable), and nothing is checked.

use super::{Checker, Violation};
use crate::history::History;

/// Every event reaches its partner's webhook once, in order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Webhooks;

impl Checker for Webhooks {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn describe(&self) -> &'static str {
        "every partner's webhook receiver got each of its events once after dedupe, in cursor order, signed"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let v = |detail: String| Violation::new(self.name(), detail);
        let Some(observed) = &history.webhooks else {
            if history.backend == "process" {
                return vec![v("the process run observed no webhook".to_owned())];
            }
            return Vec::new();
        };
        if observed.is_empty() && history.backend == "process" {
            return vec![v("the process run registered no webhook".to_owned())];
        }
        let mut found = Vec::new();
        for hook in observed {
            let who = format!("{}/{}", hook.region, hook.partner);
            let mut seen = std::collections::BTreeSet::new();
            let first_seen: Vec<u64> = hook.delivered.iter().copied().filter(|c| seen.insert(*c)).collect();
            let expected: Vec<u64> = (hook.registered_after + 1..=hook.newest).collect();
            if first_seen != expected {
                let missing: Vec<u64> = expected.iter().copied().filter(|c| !seen.contains(c)).take(10).collect();
                let unexpected: Vec<u64> =
                    first_seen.iter().copied().filter(|c| !expected.contains(c)).take(10).collect();
                found.push(v(format!(
                    "{who}: received {} distinct events, expected cursors {}..={}; missing (first 10) {missing:?}, \
                     unexpected {unexpected:?}{}",
                    first_seen.len(),
                    hook.registered_after + 1,
                    hook.newest,
                    if missing.is_empty() && unexpected.is_empty() { ", out of cursor order" } else { "" }
                )));
            }
            if hook.bad_signatures > 0 {
                found.push(v(format!("{who}: {} deliveries did not verify with the secret", hook.bad_signatures)));
            }
            if hook.state != "ACTIVE" {
                found.push(v(format!("{who}: the webhook ended {}", hook.state)));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::WebhookObservation;

    fn run(delivered: Vec<u64>) -> History {
        History {
            backend: "process".into(),
            webhooks: Some(vec![WebhookObservation {
                region: "us-west".into(),
                partner: "m".into(),
                registered_after: 2,
                newest: 5,
                state: "ACTIVE".into(),
                delivered,
                ..WebhookObservation::default()
            }]),
            ..History::default()
        }
    }

    #[test]
    fn repeats_are_forgiven_but_gaps_disorder_and_strays_are_not() {
        assert!(Webhooks.check(&run(vec![3, 4, 4, 5, 3])).is_empty());
        assert_eq!(Webhooks.check(&run(vec![3, 5])).len(), 1);
        assert_eq!(Webhooks.check(&run(vec![3, 5, 4])).len(), 1);
        assert_eq!(Webhooks.check(&run(vec![2, 3, 4, 5])).len(), 1);
        let mut unsigned = run(vec![3, 4, 5]);
        unsigned.webhooks.as_mut().unwrap()[0].bad_signatures = 1;
        assert_eq!(Webhooks.check(&unsigned).len(), 1);
        let none = History { backend: "process".into(), ..History::default() };
        assert_eq!(Webhooks.check(&none).len(), 1);
        let sim = History { backend: "sim".into(), ..History::default() };
        assert!(Webhooks.check(&sim).is_empty());
    }
}
