//! The encoding of opaque payloads inside gRPC messages: a format byte
//! followed by postcard. Raft messages, proposed commands and their outcomes
//! travel this way between paymesh processes of the same version.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format byte of every payload.
pub const FORMAT: u8 = 1;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A format byte this build does not know (a peer of another version).
    #[error("payload format {0} is unknown (expected {FORMAT})")]
    UnknownFormat(u8),
    /// An empty payload.
    #[error("payload is empty")]
    Empty,
    /// The bytes do not decode.
    #[error("payload does not decode: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encode a value. Encoding our own types cannot fail.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut bytes = vec![FORMAT];
    postcard::to_io(value, &mut bytes).expect("paymesh types always encode");
    bytes
}

/// Decode a value, checking the format byte.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT, body)) => Ok(postcard::from_bytes(body)?),
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_bad_ones_are_named() {
        let value = vec![(1u64, "a".to_owned())];
        assert_eq!(decode::<Vec<(u64, String)>>(&encode(&value)).unwrap(), value);
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode::<u64>(&[9, 1]), Err(CodecError::UnknownFormat(9))));
        assert!(matches!(decode::<String>(&[FORMAT, 200]), Err(CodecError::Malformed(_))));
    }
}
