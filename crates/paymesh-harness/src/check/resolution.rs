//! Liveness after healing: once the last fault healed, every transfer
//! reaches a final state within the bound.

use super::{Checker, Violation};
use crate::history::History;

/// The run saw every transfer final (`resolved_ms`) no later than
/// `resolve_bound_ms` after the heal, and no region holds a transfer that is
/// not final.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resolution;

impl Checker for Resolution {
    fn name(&self) -> &'static str {
        "resolution"
    }

    fn describe(&self) -> &'static str {
        "every transfer is final within the bound once the work stopped and any faults healed"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let Some(observation) = &history.observation else { return Vec::new() };
        let mut found = Vec::new();
        let bound = observation.resolve_bound_ms;
        match observation.resolved_ms {
            None => found.push(Violation::new(
                self.name(),
                format!("some transfers were not final within {bound} ms of the heal at {} ms", observation.healed_ms),
            )),
            Some(resolved) => {
                let after = resolved.saturating_sub(observation.healed_ms);
                if after > bound {
                    found.push(Violation::new(
                        self.name(),
                        format!("every transfer was final {after} ms after the heal, over the bound of {bound} ms"),
                    ));
                }
            }
        }
        for (region, transfer) in observation.transfers().filter(|(_, t)| !t.state.is_final()) {
            found.push(Violation::new(
                self.name(),
                format!(
                    "{region} holds transfer {} ({} to {}) in state {:?} after healing",
                    transfer.transfer_id, transfer.source_region, transfer.destination_region, transfer.state
                ),
            ));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{self, CN, T_COMMITTED};
    use crate::history::TransferState;

    #[test]
    fn resolved_in_time_passes() {
        assert_eq!(Resolution.check(&fixtures::good_history()), Vec::new());
    }

    #[test]
    fn resolved_exactly_at_the_bound_passes_and_a_millisecond_later_fails() {
        let mut history = fixtures::good_history();
        let observation = fixtures::observation_mut(&mut history);
        observation.resolved_ms = Some(observation.healed_ms + observation.resolve_bound_ms);
        assert_eq!(Resolution.check(&history), Vec::new());
        let observation = fixtures::observation_mut(&mut history);
        observation.resolved_ms = Some(observation.healed_ms + observation.resolve_bound_ms + 1);
        let found = Resolution.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("10001 ms after the heal"), "{}", found[0].detail);
    }

    #[test]
    fn never_resolved_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::observation_mut(&mut history).resolved_ms = None;
        let found = Resolution.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
    }

    #[test]
    fn a_transfer_left_prepared_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, CN, T_COMMITTED).state = TransferState::Prepared;
        let found = Resolution.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("cn-east holds transfer t-x1"), "{}", found[0].detail);
    }
}
