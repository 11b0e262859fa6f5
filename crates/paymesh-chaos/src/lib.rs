//! The chaos suite of paymesh: the proof that no fault loses or duplicates
//! money.
//!
//! * What a run records (the history), the checkers that judge it, the
//!   observation of what the regions hold and the scan of the nodes' files
//!   are the harness's (`paymesh_harness::{history, check, observe,
//!   locality}`), shared with `paymesh demo`.
//! * [`report`]: a run's JSON and Markdown report and its picture.
//! * [`world`], [`workload`], [`nemesis`], [`run`]: a run;
//!   [`backend`]: its mesh, as local processes ([`process`]) or containers
//!   ([`docker`]).

pub mod backend;
pub mod blast;
pub mod docker;
pub mod nemesis;
pub mod process;
pub mod report;
pub mod run;
pub mod sim;
pub mod workload;
pub mod world;
