//! One partner cannot starve the region, on a 3-node region of real
//! processes: a request the state machine would refuse without a state change
//! is refused by the leader without a log entry (the applied index and state
//! digest do not move, and no idempotency key is remembered); a partner's
//! caps and its operator-set request rate are RESOURCE_EXHAUSTED, and leave
//! the other partners alone.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{money, Region};
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::common::v1 as wire_common;
use paymesh_proto::partner::v1 as wire;

const QR: &str = "pay://merchant/m-1";

/// Payers wallet-a and wallet-b (USD, prefunded 1,000.00), payee
/// merchant-net, a domestic USD corridor, a route for `pay://merchant/`.
async fn configure(region: &Region) {
    let fee = admin::FeeSchedule {
        fixed: Some(money("0", "USD")),
        rate_bps: 0,
        min: Some(money("0", "USD")),
        max: Some(money("0", "USD")),
    };
    region.two_payers_and_a_merchant("0", fee).await;
}

fn quote_request() -> wire::CreateQuoteRequest {
    wire::CreateQuoteRequest {
        qr_payload: QR.into(),
        amount: Some(wire::create_quote_request::Amount::SourceAmount(money("1", "USD"))),
        idempotency_key: String::new(),
    }
}

fn transfer_request(key: &str, quote_id: &str, qr: &str) -> wire::CreateTransferRequest {
    wire::CreateTransferRequest {
        idempotency_key: key.into(),
        quote_id: quote_id.into(),
        qr_payload: qr.into(),
        payer: Some(wire::PayerDetails { name: "Ada".into(), account: "acct-1".into(), reference: "ref".into() }),
    }
}

/// Every node's applied index and state digest, once they agree.
async fn position(region: &Region) -> (u64, Vec<u8>) {
    let statuses = region.wait_converged(Duration::from_secs(20)).await;
    let status = &statuses[0];
    (status.applied_index.unwrap(), status.state_digest.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_with_a_bogus_quote_is_refused_by_the_leader_without_a_log_entry() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    configure(&region).await;
    let a = region.partner("wallet-a");
    let b = region.partner("wallet-b");
    let mine = a.create_quote(quote_request()).await.unwrap().quote.unwrap().quote_id;
    let theirs = b.create_quote(quote_request()).await.unwrap().quote.unwrap().quote_id;
    let bogus = format!("{}:q999999", common::REGION);
    let before = position(&region).await;

    // Fresh keys each time: no record to answer from.
    for (n, quote) in [&bogus, &theirs].into_iter().enumerate() {
        for round in 0..20 {
            let key = format!("fresh-{n}-{round}");
            let refused = a.create_transfer(transfer_request(&key, quote, QR)).await.unwrap_err();
            let status = refused.status().unwrap();
            assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
            assert!(status.message().contains("QuoteNotFound"), "{status:?}");
        }
    }
    // The quote's payee is not this QR's: refused in the response.
    let mismatch = a.create_transfer(transfer_request("fresh-m", &mine, "pay://merchant/m-2")).await.unwrap();
    assert_eq!(mismatch.reject_code, wire_common::RejectCode::PayeeMismatch as i32);
    assert!(mismatch.transfer.is_none());
    // A quote of an unknown payee: refused as well.
    let nowhere = wire::CreateQuoteRequest { qr_payload: "upi://nowhere/1".into(), ..quote_request() };
    let refused = a.create_quote(nowhere).await.unwrap_err();
    assert_eq!(refused.status().unwrap().code(), tonic::Code::NotFound);

    // Nothing was proposed: no node applied anything, the state is the same.
    let after = position(&region).await;
    assert_eq!(after.0, before.0, "the region applied entries for refused requests");
    assert_eq!(after.1, before.1, "the state changed for refused requests");

    // No idempotency record was made: the same key, now with a valid quote,
    // is a new request and commits.
    let created = a.create_transfer(transfer_request("fresh-0-0", &mine, QR)).await.unwrap();
    assert_eq!(created.reject_code, 0, "{created:?}");
    assert_eq!(created.transfer.unwrap().state, wire::TransferState::Committed as i32);
}

/// The operator's limits for `partner`, through the admin API.
async fn set_limits(region: &Region, partner: &str, limits: admin::PartnerLimits) -> admin::Partner {
    let request = admin::SetPartnerLimitsRequest { partner_id: partner.into(), limits: Some(limits) };
    let response = region
        .admin(|mut c| {
            let r = request.clone();
            async move { c.set_partner_limits(r).await }
        })
        .await;
    assert_eq!(response.reject_code, 0);
    response.partner.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_caps_and_rate_are_resource_exhausted_and_leave_other_partners_alone() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    configure(&region).await;
    let a = region.partner("wallet-a");
    let b = region.partner("wallet-b");
    let operator = region.operator_stem();

    // The defaults, shown by `paymesh partner show`.
    let (code, out, err) = region.cli(&operator, &["partner", "show", "--id", "wallet-a"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("limits: 1000 requests/s, burst 2000; unused quotes 0 of 10000"), "{out}");

    // Unused quotes: at most 2, set with the CLI.
    let (code, out, err) =
        region.cli(&operator, &["partner", "limits", "--id", "wallet-a", "--quotes-outstanding-max", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    let first = a.create_quote(quote_request()).await.unwrap().quote.unwrap();
    a.create_quote(quote_request()).await.unwrap().quote.unwrap();
    let refused = a.create_quote(quote_request()).await.unwrap_err();
    let status = refused.status().unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("quotes_outstanding_max"), "{status:?}");
    let (_, out, _) = region.cli(&operator, &["partner", "show", "--id", "wallet-a"]);
    assert!(out.contains("unused quotes 2 of 2"), "{out}");
    // Another partner is not held back.
    for _ in 0..3 {
        b.create_quote(quote_request()).await.unwrap().quote.unwrap();
    }
    // Using a quote frees its place.
    let created = a.create_transfer(transfer_request("order-1", &first.quote_id, QR)).await.unwrap();
    assert_eq!(created.reject_code, 0);
    a.create_quote(quote_request()).await.unwrap().quote.unwrap();

    // Limits are validated.
    let zero = admin::SetPartnerLimitsRequest {
        partner_id: "wallet-a".into(),
        limits: Some(admin::PartnerLimits {
            requests_per_second: 0,
            requests_burst: 1,
            quotes_outstanding_max: 1,
            transfers_in_flight_max: 1,
        }),
    };
    let refused = paymesh_harness::local::LocalRegion::admin(&region, |mut c| {
        let r = zero.clone();
        async move { c.set_partner_limits(r).await }
    })
    .await
    .unwrap_err();
    assert!(format!("{refused:?}").contains("requests_per_second"), "{refused:?}");

    // The request rate: 5/s with a burst of 5 for wallet-a; wallet-b keeps
    // the default.
    let stored = set_limits(
        &region,
        "wallet-a",
        admin::PartnerLimits {
            requests_per_second: 5,
            requests_burst: 5,
            quotes_outstanding_max: 10_000,
            transfers_in_flight_max: 10_000,
        },
    )
    .await;
    assert_eq!(stored.limits.unwrap().requests_per_second, 5);
    // Let the bucket settle at its new size.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // A client calling one request after another, faster than its rate, is
    // slowed to the rate, not refused: 5 at once, then one every 0.2 s.
    let started = std::time::Instant::now();
    for n in 0..10 {
        a.create_quote(quote_request()).await.unwrap_or_else(|e| panic!("request {n} of a paced loop: {e}"));
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "10 requests at 5/s after a burst of 5 took {took:?}");
    // 40 at once: those that would wait more than a second are refused.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let answers = futures::future::join_all((0..40).map(|_| a.create_quote(quote_request()))).await;
    let (mut served, mut limited) = (0, 0);
    for answer in answers {
        match answer {
            Ok(_) => served += 1,
            Err(e) => {
                let status = e.status().unwrap();
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("requests_per_second"), "{status:?}");
                limited += 1;
            }
        }
    }
    assert!((5..=12).contains(&served), "served {served}, limited {limited}");
    assert_eq!(served + limited, 40);
    for _ in 0..40 {
        b.create_quote(quote_request()).await.unwrap().quote.unwrap();
    }
}
