//! The paying side: quotes, transfer requests (their idempotency keys,
//! the checks made before a transfer exists), same-region transfers posted
//! at once, and cross-border transfers this region coordinates from their
//! reservation to the payee region's answer and the decision.

use super::*;
use crate::command::{PaymentRequest, QuoteRequest};

impl State {
    /// The partner, if it exists here, is active, and may pay.
    pub(super) fn active_payer(&self, id: &PartnerId) -> OrReject<&Partner> {
        let partner = self.partners.get(id).ok_or(RejectCode::PartnerNotFound)?;
        if partner.status == BusinessStatus::Suspended {
            return Err(RejectCode::PartnerSuspended);
        }
        if !partner.config.role.can_pay() {
            return Err(RejectCode::PartnerRoleNotAllowed);
        }
        Ok(partner)
    }

    /// Whether this region can credit `payee`: the partner is here, active, may
    /// receive, and keeps its position in the payee's currency. Used for the
    /// payee side of both same-region transfers and cross-border prepares.
    pub(super) fn check_payee(&self, payee: &PartnerId, currency: Currency) -> OrReject<AccountId> {
        let partner = self.partners.get(payee).ok_or(RejectCode::PayeeNotFound)?;
        if partner.status == BusinessStatus::Suspended {
            return Err(RejectCode::PartnerSuspended);
        }
        if !partner.config.role.can_receive() {
            return Err(RejectCode::PartnerRoleNotAllowed);
        }
        if partner.config.currency != currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        Ok(Self::position_account(&partner.config))
    }

    /// The quote `partner_id` would get for `amount` to the payee `qr`
    /// names at `now`, or why it would be refused, without changing anything.
    /// [`State::apply`] creates quotes through it, and the leader calls it
    /// before proposing, so a refused quote costs no log entry.
    pub fn check_quote(
        &self,
        partner_id: &PartnerId,
        qr: &QrPayload,
        amount: QuoteAmount,
        now: Timestamp,
    ) -> OrReject<Quote> {
        let partner = self.active_payer(partner_id)?;
        let payee = self.directory.resolve(qr).ok_or(RejectCode::PayeeNotFound)?;
        let corridor_id = CorridorId {
            source_region: self.region.clone(),
            source_currency: partner.config.currency,
            destination_region: payee.region.clone(),
            destination_currency: payee.currency,
        };
        let corridor = self.corridors.get(&corridor_id).ok_or(RejectCode::CorridorNotFound)?;
        if corridor_id.is_same_region() {
            self.check_payee(&payee.partner, payee.currency)?;
        }
        let priced = corridor.price(amount, now)?;
        if self.quotes.len() >= QUOTES_OUTSTANDING_MAX {
            return Err(RejectCode::CapacityExceeded);
        }
        let held = self.partner_usage(partner_id).quotes_outstanding;
        if held >= self.partner_limits(partner_id).quotes_outstanding_max {
            return Err(RejectCode::PartnerQuotesExhausted);
        }
        let mut expires_at = now.plus_ms(QUOTE_TTL_MS);
        if let Some(fx) = corridor.mid_rate(now) {
            expires_at = expires_at.min(fx.valid_until());
        }
        Ok(Quote {
            id: QuoteId::new(self.region.clone(), self.next_quote),
            partner: partner_id.clone(),
            payee,
            corridor: corridor_id,
            priced,
            created_at: now,
            expires_at,
        })
    }

    pub(super) fn create_quote(
        &mut self,
        partner_id: &PartnerId,
        qr: &QrPayload,
        amount: QuoteAmount,
        now: Timestamp,
    ) -> OrReject<Quote> {
        let quote = self.check_quote(partner_id, qr, amount, now)?;
        self.next_quote += 1;
        self.quote_expiry.insert((quote.expires_at, quote.id.clone()));
        self.quotes.insert(quote.id.clone(), QuoteRecord { quote: quote.clone(), used: false });
        self.use_partner(partner_id, |u| u.quotes_outstanding += 1);
        Ok(quote)
    }

    /// A quote under the partner's idempotency key: its key's record
    /// answers a retry with the first quote (used or expired since, it is
    /// still the one this key made); otherwise priced and kept as
    /// [`State::create_quote`] does, and recorded under the key. A refusal
    /// records nothing.
    pub(super) fn create_keyed_quote(
        &mut self,
        request: &QuoteRequest,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> Outcome {
        let fingerprint = request.fingerprint();
        if let KeyLookup::Answered(outcome) =
            self.look_up_key(&request.partner, &request.idempotency_key, fingerprint, now, recall)
        {
            return outcome;
        }
        match self.create_quote(&request.partner, &request.payee, request.amount, now) {
            Ok(quote) => {
                let outcome = Outcome::Quote(Arc::new(quote));
                self.record_key(&request.partner, request.idempotency_key.clone(), fingerprint, outcome.clone(), now);
                outcome
            }
            Err(code) => Outcome::Rejected(code),
        }
    }

    /// Create a transfer for `request`, unless its key's record answers it;
    /// `fresh` when the key is known to have no record in history before
    /// the batches [`RecentKeys`] holds (the leader's word, vouched for).
    pub(super) fn create_transfer(
        &mut self,
        request: &TransferRequest,
        now: Timestamp,
        recall: &dyn Recall,
        fresh: bool,
    ) -> Outcome {
        let key = (request.partner.clone(), request.idempotency_key.clone());
        let recall = self.key_recall(&key, recall, fresh);
        if let Some(answer) = self.replay_request(request, now, recall) {
            return answer;
        }
        let fingerprint = request.fingerprint();
        // A request refused before its transfer would exist changes nothing
        // and leaves no idempotency record: the leader answers these without
        // proposing them, and the state machine gives the same answer.
        let admissible = match self.check_transfer(request, now) {
            Ok(admissible) => admissible,
            Err(code) => return Outcome::Rejected(code),
        };
        // The quote is used: from here on the transfer exists.
        if let Some(r) = self.quotes.get_mut(&request.quote) {
            r.used = true;
        }
        self.use_partner(&request.partner, |u| u.quotes_outstanding -= 1);
        let outcome = Outcome::Transfer(Arc::new(self.start_transfer(request, admissible, now)));
        self.record_key(&key.0, key.1, fingerprint, outcome.clone(), now);
        outcome
    }

    /// Where a partner's request under `key` looks for its record: in
    /// `recall` (history), unless the key is `fresh` (the leader's word
    /// that it had no record, vouched for) and none of the recent batches
    /// recorded it. Then it has no record in history, only this batch's
    /// own records can answer it, and when they hold none either, history
    /// is told it has none to read.
    fn key_recall<'a>(&self, key: &(PartnerId, IdempotencyKey), recall: &'a dyn Recall, fresh: bool) -> &'a dyn Recall {
        if fresh && !self.recent.holds(recent::short(&key.0, &key.1)) {
            if !self.idempotency.contains_key(key) {
                recall.unrecorded(&key.0, &key.1);
            }
            &NoHistory
        } else {
            recall
        }
    }

    /// A one-call payment: priced as [`State::check_quote`] prices, checked
    /// against the payer's bound and as [`State::check_transfer`] checks,
    /// and created as a transfer from that price, in one command; its
    /// idempotency key answers a retry with the first outcome. A refusal
    /// before the transfer would exist records nothing. `fresh` as for
    /// [`State::create_transfer`].
    pub(super) fn create_payment(
        &mut self,
        request: &PaymentRequest,
        now: Timestamp,
        recall: &dyn Recall,
        fresh: bool,
    ) -> Outcome {
        let key = (request.partner.clone(), request.idempotency_key.clone());
        let recall = self.key_recall(&key, recall, fresh);
        let fingerprint = request.fingerprint();
        if let KeyLookup::Answered(outcome) =
            self.look_up_key(&request.partner, &request.idempotency_key, fingerprint, now, recall)
        {
            return outcome;
        }
        let quote = match self.check_payment(request, now) {
            Ok(quote) => quote,
            Err(code) => return Outcome::Rejected(code),
        };
        // The price's quote id is spent, though no quote is kept: a
        // transfer names the price it was made at.
        self.next_quote += 1;
        let transfer = TransferRequest {
            partner: request.partner.clone(),
            idempotency_key: request.idempotency_key.clone(),
            quote: quote.id.clone(),
            payee: request.payee.clone(),
            payer: request.payer.clone(),
        };
        let outcome = Outcome::Transfer(Arc::new(self.start_transfer(&transfer, Admissible { quote }, now)));
        self.record_key(&request.partner, request.idempotency_key.clone(), fingerprint, outcome.clone(), now);
        outcome
    }

    /// Record `outcome` under `partner`'s `key`: in this batch's table,
    /// history's journal and the recent keys.
    pub(super) fn record_key(
        &mut self,
        partner: &PartnerId,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        outcome: Outcome,
        now: Timestamp,
    ) {
        let record = IdempotencyRecord { fingerprint, outcome, at: now };
        self.journal.push(Record::Idempotency {
            partner: partner.clone(),
            key: key.clone(),
            record: Box::new(record.clone()),
        });
        self.recent.record(recent::short(partner, &key));
        self.idempotency.insert((partner.clone(), key), record);
    }

    /// How a one-call payment not seen before would be answered, without
    /// changing anything: its price, or its refusal. The leader calls it
    /// before proposing.
    pub fn check_payment(&self, request: &PaymentRequest, now: Timestamp) -> OrReject<Quote> {
        let quote = self.check_quote(&request.partner, &request.payee, request.amount, now)?;
        if let Some(bound) = request.max_total_debit {
            if bound.currency() != quote.priced.total_debit.currency() {
                return Err(RejectCode::CurrencyMismatch);
            }
            if quote.priced.total_debit.units() > bound.units() {
                return Err(RejectCode::PriceAboveLimit);
            }
        }
        self.check_corridor_and_cap(&request.partner, &quote.corridor)?;
        Ok(quote)
    }

    /// A transfer's corridor is active and its payer under its cap of
    /// transfers in flight.
    fn check_corridor_and_cap(&self, partner: &PartnerId, corridor: &CorridorId) -> OrReject<()> {
        let corridor = self.corridors.get(corridor).ok_or(RejectCode::CorridorNotFound)?;
        if corridor.status == BusinessStatus::Suspended {
            return Err(RejectCode::CorridorSuspended);
        }
        let in_flight = self.partner_usage(partner).transfers_in_flight;
        if in_flight >= self.partner_limits(partner).transfers_in_flight_max {
            return Err(RejectCode::PartnerTransfersExhausted);
        }
        Ok(())
    }

    /// The answer recorded under a request's idempotency key, in this batch
    /// or in history, if it is still within the region's idempotency window
    /// ([`RegionSettings::idempotency_retention_ms`]) at
    /// `now`: the original outcome for the same body, a conflict for another.
    pub(super) fn replay_request(
        &self,
        request: &TransferRequest,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> Option<Outcome> {
        match self.look_up_request(request, now, recall) {
            KeyLookup::Answered(outcome) => Some(outcome),
            KeyLookup::Unrecorded | KeyLookup::Expired => None,
        }
    }

    pub(super) fn look_up_request(&self, request: &TransferRequest, now: Timestamp, recall: &dyn Recall) -> KeyLookup {
        self.look_up_key(&request.partner, &request.idempotency_key, request.fingerprint(), now, recall)
    }

    /// What a partner's idempotency key holds for a request body with
    /// `fingerprint` (a transfer's or a refund's: one key space).
    pub(super) fn look_up_key(
        &self,
        partner: &PartnerId,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> KeyLookup {
        let record = match self.idempotency.get(&(partner.clone(), key.clone())) {
            Some(record) => record.clone(),
            None => match recall.idempotency(partner, key) {
                Some(record) => record,
                None => return KeyLookup::Unrecorded,
            },
        };
        if record.at.plus_ms(self.settings.idempotency_retention_ms()) <= now {
            return KeyLookup::Expired;
        }
        KeyLookup::Answered(if record.fingerprint == fingerprint {
            record.outcome
        } else {
            Outcome::Rejected(RejectCode::IdempotencyConflict)
        })
    }

    /// How a transfer request not seen before would be answered without
    /// changing anything: its refusal, if it is refused before its transfer
    /// would exist (suspended partner, unknown, another partner's, expired or
    /// used quote, payee mismatch, suspended corridor, the partner at its cap
    /// of transfers in flight). An idempotency key already recorded is not
    /// looked at here: its record answers ([`State::replay_transfer_request`]).
    ///
    /// The leader calls it before proposing, so a request that would be
    /// refused costs no log entry; [`State::apply`] calls it again.
    pub fn check_transfer_request(&self, request: &TransferRequest, now: Timestamp) -> Result<(), RejectCode> {
        self.check_transfer(request, now).map(|_| ())
    }

    pub(super) fn check_transfer(&self, request: &TransferRequest, now: Timestamp) -> OrReject<Admissible> {
        self.active_payer(&request.partner)?;
        let record = self
            .quotes
            .get(&request.quote)
            .filter(|r| r.quote.partner == request.partner)
            .ok_or(RejectCode::QuoteNotFound)?;
        if now >= record.quote.expires_at {
            return Err(RejectCode::QuoteExpired);
        }
        if record.used {
            return Err(RejectCode::QuoteAlreadyUsed);
        }
        let payee = self.directory.resolve(&request.payee).ok_or(RejectCode::PayeeNotFound)?;
        if payee != record.quote.payee {
            return Err(RejectCode::PayeeMismatch);
        }
        let quote = record.quote.clone();
        self.check_corridor_and_cap(&request.partner, &quote.corridor)?;
        Ok(Admissible { quote })
    }

    /// Create the transfer of a request [`State::check_transfer`] admitted.
    /// A transfer whose money cannot move (insufficient position, daily cap)
    /// is recorded as aborted with its reason.
    pub(super) fn start_transfer(
        &mut self,
        request: &TransferRequest,
        admissible: Admissible,
        now: Timestamp,
    ) -> TransferView {
        let Admissible { quote } = admissible;
        // From here on the transfer exists, whatever happens to its money.
        let id = TransferId::new(self.region.clone(), self.next_transfer);
        self.next_transfer += 1;
        self.journal.push(Record::Listed { partner: request.partner.clone(), transfer: id.clone(), at: now });
        if quote.corridor.is_same_region() {
            self.journal.push(Record::Listed { partner: quote.payee.partner.clone(), transfer: id.clone(), at: now });
        }
        let mut transfer = Transfer {
            view: TransferView {
                id: id.clone(),
                partner: request.partner.clone(),
                idempotency_key: request.idempotency_key.clone(),
                quote: quote.id.clone(),
                corridor: quote.corridor.clone(),
                priced: quote.priced,
                payee: quote.payee.clone(),
                payer_token: PayerToken::for_transfer(&id),
                state: CoordinatorState::Received,
                reason: None,
                created_at: now,
                updated_at: now,
                deadline: None,
            },
            payer: request.payer.clone(),
            cap_day: now.utc_day(),
        };
        let moved = if quote.corridor.is_same_region() {
            self.post_local(&transfer, now)
        } else {
            self.reserve(&transfer, now)
        };
        match moved {
            Ok(CoordinatorEvent::Reserve) => {
                step_coordinator(&mut transfer, CoordinatorEvent::Reserve, now);
                self.start_prepare(&mut transfer, now);
                let view = transfer.view.clone();
                self.transfers.insert(id, transfer);
                return view;
            }
            Ok(event) => step_coordinator(&mut transfer, event, now),
            Err(code) => {
                transfer.view.reason = Some(code);
                step_coordinator(&mut transfer, CoordinatorEvent::ReserveRejected, now);
            }
        }
        // Finished by this command: the transfer goes into its record (the
        // batch's later commands find it there), not into the hot state it
        // would leave when the batch ends.
        let view = transfer.view.clone();
        debug_assert!(view.state.is_final());
        self.finished_here.push((id.sequence(), self.journal.len()));
        self.journal.push(Record::Transfer(Box::new(transfer)));
        self.emit_finished(&view, now);
        view
    }

    /// The transfer `id` this region coordinates as the batch being
    /// applied has left it: in the hot state, or started and finished by
    /// an earlier command of the batch (whose record history does not hold
    /// yet).
    pub(super) fn coordinated(&self, id: &TransferId) -> Option<&Transfer> {
        if let Some(transfer) = self.transfers.get(id) {
            return Some(transfer);
        }
        if self.finished_here.is_empty() || id.origin() != &self.region {
            return None;
        }
        let at = self.finished_here.binary_search_by_key(&id.sequence(), |(sequence, _)| *sequence).ok()?;
        match &self.journal[self.finished_here[at].1] {
            Record::Transfer(transfer) => Some(transfer),
            other => panic!("transfer {id}: its place in the batch's journal holds {other:?}"),
        }
    }

    /// Post every leg of a same-region transfer in one ledger chain.
    pub(super) fn post_local(&mut self, transfer: &Transfer, now: Timestamp) -> OrReject<CoordinatorEvent> {
        let view = &transfer.view;
        let payee_account = self.check_payee(&view.payee.partner, view.payee.currency)?;
        self.corridor_mut(&view.corridor)?.use_daily(view.priced.source, now)?;
        let mut ops = self.payer_legs(transfer, |id, debit, credit, amount| Op::Post { id, debit, credit, amount });
        let clearing = self.open_mesh_account(AccountOwner::Clearing(self.region.clone()), view.payee.currency);
        ops.push(Op::Post {
            id: leg(&view.id, Leg::Payout),
            debit: clearing,
            credit: payee_account,
            amount: view.priced.destination,
        });
        if let Err(refused) = self.ledger.apply(&ops, now) {
            self.release_daily(transfer);
            return Err(ledger_code(refused.reason));
        }
        Ok(CoordinatorEvent::PostLocal)
    }

    /// Reserve the payer's principal and fee for a cross-border transfer.
    pub(super) fn reserve(&mut self, transfer: &Transfer, now: Timestamp) -> OrReject<CoordinatorEvent> {
        self.corridor_mut(&transfer.view.corridor)?.use_daily(transfer.view.priced.source, now)?;
        let ops = self.payer_legs(transfer, |id, debit, credit, amount| Op::Reserve { id, debit, credit, amount });
        if let Err(refused) = self.ledger.apply(&ops, now) {
            self.release_daily(transfer);
            return Err(ledger_code(refused.reason));
        }
        Ok(CoordinatorEvent::Reserve)
    }

    /// The payer's legs: principal into clearing against the payee's region, and
    /// the fee (if any) into fee revenue.
    pub(super) fn payer_legs(
        &mut self,
        transfer: &Transfer,
        make: impl Fn(EntryId, AccountId, AccountId, Money) -> Op,
    ) -> Vec<Op> {
        let view = &transfer.view;
        let currency = view.priced.source.currency();
        let payer = AccountId::new(AccountOwner::Partner(view.partner.clone()), currency);
        let clearing =
            self.open_mesh_account(AccountOwner::Clearing(view.corridor.destination_region.clone()), currency);
        let mut ops = vec![make(leg(&view.id, Leg::Principal), payer.clone(), clearing, view.priced.source)];
        if !view.priced.fee.is_zero() {
            let fees = self.open_mesh_account(AccountOwner::Fees, currency);
            ops.push(make(leg(&view.id, Leg::Fee), payer, fees, view.priced.fee));
        }
        ops
    }

    /// The resolution of the payer's pending legs, in order.
    pub(super) fn resolve_payer_legs(view: &TransferView, post: bool) -> Vec<Op> {
        let mut legs = vec![Leg::Principal];
        if !view.priced.fee.is_zero() {
            legs.push(Leg::Fee);
        }
        legs.into_iter()
            .map(|l| {
                let id = leg(&view.id, l);
                if post {
                    Op::PostPending { id }
                } else {
                    Op::VoidPending { id }
                }
            })
            .collect()
    }

    pub(super) fn release_daily(&mut self, transfer: &Transfer) {
        if let Some(corridor) = self.corridors.get_mut(&transfer.view.corridor) {
            corridor.release_daily(transfer.view.priced.source, transfer.cap_day);
        }
    }

    pub(super) fn start_prepare(&mut self, transfer: &mut Transfer, now: Timestamp) {
        self.use_partner(&transfer.view.partner, |u| u.transfers_in_flight += 1);
        let deadline = now.plus_ms(TRANSFER_PREPARE_DEADLINE_MS);
        transfer.view.deadline = Some(deadline);
        self.deadlines.insert((deadline, transfer.view.id.clone()));
        let view = &transfer.view;
        let message = reconcile::prepare_of(view).expect("a cross-border transfer with its deadline has a Prepare");
        self.outbox
            .insert((view.corridor.destination_region.clone(), view.id.clone()), OutboxMessage::Prepare(message));
        self.emit(&view.partner, view, EventKind::Reserved, view.priced.total_debit, now);
    }

    /// Record the events and retention entry of a transfer that reached a final state.
    pub(super) fn finish_coordinator(&mut self, transfer: &Transfer, now: Timestamp) {
        debug_assert!(transfer.view.state.is_final());
        self.journal.push(Record::Transfer(Box::new(transfer.clone())));
        self.emit_finished(&transfer.view, now);
    }

    /// The events of a transfer that finished: committed (and, in a
    /// same-region one, credited) or aborted.
    fn emit_finished(&mut self, view: &TransferView, now: Timestamp) {
        match view.state {
            CoordinatorState::Committed => {
                self.emit(&view.partner, view, EventKind::Committed, view.priced.total_debit, now);
                if view.corridor.is_same_region() {
                    self.emit(&view.payee.partner, view, EventKind::Credited, view.priced.destination, now);
                }
            }
            _ => self.emit(&view.partner, view, EventKind::Aborted, view.priced.total_debit, now),
        }
    }

    // ---- coordinator: answers from the payee region ------------------------------

    pub(super) fn prepare_replied(
        &mut self,
        id: &TransferId,
        reply: PrepareReply,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<Outcome> {
        if self.awaits_cancel(id) {
            return Ok(self.cancel_replied(id, reply, now));
        }
        if self.coordinates_refund(id, recall) {
            return self.refund_prepare_replied(id, reply, now, recall);
        }
        // A transfer no longer in the hot state finished: history has it,
        // and the answer is judged against its final state.
        let transfer = match self.coordinated(id) {
            Some(transfer) => transfer.clone(),
            None => recall
                .transfer(id)
                .filter(|t| t.view.updated_at.plus_ms(FINISHED_TRANSFER_RECALL_MS) > now)
                .ok_or(RejectCode::TransferNotFound)?,
        };
        if answer_event(transfer.view.state, reply)?.is_some() {
            self.take_answer(transfer, reply, true, now);
        }
        Ok(Outcome::Done)
    }

    /// Decide a reserved transfer by its payee region's answer: commit on
    /// `Prepared` (unless `deadline_applies` and it came at or after the
    /// deadline), abort otherwise.
    pub(super) fn take_answer(
        &mut self,
        mut transfer: Transfer,
        reply: PrepareReply,
        deadline_applies: bool,
        now: Timestamp,
    ) {
        let id = transfer.view.id.clone();
        let Ok(Some(event)) = answer_event(transfer.view.state, reply) else {
            panic!("transfer {id}: an answer to a reserved transfer moves it");
        };
        step_coordinator(&mut transfer, event, now);
        self.use_partner(&transfer.view.partner, |u| u.transfers_in_flight -= 1);
        let deadline = transfer.view.deadline.expect("a reserved transfer has a deadline");
        self.deadlines.remove(&(deadline, id.clone()));
        let key = (transfer.view.corridor.destination_region.clone(), id.clone());
        let id = &id;
        match reply {
            PrepareReply::Prepared if now < deadline || !deadline_applies => {
                self.decide_coordinator(&mut transfer, CoordinatorEvent::DecideCommit, now);
                let priced = &transfer.view.priced;
                let tally = settlement::payment_key(priced.source, priced.destination);
                let window = self.tally_sent(&key.0, tally, priced.source, priced.destination);
                self.outbox
                    .insert(key, OutboxMessage::Decision { transfer: id.clone(), decision: Decision::Commit, window });
            }
            PrepareReply::Prepared | PrepareReply::PreparedCredit(_) => {
                // Prepared, but after the deadline, or with a credit only a
                // refund's answer carries: the coordinator aborts.
                let late = matches!(reply, PrepareReply::Prepared);
                let reason = if late { RejectCode::DeadlineExceeded } else { RejectCode::ProtocolViolation };
                transfer.view.reason = Some(reason);
                self.decide_coordinator(&mut transfer, CoordinatorEvent::DecideAbort, now);
                self.outbox.insert(key, self.decision(id, Decision::Abort));
            }
            PrepareReply::Rejected(code) => {
                // The payee region recorded its refusal; no decision needs sending.
                transfer.view.reason = Some(code);
                self.void_payer(&mut transfer, now);
                self.outbox.remove(&key);
            }
        }
        self.transfers.insert(id.clone(), transfer);
    }

    /// Decide a prepared transfer: post or void the payer's legs.
    pub(super) fn decide_coordinator(&mut self, transfer: &mut Transfer, event: CoordinatorEvent, now: Timestamp) {
        step_coordinator(transfer, event, now);
        let post = event == CoordinatorEvent::DecideCommit;
        let ops = Self::resolve_payer_legs(&transfer.view, post);
        self.ledger.apply(&ops, now).expect("a prepared transfer's pending legs resolve");
        if !post {
            self.release_daily(transfer);
        }
        self.finish_coordinator(transfer, now);
    }

    /// Void the payer's legs of a transfer that moved to aborted.
    pub(super) fn void_payer(&mut self, transfer: &mut Transfer, now: Timestamp) {
        let ops = Self::resolve_payer_legs(&transfer.view, false);
        self.ledger.apply(&ops, now).expect("a reserved transfer's pending legs void");
        self.release_daily(transfer);
        self.finish_coordinator(transfer, now);
    }

    /// A decision reached its region: stop sending it. Only a decision is
    /// removed; an ack cannot clear a Prepare still waiting for its answer.
    pub(super) fn decision_acked(&mut self, region: &RegionId, id: &TransferId) {
        let key = (region.clone(), id.clone());
        if matches!(self.outbox.get(&key), Some(OutboxMessage::Decision { .. })) {
            self.outbox.remove(&key);
        }
    }

    // ---- participant: messages from the payer region ------------------------------
}
