//! Serialise a map as a sequence of `(key, value)` pairs.
//!
//! Many of the state's maps have structured keys (an account id is an owner and
//! a currency). Formats such as JSON only allow string keys, so these maps are
//! written as ordered pair lists instead; the order is the map's, so the encoding
//! is deterministic. Duplicate keys on the way in are refused.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Write `map` as a sequence of pairs in key order.
pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
    map: &BTreeMap<K, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.iter())
}

/// Read a sequence of pairs; a repeated key is an error, not a silent overwrite.
pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
    D: Deserializer<'de>,
{
    let pairs = Vec::<(K, V)>::deserialize(deserializer)?;
    let expected = pairs.len();
    let map: BTreeMap<K, V> = pairs.into_iter().collect();
    if map.len() != expected {
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
