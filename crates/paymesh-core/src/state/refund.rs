//! Refunds: a payee partner gives back some or all of a committed payment
//! it received, along the payment's own path.
//!
//! The refund is coordinated by the region of the payee partner who asks
//! (this one). For a payment made within this region it posts at once: the
//! payee's position back into clearing, and from clearing to the payer.
//! For a payment paid from another region, the roles of the payment's two
//! phases swap: this region reserves the payee's debit and sends a
//! [`RefundPrepare`] to the payer's region, which reserves the payer's
//! credit and answers; this region decides, and the decision travels as
//! every decision does. The messages carry no personal data: the payer's
//! region finds the payer in its own record of the payment.
//!
//! What is given back is checked on both sides against what the payment
//! moved: the payee's region never takes back more than the payment's
//! destination amount, the payer's region never credits more than its
//! principal (the fee is not refunded), counting the refunds committed
//! (history's [`RefundTotals`], newest first) and those in flight. A
//! partial refund credits the payer its share of the principal at the
//! payment's own rate (the debited share of the destination amount, rounded
//! down to the source currency's minor unit); the refund that completes the
//! payment credits the rest exactly, so a payment refunded in full gives
//! the payer back its principal to the unit.
//!
//! Unless the payment's corridor says otherwise ([`RefundRate::Current`]):
//! then the payer's region, which owns the corridor and its rates, prices
//! the credit itself at the mid rate of the moment it reserves it, and the
//! principal no longer bounds the credit. Across borders the coordinator
//! asks for its estimate at the payment's rate and the payer's region
//! answers with the credit it reserved ([`PrepareReply::PreparedCredit`]),
//! which both regions then record and count, so the region pair's
//! settlement figures still agree. A payer's cancel is an undo, not a
//! refund: it always gives back the principal.

use super::*;

/// A payment this region can refund: what the refund is checked against.
pub(super) struct Paid {
    /// The payee partner it credited.
    pub(super) payee: PartnerId,
    /// Whether it committed.
    pub(super) committed: bool,
    /// When it reached its final state.
    pub(super) finished_at: Timestamp,
    /// What the payee received.
    pub(super) destination: Money,
    /// What the payer paid, before the fee.
    pub(super) source: Money,
    /// The payer's region.
    pub(super) payer_region: RegionId,
    /// The corridor it was paid along.
    pub(super) corridor: CorridorId,
    /// The payer partner, when the payment was made in this region.
    pub(super) payer: Option<PartnerId>,
    /// The payment's payer token.
    pub(super) payer_token: PayerToken,
}

/// Who asks for a refund: the payment's payee, within the refund window,
/// active and under its cap of transfers in flight; or an operator
/// reversing the payment, whenever history still holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asker {
    Payee,
    Operator,
    /// The payment's payer, cancelling it (the cancel's own checks came
    /// first).
    Payer,
}

/// A refund request that may go ahead: the payment and the two amounts.
pub(super) struct RefundAdmissible {
    paid: Paid,
    credited: Money,
}

/// A finished refund participation history still answers for at `now`.
fn recall_refund_participation(recall: &dyn Recall, id: &TransferId, now: Timestamp) -> Option<RefundParticipation> {
    recall.refund_participation(id).filter(|p| p.updated_at.plus_ms(FINISHED_TRANSFER_RECALL_MS) > now)
}

/// The totals after one more refund.
fn add_totals(done: Option<RefundTotals>, debited: Money, credited: Money) -> RefundTotals {
    let total = |held: Option<Money>, more: Money| {
        held.map_or(Ok(more), |held| held.checked_add(&more)).expect("checked against the payment's amounts")
    };
    RefundTotals {
        debited: total(done.map(|d| d.debited), debited),
        credited: total(done.map(|d| d.credited), credited),
    }
}

/// The sum of `amounts`, in `currency`, or `None` past the currency's bound.
fn sum(currency: Currency, amounts: impl IntoIterator<Item = Money>) -> Option<Money> {
    amounts.into_iter().try_fold(Money::zero(currency), |sum, amount| sum.checked_add(&amount).ok())
}

impl State {
    /// Create a refund for `request`, unless its idempotency key answers it.
    pub(super) fn create_refund(&mut self, request: &RefundRequest, now: Timestamp, recall: &dyn Recall) -> Outcome {
        let fingerprint = request.fingerprint();
        if let KeyLookup::Answered(outcome) =
            self.look_up_key(&request.partner, &request.idempotency_key, fingerprint, now, recall)
        {
            return outcome;
        }
        // As for transfers, a refusal before the refund exists changes
        // nothing and leaves no record under the key.
        match self.check_refund(request, now, recall, Asker::Payee) {
            Ok(admissible) => self.record_refund(request, admissible, now, recall),
            Err(code) => Outcome::Rejected(code),
        }
    }

    /// An operator's reversal of payment `transfer` (see
    /// [`CommandBody::ReverseTransfer`]): a refund of what is left of it,
    /// on its payee's behalf, under the payment's reversal key.
    pub(super) fn reverse_transfer(
        &mut self,
        transfer: &TransferId,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<Outcome> {
        let paid = self.paid(transfer, recall).ok_or(RejectCode::TransferNotFound)?;
        let key = IdempotencyKey::new(format!("reversal/{transfer}")).map_err(|_| RejectCode::TransferNotFound)?;
        // Reversed before: the first reversal's answer, whatever is left now.
        if let Some(record) = self.recorded(&paid.payee, &key, recall) {
            return Ok(record.outcome);
        }
        let done = self.refunded_so_far(transfer, recall).map(|d| d.debited);
        let in_flight = self.refunds.values().filter(|r| &r.view.original == transfer && !r.view.state.is_final());
        let taken = sum(paid.destination.currency(), done.into_iter().chain(in_flight.map(|r| r.view.debited)))
            .ok_or(RejectCode::RefundExceedsOriginal)?;
        let left = paid.destination.checked_sub(&taken).map_err(|_| RejectCode::RefundExceedsOriginal)?;
        if left.is_zero() {
            return Err(RejectCode::RefundExceedsOriginal);
        }
        let request =
            RefundRequest { partner: paid.payee, idempotency_key: key, transfer: transfer.clone(), amount: left };
        let admissible = self.check_refund(&request, now, recall, Asker::Operator)?;
        Ok(self.record_refund(&request, admissible, now, recall))
    }

    /// Start the refund of `request` that [`State::check_refund`] admitted,
    /// and record its answer under the request's key.
    pub(super) fn record_refund(
        &mut self,
        request: &RefundRequest,
        admissible: RefundAdmissible,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> Outcome {
        let fingerprint = request.fingerprint();
        let outcome = Outcome::Refund(Arc::new(self.start_refund(request, admissible, now, recall)));
        self.record_key(&request.partner, request.idempotency_key.clone(), fingerprint, outcome.clone(), now);
        outcome
    }

    /// How a refund request not seen before would be answered without
    /// changing anything: its refusal, if it is refused before the refund
    /// would exist. The leader calls it before proposing.
    pub fn check_refund_request(
        &self,
        request: &RefundRequest,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> Result<(), RejectCode> {
        self.check_refund(request, now, recall, Asker::Payee).map(|_| ())
    }

    /// Check a cancel's refund: the payee's status, role, refund window
    /// and cap are not the payer's to meet.
    pub(super) fn check_refund_as_payer(
        &self,
        request: &RefundRequest,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<RefundAdmissible> {
        self.check_refund(request, now, recall, Asker::Payer)
    }

    fn check_refund(
        &self,
        request: &RefundRequest,
        now: Timestamp,
        recall: &dyn Recall,
        asker: Asker,
    ) -> OrReject<RefundAdmissible> {
        let partner = self.partners.get(&request.partner).ok_or(RejectCode::PartnerNotFound)?;
        if asker == Asker::Payee && partner.status == BusinessStatus::Suspended {
            return Err(RejectCode::PartnerSuspended);
        }
        if asker == Asker::Payee && !partner.config.role.can_receive() {
            return Err(RejectCode::PartnerRoleNotAllowed);
        }
        // Another partner's payment is not found, as an unknown one is.
        let paid = self.paid(&request.transfer, recall).filter(|p| p.payee == request.partner);
        let paid = paid.ok_or(RejectCode::TransferNotFound)?;
        if !paid.committed {
            return Err(RejectCode::TransferNotCommitted);
        }
        if asker == Asker::Payee && now >= paid.finished_at.plus_ms(self.settings.refund_window_ms()) {
            return Err(RejectCode::RefundWindowClosed);
        }
        if request.amount.currency() != paid.destination.currency()
            || request.amount.currency() != partner.config.currency
        {
            return Err(RejectCode::CurrencyMismatch);
        }
        if request.amount.is_zero() {
            return Err(RejectCode::AmountBelowMinimum);
        }
        let done = self.refunded_so_far(&request.transfer, recall);
        let in_flight = self.refunds.values().filter(|r| r.view.original == request.transfer);
        let in_flight: Vec<&Refund> = in_flight.filter(|r| !r.view.state.is_final()).collect();
        let debited = sum(
            paid.destination.currency(),
            done.map(|d| d.debited).into_iter().chain(in_flight.iter().map(|r| r.view.debited)).chain([request.amount]),
        )
        .ok_or(RejectCode::RefundExceedsOriginal)?;
        if debited.units() > paid.destination.units() {
            return Err(RejectCode::RefundExceedsOriginal);
        }
        let credited_before = sum(
            paid.source.currency(),
            done.map(|d| d.credited).into_iter().chain(in_flight.iter().map(|r| r.view.credited)),
        )
        .expect("refunds credited never exceed the principal");
        let share =
            u128::from(request.amount.units()) * u128::from(paid.source.units()) / u128::from(paid.destination.units());
        let share = u64::try_from(share).expect("a share of the principal is below it");
        let share = Money::from_units(share, paid.source.currency()).expect("a share of the principal is below it");
        // The last refund of the payment gives back the rest exactly (none
        // is left when earlier refunds at the current rate gave back more:
        // their share then, which is only the estimate the payer's region
        // prices again).
        let rest = paid.source.checked_sub(&credited_before).ok().filter(|rest| !rest.is_zero());
        let mut credited = match rest {
            Some(rest) if debited == paid.destination => rest,
            _ => share,
        };
        if paid.payer_region == self.region
            && asker != Asker::Payer
            && self.refund_rate(&paid.corridor) == RefundRate::Current
        {
            credited = self.credit_at_current_rate(&paid.corridor, request.amount, now)?;
        }
        if credited.is_zero() {
            return Err(RejectCode::AmountBelowMinimum);
        }
        if paid.payer_region != self.region && asker == Asker::Payee {
            let in_flight = self.partner_usage(&request.partner).transfers_in_flight;
            if in_flight >= self.partner_limits(&request.partner).transfers_in_flight_max {
                return Err(RejectCode::PartnerTransfersExhausted);
            }
        }
        Ok(RefundAdmissible { paid, credited })
    }

    /// What the payer of a payment along `corridor` (a corridor of this
    /// region) is credited for `taken` given back now, under
    /// [`RefundRate::Current`].
    fn credit_at_current_rate(&self, corridor: &CorridorId, taken: Money, now: Timestamp) -> OrReject<Money> {
        self.corridors.get(corridor).ok_or(RejectCode::RateUnavailable)?.refund_credit_now(taken, now)
    }

    /// What this region knows of a payment its partner was paid: a
    /// same-region transfer it coordinated, or its side of another
    /// region's transfer.
    pub(super) fn paid(&self, id: &TransferId, recall: &dyn Recall) -> Option<Paid> {
        let transfer = self.coordinated(id).cloned().or_else(|| recall.transfer(id));
        if let Some(transfer) = transfer {
            let view = transfer.view;
            if !view.corridor.is_same_region() {
                // Paid from here to another region: its payee is not here.
                return None;
            }
            return Some(Paid {
                payee: view.payee.partner,
                committed: view.state == CoordinatorState::Committed,
                finished_at: view.updated_at,
                destination: view.priced.destination,
                source: view.priced.source,
                payer_region: self.region.clone(),
                corridor: view.corridor,
                payer: Some(view.partner),
                payer_token: view.payer_token,
            });
        }
        let participation = self.participations.get(id).cloned().or_else(|| recall.participation(id))?;
        let prepare = participation.prepare?;
        Some(Paid {
            payee: prepare.payee,
            committed: participation.state == ParticipantState::Committed,
            finished_at: participation.updated_at,
            destination: prepare.destination,
            source: prepare.source,
            payer_region: prepare.corridor.source_region.clone(),
            corridor: prepare.corridor,
            payer: None,
            payer_token: prepare.payer_token,
        })
    }

    /// What the committed refunds of a payment gave back, as of now in
    /// this batch.
    pub(super) fn refunded_so_far(&self, transfer: &TransferId, recall: &dyn Recall) -> Option<RefundTotals> {
        self.refunded.get(transfer).copied().or_else(|| recall.refunded(transfer))
    }

    /// Record one more committed refund of `transfer`.
    fn count_refunded(&mut self, transfer: &TransferId, debited: Money, credited: Money, recall: &dyn Recall) {
        let totals = add_totals(self.refunded_so_far(transfer, recall), debited, credited);
        self.refunded.insert(transfer.clone(), totals);
        self.journal.push(Record::Refunded { transfer: transfer.clone(), totals });
    }

    fn start_refund(
        &mut self,
        request: &RefundRequest,
        admissible: RefundAdmissible,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> RefundView {
        let RefundAdmissible { paid, credited } = admissible;
        let id = TransferId::new(self.region.clone(), self.next_transfer);
        self.next_transfer += 1;
        self.journal.push(Record::Listed { partner: request.partner.clone(), transfer: id.clone(), at: now });
        let mut refund = Refund {
            view: RefundView {
                id: id.clone(),
                partner: request.partner.clone(),
                idempotency_key: request.idempotency_key.clone(),
                original: request.transfer.clone(),
                debited: request.amount,
                credited,
                state: CoordinatorState::Received,
                reason: None,
                created_at: now,
                updated_at: now,
                deadline: None,
            },
            payer_region: paid.payer_region.clone(),
            payer: paid.payer.clone(),
        };
        let payee_account = AccountId::new(AccountOwner::Partner(request.partner.clone()), request.amount.currency());
        let clearing =
            self.open_mesh_account(AccountOwner::Clearing(paid.payer_region.clone()), request.amount.currency());
        let payee_leg = |post: bool| {
            let id = leg(&id, Leg::Refund);
            let (debit, credit, amount) = (payee_account.clone(), clearing.clone(), request.amount);
            if post {
                Op::Post { id, debit, credit, amount }
            } else {
                Op::Reserve { id, debit, credit, amount }
            }
        };
        match paid.payer {
            Some(payer) => {
                self.journal.push(Record::Listed { partner: payer.clone(), transfer: id.clone(), at: now });
                let back = self.open_mesh_account(AccountOwner::Clearing(self.region.clone()), credited.currency());
                let payer_account = AccountId::new(AccountOwner::Partner(payer.clone()), credited.currency());
                let ops = [
                    payee_leg(true),
                    Op::Post { id: leg(&id, Leg::RefundPayout), debit: back, credit: payer_account, amount: credited },
                ];
                match self.ledger.apply(&ops, now) {
                    Ok(()) => {
                        step_refund(&mut refund, CoordinatorEvent::PostLocal, now);
                        self.count_refunded(&request.transfer, request.amount, credited, recall);
                        self.push_event(&payer, now, &request.transfer, EventKind::Refunded, credited, None);
                    }
                    Err(refused) => {
                        refund.view.reason = Some(ledger_code(refused.reason));
                        step_refund(&mut refund, CoordinatorEvent::ReserveRejected, now);
                    }
                }
            }
            None => match self.ledger.apply(&[payee_leg(false)], now) {
                Ok(()) => {
                    step_refund(&mut refund, CoordinatorEvent::Reserve, now);
                    self.use_partner(&request.partner, |u| u.transfers_in_flight += 1);
                    let deadline = now.plus_ms(TRANSFER_PREPARE_DEADLINE_MS);
                    refund.view.deadline = Some(deadline);
                    self.deadlines.insert((deadline, id.clone()));
                    let message = RefundPrepare {
                        refund: id.clone(),
                        original: request.transfer.clone(),
                        debited: request.amount,
                        credited,
                        requested_by: request.partner.clone(),
                        payer_token: paid.payer_token,
                        deadline,
                    };
                    self.outbox.insert((paid.payer_region, id.clone()), OutboxMessage::PrepareRefund(message));
                }
                Err(refused) => {
                    refund.view.reason = Some(ledger_code(refused.reason));
                    step_refund(&mut refund, CoordinatorEvent::ReserveRejected, now);
                }
            },
        }
        if refund.view.state.is_final() {
            self.finish_refund(&refund, now);
        }
        let view = refund.view.clone();
        self.refunds.insert(id, refund);
        view
    }

    /// Record a refund that reached its final state: its totals (when it
    /// committed), its record and the requester's event.
    fn finish_refund(&mut self, refund: &Refund, now: Timestamp) {
        let view = &refund.view;
        debug_assert!(view.state.is_final());
        self.journal.push(Record::Refund(Box::new(refund.clone())));
        if view.state == CoordinatorState::Committed {
            self.push_event(&view.partner, now, &view.id, EventKind::RefundDebited, view.debited, None);
        } else {
            self.push_event(&view.partner, now, &view.id, EventKind::RefundAborted, view.debited, view.reason);
        }
    }

    /// Whether `id` names a refund this region coordinates (in flight, or
    /// finished and still recalled): a reply about it is the refund's.
    pub(super) fn coordinates_refund(&self, id: &TransferId, recall: &dyn Recall) -> bool {
        self.coordinated(id).is_none() && (self.refunds.contains_key(id) || recall.refund(id).is_some())
    }

    /// The payer region's answer to a refund's Prepare.
    pub(super) fn refund_prepare_replied(
        &mut self,
        id: &TransferId,
        reply: PrepareReply,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<Outcome> {
        let mut refund = match self.refunds.get(id) {
            Some(refund) => refund.clone(),
            None => recall
                .refund(id)
                .filter(|r| r.view.updated_at.plus_ms(FINISHED_TRANSFER_RECALL_MS) > now)
                .ok_or(RejectCode::TransferNotFound)?,
        };
        let Some(event) = answer_event(refund.view.state, reply)? else { return Ok(Outcome::Done) };
        step_refund(&mut refund, event, now);
        self.use_partner(&refund.view.partner, |u| u.transfers_in_flight -= 1);
        let deadline = refund.view.deadline.expect("a reserved refund has a deadline");
        self.deadlines.remove(&(deadline, id.clone()));
        let key = (refund.payer_region.clone(), id.clone());
        // A credit the payer's region priced itself must be in the
        // payment's source currency and not nothing.
        let priced = match reply {
            PrepareReply::PreparedCredit(credit) => Some(credit),
            _ => None,
        };
        let sound = priced.is_none_or(|c| c.currency() == refund.view.credited.currency() && !c.is_zero());
        match reply {
            PrepareReply::Prepared | PrepareReply::PreparedCredit(_) if now < deadline && sound => {
                if let Some(credit) = priced {
                    refund.view.credited = credit;
                }
                step_refund(&mut refund, CoordinatorEvent::DecideCommit, now);
                self.ledger.apply(&[Op::PostPending { id: leg(id, Leg::Refund) }], now).expect("a reserved leg posts");
                let view = &refund.view;
                let (debited, credited) = (view.debited, view.credited);
                self.count_refunded(&view.original.clone(), debited, credited, recall);
                let window = self.tally_sent(&key.0, settlement::refund_key(credited, debited), credited, debited);
                self.outbox
                    .insert(key, OutboxMessage::Decision { transfer: id.clone(), decision: Decision::Commit, window });
            }
            PrepareReply::Prepared | PrepareReply::PreparedCredit(_) => {
                // Late: the credit the payer's region priced is still what
                // its record holds, aborted.
                if let Some(credit) = priced.filter(|_| sound) {
                    refund.view.credited = credit;
                }
                let reason = if sound { RejectCode::DeadlineExceeded } else { RejectCode::ProtocolViolation };
                refund.view.reason = Some(reason);
                step_refund(&mut refund, CoordinatorEvent::DecideAbort, now);
                self.void_refund(&refund, now);
                self.outbox.insert(key, self.decision(id, Decision::Abort));
            }
            PrepareReply::Rejected(code) => {
                refund.view.reason = Some(code);
                self.void_refund(&refund, now);
                self.outbox.remove(&key);
            }
        }
        self.finish_refund(&refund, now);
        self.refunds.insert(id.clone(), refund);
        Ok(Outcome::Done)
    }

    fn void_refund(&mut self, refund: &Refund, now: Timestamp) {
        let op = Op::VoidPending { id: leg(&refund.view.id, Leg::Refund) };
        self.ledger.apply(&[op], now).expect("a reserved refund's leg voids");
    }

    /// A reserved refund past its deadline: abort it and tell the payer's
    /// region (which may have prepared meanwhile).
    pub(super) fn expire_refund(&mut self, id: &TransferId, now: Timestamp) {
        let mut refund = self.refunds[id].clone();
        refund.view.reason = Some(RejectCode::DeadlineExceeded);
        step_refund(&mut refund, CoordinatorEvent::DeadlineExpired, now);
        self.use_partner(&refund.view.partner, |u| u.transfers_in_flight -= 1);
        self.void_refund(&refund, now);
        let key = (refund.payer_region.clone(), id.clone());
        self.outbox.insert(key, self.decision(id, Decision::Abort));
        self.finish_refund(&refund, now);
        self.refunds.insert(id.clone(), refund);
    }

    // ---- the payer's region: another region's refund of a payment made here ----

    /// Prepare the payer's credit of a refund another region coordinates.
    pub(super) fn prepare_refund(
        &mut self,
        message: &RefundPrepare,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> PrepareReply {
        let id = &message.refund;
        let existing =
            self.refund_participations.get(id).cloned().or_else(|| recall_refund_participation(recall, id, now));
        if let Some(existing) = existing {
            // Delivered again or late: answer from the record (which holds
            // the credit as this region priced it).
            if (RefundPrepare { credited: existing.prepare.credited, ..message.clone() }) != existing.prepare {
                return PrepareReply::Rejected(RejectCode::ProtocolViolation);
            }
            return match existing.state {
                ParticipantState::Prepared | ParticipantState::Committed => {
                    prepared_reply(message, existing.prepare.credited)
                }
                ParticipantState::Aborted | ParticipantState::Tombstone => {
                    PrepareReply::Rejected(existing.reason.unwrap_or(RejectCode::ProtocolViolation))
                }
            };
        }
        // An abort that overtook this Prepare left a tombstone among the
        // payments' participations (it could not tell a refund's id).
        if let Some(other) = self.participations.get(id).cloned().or_else(|| recall_participation(recall, id, now)) {
            return PrepareReply::Rejected(match other.state {
                ParticipantState::Tombstone => RejectCode::AbortedBeforePrepare,
                _ => RejectCode::ProtocolViolation,
            });
        }
        // The credit recorded: the one reserved, or on a refusal the one
        // asked.
        let (payer, event, reason, credited) = match self.reserve_refund_credit(message, now, recall) {
            Ok((payer, credited)) => (payer, ParticipantEvent::Prepare, None, credited),
            Err((payer, code)) => (payer, ParticipantEvent::PrepareRefused, Some(code), message.credited),
        };
        let Step::Move(state) = step_participant(id, None, event) else {
            panic!("refund {id}: a first Prepare records a participation");
        };
        if let Some(payer) = &payer {
            self.journal.push(Record::Listed { partner: payer.clone(), transfer: id.clone(), at: now });
        }
        let prepare = RefundPrepare { credited, ..message.clone() };
        let participation = RefundParticipation { state, reason, prepare, payer, created_at: now, updated_at: now };
        if state.is_final() {
            self.journal.push(Record::RefundParticipation {
                refund: id.clone(),
                participation: Box::new(participation.clone()),
            });
        }
        self.refund_participations.insert(id.clone(), participation);
        if let Some(code) = reason {
            self.cancel_refund_finished(&message.original, Some(code), now);
        }
        match reason {
            None => prepared_reply(message, credited),
            Some(code) => PrepareReply::Rejected(code),
        }
    }

    /// Check a refund's first Prepare against this region's record of the
    /// payment and reserve the payer's credit: the payer, or (with the
    /// payer, when the payment was found) why not. With the payer, the
    /// credit reserved: the one asked, or the one the corridor's current
    /// rate gives.
    fn reserve_refund_credit(
        &mut self,
        message: &RefundPrepare,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> Result<(Option<PartnerId>, Money), (Option<PartnerId>, RejectCode)> {
        if now >= message.deadline {
            return Err((None, RejectCode::DeadlineExceeded));
        }
        if message.deadline > now.plus_ms(PREPARE_DEADLINE_AHEAD_MAX_MS) {
            return Err((None, RejectCode::ProtocolViolation));
        }
        let coordinator = message.refund.origin();
        if coordinator == &self.region || message.original.origin() != &self.region {
            return Err((None, RejectCode::RegionMismatch));
        }
        let original = self.coordinated(&message.original).cloned().or_else(|| recall.transfer(&message.original));
        let view = original.ok_or((None, RejectCode::TransferNotFound))?.view;
        let payer = Some(view.partner.clone());
        let refuse = |code| Err((payer.clone(), code));
        if &view.corridor.destination_region != coordinator {
            return refuse(RejectCode::RegionMismatch);
        }
        if view.payer_token != message.payer_token {
            return refuse(RejectCode::ProtocolViolation);
        }
        if view.state != CoordinatorState::Committed {
            return refuse(RejectCode::TransferNotCommitted);
        }
        let (source, destination) = (view.priced.source, view.priced.destination);
        if message.credited.currency() != source.currency() || message.debited.currency() != destination.currency() {
            return refuse(RejectCode::CurrencyMismatch);
        }
        if message.credited.is_zero() || message.debited.is_zero() {
            return refuse(RejectCode::ProtocolViolation);
        }
        // A cancel pending for the payment is what this refund carries
        // out: an undo, at the payment's own rate.
        let cancelling = self.cancels.values().any(|c| c.original == message.original);
        let at_current = self.refund_rate(&view.corridor) == RefundRate::Current && !cancelling;
        let credit = if at_current {
            match self.credit_at_current_rate(&view.corridor, message.debited, now) {
                Ok(credit) if credit.is_zero() => return refuse(RejectCode::AmountBelowMinimum),
                Ok(credit) => credit,
                Err(code) => return refuse(code),
            }
        } else {
            message.credited
        };
        let done = self.refunded_so_far(&message.original, recall);
        let pending: Vec<&RefundPrepare> = self
            .refund_participations
            .values()
            .filter(|p| p.state == ParticipantState::Prepared && p.prepare.original == message.original)
            .map(|p| &p.prepare)
            .collect();
        let credited = sum(
            source.currency(),
            done.map(|d| d.credited).into_iter().chain(pending.iter().map(|p| p.credited)).chain([credit]),
        );
        let debited = sum(
            destination.currency(),
            done.map(|d| d.debited).into_iter().chain(pending.iter().map(|p| p.debited)).chain([message.debited]),
        );
        // At the current rate the principal bounds nothing; what the
        // payee gives back is bounded everywhere.
        if credited.is_none_or(|c| !at_current && c.units() > source.units())
            || debited.is_none_or(|d| d.units() > destination.units())
        {
            return refuse(RejectCode::RefundExceedsOriginal);
        }
        let clearing = self.open_mesh_account(AccountOwner::Clearing(coordinator.clone()), source.currency());
        let op = Op::Reserve {
            id: leg(&message.refund, Leg::RefundPayout),
            debit: clearing,
            credit: AccountId::new(AccountOwner::Partner(view.partner), source.currency()),
            amount: credit,
        };
        match self.ledger.apply(&[op], now) {
            Ok(()) => Ok((payer, credit)),
            Err(refused) => refuse(ledger_code(refused.reason)),
        }
    }

    /// The refund participation `id` names, if it is one (in flight, or
    /// finished and still recalled): a decision about it is the refund's.
    pub(super) fn refund_participation_of(
        &self,
        id: &TransferId,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> Option<RefundParticipation> {
        if self.participations.contains_key(id) {
            return None;
        }
        self.refund_participations.get(id).cloned().or_else(|| recall_refund_participation(recall, id, now))
    }

    /// The coordinator's decision on a refund this region prepared.
    pub(super) fn decide_refund(
        &mut self,
        id: &TransferId,
        existing: RefundParticipation,
        decision: Decision,
        window: u64,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<Outcome> {
        let event = match decision {
            Decision::Commit => ParticipantEvent::Commit,
            Decision::Abort => ParticipantEvent::Abort,
        };
        let to = match participant_step(Some(existing.state), event) {
            Err(_) => return Err(RejectCode::ProtocolViolation),
            Ok(Step::Unchanged) => return Ok(Outcome::Acked),
            Ok(Step::Move(to)) => to,
        };
        let post = to == ParticipantState::Committed;
        if post {
            let prepare = &existing.prepare;
            let key = settlement::refund_key(prepare.credited, prepare.debited);
            self.tally_received(id.origin(), window, key, prepare.credited, prepare.debited);
        }
        let entry = leg(id, Leg::RefundPayout);
        let op = if post { Op::PostPending { id: entry } } else { Op::VoidPending { id: entry } };
        self.ledger.apply(&[op], now).expect("a prepared refund's credit resolves");
        let mut finished = existing;
        finished.state = to;
        finished.updated_at = now;
        if post {
            let prepare = &finished.prepare;
            self.count_refunded(&prepare.original, prepare.debited, prepare.credited, recall);
            let (original, credited) = (prepare.original.clone(), prepare.credited);
            let payer = finished.payer.clone().expect("a prepared refund found its payer");
            self.push_event(&payer, now, &original, EventKind::Refunded, credited, None);
            self.cancel_refund_finished(&original, None, now);
        } else {
            self.cancel_refund_finished(&finished.prepare.original.clone(), Some(RejectCode::DeadlineExceeded), now);
        }
        self.journal
            .push(Record::RefundParticipation { refund: id.clone(), participation: Box::new(finished.clone()) });
        self.refund_participations.insert(id.clone(), finished);
        Ok(Outcome::Acked)
    }
}

/// The answer to a refund's Prepare this region reserved `credited` for:
/// the credit itself when it is not the one asked.
fn prepared_reply(message: &RefundPrepare, credited: Money) -> PrepareReply {
    if credited == message.credited {
        PrepareReply::Prepared
    } else {
        PrepareReply::PreparedCredit(credited)
    }
}

/// Move a refund by an event of this region's own making, which the
/// coordinator's table must allow (a bug otherwise).
fn step_refund(refund: &mut Refund, event: CoordinatorEvent, now: Timestamp) {
    let view = &mut refund.view;
    step_coordinated(&view.id, &mut view.state, &mut view.updated_at, event, now);
}
