//! One transfer, one trace: W3C trace context through the protocol's steps.
//!
//! Spans are `tracing` spans; when `paymesh start` finds an OTLP endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`) it adds an OpenTelemetry layer that
//! exports them, and without one nothing is exported or required (the
//! functions here then carry empty contexts).
//!
//! The trace starts at the partner's `CreateTransfer` (continuing the
//! partner's own `traceparent` if it sent one). The leader remembers each
//! request's context ([`Traces`], by partner and idempotency key, before the
//! request is proposed: the shipper may send the Prepare before the handler
//! hears the outcome) for the steps that follow in other tasks:
//! the shipper's `prepare.send` and `decide.send` spans are its children, and
//! their contexts travel to the payee region in each item's `traceparent`
//! (a batch mixes transfers, so one context per batch could not keep them
//! apart), where `prepare.apply` and `decide.apply` continue the same trace;
//! `prepare.replied` closes it on the payer's side. A leader change forgets
//! the contexts: the steps after it start traces of their own.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use paymesh_core::history::Recall;
use paymesh_core::id::{IdempotencyKey, PartnerId, TransferId};
use paymesh_core::state::State;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Transfers whose trace context the leader remembers, at most.
pub const TRACES_REMEMBERED_MAX: usize = 100_000;

/// The W3C `traceparent` of `span`; empty when it is not traced.
pub fn traceparent(span: &Span) -> String {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Whether `span` belongs to a trace (an OpenTelemetry layer gave it ids).
pub fn is_traced(span: &Span) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    span.context().span().span_context().is_valid()
}

/// Record `span`'s trace id (32 hex digits) in its `trace_id` field, so
/// logs about the span name the trace; nothing when it is not traced or
/// has no such field.
pub fn record_trace_id(span: &Span) {
    use opentelemetry::trace::TraceContextExt as _;
    let context = span.context();
    let trace = context.span().span_context().trace_id();
    if trace != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace));
    }
}

/// Make `span` a child of the context `traceparent` names; an empty or
/// malformed one is ignored (the span starts a trace of its own).
pub fn continue_from(span: &Span, traceparent: &str) {
    if traceparent.is_empty() || traceparent.len() > 128 {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}

/// The most characters of a wire string [`wire_text`] keeps.
pub const WIRE_TEXT_CHARS_MAX: usize = 64;

/// A string received from the wire, fit for a span or log field: at most
/// [`WIRE_TEXT_CHARS_MAX`] characters, escaped (control characters and
/// quotes as Rust escapes, so no log line can be forged), followed by the
/// length dropped, if any. Record parsed values where there are some; this is
/// for text that did not parse.
pub fn wire_text(text: &str) -> String {
    bounded_text(text, WIRE_TEXT_CHARS_MAX)
}

/// As [`wire_text`], keeping at most `chars_max` characters (for longer
/// text, such as the message of a remote region's error).
pub fn bounded_text(text: &str, chars_max: usize) -> String {
    let mut kept: String = text.chars().take(chars_max).flat_map(char::escape_debug).collect();
    let dropped = text.chars().skip(chars_max).map(char::len_utf8).sum::<usize>();
    if dropped > 0 {
        kept.push_str(&format!("…(+{dropped} bytes)"));
    }
    kept
}

/// A transfer id received from the wire, for a span or log field: the id
/// itself when it parses, otherwise [`wire_text`] of it, marked invalid.
pub fn wire_transfer(text: &str) -> String {
    match TransferId::parse(text) {
        Ok(id) => id.to_string(),
        Err(_) => format!("invalid:\"{}\"", wire_text(text)),
    }
}

type RequestKey = (PartnerId, IdempotencyKey);

/// The trace contexts of recent transfer requests, oldest forgotten first.
#[derive(Debug, Default)]
pub struct Traces {
    inner: Mutex<(HashMap<RequestKey, String>, VecDeque<RequestKey>)>,
}

impl Traces {
    /// Remember the context of `partner`'s request `key` (nothing when it is
    /// empty; a retry's context replaces the first's).
    pub fn remember(&self, partner: &PartnerId, key: &IdempotencyKey, traceparent: String) {
        if traceparent.is_empty() {
            return;
        }
        let key = (partner.clone(), key.clone());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *inner;
        if map.insert(key.clone(), traceparent).is_none() {
            order.push_back(key);
        }
        while order.len() > TRACES_REMEMBERED_MAX {
            if let Some(oldest) = order.pop_front() {
                map.remove(&oldest);
            }
        }
    }

    /// The context of the request that created `transfer` (found in
    /// `state`, or in `history` once finished), or empty.
    pub fn of(&self, state: &State, history: &dyn Recall, transfer: &TransferId) -> String {
        let found = state.transfer(transfer).cloned().or_else(|| history.transfer(transfer));
        let Some(transfer) = found else { return String::new() };
        let key = (transfer.view.partner.clone(), transfer.view.idempotency_key.clone());
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.0.get(&key).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_text_is_bounded_and_escaped() {
        assert_eq!(wire_text("us-west"), "us-west");
        assert_eq!(wire_text("a\nb\u{1b}[0m\"c"), "a\\nb\\u{1b}[0m\\\"c");
        let long = wire_text(&"é".repeat(10_000));
        assert!(long.ends_with(&format!("…(+{} bytes)", (10_000 - WIRE_TEXT_CHARS_MAX) * 2)), "{long}");
        assert!(long.chars().count() < WIRE_TEXT_CHARS_MAX + 20);
        assert_eq!(wire_transfer("us-west:7"), "us-west:7");
        assert_eq!(wire_transfer("us-west:x\n"), "invalid:\"us-west:x\\n\"");
    }

    #[test]
    fn untraced_spans_carry_nothing_and_the_memory_is_bounded() {
        let span = tracing::info_span!("untraced");
        assert_eq!(traceparent(&span), "", "no OpenTelemetry layer, no context");
        continue_from(&span, "not a traceparent");
        let traces = Traces::default();
        let partner = PartnerId::new("wallet").unwrap();
        let key = |n: usize| IdempotencyKey::new(format!("k{n}")).unwrap();
        traces.remember(&partner, &key(1), String::new());
        assert!(traces.inner.lock().unwrap().0.is_empty(), "an empty context is not remembered");
        for n in 0..TRACES_REMEMBERED_MAX + 10 {
            traces.remember(&partner, &key(n), format!("00-{n:032x}-{n:016x}-01"));
        }
        let inner = traces.inner.lock().unwrap();
        assert_eq!(inner.0.len(), TRACES_REMEMBERED_MAX);
        assert!(!inner.0.contains_key(&(partner.clone(), key(5))), "the oldest are forgotten");
        assert!(inner.0.contains_key(&(partner, key(TRACES_REMEMBERED_MAX + 9))));
    }
}
