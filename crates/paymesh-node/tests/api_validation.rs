//! Bad input gets a clear answer and changes nothing: every field of the
//! partner and admin APIs is validated with a specific INVALID_ARGUMENT
//! message, unknown things are NOT_FOUND, suspended ones FAILED_PRECONDITION,
//! the wrong caller UNAUTHENTICATED or PERMISSION_DENIED, and business
//! outcomes (insufficient position, expired quote) are reject codes.
//!
//! The services run in process over a single-node region (development
//! identities in the `x-paymesh-identity` header), so each case calls the
//! handler directly.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use paymesh_core::command::CommandBody;
use paymesh_core::history::Record;
use paymesh_core::id::RegionId;
use paymesh_core::partner::BusinessStatus;
use paymesh_core::Outcome;
use paymesh_node::admin_service::AdminServer;
use paymesh_node::config::{NodeConfig, PeerConfig, RaftSettings};
use paymesh_node::partner_service::PartnerServer;
use paymesh_node::Node;
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::admin::v1::admin_service_server::AdminService;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;
use paymesh_proto::partner::v1::partner_service_server::PartnerService;
use tonic::{Code, Request};

const QR: &str = "pay://merchant/m-1";

fn money(amount: &str, currency: &str) -> Option<common::Money> {
    Some(common::Money { amount: amount.into(), currency: currency.into() })
}

fn as_<T>(identity: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if !identity.is_empty() {
        request.metadata_mut().insert("x-paymesh-identity", identity.parse().unwrap());
    }
    request
}

fn partner_request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-paymesh-identity", "partner:wallet-a".parse().unwrap());
    request
}

fn operator_request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-paymesh-identity", "operator:ops".parse().unwrap());
    request
}

fn corridor(to: &str) -> Option<common::CorridorId> {
    Some(common::CorridorId {
        source_currency: "USD".into(),
        source_region: "sim".into(),
        destination_currency: to.into(),
        destination_region: "sim".into(),
    })
}

struct Fixture {
    partner: PartnerServer,
    admin: AdminServer,
    node: Node,
    _dir: tempfile::TempDir,
    _pipeline: paymesh_node::node::Pipeline,
}

/// Set a USD→EUR rate valid from a second ago until `valid_for_ms` from now
/// (which bounds the life of quotes priced with it); the time it was set and
/// a quote request on that corridor.
async fn short_lived_euro_rate(f: &Fixture, valid_for_ms: i64) -> (i64, wire::CreateQuoteRequest) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let rate = admin::SetFxRateRequest {
        corridor: corridor("EUR"),
        mid_rate: "0.9".into(),
        valid_from_unix_ms: now - 1_000,
        valid_until_unix_ms: now + valid_for_ms,
    };
    assert_eq!(f.admin.set_fx_rate(operator_request(rate)).await.unwrap().into_inner().reject_code, 0);
    let euro = wire::CreateQuoteRequest {
        qr_payload: "pay://euro/shop".into(),
        amount: Some(wire::create_quote_request::Amount::SourceAmount(common::Money {
            amount: "5".into(),
            currency: "USD".into(),
        })),
        idempotency_key: String::new(),
    };
    (now, euro)
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        node_id: 1,
        region: RegionId::new("sim").unwrap(),
        raft_listen: "127.0.0.1:0".parse().unwrap(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("node"),
        insecure_plaintext: true,
        insecure_plaintext_beyond_loopback: false,
        tls: None,
        peers: vec![PeerConfig { node_id: 1, raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into() }],
        interregion_listen: None,
        remote_regions: Vec::new(),
        raft_dial: Default::default(),
        source: None,
        limits: Default::default(),
        history: Default::default(),
        webhooks: Default::default(),
        metrics: Default::default(),
        console: Default::default(),
        raft: RaftSettings::default(),
    };
    let node = Node::open(config).await.unwrap();
    node.raft.initialize(std::collections::BTreeMap::from([(1, Default::default())])).await.unwrap();
    node.raft.wait(Some(Duration::from_secs(10))).state(openraft::ServerState::Leader, "leads").await.unwrap();
    let pipeline = node.start_pipeline().unwrap();
    let gateway = pipeline.gateway.clone();
    let fixture = Fixture {
        partner: PartnerServer::new(gateway.clone()),
        admin: AdminServer::new(gateway),
        node,
        _dir: dir,
        _pipeline: pipeline,
    };
    // The actors start when the registry hears of the leadership; until then
    // the region answers UNAVAILABLE.
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match fixture
                .admin
                .set_partner_status(operator_request(admin::SetPartnerStatusRequest {
                    partner_id: "nobody".into(),
                    status: admin::PartnerStatus::Active as i32,
                }))
                .await
            {
                Err(status) if status.code() == Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => break,
            }
        }
    });
    ready.await.expect("the pipeline starts within 10 s");
    fixture.configure().await;
    fixture
}

impl Fixture {
    async fn configure(&self) {
        let partners =
            [("wallet-a", 1, "USD"), ("wallet-poor", 1, "USD"), ("merchant-net", 2, "USD"), ("merchant-eu", 2, "EUR")];
        for (id, role, currency) in partners {
            let request = admin::UpsertPartnerRequest {
                partner_id: id.into(),
                home_region: "sim".into(),
                role,
                settlement_currency: currency.into(),
                net_debit_cap: money("0", currency),
            };
            assert_eq!(self.admin.upsert_partner(operator_request(request)).await.unwrap().into_inner().reject_code, 0);
        }
        let top_up = admin::TopUpPositionRequest {
            partner_id: "wallet-a".into(),
            amount: money("100", "USD"),
            reference: "w1".into(),
        };
        self.admin.top_up_position(operator_request(top_up)).await.unwrap();
        let fee = Some(admin::FeeSchedule {
            fixed: money("0", "USD"),
            rate_bps: 0,
            min: money("0", "USD"),
            max: money("0", "USD"),
        });
        for to in ["USD", "EUR"] {
            let request = admin::UpsertCorridorRequest {
                corridor: corridor(to),
                spread_bps: 0,
                fee: fee.clone(),
                min_amount: money("0.01", "USD"),
                max_amount: money("1000", "USD"),
                daily_cap: money("100000", "USD"),
            };
            assert_eq!(
                self.admin.upsert_corridor(operator_request(request)).await.unwrap().into_inner().reject_code,
                0
            );
        }
        for (prefix, payee, currency) in
            [("pay://merchant/", "merchant-net", "USD"), ("pay://euro/", "merchant-eu", "EUR")]
        {
            let request = admin::UpsertPayeeRouteRequest {
                qr_prefix: prefix.into(),
                payee_partner_id: payee.into(),
                region: "sim".into(),
                currency: currency.into(),
            };
            assert_eq!(
                self.admin.upsert_payee_route(operator_request(request)).await.unwrap().into_inner().reject_code,
                0
            );
        }
    }

    /// Everything a request could have changed: partners, corridors, routes,
    /// transfers, the ledger and every partner's event stream. (The region's
    /// clock is left out: every committed command advances it, refused ones
    /// included.)
    fn business(&self) -> String {
        let applied = self.node.state_machine.applied();
        let state = &applied.state;
        let partners: Vec<_> = state.partners().map(|p| (p, state.last_cursor(&p.config.id))).collect();
        let corridors: Vec<_> = state.corridors().collect();
        let transfers: Vec<_> = state.transfers().collect();
        format!("{partners:?}\n{corridors:?}\n{:?}\n{transfers:?}\n{:?}", state.directory(), state.ledger())
    }
}

fn quote(amount: &str) -> wire::CreateQuoteRequest {
    wire::CreateQuoteRequest {
        qr_payload: QR.into(),
        amount: Some(wire::create_quote_request::Amount::SourceAmount(common::Money {
            amount: amount.into(),
            currency: "USD".into(),
        })),
        idempotency_key: String::new(),
    }
}

fn transfer(key: &str, quote_id: &str) -> wire::CreateTransferRequest {
    wire::CreateTransferRequest {
        idempotency_key: key.into(),
        quote_id: quote_id.into(),
        qr_payload: QR.into(),
        payer: Some(wire::PayerDetails { name: "Ada".into(), account: "acct".into(), reference: "ref".into() }),
    }
}

/// Assert a refusal's code and that its message contains `expected`.
fn refused<T>(result: Result<tonic::Response<T>, tonic::Status>, code: Code, expected: &str) {
    let Err(status) = result else { panic!("must be refused with {code:?} {expected:?}") };
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(expected), "expected {expected:?} in {:?}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partner_field_is_validated_and_bad_input_changes_nothing() {
    let f = fixture().await;
    let before = f.business();
    let p = &f.partner;
    let long = |n: usize| "x".repeat(n);
    let bad_amount = |amount: &str, currency: &str| wire::CreateQuoteRequest {
        qr_payload: QR.into(),
        amount: Some(wire::create_quote_request::Amount::SourceAmount(common::Money {
            amount: amount.into(),
            currency: currency.into(),
        })),
        idempotency_key: String::new(),
    };
    let invalid = Code::InvalidArgument;

    // LookupPayee and CreateQuote.
    refused(
        p.lookup_payee(partner_request(wire::LookupPayeeRequest { qr_payload: String::new() })).await,
        invalid,
        "qr_payload: QR payload is empty",
    );
    refused(
        p.lookup_payee(partner_request(wire::LookupPayeeRequest { qr_payload: long(513) })).await,
        invalid,
        "qr_payload: QR payload is longer than 512",
    );
    refused(
        p.lookup_payee(partner_request(wire::LookupPayeeRequest { qr_payload: "pay:// x".into() })).await,
        invalid,
        "qr_payload: QR payload contains ' '",
    );
    refused(
        p.create_quote(partner_request(wire::CreateQuoteRequest {
            qr_payload: QR.into(),
            amount: None,
            idempotency_key: String::new(),
        }))
        .await,
        invalid,
        "amount: set source_amount or destination_amount",
    );
    refused(
        p.create_quote(partner_request(bad_amount("1.005", "USD"))).await,
        invalid,
        "source_amount: USD allows at most 2 fractional digits",
    );
    refused(
        p.create_quote(partner_request(bad_amount("-1", "USD"))).await,
        invalid,
        "source_amount: amount is negative",
    );
    refused(
        p.create_quote(partner_request(bad_amount("1e3", "USD"))).await,
        invalid,
        "source_amount: amount uses an exponent",
    );
    refused(p.create_quote(partner_request(bad_amount("", "USD"))).await, invalid, "source_amount: amount is empty");
    refused(
        p.create_quote(partner_request(bad_amount(" 1", "USD"))).await,
        invalid,
        "source_amount: amount contains whitespace",
    );
    refused(
        p.create_quote(partner_request(bad_amount("1", "usd"))).await,
        invalid,
        "source_amount: currency code \"usd\"",
    );
    refused(p.create_quote(partner_request(bad_amount("1", "XYZ"))).await, invalid, "not a supported ISO 4217");

    // CreateTransfer.
    let t = |edit: &dyn Fn(&mut wire::CreateTransferRequest)| {
        let mut request = transfer("k-1", "sim:q1");
        edit(&mut request);
        partner_request(request)
    };
    refused(
        p.create_transfer(t(&|r| r.idempotency_key.clear())).await,
        invalid,
        "idempotency_key: idempotency key is empty",
    );
    refused(
        p.create_transfer(t(&|r| r.idempotency_key = long(129))).await,
        invalid,
        "idempotency_key: idempotency key is longer than 128",
    );
    refused(
        p.create_transfer(t(&|r| r.idempotency_key = "a b".into())).await,
        invalid,
        "idempotency_key: idempotency key contains ' '",
    );
    refused(
        p.create_transfer(t(&|r| r.quote_id = "q1".into())).await,
        invalid,
        "quote_id: quote id \"q1\" is not of the form",
    );
    refused(p.create_transfer(t(&|r| r.qr_payload.clear())).await, invalid, "qr_payload: QR payload is empty");
    refused(p.create_transfer(t(&|r| r.payer = None)).await, invalid, "payer: is required");
    refused(
        p.create_transfer(t(&|r| r.payer.as_mut().unwrap().name.clear())).await,
        invalid,
        "payer.name: payer field is empty",
    );
    refused(
        p.create_transfer(t(&|r| r.payer.as_mut().unwrap().account = "a\u{7}b".into())).await,
        invalid,
        "payer.account: payer field contains",
    );
    refused(
        p.create_transfer(t(&|r| r.payer.as_mut().unwrap().reference = long(257))).await,
        invalid,
        "payer.reference: payer field is longer than 256",
    );

    // Reads.
    refused(
        p.get_transfer(partner_request(wire::GetTransferRequest { transfer_id: "42".into() })).await,
        invalid,
        "transfer_id: transfer id \"42\"",
    );
    refused(
        p.get_transfer(partner_request(wire::GetTransferRequest { transfer_id: "sim:abc".into() })).await,
        invalid,
        "transfer_id:",
    );
    let list = |edit: &dyn Fn(&mut wire::ListTransfersRequest)| {
        let mut request = wire::ListTransfersRequest::default();
        edit(&mut request);
        partner_request(request)
    };
    refused(p.list_transfers(list(&|r| r.state = 99)).await, invalid, "state: 99 is not a transfer state");
    refused(
        p.list_transfers(list(&|r| r.created_from_unix_ms = -1)).await,
        invalid,
        "created_from_unix_ms: must not be negative",
    );
    refused(
        p.list_transfers(list(&|r| {
            r.created_from_unix_ms = 10;
            r.created_to_unix_ms = 5;
        }))
        .await,
        invalid,
        "created_to_unix_ms: must be after",
    );
    refused(
        p.list_transfers(list(&|r| r.page_token = "garbage".into())).await,
        invalid,
        "page_token: not a token this service issued",
    );
    refused(
        p.get_position(partner_request(wire::GetPositionRequest { currency: "usd".into() })).await,
        invalid,
        "currency: currency code",
    );
    refused(
        p.stream_events(partner_request(wire::StreamEventsRequest { from_cursor: 5 })).await,
        Code::OutOfRange,
        "beyond the newest event",
    );

    // Who is calling.
    refused(p.get_position(as_("", wire::GetPositionRequest::default())).await, Code::Unauthenticated, "");
    refused(
        p.get_position(as_("operator:ops", wire::GetPositionRequest::default())).await,
        Code::PermissionDenied,
        "may not call the partner API",
    );
    refused(
        p.get_position(as_("partner:nobody", wire::GetPositionRequest::default())).await,
        Code::NotFound,
        "PartnerNotFound",
    );

    // Unknown things.
    refused(
        p.get_transfer(partner_request(wire::GetTransferRequest { transfer_id: "sim:999".into() })).await,
        Code::NotFound,
        "TransferNotFound",
    );
    refused(
        p.lookup_payee(partner_request(wire::LookupPayeeRequest { qr_payload: "upi://x/y".into() })).await,
        Code::NotFound,
        "PayeeNotFound",
    );
    refused(p.create_transfer(partner_request(transfer("k-ghost", "sim:q999"))).await, Code::NotFound, "QuoteNotFound");

    assert_eq!(f.business(), before, "no bad request changed the state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_outcomes_are_codes_and_suspension_is_a_failed_precondition() {
    let f = fixture().await;
    let p = &f.partner;
    // Insufficient position: recorded as an aborted transfer with the code.
    let q = p.create_quote(as_("partner:wallet-poor", quote("10"))).await.unwrap().into_inner().quote.unwrap();
    let created =
        p.create_transfer(as_("partner:wallet-poor", transfer("poor-1", &q.quote_id))).await.unwrap().into_inner();
    assert_eq!(created.reject_code, common::RejectCode::InsufficientPosition as i32);
    assert_eq!(created.transfer.unwrap().state, wire::TransferState::Aborted as i32);
    // Amount limits are codes too.
    let below = p.create_quote(partner_request(quote("0.001"))).await;
    refused(below, Code::InvalidArgument, "USD allows at most 2");
    let above = p.create_quote(partner_request(quote("1000.01"))).await.unwrap().into_inner();
    assert_eq!(above.reject_code, common::RejectCode::AmountAboveMaximum as i32);

    // An expired quote: a rate valid for one second bounds the quote's life.
    let (_, euro) = short_lived_euro_rate(&f, 1_000).await;
    let euro = p.create_quote(partner_request(euro)).await.unwrap().into_inner();
    let q = euro.quote.clone().unwrap_or_else(|| panic!("{euro:?}"));
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let mut late = transfer("late-1", &q.quote_id);
    late.qr_payload = "pay://euro/shop".into();
    let expired = p.create_transfer(partner_request(late)).await.unwrap().into_inner();
    assert_eq!(expired.reject_code, common::RejectCode::QuoteExpired as i32);
    assert!(expired.transfer.is_none());

    // Suspension: FAILED_PRECONDITION for new business and for reads.
    let suspend = admin::SetPartnerStatusRequest {
        partner_id: "wallet-a".into(),
        status: admin::PartnerStatus::Suspended as i32,
    };
    f.admin.set_partner_status(operator_request(suspend)).await.unwrap();
    // The audit trail in history: who (the operator's certificate name),
    // when, what, and what it did.
    let history = f.node.state_machine.history();
    let audited: Vec<_> = history
        .journal_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|(_, records)| records)
        .filter_map(|record| match record {
            Record::Audited { operator, command, outcome, .. } => Some((operator.to_string(), *command, *outcome)),
            _ => None,
        })
        .collect();
    assert!(audited.iter().all(|(who, _, _)| who == "ops"), "{audited:?}");
    let suspended = audited.last().unwrap();
    assert!(
        matches!(&suspended.1, CommandBody::SetPartnerStatus { partner, status: BusinessStatus::Suspended } if partner.as_str() == "wallet-a"),
        "{suspended:?}"
    );
    assert_eq!(suspended.2, Outcome::Done);
    assert!(audited.len() >= 8, "the fixture's partners, corridors and routes too: {audited:?}");
    refused(p.create_quote(partner_request(quote("5"))).await, Code::FailedPrecondition, "PartnerSuspended");
    refused(
        p.get_position(partner_request(wire::GetPositionRequest::default())).await,
        Code::FailedPrecondition,
        "PartnerSuspended",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_field_is_validated() {
    let f = fixture().await;
    let before = f.business();
    let a = &f.admin;
    let invalid = Code::InvalidArgument;
    let partner = |edit: &dyn Fn(&mut admin::UpsertPartnerRequest)| {
        let mut request = admin::UpsertPartnerRequest {
            partner_id: "new-one".into(),
            home_region: "sim".into(),
            role: 1,
            settlement_currency: "USD".into(),
            net_debit_cap: money("0", "USD"),
        };
        edit(&mut request);
        operator_request(request)
    };
    refused(
        a.upsert_partner(partner(&|r| r.partner_id = "New One".into())).await,
        invalid,
        "partner_id: partner id contains 'N'",
    );
    refused(
        a.upsert_partner(partner(&|r| r.home_region = "-x".into())).await,
        invalid,
        "home_region: region id must not start or end",
    );
    refused(a.upsert_partner(partner(&|r| r.role = 0)).await, invalid, "role: must be PAYER, PAYEE or BOTH");
    refused(
        a.upsert_partner(partner(&|r| r.settlement_currency = "ZZZ".into())).await,
        invalid,
        "settlement_currency:",
    );
    refused(a.upsert_partner(partner(&|r| r.net_debit_cap = None)).await, invalid, "net_debit_cap: is required");
    let foreign = a.upsert_partner(partner(&|r| r.home_region = "elsewhere".into())).await.unwrap().into_inner();
    assert_eq!(foreign.reject_code, common::RejectCode::PartnerNotInRegion as i32, "{foreign:?}");
    let status = admin::SetPartnerStatusRequest { partner_id: "wallet-a".into(), status: 0 };
    refused(a.set_partner_status(operator_request(status)).await, invalid, "status: must be ACTIVE or SUSPENDED");
    let unknown = admin::SetPartnerStatusRequest { partner_id: "ghost".into(), status: 2 };
    refused(a.set_partner_status(operator_request(unknown)).await, Code::NotFound, "PartnerNotFound");
    let fee = |min: &str, max: &str| {
        Some(admin::FeeSchedule {
            fixed: money("0", "USD"),
            rate_bps: 0,
            min: money(min, "USD"),
            max: money(max, "USD"),
        })
    };
    let corridor_request = |edit: &dyn Fn(&mut admin::UpsertCorridorRequest)| {
        let mut request = admin::UpsertCorridorRequest {
            corridor: corridor("USD"),
            spread_bps: 0,
            fee: fee("0", "0"),
            min_amount: money("1", "USD"),
            max_amount: money("10", "USD"),
            daily_cap: money("100", "USD"),
        };
        edit(&mut request);
        operator_request(request)
    };
    refused(a.upsert_corridor(corridor_request(&|r| r.corridor = None)).await, invalid, "corridor: is required");
    refused(
        a.upsert_corridor(corridor_request(&|r| r.spread_bps = 2_001)).await,
        invalid,
        "spread_bps: 2001 basis points is above the limit",
    );
    refused(
        a.upsert_corridor(corridor_request(&|r| r.fee = fee("2", "1"))).await,
        invalid,
        "fee: fee schedule is inconsistent: minimum above maximum",
    );
    refused(
        a.upsert_corridor(corridor_request(&|r| r.min_amount = money("11", "USD"))).await,
        invalid,
        "corridor terms:",
    );
    refused(
        a.upsert_corridor(corridor_request(&|r| r.daily_cap = money("1", "EUR"))).await,
        invalid,
        "corridor terms: corridor amounts and fees must be in the source currency",
    );
    let rate = |edit: &dyn Fn(&mut admin::SetFxRateRequest)| {
        let mut request = admin::SetFxRateRequest {
            corridor: corridor("EUR"),
            mid_rate: "0.9".into(),
            valid_from_unix_ms: 1_000,
            valid_until_unix_ms: 2_000,
        };
        edit(&mut request);
        operator_request(request)
    };
    refused(
        a.set_fx_rate(rate(&|r| r.mid_rate = "0".into())).await,
        invalid,
        "mid_rate: rate must be greater than zero",
    );
    refused(
        a.set_fx_rate(rate(&|r| r.mid_rate = "0.1234567890123".into())).await,
        invalid,
        "mid_rate: rate has more than 12 fractional digits",
    );
    refused(a.set_fx_rate(rate(&|r| r.valid_until_unix_ms = 500)).await, invalid, "rate: rate validity window");
    refused(
        a.set_fx_rate(rate(&|r| r.valid_from_unix_ms = -5)).await,
        invalid,
        "valid_from_unix_ms: must not be negative",
    );
    let top_up = admin::TopUpPositionRequest {
        partner_id: "wallet-a".into(),
        amount: money("1", "USD"),
        reference: "has space".into(),
    };
    refused(a.top_up_position(operator_request(top_up)).await, invalid, "reference: top-up reference contains ' '");
    let route = admin::UpsertPayeeRouteRequest {
        qr_prefix: "ab".into(),
        payee_partner_id: "merchant-net".into(),
        region: "sim".into(),
        currency: "USD".into(),
    };
    refused(a.upsert_payee_route(operator_request(route)).await, invalid, "qr_prefix: QR prefix");
    refused(
        a.get_ledger_summary(as_("partner:wallet-a", admin::GetLedgerSummaryRequest {})).await,
        Code::PermissionDenied,
        "may not call the admin API",
    );
    let webhook = |partner: &str, url: &str, secret: &str| {
        operator_request(admin::SetWebhookRequest {
            partner_id: partner.into(),
            url: url.into(),
            secret: secret.into(),
        })
    };
    let secret = "0123456789abcdef0123456789abcdef";
    for (url, why) in [
        ("", "url: webhook url is empty"),
        ("ftp://hooks.example/x", "url: webhook url"),
        ("https://hooks example/x", "url: webhook url contains ' '"),
    ] {
        refused(a.set_webhook(webhook("wallet-a", url, secret)).await, invalid, why);
    }
    refused(
        a.set_webhook(webhook("wallet-a", "https://hooks.example/x", "short")).await,
        invalid,
        "secret: webhook secret",
    );
    refused(
        a.set_webhook(webhook("wallet-a", "https://hooks.example/x", &format!("{secret} {secret}"))).await,
        invalid,
        "secret: webhook secret contains",
    );
    refused(
        a.set_webhook(webhook("ghost", "https://hooks.example/x", secret)).await,
        Code::NotFound,
        "PartnerNotFound",
    );
    let remove = admin::RemoveWebhookRequest { partner_id: "wallet-a".into() };
    refused(a.remove_webhook(operator_request(remove)).await, Code::NotFound, "WebhookNotFound");
    let replay = admin::ReplayWebhookRequest { partner_id: "wallet-a".into(), after_cursor: 0 };
    refused(a.replay_webhook(operator_request(replay)).await, Code::NotFound, "WebhookNotFound");
    let listed = a.list_webhooks(operator_request(admin::ListWebhooksRequest {})).await.unwrap().into_inner();
    assert!(listed.webhooks.is_empty(), "{listed:?}");
    assert_eq!(f.business(), before, "no bad admin request changed the state");
}

/// Nobody sends `Tick`: the leader proposes it when the applied state has
/// housekeeping due. An expired quote is remembered for the grace period and
/// then forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_ticks_and_expired_quotes_are_forgotten() {
    use paymesh_core::limits::QUOTE_RETENTION_AFTER_EXPIRY_MS;

    let f = fixture().await;
    let (now, euro) = short_lived_euro_rate(&f, 500).await;
    let quote = f.partner.create_quote(partner_request(euro)).await.unwrap().into_inner().quote.unwrap();
    let id = paymesh_core::id::QuoteId::parse(&quote.quote_id).unwrap();
    let expires = Duration::from_millis(u64::try_from(quote.expires_unix_ms - now).unwrap());
    let started = std::time::Instant::now();
    let forgotten = tokio::time::timeout(Duration::from_secs(30), async {
        while f.node.state_machine.applied().state.quote(&id).is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(forgotten.is_ok(), "the expired quote was still remembered after 30 s");
    let grace = Duration::from_millis(QUOTE_RETENTION_AFTER_EXPIRY_MS);
    assert!(started.elapsed() >= expires + grace - Duration::from_millis(100), "forgotten too early");
}

/// Retries of one request and a different request under the same key, all at
/// once: the retries all get the one answer the state machine gives their
/// body, and the other request gets the other answer. Exactly one transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_and_a_conflicting_body_get_consistent_answers() {
    let f = fixture().await;
    for round in 0..5 {
        let quote = f.partner.create_quote(partner_request(quote("1"))).await.unwrap().into_inner().quote.unwrap();
        let key = format!("race-{round}");
        let same = transfer(&key, &quote.quote_id);
        let mut other = same.clone();
        other.payer.as_mut().unwrap().reference = "another payment".into();
        let retries = (0..20).map(|_| f.partner.create_transfer(partner_request(same.clone())));
        let (answers, conflicting) =
            tokio::join!(futures::future::join_all(retries), f.partner.create_transfer(partner_request(other)));
        let summary = |answer: &Result<tonic::Response<wire::CreateTransferResponse>, tonic::Status>| match answer {
            Ok(response) => Ok(response.get_ref().transfer.as_ref().unwrap().transfer_id.clone()),
            Err(status) => Err(status.code()),
        };
        let first = summary(&answers[0]);
        assert!(
            answers.iter().all(|a| summary(a) == first),
            "retries disagree: {:?}",
            answers.iter().map(summary).collect::<Vec<_>>()
        );
        match (first, summary(&conflicting)) {
            (Ok(_), Err(Code::AlreadyExists)) | (Err(Code::AlreadyExists), Ok(_)) => {}
            other => panic!("round {round}: {other:?}"),
        }
    }
}
