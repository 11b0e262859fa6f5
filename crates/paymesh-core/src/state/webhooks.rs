//! Partners' webhooks: registration, rotation, replay, and the progress
//! the leader's deliveries record ([`crate::webhook`]).

use super::*;
use crate::command::Reason;
use crate::webhook::{DeadLetter, PreviousSecret, WebhookSecret, WebhookUrl, SECRET_OVERLAP_MS};

impl State {
    pub(super) fn set_webhook(
        &mut self,
        partner: &PartnerId,
        url: &WebhookUrl,
        secret: &WebhookSecret,
        now: Timestamp,
    ) -> OrReject<()> {
        if !self.partners.contains_key(partner) {
            return Err(RejectCode::PartnerNotFound);
        }
        let newest = self.last_cursor(partner);
        let hook = match self.webhooks.get(partner) {
            Some(existing) => {
                let previous = if existing.secret == *secret {
                    existing.previous.clone()
                } else {
                    Some(PreviousSecret { secret: existing.secret.clone(), until: now.plus_ms(SECRET_OVERLAP_MS) })
                };
                Webhook {
                    url: url.clone(),
                    secret: secret.clone(),
                    previous,
                    delivered: existing.delivered,
                    generation: existing.generation + 1,
                    dead_letter: None,
                    updated_at: now,
                }
            }
            None => Webhook {
                url: url.clone(),
                secret: secret.clone(),
                previous: None,
                delivered: newest,
                generation: 1,
                dead_letter: None,
                updated_at: now,
            },
        };
        self.webhooks.insert(partner.clone(), hook);
        Ok(())
    }

    pub(super) fn replay_webhook(&mut self, partner: &PartnerId, after: u64, now: Timestamp) -> OrReject<()> {
        let newest = self.last_cursor(partner);
        let hook = self.webhooks.get_mut(partner).ok_or(RejectCode::WebhookNotFound)?;
        if after > newest {
            // The admin API checks the cursor first.
            return Err(RejectCode::ProtocolViolation);
        }
        hook.delivered = after;
        hook.generation += 1;
        hook.dead_letter = None;
        hook.updated_at = now;
        Ok(())
    }

    /// Record the leader's progress: every event through `through`
    /// acknowledged, and, with `dead`, delivery stopped. Progress for an
    /// older generation (a replay or change came in between) changes
    /// nothing; so does progress for a webhook removed since.
    pub(super) fn webhook_delivered(
        &mut self,
        partner: &PartnerId,
        generation: u64,
        through: u64,
        dead: Option<&Reason>,
        now: Timestamp,
    ) -> OrReject<()> {
        if through > self.last_cursor(partner) {
            return Err(RejectCode::ProtocolViolation);
        }
        let Some(hook) = self.webhooks.get_mut(partner).filter(|h| h.generation == generation) else {
            return Ok(());
        };
        hook.delivered = hook.delivered.max(through);
        if let Some(reason) = dead {
            hook.dead_letter = Some(DeadLetter { at: now, reason: reason.clone() });
        }
        Ok(())
    }

    /// A partner's webhook, if it has one.
    pub fn webhook(&self, partner: &PartnerId) -> Option<&Webhook> {
        self.webhooks.get(partner)
    }

    /// Every partner's webhook, by partner.
    pub fn webhooks(&self) -> impl Iterator<Item = (&PartnerId, &Webhook)> {
        self.webhooks.iter()
    }
}
