//! The openraft type configuration of a paymesh region.
//!
//! A log entry's payload is a `paymesh_core::Batch` (the leader's timestamp
//! and up to `BATCH_COMMANDS_MAX` commands), and applying it yields one
//! `Outcome` per command.

use std::io::Cursor;

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
        D = Batch,
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
