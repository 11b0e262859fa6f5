//! The pure payment core of paymesh.
//!
//! Everything that decides what happens to money lives here: currencies and
//! money, FX conversion, the double-entry ledger, the two transfer state machines
//! of the cross-border protocol, and [`state::State::apply`], the single function
//! through which a region's replicated state changes.
//!
//! This crate performs no I/O, reads no clock, spawns nothing and uses no
//! randomness: time is an argument and every map is ordered. The same commands in
//! the same order therefore produce the same state on every replica, which is what
//! Raft replication and deterministic simulation both rely on. The async shell
//! (`paymesh-node`) drives it; it never reaches out.

#![deny(clippy::float_arithmetic)]
#![warn(missing_docs)]

pub mod command;
pub mod corridor;
pub mod currency;
pub mod directory;
pub mod fx;
pub mod history;
pub mod id;
pub mod ledger;
pub mod limits;
pub mod money;
pub mod outcome;
pub mod partner;
pub mod reconcile;
mod serde_seq;
mod serde_text;
pub mod settings;
pub mod settlement;
pub mod state;
pub mod time;
pub mod transfer;
pub mod version;
pub mod webhook;

pub use command::{Batch, Command, CommandBody, CommandId};
pub use currency::{Currency, CurrencyError};
pub use money::{AmountError, Money, MoneyError, MoneyParseError, SignedMoney};
pub use outcome::{Outcome, RejectCode};
pub use state::State;
pub use time::Timestamp;

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;
