//! Serialise a map as a sequence of `(key, value)` pairs.
//!
//! Many of the state's maps have structured keys (an account id is an owner and
//! a currency). Formats such as JSON only allow string keys, so these maps are
//! written as ordered pair lists instead; the order is the map's, so the encoding
//! is deterministic. Duplicate keys on the way in are refused. Works for the
//! standard `BTreeMap` and for `imbl::OrdMap`.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ordered map that can be rebuilt from pairs and counted.
pub trait PairMap<K, V>: FromIterator<(K, V)> {
    /// The number of keys.
    fn key_count(&self) -> usize;
}

impl<K: Ord, V> PairMap<K, V> for BTreeMap<K, V> {
    fn key_count(&self) -> usize {
        self.len()
    }
}

impl<K: Ord + Clone, V: Clone> PairMap<K, V> for imbl::OrdMap<K, V> {
    fn key_count(&self) -> usize {
        self.len()
    }
}

/// Write `map` as a sequence of pairs in key order.
pub fn serialize<'a, M, K, V, S>(map: &'a M, serializer: S) -> Result<S::Ok, S::Error>
where
    &'a M: IntoIterator<Item = (&'a K, &'a V)>,
    K: Serialize + 'a,
    V: Serialize + 'a,
    S: Serializer,
{
    serializer.collect_seq(map)
}

/// Read a sequence of pairs; a repeated key is an error, not a silent overwrite.
pub fn deserialize<'de, M, K, V, D>(deserializer: D) -> Result<M, D::Error>
where
    M: PairMap<K, V>,
    K: Deserialize<'de>,
    V: Deserialize<'de>,
    D: Deserializer<'de>,
{
    let pairs = Vec::<(K, V)>::deserialize(deserializer)?;
    let expected = pairs.len();
    let map: M = pairs.into_iter().collect();
    if map.key_count() != expected {
        return Err(D::Error::custom("duplicate key in map"));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        map: BTreeMap<(u8, u8), String>,
    }

    #[test]
    fn structured_keys_round_trip_through_json() {
        let holder = Holder { map: [((1, 2), "a".to_owned()), ((0, 9), "b".to_owned())].into() };
        let json = serde_json::to_string(&holder).unwrap();
        assert_eq!(json, r#"{"map":[[[0,9],"b"],[[1,2],"a"]]}"#);
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), holder);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let error = serde_json::from_str::<Holder>(r#"{"map":[[[0,9],"b"],[[0,9],"c"]]}"#).unwrap_err();
        assert!(error.to_string().contains("duplicate key"), "{error}");
    }
}
