//! The deadline tick: what the passing of time decides (transfers and
//! refunds past their deadline aborted, expired quotes and idle sessions purged), in
//! bounded steps.

use super::*;

impl State {
    pub(super) fn tick(&mut self, now: Timestamp) -> TickReport {
        let mut report = TickReport::default();
        let mut budget = TICK_WORK_MAX;

        // Reserved transfers past their deadline: abort and tell the payee
        // region. Not while a restored region reconciles: the other
        // region may have committed what this one would abort.
        while budget > 0 && !self.reconciling() {
            let Some((deadline, id)) = self.deadlines.get_min().cloned() else { break };
            if deadline > now {
                break;
            }
            budget -= 1;
            self.deadlines.remove(&(deadline, id.clone()));
            report.aborted += 1;
            if !self.transfers.contains_key(&id) {
                self.expire_refund(&id, now);
                continue;
            }
            let mut transfer = self.transfers[&id].clone();
            transfer.view.reason = Some(RejectCode::DeadlineExceeded);
            step_coordinator(&mut transfer, CoordinatorEvent::DeadlineExpired, now);
            self.use_partner(&transfer.view.partner, |u| u.transfers_in_flight -= 1);
            self.void_payer(&mut transfer, now);
            let key = (transfer.view.corridor.destination_region.clone(), id.clone());
            self.outbox.insert(key, self.decision(&id, Decision::Abort));
            self.transfers.insert(id, transfer);
        }

        let mut purged = self.expire_cancels(now, &mut budget);
        let quotes_cutoff = now.minus_ms(QUOTE_RETENTION_AFTER_EXPIRY_MS);
        let (quotes, usage) = (&mut self.quotes, &mut self.partner_usage);
        purged += purge_before(&mut self.quote_expiry, quotes_cutoff, &mut budget, |(_, id)| {
            if let Some(gone) = quotes.remove(&id).filter(|r| !r.used) {
                let partner = gone.quote.partner;
                if let Some(mut held) = usage.get(&partner).copied() {
                    held.quotes_outstanding -= 1;
                    if held == PartnerUsage::default() {
                        usage.remove(&partner);
                    } else {
                        usage.insert(partner, held);
                    }
                }
            }
        });
        let idle = now.minus_ms(SESSION_IDLE_EXPIRY_MS);
        let stale: Vec<u64> =
            self.sessions.iter().filter(|(_, s)| s.last_active < idle).map(|(id, _)| *id).take(budget).collect();
        purged += stale.len();
        for id in stale {
            self.sessions.remove(&id);
        }
        report.purged = u32::try_from(purged).unwrap_or(u32::MAX);
        report
    }

    /// Whether a `Tick` at `now` would find work: a reserved transfer past
    /// its deadline, or a record past its retention. The leader proposes a
    /// `Tick` only then, so an idle region writes nothing.
    pub fn tick_due(&self, now: Timestamp) -> bool {
        let idle = now.minus_ms(SESSION_IDLE_EXPIRY_MS);
        (due(&self.deadlines, now) && !self.reconciling())
            || due(&self.quote_expiry, now.minus_ms(QUOTE_RETENTION_AFTER_EXPIRY_MS))
            || self.sessions.values().any(|s| s.last_active < idle)
            || self.cancels_due(now)
    }
}
