//! Durable storage of a paymesh region's Raft group.
//!
//! * [`segment_log`]: the Raft log as an append-only sequence of CRC-checked
//!   records in segment files, made durable with `fdatasync`.
//! * [`log_store`]: openraft's `RaftLogStorage` over it, acknowledging each
//!   append only after its `fdatasync`.
//! * [`state_machine`]: openraft's `RaftStateMachine` over `paymesh_core::State`,
//!   with snapshots taken from an O(1) copy of the state and kept durably as
//!   checkpoint files, two generations deep ([`checkpoint`]).
//! * [`history`]: the region's history tier on disk (fjall): every record
//!   applied, the write path's recall and the readers' listings.
//! * [`archive`]: history exported to a versioned, checksummed file before
//!   retention deletes it, and read back and verified offline.
//! * [`raft_types`]: the openraft type configuration.

#![warn(missing_docs)]
// openraft's storage traits return its `StorageError` (over 200 bytes); our
// helpers return the same type rather than boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

pub mod archive;
pub mod backup;
pub mod checkpoint;
pub mod durable;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod log_store;
pub mod meta_file;
pub mod raft_types;
pub mod segment_log;
pub mod state_machine;

pub use history::{History, HistoryAt, HistoryError, HistoryStart};
pub use log_store::{LogStats, LogStore};

use paymesh_core::history::Record;
use sha2::{Digest, Sha256};

/// A replica's digest over both tiers: SHA-256 of its hot state's digest
/// and its history's running digest. Replicas at the same applied index
/// agree on it; `paymesh status` compares it.
pub fn region_digest(state: &[u8; 32], history: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(state);
    hasher.update(history);
    hasher.finalize().into()
}

/// One step of history's running digest: SHA-256 of the previous digest,
/// the batch's log index (u64, big-endian), and each record as its
/// postcard encoding's length (u32, big-endian) and bytes; a batch without
/// records leaves it as it was. Replicas that
/// wrote the same records at the same indexes hold the same digest.
pub fn chain_digest(previous: &[u8; 32], index: u64, records: &[Record]) -> [u8; 32] {
    let mut framed = Vec::new();
    for record in records {
        push_frame(&mut framed, record).expect("a history record encodes");
    }
    chain_framed(previous, index, [framed.as_slice()])
}

/// Append `record`'s frame to `buffer`, as the digest hashes it and the
/// journal keeps it: its postcard encoding's length (u32, big-endian), then
/// the encoding. Returns the encoding's length.
pub(crate) fn push_frame(buffer: &mut Vec<u8>, record: &Record) -> Result<usize, postcard::Error> {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    *buffer = postcard::to_extend(record, std::mem::take(buffer))?;
    let length = buffer.len() - start - 4;
    let prefix = u32::try_from(length).unwrap_or(u32::MAX);
    buffer[start..start + 4].copy_from_slice(&prefix.to_be_bytes());
    Ok(length)
}

/// [`chain_digest`] over records already framed (each one's length, u32
/// big-endian, then its bytes), in pieces that split no frame: the journal's
/// chunks of a batch, in order.
pub(crate) fn chain_framed<'a>(
    previous: &[u8; 32],
    index: u64,
    framed: impl IntoIterator<Item = &'a [u8]>,
) -> [u8; 32] {
    let mut framed = framed.into_iter().filter(|piece| !piece.is_empty()).peekable();
    if framed.peek().is_none() {
        return *previous;
    }
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(index.to_be_bytes());
    for piece in framed {
        hasher.update(piece);
    }
    hasher.finalize().into()
}

pub use raft_types::{NodeAddr, NodeId, TypeConfig};
pub use state_machine::{state_digest, AppliedState, ApplyObserver, StateMachineStore};
