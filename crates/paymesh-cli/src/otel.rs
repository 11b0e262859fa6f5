//! Logging and, when an endpoint is configured, trace export for
//! `paymesh start`.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info,openraft=warn`).
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` names an OTLP/gRPC collector (for
//! example `http://127.0.0.1:4317`), the node's spans (see
//! `paymesh_node::telemetry`) are exported to it in batches, as service
//! `paymesh` with the resource attributes `paymesh.region` and
//! `paymesh.node`. Without it nothing is exported and nothing is needed.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable naming the OTLP collector.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Install the subscriber; the trace provider when exporting (shut it down
/// before exiting so the last spans are sent). Call inside the tokio runtime.
pub(crate) fn init(region: &str, node_id: u64) -> anyhow::Result<Option<SdkTracerProvider>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let fmt = tracing_subscriber::fmt::layer();
    let Some(endpoint) = std::env::var(ENDPOINT_VAR).ok().filter(|e| !e.is_empty()) else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .with_context(|| format!("{ENDPOINT_VAR}={endpoint}"))?;
    let resource = Resource::builder()
        .with_service_name("paymesh")
        .with_attributes([
            KeyValue::new("paymesh.region", region.to_owned()),
            KeyValue::new("paymesh.node", i64::try_from(node_id).unwrap_or(i64::MAX)),
        ])
        .build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("paymesh"));
    tracing_subscriber::registry().with(filter).with(fmt).with(layer).init();
    tracing::info!(%endpoint, "exporting traces");
    Ok(Some(provider))
}
