//! Refunds: same-region and across borders, whole and in parts, refused
//! where they must be, exactly once under repeated and reordered messages.

use super::*;
use crate::command::Reason;
use crate::corridor::RefundRate;
use crate::id::OperatorId;
use crate::settings::REFUND_WINDOW_DAYS_MAX;

fn refund(partner: &str, key: &str, transfer: &TransferId, amount: Money) -> CommandBody {
    CommandBody::CreateRefund(RefundRequest {
        partner: pid(partner),
        idempotency_key: IdempotencyKey::new(key).unwrap(),
        transfer: transfer.clone(),
        amount,
    })
}

fn refund_view(outcome: &Outcome) -> RefundView {
    match outcome {
        Outcome::Refund(view) => (**view).clone(),
        other => panic!("expected a refund, got {other:?}"),
    }
}

fn kinds(region: &Region, partner: &str) -> Vec<(EventKind, String)> {
    let events = region.state.events_after(&pid(partner), 0, 100, &region.history).unwrap();
    events.into_iter().map(|e| (e.kind, e.amount.to_wire())).collect()
}

fn clearing(region: &Region, of: &str, currency: Currency) -> String {
    let account = AccountId::new(AccountOwner::Clearing(super::region(of)), currency);
    region.state.ledger().net_posted(&account).unwrap().to_wire()
}

#[test]
fn a_cross_border_refund_gives_the_principal_back_through_both_phases_exactly_once() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let at = T0.plus_ms(1_000);

    let created = refund_view(&east.run(refund("wechat-cn", "refund-1", &payment.id, cny("716.40")), at));
    assert_eq!(created.state, CoordinatorState::Reserved);
    assert_eq!(created.credited, usd("100.00"), "the whole principal, not the fee");
    assert_eq!(created.original, payment.id);
    assert_eq!(east.position("wechat-cn").pending_debits.to_wire(), "716.40");

    // The payer's region prepares the credit; a repeated Prepare changes nothing.
    let Some((_, OutboxMessage::PrepareRefund(prepare))) = east.state.outbox().next() else {
        panic!("the refund's prepare must be queued")
    };
    let prepare = prepare.clone();
    assert_eq!(prepare.payer_token, payment.payer_token);
    deliver_all(&mut east, &mut west, at);
    assert_eq!(west.position("paypal-us").pending_credits.to_wire(), "100.00");
    let prepared = west.state.clone();
    let again = west.run(CommandBody::PrepareRefund(prepare.clone()), at);
    assert_eq!(again, Outcome::PrepareReply(PrepareReply::Prepared));
    assert_eq!(west.state.ledger(), prepared.ledger());

    // The decision, delivered twice.
    deliver_all(&mut east, &mut west, at.plus_ms(10));
    let decide = CommandBody::Decide { transfer: created.id.clone(), decision: Decision::Commit };
    assert_eq!(west.run(decide, at.plus_ms(20)), Outcome::Acked);
    assert_eq!(east.state.outbox().count(), 0);
    let late = west.run(CommandBody::PrepareRefund(prepare), at.plus_ms(30));
    assert_eq!(late, Outcome::PrepareReply(PrepareReply::Prepared));

    assert_eq!(west.position("paypal-us").posted.to_wire(), "9998.70");
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "0.00");
    assert_eq!(clearing(&west, "cn-east", USD), "0.00");
    assert_eq!(clearing(&east, "us-west", CNY), "0.00");
    assert_eq!(
        kinds(&west, "paypal-us"),
        [
            (EventKind::Reserved, "101.30".into()),
            (EventKind::Committed, "101.30".into()),
            (EventKind::Refunded, "100.00".into())
        ]
    );
    assert_eq!(
        kinds(&east, "wechat-cn"),
        [(EventKind::Credited, "716.40".into()), (EventKind::RefundDebited, "716.40".into())]
    );
    let totals = RefundTotals { debited: cny("716.40"), credited: usd("100.00") };
    assert_eq!(west.history.refunded(&payment.id), Some(totals));
    assert_eq!(east.history.refunded(&payment.id), Some(totals));
    assert_eq!(east.history.refund(&created.id).unwrap().view.state, CoordinatorState::Committed);

    // Nothing is left to give back.
    let more = east.run(refund("wechat-cn", "refund-2", &payment.id, cny("0.01")), at.plus_ms(40));
    assert_eq!(more, Outcome::Rejected(RejectCode::RefundExceedsOriginal));
}

#[test]
fn partial_refunds_share_the_principal_and_never_sum_past_it() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let at = T0.plus_ms(1_000);
    // Two in flight at once: the second counts the first.
    let first = refund_view(&east.run(refund("wechat-cn", "r1", &payment.id, cny("300")), at));
    let second = refund_view(&east.run(refund("wechat-cn", "r2", &payment.id, cny("300")), at));
    // 300.00 / 716.40 of 100.00 USD, rounded down.
    assert_eq!((first.credited, second.credited), (usd("41.87"), usd("41.87")));
    let too_much = east.run(refund("wechat-cn", "r3", &payment.id, cny("116.41")), at);
    assert_eq!(too_much, Outcome::Rejected(RejectCode::RefundExceedsOriginal));
    // The last part gives back the rest of the principal exactly.
    let last = refund_view(&east.run(refund("wechat-cn", "r3", &payment.id, cny("116.40")), at));
    assert_eq!(last.credited, usd("16.26"));
    deliver_all(&mut east, &mut west, at);
    deliver_all(&mut east, &mut west, at);
    assert_eq!(west.position("paypal-us").posted.to_wire(), "9998.70");
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "0.00");
    let totals = RefundTotals { debited: cny("716.40"), credited: usd("100.00") };
    assert_eq!(west.history.refunded(&payment.id), Some(totals));
    assert_eq!(east.history.refunded(&payment.id), Some(totals));
    let refunded: Vec<_> = kinds(&west, "paypal-us").into_iter().filter(|(k, _)| *k == EventKind::Refunded).collect();
    assert_eq!(refunded.len(), 3);
}

#[test]
fn the_payer_region_refuses_a_refund_its_own_record_does_not_allow() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let at = T0.plus_ms(1_000);
    let message = |refund: u64, credited: Money, token: PayerToken| RefundPrepare {
        refund: TransferId::new(region("cn-east"), refund),
        original: payment.id.clone(),
        debited: cny("716.40"),
        credited,
        requested_by: pid("wechat-cn"),
        payer_token: token,
        deadline: at.plus_ms(1_000),
    };
    let rejected = |code| Outcome::PrepareReply(PrepareReply::Rejected(code));
    let token = payment.payer_token.clone();
    let over = west.run(CommandBody::PrepareRefund(message(900, usd("100.01"), token.clone())), at);
    assert_eq!(over, rejected(RejectCode::RefundExceedsOriginal));
    let forged = PayerToken::for_transfer(&TransferId::new(region("us-west"), 999));
    let wrong = west.run(CommandBody::PrepareRefund(message(901, usd("1"), forged)), at);
    assert_eq!(wrong, rejected(RejectCode::ProtocolViolation));
    let mut unknown = message(902, usd("1"), token.clone());
    unknown.original = TransferId::new(region("us-west"), 999);
    assert_eq!(west.run(CommandBody::PrepareRefund(unknown), at), rejected(RejectCode::TransferNotFound));
    let mut dollars = message(903, usd("1"), token);
    dollars.debited = usd("1");
    assert_eq!(west.run(CommandBody::PrepareRefund(dollars), at), rejected(RejectCode::CurrencyMismatch));
    // None of them reserved anything, and a refused one answers the same again.
    assert_eq!(west.position("paypal-us").pending_credits.to_wire(), "0.00");
    let again = west.run(CommandBody::PrepareRefund(message(900, usd("100.01"), payment.payer_token.clone())), at);
    assert_eq!(again, rejected(RejectCode::RefundExceedsOriginal));
}

#[test]
fn a_refund_is_refused_for_an_unknown_foreign_or_aborted_payment_and_after_its_window() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let at = T0.plus_ms(1_000);
    let refused = |code| Outcome::Rejected(code);
    let unknown = TransferId::new(region("us-west"), 999);
    assert_eq!(east.run(refund("wechat-cn", "a", &unknown, cny("1")), at), refused(RejectCode::TransferNotFound));
    // Another partner's payment is not found either; nor is it the payer's to refund.
    assert_eq!(east.run(refund("alipay-cn", "b", &payment.id, cny("1")), at), refused(RejectCode::TransferNotFound));
    assert_eq!(
        west.run(refund("paypal-us", "c", &payment.id, usd("1")), at),
        refused(RejectCode::PartnerRoleNotAllowed)
    );
    assert_eq!(east.run(refund("wechat-cn", "d", &payment.id, usd("1")), at), refused(RejectCode::CurrencyMismatch));
    assert_eq!(east.run(refund("wechat-cn", "e", &payment.id, cny("0")), at), refused(RejectCode::AmountBelowMinimum));
    // 0.01 CNY is less than a cent of the principal.
    assert_eq!(
        east.run(refund("wechat-cn", "f", &payment.id, cny("0.01")), at),
        refused(RejectCode::AmountBelowMinimum)
    );

    // A same-region payment that aborted (alipay-cn short of its position).
    let quote = quote_id(&east.quote("alipay-cn", "wxp://f2f0shop9", QuoteAmount::Destination(cny("49000")), at));
    let body = CommandBody::CreateTransfer(request("alipay-cn", "big", &quote, "wxp://f2f0shop9", "Bo"));
    let ok = transfer_view(&east.run(body, at));
    let quote = quote_id(&east.quote("alipay-cn", "wxp://f2f0shop9", QuoteAmount::Destination(cny("2000")), at));
    let body = CommandBody::CreateTransfer(request("alipay-cn", "short", &quote, "wxp://f2f0shop9", "Bo"));
    let aborted = transfer_view(&east.run(body, at));
    assert_eq!(aborted.state, CoordinatorState::Aborted);
    assert_eq!(
        east.run(refund("wechat-cn", "g", &aborted.id, cny("1")), at),
        refused(RejectCode::TransferNotCommitted)
    );

    // The window: none at all, then a day, passed.
    east.ok(CommandBody::SetRegionSetting(RegionSetting::RefundWindowDays(0)), at);
    assert_eq!(east.run(refund("wechat-cn", "h", &ok.id, cny("1")), at), refused(RejectCode::RefundWindowClosed));
    east.ok(CommandBody::SetRegionSetting(RegionSetting::RefundWindowDays(1)), at);
    refund_view(&east.run(refund("wechat-cn", "i", &ok.id, cny("1")), at));
    let later = at.plus_ms(DAY_MS);
    assert_eq!(east.run(refund("wechat-cn", "j", &ok.id, cny("1")), later), refused(RejectCode::RefundWindowClosed));
    assert!(!east.state.settings.set(RegionSetting::RefundWindowDays(REFUND_WINDOW_DAYS_MAX + 1)));
    // Refusals before a refund exists leave no record under their keys.
    assert!(east.history.idempotency(&pid("wechat-cn"), &IdempotencyKey::new("h").unwrap()).is_none());
}

#[test]
fn a_same_region_refund_posts_at_once_and_its_key_answers_a_retry() {
    let (_, mut east) = mesh();
    let quote = quote_id(&east.quote("alipay-cn", "wxp://f2f0shop9", QuoteAmount::Destination(cny("88.88")), T0));
    let body = CommandBody::CreateTransfer(request("alipay-cn", "k1", &quote, "wxp://f2f0shop9", "Bo"));
    let payment = transfer_view(&east.run(body, T0));
    let at = T0.plus_ms(1_000);
    let body = refund("wechat-cn", "back", &payment.id, cny("88.88"));
    let view = refund_view(&east.run(body.clone(), at));
    assert_eq!(view.state, CoordinatorState::Committed);
    assert_eq!((view.debited, view.credited), (cny("88.88"), cny("88.88")));
    assert_eq!(east.position("alipay-cn").posted.to_wire(), "50000.00");
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "0.00");
    assert_eq!(east.state.outbox().count(), 0);
    assert_eq!(clearing(&east, "cn-east", CNY), "0.00");
    assert_eq!(kinds(&east, "alipay-cn").last(), Some(&(EventKind::Refunded, "88.88".into())));
    assert_eq!(kinds(&east, "wechat-cn").last(), Some(&(EventKind::RefundDebited, "88.88".into())));

    // Nothing is left to give back (the simulation found a same-region
    // refund that did not count, and a second one that took back more).
    let totals = RefundTotals { debited: cny("88.88"), credited: cny("88.88") };
    assert_eq!(east.history.refunded(&payment.id), Some(totals));
    let more = east.run(refund("wechat-cn", "more", &payment.id, cny("0.01")), at.plus_ms(1));
    assert_eq!(more, Outcome::Rejected(RejectCode::RefundExceedsOriginal));

    // The same key and body: the first answer; another body: a conflict;
    // the key is the partner's one space, shared with its transfers.
    assert_eq!(east.run(body, at.plus_ms(5)), Outcome::Refund(Arc::new(view)));
    let other = refund("wechat-cn", "back", &payment.id, cny("1"));
    assert_eq!(east.run(other, at.plus_ms(6)), Outcome::Rejected(RejectCode::IdempotencyConflict));
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "0.00");
}

/// A payment finished in a batch is found by the commands after it in the
/// same batch, before history holds it: a refund of it there posts as one
/// in a later batch does, and history then holds the payment once, as
/// committed.
#[test]
fn a_refund_in_its_payments_batch_finds_the_payment() {
    let (_, mut east) = mesh();
    let first = CommandBody::CreateTransfer(request(
        "alipay-cn",
        "k0",
        &quote_id(&east.quote("alipay-cn", "wxp://f2f0shop9", QuoteAmount::Destination(cny("1")), T0)),
        "wxp://f2f0shop9",
        "Bo",
    ));
    let first = transfer_view(&east.run(first, T0));
    // The next transfer the region numbers.
    let next = TransferId::new(first.id.origin().clone(), first.id.sequence() + 1);
    let quote = quote_id(&east.quote("alipay-cn", "wxp://f2f0shop9", QuoteAmount::Destination(cny("88.88")), T0));
    let at = T0.plus_ms(1_000);
    let bodies = vec![
        CommandBody::CreateTransfer(request("alipay-cn", "k1", &quote, "wxp://f2f0shop9", "Bo")),
        refund("wechat-cn", "back", &next, cny("88.88")),
    ];
    let commands = bodies.into_iter().map(|body| Command { id: east.next_id(), body }).collect();
    let outcomes = east.apply_batch(&Batch::new(at, commands).unwrap());
    east.state.verify().unwrap();
    let payment = transfer_view(&outcomes[0]);
    assert_eq!((payment.id.clone(), payment.state), (next.clone(), CoordinatorState::Committed));
    let view = refund_view(&outcomes[1]);
    assert_eq!(view.state, CoordinatorState::Committed);
    assert_eq!(east.position("alipay-cn").posted.to_wire(), "49999.00");
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "1.00");
    assert_eq!(east.history.transfer(&next).map(|t| t.view), Some(payment));
    assert_eq!(east.state.transfers().count(), 0, "a finished payment leaves the hot state");
}

#[test]
fn a_refund_the_payee_cannot_cover_aborts_with_its_reason() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    // wechat-cn paid its merchant out: a fund-out leaves it nothing.
    let out = CommandBody::FundOut {
        partner: pid("wechat-cn"),
        amount: cny("716.40"),
        reference: TopUpRef::new("out").unwrap(),
    };
    east.ok(out, T0);
    let view = refund_view(&east.run(refund("wechat-cn", "r", &payment.id, cny("10")), T0.plus_ms(5)));
    assert_eq!((view.state, view.reason), (CoordinatorState::Aborted, Some(RejectCode::InsufficientPosition)));
    assert_eq!(east.state.outbox().count(), 0);
    assert_eq!(kinds(&east, "wechat-cn").last(), Some(&(EventKind::RefundAborted, "10.00".into())));
}

#[test]
fn a_refund_past_its_deadline_aborts_and_the_payer_region_releases_its_credit() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let at = T0.plus_ms(1_000);
    let view = refund_view(&east.run(refund("wechat-cn", "r", &payment.id, cny("716.40")), at));
    // The payer's region prepares; its answer is lost.
    let Some((_, OutboxMessage::PrepareRefund(prepare))) = east.state.outbox().next() else { panic!("no prepare") };
    let prepared = west.run(CommandBody::PrepareRefund(prepare.clone()), at);
    assert_eq!(prepared, Outcome::PrepareReply(PrepareReply::Prepared));
    let deadline = view.deadline.unwrap();
    east.run(CommandBody::Tick, deadline);
    let aborted = east.history.refund(&view.id).unwrap();
    assert_eq!(
        (aborted.view.state, aborted.view.reason),
        (CoordinatorState::Aborted, Some(RejectCode::DeadlineExceeded))
    );
    // The late answer changes nothing; the abort reaches the payer's region.
    let late = CommandBody::PrepareReplied { transfer: view.id.clone(), reply: PrepareReply::Prepared };
    assert_eq!(east.run(late, deadline.plus_ms(1)), Outcome::Done);
    deliver_all(&mut east, &mut west, deadline.plus_ms(2));
    assert_eq!(east.state.outbox().count(), 0);
    assert_eq!(west.position("paypal-us").pending_credits.to_wire(), "0.00");
    assert_eq!(west.position("paypal-us").posted.to_wire(), "9898.70");
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "716.40");
    assert_eq!(west.history.refunded(&payment.id), None);
    // The payer still sees the refund its region prepared, voided.
    let listed = west.state.refunds_of(&pid("paypal-us"), None, 100, &west.history);
    match listed.as_slice() {
        [(_, PartnerRefund::Credited(credited))] => {
            assert_eq!(credited.state, ParticipantState::Aborted);
            assert_eq!(credited.prepare.refund, view.id);
        }
        other => panic!("the payer lists {other:?}"),
    }
    // Nothing was given back, so the whole payment may still be refunded.
    let again = refund_view(&east.run(refund("wechat-cn", "r2", &payment.id, cny("716.40")), deadline.plus_ms(3)));
    assert_eq!(again.state, CoordinatorState::Reserved);
}

#[test]
fn an_abort_that_overtakes_a_refunds_prepare_leaves_a_tombstone_that_refuses_it() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let at = T0.plus_ms(1_000);
    let view = refund_view(&east.run(refund("wechat-cn", "r", &payment.id, cny("100")), at));
    let Some((_, OutboxMessage::PrepareRefund(prepare))) = east.state.outbox().next() else { panic!("no prepare") };
    let prepare = prepare.clone();
    east.run(CommandBody::Tick, view.deadline.unwrap());
    deliver_all(&mut east, &mut west, view.deadline.unwrap());
    let late = west.run(CommandBody::PrepareRefund(prepare), view.deadline.unwrap().minus_ms(1));
    assert_eq!(late, Outcome::PrepareReply(PrepareReply::Rejected(RejectCode::AbortedBeforePrepare)));
    assert_eq!(west.position("paypal-us").pending_credits.to_wire(), "0.00");
}

#[test]
fn a_commit_for_a_refund_never_prepared_is_a_protocol_violation() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let at = T0.plus_ms(1_000);
    let view = refund_view(&east.run(refund("wechat-cn", "r", &payment.id, cny("100")), at));
    let Some((_, OutboxMessage::PrepareRefund(prepare))) = east.state.outbox().next() else { panic!("no prepare") };
    let prepare = prepare.clone();
    west.run(CommandBody::PrepareRefund(prepare), at);
    let abort = CommandBody::Decide { transfer: view.id.clone(), decision: Decision::Abort };
    assert_eq!(west.run(abort, at), Outcome::Acked);
    let commit = CommandBody::Decide { transfer: view.id.clone(), decision: Decision::Commit };
    assert_eq!(west.run(commit, at), Outcome::Rejected(RejectCode::ProtocolViolation));
    assert_eq!(west.position("paypal-us").posted.to_wire(), "9898.70");
}

#[test]
fn an_operator_reverses_what_refunds_left_once_whatever_the_window_and_the_payees_status() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let at = T0.plus_ms(1_000);
    refund_view(&east.run(refund("wechat-cn", "part", &payment.id, cny("300")), at));
    // No refunds allowed any more, and the payee suspended: a dispute's
    // outcome reverses the payment anyway.
    east.ok(CommandBody::SetRegionSetting(RegionSetting::RefundWindowDays(0)), at);
    east.ok(CommandBody::SetPartnerStatus { partner: pid("wechat-cn"), status: BusinessStatus::Suspended }, at);
    let reverse = |transfer: &TransferId| CommandBody::ByOperator {
        operator: OperatorId::new("ops-alice").unwrap(),
        command: Box::new(CommandBody::ReverseTransfer {
            transfer: transfer.clone(),
            reason: Reason::new("dispute D-77: goods not delivered").unwrap(),
        }),
    };
    let reversal = refund_view(&east.run(reverse(&payment.id), at));
    assert_eq!((reversal.debited, reversal.state), (cny("416.40"), CoordinatorState::Reserved));
    assert_eq!(reversal.idempotency_key.as_str(), format!("reversal/{}", payment.id));
    // Asked again, before or after it finished: the first reversal.
    assert_eq!(east.run(reverse(&payment.id), at), Outcome::Refund(Arc::new(reversal.clone())));
    deliver_all(&mut east, &mut west, at);
    deliver_all(&mut east, &mut west, at);
    assert_eq!(east.run(reverse(&payment.id), at.plus_ms(5)), Outcome::Refund(Arc::new(reversal.clone())));
    assert_eq!(west.position("paypal-us").posted.to_wire(), "9998.70", "the whole principal back");
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "0.00");
    // Audited with who and why.
    let audited = east.history.records().any(|(_, record)| {
        matches!(record, Record::Audited { operator, command, .. }
            if operator.as_str() == "ops-alice"
                && matches!(&**command, CommandBody::ReverseTransfer { reason, .. } if reason.as_str().contains("D-77")))
    });
    assert!(audited, "the reversal is in the audit trail");
    // Only the payee's region holds what a reversal needs.
    let elsewhere = west.run(reverse(&payment.id), at);
    assert_eq!(elsewhere, Outcome::Rejected(RejectCode::TransferNotFound));
    let unknown = TransferId::new(region("us-west"), 999);
    assert_eq!(east.run(reverse(&unknown), at), Outcome::Rejected(RejectCode::TransferNotFound));
    assert!(Reason::new("").is_err() && Reason::new("a\u{7}b").is_err());
}

fn refund_rate(region: &mut Region, corridor: &str, rate: RefundRate, now: Timestamp) -> Outcome {
    region.run(CommandBody::SetCorridorRefundRate { corridor: corridor_id(corridor), rate }, now)
}

/// us-west's mid rate for the payment's corridor from `from` on.
fn mid_rate(west: &mut Region, rate: &str, from: Timestamp) {
    let rate = FxRate::new(USD, CNY, Rate::parse(rate).unwrap(), from, from.plus_ms(DAY_MS)).unwrap();
    west.ok(CommandBody::SetFxRate { corridor: corridor_id("USD:us-west->CNY:cn-east"), rate }, from);
}

#[test]
fn a_corridor_refunding_at_the_current_rate_has_the_payers_region_price_the_credit_and_both_sides_count_it() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    // Only a corridor of the region, and only operators, set it.
    let foreign = refund_rate(&mut east, "USD:us-west->CNY:cn-east", RefundRate::Current, T0);
    assert_eq!(foreign, Outcome::Rejected(RejectCode::CorridorNotFound));
    assert!(CommandBody::SetCorridorRefundRate {
        corridor: corridor_id("USD:us-west->CNY:cn-east"),
        rate: RefundRate::Current
    }
    .is_operator());
    assert_eq!(refund_rate(&mut west, "USD:us-west->CNY:cn-east", RefundRate::Current, T0), Outcome::Done);
    assert_eq!(west.state.refund_rate(&corridor_id("USD:us-west->CNY:cn-east")), RefundRate::Current);

    // The dollar weakened since the payment (7.164 after spread): 6.4 mid.
    let at = T0.plus_ms(1_000);
    mid_rate(&mut west, "6.4", at);
    let first = refund_view(&east.run(refund("wechat-cn", "r1", &payment.id, cny("320")), at));
    // The payee's region only estimates, at the payment's rate: 320 / 716.40 of 100.00.
    assert_eq!(first.credited, usd("44.66"));
    let Some((_, OutboxMessage::PrepareRefund(prepare))) = east.state.outbox().next() else { panic!("no prepare") };
    let prepare = prepare.clone();
    deliver_all(&mut east, &mut west, at);
    // 320 / 6.4, reserved by the payer's region, which owns the rate.
    assert_eq!(west.position("paypal-us").pending_credits.to_wire(), "50.00");
    assert_eq!(east.history.refund(&first.id).unwrap().view.credited, usd("50.00"), "the coordinator records it");
    // Delivered again, the Prepare is answered with the credit recorded.
    let again = west.run(CommandBody::PrepareRefund(prepare), at);
    assert_eq!(again, Outcome::PrepareReply(PrepareReply::PreparedCredit(usd("50.00"))));
    deliver_all(&mut east, &mut west, at);

    // The rest, at a rate moved again: the credit over all refunds is no
    // longer bounded by the principal, what the payee gives back still is.
    let later = at.plus_ms(1_000);
    mid_rate(&mut west, "6.5", later);
    let rest = refund_view(&east.run(refund("wechat-cn", "r2", &payment.id, cny("396.40")), later));
    deliver_all(&mut east, &mut west, later);
    deliver_all(&mut east, &mut west, later);
    // 396.40 / 6.5 = 60.9846… → 60.98.
    assert_eq!(east.history.refund(&rest.id).unwrap().view.credited, usd("60.98"));
    let totals = RefundTotals { debited: cny("716.40"), credited: usd("110.98") };
    assert_eq!((west.history.refunded(&payment.id), east.history.refunded(&payment.id)), (Some(totals), Some(totals)));
    assert_eq!(west.position("paypal-us").posted.to_wire(), "10009.68", "9,898.70 + 110.98");
    let refunded: Vec<_> = kinds(&west, "paypal-us").into_iter().filter(|(k, _)| *k == EventKind::Refunded).collect();
    assert_eq!(refunded, [(EventKind::Refunded, "50.00".into()), (EventKind::Refunded, "60.98".into())]);
    let more = east.run(refund("wechat-cn", "r3", &payment.id, cny("0.01")), later);
    assert_eq!(more, Outcome::Rejected(RejectCode::RefundExceedsOriginal));

    // Both regions counted the same figures for the pair's cross-check.
    let refund_key =
        crate::settlement::TallyKey { flow: crate::settlement::Flow::Refund, source: USD, destination: CNY };
    let sent = east.state.open_window().sent[&region("us-west")].clone();
    let received = west.state.open_window().received[&(region("cn-east"), 1)].clone();
    assert_eq!((sent[&refund_key].source, sent[&refund_key].destination), (11_098, 71_640));
    assert_eq!(crate::settlement::cross_check(&sent, &received, 0), crate::settlement::CrossCheck::Agree);
    west.state.verify().unwrap();
    east.state.verify().unwrap();
}

#[test]
fn at_the_current_rate_a_refund_without_a_rate_is_refused_and_a_cancel_still_gives_back_the_principal() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    let second = paid(&mut west, &mut east, "order-2", T0);
    assert_eq!(refund_rate(&mut west, "USD:us-west->CNY:cn-east", RefundRate::Current, T0), Outcome::Done);

    // A payer's cancel is an undo: the principal, whatever the rate now.
    let at = T0.plus_ms(1_000);
    mid_rate(&mut west, "6.4", at);
    let cancelled =
        west.run(CommandBody::CancelTransfer { partner: pid("paypal-us"), transfer: second.id.clone() }, at);
    assert!(matches!(cancelled, Outcome::Cancel(_)), "{cancelled:?}");
    for _ in 0..3 {
        deliver_all(&mut west, &mut east, at);
        deliver_all(&mut east, &mut west, at);
    }
    let back = RefundTotals { debited: cny("716.40"), credited: usd("100.00") };
    assert_eq!(west.history.refunded(&second.id), Some(back));

    // Every rate has expired and no other is in force: refused, by the
    // payer's region, with the reason.
    let expired = T0.plus_ms(2 * DAY_MS);
    let asked = refund_view(&east.run(refund("wechat-cn", "r1", &payment.id, cny("100")), expired));
    deliver_all(&mut east, &mut west, expired);
    let aborted = east.history.refund(&asked.id).unwrap().view;
    assert_eq!((aborted.state, aborted.reason), (CoordinatorState::Aborted, Some(RejectCode::RateUnavailable)));
    assert_eq!(east.position("wechat-cn").pending_debits.to_wire(), "0.00");

    // Set back to the original rate, the default is not stored.
    assert_eq!(refund_rate(&mut west, "USD:us-west->CNY:cn-east", RefundRate::Original, expired), Outcome::Done);
    assert_eq!(west.state.refund_rate(&corridor_id("USD:us-west->CNY:cn-east")), RefundRate::Original);
}

#[test]
fn a_priced_credit_answered_after_the_deadline_is_recorded_on_the_aborted_refund() {
    let (mut west, mut east) = mesh();
    let payment = paid(&mut west, &mut east, "order-1", T0);
    assert_eq!(refund_rate(&mut west, "USD:us-west->CNY:cn-east", RefundRate::Current, T0), Outcome::Done);
    let at = T0.plus_ms(1_000);
    mid_rate(&mut west, "6.4", at);
    let asked = refund_view(&east.run(refund("wechat-cn", "r1", &payment.id, cny("320")), at));
    let Some((_, OutboxMessage::PrepareRefund(prepare))) = east.state.outbox().next() else { panic!("no prepare") };
    let prepare = prepare.clone();
    let Outcome::PrepareReply(reply) = west.run(CommandBody::PrepareRefund(prepare), at) else { panic!("no reply") };
    assert_eq!(reply, PrepareReply::PreparedCredit(usd("50.00")));
    let late = asked.deadline.unwrap().plus_ms(1);
    east.run(CommandBody::PrepareReplied { transfer: asked.id.clone(), reply }, late);
    let aborted = east.history.refund(&asked.id).unwrap().view;
    assert_eq!((aborted.state, aborted.reason), (CoordinatorState::Aborted, Some(RejectCode::DeadlineExceeded)));
    assert_eq!(aborted.credited, usd("50.00"), "the credit the payer's region held, not the estimate");
    deliver_all(&mut east, &mut west, late);
    assert_eq!(west.position("paypal-us").pending_credits.to_wire(), "0.00", "the abort released it");
    west.state.verify().unwrap();
    east.state.verify().unwrap();
}
