//! The paymesh partner SDK.
//!
//! A partner talks to the nodes of its home region. [`Region`] holds their
//! addresses and the partner's identity (a TLS client certificate, or in
//! development a plaintext identity header), and runs every call with the
//! retry rules that keep it safe:
//!
//! * A node that is not the leader answers UNAVAILABLE with the leader's
//!   address in `paymesh-leader-addr`; the call is retried there at once.
//! * UNAVAILABLE without a hint (no leader yet, node down), DEADLINE_EXCEEDED,
//!   and the transport's UNKNOWN, CANCELLED and ABORTED are retried on the
//!   next node with capped exponential backoff, within a bounded number of
//!   attempts and a deadline.
//! * UNAVAILABLE marked `paymesh-refused: region-unreachable` is an answer,
//!   not an outage: the region refused the request at once, with no effect,
//!   because the payee's region is known unreachable (or the region is
//!   reconciling with it after a restore); asking again within the retry
//!   window would get the same. Returned as is ([`REFUSED`]).
//! * Anything else is an answer, returned as is.
//!
//! Retrying a write is safe because it carries an idempotency key
//! (`CreateTransfer`, `CreatePayment`, a keyed `CreateQuote`) or is harmless
//! to repeat (an unkeyed `CreateQuote` makes another quote). [`PartnerClient`] wraps the partner API with these rules, and
//! batches the transfers and payments a process has in flight at once into
//! `CreateTransfers` requests by itself ([`Batching`]).

#![warn(missing_docs)]

mod batch;
mod partner;
mod region;
pub mod webhook;

pub use batch::{Batching, ITEMS_PER_REQUEST_MAX};
pub use partner::{batched_payment, batched_transfer, PartnerClient};
pub use region::{
    Answered, ClientError, Credentials, IdentityHeader, NodeChannel, Region, RetryPolicy, LEADER_ADDR, LEADER_ID,
    NODE_ID, REFUSED,
};
