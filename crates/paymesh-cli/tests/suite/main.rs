//! The `paymesh` binary's tests, against real processes: one test binary,
//! each file a module.
//!
//! One binary rather than one per file: cargo runs test binaries one after
//! the other and each binary's tests side by side (two at a time on two
//! cores), so a file whose tests wait (the five-minute webhook outage, a
//! browser loading pages) held the whole run for as long as it waited, and
//! every file linked the whole dependency tree again. Here the waiting runs
//! beside the rest.
//!
//! Run one file's tests with `cargo test -p paymesh-cli --test suite
//! webhooks::` (a filter on the module's name).

mod common;

mod admin_cli;
mod backup_restore;
mod baseline_feature;
mod cli_output;
mod cross_border;
mod damaged_log;
mod disaster;
mod grow_mesh;
mod history_cli;
mod kubernetes;
mod leader_failover;
mod measure;
mod membership;
mod monitoring;
mod partner_api;
mod partner_limits;
mod postgres_baseline;
mod python_sdk;
mod readme_recipe;
mod rolling_upgrade;
mod settlement;
mod snapshot_catch_up;
mod tracing;
mod trust_boundaries;
mod webhooks;

/// The longest test, five minutes of a failing webhook receiver (most of it
/// waiting): libtest starts tests in the order of their names, and this one,
/// at the crate's root, sorts before every module's, so it starts first and
/// the other tests run beside it rather than after it. Its body is in
/// `webhooks.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_for_five_minutes_then_gets_every_event_once_in_cursor_order() {
    webhooks::a_receiver_failing_for_five_minutes_then_gets_every_event_once_in_cursor_order().await;
}
