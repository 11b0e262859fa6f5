//! Webhook delivery, run by the leader from the replicated event log.
//!
//! While this node leads, [`deliver`] keeps one task per partner whose
//! webhook is registered and not dead-lettered. Each task reads the
//! partner's events after the webhook's acknowledged cursor from the
//! applied state and history, POSTs them (at most
//! `webhooks.events_per_delivery` at a time, in cursor order, one delivery
//! in flight) signed as `paymesh_client::webhook` describes, and records
//! each acknowledgement as a `WebhookDelivered` command, so the next leader
//! resumes where this one was: at least once, never with a gap.
//!
//! A failure (an answer other than 2xx, no answer within
//! `webhooks.timeout_ms`, no connection) is retried with capped
//! exponential backoff and equal jitter ([`retry_delay`]); after failing
//! for `webhooks.dead_letter_after_ms` without a success the task records a
//! `WebhookDeadLettered` command and stops, until an operator replays or
//! changes the webhook (each makes a new generation, which the supervisor
//! sees and starts a task for).
//!
//! Isolation: every partner's deliveries are a task of their own, with
//! their own connections and a bounded timeout, awaiting nothing of another
//! partner's; payments never wait for a delivery (the tasks only read the
//! applied state and propose small commands). A slow or dead endpoint costs
//! only its own partner's deliveries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paymesh_client::webhook::{sign, Delivery, WebhookEvent, SIGNATURE_HEADER};
use paymesh_core::command::{CommandBody, Reason};
use paymesh_core::id::PartnerId;
use paymesh_core::webhook::Webhook;
use paymesh_core::Outcome;
use tokio::task::JoinHandle;

use crate::config::WebhookSettings;
use crate::convert;
use crate::gateway::Gateway;

/// How often the supervisor looks for webhooks registered, changed,
/// replayed or removed.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(200);
/// How long a task with nothing to send waits before looking again (it also
/// wakes when entries are applied).
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// The longest error text kept for operators.
const ERROR_TEXT_MAX: usize = 200;

/// Webhook delivery on this node: its settings, and what its tasks are doing
/// (for the admin API, on the leader).
#[derive(Debug)]
pub struct Webhooks {
    settings: WebhookSettings,
    /// Whether endpoints may be `http://` (a node without TLS, in
    /// development).
    plaintext_allowed: bool,
    live: Mutex<BTreeMap<PartnerId, Live>>,
}

/// What a partner's delivery task is doing, as the leader sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// Failed attempts since the last success.
    pub failures: u32,
    /// When the first of them was, Unix milliseconds.
    pub failing_since_unix_ms: Option<u64>,
    /// What the last failure was.
    pub last_error: Option<String>,
    /// When the next attempt is due, Unix milliseconds, while waiting to retry.
    pub next_attempt_unix_ms: Option<u64>,
}

impl Webhooks {
    /// Delivery with `settings`; `plaintext_allowed` when the node runs
    /// without TLS.
    pub fn new(settings: WebhookSettings, plaintext_allowed: bool) -> Webhooks {
        Webhooks { settings, plaintext_allowed, live: Mutex::new(BTreeMap::new()) }
    }

    /// Whether this node delivers to `http://` endpoints.
    pub fn plaintext_allowed(&self) -> bool {
        self.plaintext_allowed
    }

    /// What the task of `partner` is doing, if this node runs one.
    pub fn live(&self, partner: &PartnerId) -> Option<Live> {
        self.lock().get(partner).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PartnerId, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, partner: &PartnerId, change: impl FnOnce(&mut Live)) {
        change(self.lock().entry(partner.clone()).or_default());
    }
}

/// The delay before retry number `failures` (1 for the first): the
/// initial delay doubled for each failure before it, capped at `max`, then
/// drawn between half of it and all of it from `random` ("equal jitter":
/// endpoints that failed together do not retry together, and no retry comes
/// sooner than half its step).
pub fn retry_delay(initial: Duration, max: Duration, failures: u32, random: u64) -> Duration {
    let step = initial.saturating_mul(1 << failures.saturating_sub(1).min(30)).min(max);
    let half = step / 2;
    let spread = u64::try_from((step - half).as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(random % (spread + 1))
}

/// Keep a delivery task per partner whose webhook is live, while this node
/// leads (the caller aborts it when leadership moves).
pub async fn deliver(gateway: Gateway) {
    let client = match client(&gateway.webhooks) {
        Ok(client) => client,
        Err(why) => {
            tracing::error!(%why, "webhook deliveries cannot start: no HTTP client");
            return;
        }
    };
    let mut tasks = Tasks::default();
    while gateway.registry.leads() {
        let applied = gateway.state_machine.applied();
        let wanted: BTreeMap<PartnerId, u64> = applied
            .state
            .webhooks()
            .filter(|(_, hook)| hook.dead_letter.is_none())
            .map(|(partner, hook)| (partner.clone(), hook.generation))
            .collect();
        tasks.0.retain(|partner, (generation, task)| {
            let keep = wanted.get(partner) == Some(generation) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        gateway.webhooks.lock().retain(|partner, _| wanted.contains_key(partner));
        for (partner, generation) in wanted {
            if let std::collections::btree_map::Entry::Vacant(place) = tasks.0.entry(partner) {
                let task = deliver_to(gateway.clone(), client.clone(), place.key().clone(), generation);
                place.insert((generation, tokio::spawn(task)));
            }
        }
        tokio::time::sleep(SUPERVISE_INTERVAL).await;
    }
}

/// The delivery tasks by partner, with the generation each delivers for;
/// aborted when the supervisor ends or is aborted (leadership moved).
#[derive(Default)]
struct Tasks(BTreeMap<PartnerId, (u64, JoinHandle<()>)>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, task) in self.0.values() {
            task.abort();
        }
    }
}

fn client(webhooks: &Webhooks) -> Result<reqwest::Client, String> {
    let settings = &webhooks.settings;
    let timeout = Duration::from_millis(settings.timeout_ms);
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("paymesh-webhooks/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(2)
        .https_only(!webhooks.plaintext_allowed);
    if let Some(file) = &settings.ca_cert {
        let pem = std::fs::read(file).map_err(|e| format!("webhooks.ca_cert {}: {e}", file.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("webhooks.ca_cert {}: {e}", file.display()))?;
        if certs.is_empty() {
            return Err(format!("webhooks.ca_cert {}: no certificate in it", file.display()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

fn unix_ms_now() -> u64 {
    crate::gateway::now().unix_ms()
}

/// The live webhook of `partner` at `generation`, if it still is.
fn current(gateway: &Gateway, partner: &PartnerId, generation: u64) -> Option<(Webhook, u64)> {
    let applied = gateway.state_machine.applied();
    let newest = applied.state.last_cursor(partner);
    applied
        .state
        .webhook(partner)
        .filter(|hook| hook.generation == generation && hook.dead_letter.is_none())
        .map(|hook| (hook.clone(), newest))
}

/// Deliver `partner`'s events to its webhook of `generation` until it
/// changes, is removed, or is dead-lettered here.
async fn deliver_to(gateway: Gateway, client: reqwest::Client, partner: PartnerId, generation: u64) {
    let settings = gateway.webhooks.settings.clone();
    let mut applied = gateway.state_machine.watch_applied();
    let mut sent = 0;
    let mut recording: Option<JoinHandle<()>> = None;
    // The highest cursor a `WebhookDelivered` was applied for, by this task.
    let recorded = Arc::new(AtomicU64::new(0));
    let mut failing_since: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        let Some((hook, newest)) = current(&gateway, &partner, generation) else { return };
        sent = sent.max(hook.delivered);
        recorded.fetch_max(hook.delivered, Ordering::Relaxed);
        if sent > recorded.load(Ordering::Relaxed) && recording.as_ref().is_none_or(JoinHandle::is_finished) {
            // Record progress, one proposal at a time, until one is applied
            // (a refused or lost proposal is made again on the next turn);
            // until then a failover sends those events again.
            let body = CommandBody::WebhookDelivered { partner: partner.clone(), generation, through: sent };
            let (gateway, recorded, through) = (gateway.clone(), recorded.clone(), sent);
            recording = Some(tokio::spawn(async move {
                if let Ok(Outcome::Done) = gateway.operate(body).await {
                    recorded.fetch_max(through, Ordering::Relaxed);
                }
            }));
        }
        if sent >= newest {
            let _ = tokio::time::timeout(IDLE_WAIT, applied.changed()).await;
            continue;
        }
        let events = match read_events(&gateway, &partner, sent, settings.events_per_delivery).await {
            Ok(events) => events,
            Err(why) => {
                // Retention deleted what was never delivered: nothing can be
                // sent; an operator replays from a cursor history holds.
                dead_letter(&gateway, &partner, generation, sent, &why).await;
                return;
            }
        };
        let Some(last) = events.last().map(|e| e.cursor) else {
            let _ = tokio::time::timeout(IDLE_WAIT, applied.changed()).await;
            continue;
        };
        let region = gateway.region.to_string();
        let delivery = Delivery {
            region: region.clone(),
            partner: partner.to_string(),
            events: events.iter().map(|e| WebhookEvent::from_wire(&region, partner.as_str(), e)).collect(),
        };
        let result = post(&client, &hook, &delivery).await;
        match result {
            Ok(()) => {
                sent = last;
                failures = 0;
                failing_since = None;
                gateway.webhooks.update(&partner, |live| *live = Live::default());
            }
            Err(why) => {
                failures = failures.saturating_add(1);
                let since = *failing_since.get_or_insert_with(Instant::now);
                let failing_for = since.elapsed();
                tracing::warn!(%partner, failures, error = %why, "webhook delivery failed");
                if failing_for >= Duration::from_millis(settings.dead_letter_after_ms) {
                    let reason =
                        format!("failing for {} s after {failures} attempts; last: {why}", failing_for.as_secs());
                    dead_letter(&gateway, &partner, generation, sent, &reason).await;
                    return;
                }
                let delay = retry_delay(
                    Duration::from_millis(settings.retry_initial_ms),
                    Duration::from_millis(settings.retry_max_ms),
                    failures,
                    rand::random(),
                );
                let now = unix_ms_now();
                let failing_since_unix_ms = now.saturating_sub(u64::try_from(failing_for.as_millis()).unwrap_or(0));
                gateway.webhooks.update(&partner, |live| {
                    *live = Live {
                        failures,
                        failing_since_unix_ms: Some(failing_since_unix_ms),
                        last_error: Some(why.chars().take(ERROR_TEXT_MAX).collect()),
                        next_attempt_unix_ms: Some(now + u64::try_from(delay.as_millis()).unwrap_or(0)),
                    }
                });
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The events of `partner` after cursor `after`, at most `max`, in the
/// partner API's form; read off the runtime's threads (history is on disk).
async fn read_events(
    gateway: &Gateway,
    partner: &PartnerId,
    after: u64,
    max: usize,
) -> Result<Vec<paymesh_proto::partner::v1::Event>, String> {
    let store = gateway.state_machine.clone();
    let partner = partner.clone();
    tokio::task::spawn_blocking(move || {
        let applied = store.applied();
        applied
            .state
            .events_after(&partner, after, max, store.history())
            .map(|events| events.iter().map(convert::event_out).collect())
            .map_err(|expired| {
                format!("events after {} are no longer retained (oldest {})", expired.requested, expired.oldest)
            })
    })
    .await
    .map_err(|e| format!("reading events: {e}"))?
}

/// POST one delivery; `Ok` only for a 2xx answer.
async fn post(client: &reqwest::Client, hook: &Webhook, delivery: &Delivery) -> Result<(), String> {
    let body = serde_json::to_vec(delivery).map_err(|e| format!("encoding: {e}"))?;
    let now = crate::gateway::now();
    let signature = sign(hook.signing_secrets(now).into_iter().map(|s| s.as_str()), now.unix_ms(), &body);
    let response = client
        .post(hook.url.as_str())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .map_err(|e| error_text(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// An error and its causes on one line (reqwest's own text names only the
/// outermost).
fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn dead_letter(gateway: &Gateway, partner: &PartnerId, generation: u64, through: u64, why: &str) {
    tracing::error!(%partner, generation, through, reason = %why, "webhook dead-lettered");
    let text: String = why.chars().take(ERROR_TEXT_MAX).collect();
    let reason = Reason::new(text).unwrap_or_else(|_| Reason::new("delivery failed").expect("a valid reason"));
    let body = CommandBody::WebhookDeadLettered { partner: partner.clone(), generation, through, reason };
    match gateway.operate(body).await {
        Ok(Outcome::Done) => {}
        other => tracing::warn!(%partner, ?other, "recording the dead letter failed; the next leader retries"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every delay is between half and all of its step; steps double
        /// from the initial delay and stop at the cap.
        #[test]
        fn retry_delays_double_to_the_cap_with_equal_jitter(failures in 1u32..100, random: u64) {
            let (initial, max) = (Duration::from_millis(1_000), Duration::from_millis(300_000));
            let delay = retry_delay(initial, max, failures, random);
            let step = Duration::from_millis(1_000u64.saturating_mul(1 << (failures - 1).min(30)).min(300_000));
            prop_assert!(delay >= step / 2 && delay <= step, "{delay:?} for step {step:?}");
        }
    }

    #[test]
    fn the_first_retries_come_soon_and_later_ones_at_the_cap() {
        let (initial, max) = (Duration::from_millis(1_000), Duration::from_millis(300_000));
        assert_eq!(retry_delay(initial, max, 1, 0), Duration::from_millis(500));
        assert_eq!(retry_delay(initial, max, 1, 500), Duration::from_millis(1_000));
        assert_eq!(retry_delay(initial, max, 3, 0), Duration::from_millis(2_000));
        assert_eq!(retry_delay(initial, max, 40, u64::MAX), retry_delay(initial, max, 40, u64::MAX % 150_001));
        assert!(retry_delay(initial, max, 40, 7) >= Duration::from_millis(150_000));
    }
}
