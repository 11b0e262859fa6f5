//! The leader's logic as plain state machines, without I/O: what the
//! node's async drivers run and what the simulation (`paymesh-chaos`'s
//! `sim`) runs too, so that every simulated seed exercises the code that
//! runs in production.
//!
//! An engine takes its inputs as method calls (what the outbox holds, an
//! answer that arrived, a call that failed, the time as an argument) and
//! returns its outputs as values (calls to make, commands to propose, when
//! to look again). It holds no clock, no socket, no task and no lock: the
//! driver owns those and carries the outputs out. Time is a count of
//! milliseconds on the driver's clock ([`Ms`]): the node counts from the
//! moment its driver started, the simulation uses its simulated time.
//!
//! The engines: the coordinator's [`shipper`] (the outbox's in-flight set,
//! the calls to a remote region, their backoff and the region's circuit
//! breaker; driven by `crate::outbox::ship`) and the payee region's
//! [`receiver`] (one inter-region batch from its items to its answer;
//! driven by the inter-region service in `crate::interregion`).

pub mod receiver;
pub mod shipper;

/// Milliseconds on the driver's clock.
pub type Ms = u64;

/// A duration in [`Ms`] (the engine's durations are all far below
/// `u64::MAX` ms).
pub const fn ms(duration: std::time::Duration) -> Ms {
    duration.as_millis() as Ms
}
