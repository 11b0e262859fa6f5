//! Webhooks: what a region POSTs to a partner's endpoint, how it is signed,
//! and how a receiver checks it.
//!
//! A delivery is one HTTPS `POST` with a JSON body ([`Delivery`]): the
//! partner's next events in cursor order, at most a few hundred. Its
//! `Paymesh-Signature` header reads `t=<unix ms>,v1=<hex>[,v1=<hex>]`: each
//! `v1` is HMAC-SHA256, under one of the webhook's secrets, of the
//! timestamp, a `.`, and the body's exact bytes. During a secret rotation
//! there are two `v1`s (the new secret's first), so a receiver holding
//! either secret accepts the delivery. [`verify`] does the receiver's
//! checks: a `v1` that matches a secret it holds, and a timestamp within
//! its tolerance of its clock, against replays.
//!
//! Deliveries are at least once: the same event can arrive again (after a
//! timeout whose answer was lost, or after a failover). Each event's `id`
//! (`<region>/<partner>/<cursor>`) is its dedupe id; a receiver that keeps
//! the highest cursor it processed can drop anything at or below it,
//! because deliveries to one endpoint are made one at a time, in cursor
//! order, with no gap. Any 2xx answer acknowledges every event in the body;
//! anything else, or no answer within the region's timeout, is retried.

use hmac::{Hmac, Mac};
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Paymesh-Signature";
/// How far a delivery's timestamp may be from the receiver's clock by
/// default (five minutes), in milliseconds.
pub const DEFAULT_TOLERANCE_MS: u64 = 5 * 60 * 1_000;

/// The body of a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The region that delivered (the partner's home region).
    pub region: String,
    /// The partner the events belong to.
    pub partner: String,
    /// The events, in cursor order, with no gap.
    pub events: Vec<WebhookEvent>,
}

/// One event, as `StreamEvents` gives it (`paymesh.partner.v1.Event`), with
/// its dedupe id. Enumerations are their protobuf names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// `<region>/<partner>/<cursor>`: the same event delivered again has the
    /// same id.
    pub id: String,
    /// The event's position in the partner's sequence (1, 2, 3, …).
    pub cursor: u64,
    /// The transfer, `<origin-region>:<sequence>`.
    pub transfer_id: String,
    /// What happened (`EVENT_KIND_COMMITTED`, …).
    pub kind: String,
    /// The transfer's state right after (`TRANSFER_STATE_COMMITTED`, …).
    pub state: String,
    /// The amount it moved on the partner's position, a decimal string.
    pub amount: String,
    /// Its currency (ISO 4217).
    pub currency: String,
    /// Why the transfer aborted (`REJECT_CODE_…`), for aborts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it happened, Unix milliseconds.
    pub at_unix_ms: i64,
}

impl WebhookEvent {
    /// The webhook form of a partner API event of `partner` in `region`.
    pub fn from_wire(region: &str, partner: &str, event: &wire::Event) -> WebhookEvent {
        let (amount, currency) =
            event.amount.as_ref().map(|m| (m.amount.clone(), m.currency.clone())).unwrap_or_default();
        let reason = common::RejectCode::try_from(event.reason)
            .ok()
            .filter(|code| *code != common::RejectCode::Unspecified)
            .map(|code| code.as_str_name().to_owned());
        WebhookEvent {
            id: format!("{region}/{partner}/{}", event.cursor),
            cursor: event.cursor,
            transfer_id: event.transfer_id.clone(),
            kind: wire::EventKind::try_from(event.kind).unwrap_or_default().as_str_name().to_owned(),
            state: wire::TransferState::try_from(event.state).unwrap_or_default().as_str_name().to_owned(),
            amount,
            currency,
            reason,
            at_unix_ms: event.at_unix_ms,
        }
    }
}

fn mac(secret: &str, timestamp_ms: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Paymesh-Signature` header value of `body` sent at `timestamp_ms`,
/// signed with each of `secrets` in order.
pub fn sign<'a>(secrets: impl IntoIterator<Item = &'a str>, timestamp_ms: u64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp_ms}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac(secret, timestamp_ms, body).finalize().into_bytes()));
    }
    header
}

/// Why a delivery was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header is not `t=<ms>,v1=<hex>…`.
    #[error("malformed Paymesh-Signature header: {0}")]
    Malformed(&'static str),
    /// No `v1` matches any secret held.
    #[error("no signature matches a secret held")]
    NoMatch,
    /// The timestamp is too far from the receiver's clock (a replay, or a
    /// clock badly off).
    #[error("timestamp {timestamp_ms} is more than {tolerance_ms} ms from now ({now_ms})")]
    Stale {
        /// The delivery's timestamp.
        timestamp_ms: u64,
        /// The receiver's clock.
        now_ms: u64,
        /// The tolerance.
        tolerance_ms: u64,
    },
    /// The body is signed but is not a delivery.
    #[error("the body is not a delivery: {0}")]
    Body(String),
}

/// Check a delivery as a receiver must before acting on it: its header
/// `signature` holds a `v1` that is the HMAC of `body` under one of
/// `secrets` (compared in constant time), and its timestamp is within
/// `tolerance_ms` of `now_ms`. Returns the parsed body.
pub fn verify<'a>(
    secrets: impl IntoIterator<Item = &'a str>,
    signature: &str,
    body: &[u8],
    now_ms: u64,
    tolerance_ms: u64,
) -> Result<Delivery, VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in signature.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => {
                timestamp = Some(value.parse::<u64>().map_err(|_| VerifyError::Malformed("t is not a number"))?)
            }
            Some(("v1", value)) => {
                signatures.push(hex::decode(value).map_err(|_| VerifyError::Malformed("v1 is not hex"))?)
            }
            // Later schemes a receiver does not know are skipped.
            Some(_) => {}
            None => return Err(VerifyError::Malformed("a part is not key=value")),
        }
    }
    let timestamp_ms = timestamp.ok_or(VerifyError::Malformed("no t="))?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed("no v1="));
    }
    let matched = secrets
        .into_iter()
        .any(|secret| signatures.iter().any(|s| mac(secret, timestamp_ms, body).verify_slice(s).is_ok()));
    if !matched {
        return Err(VerifyError::NoMatch);
    }
    if now_ms.abs_diff(timestamp_ms) > tolerance_ms {
        return Err(VerifyError::Stale { timestamp_ms, now_ms, tolerance_ms });
    }
    serde_json::from_slice(body).map_err(|e| VerifyError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "0123456789abcdef0123456789abcdef";
    const NEW: &str = "fedcba9876543210fedcba9876543210";

    fn body() -> Vec<u8> {
        let event = wire::Event {
            cursor: 7,
            transfer_id: "us-west:42".into(),
            kind: wire::EventKind::Committed as i32,
            state: wire::TransferState::Committed as i32,
            amount: Some(common::Money { amount: "12.34".into(), currency: "USD".into() }),
            reason: 0,
            at_unix_ms: 1_000,
        };
        let delivery = Delivery {
            region: "us-west".into(),
            partner: "wallet-a".into(),
            events: vec![WebhookEvent::from_wire("us-west", "wallet-a", &event)],
        };
        serde_json::to_vec(&delivery).unwrap()
    }

    #[test]
    fn a_signed_delivery_verifies_with_either_secret_of_a_rotation() {
        let body = body();
        let header = sign([NEW, OLD], 1_000_000, &body);
        assert_eq!(header.matches("v1=").count(), 2);
        for held in [NEW, OLD] {
            let delivery = verify([held], &header, &body, 1_000_500, DEFAULT_TOLERANCE_MS).unwrap();
            assert_eq!(delivery.events[0].id, "us-west/wallet-a/7");
            assert_eq!(delivery.events[0].kind, "EVENT_KIND_COMMITTED");
            assert_eq!(delivery.events[0].reason, None);
        }
    }

    #[test]
    fn a_tampered_body_a_wrong_secret_an_old_timestamp_or_a_bad_header_is_refused() {
        let body = body();
        let header = sign([NEW], 1_000_000, &body);
        let mut tampered = body.clone();
        let at = tampered.iter().position(|b| *b == b'7').unwrap();
        tampered[at] = b'8';
        assert_eq!(verify([NEW], &header, &tampered, 1_000_000, 1_000), Err(VerifyError::NoMatch));
        assert_eq!(verify([OLD], &header, &body, 1_000_000, 1_000), Err(VerifyError::NoMatch));
        assert!(matches!(verify([NEW], &header, &body, 1_002_000, 1_000), Err(VerifyError::Stale { .. })));
        // A timestamp changed in the header breaks the signature.
        let moved = header.replace("t=1000000", "t=1001000");
        assert_eq!(verify([NEW], &moved, &body, 1_001_000, 1_000), Err(VerifyError::NoMatch));
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert!(matches!(verify([NEW], bad, &body, 1, 1_000), Err(VerifyError::Malformed(_))), "{bad:?}");
        }
    }
}
