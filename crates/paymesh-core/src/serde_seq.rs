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

/// Read a sequence into any collection (an `imbl` set or vector) through a
/// `Vec`, whose first allocation serde caps at 1 MiB whatever length the
/// input claims. `imbl`'s own `Deserialize` allocates the claimed length up
/// front, so a few bytes of a snapshot claiming 2^60 elements aborted the
/// process (found by the `decode_image` fuzz target). The encoding is
/// unchanged.
pub fn collect_seq<'de, C, T, D>(deserializer: D) -> Result<C, D::Error>
where
    C: FromIterator<T>,
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Ok(Vec::<T>::deserialize(deserializer)?.into_iter().collect())
}

/// Read a map (as `imbl` writes one) into any collection of pairs, growing
/// as entries arrive rather than allocating the claimed length (see
/// [`collect_seq`]). A repeated key is an error.
pub fn collect_map<'de, M, K, V, D>(deserializer: D) -> Result<M, D::Error>
where
    M: PairMap<K, V>,
    K: Deserialize<'de>,
    V: Deserialize<'de>,
    D: Deserializer<'de>,
{
    struct Pairs<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for Pairs<K, V> {
        type Value = Vec<(K, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some(pair) = access.next_entry()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    let pairs = deserializer.deserialize_map(Pairs(std::marker::PhantomData))?;
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
