//! Partners' webhooks in a mesh of local processes (the chaos suite's
//! process backend, the demo): a receiver per partner on this machine's
//! loopback, registered before the workload starts; an outage of every
//! receiver when a run wants one; and, once the mesh has settled, what each
//! receiver got, for the `webhooks` checker (every event once after dedupe,
//! in cursor order, signed).

use std::time::{Duration, Instant};

use crate::admin_calls::{accepted, call_region};
use crate::history::WebhookObservation;
use crate::webhook_receiver::{Behaviour, Receiver, ReceiverCa};
use anyhow::Context;
use paymesh_client::Region;
use paymesh_proto::admin::v1 as wire;

/// The status the receivers answer during their outage.
const OUTAGE_STATUS: u16 = 503;

/// One partner's receiver and what registering it gave.
#[derive(Debug)]
pub struct Watched {
    region: String,
    partner: String,
    secret: String,
    receiver: Receiver,
    registered_after: u64,
}

/// Start a receiver for each of `partners` (region, partner) and register
/// it as the partner's webhook through its region's `operators`.
pub async fn register(
    ca: &ReceiverCa,
    operators: &[(String, Region)],
    partners: &[(&str, &str)],
) -> anyhow::Result<Vec<Watched>> {
    let mut watched = Vec::with_capacity(partners.len());
    for (region, partner) in partners {
        let operator = operator(operators, region)?;
        let receiver = ca.receiver(Behaviour::Accept).await?;
        let secret = format!("chaos-webhook-secret-of-{partner}");
        let hook = set(operator, partner, &receiver.url(), &secret)
            .await
            .with_context(|| format!("registering {region}/{partner}'s webhook"))?;
        watched.push(Watched {
            region: (*region).to_owned(),
            partner: (*partner).to_owned(),
            secret,
            receiver,
            registered_after: hook.delivered_cursor,
        });
    }
    Ok(watched)
}

/// Register `partner`'s webhook at `url`, signed with `secret`, through
/// its region's `operator`: the webhook as stored, or why not.
pub async fn set(operator: &Region, partner: &str, url: &str, secret: &str) -> anyhow::Result<wire::Webhook> {
    let request =
        wire::SetWebhookRequest { partner_id: partner.to_owned(), url: url.to_owned(), secret: secret.to_owned() };
    let answer = call_region(operator, |mut c| {
        let r = request.clone();
        async move { c.set_webhook(r).await }
    })
    .await?;
    accepted(answer.reject_code)?;
    answer.webhook.context("the node stored the webhook but did not return it")
}

fn operator<'a>(operators: &'a [(String, Region)], region: &str) -> anyhow::Result<&'a Region> {
    operators.iter().find(|(name, _)| name == region).map(|(_, o)| o).with_context(|| format!("no region {region}"))
}

/// Every receiver refuses (an outage of the partners' side) or accepts.
pub fn outage(watched: &[Watched], on: bool) {
    for hook in watched {
        hook.receiver.set(if on { Behaviour::Fail(OUTAGE_STATUS) } else { Behaviour::Accept });
    }
}

/// What each receiver got, once it got everything its partner's region
/// holds or `bound` passed (the checker then names what is missing).
pub async fn observe(
    watched: &[Watched],
    operators: &[(String, Region)],
    bound: Duration,
) -> anyhow::Result<Vec<WebhookObservation>> {
    let deadline = Instant::now() + bound;
    let mut observed = Vec::with_capacity(watched.len());
    for hook in watched {
        let operator = operator(operators, &hook.region)?;
        let mut observation = loop {
            let listed =
                call_region(operator, |mut c| async move { c.list_webhooks(wire::ListWebhooksRequest {}).await })
                    .await?;
            let state = listed.webhooks.iter().find(|w| w.partner_id == hook.partner);
            let observation = observed_now(hook, state);
            let through = observation.delivered.iter().copied().max().unwrap_or(hook.registered_after);
            if through >= observation.newest || Instant::now() >= deadline {
                break observation;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        observation.refused = hook.receiver.received().iter().filter(|r| r.status == OUTAGE_STATUS).count();
        observed.push(observation);
    }
    Ok(observed)
}

fn observed_now(hook: &Watched, state: Option<&wire::Webhook>) -> WebhookObservation {
    // Verified at its arrival, with a tolerance for the nodes' clocks.
    let (events, bad_signatures) = hook.receiver.events(&[&hook.secret], 60_000);
    let delivered = events.into_iter().map(|(_, e)| e.cursor).collect();
    WebhookObservation {
        region: hook.region.clone(),
        partner: hook.partner.clone(),
        registered_after: hook.registered_after,
        newest: state.map_or(0, |s| s.newest_cursor),
        state: state.map_or("MISSING".to_owned(), |s| {
            wire::WebhookState::try_from(s.state)
                .map_or("UNKNOWN", |s| s.as_str_name().trim_start_matches("WEBHOOK_STATE_"))
                .to_owned()
        }),
        delivered,
        bad_signatures,
        refused: 0,
    }
}
