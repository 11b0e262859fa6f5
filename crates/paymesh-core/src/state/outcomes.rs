//! A proposer session's remembered outcomes, by sequence number.
//!
//! A session numbers its commands as it puts them into entries, and the
//! log applies them in that order, so the outcomes arrive with ever higher
//! numbers and the oldest leaves as each new one comes past the bound. An
//! ordered map (`imbl::OrdMap`) did that with a search and a removal from
//! the front of its first leaf (shifting the leaf's entries) per command:
//! with the copy of the changed nodes that each batch makes of the state
//! shared with its readers, and their freeing a batch later, about 5 % of a
//! follower's CPU at the batched peak. Here the outcomes are a persistent
//! vector (`imbl::Vector`) in sequence order: a new number goes on the
//! back, the oldest comes off the front, both at a chunk's end; a number
//! out of order (never in operation: a replay is answered before it is
//! remembered) still goes to its place. Encoded by [`crate::serde_seq`] as
//! the ordered map was, a sequence of `(number, outcome)` pairs in number
//! order, so a state's digest and its images do not change.

use imbl::Vector;

use crate::outcome::Outcome;

/// Outcomes by sequence number, in number order, each number once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Outcomes(Vector<(u64, Outcome)>);

impl Outcomes {
    fn position(&self, sequence: u64) -> Result<usize, usize> {
        self.0.binary_search_by(|(held, _)| held.cmp(&sequence))
    }

    /// Whether `sequence` is above every number held (a new command's is):
    /// found without a search, which reads the vector's nodes a level at a
    /// time at each step.
    fn above_all(&self, sequence: u64) -> bool {
        self.0.back().is_none_or(|(last, _)| *last < sequence)
    }

    /// The outcome remembered under `sequence`.
    pub(super) fn get(&self, sequence: u64) -> Option<&Outcome> {
        if self.above_all(sequence) {
            return None;
        }
        self.position(sequence).ok().map(|at| &self.0[at].1)
    }

    /// Remember `outcome` under `sequence`, replacing one held there.
    pub(super) fn insert(&mut self, sequence: u64, outcome: Outcome) {
        if self.above_all(sequence) {
            self.0.push_back((sequence, outcome));
            return;
        }
        match self.position(sequence) {
            Ok(at) => {
                self.0.set(at, (sequence, outcome));
            }
            Err(at) => self.0.insert(at, (sequence, outcome)),
        }
    }

    /// How many are remembered.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Forget the oldest (lowest number), returning its number.
    pub(super) fn pop_oldest(&mut self) -> Option<u64> {
        self.0.pop_front().map(|(sequence, _)| sequence)
    }
}

/// Pairs in any order, put in number order, a repeated number's last
/// outcome kept (as an ordered map collects them; [`crate::serde_seq`]
/// refuses a repeat by the count).
impl FromIterator<(u64, Outcome)> for Outcomes {
    fn from_iter<I: IntoIterator<Item = (u64, Outcome)>>(pairs: I) -> Self {
        let mut outcomes = Outcomes::default();
        for (sequence, outcome) in pairs {
            outcomes.insert(sequence, outcome);
        }
        outcomes
    }
}

impl crate::serde_seq::PairMap<u64, Outcome> for Outcomes {
    fn key_count(&self) -> usize {
        self.len()
    }
}

/// The pairs in number order, as [`crate::serde_seq`] writes a map's.
impl<'a> IntoIterator for &'a Outcomes {
    type Item = (&'a u64, &'a Outcome);
    type IntoIter = std::iter::Map<
        imbl::vector::Iter<'a, (u64, Outcome), imbl::shared_ptr::DefaultSharedPtr>,
        fn(&'a (u64, Outcome)) -> (&'a u64, &'a Outcome),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(sequence, outcome)| (sequence, outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::RejectCode;
    use imbl::OrdMap;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    /// Outcomes (or the map they replace) as a session holds them.
    #[derive(Debug, Serialize, Deserialize)]
    struct Held<M: crate::serde_seq::PairMap<u64, Outcome>>(#[serde(with = "crate::serde_seq")] M)
    where
        for<'a> &'a M: IntoIterator<Item = (&'a u64, &'a Outcome)>;

    fn outcome(n: u64) -> Outcome {
        if n.is_multiple_of(2) {
            Outcome::Done
        } else {
            Outcome::Rejected(RejectCode::StaleCommand)
        }
    }

    proptest! {
        /// Whatever order numbers come in, the outcomes answer, count, forget
        /// and encode as the ordered map they replace.
        #[test]
        fn outcomes_behave_and_encode_as_the_ordered_map(
            numbers in proptest::collection::vec(0u64..64, 0..200),
            bound in 1usize..16,
        ) {
            let mut map: OrdMap<u64, Outcome> = OrdMap::new();
            let mut outcomes = Outcomes::default();
            for (step, number) in numbers.iter().enumerate() {
                map.insert(*number, outcome(step as u64));
                outcomes.insert(*number, outcome(step as u64));
                while map.len() > bound {
                    let oldest = map.get_min().map(|(n, _)| *n).unwrap();
                    map.remove(&oldest);
                    prop_assert!(outcomes.len() > bound);
                    prop_assert_eq!(outcomes.pop_oldest(), Some(oldest));
                }
                prop_assert_eq!(outcomes.len(), map.len());
                for probe in 0..64 {
                    prop_assert_eq!(outcomes.get(probe), map.get(&probe));
                }
            }
            let encoded = postcard::to_allocvec(&Held(outcomes.clone())).unwrap();
            prop_assert_eq!(&encoded, &postcard::to_allocvec(&Held(map)).unwrap());
            let decoded: Held<Outcomes> = postcard::from_bytes(&encoded).unwrap();
            prop_assert_eq!(decoded.0, outcomes);
        }
    }

    #[test]
    fn a_repeated_number_is_refused_and_pairs_out_of_order_are_put_in_order() {
        let repeated = postcard::to_allocvec(&vec![(3u64, Outcome::Done), (3, Outcome::Done)]).unwrap();
        assert!(postcard::from_bytes::<Held<Outcomes>>(&repeated).is_err());
        let unordered = postcard::to_allocvec(&vec![(5u64, Outcome::Done), (2, outcome(1))]).unwrap();
        let outcomes = postcard::from_bytes::<Held<Outcomes>>(&unordered).unwrap().0;
        assert_eq!(outcomes.get(2), Some(&outcome(1)));
        let mut expected = Outcomes::default();
        expected.insert(2, outcome(1));
        expected.insert(5, Outcome::Done);
        assert_eq!(outcomes, expected);
    }
}
