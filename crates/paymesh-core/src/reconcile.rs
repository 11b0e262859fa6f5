//! Reconciling a restored region with the rest of the mesh.
//!
//! A region restored from a backup taken at log index `I` forgot what it did
//! after `I`; the other regions did not. Cross-border transfers between them
//! may now disagree: the other region credited a payee for a transfer the
//! restored region no longer has, holds a pending credit for a Prepare whose
//! coordinator is gone, or committed a transfer the restored region still
//! holds as reserved (and would abort on its deadline). Reconciliation asks
//! every other region what it holds of the transfers between them, and
//! brings each to the end the other region's record dictates:
//!
//! * the other region coordinates it: its decision is the truth; a
//!   participation lost here is recreated and posted, one still prepared
//!   here is committed or voided as decided;
//! * the restored region coordinates it: a transfer still reserved here
//!   takes the outcome the other region recorded; a transfer lost here (its
//!   id issued after `I`) that the other region holds prepared is aborted
//!   (an abort goes out); one it committed cannot be recovered here (the
//!   payer's debit and personal data were lost with the disks) and is
//!   reported with its amounts, never hidden.
//!
//! While a region reconciles with another, nothing moves between them and
//! no deadline fires (see [`crate::state::State::reconciling_with`]), so
//! neither side's record changes under the comparison. The leader drives it
//! in steps ([`ReconcileStep`]), each applied once: a new leader resumes
//! where the last applied step left off.

use serde::{Deserialize, Serialize};

use crate::command::PrepareMessage;
use crate::history::{record_time, Record};
use crate::id::{PartnerId, RegionId, TransferId};
use crate::money::Money;
use crate::outcome::RejectCode;
use crate::state::State;
use crate::time::Timestamp;

/// How far before the backup's last applied time the other regions look
/// for the transfers between them: a first Prepare is refused after its
/// 10 s deadline, and leaders' clocks may disagree by some seconds; a
/// minute covers both.
pub const RECONCILE_MARGIN_MS: u64 = 60_000;

/// Most transfers one reconciliation step asks about by id.
pub const RECONCILE_ITEMS_MAX: usize = 1_000;

/// Records after which a scan page ends (at the next batch boundary).
pub const RECONCILE_PAGE_RECORDS: usize = 500;

/// Most records one reconciliation step carries.
pub const RECONCILE_RECORDS_MAX: usize = 4_000;

/// Most unrecoverable transfers and conflicts a region's report lists by
/// id; beyond it they are only counted.
pub const RECONCILE_LISTED_MAX: usize = 10_000;

/// Where another region's record of a transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemotePhase {
    /// It holds no record of it.
    Unknown,
    /// Not final there: reserved and waiting for the Prepare's answer (it
    /// coordinates), or prepared and waiting for the decision (it
    /// participates).
    Pending,
    /// Committed there.
    Committed,
    /// Aborted or refused there (or a tombstone).
    Aborted,
}

/// What another region holds of one transfer between it and the restored
/// region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRecord {
    /// The transfer.
    pub transfer: TransferId,
    /// Where it stands there.
    pub phase: RemotePhase,
    /// Why it was refused or aborted there, if it was.
    pub reason: Option<RejectCode>,
    /// The Prepare: the one it sent (it coordinates) or received (it
    /// participates); none for a tombstone or an unknown transfer.
    pub prepare: Option<PrepareMessage>,
}

/// How far the reconciliation with one region has come. Each applied step
/// names the step it continues from, so a step applied twice (a new leader
/// proposing what its predecessor already had applied) changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReconcileStep {
    /// Nothing asked yet.
    Start,
    /// The transfers held here in flight with that region were asked about
    /// by id, in id order, through this one.
    AskedThrough(TransferId),
    /// Every one asked; the region's own scan of what it holds continues
    /// from its token (0: from its newest).
    Scanning(u64),
    /// Finished.
    Done,
}

/// A transfer the other region committed whose coordinator's record this
/// region lost: the payee was credited there, the payer's debit here is
/// gone. Settled by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unrecoverable {
    /// The transfer.
    pub transfer: TransferId,
    /// What the payer would have paid (principal, source currency).
    pub source: Money,
    /// What the payee was credited there.
    pub destination: Money,
    /// The payee partner credited.
    pub payee: PartnerId,
}

/// A transfer the two regions' records disagree on in a way no rule
/// settles (for example committed here, aborted there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The transfer.
    pub transfer: TransferId,
    /// What each side holds, in words.
    pub detail: String,
}

/// The reconciliation with one other region: where it stands and what it
/// did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionReconciliation {
    /// The next step.
    pub step: ReconcileStep,
    /// Records the other region sent.
    pub records: u64,
    /// Participations lost here, recreated from the other region's Prepare
    /// and posted as it decided.
    pub credits_recovered: u64,
    /// Transfers held here undecided that took the other region's
    /// decision or outcome: committed.
    pub committed: u64,
    /// The same, aborted.
    pub aborted: u64,
    /// Transfers lost here the other region held prepared: an abort went
    /// out, its pending credit is released.
    pub aborts_sent: u64,
    /// Decisions made here before the backup that the other region had not
    /// received, queued again.
    pub decisions_resent: u64,
    /// Committed there, lost here: listed up to [`RECONCILE_LISTED_MAX`].
    pub unrecoverable: Vec<Unrecoverable>,
    /// How many unrecoverable transfers in all.
    pub unrecoverable_count: u64,
    /// Disagreements no rule settles: listed up to
    /// [`RECONCILE_LISTED_MAX`].
    pub conflicts: Vec<Conflict>,
    /// How many in all.
    pub conflict_count: u64,
    /// When it finished.
    pub done_at: Option<Timestamp>,
}

impl RegionReconciliation {
    fn new() -> RegionReconciliation {
        RegionReconciliation {
            step: ReconcileStep::Start,
            records: 0,
            credits_recovered: 0,
            committed: 0,
            aborted: 0,
            aborts_sent: 0,
            decisions_resent: 0,
            unrecoverable: Vec::new(),
            unrecoverable_count: 0,
            conflicts: Vec::new(),
            conflict_count: 0,
            done_at: None,
        }
    }

    pub(crate) fn unrecoverable(&mut self, lost: Unrecoverable) {
        // A part of a page applied again (leadership moved in the middle of
        // a page too large for one command) lists nothing twice.
        if self.unrecoverable.iter().any(|listed| listed.transfer == lost.transfer) {
            return;
        }
        self.unrecoverable_count += 1;
        if self.unrecoverable.len() < RECONCILE_LISTED_MAX {
            self.unrecoverable.push(lost);
        }
    }

    pub(crate) fn conflict(&mut self, transfer: &TransferId, detail: String) {
        self.conflict_count += 1;
        if self.conflicts.len() < RECONCILE_LISTED_MAX {
            self.conflicts.push(Conflict { transfer: transfer.clone(), detail });
        }
    }

    /// Whether it finished.
    pub fn is_done(&self) -> bool {
        self.step == ReconcileStep::Done
    }
}

/// A restore and the reconciliation it started, kept in the state (and
/// its snapshots) as the restore's report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// The backup's log index.
    pub backup_index: u64,
    /// The backup's last applied time.
    pub backup_time: Timestamp,
    /// The other regions report transfers they changed from here on
    /// ([`RECONCILE_MARGIN_MS`] before the backup's time).
    pub since: Timestamp,
    /// Transfer ids issued here before the backup are below this.
    pub transfers_issued_below: u64,
    /// Each other region's reconciliation.
    pub regions: std::collections::BTreeMap<RegionId, RegionReconciliation>,
}

impl Reconciliation {
    pub(crate) fn new(
        backup_index: u64,
        backup_time: Timestamp,
        transfers_issued_below: u64,
        regions: impl IntoIterator<Item = RegionId>,
    ) -> Reconciliation {
        Reconciliation {
            backup_index,
            backup_time,
            since: backup_time.minus_ms(RECONCILE_MARGIN_MS),
            transfers_issued_below,
            regions: regions.into_iter().map(|region| (region, RegionReconciliation::new())).collect(),
        }
    }

    /// Whether any region is still being reconciled with.
    pub fn is_pending(&self) -> bool {
        self.regions.values().any(|r| !r.is_done())
    }
}

/// Most history batches one scan page reads.
pub const RECONCILE_SCAN_BATCHES_MAX: usize = 20_000;

/// The reconciliation record a history record of region `own` gives the
/// restored region `region`: a finished transfer `own` coordinated paying
/// into `region`, or `own`'s finished side of a payment `region`
/// coordinated. Refunds and cancels are not reconciled (see the
/// architecture's "Backups").
pub fn record_for(region: &RegionId, record: &Record) -> Option<RemoteRecord> {
    match record {
        Record::Transfer(transfer)
            if transfer.view.corridor.destination_region == *region && !transfer.view.corridor.is_same_region() =>
        {
            Some(State::record_of_transfer(transfer))
        }
        Record::Participation { transfer, participation } if transfer.origin() == region => {
            Some(State::record_of_participation(transfer, participation))
        }
        _ => None,
    }
}

/// When a record says it happened, for the scan's stop rule
/// ([`record_time`]); none for records that carry no time of their own.
fn time_of(record: &Record) -> Option<Timestamp> {
    Some(record_time(record)).filter(|at| *at != Timestamp::EPOCH)
}

/// One page of an answering region's scan of its history for a restored
/// region, fed the history's records newest batch first: the records
/// about transfers with that region, until a whole batch is older than
/// `since` (the scan is done) or the page is full (at a batch boundary).
#[derive(Debug)]
pub struct HistoryScan {
    region: RegionId,
    since: Timestamp,
    records: Vec<RemoteRecord>,
    batches: usize,
    /// The batch being fed, and the newest time among its records.
    current: Option<(u64, Option<Timestamp>)>,
    /// Where the next page starts (batches below it), or 0: done.
    next: Option<u64>,
}

impl HistoryScan {
    /// A page for the restored `region`, of the records changed at or
    /// after `since`.
    pub fn new(region: RegionId, since: Timestamp) -> HistoryScan {
        HistoryScan { region, since, records: Vec::new(), batches: 0, current: None, next: None }
    }

    /// Feed one record of batch `index`; false when the page ends before
    /// this record's batch (feed no more).
    pub fn feed(&mut self, index: u64, record: &Record) -> bool {
        if self.next.is_some() {
            return false;
        }
        match self.current {
            Some((at, newest)) if at != index => {
                if newest.is_some_and(|newest| newest < self.since) {
                    self.next = Some(0);
                    return false;
                }
                self.batches += 1;
                if self.records.len() >= RECONCILE_PAGE_RECORDS || self.batches >= RECONCILE_SCAN_BATCHES_MAX {
                    self.next = Some(at);
                    return false;
                }
                self.current = Some((index, None));
            }
            Some(_) => {}
            None => self.current = Some((index, None)),
        }
        if let (Some((_, newest)), Some(time)) = (self.current.as_mut(), time_of(record)) {
            *newest = Some(newest.map_or(time, |n| n.max(time)));
        }
        if let Some(found) = record_for(&self.region, record) {
            if found.phase != RemotePhase::Pending {
                self.records.push(found);
            }
        }
        true
    }

    /// The page's records and where the next page starts (0: the scan is
    /// done). A page ends at a batch boundary once it holds
    /// [`RECONCILE_PAGE_RECORDS`] records, so it may hold a batch's worth
    /// more (within [`RECONCILE_RECORDS_MAX`]: a batch holds at most 1,024
    /// commands); the batch older than `since` that ended the scan adds its
    /// records too, harmless (nothing in it was lost).
    pub fn finish(self) -> (Vec<RemoteRecord>, u64) {
        (self.records, self.next.unwrap_or(0))
    }
}

/// What a restored region asks another next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Its records of these transfers, held here in flight with it.
    Ids(Vec<TransferId>),
    /// A page of its scan: 0 to begin (its prepared participations, then
    /// its history from the newest batch), else its history below that
    /// batch index.
    Scan(u64),
}

impl Ask {
    /// The step after this ask's answer: through the last id asked, or on
    /// to the scan's next page (`next`, 0 when it was the last).
    pub fn step_after(&self, next: u64) -> ReconcileStep {
        match self {
            Ask::Ids(ids) => match ids.last() {
                Some(last) => ReconcileStep::AskedThrough(last.clone()),
                None => ReconcileStep::Scanning(0),
            },
            Ask::Scan(_) if next == 0 => ReconcileStep::Done,
            Ask::Scan(_) => ReconcileStep::Scanning(next),
        }
    }
}

impl State {
    /// The step the reconciliation with `region` stands at and what to ask
    /// that region next; none when there is nothing to reconcile with it.
    pub fn reconcile_next(&self, region: &RegionId) -> Option<(ReconcileStep, Ask)> {
        let step = self.reconciliation()?.regions.get(region)?.step.clone();
        let ids = |after: Option<&TransferId>| {
            let ids = self.reconcile_asks(region, after, RECONCILE_ITEMS_MAX);
            if ids.is_empty() {
                Ask::Scan(0)
            } else {
                Ask::Ids(ids)
            }
        };
        let ask = match &step {
            ReconcileStep::Start => ids(None),
            ReconcileStep::AskedThrough(last) => ids(Some(last)),
            ReconcileStep::Scanning(token) => Ask::Scan(*token),
            ReconcileStep::Done => return None,
        };
        Some((step, ask))
    }
}
