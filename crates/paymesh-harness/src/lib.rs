//! The harness that runs paymesh for real on this machine, shared by
//! `paymesh demo`, `paymesh bench`, the process tests of the `paymesh`
//! command and the chaos suite:
//!
//! * [`local`] — `LocalRegion`, a region of `paymesh start` processes on
//!   loopback with its own development CA; it is given the path of the
//!   `paymesh` binary to run, so it needs nothing of the binary's crate.
//! * [`wan`] — the user-space WAN (delay, jitter, loss, cut) between regions.
//! * [`mesh`] — `LocalMesh`, regions of `LocalRegion`s joined by WAN links.
//! * [`world`] — the demo's world (regions, wallets, merchant networks,
//!   rates) and how an operator configures a world through the admin API.
//! * [`history`] — what a run records: its requests and their outcomes,
//!   the faults injected, what every region held at the end.
//! * [`observe`] — reading what every region holds through its APIs.
//! * [`locality`] — the scan of every node's files for payer data out of
//!   its region.
//! * [`check`] — one checker per invariant over a history: the chaos suite
//!   runs all of them, `paymesh demo` those that read the observation.
//! * [`admin_calls`] — the admin API calls these and the `paymesh` command
//!   share.
//!
//! It is not linked for anything but those: no node depends on it, and the
//! `paymesh` binary links it for `demo` and `bench` (its operator commands
//! share the admin calls).

pub mod admin_calls;
pub mod check;
pub mod history;
pub mod local;
pub mod locality;
pub mod mesh;
pub mod observe;
pub mod settlement;
pub mod wan;
pub mod webhook_receiver;
pub mod webhooks;
pub mod world;
