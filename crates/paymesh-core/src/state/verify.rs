//! The invariants the state checks of itself ([`State::verify`]).

use super::*;

impl State {
    /// Check every cross-structure invariant from scratch: the ledger's own;
    /// the hot state holds only work in flight (reserved transfers, prepared
    /// participations, pending ledger entries) and nothing of a batch; each
    /// in-flight transfer holds exactly its pending legs; every pending
    /// ledger entry belongs to an in-flight transfer (no money is stuck); the
    /// indexes match what they index; the open settlement window's
    /// positions sum to zero per currency.
    pub fn verify(&self) -> Result<(), String> {
        self.ledger.verify()?;
        if !self.journal.is_empty()
            || !self.idempotency.is_empty()
            || !self.top_ups.is_empty()
            || !self.fund_outs.is_empty()
            || !self.refunded.is_empty()
            || !self.windows.is_empty()
        {
            return Err("a batch's records were left in the state".into());
        }
        // The open settlement window balances: what one account received,
        // others gave.
        if let Some((currency, sum)) = self.open_window().imbalance() {
            return Err(format!("the open settlement window's {currency} positions sum to {sum}, not zero"));
        }
        let mut expected_pending = std::collections::BTreeSet::new();
        for (id, transfer) in &self.transfers {
            let view = &transfer.view;
            if view.state != CoordinatorState::Reserved {
                return Err(format!("transfer {id}: state {:?} is not in flight but held in memory", view.state));
            }
            if !view.deadline.is_some_and(|d| self.deadlines.contains(&(d, id.clone()))) {
                return Err(format!("transfer {id}: deadline index disagrees with state {:?}", view.state));
            }
            let key = (view.corridor.destination_region.clone(), id.clone());
            if !matches!(self.outbox.get(&key), Some(OutboxMessage::Prepare(_))) {
                return Err(format!("transfer {id}: reserved without its prepare in the outbox"));
            }
            for op in Self::resolve_payer_legs(view, false) {
                if let Op::VoidPending { id: entry } = op {
                    expected_pending.insert(entry);
                }
            }
        }
        for (id, participation) in &self.participations {
            if participation.state != ParticipantState::Prepared {
                return Err(format!("participation {id}: state {:?} held in memory", participation.state));
            }
            if participation.prepare.is_none() {
                return Err(format!("participation {id}: no prepare recorded"));
            }
            expected_pending.insert(leg(id, Leg::Payout));
        }
        for (id, refund) in &self.refunds {
            let view = &refund.view;
            if view.state != CoordinatorState::Reserved {
                return Err(format!("refund {id}: state {:?} is not in flight but held in memory", view.state));
            }
            if !view.deadline.is_some_and(|d| self.deadlines.contains(&(d, id.clone()))) {
                return Err(format!("refund {id}: deadline index disagrees with state {:?}", view.state));
            }
            let key = (refund.payer_region.clone(), id.clone());
            if !matches!(self.outbox.get(&key), Some(OutboxMessage::PrepareRefund(_))) {
                return Err(format!("refund {id}: reserved without its prepare in the outbox"));
            }
            expected_pending.insert(leg(id, Leg::Refund));
        }
        for (id, cancel) in &self.cancels {
            let request = self.outbox.get(&(cancel.region.clone(), id.clone()));
            if cancel.accepted_at.is_none() != matches!(request, Some(OutboxMessage::RequestCancel(_))) {
                return Err(format!("cancel {id}: its request is in the outbox exactly until the answer"));
            }
        }
        for ((_, id), message) in &self.outbox {
            if matches!(message, OutboxMessage::RequestCancel(_)) && !self.cancels.contains_key(id) {
                return Err(format!("cancel {id}: a request in the outbox for no pending cancel"));
            }
        }
        for (id, participation) in &self.refund_participations {
            if participation.state != ParticipantState::Prepared {
                return Err(format!("refund participation {id}: state {:?} held in memory", participation.state));
            }
            expected_pending.insert(leg(id, Leg::RefundPayout));
        }
        for entry in &expected_pending {
            if self.ledger.entry(entry).map(|e| e.status) != Some(EntryStatus::Pending) {
                return Err(format!("in-flight entry {entry:?} is not pending in the ledger"));
            }
        }
        if self.ledger.entries().any(|(_, e)| e.status != EntryStatus::Pending) {
            return Err("a resolved ledger entry is held in memory".into());
        }
        let pending_in_ledger = self.ledger.accounts().map(|(_, a)| a.debits_pending()).sum::<u128>();
        let expected_units: u128 =
            expected_pending.iter().filter_map(|e| self.ledger.entry(e)).map(|e| u128::from(e.amount.units())).sum();
        if pending_in_ledger != expected_units {
            return Err(format!(
                "pending debits {pending_in_ledger} differ from in-flight transfers' {expected_units}: money is stuck"
            ));
        }
        if self.deadlines.len() != self.transfers.len() + self.refunds.len() {
            return Err("deadline index holds transfers or refunds that are not reserved".into());
        }
        if self.quotes.len() != self.quote_expiry.len()
            || self.quote_expiry.iter().any(|(at, id)| self.quotes.get(id).map(|q| q.quote.expires_at) != Some(*at))
        {
            return Err("quote expiry index disagrees with quotes".into());
        }
        if self.partner_usage != self.count_usage() {
            return Err("partners' usage disagrees with their quotes and transfers".into());
        }
        if self.event_cursors.values().any(|next| *next == 0) {
            return Err("an event cursor is zero".into());
        }
        Ok(())
    }
}
