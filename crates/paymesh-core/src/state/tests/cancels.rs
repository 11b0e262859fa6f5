//! Cancels: a payer takes back a whole payment within the cancel window,
//! within its region at once and across borders through the payee's
//! region; refused where it must be, exactly once however often asked.

use super::*;
use crate::limits::PREPARE_DEADLINE_AHEAD_MAX_MS;
use crate::outcome::{CancelState, CancelView};

fn cancel(partner: &str, transfer: &TransferId) -> CommandBody {
    CommandBody::CancelTransfer { partner: pid(partner), transfer: transfer.clone() }
}

fn cancel_view(outcome: &Outcome) -> CancelView {
    match outcome {
        Outcome::Cancel(view) => (**view).clone(),
        other => panic!("expected a cancel, got {other:?}"),
    }
}

fn events(region: &Region, partner: &str) -> Vec<(EventKind, String, Option<RejectCode>)> {
    let events = region.state.events_after(&pid(partner), 0, 100, &region.history).unwrap();
    events.into_iter().map(|e| (e.kind, e.amount.to_wire(), e.reason)).collect()
}

fn setting(region: &mut Region, setting: RegionSetting) {
    region.ok(CommandBody::SetRegionSetting(setting), region.state.clock());
}

#[test]
fn a_cross_border_cancel_gives_the_whole_payment_back_through_the_payees_region_once() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let at = T0.plus_ms(60_000);

    let asked = cancel_view(&west.run(cancel("paypal-us", &payment.id), at));
    assert_eq!((asked.state, asked.original.clone()), (CancelState::Requested, payment.id.clone()));
    // Asked again: the first answer, and still one request in the outbox.
    assert_eq!(cancel_view(&west.run(cancel("paypal-us", &payment.id), at.plus_ms(1))), asked);
    assert_eq!(west.state.outbox().count(), 1);
    west.state.verify().unwrap();

    // The payee's region starts the refund of the whole payment.
    let Some((_, OutboxMessage::RequestCancel(request))) = west.state.outbox().next() else { panic!("no request") };
    let request = request.clone();
    deliver_all(&mut west, &mut east, at.plus_ms(10));
    assert_eq!(west.state.outbox().count(), 0, "answered");
    assert_eq!(east.position("wechat-cn").pending_debits.to_wire(), "716.40");
    // Delivered again (a lost answer): the same answer, no second refund.
    let again = east.run(CommandBody::RequestCancel(request), at.plus_ms(20));
    assert_eq!(again, Outcome::PrepareReply(PrepareReply::Prepared));
    assert_eq!(east.state.outbox().count(), 1);

    // The refund's two phases; the payer has its principal back.
    deliver_all(&mut east, &mut west, at.plus_ms(30));
    deliver_all(&mut east, &mut west, at.plus_ms(40));
    assert_eq!(west.position("paypal-us").posted.to_wire(), "9998.70");
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "0.00");
    assert_eq!(events(&west, "paypal-us").last(), Some(&(EventKind::Refunded, "100.00".into(), None)));
    assert_eq!(events(&east, "wechat-cn").last(), Some(&(EventKind::RefundDebited, "716.40".into(), None)));
    west.state.verify().unwrap();
    east.state.verify().unwrap();
    assert_eq!((west.state.outbox().count(), east.state.outbox().count()), (0, 0));

    // Nothing is left: not for the merchant, not for another cancel.
    let more = CommandBody::CreateRefund(RefundRequest {
        partner: pid("wechat-cn"),
        idempotency_key: IdempotencyKey::new("r").unwrap(),
        transfer: payment.id.clone(),
        amount: cny("0.01"),
    });
    assert_eq!(east.run(more, at.plus_ms(50)), Outcome::Rejected(RejectCode::RefundExceedsOriginal));
    assert_eq!(cancel_view(&west.run(cancel("paypal-us", &payment.id), at.plus_ms(60))), asked);
}

#[test]
fn a_same_region_cancel_posts_at_once_and_only_the_payer_may_ask() {
    let (_, mut east) = mesh();
    let quote = quote_id(&east.quote("alipay-cn", "wxp://f2f0shop9", QuoteAmount::Destination(cny("88.88")), T0));
    let body = CommandBody::CreateTransfer(request("alipay-cn", "k1", &quote, "wxp://f2f0shop9", "Bo"));
    let payment = transfer_view(&east.run(body, T0));
    assert_eq!(east.run(cancel("wechat-cn", &payment.id), T0), Outcome::Rejected(RejectCode::TransferNotFound));

    let done = cancel_view(&east.run(cancel("alipay-cn", &payment.id), T0.plus_ms(1_000)));
    assert_eq!((done.state, done.credited), (CancelState::Refunded, Some(cny("88.88"))));
    assert_eq!(east.position("alipay-cn").posted.to_wire(), "50000.00");
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "0.00");
    assert_eq!(events(&east, "alipay-cn").last(), Some(&(EventKind::Refunded, "88.88".into(), None)));
    assert_eq!(cancel_view(&east.run(cancel("alipay-cn", &payment.id), T0.plus_ms(2_000))), done);
    east.state.verify().unwrap();
}

#[test]
fn a_cancel_is_refused_after_its_window_after_a_refund_and_before_the_commit_reached_the_payee() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    // A window of 0 refuses every cancel.
    setting(&mut west, RegionSetting::CancelWindowMinutes(0));
    let closed = west.run(cancel("paypal-us", &payment.id), T0);
    assert_eq!(closed, Outcome::Rejected(RejectCode::CancelWindowClosed));
    assert_eq!(west.state.outbox().count(), 0, "a refusal records nothing");
    setting(&mut west, RegionSetting::CancelWindowMinutes(24 * 60));

    // A payment the merchant refunded in part: while the refund is in
    // flight the payer's region does not know it, the payee's refuses.
    let second = paid(&mut west, &mut east, "order-2", T0);
    let refund = CommandBody::CreateRefund(RefundRequest {
        partner: pid("wechat-cn"),
        idempotency_key: IdempotencyKey::new("r").unwrap(),
        transfer: second.id.clone(),
        amount: cny("1"),
    });
    east.run(refund, T0);
    assert_eq!(cancel_view(&west.run(cancel("paypal-us", &second.id), T0)).state, CancelState::Requested);
    deliver_all(&mut west, &mut east, T0);
    let refused = (EventKind::CancelRefused, "100.00".into(), Some(RejectCode::AlreadyRefunded));
    assert_eq!(events(&west, "paypal-us").last(), Some(&refused));
    // Once the refund reached the payer's region, it refuses at once.
    deliver_all(&mut east, &mut west, T0);
    deliver_all(&mut east, &mut west, T0);
    let third = paid(&mut west, &mut east, "order-3", T0);
    let partial = CommandBody::CreateRefund(RefundRequest {
        partner: pid("wechat-cn"),
        idempotency_key: IdempotencyKey::new("r3").unwrap(),
        transfer: third.id.clone(),
        amount: cny("1"),
    });
    east.run(partial, T0);
    deliver_all(&mut east, &mut west, T0);
    let refunded = west.run(cancel("paypal-us", &third.id), T0);
    assert_eq!(refunded, Outcome::Rejected(RejectCode::AlreadyRefunded), "a refund is prepared here");

    // The commit has not reached the payee's region: ask again later.
    let fourth = transfer_view(&pay(&mut west, "order-4", usd("10"), T0));
    deliver_all(&mut west, &mut east, T0);
    let early = west.run(cancel("paypal-us", &fourth.id), T0);
    assert_eq!(early, Outcome::Rejected(RejectCode::TransferNotCommitted));
    deliver_all(&mut west, &mut east, T0);
    let asked = cancel_view(&west.run(cancel("paypal-us", &fourth.id), T0));
    assert_eq!(asked.state, CancelState::Requested);

    // The window is a day by default, judged from the commit.
    let late = west.run(cancel("paypal-us", &payment.id), T0.plus_ms(DAY_MS));
    assert_eq!(late, Outcome::Rejected(RejectCode::CancelWindowClosed));
    west.state.verify().unwrap();
    east.state.verify().unwrap();
}

#[test]
fn the_payees_region_judges_the_window_at_the_instant_the_payer_asked() {
    let (mut west, mut east) = mesh();
    setting(&mut east, RegionSetting::CancelWindowMinutes(2));
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let late = paid(&mut west, &mut east, "order-2", T0);
    // Asked within east's two minutes, delivered ten minutes later: taken.
    west.run(cancel("paypal-us", &payment.id), T0.plus_ms(60_000));
    // Asked after east's two minutes (west allows a day): refused there.
    west.run(cancel("paypal-us", &late.id), T0.plus_ms(3 * 60_000));
    deliver_all(&mut west, &mut east, T0.plus_ms(10 * 60_000));
    assert_eq!(west.state.outbox().count(), 0);
    assert_eq!(east.position("wechat-cn").pending_debits.to_wire(), "716.40", "one refund started");
    let refused = (EventKind::CancelRefused, "100.00".into(), Some(RejectCode::CancelWindowClosed));
    assert_eq!(events(&west, "paypal-us").last(), Some(&refused));
    deliver_all(&mut east, &mut west, T0.plus_ms(10 * 60_000));
    deliver_all(&mut east, &mut west, T0.plus_ms(10 * 60_000));
    assert_eq!(events(&west, "paypal-us").last(), Some(&(EventKind::Refunded, "100.00".into(), None)));
    west.state.verify().unwrap();
}

#[test]
fn a_cancel_the_payee_cannot_cover_or_whose_refund_aborts_is_refused_to_the_payer() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let other = paid(&mut west, &mut east, "order-2", T0);

    // Accepted, but the refund's Prepare never gets through before its
    // deadline: the payee's region aborts it, and the payer's region,
    // which never saw it, gives up on the cancel in time.
    west.run(cancel("paypal-us", &other.id), T0.plus_ms(2_000));
    deliver_all(&mut west, &mut east, T0.plus_ms(2_000));
    let expired = T0.plus_ms(2_000 + TRANSFER_PREPARE_DEADLINE_MS);
    east.run(CommandBody::Tick, expired);
    deliver_all(&mut east, &mut west, expired);
    assert!(!west.state.tick_due(expired), "the refund may still come");
    let given_up = T0.plus_ms(3_000 + PREPARE_DEADLINE_AHEAD_MAX_MS);
    assert!(west.state.tick_due(given_up));
    west.run(CommandBody::Tick, given_up);
    let aborted = (EventKind::CancelRefused, "100.00".into(), Some(RejectCode::DeadlineExceeded));
    assert_eq!(events(&west, "paypal-us").last(), Some(&aborted));

    // wechat-cn paid its merchants out: nothing left to give back.
    let out = CommandBody::FundOut {
        partner: pid("wechat-cn"),
        amount: cny("1432.80"),
        reference: TopUpRef::new("out").unwrap(),
    };
    east.ok(out, given_up);
    west.run(cancel("paypal-us", &payment.id), given_up);
    deliver_all(&mut west, &mut east, given_up);
    let refused = (EventKind::CancelRefused, "100.00".into(), Some(RejectCode::InsufficientPosition));
    assert_eq!(events(&west, "paypal-us").last(), Some(&refused));
    assert_eq!(west.position("paypal-us").posted.to_wire(), "9797.40", "both payments stand");
    west.state.verify().unwrap();
    east.state.verify().unwrap();
}
