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
//! * [`check`] — the live invariant checks of a mesh after a workload.
//! * [`admin_calls`] — the admin API calls these and the `paymesh` command
//!   share.
//!
//! It is not linked for anything but those: no node depends on it, and the
//! `paymesh` binary links it for `demo` and `bench` (its operator commands
//! share the admin calls).

pub mod admin_calls;
pub mod check;
pub mod local;
pub mod mesh;
pub mod wan;
pub mod world;
