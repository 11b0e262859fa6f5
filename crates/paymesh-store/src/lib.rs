//! Durable storage of a paymesh region.
//!
//! * [`segment_log`]: the Raft log as an append-only sequence of CRC-checked
//!   records in segment files, made durable with `fdatasync`.

#![warn(missing_docs)]

pub mod segment_log;
