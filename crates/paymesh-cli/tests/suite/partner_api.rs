//! The partner API on a 3-node region of real processes: quotes, same-region
//! transfers, reads, events, identity, validation, and retries across a
//! leader kill.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{money, Region};
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::common::v1 as wire_common;
use paymesh_proto::partner::v1 as wire;

const QR: &str = "pay://merchant/m-1";

/// Partners wallet-a and wallet-b (payers, USD, prefunded 1,000.00 with a cap
/// of 100.00), merchant-net (payee), a domestic USD corridor with a fee of
/// 0.10 + 1 %, and a route for `pay://merchant/`.
async fn configure(region: &Region) {
    let fee = admin::FeeSchedule {
        fixed: Some(money("0.10", "USD")),
        rate_bps: 100,
        min: Some(money("0", "USD")),
        max: Some(money("5", "USD")),
    };
    region.two_payers_and_a_merchant("100", fee).await;
}

fn quote_request(amount: &str) -> wire::CreateQuoteRequest {
    wire::CreateQuoteRequest {
        qr_payload: QR.into(),
        amount: Some(wire::create_quote_request::Amount::SourceAmount(money(amount, "USD"))),
        idempotency_key: String::new(),
    }
}

fn transfer_request(key: &str, quote_id: &str) -> wire::CreateTransferRequest {
    wire::CreateTransferRequest {
        idempotency_key: key.into(),
        quote_id: quote_id.into(),
        qr_payload: QR.into(),
        payer: Some(wire::PayerDetails {
            name: "Ada Traveller".into(),
            account: "acct-77".into(),
            reference: format!("ref-{key}"),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_region_transfer_commits_and_is_visible_only_to_its_partners() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    configure(&region).await;
    let a = region.partner("wallet-a");
    let lookup = a.lookup_payee(wire::LookupPayeeRequest { qr_payload: QR.into() }).await.unwrap();
    assert_eq!(lookup.payee.unwrap().merchant_id, "m-1");
    let quote = a.create_quote(quote_request("10")).await.unwrap().quote.unwrap();
    assert_eq!(quote.fee.as_ref().unwrap().amount, "0.20");
    assert_eq!(quote.total_debit.as_ref().unwrap().amount, "10.20");
    let created = a.create_transfer(transfer_request("order-1", &quote.quote_id)).await.unwrap();
    assert_eq!(created.reject_code, 0);
    let transfer = created.transfer.unwrap();
    assert_eq!(transfer.state, wire::TransferState::Committed as i32);
    let position = a.get_position(wire::GetPositionRequest::default()).await.unwrap().positions.remove(0);
    assert_eq!(position.posted_balance.unwrap().amount, "989.80");

    // The payee sees the transfer (without the payer's key and fee); another
    // payer does not, and cannot read it.
    let merchant = region.partner("merchant-net");
    let seen =
        merchant.get_transfer(wire::GetTransferRequest { transfer_id: transfer.transfer_id.clone() }).await.unwrap();
    let seen = seen.transfer.unwrap();
    assert!(seen.idempotency_key.is_empty() && seen.fee.is_none());
    let b = region.partner("wallet-b");
    let refused =
        b.get_transfer(wire::GetTransferRequest { transfer_id: transfer.transfer_id.clone() }).await.unwrap_err();
    assert_eq!(refused.status().unwrap().code(), tonic::Code::NotFound);
    assert!(b.list_transfers(wire::ListTransfersRequest::default()).await.unwrap().transfers.is_empty());
    assert_eq!(a.list_transfers(wire::ListTransfersRequest::default()).await.unwrap().transfers.len(), 1);

    // Events: the payer's committed, the payee's credited; b has none.
    let mut stream = a.stream_events(0).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    let event = event.event.unwrap();
    assert_eq!((event.cursor, event.kind), (1, wire::EventKind::Committed as i32));
    let mut stream = merchant.stream_events(0).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(event.event.unwrap().kind, wire::EventKind::Credited as i32);
    let mut stream = b.stream_events(0).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.message()).await.is_err(), "b has no events");

    let summary =
        region.admin(|mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await }).await;
    assert!(summary.balanced, "{}", summary.violation);
}

/// Find the leader's id and kill it.
async fn kill_leader(region: &mut Region) -> u64 {
    let leader = region.wait_leader(Duration::from_secs(20)).await;
    region.kill(leader);
    leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_transfer_across_a_leader_kill_is_the_same_transfer() {
    let mut region = Region::start(3, "");
    region.initialize(1).await;
    configure(&region).await;
    let a = region.partner("wallet-a");
    let quote = a.create_quote(quote_request("25")).await.unwrap().quote.unwrap();
    let request = transfer_request("order-kill", &quote.quote_id);
    let first = a.create_transfer(request.clone()).await.unwrap().transfer.unwrap();
    let killed = kill_leader(&mut region).await;

    // The partner's retry (same key, same body) reaches the new leader.
    let retry_client = region.partner("wallet-a");
    let again = retry_client.create_transfer(request.clone()).await.unwrap();
    assert_eq!(again.transfer.unwrap().transfer_id, first.transfer_id, "the same transfer, not a second one");
    let position = retry_client.get_position(wire::GetPositionRequest::default()).await.unwrap().positions.remove(0);
    assert_eq!(position.posted_balance.unwrap().amount, "974.65", "one debit of 25.35");
    // The same key with another body is refused.
    let mut other = request.clone();
    other.payer.as_mut().unwrap().name = "Someone Else".into();
    let conflict = retry_client.create_transfer(other).await.unwrap_err();
    assert_eq!(conflict.status().unwrap().code(), tonic::Code::AlreadyExists);

    region.spawn(killed);
    region.wait_converged(Duration::from_secs(30)).await;
    let summary =
        region.admin(|mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await }).await;
    assert!(summary.balanced, "{}", summary.violation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_event_stream_has_no_gap_and_no_duplicate_across_a_failover() {
    let mut region = Region::start(3, "");
    region.initialize(1).await;
    configure(&region).await;
    let a = region.partner("wallet-a");
    let pay = |n: usize| {
        let a = &a;
        async move {
            let quote = a.create_quote(quote_request("1")).await.unwrap().quote.unwrap();
            a.create_transfer(transfer_request(&format!("ev-{n}"), &quote.quote_id)).await.unwrap();
        }
    };
    for n in 0..5 {
        pay(n).await;
    }
    let mut seen: Vec<u64> = Vec::new();
    let mut stream = a.stream_events(0).await.unwrap();
    while seen.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
        seen.push(message.event.unwrap().cursor);
    }
    drop(stream);
    kill_leader(&mut region).await;
    let a = region.partner("wallet-a");
    for n in 5..10 {
        let quote = a.create_quote(quote_request("1")).await.unwrap().quote.unwrap();
        a.create_transfer(transfer_request(&format!("ev-{n}"), &quote.quote_id)).await.unwrap();
    }
    let mut stream = a.stream_events(*seen.last().unwrap()).await.unwrap();
    while seen.len() < 10 {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
        seen.push(message.event.unwrap().cursor);
    }
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>(), "cursors contiguous, no gap, no repeat");
    // A cursor beyond the newest is refused, not silently empty.
    let refused = a.stream_events(1_000).await.unwrap_err();
    assert_eq!(refused.status().unwrap().code(), tonic::Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_bank_workload_keeps_the_ledger_balanced_and_within_limits() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    configure(&region).await;
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let client = region.partner(if worker % 2 == 0 { "wallet-a" } else { "wallet-b" });
        tasks.push(tokio::spawn(async move {
            let (mut committed, mut declined) = (0, 0);
            for n in 0..25 {
                // Amounts large enough that positions run out: some transfers
                // are declined for insufficient position.
                let amount = format!("{}", 10 + (worker * 7 + n * 13) % 60);
                let quote = client.create_quote(quote_request(&amount)).await.unwrap().quote.unwrap();
                let created =
                    client.create_transfer(transfer_request(&format!("w{worker}-{n}"), &quote.quote_id)).await.unwrap();
                if created.reject_code == 0 {
                    committed += 1;
                } else {
                    assert_eq!(created.reject_code, wire_common::RejectCode::InsufficientPosition as i32);
                    declined += 1;
                }
            }
            (committed, declined)
        }));
    }
    let (mut committed, mut declined) = (0, 0);
    for task in tasks {
        let (c, d) = task.await.unwrap();
        committed += c;
        declined += d;
    }
    assert!(committed > 0 && declined > 0, "committed {committed}, declined {declined}");
    for id in ["wallet-a", "wallet-b"] {
        let request = admin::GetPartnerRequest { partner_id: id.into() };
        let partner = region
            .admin(|mut c| {
                let r = request.clone();
                async move { c.get_partner(r).await }
            })
            .await;
        let position = &partner.positions[0];
        let available: f64 = position.available.as_ref().unwrap().amount.parse().unwrap();
        assert!(available >= 0.0, "{id} beyond its limit: {position:?}");
    }
    let summary =
        region.admin(|mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await }).await;
    assert!(summary.balanced, "{}", summary.violation);
    let usd = summary.currencies.iter().find(|c| c.currency == "USD").unwrap();
    assert_eq!(usd.debits_posted.as_ref().unwrap().amount, usd.credits_posted.as_ref().unwrap().amount);
    region.wait_converged(Duration::from_secs(30)).await;
    println!("bank workload: {committed} committed, {declined} declined for insufficient position");
}

/// The refusals over the wire of a real region (mutual TLS, three nodes): one
/// of each kind, plus what only the transport enforces (message size, the
/// follower's redirect). The full table of field checks is
/// `paymesh-node/tests/api_validation.rs`, on the same handlers in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_over_the_wire_are_specific_and_change_nothing() {
    use paymesh_proto::partner::v1::partner_service_client::PartnerServiceClient;
    use tonic::Code;

    let region = Region::start(3, "");
    let leader = region.initialize(1).await;
    configure(&region).await;
    let before = region.wait_converged(Duration::from_secs(20)).await;
    let a = region.partner("wallet-a");
    let code = |e: paymesh_client::ClientError| (e.status().unwrap().code(), e.status().unwrap().message().to_owned());

    let (c, m) = code(a.create_quote(quote_request("1.005")).await.unwrap_err());
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("source_amount: USD allows at most 2 fractional digits"), "{m}");
    // Amounts are positive: zero is malformed, not below a corridor's minimum.
    for zero in ["0", "0.00"] {
        let (c, m) = code(a.create_quote(quote_request(zero)).await.unwrap_err());
        assert_eq!(c, Code::InvalidArgument, "{m}");
        assert!(m.contains("source_amount: must be positive"), "{m}");
    }
    let (c, m) = code(a.create_transfer(transfer_request("k 1", "us-west:q1")).await.unwrap_err());
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("idempotency_key"), "{m}");
    let (c, m) =
        code(a.get_transfer(wire::GetTransferRequest { transfer_id: "us-west:999".into() }).await.unwrap_err());
    assert_eq!((c, m.starts_with("TransferNotFound")), (Code::NotFound, true), "{m}");
    // Sequences start at 1: an id with sequence 0 is malformed, not unknown.
    let (c, m) = code(a.get_transfer(wire::GetTransferRequest { transfer_id: "us-west:0".into() }).await.unwrap_err());
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("sequences start at 1"), "{m}");
    let (c, m) = code(a.lookup_payee(wire::LookupPayeeRequest { qr_payload: "upi://x".into() }).await.unwrap_err());
    assert_eq!((c, m.starts_with("PayeeNotFound")), (Code::NotFound, true), "{m}");
    let (c, _) = code(a.stream_events(99).await.unwrap_err());
    assert_eq!(c, Code::OutOfRange);
    let operator = paymesh_client::PartnerClient::new(region.sdk("operator-tests").unwrap());
    let (c, _) = code(operator.get_position(wire::GetPositionRequest::default()).await.unwrap_err());
    assert_eq!(c, Code::PermissionDenied);

    // Beyond the 1 MiB message limit: refused by the server's decoder.
    let sdk = region.sdk("partner-wallet-a").unwrap();
    let leader_addr = region.nodes[&leader].api_addr.clone();
    let mut raw = PartnerServiceClient::new(sdk.channel(&leader_addr).unwrap());
    // RESOURCE_EXHAUSTED, as gRPC's conventions have it, on every service
    // of the API listener (the decoder's own OUT_OF_RANGE is the code the
    // contract keeps for StreamEvents' cursors).
    let huge = wire::LookupPayeeRequest { qr_payload: "q".repeat(5 * 1024 * 1024) };
    let status = raw.lookup_payee(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("the limit is"), "{status:?}");
    let operator_sdk = region.sdk("operator-tests").unwrap();
    let mut raw_admin =
        admin::admin_service_client::AdminServiceClient::new(operator_sdk.channel(&leader_addr).unwrap());
    let huge = admin::GetPartnerRequest { partner_id: "p".repeat(2 * 1024 * 1024) };
    let status = raw_admin.get_partner(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Quotes the region refuses are answered without proposing anything: a
    // payee-only caller, a QR code no route matches.
    let merchant = region.partner("merchant-net");
    let refused = merchant.create_quote(quote_request("5")).await.unwrap();
    assert_eq!(refused.reject_code, wire_common::RejectCode::PartnerRoleNotAllowed as i32, "{refused:?}");
    let unrouted = wire::CreateQuoteRequest { qr_payload: "upi://nobody".into(), ..quote_request("5") };
    let (c, m) = code(a.create_quote(unrouted).await.unwrap_err());
    assert_eq!((c, m.starts_with("PayeeNotFound")), (Code::NotFound, true), "{m}");

    // A follower answers a write with UNAVAILABLE and the leader's address.
    let follower = region.nodes.values().find(|n| n.id != leader).unwrap().api_addr.clone();
    let mut raw = PartnerServiceClient::new(sdk.channel(&follower).unwrap());
    let status = raw.create_quote(quote_request("5")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let text = |key: &str| status.metadata().get(key).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(text(paymesh_client::LEADER_ADDR), Some(leader_addr.clone()));
    // Every answer names the node that gave it, and a redirect names the
    // leader by id too: the SDK finds its own address for the leader by it.
    let follower_id = region.nodes.values().find(|n| n.api_addr == follower).unwrap().id;
    assert_eq!(text(paymesh_client::LEADER_ID), Some(leader.to_string()));
    assert_eq!(text(paymesh_client::NODE_ID), Some(follower_id.to_string()));
    let mut raw = PartnerServiceClient::new(sdk.channel(&leader_addr).unwrap());
    let answer = raw.get_position(wire::GetPositionRequest::default()).await.unwrap();
    let named = answer.metadata().get(paymesh_client::NODE_ID).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(named, Some(leader.to_string()), "a success names its node too");

    // None of these refusals reached the log.
    let after = region.wait_converged(Duration::from_secs(20)).await;
    assert_eq!(after[0].applied_index, before[0].applied_index);
    assert_eq!(after[0].state_digest, before[0].state_digest);

    // Suspended: FAILED_PRECONDITION for new business and for reads.
    let suspend = admin::SetPartnerStatusRequest {
        partner_id: "wallet-a".into(),
        status: admin::PartnerStatus::Suspended as i32,
    };
    region
        .admin(|mut c| {
            let r = suspend.clone();
            async move { c.set_partner_status(r).await }
        })
        .await;
    let suspended = region.wait_converged(Duration::from_secs(20)).await;
    let (c, m) = code(a.create_quote(quote_request("5")).await.unwrap_err());
    assert_eq!((c, m.starts_with("PartnerSuspended")), (Code::FailedPrecondition, true), "{m}");
    let (c, m) = code(a.get_position(wire::GetPositionRequest::default()).await.unwrap_err());
    assert_eq!((c, m.starts_with("PartnerSuspended")), (Code::FailedPrecondition, true), "{m}");
    let after = region.wait_converged(Duration::from_secs(20)).await;
    assert_eq!(after[0].applied_index, suspended[0].applied_index, "a suspended caller's quote proposed nothing");

    let summary =
        region.admin(|mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await }).await;
    assert!(summary.balanced, "{}", summary.violation);
}

/// The statement lines' balances move by their amounts, from one line to
/// the next: the posted balance by POSTED and RESERVATION_POSTED, pending
/// debits by the reservations. Returns the last line's posted balance.
fn check_running_balances(lines: &[wire_common::StatementLine]) -> String {
    let cents = |m: Option<&wire_common::Money>| -> i64 {
        let text = &m.unwrap().amount;
        let (units, fraction) = text.split_once('.').unwrap_or((text, "0"));
        let negative = units.starts_with('-');
        let value = units.trim_start_matches('-').parse::<i64>().unwrap() * 100
            + format!("{fraction:0<2}").parse::<i64>().unwrap();
        if negative {
            -value
        } else {
            value
        }
    };
    for pair in lines.windows(2) {
        let (before, line) = (&pair[0], &pair[1]);
        let amount = cents(line.amount.as_ref());
        let signed = if line.debit { -amount } else { amount };
        let kind = wire_common::MovementKind::try_from(line.kind).unwrap();
        let posted = match kind {
            wire_common::MovementKind::Posted | wire_common::MovementKind::ReservationPosted => signed,
            _ => 0,
        };
        assert_eq!(
            cents(line.posted_balance.as_ref()),
            cents(before.posted_balance.as_ref()) + posted,
            "{} after {}",
            line.entry_id,
            before.entry_id
        );
    }
    lines.last().unwrap().posted_balance.as_ref().unwrap().amount.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_serves_statements_lists_and_reads_across_snapshots_and_kills() {
    let mut region = Region::start(3, "");
    region.initialize(1).await;
    configure(&region).await;
    let a = region.partner("wallet-a");
    let mut ids = Vec::new();
    let mut middle_ms = 0;
    for n in 0..30 {
        if n == 15 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            middle_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let quote = a.create_quote(quote_request("1")).await.unwrap().quote.unwrap();
        let created = a.create_transfer(transfer_request(&format!("h-{n}"), &quote.quote_id)).await.unwrap();
        ids.push(created.transfer.unwrap().transfer_id);
    }
    // Every node checkpoints (its history made durable first), then the
    // leader and a follower are killed with SIGKILL and restart from their
    // checkpoints over the history they hold.
    for addr in region.api_addrs() {
        region.client().trigger_snapshot(&addr).await.unwrap();
    }
    let leader = region.wait_leader(Duration::from_secs(20)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    region.kill(leader);
    region.kill(follower);
    region.spawn(leader);
    region.spawn(follower);
    let statuses = region.wait_converged(Duration::from_secs(60)).await;
    assert!(statuses.iter().all(|s| s.state_digest == statuses[0].state_digest), "both tiers agree");

    let a = region.partner("wallet-a");
    // Every transfer is read back from history.
    for id in &ids {
        let got = a.get_transfer(wire::GetTransferRequest { transfer_id: id.clone() }).await.unwrap();
        assert_eq!(got.transfer.unwrap().state, wire::TransferState::Committed as i32);
    }
    // The list from an instant starts at the transfer made after it, by index.
    let from = a
        .list_transfers(wire::ListTransfersRequest { created_from_unix_ms: middle_ms, ..Default::default() })
        .await
        .unwrap();
    let listed: Vec<&str> = from.transfers.iter().map(|t| t.transfer_id.as_str()).collect();
    assert_eq!(listed, ids[15..].iter().map(String::as_str).collect::<Vec<_>>());

    // The statement: the top-up and thirty payments (principal and fee),
    // running balances that add up, ending at the position's balance; read
    // in pages of 7 it is the same; the operator reads the same account.
    let request = |page_size, page_token: String| wire::GetStatementRequest {
        currency: "USD".into(),
        page_size,
        page_token,
        ..Default::default()
    };
    let whole = a.get_statement(request(500, String::new())).await.unwrap();
    assert!(whole.next_page_token.is_empty());
    assert_eq!(whole.lines.len(), 1 + 30 * 2);
    let last = check_running_balances(&whole.lines);
    let position = a.get_position(wire::GetPositionRequest::default()).await.unwrap().positions.remove(0);
    assert_eq!(last, position.posted_balance.unwrap().amount);
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = a.get_statement(request(7, token)).await.unwrap();
        paged.extend(page.lines);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, whole.lines);
    let operator = region
        .admin(|mut c| async move {
            c.get_account_statement(admin::GetAccountStatementRequest {
                account: "partner:wallet-a:USD".into(),
                page_size: 500,
                ..Default::default()
            })
            .await
        })
        .await;
    assert_eq!(operator.lines, whole.lines);
    let bad = a
        .get_statement(wire::GetStatementRequest {
            currency: "USD".into(),
            page_token: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.status().unwrap().code(), tonic::Code::InvalidArgument);
}

fn payment_request(key: &str, amount: &str, bound: Option<&str>) -> wire::CreatePaymentRequest {
    wire::CreatePaymentRequest {
        idempotency_key: key.into(),
        qr_payload: QR.into(),
        amount: Some(wire::create_payment_request::Amount::SourceAmount(money(amount, "USD"))),
        max_total_debit: bound.map(|b| money(b, "USD")),
        payer: Some(wire::PayerDetails {
            name: "Ada Traveller".into(),
            account: "acct-77".into(),
            reference: format!("ref-{key}"),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_call_payment_is_one_log_entry_within_its_bound_and_exactly_once() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    configure(&region).await;
    let a = region.partner("wallet-a");
    let index = |statuses: Vec<paymesh_proto::admin::v1::GetNodeStatusResponse>| statuses[0].applied_index.unwrap();

    // A quote then a transfer: two entries. One call: one.
    let before = index(region.wait_converged(Duration::from_secs(20)).await);
    let quote = a.create_quote(quote_request("10")).await.unwrap().quote.unwrap();
    a.create_transfer(transfer_request("two-calls", &quote.quote_id)).await.unwrap().transfer.unwrap();
    let between = index(region.wait_converged(Duration::from_secs(20)).await);
    let paid = a.create_payment(payment_request("one-call", "10", Some("10.20"))).await.unwrap();
    let after = index(region.wait_converged(Duration::from_secs(20)).await);
    assert_eq!((between - before, after - between), (2, 1), "entries for two calls, then for one");
    let transfer = paid.transfer.expect("a transfer");
    assert_eq!((transfer.state, paid.reject_code), (wire::TransferState::Committed as i32, 0));
    assert_eq!(transfer.fee.unwrap().amount, "0.20", "priced as its quote would have been");

    // Retried: the same transfer, nothing new in the log.
    let again = a.create_payment(payment_request("one-call", "10", Some("10.20"))).await.unwrap();
    assert_eq!(again.transfer.unwrap().transfer_id, transfer.transfer_id);
    // Above its bound: refused by the leader without proposing anything,
    // nothing recorded; the key is still free.
    let refused = a.create_payment(payment_request("bounded", "10", Some("10.19"))).await.unwrap();
    assert!(refused.transfer.is_none(), "{refused:?}");
    assert_eq!(refused.reject_code, wire_common::RejectCode::PriceAboveLimit as i32);
    assert_eq!(index(region.wait_converged(Duration::from_secs(20)).await), after, "the refusal proposed nothing");
    let within = a.create_payment(payment_request("bounded", "10", None)).await.unwrap();
    assert_eq!(within.transfer.unwrap().state, wire::TransferState::Committed as i32);
    let position = a.get_position(wire::GetPositionRequest::default()).await.unwrap().positions.remove(0);
    assert_eq!(position.posted_balance.unwrap().amount, "969.40", "three payments of 10.20, once each");
    let summary =
        region.admin(|mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await }).await;
    assert!(summary.balanced, "{}", summary.violation);
}

fn payment_item(key: &str, amount: &str, bound: Option<&str>) -> wire::TransferItem {
    let payment = paymesh_client::batched_payment(&payment_request(key, amount, bound));
    wire::TransferItem { kind: Some(wire::transfer_item::Kind::Payment(payment)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_item_as_its_single_call_would() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    configure(&region).await;
    let a = region.partner("wallet-a");
    // A quote under a key: asked again, the same quote.
    let keyed = wire::CreateQuoteRequest { idempotency_key: "b-quote".into(), ..quote_request("10") };
    let quote = a.create_quote(keyed.clone()).await.unwrap().quote.unwrap();
    assert_eq!(a.create_quote(keyed).await.unwrap().quote.unwrap().quote_id, quote.quote_id);
    let transfer_item = |key: &str, quote_id: &str| wire::TransferItem {
        kind: Some(wire::transfer_item::Kind::Transfer(paymesh_client::batched_transfer(&transfer_request(
            key, quote_id,
        )))),
    };
    let items = vec![
        payment_item("b-1", "10", None),
        // The same key and body: the same payment, answered twice.
        payment_item("b-1", "10", None),
        // The same key with another body: refused as its single call is.
        payment_item("b-1", "11", None),
        transfer_item("b-2", &quote.quote_id),
        transfer_item("b-3", "us-west:q999999"),
        payment_item("", "10", None),
        wire::TransferItem { kind: None },
        payment_item("b-4", "10", Some("10.19")),
        payment_item("b-5", "5", None),
        // A transfer's key again in the same request: joined to the first,
        // answered with its outcome.
        transfer_item("b-2", &quote.quote_id),
    ];
    let results = a.create_transfers(wire::CreateTransfersRequest { items }).await.unwrap().results;
    assert_eq!(results.len(), 10);
    let code = |i: usize| tonic::Code::from_i32(results[i].status_code);
    let id = |i: usize| results[i].transfer.as_ref().map(|t| t.transfer_id.clone());
    assert_eq!((code(0), results[0].reject_code), (tonic::Code::Ok, 0), "{:?}", results[0]);
    assert_eq!(results[0].transfer.as_ref().unwrap().state, wire::TransferState::Committed as i32);
    assert_eq!(id(1), id(0), "one key, one payment");
    assert_eq!(code(2), tonic::Code::AlreadyExists, "{:?}", results[2]);
    assert!(results[2].status_message.contains("IdempotencyConflict"), "{:?}", results[2]);
    assert_eq!((code(3), results[3].transfer.as_ref().unwrap().quote_id.as_str()), (tonic::Code::Ok, &*quote.quote_id));
    assert_eq!(code(4), tonic::Code::NotFound, "{:?}", results[4]);
    assert!(results[4].status_message.starts_with("QuoteNotFound"), "{:?}", results[4]);
    assert_eq!(code(5), tonic::Code::InvalidArgument, "{:?}", results[5]);
    assert!(results[5].status_message.contains("idempotency_key"), "{:?}", results[5]);
    assert_eq!(code(6), tonic::Code::InvalidArgument, "{:?}", results[6]);
    assert!(results[6].status_message.contains("kind"), "{:?}", results[6]);
    assert_eq!((code(7), results[7].reject_code), (tonic::Code::Ok, wire_common::RejectCode::PriceAboveLimit as i32));
    assert!(results[7].transfer.is_none());
    assert_eq!(code(8), tonic::Code::Ok, "{:?}", results[8]);
    assert!(id(8).is_some() && id(8) != id(0) && id(8) != id(3));
    assert_eq!((code(9), id(9)), (tonic::Code::Ok, id(3)), "{:?}", results[9]);

    // Exactly three payments moved money: 10.20 + 10.20 + 5.15.
    let position = a.get_position(wire::GetPositionRequest::default()).await.unwrap().positions.remove(0);
    assert_eq!(position.posted_balance.unwrap().amount, "974.45");
    // The request's size is bounded: none, or more than the limit, is refused whole.
    for n in [0, paymesh_client::ITEMS_PER_REQUEST_MAX + 1] {
        let items = (0..n).map(|i| payment_item(&format!("many-{i}"), "1", None)).collect();
        let refused = a.create_transfers(wire::CreateTransfersRequest { items }).await.unwrap_err();
        let status = refused.status().unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{n} items: {status:?}");
        assert!(status.message().contains("items"), "{status:?}");
    }
    let position = a.get_position(wire::GetPositionRequest::default()).await.unwrap().positions.remove(0);
    assert_eq!(position.posted_balance.unwrap().amount, "974.45", "the refused requests changed nothing");
    let summary =
        region.admin(|mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await }).await;
    assert!(summary.balanced, "{}", summary.violation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_payments_across_a_leader_kill_are_each_made_once() {
    let mut region = Region::start(3, "");
    region.initialize(1).await;
    configure(&region).await;
    // The SDK batches these concurrent calls by itself; they are spread
    // over about two seconds, and the leader is killed a third of the way in.
    let a = std::sync::Arc::new(region.partner("wallet-a"));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    const PAYMENTS: u64 = 60;
    let calls: Vec<_> = (0..PAYMENTS)
        .map(|k| {
            let (a, answered) = (a.clone(), answered.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30 * k)).await;
                let paid = a.create_payment(payment_request(&format!("kill-{k}"), "1", None)).await;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                paid
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let killed = kill_leader(&mut region).await;
    let before_kill = answered.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..PAYMENTS).contains(&before_kill), "the kill came mid-way: {before_kill} answered before it");
    let mut ids = std::collections::BTreeSet::new();
    for call in calls {
        let paid = call.await.unwrap().unwrap();
        let transfer = paid.transfer.unwrap();
        assert_eq!((transfer.state, paid.reject_code), (wire::TransferState::Committed as i32, 0));
        ids.insert(transfer.transfer_id);
    }
    assert_eq!(ids.len() as u64, PAYMENTS, "one transfer per key");

    // Asked again, in one request of a fresh client: the same transfers.
    let again = region.partner("wallet-a");
    let items = (0..PAYMENTS).map(|k| payment_item(&format!("kill-{k}"), "1", None)).collect();
    let results = again.create_transfers(wire::CreateTransfersRequest { items }).await.unwrap().results;
    let same: std::collections::BTreeSet<String> = results
        .into_iter()
        .map(|r| r.transfer.clone().unwrap_or_else(|| panic!("not recorded: {r:?}")).transfer_id)
        .collect();
    assert_eq!(same, ids);
    let position = again.get_position(wire::GetPositionRequest::default()).await.unwrap().positions.remove(0);
    assert_eq!(position.posted_balance.unwrap().amount, "933.40", "60 debits of 1.11, once each");

    region.spawn(killed);
    region.wait_converged(Duration::from_secs(30)).await;
    let summary =
        region.admin(|mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await }).await;
    assert!(summary.balanced, "{}", summary.violation);
}
