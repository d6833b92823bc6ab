//! W3C trace context (`traceparent`) propagation: the trace id set on `POST /orders` is
//! carried through the outbox row and the Kafka headers into every consumer and saga step,
//! each hop a new span id under the same trace id.
//!
//! The span ids are those of real OpenTelemetry spans (see [`crate::telemetry`]): a message
//! written to the outbox carries the span that wrote it, and the consumer's span of that
//! message is its child — one connected trace per order, exported over OTLP when configured.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rand::Rng;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";

/// Make `span` a child of the remote span `traceparent` (an incoming request's or message's).
/// A missing or malformed `traceparent` leaves `span` a root: a new trace. The span's
/// `trace_id` field, if it declares one, is filled in, so every log line inside it names the
/// trace even when spans are not exported.
pub fn continue_from(span: &Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent.filter(|tp| trace_id(tp).is_some()) {
        let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(parent);
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}

/// The `traceparent` of the current span, if it has a valid OpenTelemetry context (always,
/// inside a span, once [`crate::telemetry`] is installed).
pub fn current() -> Option<String> {
    let context = Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` for a message written on behalf of `origin` (the trace it belongs to):
/// the current span when it is part of that trace — so the consumer's span becomes its
/// child — otherwise a child of `origin` itself (e.g. the saga deadline sweeper, which acts
/// for a stored trace outside any request).
pub fn for_message(origin: Option<&str>) -> String {
    let current = current();
    match (current, origin.and_then(trace_id)) {
        (Some(current), Some(origin_trace)) if trace_id(&current) == Some(origin_trace) => current,
        (Some(current), None) => current,
        _ => child_of(origin),
    }
}

/// A new root `traceparent` (sampled).
pub fn new_root() -> String {
    let mut rng = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        rng.random::<u128>() | 1,
        rng.random::<u64>() | 1
    )
}

/// A child of `parent` (same trace id, new span id); a new root when `parent` is absent or
/// malformed.
pub fn child_of(parent: Option<&str>) -> String {
    match parent.and_then(trace_id) {
        Some(trace) => format!("00-{trace}-{:016x}-01", rand::rng().random::<u64>() | 1),
        None => new_root(),
    }
}

/// The trace id of a well-formed `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2)
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0'))
    .then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let root = new_root();
        let child = child_of(Some(&root));
        assert_eq!(trace_id(&root), trace_id(&child));
        assert_ne!(root, child);
    }

    #[test]
    fn garbage_starts_a_new_trace() {
        assert!(trace_id(&child_of(Some("nonsense"))).is_some());
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-0000000000000001-01"),
            None
        );
    }
}
