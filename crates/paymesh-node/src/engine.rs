//! The leader's logic as plain state machines, without I/O: what the
//! node's async drivers run and what the simulation (`paymesh-chaos`'s
//! `sim`) runs too, so that every simulated seed exercises the code that
//! runs in production.
//!
//! An engine takes its inputs as method calls (what the outbox holds, an
//! answer that arrived, a call that failed, the time as an argument) and
//! returns its outputs as values (calls to make, commands to propose, when
//! to look again). It holds no clock, no socket, no task and no lock: the
//! driver owns those and carries the outputs out. Time is the time since
//! the driver's own start ([`Time`]): the node reads it from a monotonic
//! clock, the simulation from its simulated one.
//!
//! The engines: the coordinator's [`shipper`] (the outbox's in-flight set,
//! the calls to a remote region, their backoff and the region's circuit
//! breaker; driven by `crate::outbox::ship`) and the payee region's
//! [`receiver`] (one inter-region batch from its items to its answer;
//! driven by the inter-region service in `crate::interregion`).

pub mod admission;
pub mod fair;
pub mod proposer;
pub mod receiver;
pub mod shipper;

/// A moment on the driver's clock: the time since the driver started.
pub type Time = std::time::Duration;
