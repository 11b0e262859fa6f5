//! A restored region's reconciliation with the other regions
//! ([`crate::reconcile`]): both sides of it, the answering region's
//! records and the restored region's application of them.

use super::*;
use crate::reconcile::{RegionReconciliation, Unrecoverable, RECONCILE_RECORDS_MAX};

impl State {
    /// Begin reconciling with `regions` (every other region the restored
    /// one may have exchanged transfers with) after a restore from a backup
    /// at `backup_index`. `paymesh restore` calls it on the backup's state,
    /// the same on every node, before [`State::skip_numbers`].
    pub fn begin_reconciliation(&mut self, backup_index: u64, regions: impl IntoIterator<Item = RegionId>) {
        let own = self.region.clone();
        let others: Vec<RegionId> = regions.into_iter().filter(|region| *region != own).collect();
        self.reconciliation = Some(Box::new(Reconciliation::new(backup_index, self.clock, self.next_transfer, others)));
    }

    /// The restore this state was seeded by and its reconciliation, if it
    /// was.
    pub fn reconciliation(&self) -> Option<&Reconciliation> {
        self.reconciliation.as_deref()
    }

    /// Whether this region, restored, still reconciles with `region`: until
    /// it is done, no new transfer to it is admitted, no message goes to it
    /// or is taken from it, and no deadline fires here.
    pub fn reconciling_with(&self, region: &RegionId) -> bool {
        self.reconciliation.as_ref().and_then(|r| r.regions.get(region)).is_some_and(|r| !r.is_done())
    }

    /// Whether any reconciliation is unfinished.
    pub(super) fn reconciling(&self) -> bool {
        self.reconciliation.as_ref().is_some_and(|r| r.is_pending())
    }

    /// The transfers this region holds in flight with `region` whose ids
    /// come after `after`, in id order, at most `max`: the ones it
    /// coordinates, reserved for a payee there, and the ones it prepared
    /// for a payer there. The restored region asks about these by id.
    pub fn reconcile_asks(&self, region: &RegionId, after: Option<&TransferId>, max: usize) -> Vec<TransferId> {
        let after_id = |id: &&TransferId| after.is_none_or(|after| *id > after);
        let coordinated = self
            .transfers
            .iter()
            .filter(|(_, t)| t.view.corridor.destination_region == *region && !t.view.state.is_final())
            .map(|(id, _)| id)
            .filter(after_id);
        let prepared =
            self.participations.iter().filter(|(id, p)| id.origin() == region && !p.state.is_final()).map(|(id, _)| id);
        let mut ids: Vec<TransferId> = coordinated.chain(prepared.filter(after_id)).cloned().collect();
        ids.sort();
        ids.dedup();
        ids.truncate(max);
        ids
    }

    /// What this region holds of transfer `id`, for a restored region
    /// reconciling with it: its coordinator's record or its participation,
    /// in the hot state or in `recall`.
    pub fn remote_record(&self, id: &TransferId, recall: &dyn Recall) -> RemoteRecord {
        if id.origin() == &self.region {
            match self.coordinated(id).cloned().or_else(|| recall.transfer(id)) {
                Some(transfer) => Self::record_of_transfer(&transfer),
                None => RemoteRecord { transfer: id.clone(), phase: RemotePhase::Unknown, reason: None, prepare: None },
            }
        } else {
            match self.participations.get(id).cloned().or_else(|| recall.participation(id)) {
                Some(participation) => Self::record_of_participation(id, &participation),
                None => RemoteRecord { transfer: id.clone(), phase: RemotePhase::Unknown, reason: None, prepare: None },
            }
        }
    }

    /// The participations prepared here for transfers `region` coordinates:
    /// the answering region's hot part of a reconciliation scan (the
    /// finished ones are history's).
    pub fn pending_participations_of(&self, region: &RegionId) -> Vec<RemoteRecord> {
        self.participations
            .iter()
            .filter(|(id, p)| id.origin() == region && !p.state.is_final())
            .map(|(id, p)| Self::record_of_participation(id, p))
            .collect()
    }

    /// A transfer this region coordinates, as a reconciliation record.
    pub fn record_of_transfer(transfer: &Transfer) -> RemoteRecord {
        let view = &transfer.view;
        let phase = match view.state {
            CoordinatorState::Committed => RemotePhase::Committed,
            CoordinatorState::Aborted => RemotePhase::Aborted,
            CoordinatorState::Received | CoordinatorState::Reserved | CoordinatorState::Prepared => {
                RemotePhase::Pending
            }
        };
        RemoteRecord { transfer: view.id.clone(), phase, reason: view.reason, prepare: prepare_of(view) }
    }

    /// A participation held here, as a reconciliation record.
    pub fn record_of_participation(id: &TransferId, participation: &Participation) -> RemoteRecord {
        let phase = match participation.state {
            ParticipantState::Prepared => RemotePhase::Pending,
            ParticipantState::Committed => RemotePhase::Committed,
            ParticipantState::Aborted | ParticipantState::Tombstone => RemotePhase::Aborted,
        };
        RemoteRecord {
            transfer: id.clone(),
            phase,
            reason: participation.reason,
            prepare: participation.prepare.clone(),
        }
    }

    /// Apply one step of the reconciliation with `region`: each record
    /// brought to the end the other region's record dictates (see
    /// [`crate::reconcile`]), counted in the region's report. A step that
    /// does not continue from where the reconciliation stands changes
    /// nothing (it was applied already).
    pub(super) fn reconciled(
        &mut self,
        region: &RegionId,
        from: &ReconcileStep,
        records: &[RemoteRecord],
        to: &ReconcileStep,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<Outcome> {
        let Some(report) = self.reconciliation.as_ref().and_then(|r| r.regions.get(region)) else {
            return Err(RejectCode::ProtocolViolation);
        };
        if records.len() > RECONCILE_RECORDS_MAX {
            return Err(RejectCode::ProtocolViolation);
        }
        if report.step != *from {
            return Ok(Outcome::Done);
        }
        let mut report = report.clone();
        for record in records {
            report.records += 1;
            if record.transfer.origin() == region {
                self.reconcile_participation(region, record, &mut report, now, recall);
            } else if record.transfer.origin() == &self.region {
                self.reconcile_coordinated(region, record, &mut report, now, recall);
            } else {
                report
                    .conflict(&record.transfer, format!("sent by {region}, which neither coordinates it nor pays it"));
            }
        }
        report.step = to.clone();
        if report.is_done() {
            report.done_at = Some(now);
        }
        let reconciliation = self.reconciliation.as_mut().expect("looked up above");
        reconciliation.regions.insert(region.clone(), report);
        Ok(Outcome::Done)
    }

    /// A transfer `region` coordinates: its record decides this region's
    /// participation.
    fn reconcile_participation(
        &mut self,
        region: &RegionId,
        record: &RemoteRecord,
        report: &mut RegionReconciliation,
        now: Timestamp,
        recall: &dyn Recall,
    ) {
        let id = &record.transfer;
        let here = self.participations.get(id).cloned().or_else(|| recall.participation(id)).map(|p| p.state);
        let decide = |state: &mut State, decision: Decision| {
            // The window the decision was made in is the sender's to know;
            // 0 says "not stated" in the settlement tallies.
            state.decide(id, decision, 0, now, recall).is_ok()
        };
        match (record.phase, here) {
            (RemotePhase::Committed, Some(ParticipantState::Prepared)) => {
                if decide(self, Decision::Commit) {
                    report.committed += 1;
                } else {
                    report.conflict(id, format!("committed by {region}, prepared here, and the commit failed"));
                }
            }
            (RemotePhase::Aborted, Some(ParticipantState::Prepared)) => {
                if decide(self, Decision::Abort) {
                    report.aborted += 1;
                } else {
                    report.conflict(id, format!("aborted by {region}, prepared here, and the abort failed"));
                }
            }
            (RemotePhase::Committed, None) => match self.recover_credit(region, record, now) {
                Ok(()) => report.credits_recovered += 1,
                Err(why) => {
                    report.conflict(id, format!("committed by {region}, lost here, and not recoverable: {why}"))
                }
            },
            (RemotePhase::Committed, Some(state @ (ParticipantState::Aborted | ParticipantState::Tombstone)))
            | (RemotePhase::Aborted, Some(state @ ParticipantState::Committed)) => {
                report.conflict(id, format!("{:?} by {region}, {state:?} here", record.phase));
            }
            (RemotePhase::Unknown, Some(ParticipantState::Prepared)) => {
                report.conflict(id, format!("prepared here, unknown to {region}, its coordinator"));
            }
            _ => {}
        }
    }

    /// Recreate and post a participation this region lost, from the
    /// Prepare its coordinator sent.
    fn recover_credit(&mut self, region: &RegionId, record: &RemoteRecord, now: Timestamp) -> Result<(), String> {
        let prepare = record.prepare.clone().ok_or("no Prepare came with the record")?;
        if prepare.transfer != record.transfer || prepare.corridor.destination_region != self.region {
            return Err("the Prepare names another transfer or region".into());
        }
        let currency = prepare.destination.currency();
        let payee = self.partners.get(&prepare.payee).ok_or(format!("no payee {} here", prepare.payee))?;
        if payee.config.currency != currency {
            return Err(format!("payee {} keeps no {currency} position", prepare.payee));
        }
        let payee_account = Self::position_account(&payee.config);
        let clearing = self.open_mesh_account(AccountOwner::Clearing(region.clone()), currency);
        let op = Op::Post {
            id: leg(&prepare.transfer, Leg::Payout),
            debit: clearing,
            credit: payee_account,
            amount: prepare.destination,
        };
        self.ledger.apply(&[op], now).map_err(|refused| format!("the ledger refused it: {:?}", refused.reason))?;
        let id = prepare.transfer.clone();
        self.journal.push(Record::Listed { partner: prepare.payee.clone(), transfer: id.clone(), at: now });
        let participation = Participation {
            state: ParticipantState::Committed,
            reason: None,
            prepare: Some(prepare.clone()),
            created_at: now,
            updated_at: now,
        };
        self.journal
            .push(Record::Participation { transfer: id.clone(), participation: Box::new(participation.clone()) });
        self.participations.insert(id, participation);
        let key = settlement::payment_key(prepare.source, prepare.destination);
        self.tally_received(region, 0, key, prepare.source, prepare.destination);
        self.emit_credit(&prepare, now);
        Ok(())
    }

    /// A transfer this region coordinates (or did, before the backup's
    /// index): `region`'s participation decides what is left to do.
    fn reconcile_coordinated(
        &mut self,
        region: &RegionId,
        record: &RemoteRecord,
        report: &mut RegionReconciliation,
        now: Timestamp,
        recall: &dyn Recall,
    ) {
        let id = &record.transfer;
        let key = (region.clone(), id.clone());
        let Some(mine) = self.coordinated(id).cloned().or_else(|| recall.transfer(id)) else {
            let issued_below =
                self.reconciliation.as_ref().map_or(u64::MAX, |reconciliation| reconciliation.transfers_issued_below);
            if id.sequence() < issued_below && record.phase != RemotePhase::Aborted {
                report
                    .conflict(id, format!("{:?} in {region}, issued here before the backup but unknown", record.phase));
                return;
            }
            match record.phase {
                // Issued after the backup and lost: the payee region holds a
                // credit pending that no decision would ever resolve.
                RemotePhase::Pending => {
                    if !self.outbox.contains_key(&key) {
                        self.outbox.insert(key, self.decision(id, Decision::Abort));
                        report.aborts_sent += 1;
                    }
                }
                RemotePhase::Committed => match &record.prepare {
                    Some(prepare) => report.unrecoverable(Unrecoverable {
                        transfer: id.clone(),
                        source: prepare.source,
                        destination: prepare.destination,
                        payee: prepare.payee.clone(),
                    }),
                    None => report.conflict(id, format!("committed in {region} with no Prepare on record")),
                },
                RemotePhase::Aborted | RemotePhase::Unknown => {}
            }
            return;
        };
        let state = mine.view.state;
        match (record.phase, state) {
            (RemotePhase::Committed, CoordinatorState::Reserved) => {
                self.take_answer(mine, PrepareReply::Prepared, false, now);
                report.committed += 1;
            }
            (RemotePhase::Aborted, CoordinatorState::Reserved) => {
                let reason = record.reason.unwrap_or(RejectCode::AbortedBeforePrepare);
                self.take_answer(mine, PrepareReply::Rejected(reason), false, now);
                report.aborted += 1;
            }
            (RemotePhase::Pending, CoordinatorState::Committed | CoordinatorState::Aborted)
                if !self.outbox.contains_key(&key) =>
            {
                // Decided here before the backup, acknowledged (so out of the
                // outbox) in no record the other region holds: sent again.
                let decision = if state == CoordinatorState::Committed { Decision::Commit } else { Decision::Abort };
                self.outbox.insert(key, self.decision(id, decision));
                report.decisions_resent += 1;
            }
            (RemotePhase::Committed, CoordinatorState::Aborted)
            | (RemotePhase::Aborted, CoordinatorState::Committed)
            | (RemotePhase::Unknown, CoordinatorState::Committed) => {
                report.conflict(id, format!("{:?} in {region}, {state:?} here", record.phase));
            }
            _ => {}
        }
    }
}

/// The Prepare a cross-border transfer's coordinator sends for it; none for
/// a same-region transfer.
pub(super) fn prepare_of(view: &TransferView) -> Option<PrepareMessage> {
    if view.corridor.is_same_region() {
        return None;
    }
    Some(PrepareMessage {
        transfer: view.id.clone(),
        corridor: view.corridor.clone(),
        source: view.priced.source,
        destination: view.priced.destination,
        rate: view.priced.rate,
        payee: view.payee.partner.clone(),
        merchant: view.payee.merchant.clone(),
        payer_token: view.payer_token.clone(),
        deadline: view.deadline?,
    })
}
