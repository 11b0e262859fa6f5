//! The run observed the mesh after healing.
//!
//! Every other checker reads the observation; without it they have nothing to
//! compare the requests with, so its absence is one violation, reported here
//! only.

use super::{Checker, Violation};
use crate::history::History;

/// The history holds an observation of every region after healing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observed;

impl Checker for Observed {
    fn name(&self) -> &'static str {
        "observed"
    }

    fn describe(&self) -> &'static str {
        "the run observed what every region holds once its work stopped and any faults healed"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        match history.observation {
            Some(_) => Vec::new(),
            None => vec![Violation::new(self.name(), "the run recorded no observation of the mesh after healing")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures;

    #[test]
    fn an_observed_history_passes() {
        assert_eq!(Observed.check(&fixtures::good_history()), Vec::new());
    }

    #[test]
    fn an_unobserved_history_is_one_violation() {
        let mut history = fixtures::good_history();
        history.observation = None;
        let found = Observed.check(&history);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].checker, "observed");
    }
}
