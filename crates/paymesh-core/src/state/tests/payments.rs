//! One-call payments: priced and paid in one command, within the payer's
//! bound, exactly once under their key.

use super::*;
use crate::command::PaymentRequest;

fn payment(partner: &str, key: &str, payee: &str, amount: QuoteAmount, bound: Option<Money>) -> CommandBody {
    CommandBody::CreatePayment(PaymentRequest {
        partner: pid(partner),
        idempotency_key: IdempotencyKey::new(key).unwrap(),
        payee: qr(payee),
        amount,
        max_total_debit: bound,
        payer: payer("Ada Traveller"),
    })
}

#[test]
fn a_one_call_payment_is_priced_as_a_quote_and_paid_in_the_same_command_once() {
    // Two equal regions: one asked for a quote, the other paid in one call.
    let ((_, mut quoting), (_, mut east_2)) = (mesh(), mesh());
    let amount = QuoteAmount::Destination(cny("88.88"));
    let quoted = quoting.quote("alipay-cn", "wxp://f2f0shop9", amount, T0);
    let Outcome::Quote(quote) = quoted else { panic!("a quote: {quoted:?}") };
    let paid = transfer_view(&east_2.run(payment("alipay-cn", "p1", "wxp://f2f0shop9", amount, None), T0));
    assert_eq!(paid.state, CoordinatorState::Committed);
    assert_eq!(paid.priced, quote.priced, "the price a quote would have given");
    assert_eq!(east_2.position("alipay-cn").posted.to_wire(), "49911.12");
    assert_eq!(east_2.state.quotes.len(), 0, "no quote is kept");
    assert_eq!(east_2.state.partner_usage(&pid("alipay-cn")).quotes_outstanding, 0);
    // Retried: the same transfer; another body under the key: a conflict.
    let again = east_2.run(payment("alipay-cn", "p1", "wxp://f2f0shop9", amount, None), T0.plus_ms(5));
    assert_eq!(transfer_view(&again).id, paid.id);
    let other = east_2.run(payment("alipay-cn", "p1", "wxp://f2f0shop9", QuoteAmount::Destination(cny("1")), None), T0);
    assert_eq!(other, Outcome::Rejected(RejectCode::IdempotencyConflict));
    east_2.state.verify().unwrap();
}

#[test]
fn a_one_call_payment_priced_above_its_bound_is_refused_and_records_nothing() {
    let (mut west, mut east) = mesh();
    let amount = QuoteAmount::Source(usd("100"));
    // 100.00 USD costs 101.30 with the corridor's fee.
    let refused = west.run(payment("paypal-us", "p1", "wxp://f2f0shop1", amount, Some(usd("101.29"))), T0);
    assert_eq!(refused, Outcome::Rejected(RejectCode::PriceAboveLimit));
    let wrong = west.run(payment("paypal-us", "p1", "wxp://f2f0shop1", amount, Some(cny("1000"))), T0);
    assert_eq!(wrong, Outcome::Rejected(RejectCode::CurrencyMismatch));
    // Nothing was recorded: the key is free for a payment within its bound,
    // which crosses the border as any transfer.
    let paid = transfer_view(&west.run(payment("paypal-us", "p1", "wxp://f2f0shop1", amount, Some(usd("101.30"))), T0));
    assert_eq!((paid.state, paid.priced.total_debit), (CoordinatorState::Reserved, usd("101.30")));
    deliver_all(&mut west, &mut east, T0);
    deliver_all(&mut west, &mut east, T0);
    assert_eq!(west.transfer(&paid.id).unwrap().view.state, CoordinatorState::Committed);
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "716.40");
    west.state.verify().unwrap();
    east.state.verify().unwrap();
}
