//! The openraft type configuration of a paymesh region.
//!
//! A log entry's payload is a `paymesh_core::Batch` (the leader's timestamp
//! and up to `BATCH_COMMANDS_MAX` commands) behind a reference count
//! ([`SharedBatch`]), and applying it yields one `Outcome` per command.

use std::io::Cursor;
use std::ops::Deref;
use std::sync::Arc;

use paymesh_core::{Batch, Outcome};
use serde::{Deserialize, Serialize};

/// A Raft node id within a region.
pub type NodeId = u64;

/// How to reach a node: its Raft transport address and its API address
/// (partner, admin and cluster services). Both are `host:port`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Where peers send Raft messages.
    pub raft_addr: String,
    /// Where clients and forwarded writes go.
    pub api_addr: String,
}

/// A log entry's batch, shared by reference count: the copies of an entry
/// that openraft makes (for the apply, for each follower's replication
/// stream) and the one the log keeps of the entries it wrote last
/// (`crate::log_store`) are one batch in memory, where each copy would
/// otherwise be a batch decoded again from the log's bytes or cloned
/// command by command. Encoded exactly as the batch itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedBatch(Arc<Batch>);

impl SharedBatch {
    /// Share `batch`.
    pub fn new(batch: Batch) -> SharedBatch {
        SharedBatch(Arc::new(batch))
    }
}

impl From<Batch> for SharedBatch {
    fn from(batch: Batch) -> SharedBatch {
        SharedBatch::new(batch)
    }
}

impl Deref for SharedBatch {
    type Target = Batch;

    fn deref(&self) -> &Batch {
        &self.0
    }
}

impl Serialize for SharedBatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedBatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SharedBatch, D::Error> {
        Batch::deserialize(deserializer).map(SharedBatch::new)
    }
}

/// What applying one log entry produced: one outcome per command for a batch,
/// nothing for a membership or blank entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryOutcome {
    /// The outcomes, in command order.
    pub outcomes: Vec<Outcome>,
}

openraft::declare_raft_types!(
    /// The type configuration of a paymesh region's Raft group.
    pub TypeConfig:
        D = SharedBatch,
        R = EntryOutcome,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log id of this configuration.
pub type LogId = openraft::LogId<NodeId>;
/// A vote of this configuration.
pub type Vote = openraft::Vote<NodeId>;
/// A log entry of this configuration.
pub type Entry = openraft::Entry<TypeConfig>;
/// The membership as stored with the log id of its entry.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
/// A snapshot.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// A storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// The Raft handle of a region.
pub type Raft = openraft::Raft<TypeConfig>;

#[cfg(test)]
mod tests {
    use paymesh_core::command::{Command, CommandBody, CommandId};
    use paymesh_core::Timestamp;

    use super::*;

    /// Entries written by a release whose payload was the batch itself read
    /// the same, and a node of either release reads the other's messages.
    #[test]
    fn a_shared_batch_is_encoded_as_its_batch() {
        let command = Command { id: CommandId { session: 3, sequence: 9 }, body: CommandBody::Tick };
        let batch = Batch::new(Timestamp::from_unix_ms(1_700_000_000_000), vec![command]).unwrap();
        let shared = SharedBatch::new(batch.clone());
        let bytes = postcard::to_allocvec(&batch).unwrap();
        assert_eq!(postcard::to_allocvec(&shared).unwrap(), bytes);
        assert_eq!(postcard::from_bytes::<SharedBatch>(&bytes).unwrap(), shared);
        assert_eq!(*shared, batch);
    }
}
