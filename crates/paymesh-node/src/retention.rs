//! History retention on one node: at most once an hour, delete the history
//! journal through the last index an archive was confirmed for, or less:
//! never a batch holding a record that is not older than the configured
//! retention (`history.retention_days`, at least 400 days), by the record's
//! own time against the applied state's clock. Nothing unarchived is ever
//! deleted; records past retention that wait for an archive are reported
//! at WARN, once a day.
//!
//! Deleting records older than 400 days never changes what any replica
//! decides (applying a command consults history only within windows of at
//! most 400 days, `paymesh_core::limits`), so each node deletes on its own
//! schedule.

use std::time::{Duration, Instant};

use paymesh_core::Timestamp;
use paymesh_store::{History, HistoryError, StateMachineStore};

use crate::history_service::delete_within;

/// How often a node looks for history to delete.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3_600);

/// How often, at most, a node warns that history past retention waits for
/// an archive.
pub const BACKLOG_WARNING_INTERVAL: Duration = Duration::from_secs(24 * 3_600);

/// What one pass did and found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pass {
    /// Records deleted.
    pub deleted: usize,
    /// The journal was deleted through this index before the pass.
    pub deleted_before: u64,
    /// The journal is deleted through this index after it.
    pub deleted_through: u64,
    /// Records older than this time may go.
    pub cutoff: Timestamp,
    /// The first batch past retention kept only because no archive covers
    /// it, if there is one.
    pub waiting: Option<u64>,
    /// Why the deletion stopped where it did.
    pub explanation: String,
}

/// One pass over `history` with the applied clock `clock` and a retention
/// of `retention_ms`.
pub fn pass(history: &History, clock: Timestamp, retention_ms: u64) -> Result<Pass, HistoryError> {
    let cutoff = clock.minus_ms(retention_ms);
    let done = delete_within(history, u64::MAX, cutoff)?;
    let kept_from = history.deleted_through().max(history.archived_through());
    let waiting = history.first_batch_older_than(kept_from, cutoff)?;
    Ok(Pass {
        deleted: done.deleted_records as usize,
        deleted_before: done.deleted_before,
        deleted_through: done.deleted_through,
        cutoff,
        waiting,
        explanation: done.explanation,
    })
}

/// Run retention over the history of `state_machine`, keeping
/// `retention_ms`, until the process ends: a pass at start, then one every
/// [`RETENTION_INTERVAL`].
pub async fn run(state_machine: StateMachineStore, retention_ms: u64) {
    let mut ticks = tokio::time::interval(RETENTION_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: Option<Instant> = None;
    loop {
        ticks.tick().await;
        let clock = state_machine.applied().state.clock();
        let store = state_machine.clone();
        let done = tokio::task::spawn_blocking(move || pass(store.history(), clock, retention_ms)).await;
        match done {
            Ok(Ok(pass)) => {
                if pass.deleted > 0 || pass.deleted_through > pass.deleted_before {
                    tracing::info!(
                        records = pass.deleted,
                        from_index = pass.deleted_before + 1,
                        through_index = pass.deleted_through,
                        cutoff_unix_ms = pass.cutoff.unix_ms(),
                        "history past retention deleted: {}",
                        pass.explanation
                    );
                }
                if let Some(index) = pass.waiting {
                    if warned.is_none_or(|at| at.elapsed() >= BACKLOG_WARNING_INTERVAL) {
                        warned = Some(Instant::now());
                        tracing::warn!(
                            first_index = index,
                            cutoff_unix_ms = pass.cutoff.unix_ms(),
                            archived_through = state_machine.history().archived_through(),
                            "history past retention is kept because no archive covers it: run `paymesh history \
                             export` (it confirms the archive with the nodes) so that it can be deleted"
                        );
                    }
                }
            }
            Ok(Err(e)) => tracing::error!(%e, "history retention failed; trying again in an hour"),
            Err(e) => tracing::error!(%e, "history retention task failed; trying again in an hour"),
        }
    }
}
