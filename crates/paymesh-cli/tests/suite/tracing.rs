//! One cross-border transfer is one trace: the nodes of two regions export
//! their spans to an OTLP collector (one of our own, in this test), and the
//! payer region's `create_transfer` and `prepare.replied`, and the payee
//! region's `prepare.apply` and `decide.apply`, all carry the same trace id.
//! The SDK's batching shows in the same spans: concurrent payments of one
//! client arrive as fewer `create_transfers` requests, each item its own
//! `create_payment` span.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use paymesh_cli::steps::attribute_text;
use paymesh_harness::mesh::LocalMesh;
use paymesh_harness::wan::WanSettings;
use paymesh_harness::world;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;
use tonic::{Request, Response, Status};

/// A span as the collector received it.
#[derive(Clone, Debug)]
struct Received {
    region: String,
    name: String,
    trace_id: Vec<u8>,
    transfer: String,
    /// A `create_transfers` span's item count.
    items: Option<i64>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let region = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attribute_text(&r.attributes, "paymesh.region"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        region: region.clone(),
                        name: span.name.clone(),
                        trace_id: span.trace_id.clone(),
                        transfer: attribute_text(&span.attributes, "transfer").unwrap_or_default(),
                        items: span.attributes.iter().find(|kv| kv.key == "items").and_then(|kv| {
                            match kv.value.as_ref()?.value.as_ref()? {
                                opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(n) => Some(*n),
                                // An unsigned count arrives as text.
                                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(n) => {
                                    n.parse().ok()
                                }
                                _ => None,
                            }
                        }),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_border_transfer_is_one_trace_across_regions() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let _server = tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_paymesh"));
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let raft = "heartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600";
    let wan = WanSettings { delay_ms: 5, ..WanSettings::default() };
    let mut mesh = LocalMesh::start(dir.path(), exe, &world::regions(), 3, raft, wan, &env).await.unwrap();
    world::configure(&mesh).await.unwrap();

    let wallet = mesh.region("us-west").unwrap().partner("paypal-us").unwrap();
    let quote = wallet
        .create_quote(wire::CreateQuoteRequest {
            qr_payload: "wxp://trace/1".into(),
            amount: Some(wire::create_quote_request::Amount::SourceAmount(common::Money {
                amount: "12.34".into(),
                currency: "USD".into(),
            })),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .quote
        .unwrap();
    let transfer = wallet
        .create_transfer(wire::CreateTransferRequest {
            idempotency_key: "traced-1".into(),
            quote_id: quote.quote_id,
            qr_payload: "wxp://trace/1".into(),
            payer: Some(wire::PayerDetails { name: "A".into(), account: "B".into(), reference: "C".into() }),
        })
        .await
        .unwrap()
        .transfer
        .unwrap();
    let id = transfer.transfer_id;

    let wanted = [
        ("us-west", "create_transfer"),
        ("us-west", "prepare.send"),
        ("cn-east", "prepare.apply"),
        ("us-west", "prepare.replied"),
        ("us-west", "decide.send"),
        ("cn-east", "decide.apply"),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let found: BTreeMap<(&str, &str), Vec<u8>> = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let found: BTreeMap<(&str, &str), Vec<u8>> = wanted
            .iter()
            .filter_map(|(region, name)| {
                let span = spans.iter().find(|s| s.region == *region && s.name == *name && s.transfer == id)?;
                Some(((*region, *name), span.trace_id.clone()))
            })
            .collect();
        if found.len() == wanted.len() {
            break found;
        }
        let names: Vec<String> = spans.iter().map(|s| format!("{}/{}/{}", s.region, s.name, s.transfer)).collect();
        assert!(Instant::now() < deadline, "spans of {id} missing; have {found:?}; received {names:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let trace_ids: std::collections::BTreeSet<&Vec<u8>> = found.values().collect();
    assert_eq!(trace_ids.len(), 1, "one trace for the whole transfer: {found:?}");
    assert_eq!(trace_ids.first().unwrap().len(), 16);

    // The SDK gathers the calls it has in flight: 40 concurrent payments
    // through a client that keeps one request out at a time travel in
    // fewer requests than payments, and every payment in one of them.
    let region = mesh.region("us-west").unwrap();
    let batching = paymesh_client::Batching { requests_in_flight: 1, items_per_request: 500 };
    let gathering =
        Arc::new(paymesh_client::PartnerClient::batched(region.sdk("partner-paypal-us").unwrap(), batching));
    let calls: Vec<_> = (0..40)
        .map(|n| {
            let client = gathering.clone();
            tokio::spawn(async move {
                let payment = wire::CreatePaymentRequest {
                    idempotency_key: format!("gathered-{n}"),
                    qr_payload: "wxp://trace/1".into(),
                    amount: Some(wire::create_payment_request::Amount::SourceAmount(common::Money {
                        amount: "1.00".into(),
                        currency: "USD".into(),
                    })),
                    max_total_debit: None,
                    payer: Some(wire::PayerDetails { name: "A".into(), account: "B".into(), reference: "C".into() }),
                };
                client.create_payment(payment).await.unwrap().transfer.unwrap().transfer_id
            })
        })
        .collect();
    let mut paid = std::collections::BTreeSet::new();
    for call in calls {
        paid.insert(call.await.unwrap());
    }
    assert_eq!(paid.len(), 40);
    let deadline = Instant::now() + Duration::from_secs(30);
    let requests = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let batches: Vec<i64> = spans.iter().filter(|s| s.name == "create_transfers").filter_map(|s| s.items).collect();
        let items: Vec<&Received> = spans.iter().filter(|s| s.name == "create_payment").collect();
        if items.iter().filter(|s| paid.contains(&s.transfer)).count() == 40 {
            break batches;
        }
        assert!(Instant::now() < deadline, "spans of the 40 payments missing: {batches:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The first traced transfer was a batch of one; the 40 were gathered.
    let gathered: i64 = requests.iter().sum::<i64>() - 1;
    assert_eq!(gathered, 40, "every payment in one request: {requests:?}");
    assert!(requests.len() - 1 < 40, "40 payments in {} requests: {requests:?}", requests.len() - 1);
    mesh.stop().unwrap();
}
