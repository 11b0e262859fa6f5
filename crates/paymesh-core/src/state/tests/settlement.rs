//! Settlement windows: figures equal to the ledger's movements, closes that
//! lose and double nothing, cross-checks between regions, settlements
//! recorded once.

use super::*;
use crate::settlement::{cross_check, CrossCheck, Flow, SettlementWindow, TallyKey};

fn close(region: &mut Region, now: Timestamp) -> u64 {
    match region.run(CommandBody::CloseSettlementWindow, now) {
        Outcome::WindowClosed { number } => number,
        other => panic!("expected a closed window, got {other:?}"),
    }
}

fn window(region: &Region, number: u64) -> SettlementWindow {
    region.history.window(number).expect("a closed window is in history")
}

fn partner_account(name: &str, currency: Currency) -> AccountId {
    AccountId::new(AccountOwner::Partner(pid(name)), currency)
}

fn net(window: &SettlementWindow, account: &AccountId) -> i128 {
    window.position(account).map_or(0, |p| p.net)
}

/// Every posted movement of a payment, refund or reversal in history
/// between two log indexes, summed per account: what a window's figures
/// must equal, counted from the other tier.
fn moved_between(region: &Region, after: u64, through: u64) -> BTreeMap<AccountId, i128> {
    let mut sums: BTreeMap<AccountId, i128> = BTreeMap::new();
    for (index, record) in region.history.records() {
        let Record::Movement(movement) = record else { continue };
        let posted = matches!(movement.kind, MovementKind::Post | MovementKind::PostPending);
        if index <= after || index > through || !posted || !matches!(movement.entry, EntryId::Transfer { .. }) {
            continue;
        }
        let units = i128::from(movement.amount.units());
        *sums.entry(movement.debit.clone()).or_default() -= units;
        *sums.entry(movement.credit.clone()).or_default() += units;
    }
    sums.retain(|_, units| *units != 0);
    sums
}

fn figures(window: &SettlementWindow) -> BTreeMap<AccountId, i128> {
    window.positions.iter().map(|p| (p.account.clone(), p.net)).collect()
}

/// Every window's nets sum to zero per currency: what one account gave,
/// another received.
fn assert_balanced(window: &SettlementWindow) {
    assert_eq!(window.imbalance(), None, "window {} does not balance", window.number);
}

#[test]
fn a_window_holds_what_its_accounts_moved_and_the_next_starts_from_zero() {
    let (mut west, mut east) = mesh();
    let payment = transfer_view(&pay(&mut west, "order-1", usd("100"), T0));
    deliver_all(&mut west, &mut east, T0);
    deliver_all(&mut west, &mut east, T0);
    pay_domestic(&mut east, 3, T0, "home");
    // Prefunding moves positions but is not a payment: no window counts it.
    west.top_up("paypal-us", usd("500"), "wire-2");

    let (west_opened, east_opened) = (west.index, east.index);
    assert_eq!(west.state.open_window().number, 1);
    assert_eq!(close(&mut west, T0.plus_ms(1)), 1);
    assert_eq!(close(&mut east, T0.plus_ms(1)), 1);
    let (w1, e1) = (window(&west, 1), window(&east, 1));
    assert_eq!(w1.closed_at, Some(T0.plus_ms(1)));
    assert_eq!(net(&w1, &partner_account("paypal-us", USD)), -10_130, "101.30 USD paid, top-ups aside");
    let clearing_east = AccountId::new(AccountOwner::Clearing(region("cn-east")), USD);
    assert_eq!(net(&w1, &clearing_east), 10_000);
    assert_eq!(net(&w1, &AccountId::new(AccountOwner::Fees, USD)), 130);
    assert_eq!(net(&e1, &partner_account("wechat-cn", CNY)), 71_640 + 300);
    assert_eq!(net(&e1, &partner_account("alipay-cn", CNY)), -300);
    assert_eq!(net(&e1, &AccountId::new(AccountOwner::Clearing(region("us-west")), CNY)), -71_640);
    for (region, w, opened) in [(&west, &w1, west_opened), (&east, &e1, east_opened)] {
        assert_balanced(w);
        assert_eq!(figures(w), moved_between(region, 0, opened), "{}'s window 1", region.state.region());
    }

    // The payment's cross-border figures, counted by each side on its own.
    let key = TallyKey { flow: Flow::Payment, source: USD, destination: CNY };
    let sent = &w1.sent[&region("cn-east")];
    assert_eq!((sent[&key].count, sent[&key].source, sent[&key].destination), (1, 10_000, 71_640));
    let received = &e1.received[&(region("us-west"), 1)];
    assert_eq!(cross_check(sent, received, west.state.decisions_in_flight(&region("cn-east"), 1)), CrossCheck::Agree);

    // Balances at the two ends: the payer's top-ups and payment, and the
    // next window opens where this one closed.
    assert_eq!(w1.opening.get(&partner_account("paypal-us", USD)), None, "window 1 opens with the region");
    assert_eq!(w1.closing[&partner_account("paypal-us", USD)], 1_000_000 + 50_000 - 10_130);
    assert_eq!(west.state.open_window().opening, w1.closing);

    // Window 2 starts from zero and counts only what follows the close.
    assert!(west.state.open_window().positions.is_empty());
    let closed_at = west.index;
    let refund = CommandBody::CreateRefund(RefundRequest {
        partner: pid("wechat-cn"),
        idempotency_key: IdempotencyKey::new("refund-1").unwrap(),
        transfer: payment.id.clone(),
        amount: cny("71.64"),
    });
    assert!(matches!(east.run(refund, T0.plus_ms(2)), Outcome::Refund(_)));
    deliver_all(&mut east, &mut west, T0.plus_ms(2));
    deliver_all(&mut east, &mut west, T0.plus_ms(2));
    let open = west.state.open_window();
    assert_eq!(net(&open, &partner_account("paypal-us", USD)), 1_000, "10.00 USD credited back");
    assert_eq!(close(&mut west, T0.plus_ms(3)), 2);
    assert_eq!(figures(&window(&west, 2)), moved_between(&west, closed_at, west.index));
    assert_balanced(&window(&west, 2));

    // The refund was east's to commit: east sent it in its window 2, west
    // received it under that window.
    let refund_key = TallyKey { flow: Flow::Refund, source: USD, destination: CNY };
    let e2 = east.state.open_window();
    assert_eq!(e2.number, 2);
    let sent = &e2.sent[&region("us-west")];
    assert_eq!((sent[&refund_key].source, sent[&refund_key].destination), (1_000, 7_164));
    let received = &window(&west, 2).received[&(region("cn-east"), 2)];
    assert_eq!(cross_check(sent, received, 0), CrossCheck::Agree);
}

#[test]
fn a_decision_on_its_way_is_counted_in_its_coordinators_window_wherever_it_lands() {
    let (mut west, mut east) = mesh();
    let view = transfer_view(&pay(&mut west, "order-1", usd("100"), T0));
    deliver_all(&mut west, &mut east, T0); // Prepared, and committed in west's window 1.
    assert_eq!(west.transfer(&view.id).unwrap().view.state, CoordinatorState::Committed);
    close(&mut west, T0.plus_ms(1));
    close(&mut east, T0.plus_ms(1));
    let sent = window(&west, 1).sent[&region("cn-east")].clone();
    let in_flight = west.state.decisions_in_flight(&region("cn-east"), 1);
    assert_eq!(in_flight, 1);
    let none = Default::default();
    let received = window(&east, 1).received.get(&(region("us-west"), 1)).cloned().unwrap_or(none);
    assert_eq!(cross_check(&sent, &received, in_flight), CrossCheck::InFlight { decisions: 1 });

    // The decision lands in east's window 2, still counted under west's 1.
    deliver_all(&mut west, &mut east, T0.plus_ms(2));
    assert_eq!(west.state.decisions_in_flight(&region("cn-east"), 1), 0);
    let received = east.state.open_window().received[&(region("us-west"), 1)].clone();
    assert_eq!(cross_check(&sent, &received, 0), CrossCheck::Agree);

    // A decision counted twice would show.
    let mut doubled = received.clone();
    doubled.values_mut().for_each(|tally| {
        let once = *tally;
        tally.merge(&once);
    });
    assert!(matches!(cross_check(&sent, &doubled, 0), CrossCheck::Differ { .. }));
}

#[test]
fn a_settlement_is_recorded_once_moves_the_position_back_and_stays_out_of_the_next_window() {
    let (mut west, mut east) = mesh();
    pay(&mut west, "order-1", usd("100"), T0);
    deliver_all(&mut west, &mut east, T0);
    deliver_all(&mut west, &mut east, T0);
    close(&mut west, T0.plus_ms(1));
    let payer = partner_account("paypal-us", USD);
    let settle = |account: &AccountId, window: u64, reference: &str| CommandBody::RecordSettlement {
        window,
        account: account.clone(),
        reference: TopUpRef::new(reference).unwrap(),
    };
    assert_eq!(west.position("paypal-us").posted.to_wire(), "9898.70");

    // The payer paid 101.30 over the window; its bank's transfer brings that back.
    west.ok(settle(&payer, 1, "bank-7"), T0.plus_ms(2));
    assert_eq!(west.position("paypal-us").posted.to_wire(), "10000.00");
    let settled = window(&west, 1).position(&payer).unwrap().settled.clone().unwrap();
    assert_eq!(settled.reference.as_str(), "bank-7");
    west.ok(settle(&payer, 1, "bank-7"), T0.plus_ms(3));
    assert_eq!(west.position("paypal-us").posted.to_wire(), "10000.00", "the same reference moves nothing more");
    let refused = |region: &mut Region, body: CommandBody| region.run(body, T0.plus_ms(4)).rejection();
    assert_eq!(refused(&mut west, settle(&payer, 1, "bank-8")), Some(RejectCode::AlreadySettled));
    assert_eq!(refused(&mut west, settle(&payer, 2, "bank-8")), Some(RejectCode::WindowNotClosed));
    assert_eq!(refused(&mut west, settle(&payer, 3, "bank-8")), Some(RejectCode::WindowNotFound));
    assert_eq!(refused(&mut west, settle(&payer, 0, "bank-8")), Some(RejectCode::WindowNotFound));
    let settlement = AccountId::new(AccountOwner::Settlement, USD);
    assert_eq!(refused(&mut west, settle(&settlement, 1, "bank-8")), Some(RejectCode::NotSettleable));
    let own = AccountId::new(AccountOwner::Clearing(region("us-west")), USD);
    assert_eq!(refused(&mut west, settle(&own, 1, "bank-8")), Some(RejectCode::NotSettleable));
    let idle = partner_account("idle-us", USD);
    assert_eq!(refused(&mut west, settle(&idle, 1, "bank-8")), Some(RejectCode::NothingToSettle));

    // The clearing account against east: west holds 100.00 USD for it,
    // which leaves by wire.
    let clearing = AccountId::new(AccountOwner::Clearing(region("cn-east")), USD);
    west.ok(settle(&clearing, 1, "bank-9"), T0.plus_ms(5));
    assert_eq!(west.state.ledger().net_posted(&clearing).unwrap().to_wire(), "0.00");

    // The payee was paid out by its bank: its position drops by what it received.
    close(&mut east, T0.plus_ms(1));
    east.ok(settle(&partner_account("wechat-cn", CNY), 1, "bank-1"), T0.plus_ms(2));
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "0.00");

    // None of it is a payment of window 2.
    assert!(west.state.open_window().positions.is_empty());
    assert!(east.state.open_window().positions.is_empty());
    west.state.verify().unwrap();
}

#[test]
fn a_settlement_beyond_what_the_cap_allows_is_refused() {
    let (mut west, mut east) = mesh();
    pay(&mut west, "order-1", usd("100"), T0);
    deliver_all(&mut west, &mut east, T0);
    deliver_all(&mut west, &mut east, T0);
    close(&mut east, T0.plus_ms(1));
    // wechat-cn received 716.40 CNY and has no cap; a fund-out took it.
    let fund_out = CommandBody::FundOut {
        partner: pid("wechat-cn"),
        amount: cny("716.40"),
        reference: TopUpRef::new("out-1").unwrap(),
    };
    east.ok(fund_out, T0.plus_ms(2));
    let body = CommandBody::RecordSettlement {
        window: 1,
        account: partner_account("wechat-cn", CNY),
        reference: TopUpRef::new("bank-1").unwrap(),
    };
    assert_eq!(east.run(body, T0.plus_ms(3)).rejection(), Some(RejectCode::InsufficientPosition));
    assert!(window(&east, 1).position(&partner_account("wechat-cn", CNY)).unwrap().settled.is_none());
}
