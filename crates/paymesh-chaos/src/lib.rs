//! The chaos suite of paymesh: the proof that no fault loses or duplicates
//! money.
//!
//! * [`history`]: what a run records (every request with its times and
//!   outcome, the faults, what every region holds after healing).
//! * [`check`]: one checker per invariant over a history.
//! * [`locality`]: the scan of every node's files for other regions' payer
//!   data, which the `data_locality` checker reads.
//! * [`report`]: a run's JSON and Markdown report and its picture.
//! * [`world`], [`workload`], [`nemesis`], [`observe`], [`run`]: a run;
//!   [`backend`]: its mesh, as local processes ([`process`]) or containers
//!   ([`docker`]).

pub mod backend;
pub mod check;
pub mod docker;
pub mod history;
pub mod locality;
pub mod nemesis;
pub mod observe;
pub mod process;
pub mod report;
pub mod run;
pub mod sim;
pub mod workload;
pub mod world;
