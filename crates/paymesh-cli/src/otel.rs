//! Logging and, when an endpoint is configured, trace export for
//! `paymesh start`.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info,openraft=warn`),
//! in colour only when stderr is a terminal.
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` names an OTLP/gRPC collector (for
//! example `http://127.0.0.1:4317`), the node's spans (see
//! `paymesh_node::telemetry`) are exported to it in batches, as service
//! `paymesh` with the resource attributes `paymesh.region` and
//! `paymesh.node`. Without it nothing is exported and nothing is needed.
//!
//! `--log-format json` writes one JSON object per line instead of text: the
//! event's fields, its target, level and time, and the fields of the spans
//! it happened in (`partner`, `transfer`, `trace_id`). Spans then carry
//! trace ids even without a collector (an OpenTelemetry layer with no
//! exporter gives them ids), so a log line finds its trace.

use std::io::IsTerminal as _;

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

/// How `paymesh start` writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The log's layer, in `format`.
fn log_layer<S>(format: LogFormat) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    match format {
        // Colours only on a terminal: a log file or a collector gets plain
        // text (and the formatting costs less).
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
}

/// What is logged and traced: `RUST_LOG`, by default `info,openraft=warn`.
fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"))
}

/// Install the subscriber; the trace provider when exporting (shut it down
/// before exiting so the last spans are sent). Call inside the tokio runtime.
pub(crate) fn init(region: &str, node_id: u64, format: LogFormat) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = std::env::var(ENDPOINT_VAR).ok().filter(|e| !e.is_empty()) else {
        if format == LogFormat::Json {
            // Trace ids for the log, exported nowhere.
            let provider = SdkTracerProvider::builder().build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("paymesh"));
            tracing_subscriber::registry().with(filter()).with(log_layer(format)).with(layer).init();
            return Ok(Some(provider));
        }
        tracing_subscriber::registry().with(filter()).with(log_layer(format)).init();
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
    tracing_subscriber::registry().with(filter()).with(log_layer(format)).with(layer).init();
    tracing::info!(%endpoint, "exporting traces");
    Ok(Some(provider))
}
