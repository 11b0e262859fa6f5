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
//! remembered) still goes to its place. Encoded exactly as the ordered map
//! was, a sequence of `(number, outcome)` pairs in number order, so a
//! state's digest and its images do not change.

use imbl::Vector;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// As [`crate::serde_seq`] writes a map: `(number, outcome)` pairs in order.
impl Serialize for Outcomes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

/// As [`crate::serde_seq`] reads a map: pairs in any order, put in number
/// order; a repeated number is an error.
impl<'de> Deserialize<'de> for Outcomes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut pairs = Vec::<(u64, Outcome)>::deserialize(deserializer)?;
        pairs.sort_by_key(|(sequence, _)| *sequence);
        if pairs.windows(2).any(|two| two[0].0 == two[1].0) {
            return Err(D::Error::custom("duplicate key in map"));
        }
        Ok(Outcomes(pairs.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::RejectCode;
    use imbl::OrdMap;
    use proptest::prelude::*;

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
            #[derive(Serialize)]
            struct AsMap(#[serde(with = "crate::serde_seq")] OrdMap<u64, Outcome>);
            let encoded = postcard::to_allocvec(&outcomes).unwrap();
            prop_assert_eq!(&encoded, &postcard::to_allocvec(&AsMap(map.clone())).unwrap());
            let decoded: Outcomes = postcard::from_bytes(&encoded).unwrap();
            prop_assert_eq!(decoded, outcomes);
        }
    }

    #[test]
    fn a_repeated_number_is_refused_and_pairs_out_of_order_are_put_in_order() {
        let repeated = postcard::to_allocvec(&vec![(3u64, Outcome::Done), (3, Outcome::Done)]).unwrap();
        assert!(postcard::from_bytes::<Outcomes>(&repeated).is_err());
        let unordered = postcard::to_allocvec(&vec![(5u64, Outcome::Done), (2, outcome(1))]).unwrap();
        let outcomes: Outcomes = postcard::from_bytes(&unordered).unwrap();
        assert_eq!(outcomes.get(2), Some(&outcome(1)));
        let mut expected = Outcomes::default();
        expected.insert(2, outcome(1));
        expected.insert(5, Outcome::Done);
        assert_eq!(outcomes, expected);
    }
}
