//! Durable storage of a paymesh region's Raft group.
//!
//! * [`segment_log`]: the Raft log as an append-only sequence of CRC-checked
//!   records in segment files, made durable with `fdatasync`.
//! * [`log_store`]: openraft's `RaftLogStorage` over it, acknowledging each
//!   append only after its `fdatasync`.
//! * [`state_machine`]: openraft's `RaftStateMachine` over `paymesh_core::State`,
//!   with snapshots taken from an O(1) copy of the state and kept durably as
//!   checkpoint files, two generations deep ([`checkpoint`]).
//! * [`history`]: the region's history tier on disk (sled): every record
//!   applied, the write path's recall and the readers' listings.
//! * [`raft_types`]: the openraft type configuration.

#![warn(missing_docs)]
// openraft's storage traits return its `StorageError` (over 200 bytes); our
// helpers return the same type rather than boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

pub mod checkpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod log_store;
pub mod meta_file;
pub mod raft_types;
pub mod segment_log;
pub mod state_machine;

pub use history::{History, HistoryAt, HistoryError};
pub use log_store::{LogStats, LogStore};
pub use raft_types::{NodeAddr, NodeId, TypeConfig};
pub use state_machine::{state_digest, Applied, ApplyObserver, StateMachineStore};
