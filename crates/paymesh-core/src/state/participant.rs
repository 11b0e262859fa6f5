//! The payee side of a cross-border transfer: a Prepare from the paying
//! region reserves the payout, and its decision commits or voids it.

use super::*;

impl State {
    pub(super) fn prepare(&mut self, message: &PrepareMessage, now: Timestamp, recall: &dyn Recall) -> PrepareReply {
        let id = &message.transfer;
        if let Some(existing) = self.participations.get(id).cloned().or_else(|| recall_participation(recall, id, now)) {
            // Delivered again or late: answer from the record, change nothing.
            let step = step_participant(id, Some(existing.state), ParticipantEvent::Prepare);
            assert_eq!(step, Step::Unchanged, "transfer {id}: a Prepare again moves nothing");
            if existing.prepare.as_ref().is_some_and(|recorded| recorded != message) {
                // The same transfer id with other content: the coordinator broke the protocol.
                return PrepareReply::Rejected(RejectCode::ProtocolViolation);
            }
            return match existing.state {
                ParticipantState::Prepared | ParticipantState::Committed => PrepareReply::Prepared,
                ParticipantState::Aborted => {
                    PrepareReply::Rejected(existing.reason.unwrap_or(RejectCode::ProtocolViolation))
                }
                ParticipantState::Tombstone => PrepareReply::Rejected(RejectCode::AbortedBeforePrepare),
            };
        }
        let (event, reason) = match self.reserve_payout(message, now) {
            Ok(()) => (ParticipantEvent::Prepare, None),
            Err(code) => (ParticipantEvent::PrepareRefused, Some(code)),
        };
        let Step::Move(state) = step_participant(id, None, event) else {
            panic!("transfer {id}: a first Prepare records a participation");
        };
        self.journal.push(Record::Listed { partner: message.payee.clone(), transfer: id.clone(), at: now });
        let participation =
            Participation { state, reason, prepare: Some(message.clone()), created_at: now, updated_at: now };
        if state.is_final() {
            self.journal
                .push(Record::Participation { transfer: id.clone(), participation: Box::new(participation.clone()) });
        }
        self.participations.insert(id.clone(), participation);
        match reason {
            None => PrepareReply::Prepared,
            Some(code) => PrepareReply::Rejected(code),
        }
    }

    /// Validate a first Prepare and reserve the payee's credit.
    ///
    /// A first Prepare arriving at or after its deadline is refused: the
    /// coordinator aborts such a transfer anyway, and the rule also refuses a
    /// duplicate delayed beyond tombstone retention, which would otherwise
    /// hold a credit pending that no decision will ever resolve. A deadline
    /// more than [`PREPARE_DEADLINE_AHEAD_MAX_MS`] ahead is a protocol
    /// violation: no coordinator sets one, and honouring it would let another
    /// region keep this one's credit pending for as long as it liked.
    pub(super) fn reserve_payout(&mut self, message: &PrepareMessage, now: Timestamp) -> OrReject<()> {
        if now >= message.deadline {
            return Err(RejectCode::DeadlineExceeded);
        }
        if message.deadline > now.plus_ms(PREPARE_DEADLINE_AHEAD_MAX_MS) {
            return Err(RejectCode::ProtocolViolation);
        }
        let corridor = &message.corridor;
        if corridor.destination_region != self.region
            || corridor.source_region == self.region
            || message.transfer.origin() != &corridor.source_region
        {
            return Err(RejectCode::RegionMismatch);
        }
        if message.destination.currency() != corridor.destination_currency
            || message.source.currency() != corridor.source_currency
        {
            return Err(RejectCode::CurrencyMismatch);
        }
        let payee_account = self.check_payee(&message.payee, corridor.destination_currency)?;
        let clearing = self
            .open_mesh_account(AccountOwner::Clearing(corridor.source_region.clone()), corridor.destination_currency);
        let op = Op::Reserve {
            id: leg(&message.transfer, Leg::Payout),
            debit: clearing,
            credit: payee_account,
            amount: message.destination,
        };
        self.ledger.apply(&[op], now).map_err(|refused| ledger_code(refused.reason))
    }

    pub(super) fn decide(
        &mut self,
        id: &TransferId,
        decision: Decision,
        window: u64,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<Outcome> {
        if let Some(refund) = self.refund_participation_of(id, now, recall) {
            return self.decide_refund(id, refund, decision, window, now, recall);
        }
        let current = match self.participations.get(id) {
            Some(participation) => Some(participation.state),
            None => recall_participation(recall, id, now).map(|p| p.state),
        };
        let event = match decision {
            Decision::Commit => ParticipantEvent::Commit,
            Decision::Abort => ParticipantEvent::Abort,
        };
        let to = match participant_step(current, event) {
            Err(_) => return Err(RejectCode::ProtocolViolation),
            Ok(Step::Unchanged) => return Ok(Outcome::Acked),
            Ok(Step::Move(to)) => to,
        };
        match to {
            ParticipantState::Tombstone => {
                let tombstone =
                    Participation { state: to, reason: None, prepare: None, created_at: now, updated_at: now };
                self.journal
                    .push(Record::Participation { transfer: id.clone(), participation: Box::new(tombstone.clone()) });
                self.participations.insert(id.clone(), tombstone);
            }
            ParticipantState::Committed | ParticipantState::Aborted => {
                let post = to == ParticipantState::Committed;
                let op = if post {
                    Op::PostPending { id: leg(id, Leg::Payout) }
                } else {
                    Op::VoidPending { id: leg(id, Leg::Payout) }
                };
                self.ledger.apply(&[op], now).expect("a prepared participation's payout resolves");
                let participation = self.participations.get_mut(id).expect("moved from prepared, so present");
                participation.state = to;
                participation.updated_at = now;
                let finished = participation.clone();
                self.journal
                    .push(Record::Participation { transfer: id.clone(), participation: Box::new(finished.clone()) });
                if post {
                    let prepare = finished.prepare.expect("a prepared participation has its prepare");
                    let key = settlement::payment_key(prepare.source, prepare.destination);
                    self.tally_received(id.origin(), window, key, prepare.source, prepare.destination);
                    self.emit_credit(&prepare, now);
                }
            }
            ParticipantState::Prepared => unreachable!("no decision moves a transfer to prepared"),
        }
        Ok(Outcome::Acked)
    }

    /// A decision to send, made in the open settlement window.
    pub(super) fn decision(&self, id: &TransferId, decision: Decision) -> OutboxMessage {
        OutboxMessage::Decision { transfer: id.clone(), decision, window: self.settlement_window() }
    }

    pub(super) fn emit_credit(&mut self, prepare: &PrepareMessage, now: Timestamp) {
        self.push_event(&prepare.payee, now, &prepare.transfer, EventKind::Credited, prepare.destination, None);
    }

    // ---- housekeeping -----------------------------------------------------------------
}
