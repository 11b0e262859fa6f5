//! Operators' commands: partners, their status and limits, corridors,
//! rates, top-ups and the payee directory, and the ledger accounts they
//! open.

use super::*;

impl State {
    /// The account of a partner's position: its settlement currency's.
    pub fn position_account(config: &PartnerConfig) -> AccountId {
        AccountId::new(AccountOwner::Partner(config.id.clone()), config.currency)
    }

    pub(super) fn upsert_partner(&mut self, config: &PartnerConfig, now: Timestamp) -> OrReject<()> {
        if config.region != self.region {
            return Err(RejectCode::PartnerNotInRegion);
        }
        if config.net_debit_cap.currency() != config.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        let account = Self::position_account(config);
        let policy = AccountPolicy::DebitsMustNotExceedCredits { net_debit_cap: config.net_debit_cap };
        match self.partners.get_mut(&config.id) {
            Some(existing) => {
                if existing.config.currency != config.currency {
                    return Err(RejectCode::CurrencyMismatch);
                }
                self.ledger.set_policy(&account, policy).map_err(ledger_code)?;
                existing.config = config.clone();
                existing.updated_at = now;
            }
            None => {
                self.ledger.open_account(account, policy).map_err(ledger_code)?;
                let partner = Partner { config: config.clone(), status: BusinessStatus::Active, updated_at: now };
                self.partners.insert(config.id.clone(), partner);
            }
        }
        Ok(())
    }

    pub(super) fn set_partner_status(
        &mut self,
        partner: &PartnerId,
        status: BusinessStatus,
        now: Timestamp,
    ) -> OrReject<()> {
        let partner = self.partners.get_mut(partner).ok_or(RejectCode::PartnerNotFound)?;
        partner.status = status;
        partner.updated_at = now;
        Ok(())
    }

    pub(super) fn set_partner_limits(&mut self, partner: &PartnerId, limits: PartnerLimits) -> OrReject<()> {
        if !self.partners.contains_key(partner) {
            return Err(RejectCode::PartnerNotFound);
        }
        if limits.validate().is_err() {
            // The admin API validates first; a command carrying invalid limits
            // did not come from it.
            return Err(RejectCode::ProtocolViolation);
        }
        if limits == PartnerLimits::DEFAULT {
            self.partner_limits.remove(partner);
        } else {
            self.partner_limits.insert(partner.clone(), limits);
        }
        Ok(())
    }

    /// Change a partner's usage by `change`; an entry at zero is removed, so
    /// the table holds only partners using something (and recounting it from
    /// scratch gives the same table).
    pub(super) fn use_partner(&mut self, partner: &PartnerId, change: impl FnOnce(&mut PartnerUsage)) {
        let mut usage = self.partner_usage.get(partner).copied().unwrap_or_default();
        change(&mut usage);
        if usage == PartnerUsage::default() {
            self.partner_usage.remove(partner);
        } else {
            self.partner_usage.insert(partner.clone(), usage);
        }
    }

    /// Every partner's usage counted from the quotes and transfers.
    pub(super) fn count_usage(&self) -> OrdMap<PartnerId, PartnerUsage> {
        let mut usage: OrdMap<PartnerId, PartnerUsage> = OrdMap::new();
        for record in self.quotes.values().filter(|r| !r.used) {
            usage.entry(record.quote.partner.clone()).or_default().quotes_outstanding += 1;
        }
        for transfer in self.transfers.values().filter(|t| !t.view.state.is_final()) {
            usage.entry(transfer.view.partner.clone()).or_default().transfers_in_flight += 1;
        }
        for refund in self.refunds.values().filter(|r| !r.view.state.is_final()) {
            usage.entry(refund.view.partner.clone()).or_default().transfers_in_flight += 1;
        }
        usage
    }

    pub(super) fn corridor_mut(&mut self, id: &CorridorId) -> OrReject<&mut Corridor> {
        self.corridors.get_mut(id).ok_or(RejectCode::CorridorNotFound)
    }

    /// Set the rate `corridor`'s refunds credit payers at; the default
    /// rate is not stored.
    pub(super) fn set_corridor_refund_rate(
        &mut self,
        corridor: &CorridorId,
        rate: RefundRate,
        now: Timestamp,
    ) -> OrReject<()> {
        self.corridor_mut(corridor)?.updated_at = now;
        if rate == RefundRate::default() {
            self.refund_rates.remove(corridor);
        } else {
            self.refund_rates.insert(corridor.clone(), rate);
        }
        Ok(())
    }

    pub(super) fn upsert_corridor(&mut self, id: &CorridorId, terms: &CorridorTerms, now: Timestamp) -> OrReject<()> {
        if id.source_region != self.region {
            return Err(RejectCode::RegionMismatch);
        }
        if terms.currency() != id.source_currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        match self.corridors.get_mut(id) {
            Some(corridor) => {
                corridor.terms = terms.clone();
                corridor.updated_at = now;
            }
            None => {
                self.corridors.insert(id.clone(), Corridor::new(id.clone(), terms.clone(), now));
            }
        }
        Ok(())
    }

    pub(super) fn set_fx_rate(&mut self, id: &CorridorId, rate: &FxRate, now: Timestamp) -> OrReject<()> {
        self.corridor_mut(id)?.add_rate(rate.clone(), now)
    }

    /// What a top-up and a fund-out check first, in this order: the partner,
    /// the amount's currency and that it is not zero, and an earlier use of
    /// the reference (`earlier`: this batch's, else history's within
    /// [`TOP_UP_RETENTION_MS`]), which makes the command a repeat (done,
    /// nothing moves) or a conflict. The partner's position account when
    /// the command is new.
    fn funding(
        &self,
        partner_id: &PartnerId,
        amount: Money,
        earlier: Option<TopUpRecord>,
        now: Timestamp,
    ) -> OrReject<Option<AccountId>> {
        let partner = self.partners.get(partner_id).ok_or(RejectCode::PartnerNotFound)?;
        if amount.currency() != partner.config.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        if amount.is_zero() {
            return Err(RejectCode::AmountBelowMinimum);
        }
        // A reference is remembered for as long as history is kept.
        match earlier.filter(|done| done.at.plus_ms(TOP_UP_RETENTION_MS) > now) {
            Some(done) if done.partner == *partner_id && done.amount == amount => Ok(None),
            Some(_) => Err(RejectCode::IdempotencyConflict),
            None => Ok(Some(Self::position_account(&partner.config))),
        }
    }

    pub(super) fn top_up(
        &mut self,
        partner_id: &PartnerId,
        amount: Money,
        reference: &TopUpRef,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<()> {
        let earlier = self.top_ups.get(reference).cloned().or_else(|| recall.top_up(reference));
        let Some(position) = self.funding(partner_id, amount, earlier, now)? else { return Ok(()) };
        let settlement = self.open_mesh_account(AccountOwner::Settlement, amount.currency());
        let op =
            Op::Post { id: EntryId::TopUp(reference.clone()), debit: settlement, credit: position.clone(), amount };
        self.ledger.apply(&[op], now).map_err(|refused| ledger_code(refused.reason))?;
        self.count_external(&position, i128::from(amount.units()));
        let record = TopUpRecord { partner: partner_id.clone(), amount, at: now };
        self.top_ups.insert(reference.clone(), record.clone());
        self.journal.push(Record::TopUp { reference: reference.clone(), record });
        Ok(())
    }

    /// Withdraw `amount` of prefunding from a partner's position: at most
    /// what it holds beyond the debits reserved for transfers in flight
    /// (the net debit cap lends to payments; it is not money to take out).
    pub(super) fn fund_out(
        &mut self,
        partner_id: &PartnerId,
        amount: Money,
        reference: &TopUpRef,
        now: Timestamp,
        recall: &dyn Recall,
    ) -> OrReject<()> {
        let earlier = self.fund_outs.get(reference).cloned().or_else(|| recall.fund_out(reference));
        let Some(position) = self.funding(partner_id, amount, earlier, now)? else { return Ok(()) };
        let account = self.ledger.account(&position).ok_or(RejectCode::PartnerNotFound)?;
        let withdrawable = account.net_posted() - account.debits_pending() as i128;
        if i128::from(amount.units()) > withdrawable {
            return Err(RejectCode::InsufficientPosition);
        }
        let settlement = self.open_mesh_account(AccountOwner::Settlement, amount.currency());
        let op =
            Op::Post { id: EntryId::FundOut(reference.clone()), debit: position.clone(), credit: settlement, amount };
        self.ledger.apply(&[op], now).map_err(|refused| ledger_code(refused.reason))?;
        self.count_external(&position, -i128::from(amount.units()));
        let record = TopUpRecord { partner: partner_id.clone(), amount, at: now };
        self.fund_outs.insert(reference.clone(), record.clone());
        self.journal.push(Record::FundOut { reference: reference.clone(), record });
        Ok(())
    }

    pub(super) fn upsert_payee_route(&mut self, route: &PayeeRoute) -> OrReject<()> {
        if !self.directory.contains(&route.prefix) && self.directory.len() >= PAYEE_ROUTES_MAX {
            return Err(RejectCode::CapacityExceeded);
        }
        self.directory.upsert(route.clone());
        Ok(())
    }

    /// Open one of the mesh's own accounts (clearing, fees, settlement) if needed.
    pub(super) fn open_mesh_account(&mut self, owner: AccountOwner, currency: Currency) -> AccountId {
        let id = AccountId::new(owner, currency);
        self.ledger.ensure_account(&id, AccountPolicy::Unrestricted);
        id
    }

    // ---- partners: quotes and transfers ----------------------------------------
}
