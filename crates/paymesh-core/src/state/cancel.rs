//! Cancels: a payer partner takes back a committed payment it made, whole,
//! within the region's cancel window, unless any of it was refunded.
//!
//! A cancel is a refund the payer asks for: the refund of the whole
//! payment, on the payee partner's behalf, under the payee's key
//! `cancel/<payment>` (so a payment is cancelled once), coordinated by the
//! payee's region as every refund is. It is an ordinary ledger movement,
//! never an edit of the payment.
//!
//! * Within a region the payer's and the payee's regions are one: the
//!   refund posts at once, in the command that asks.
//! * Across regions the payer's region sends a [`CancelRequest`] to the
//!   payee's region, retried until it answers like a Prepare: PREPARED once
//!   that region started the refund, REJECTED with why not (the window,
//!   an earlier refund, the payee's position). The refund then reaches the
//!   payer's region as any refund's Prepare, and its commit is the payer's
//!   `Refunded` event. Until the outcome is known, the payer's region keeps
//!   a [`PendingCancel`]; a refusal, or the refund aborting, is the payer's
//!   `CancelRefused` event.
//!
//! The window is judged at the instant the payer asked, on both sides, so
//! a request delayed between regions is not refused for the delay.

use super::*;
use crate::command::CancelRequest;
use crate::outcome::{CancelState, CancelView};

/// The key a cancel of `transfer` is recorded under, the payer's and the
/// payee's.
fn cancel_key(transfer: &TransferId) -> OrReject<IdempotencyKey> {
    IdempotencyKey::new(format!("cancel/{transfer}")).map_err(|_| RejectCode::TransferNotFound)
}

/// The answer to a cancel request that an idempotency record holds.
fn recorded_reply(outcome: &Outcome) -> PrepareReply {
    match outcome {
        Outcome::Refund(view) if view.state == CoordinatorState::Aborted => {
            PrepareReply::Rejected(view.reason.unwrap_or(RejectCode::ProtocolViolation))
        }
        Outcome::Refund(_) => PrepareReply::Prepared,
        Outcome::Rejected(code) => PrepareReply::Rejected(*code),
        _ => PrepareReply::Rejected(RejectCode::ProtocolViolation),
    }
}

impl State {
    /// A payer partner's cancel of its payment `transfer`.
    pub(super) fn cancel_transfer(
        &mut self,
        partner: &PartnerId,
        transfer: &TransferId,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<Outcome> {
        let payer = self.partners.get(partner).ok_or(RejectCode::PartnerNotFound)?;
        if payer.status == BusinessStatus::Suspended {
            return Err(RejectCode::PartnerSuspended);
        }
        let key = cancel_key(transfer)?;
        if let Some(record) = self.recorded(partner, &key, recall) {
            return Ok(record.outcome);
        }
        // Another partner's payment is not found, as an unknown one is.
        let original = self.coordinated(transfer).cloned().or_else(|| recall.transfer(transfer));
        let view = original.filter(|t| &t.view.partner == partner).ok_or(RejectCode::TransferNotFound)?.view;
        if view.state != CoordinatorState::Committed {
            return Err(RejectCode::TransferNotCommitted);
        }
        if now >= view.updated_at.plus_ms(self.settings.cancel_window_ms()) {
            return Err(RejectCode::CancelWindowClosed);
        }
        if self.refund_seen(transfer, recall) {
            return Err(RejectCode::AlreadyRefunded);
        }
        let region = view.corridor.destination_region.clone();
        let cancel = if view.corridor.is_same_region() {
            let request = RefundRequest {
                partner: view.payee.partner.clone(),
                idempotency_key: key.clone(),
                transfer: transfer.clone(),
                amount: view.priced.destination,
            };
            let admissible = self.check_refund_as_payer(&request, now, recall)?;
            let Outcome::Refund(refund) = self.record_refund(&request, admissible, now, recall) else {
                unreachable!("a refund records a refund");
            };
            let committed = refund.state == CoordinatorState::Committed;
            CancelView {
                id: refund.id.clone(),
                partner: partner.clone(),
                original: transfer.clone(),
                state: if committed { CancelState::Refunded } else { CancelState::Refused },
                credited: committed.then_some(refund.credited),
                reason: refund.reason,
                requested_at: now,
            }
        } else {
            // The payee's region must have applied the commit first: until
            // it acknowledged the decision, the payment is still in flight
            // between the regions, and nothing is recorded (ask again).
            if self.outbox.contains_key(&(region.clone(), transfer.clone())) {
                return Err(RejectCode::TransferNotCommitted);
            }
            let id = TransferId::new(self.region.clone(), self.next_transfer);
            self.next_transfer += 1;
            let request = CancelRequest {
                cancel: id.clone(),
                original: transfer.clone(),
                corridor: view.corridor.clone(),
                source: view.priced.source,
                destination: view.priced.destination,
                payer_token: view.payer_token,
                requested_at: now,
            };
            self.outbox.insert((region.clone(), id.clone()), OutboxMessage::RequestCancel(request));
            let pending = PendingCancel {
                partner: partner.clone(),
                original: transfer.clone(),
                region,
                principal: view.priced.source,
                accepted_at: None,
            };
            self.cancels.insert(id.clone(), pending);
            CancelView {
                id,
                partner: partner.clone(),
                original: transfer.clone(),
                state: CancelState::Requested,
                credited: None,
                reason: None,
                requested_at: now,
            }
        };
        let outcome = Outcome::Cancel(Arc::new(cancel));
        self.record_key(partner, key, CancelRequest::fingerprint_of(transfer), outcome.clone(), now);
        Ok(outcome)
    }

    /// The idempotency record under `key`, of this batch or history.
    pub(super) fn recorded(
        &self,
        partner: &PartnerId,
        key: &IdempotencyKey,
        recall: &dyn Recall,
    ) -> Option<IdempotencyRecord> {
        self.idempotency.get(&(partner.clone(), key.clone())).cloned().or_else(|| recall.idempotency(partner, key))
    }

    /// Whether any refund of `transfer` committed, or one is in flight on
    /// either side.
    fn refund_seen(&self, transfer: &TransferId, recall: &dyn Recall) -> bool {
        self.refunded_so_far(transfer, recall).is_some()
            || self.refunds.values().any(|r| &r.view.original == transfer)
            || self.refund_participations.values().any(|p| &p.prepare.original == transfer)
    }

    /// The payee's region: another region's payer asks to cancel a payment
    /// paid to a payee here.
    pub(super) fn request_cancel(
        &mut self,
        message: &CancelRequest,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> PrepareReply {
        let origin = message.original.origin();
        if message.cancel.origin() != origin || origin == &self.region {
            return PrepareReply::Rejected(RejectCode::RegionMismatch);
        }
        if message.requested_at > now.plus_ms(PREPARE_DEADLINE_AHEAD_MAX_MS) {
            return PrepareReply::Rejected(RejectCode::ProtocolViolation);
        }
        let Some(paid) = self.paid(&message.original, recall) else {
            return PrepareReply::Rejected(RejectCode::TransferNotFound);
        };
        if &paid.payer_region != origin {
            return PrepareReply::Rejected(RejectCode::RegionMismatch);
        }
        if paid.payer_token != message.payer_token
            || paid.destination != message.destination
            || paid.source != message.source
            || message.corridor.destination_region != self.region
        {
            return PrepareReply::Rejected(RejectCode::ProtocolViolation);
        }
        let Ok(key) = cancel_key(&message.original) else {
            return PrepareReply::Rejected(RejectCode::TransferNotFound);
        };
        // Delivered again: the first answer, whatever changed since.
        if let Some(record) = self.recorded(&paid.payee, &key, recall) {
            return recorded_reply(&record.outcome);
        }
        let request = RefundRequest {
            partner: paid.payee.clone(),
            idempotency_key: key.clone(),
            transfer: message.original.clone(),
            amount: paid.destination,
        };
        let started = if !paid.committed {
            Err(RejectCode::TransferNotCommitted)
        } else if message.requested_at >= paid.finished_at.plus_ms(self.settings.cancel_window_ms()) {
            Err(RejectCode::CancelWindowClosed)
        } else if self.refund_seen(&message.original, recall) {
            Err(RejectCode::AlreadyRefunded)
        } else {
            self.check_refund_as_payer(&request, now, recall)
                .map(|admissible| self.record_refund(&request, admissible, now, recall))
        };
        match started {
            Ok(outcome) => recorded_reply(&outcome),
            Err(code) => {
                // A refusal is recorded too: a request delivered again gets it.
                let outcome = Outcome::Rejected(code);
                self.record_key(&paid.payee, key, request.fingerprint(), outcome, now);
                PrepareReply::Rejected(code)
            }
        }
    }

    /// Whether `id` names a cancel this region's payer is waiting on.
    pub(super) fn awaits_cancel(&self, id: &TransferId) -> bool {
        self.cancels.contains_key(id)
    }

    /// The payee region's answer to a payer's cancel.
    pub(super) fn cancel_replied(&mut self, id: &TransferId, reply: PrepareReply, now: Timestamp) -> Outcome {
        let Some(mut pending) = self.cancels.get(id).cloned() else { return Outcome::Done };
        if pending.accepted_at.is_some() {
            return Outcome::Done;
        }
        self.outbox.remove(&(pending.region.clone(), id.clone()));
        match reply {
            // A credit in the answer is not a cancel's; the refund the
            // payee's region started carries the cancel out either way.
            PrepareReply::Prepared | PrepareReply::PreparedCredit(_) => {
                pending.accepted_at = Some(now);
                self.cancels.insert(id.clone(), pending);
            }
            PrepareReply::Rejected(code) => self.finish_cancel(id, Some(code), now),
        }
        Outcome::Done
    }

    /// The refund of payment `original` reached the payer's region in its
    /// final state here (`refused`: why it did not credit the payer): the
    /// outcome of a cancel waiting on it.
    pub(super) fn cancel_refund_finished(
        &mut self,
        original: &TransferId,
        refused: Option<RejectCode>,
        now: Timestamp,
    ) {
        if self.cancels.is_empty() {
            return;
        }
        let waiting = self.cancels.iter().find(|(_, c)| &c.original == original).map(|(id, _)| id.clone());
        if let Some(id) = waiting {
            self.finish_cancel(&id, refused, now);
        }
    }

    /// A cancel's outcome is known: forget it (and its request, if it
    /// still waits), and tell the payer when it failed. Its success is the
    /// refund's own `Refunded` event.
    fn finish_cancel(&mut self, id: &TransferId, refused: Option<RejectCode>, now: Timestamp) {
        let Some(pending) = self.cancels.remove(id) else { return };
        self.outbox.remove(&(pending.region.clone(), id.clone()));
        if let Some(code) = refused {
            let (partner, original) = (&pending.partner, &pending.original);
            self.push_event(partner, now, original, EventKind::CancelRefused, pending.principal, Some(code));
        }
    }

    /// Cancels accepted so long ago that their refund can no longer reach
    /// this region (its Prepare's deadline would have passed) and none is
    /// prepared here: the refund aborted before it got here. At most
    /// `budget` of them.
    pub(super) fn expire_cancels(&mut self, now: Timestamp, budget: &mut usize) -> usize {
        let stale: Vec<TransferId> = self
            .cancels
            .iter()
            .filter(|(_, c)| c.accepted_at.is_some_and(|at| at.plus_ms(PREPARE_DEADLINE_AHEAD_MAX_MS) < now))
            .filter(|(_, c)| !self.refund_participations.values().any(|p| p.prepare.original == c.original))
            .map(|(id, _)| id.clone())
            .take(*budget)
            .collect();
        *budget -= stale.len();
        for id in &stale {
            self.finish_cancel(id, Some(RejectCode::DeadlineExceeded), now);
        }
        stale.len()
    }

    /// Whether a cancel waits past the time its refund could arrive.
    pub(super) fn cancels_due(&self, now: Timestamp) -> bool {
        self.cancels.values().any(|c| c.accepted_at.is_some_and(|at| at.plus_ms(PREPARE_DEADLINE_AHEAD_MAX_MS) < now))
    }
}
