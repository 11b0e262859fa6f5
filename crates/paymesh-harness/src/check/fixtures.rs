//! A small history in which every invariant holds, for the checkers' and the
//! report's tests to start from and break one thing at a time.
//!
//! Two regions: `us-west` (the wallet `paypal-us` and the merchant `shop-us`,
//! both USD) and `cn-east` (the merchant `wechat-cn`, CNY). Four transfers:
//! a domestic one, committed; a cross-border one, committed on both sides
//! after a retry; a cross-border one whose request got no answer, aborted on
//! both sides; and a cross-border one aborted before its Prepare arrived
//! (no payee side). A fifth request was refused.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::history::{
    Amount, Fault, History, LedgerTotals, Observation, ObservedTransfer, Op, Outcome, Position, RegionObservation,
    Replica, Request, TransferState,
};

/// The payer's region.
pub const US: &str = "us-west";
/// The cross-border payee's region.
pub const CN: &str = "cn-east";
/// The wallet paying.
pub const PAYER: &str = "paypal-us";
/// The domestic merchant.
pub const SHOP: &str = "shop-us";
/// The cross-border merchant.
pub const MERCHANT: &str = "wechat-cn";

/// The domestic transfer, committed.
pub const T_DOMESTIC: &str = "t-dom";
/// The cross-border transfer committed on both sides.
pub const T_COMMITTED: &str = "t-x1";
/// The cross-border transfer aborted on both sides.
pub const T_ABORTED: &str = "t-x2";
/// The cross-border transfer aborted at the origin only.
pub const T_ABORTED_EARLY: &str = "t-x3";

/// An exact decimal from its text.
pub fn dec(text: &str) -> Decimal {
    text.parse().expect("a decimal literal")
}

/// An amount in `currency`.
pub fn amount(text: &str, currency: &str) -> Amount {
    Amount { amount: dec(text), currency: currency.to_owned() }
}

/// An amount in USD.
pub fn usd(text: &str) -> Amount {
    amount(text, "USD")
}

/// An amount in CNY.
pub fn cny(text: &str) -> Amount {
    amount(text, "CNY")
}

/// A request made by `client` between `invoked_ms` and `completed_ms`.
pub fn op(client: u32, invoked_ms: u64, completed_ms: u64, request: Request, outcome: Outcome) -> Op {
    Op { client, invoked_ms, completed_ms, request, outcome }
}

/// A CreateTransfer of `PAYER` in `US`; `answer` is the id and state
/// answered, if any.
pub fn create(
    key: &str,
    payee: (&str, &str),
    debit: Amount,
    credit: Amount,
    answer: Option<(&str, TransferState)>,
) -> Request {
    Request::CreateTransfer {
        region: US.to_owned(),
        partner: PAYER.to_owned(),
        idempotency_key: key.to_owned(),
        payee_partner: payee.0.to_owned(),
        payee_region: payee.1.to_owned(),
        debit,
        credit,
        transfer_id: answer.map(|(id, _)| id.to_owned()),
        state: answer.map(|(_, state)| state),
    }
}

/// A record of a transfer of `PAYER` from `US`, with the key it has at the
/// origin (pass `""` for a payee side, which knows neither key nor payer).
pub fn transfer(
    id: &str,
    key: &str,
    payee: (&str, &str),
    state: TransferState,
    debit: Amount,
    credit: Amount,
) -> ObservedTransfer {
    ObservedTransfer {
        transfer_id: id.to_owned(),
        idempotency_key: key.to_owned(),
        payer_partner: if key.is_empty() { String::new() } else { PAYER.to_owned() },
        payee_partner: payee.0.to_owned(),
        source_region: US.to_owned(),
        destination_region: payee.1.to_owned(),
        state,
        debit,
        credit,
    }
}

/// A position with no pending amounts.
pub fn position(currency: &str, posted: &str, cap: &str) -> Position {
    Position {
        currency: currency.to_owned(),
        posted_balance: dec(posted),
        pending_debits: Decimal::ZERO,
        pending_credits: Decimal::ZERO,
        net_debit_cap: dec(cap),
    }
}

/// Balanced ledger totals with `posted` on each side and nothing pending.
pub fn balanced(posted: &str) -> LedgerTotals {
    LedgerTotals {
        debits_posted: dec(posted),
        credits_posted: dec(posted),
        debits_pending: Decimal::ZERO,
        credits_pending: Decimal::ZERO,
    }
}

fn replicas(applied_index: u64, digest: &str) -> Vec<Replica> {
    (1..=3).map(|node_id| Replica { node_id, applied_index, digest: digest.to_owned() }).collect()
}

fn positions(entries: &[(&str, Position)]) -> BTreeMap<String, BTreeMap<String, Position>> {
    entries
        .iter()
        .map(|(partner, p)| (partner.to_string(), BTreeMap::from([(p.currency.clone(), p.clone())])))
        .collect()
}

const DOMESTIC: (&str, &str) = (SHOP, US);
const CROSS: (&str, &str) = (MERCHANT, CN);

/// The good history (see the module's documentation).
pub fn good_history() -> History {
    use TransferState::{Aborted, Committed, Prepared, Reserved};
    let unknown = || Outcome::Unknown { reason: "deadline exceeded".to_owned() };
    let ops = vec![
        op(
            0,
            100,
            130,
            create("k-dom", DOMESTIC, usd("10.50"), usd("10.00"), Some((T_DOMESTIC, Committed))),
            Outcome::Ok,
        ),
        op(1, 200, 1200, create("k-x1", CROSS, usd("20.30"), cny("140.00"), None), unknown()),
        op(
            1,
            1300,
            1400,
            create("k-x1", CROSS, usd("20.30"), cny("140.00"), Some((T_COMMITTED, Reserved))),
            Outcome::Ok,
        ),
        op(2, 1500, 2500, create("k-x2", CROSS, usd("5.10"), cny("35.00"), None), unknown()),
        op(
            0,
            2600,
            2700,
            create("k-x3", CROSS, usd("7.20"), cny("49.00"), Some((T_ABORTED_EARLY, Reserved))),
            Outcome::Ok,
        ),
        op(
            2,
            2800,
            2810,
            create("k-fail", CROSS, usd("9999.00"), cny("70000.00"), None),
            Outcome::Failed { reason: "INSUFFICIENT_POSITION".to_owned() },
        ),
        op(
            0,
            3000,
            3010,
            Request::GetTransfer {
                region: US.to_owned(),
                partner: PAYER.to_owned(),
                transfer_id: T_COMMITTED.to_owned(),
                state: Some(Committed),
            },
            Outcome::Ok,
        ),
        op(
            1,
            3100,
            3105,
            Request::GetPosition {
                region: US.to_owned(),
                partner: PAYER.to_owned(),
                position: Some(position("USD", "969.20", "100")),
            },
            Outcome::Ok,
        ),
        op(
            3,
            50,
            7600,
            Request::Events {
                region: US.to_owned(),
                partner: PAYER.to_owned(),
                from_cursor: 0,
                events: vec![
                    (1, T_DOMESTIC.to_owned(), Committed),
                    (2, T_COMMITTED.to_owned(), Reserved),
                    (3, T_ABORTED.to_owned(), Reserved),
                    (4, T_COMMITTED.to_owned(), Committed),
                    (5, T_ABORTED_EARLY.to_owned(), Reserved),
                    (6, T_ABORTED_EARLY.to_owned(), Aborted),
                    (7, T_ABORTED.to_owned(), Aborted),
                ],
            },
            Outcome::Ok,
        ),
        op(
            4,
            60,
            7700,
            Request::Events {
                region: CN.to_owned(),
                partner: MERCHANT.to_owned(),
                from_cursor: 0,
                events: vec![(1, T_COMMITTED.to_owned(), Prepared), (2, T_COMMITTED.to_owned(), Committed)],
            },
            Outcome::Unknown { reason: "connection reset".to_owned() },
        ),
    ];

    let us = RegionObservation {
        transfers: vec![
            transfer(T_DOMESTIC, "k-dom", DOMESTIC, Committed, usd("10.50"), usd("10.00")),
            transfer(T_COMMITTED, "k-x1", CROSS, Committed, usd("20.30"), cny("140.00")),
            transfer(T_ABORTED, "k-x2", CROSS, Aborted, usd("5.10"), cny("35.00")),
            transfer(T_ABORTED_EARLY, "k-x3", CROSS, Aborted, usd("7.20"), cny("49.00")),
        ],
        // Top-up 1000, the domestic 10.50 and the cross-border 20.30, each a
        // debit and a credit.
        ledger: BTreeMap::from([("USD".to_owned(), balanced("1030.80"))]),
        positions: positions(&[(PAYER, position("USD", "969.20", "100")), (SHOP, position("USD", "10.00", "0"))]),
        top_ups: BTreeMap::from([(PAYER.to_owned(), BTreeMap::from([("USD".to_owned(), dec("1000"))]))]),
        replicas: replicas(120, "aa01"),
        refunds: Vec::new(),
        current_rate_corridors: Vec::new(),
    };
    let cn = RegionObservation {
        transfers: vec![
            transfer(T_COMMITTED, "", CROSS, Committed, usd("20.30"), cny("140.00")),
            transfer(T_ABORTED, "", CROSS, Aborted, usd("5.10"), cny("35.00")),
        ],
        ledger: BTreeMap::from([("CNY".to_owned(), balanced("140.00"))]),
        positions: positions(&[(MERCHANT, position("CNY", "140.00", "0"))]),
        top_ups: BTreeMap::new(),
        replicas: replicas(80, "bb02"),
        refunds: Vec::new(),
        current_rate_corridors: Vec::new(),
    };

    History {
        seed: 42,
        backend: "sim".to_owned(),
        duration_ms: 8000,
        ops,
        faults: vec![
            fault("kill", "us-west/2", 1000, 3000, Some(400)),
            fault("cut-region", CN, 4000, 6000, Some(900)),
            fault("kill", "cn-east/1", 6500, 7000, Some(600)),
        ],
        observation: Some(Observation {
            healed_ms: 7000,
            resolved_ms: Some(7500),
            resolve_bound_ms: 10_000,
            regions: BTreeMap::from([(US.to_owned(), us), (CN.to_owned(), cn)]),
            settlement: None,
        }),
        locality: None,
        webhooks: None,
    }
}

/// A fault of `nemesis` on `target`.
pub fn fault(nemesis: &str, target: &str, start_ms: u64, end_ms: u64, recovered_after_ms: Option<u64>) -> Fault {
    Fault {
        nemesis: nemesis.to_owned(),
        target: target.to_owned(),
        start_ms,
        end_ms,
        recovered_after_ms,
        elected_after_ms: None,
    }
}

/// The history's observation, to change.
pub fn observation_mut(history: &mut History) -> &mut Observation {
    history.observation.as_mut().expect("the fixture is observed")
}

/// What `region` holds, to change.
pub fn region_mut<'h>(history: &'h mut History, region: &str) -> &'h mut RegionObservation {
    observation_mut(history).regions.get_mut(region).expect("a region of the fixture")
}

/// The record of transfer `id` in `region`, to change.
pub fn transfer_mut<'h>(history: &'h mut History, region: &str, id: &str) -> &'h mut ObservedTransfer {
    region_mut(history, region).transfers.iter_mut().find(|t| t.transfer_id == id).expect("a transfer of the fixture")
}

/// The position of `partner` in `currency` held by `region`, to change.
pub fn position_mut<'h>(history: &'h mut History, region: &str, partner: &str, currency: &str) -> &'h mut Position {
    region_mut(history, region)
        .positions
        .get_mut(partner)
        .and_then(|by_currency| by_currency.get_mut(currency))
        .expect("a position of the fixture")
}

/// The details of `violations`, for assertion messages.
pub fn details(violations: &[crate::check::Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.detail.as_str()).collect()
}
