//! Webhooks: a partner's HTTPS endpoint that receives the partner's events,
//! a second way to read the event log besides `StreamEvents`.
//!
//! What is replicated is what must survive a change of leader: where to
//! deliver, the secret deliveries are signed with (and the previous one
//! while a rotation overlaps), how far the endpoint has acknowledged, and
//! whether delivery stopped in the dead-letter state. The delivery itself
//! (HTTP calls, retries, backoff) is the leader's, outside the core; it
//! records its progress with [`crate::CommandBody::WebhookDelivered`], so a
//! new leader resumes from the last recorded cursor and delivers at least
//! once.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::Reason;
use crate::id::IdError;
use crate::time::Timestamp;

/// The longest endpoint URL, in bytes.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2_048;
/// The shortest signing secret, in bytes (at least 128 bits of entropy as
/// the CLI generates them, 32 random bytes in hex).
pub const WEBHOOK_SECRET_BYTES_MIN: usize = 24;
/// The longest signing secret, in bytes.
pub const WEBHOOK_SECRET_BYTES_MAX: usize = 256;
/// How long the previous secret still signs deliveries after a rotation, so
/// a partner can switch its receiver to the new one without a gap.
pub const SECRET_OVERLAP_MS: u64 = 24 * 60 * 60 * 1_000;

/// An endpoint's URL: `https://…` (or `http://…`, which a node accepts only
/// when it runs without TLS, in development), with a host, no whitespace or
/// control characters, at most [`WEBHOOK_URL_BYTES_MAX`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct WebhookUrl(String);

crate::serde_text::serialize_as_text!(WebhookUrl, as_str);

impl WebhookUrl {
    /// Validate a URL's form (not whether anything answers there).
    pub fn new(text: impl Into<String>) -> Result<WebhookUrl, IdError> {
        let text = text.into();
        let what = "webhook url";
        if text.is_empty() {
            return Err(IdError::Empty { what });
        }
        if text.len() > WEBHOOK_URL_BYTES_MAX {
            return Err(IdError::TooLong { what, max: WEBHOOK_URL_BYTES_MAX });
        }
        if let Some((index, character)) = text.char_indices().find(|(_, c)| c.is_whitespace() || c.is_control()) {
            return Err(IdError::InvalidCharacter { what, character, index, allowed: "no whitespace" });
        }
        let rest = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
        match host {
            Some(host) if !host.is_empty() && !host.contains('@') => Ok(WebhookUrl(text)),
            _ => Err(IdError::Malformed {
                what,
                text: text.chars().take(64).collect(),
                form: "https://host[:port]/path",
            }),
        }
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether deliveries to it are encrypted (`https://`).
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

impl TryFrom<String> for WebhookUrl {
    type Error = IdError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        WebhookUrl::new(text)
    }
}

/// A secret deliveries are signed with (HMAC-SHA256): printable ASCII
/// without spaces, [`WEBHOOK_SECRET_BYTES_MIN`] to
/// [`WEBHOOK_SECRET_BYTES_MAX`] bytes. Its `Debug` shows only its
/// fingerprint, and the audit trail keeps only that.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct WebhookSecret(String);

crate::serde_text::serialize_as_text!(WebhookSecret, as_str);

impl WebhookSecret {
    /// Validate a secret.
    pub fn new(text: impl Into<String>) -> Result<WebhookSecret, IdError> {
        let text = text.into();
        let what = "webhook secret";
        if text.len() < WEBHOOK_SECRET_BYTES_MIN {
            return Err(IdError::Malformed {
                what,
                text: String::new(),
                form: "at least 24 bytes (the CLI generates 32 random bytes in hex)",
            });
        }
        if text.len() > WEBHOOK_SECRET_BYTES_MAX {
            return Err(IdError::TooLong { what, max: WEBHOOK_SECRET_BYTES_MAX });
        }
        if let Some(index) = text.bytes().position(|b| !b.is_ascii_graphic()) {
            // The character itself is not shown: it is part of a secret.
            return Err(IdError::InvalidCharacter {
                what,
                character: '?',
                index,
                allowed: "printable ASCII, no spaces",
            });
        }
        Ok(WebhookSecret(text))
    }

    /// The secret's bytes, for signing.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short public name of the secret (`sha256:` and 16 hex digits of its
    /// hash), for operators and the audit trail.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!("sha256:{}", hex_prefix(&digest, 8))
    }

    /// What the audit trail keeps in place of the secret: its fingerprint,
    /// marked, itself a well-formed secret so the audited command still
    /// decodes.
    pub fn redacted(&self) -> WebhookSecret {
        WebhookSecret(format!("redacted:{}", self.fingerprint()))
    }
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    hex::encode(&bytes[..n.min(bytes.len())])
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecret({})", self.fingerprint())
    }
}

impl TryFrom<String> for WebhookSecret {
    type Error = IdError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        WebhookSecret::new(text)
    }
}

/// The secret a rotation replaced, still signing until `until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// The secret.
    pub secret: WebhookSecret,
    /// When it stops signing (exclusive).
    pub until: Timestamp,
}

/// Why and since when delivery to an endpoint stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When the leader gave up.
    pub at: Timestamp,
    /// What the last attempt met.
    pub reason: Reason,
}

/// A partner's webhook as the region keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Where events go.
    pub url: WebhookUrl,
    /// What deliveries are signed with.
    pub secret: WebhookSecret,
    /// The secret before the latest rotation, while it still signs.
    pub previous: Option<PreviousSecret>,
    /// Every event through this cursor was acknowledged by the endpoint
    /// (as far as the leaders recorded: a delivery acknowledged but not yet
    /// recorded is sent again after a failover).
    pub delivered: u64,
    /// Changed by every registration, change and replay: progress reported
    /// for an older generation is ignored, so an acknowledgement in flight
    /// during a replay cannot skip the replayed events.
    pub generation: u64,
    /// Set when delivery stopped after failing past the leader's limit;
    /// cleared by a replay or a new registration.
    pub dead_letter: Option<DeadLetter>,
    /// When an operator last changed it.
    pub updated_at: Timestamp,
}

impl Webhook {
    /// The secrets a delivery made at `now` is signed with: the current one
    /// first, then the previous one while the rotation overlaps.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&WebhookSecret> {
        let previous = self.previous.as_ref().filter(|p| now < p.until).map(|p| &p.secret);
        std::iter::once(&self.secret).chain(previous).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_scheme_and_a_host_and_no_spaces() {
        assert!(WebhookUrl::new("https://hooks.example.com/paymesh").unwrap().is_https());
        assert!(!WebhookUrl::new("http://127.0.0.1:8080/hook").unwrap().is_https());
        for bad in ["", "ftp://x/", "https://", "https:///path", "https://a b/", "hooks.example.com", "https://u@h/"] {
            assert!(WebhookUrl::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(WebhookUrl::new(format!("https://h/{}", "a".repeat(WEBHOOK_URL_BYTES_MAX))).is_err());
    }

    #[test]
    fn secrets_are_long_printable_and_never_shown() {
        let secret = WebhookSecret::new("0123456789abcdef0123456789abcdef").unwrap();
        assert!(!format!("{secret:?}").contains("0123456789abcdef"));
        assert!(format!("{secret:?}").contains(&secret.fingerprint()));
        assert!(WebhookSecret::new("short").is_err());
        assert!(WebhookSecret::new("0123456789abcdef 0123456789abcdef").is_err());
        let redacted = secret.redacted();
        assert_ne!(redacted, secret);
        assert!(redacted.as_str().ends_with(&secret.fingerprint()));
    }

    #[test]
    fn the_previous_secret_signs_only_while_the_rotation_overlaps() {
        let old = WebhookSecret::new("a".repeat(32)).unwrap();
        let new = WebhookSecret::new("b".repeat(32)).unwrap();
        let hook = Webhook {
            url: WebhookUrl::new("https://h/").unwrap(),
            secret: new.clone(),
            previous: Some(PreviousSecret { secret: old.clone(), until: Timestamp::from_unix_ms(1_000) }),
            delivered: 0,
            generation: 1,
            dead_letter: None,
            updated_at: Timestamp::EPOCH,
        };
        assert_eq!(hook.signing_secrets(Timestamp::from_unix_ms(999)), vec![&new, &old]);
        assert_eq!(hook.signing_secrets(Timestamp::from_unix_ms(1_000)), vec![&new]);
    }
}
