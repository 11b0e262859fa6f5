//! `paymesh webhook …`: register, rotate, remove, replay and list partners'
//! webhooks (`paymesh.admin.v1` SetWebhook, RemoveWebhook, ReplayWebhook,
//! ListWebhooks) on the region's leader.

use anyhow::{bail, Context};
use paymesh_harness::admin_calls::accepted;
use paymesh_proto::admin::v1 as wire;
use rand::RngCore;
use std::path::PathBuf;

use crate::admin::call;
use crate::Target;

/// `paymesh webhook …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum WebhookCommand {
    /// Register a partner's webhook, or change its URL. Without
    /// --secret-file a new secret is generated and printed once: give it to
    /// the partner, whose receiver verifies deliveries with it.
    Set {
        #[command(flatten)]
        target: Target,
        /// The partner.
        #[arg(long)]
        partner: String,
        /// The endpoint, https://host[:port]/path.
        #[arg(long)]
        url: String,
        /// A file holding the signing secret (24 to 256 printable ASCII
        /// bytes; one trailing newline is ignored).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Give a partner's webhook a new secret; the previous one still signs
    /// deliveries for 24 hours, so the partner can switch without a gap.
    Rotate {
        #[command(flatten)]
        target: Target,
        /// The partner.
        #[arg(long)]
        partner: String,
        /// A file holding the new secret; generated and printed once without.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Stop deliveries to a partner's webhook and forget it.
    Remove {
        #[command(flatten)]
        target: Target,
        /// The partner.
        #[arg(long)]
        partner: String,
    },
    /// Deliver a partner's events again from the one after --after (0: from
    /// the oldest history holds); resumes a dead-lettered webhook.
    Replay {
        #[command(flatten)]
        target: Target,
        /// The partner.
        #[arg(long)]
        partner: String,
        /// The last cursor not to deliver again.
        #[arg(long)]
        after: u64,
    },
    /// Every webhook of the region, its progress, and what the leader's
    /// deliveries are doing.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON, one object per webhook in an array.
        #[arg(long)]
        json: bool,
    },
}

/// Run `paymesh webhook …`.
pub(crate) async fn run(command: WebhookCommand) -> anyhow::Result<()> {
    match command {
        WebhookCommand::Set { target, partner, url, secret_file } => {
            let (secret, generated) = secret(secret_file.as_ref())?;
            let hook = set(&target, &partner, &url, &secret).await?;
            println!("{}", line(&hook));
            if generated {
                println!("secret {secret}");
                println!("(shown once: give it to {partner}; its receiver verifies every delivery with it)");
            }
        }
        WebhookCommand::Rotate { target, partner, secret_file } => {
            let current = list(&target)
                .await?
                .into_iter()
                .find(|h| h.partner_id == partner)
                .with_context(|| format!("{partner} has no webhook; register one with `paymesh webhook set`"))?;
            let (secret, generated) = secret(secret_file.as_ref())?;
            let hook = set(&target, &partner, &current.url, &secret).await?;
            println!("{}", line(&hook));
            if generated {
                println!("secret {secret}");
                println!(
                    "(shown once; the previous secret {} still signs until {} ms)",
                    hook.previous_secret_fingerprint, hook.previous_secret_until_unix_ms
                );
            }
        }
        WebhookCommand::Remove { target, partner } => {
            let request = wire::RemoveWebhookRequest { partner_id: partner.clone() };
            let response = call(&target, |mut c| {
                let r = request.clone();
                async move { c.remove_webhook(r).await }
            })
            .await?;
            accepted(response.reject_code)?;
            println!("removed the webhook of {partner}");
        }
        WebhookCommand::Replay { target, partner, after } => {
            let request = wire::ReplayWebhookRequest { partner_id: partner, after_cursor: after };
            let response = call(&target, |mut c| {
                let r = request.clone();
                async move { c.replay_webhook(r).await }
            })
            .await?;
            accepted(response.reject_code)?;
            println!("{}", line(&response.webhook.context("the node did not return the webhook")?));
        }
        WebhookCommand::List { target, json } => {
            let hooks = list(&target).await?;
            if json {
                let rows: Vec<serde_json::Value> = hooks.iter().map(json_row).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if hooks.is_empty() {
                println!("no webhooks");
            } else {
                for hook in &hooks {
                    println!("{}", line(hook));
                }
            }
        }
    }
    Ok(())
}

/// The secret from `file`, or a new one (32 random bytes in hex) and
/// whether it was generated.
fn secret(file: Option<&PathBuf>) -> anyhow::Result<(String, bool)> {
    match file {
        Some(file) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let secret = text.strip_suffix('\n').unwrap_or(&text);
            if secret.is_empty() {
                bail!("{} is empty", file.display());
            }
            Ok((secret.to_owned(), false))
        }
        None => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            Ok((hex::encode(bytes), true))
        }
    }
}

async fn set(target: &Target, partner: &str, url: &str, secret: &str) -> anyhow::Result<wire::Webhook> {
    let request = wire::SetWebhookRequest { partner_id: partner.into(), url: url.into(), secret: secret.into() };
    let response = call(target, |mut c| {
        let r = request.clone();
        async move { c.set_webhook(r).await }
    })
    .await?;
    accepted(response.reject_code)?;
    response.webhook.context("the node did not return the webhook")
}

async fn list(target: &Target) -> anyhow::Result<Vec<wire::Webhook>> {
    Ok(call(target, |mut c| async move { c.list_webhooks(wire::ListWebhooksRequest {}).await }).await?.webhooks)
}

fn state_name(hook: &wire::Webhook) -> &'static str {
    wire::WebhookState::try_from(hook.state).map_or("?", |s| s.as_str_name().trim_start_matches("WEBHOOK_STATE_"))
}

fn line(hook: &wire::Webhook) -> String {
    let mut text = format!(
        "{:<24} {:<15} delivered {}/{}  secret {}  {}",
        hook.partner_id,
        state_name(hook),
        hook.delivered_cursor,
        hook.newest_cursor,
        hook.secret_fingerprint,
        hook.url
    );
    if !hook.previous_secret_fingerprint.is_empty() {
        text.push_str(&format!(
            "  (previous {} until {} ms)",
            hook.previous_secret_fingerprint, hook.previous_secret_until_unix_ms
        ));
    }
    if !hook.dead_letter_reason.is_empty() {
        text.push_str(&format!(
            "\n  dead-lettered at {} ms: {}",
            hook.dead_lettered_at_unix_ms, hook.dead_letter_reason
        ));
    }
    if hook.failures > 0 {
        text.push_str(&format!(
            "\n  {} failures; last: {}; next attempt at {} ms",
            hook.failures, hook.last_error, hook.next_attempt_unix_ms
        ));
    }
    text
}

fn json_row(hook: &wire::Webhook) -> serde_json::Value {
    serde_json::json!({
        "partner": hook.partner_id,
        "url": hook.url,
        "state": state_name(hook),
        "generation": hook.generation,
        "delivered_cursor": hook.delivered_cursor,
        "newest_cursor": hook.newest_cursor,
        "secret_fingerprint": hook.secret_fingerprint,
        "previous_secret_fingerprint": hook.previous_secret_fingerprint,
        "previous_secret_until_unix_ms": hook.previous_secret_until_unix_ms,
        "dead_lettered_at_unix_ms": hook.dead_lettered_at_unix_ms,
        "dead_letter_reason": hook.dead_letter_reason,
        "failures": hook.failures,
        "last_error": hook.last_error,
        "next_attempt_unix_ms": hook.next_attempt_unix_ms,
    })
}
