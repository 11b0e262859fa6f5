//! Webhooks in the replicated state: registration from the newest event,
//! rotation with an overlap, progress that only moves forward and only for
//! its generation, dead letters and replays, and secrets kept out of the
//! audit trail.

use super::*;
use crate::command::Reason;
use crate::webhook::{WebhookSecret, WebhookUrl, SECRET_OVERLAP_MS};

fn secret(fill: char) -> WebhookSecret {
    WebhookSecret::new(fill.to_string().repeat(32)).unwrap()
}

fn set(partner: &str, fill: char) -> CommandBody {
    CommandBody::SetWebhook {
        partner: pid(partner),
        url: WebhookUrl::new("https://hooks.example.com/paymesh").unwrap(),
        secret: secret(fill),
    }
}

/// A region whose `alipay-cn` has made `payments` domestic payments, so its
/// event log is not empty.
fn region_with_events(payments: usize) -> Region {
    let (_, mut east) = mesh();
    pay_domestic(&mut east, payments, T0, "w");
    east
}

#[test]
fn a_new_webhook_starts_after_the_newest_event_and_a_partner_must_exist() {
    let mut east = region_with_events(3);
    let newest = east.state.last_cursor(&pid("alipay-cn"));
    assert!(newest > 0);
    east.ok(set("alipay-cn", 'a'), T0);
    let hook = east.state.webhook(&pid("alipay-cn")).unwrap().clone();
    assert_eq!((hook.delivered, hook.generation, hook.dead_letter), (newest, 1, None));
    assert_eq!(east.run(set("nobody-cn", 'a'), T0), Outcome::Rejected(RejectCode::PartnerNotFound));
    assert_eq!(
        east.run(CommandBody::RemoveWebhook { partner: pid("wechat-cn") }, T0),
        Outcome::Rejected(RejectCode::WebhookNotFound)
    );
}

#[test]
fn a_rotation_signs_with_both_secrets_for_the_overlap_and_keeps_progress() {
    let mut east = region_with_events(2);
    east.ok(set("alipay-cn", 'a'), T0);
    let at = T0.plus_ms(10);
    east.ok(set("alipay-cn", 'b'), at);
    let hook = east.state.webhook(&pid("alipay-cn")).unwrap().clone();
    assert_eq!(hook.signing_secrets(at), vec![&secret('b'), &secret('a')]);
    assert_eq!(hook.signing_secrets(at.plus_ms(SECRET_OVERLAP_MS)), vec![&secret('b')]);
    assert_eq!(hook.generation, 2);
    assert_eq!(hook.delivered, east.state.last_cursor(&pid("alipay-cn")), "progress is kept");
    // The same secret again (a URL change) keeps the overlap as it was.
    east.ok(set("alipay-cn", 'b'), at.plus_ms(1));
    assert_eq!(east.state.webhook(&pid("alipay-cn")).unwrap().previous, hook.previous);
}

#[test]
fn progress_moves_forward_for_its_generation_only() {
    let mut east = region_with_events(1);
    east.ok(set("alipay-cn", 'a'), T0);
    let start = east.state.webhook(&pid("alipay-cn")).unwrap().delivered;
    pay_domestic(&mut east, 4, T0, "x");
    let newest = east.state.last_cursor(&pid("alipay-cn"));
    let delivered = |east: &Region| east.state.webhook(&pid("alipay-cn")).unwrap().delivered;
    let progress =
        |generation, through| CommandBody::WebhookDelivered { partner: pid("alipay-cn"), generation, through };
    east.ok(progress(1, start + 2), T0);
    assert_eq!(delivered(&east), start + 2);
    east.ok(progress(1, start + 1), T0);
    assert_eq!(delivered(&east), start + 2, "never backwards");
    assert_eq!(east.run(progress(1, newest + 1), T0), Outcome::Rejected(RejectCode::ProtocolViolation));
    // A replay to an older cursor: progress reported for generation 1 (in
    // flight during the replay) must not skip the replayed events.
    east.ok(CommandBody::ReplayWebhook { partner: pid("alipay-cn"), after: 0 }, T0);
    assert_eq!(delivered(&east), 0);
    east.ok(progress(1, newest), T0);
    assert_eq!(delivered(&east), 0, "an older generation's progress is ignored");
    east.ok(progress(2, 3), T0);
    assert_eq!(delivered(&east), 3);
    assert_eq!(
        east.run(CommandBody::ReplayWebhook { partner: pid("alipay-cn"), after: newest + 1 }, T0),
        Outcome::Rejected(RejectCode::ProtocolViolation)
    );
}

#[test]
fn a_dead_letter_stops_delivery_until_a_replay_or_a_new_registration() {
    let mut east = region_with_events(3);
    east.ok(set("alipay-cn", 'a'), T0);
    east.ok(CommandBody::ReplayWebhook { partner: pid("alipay-cn"), after: 0 }, T0);
    let reason = Reason::new("HTTP 503 for 24h").unwrap();
    let dead = |generation| CommandBody::WebhookDeadLettered {
        partner: pid("alipay-cn"),
        generation,
        through: 1,
        reason: reason.clone(),
    };
    east.ok(dead(1), T0);
    assert!(east.state.webhook(&pid("alipay-cn")).unwrap().dead_letter.is_none(), "an old generation's");
    east.ok(dead(2), T0.plus_ms(5));
    let hook = east.state.webhook(&pid("alipay-cn")).unwrap().clone();
    assert_eq!(hook.dead_letter.as_ref().map(|d| (d.at, &d.reason)), Some((T0.plus_ms(5), &reason)));
    assert_eq!(hook.delivered, 1);
    east.ok(CommandBody::ReplayWebhook { partner: pid("alipay-cn"), after: 0 }, T0);
    assert!(east.state.webhook(&pid("alipay-cn")).unwrap().dead_letter.is_none());
    east.ok(dead(3), T0);
    east.ok(set("alipay-cn", 'a'), T0);
    let hook = east.state.webhook(&pid("alipay-cn")).unwrap().clone();
    assert!(hook.dead_letter.is_none(), "a new registration resumes");
    assert_eq!(hook.delivered, 1, "from where it stopped");
    east.ok(CommandBody::RemoveWebhook { partner: pid("alipay-cn") }, T0);
    assert!(east.state.webhook(&pid("alipay-cn")).is_none());
    // Progress for a removed webhook changes nothing and is no error.
    east.ok(CommandBody::WebhookDelivered { partner: pid("alipay-cn"), generation: 4, through: 1 }, T0);
}

#[test]
fn the_audit_trail_keeps_a_secrets_fingerprint_not_the_secret() {
    let mut east = region_with_events(1);
    let operator = OperatorId::new("ops-alice").unwrap();
    east.ok(CommandBody::ByOperator { operator, command: Box::new(set("alipay-cn", 's')) }, T0);
    east.ok(set("alipay-cn", 't'), T0);
    let mut audited = 0;
    for (_, record) in east.history.records() {
        let text = format!("{record:?} {}", serde_json::to_string(record).unwrap());
        assert!(!text.contains(secret('s').as_str()) && !text.contains(secret('t').as_str()), "{text}");
        if let Record::Audited { command, .. } | Record::Operator { command, .. } = record {
            if let CommandBody::SetWebhook { secret: kept, .. } = &**command {
                assert!(kept.as_str().starts_with("redacted:sha256:"), "{kept:?}");
                audited += 1;
            }
        }
    }
    assert_eq!(audited, 2);
    // The state itself signs with the real secret.
    assert_eq!(east.state.webhook(&pid("alipay-cn")).unwrap().secret, secret('t'));
}
