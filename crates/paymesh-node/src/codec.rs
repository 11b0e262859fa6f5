//! The encoding of opaque payloads inside gRPC messages: a format byte
//! followed by postcard. Raft messages, proposed commands and their outcomes
//! travel this way between paymesh processes of the same version.
//!
//! Decoding never allocates from a length read off the wire before the bytes
//! are there: postcard reads a string's or byte array's length and borrows
//! that many bytes from the input (failing if they are not there), and
//! serde sizes a sequence's first allocation by the claimed length only up
//! to 1 MiB (`size_hint::cautious`), growing it as elements actually decode.
//! A payload is itself bounded by its gRPC message's limit
//! (`RAFT_MESSAGE_BYTES_MAX`, `INTERREGION_MESSAGE_BYTES_MAX`,
//! `API_MESSAGE_BYTES_MAX`); a snapshot's chunks together by
//! `raft_service::SNAPSHOT_BYTES_MAX`. Test
//! `a_tiny_payload_claiming_a_huge_length_fails_fast`.

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

    /// A few bytes claiming a collection of 2^64 - 1 or 2^32 - 1 elements:
    /// allocating for the claim (128 GiB and more for `Vec<u64>`) would abort
    /// the test process; instead each fails fast on the missing bytes.
    #[test]
    fn a_tiny_payload_claiming_a_huge_length_fails_fast() {
        use openraft::raft::AppendEntriesRequest;
        let huge_u64 = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let huge_u32 = [0xff, 0xff, 0xff, 0xff, 0x0f];
        let started = std::time::Instant::now();
        for claim in [&huge_u64[..], &huge_u32[..]] {
            let payload: Vec<u8> = [&[FORMAT][..], claim, &[1, 2, 3]].concat();
            assert!(matches!(decode::<Vec<u64>>(&payload), Err(CodecError::Malformed(_))));
            assert!(matches!(decode::<Vec<[u64; 32]>>(&payload), Err(CodecError::Malformed(_))));
            assert!(matches!(decode::<Vec<String>>(&payload), Err(CodecError::Malformed(_))));
            assert!(matches!(decode::<String>(&payload), Err(CodecError::Malformed(_))));
            assert!(matches!(decode::<Vec<u8>>(&payload), Err(CodecError::Malformed(_))));
            assert!(matches!(decode::<std::collections::BTreeMap<u64, u64>>(&payload), Err(CodecError::Malformed(_))));
            // An AppendEntries whose vote and leader commit decode, then a
            // huge entry count.
            let mut append = vec![FORMAT];
            append.extend(encode(&openraft::Vote::<u64>::new(1, 1))[1..].iter());
            append.push(0); // prev_log_id: None
            append.extend_from_slice(claim);
            let decoded = decode::<AppendEntriesRequest<paymesh_store::raft_types::TypeConfig>>(&append);
            assert!(matches!(decoded, Err(CodecError::Malformed(_))), "{decoded:?}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());
    }
}
