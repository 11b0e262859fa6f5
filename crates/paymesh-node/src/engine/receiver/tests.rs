//! The receiver's rules: malformed items answered at once, one command per
//! other item, answers in the items' order, unexpected outcomes refused.

use paymesh_core::command::{Decision, PrepareMessage, PrepareReply, Preparing};
use paymesh_core::corridor::CorridorId;
use paymesh_core::currency::Currency::{CNY, USD};
use paymesh_core::fx::Rate;
use paymesh_core::id::{MerchantId, PartnerId, PayerToken, RegionId, TransferId};
use paymesh_core::{CommandBody, Money, Outcome, RejectCode, Timestamp};
use paymesh_proto::interregion::v1 as wire;

use super::*;
use crate::interregion::{decision_out, prepare_out};

fn region(name: &str) -> RegionId {
    RegionId::new(name).unwrap()
}

fn prepare(origin: &str, n: u64) -> wire::PrepareItem {
    let transfer = TransferId::new(region(origin), n);
    let message = PrepareMessage {
        transfer: transfer.clone(),
        corridor: CorridorId::parse(&format!("USD:{origin}->CNY:cn-east")).unwrap(),
        source: Money::parse("1", USD).unwrap(),
        destination: Money::parse("7", CNY).unwrap(),
        rate: Rate::ONE,
        payee: PartnerId::new("wechat-cn").unwrap(),
        merchant: MerchantId::new("m").unwrap(),
        payer_token: PayerToken::for_transfer(&transfer),
        deadline: Timestamp::from_unix_ms(1_000_000),
    };
    prepare_out(&Preparing::Transfer(message), &RegionId::new("cn-east").unwrap(), String::new())
}

fn results(reply: Reply) -> Vec<(String, i32, i32)> {
    match reply {
        Reply::Prepares(batch) => {
            assert_eq!(batch.from_region, "cn-east");
            batch.replies.into_iter().map(|r| (r.transfer_id, r.result, r.reject_code)).collect()
        }
        Reply::Acks(batch) => {
            assert_eq!(batch.from_region, "cn-east");
            batch.acks.into_iter().map(|a| (a.transfer_id, a.result, 0)).collect()
        }
    }
}

#[test]
fn batches_of_none_or_too_many_items_are_refused() {
    assert!(admit(0).is_err());
    assert!(admit(1).is_ok());
    assert!(admit(BATCH_ITEMS_MAX).is_ok());
    assert!(admit(BATCH_ITEMS_MAX + 1).unwrap_err().contains("1 to 1000 items"));
}

#[test]
fn each_item_is_answered_in_order_malformed_ones_at_once() {
    let mut garbled = prepare("us-west", 2);
    garbled.source_amount = None;
    let batch = wire::PrepareBatch {
        from_region: "us-west".into(),
        items: vec![prepare("us-west", 1), garbled, prepare("ap-southeast", 3), prepare("us-west", 4)],
        protocol: 1,
    };
    let (mut inbound, proposals) = Inbound::prepares(&batch, &region("us-west"));
    let items: Vec<usize> = proposals.iter().map(|p| p.item).collect();
    assert_eq!(items, vec![0, 3], "one command per well-formed item of the caller's region");
    assert!(matches!(&proposals[0].body, CommandBody::Prepare(m) if m.transfer.to_string() == "us-west:1"));
    assert!(!inbound.complete());
    // Outcomes may come in any order.
    assert_eq!(inbound.answered(3, Outcome::Rejected(RejectCode::DeadlineExceeded)), Ok(None));
    assert!(!inbound.complete());
    assert_eq!(inbound.answered(0, Outcome::PrepareReply(PrepareReply::Prepared)), Ok(None));
    assert!(inbound.complete());
    let prepared = wire::PrepareResult::Prepared as i32;
    let rejected = wire::PrepareResult::Rejected as i32;
    let code = |code| crate::convert::reject_code_opt(Some(code));
    assert_eq!(
        results(inbound.reply(&region("cn-east"), 1)),
        vec![
            ("us-west:1".into(), prepared, 0),
            ("us-west:2".into(), rejected, code(RejectCode::ProtocolViolation)),
            ("ap-southeast:3".into(), rejected, code(RejectCode::RegionMismatch)),
            ("us-west:4".into(), rejected, code(RejectCode::DeadlineExceeded)),
        ]
    );
}

#[test]
fn decisions_are_acked_and_contradicted_ones_answered_as_violations() {
    let item = |id: &str, decision| wire::DecisionItem {
        transfer_id: id.into(),
        decision: decision_out(decision),
        traceparent: String::new(),
        window: 4,
    };
    let batch = wire::DecisionBatch {
        from_region: "us-west".into(),
        items: vec![
            item("us-west:1", Decision::Commit),
            item("not an id", Decision::Commit),
            item("us-west:3", Decision::Abort),
        ],
        protocol: 1,
    };
    let (mut inbound, proposals) = Inbound::decisions(&batch, &region("us-west"));
    assert_eq!(proposals.iter().map(|p| p.item).collect::<Vec<_>>(), vec![0, 2]);
    // Each decision is applied with the window its coordinator made it in.
    assert!(matches!(proposals[0].body, CommandBody::DecideInWindow { window: 4, decision: Decision::Commit, .. }));
    assert_eq!(inbound.answered(0, Outcome::Acked), Ok(None));
    let contradiction = inbound.answered(2, Outcome::Rejected(RejectCode::ProtocolViolation)).unwrap();
    assert_eq!(
        contradiction,
        Some(Contradiction {
            transfer: TransferId::parse("us-west:3").unwrap(),
            decision: Decision::Abort,
            code: RejectCode::ProtocolViolation,
        })
    );
    let acked = wire::AckResult::Acked as i32;
    let violation = wire::AckResult::ProtocolViolation as i32;
    assert_eq!(
        results(inbound.reply(&region("cn-east"), 1)),
        vec![("us-west:1".into(), acked, 0), ("not an id".into(), violation, 0), ("us-west:3".into(), violation, 0)]
    );
}

#[test]
fn an_outcome_the_protocol_does_not_produce_is_refused() {
    let batch = wire::PrepareBatch { from_region: "us-west".into(), items: vec![prepare("us-west", 1)], protocol: 1 };
    let (mut inbound, _) = Inbound::prepares(&batch, &region("us-west"));
    let refused = inbound.answered(0, Outcome::Acked).unwrap_err();
    assert_eq!(refused.phase, "prepare");
    assert!(refused.to_string().contains("unexpected outcome of a prepare"));
}
