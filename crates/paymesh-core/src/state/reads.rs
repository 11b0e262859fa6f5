//! What readers ask of the state: its tables, a partner's position and
//! transfers, the answer under an idempotency key, events after a cursor.

use super::*;

impl State {
    /// This state's region.
    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// The latest time applied.
    pub fn clock(&self) -> Timestamp {
        self.clock
    }

    /// How many transfer ids this region has issued (its payers' payments,
    /// whatever became of them, and refunds and cancels, which are numbered
    /// with them): the last transfer id's number.
    pub fn transfers_created(&self) -> u64 {
        self.next_transfer.saturating_sub(1)
    }

    /// A partner of this region.
    pub fn partner(&self, id: &PartnerId) -> Option<&Partner> {
        self.partners.get(id)
    }

    /// A partner's limits: the operator's, or [`PartnerLimits::DEFAULT`].
    pub fn partner_limits(&self, id: &PartnerId) -> PartnerLimits {
        self.partner_limits.get(id).copied().unwrap_or_default()
    }

    /// What a partner holds of the capped resources.
    pub fn partner_usage(&self, id: &PartnerId) -> PartnerUsage {
        self.partner_usage.get(id).copied().unwrap_or_default()
    }

    /// All partners of this region.
    pub fn partners(&self) -> impl Iterator<Item = &Partner> {
        self.partners.values()
    }

    /// A corridor whose source is this region.
    pub fn corridor(&self, id: &CorridorId) -> Option<&Corridor> {
        self.corridors.get(id)
    }

    /// The rate `corridor`'s refunds credit payers at.
    pub fn refund_rate(&self, corridor: &CorridorId) -> RefundRate {
        self.refund_rates.get(corridor).copied().unwrap_or_default()
    }

    /// All corridors whose source is this region.
    pub fn corridors(&self) -> impl Iterator<Item = &Corridor> {
        self.corridors.values()
    }

    /// The payee directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Resolve a QR payload to its payee.
    pub fn lookup_payee(&self, qr: &QrPayload) -> Option<Payee> {
        self.directory.resolve(qr)
    }

    /// An unexpired quote.
    pub fn quote(&self, id: &QuoteId) -> Option<&Quote> {
        self.quotes.get(id).map(|r| &r.quote)
    }

    /// A transfer this region coordinates that is not final yet, with the
    /// payer's personal data (finished ones are history).
    pub fn transfer(&self, id: &TransferId) -> Option<&Transfer> {
        self.transfers.get(id)
    }

    /// The transfers this region coordinates that are not final yet, in id order.
    pub fn transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.transfers.values()
    }

    /// The answer to a transfer request already applied under this
    /// idempotency key: its original outcome if the body matches, an
    /// idempotency conflict if not, or `None` for a key not seen (or no longer
    /// retained). Lets the leader answer a retry without a Raft round trip;
    /// applying the request again would give the same answer.
    pub fn replay_transfer_request(&self, request: &TransferRequest, recall: &dyn Recall) -> Option<Outcome> {
        self.replay_request(request, self.clock, recall)
    }

    /// What `request`'s idempotency key holds now (with `recall`, history
    /// as of now): the answer [`State::replay_transfer_request`] gives, or
    /// whether the key has no record at all or only one past the window.
    /// The leader proposes a key with no record at all as fresh
    /// ([`CommandBody::CreateFreshTransfer`]).
    pub fn look_up_transfer_request(&self, request: &TransferRequest, recall: &dyn Recall) -> KeyLookup {
        self.look_up_request(request, self.clock, recall)
    }

    /// What a refund request's idempotency key holds now, as
    /// [`State::look_up_transfer_request`] for a transfer request (the two
    /// share the partner's key space).
    pub fn look_up_refund_request(&self, request: &RefundRequest, recall: &dyn Recall) -> KeyLookup {
        self.look_up_key(&request.partner, &request.idempotency_key, request.fingerprint(), self.clock, recall)
    }

    /// What a one-call payment's key holds for its body, as of the applied
    /// clock (as [`State::look_up_refund_request`]).
    pub fn look_up_payment_request(&self, request: &crate::command::PaymentRequest, recall: &dyn Recall) -> KeyLookup {
        self.look_up_key(&request.partner, &request.idempotency_key, request.fingerprint(), self.clock, recall)
    }

    /// What a keyed quote's key holds for its body, as of the applied clock
    /// (as [`State::look_up_refund_request`]).
    pub fn look_up_quote_request(&self, request: &crate::command::QuoteRequest, recall: &dyn Recall) -> KeyLookup {
        self.look_up_key(&request.partner, &request.idempotency_key, request.fingerprint(), self.clock, recall)
    }

    /// A refund as `partner` may see it, in flight or finished: one it
    /// asked for (as a payment's payee), or one that credits it back (as
    /// the payer). Another partner's is indistinguishable from a missing one.
    pub fn refund_for(&self, partner: &PartnerId, id: &TransferId, recall: &dyn Recall) -> Option<PartnerRefund> {
        if id.origin() == &self.region {
            // Only this region's own refunds are coordinated here.
            let refund = self.refunds.get(id).cloned().or_else(|| recall.refund(id))?;
            if &refund.view.partner == partner {
                return Some(PartnerRefund::Asked(refund));
            }
            return (refund.payer.as_ref() == Some(partner)).then_some(PartnerRefund::CreditedHere(refund));
        }
        let credited = self.refund_participations.get(id).cloned().or_else(|| recall.refund_participation(id))?;
        (credited.payer.as_ref() == Some(partner)).then_some(PartnerRefund::Credited(credited))
    }

    /// The entries of `partner`'s list, in the order they were recorded
    /// here, after the page token `after`, at most `max`, each with its page
    /// token: its transfers and its refunds (`None` for an entry it may no
    /// longer see). A reader paging through the list goes on from the last
    /// token, whatever the entries were.
    pub fn listed_of<H: HistoryRead>(
        &self,
        partner: &PartnerId,
        after: Option<&ListToken>,
        max: usize,
        history: &H,
    ) -> Vec<(ListToken, Option<Listing>)> {
        let seen = |id: &TransferId| {
            let transfer = self.transfer_for(partner, id, history).map(Listing::Transfer);
            transfer.or_else(|| self.refund_for(partner, id, history).map(Listing::Refund))
        };
        history.listed(partner, after, max).into_iter().map(|(token, id)| (token, seen(&id))).collect()
    }

    /// The refunds among the first `max` entries of `partner`'s list after
    /// `after` ([`State::listed_of`]).
    pub fn refunds_of<H: HistoryRead>(
        &self,
        partner: &PartnerId,
        after: Option<&ListToken>,
        max: usize,
        history: &H,
    ) -> Vec<(ListToken, PartnerRefund)> {
        let listed = self.listed_of(partner, after, max, history).into_iter();
        listed
            .filter_map(|(token, entry)| match entry? {
                Listing::Refund(refund) => Some((token, refund)),
                Listing::Transfer(_) => None,
            })
            .collect()
    }

    /// The region of the payer of a payment received here from another
    /// region (where a refund of it goes), if this region holds its side.
    pub fn payer_region_of(&self, transfer: &TransferId, recall: &dyn Recall) -> Option<RegionId> {
        let participation = self.participations.get(transfer).cloned().or_else(|| recall.participation(transfer))?;
        participation.prepare.map(|prepare| prepare.corridor.source_region)
    }

    /// Refunds this region coordinates that are not final yet.
    pub fn refunds(&self) -> impl Iterator<Item = &Refund> {
        self.refunds.values()
    }

    /// This region's sides of other regions' refunds, waiting for their
    /// decision.
    pub fn refund_participations(&self) -> impl Iterator<Item = (&TransferId, &RefundParticipation)> {
        self.refund_participations.iter()
    }

    /// A transfer as `partner` may see it, in flight or finished: one it
    /// pays, or one that credits it. Another partner's transfer is
    /// indistinguishable from a missing one.
    pub fn transfer_for(&self, partner: &PartnerId, id: &TransferId, recall: &dyn Recall) -> Option<PartnerTransfer> {
        let coordinated = self.transfers.get(id).cloned().or_else(|| {
            // Only this region's own transfers are coordinated here.
            (id.origin() == &self.region).then(|| recall.transfer(id)).flatten()
        });
        if let Some(transfer) = coordinated {
            let view = &transfer.view;
            let payee_here = view.corridor.is_same_region() && &view.payee.partner == partner;
            if &view.partner == partner || payee_here {
                return Some(PartnerTransfer::Coordinated(transfer));
            }
            return None;
        }
        let participation = self.participations.get(id).cloned().or_else(|| recall.participation(id))?;
        let payee = &participation.prepare.as_ref()?.payee;
        (payee == partner).then_some(PartnerTransfer::Participated(participation))
    }

    /// The transfers among the first `max` entries of `partner`'s list
    /// after `after` ([`State::listed_of`]), each with its page token.
    pub fn transfers_of<H: HistoryRead>(
        &self,
        partner: &PartnerId,
        after: Option<&ListToken>,
        max: usize,
        history: &H,
    ) -> Vec<(ListToken, PartnerTransfer)> {
        let listed = self.listed_of(partner, after, max, history).into_iter();
        listed
            .filter_map(|(token, entry)| match entry? {
                Listing::Transfer(transfer) => Some((token, transfer)),
                Listing::Refund(_) => None,
            })
            .collect()
    }

    /// A prepared participation waiting for its decision (finished ones are history).
    pub fn participation(&self, id: &TransferId) -> Option<&Participation> {
        self.participations.get(id)
    }

    /// The prepared participations, in transfer id order.
    pub fn participations(&self) -> impl Iterator<Item = (&TransferId, &Participation)> {
        self.participations.iter()
    }

    /// Messages waiting for `region`, in transfer order.
    pub fn outbox_for<'a>(&'a self, region: &'a RegionId) -> impl Iterator<Item = &'a OutboxMessage> + 'a {
        self.outbox.iter().filter(move |((r, _), _)| r == region).map(|(_, m)| m)
    }

    /// Every waiting message with its destination region.
    pub fn outbox(&self) -> impl Iterator<Item = (&RegionId, &OutboxMessage)> {
        self.outbox.iter().map(|((r, _), m)| (r, m))
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// A partner's position.
    pub fn position(&self, id: &PartnerId) -> Option<Position> {
        let partner = self.partners.get(id)?;
        let currency = partner.config.currency;
        let account = self.ledger.account(&Self::position_account(&partner.config))?;
        let signed = |units: i128| SignedMoney::from_units(units, currency).ok();
        let cap = partner.config.net_debit_cap;
        Some(Position {
            currency,
            posted: signed(account.net_posted())?,
            pending_debits: signed(account.debits_pending() as i128)?,
            pending_credits: signed(account.credits_pending() as i128)?,
            net_debit_cap: cap,
            available: signed(account.net_posted() - account.debits_pending() as i128 + i128::from(cap.units()))?,
        })
    }

    /// Up to `max` of a partner's events with a cursor above `after`, from
    /// history. An error if events after `after` were deleted by retention.
    pub fn events_after(
        &self,
        partner: &PartnerId,
        after: u64,
        max: usize,
        history: &dyn HistoryRead,
    ) -> Result<Vec<Event>, CursorExpired> {
        let last = self.last_cursor(partner);
        if after >= last {
            return Ok(Vec::new());
        }
        // At least one, to tell a deleted range from a live one.
        let mut events = history.events(partner, after, max.max(1));
        match events.first() {
            Some(first) if first.cursor == after + 1 => {
                events.truncate(max);
                Ok(events)
            }
            Some(first) => Err(CursorExpired { requested: after, oldest: first.cursor }),
            None => Err(CursorExpired { requested: after, oldest: last + 1 }),
        }
    }

    /// The cursor of a partner's newest event (0 if none).
    pub fn last_cursor(&self, partner: &PartnerId) -> u64 {
        self.event_cursors.get(partner).map_or(0, |next| next.saturating_sub(1))
    }
}
