//! Structured logs and OpenTelemetry traces.
//!
//! Logs: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` switches to JSON.
//!
//! Traces: every `tracing` span is also an OpenTelemetry span (the `tracing-opentelemetry`
//! layer), so span contexts — trace id, span id — exist whether or not anything exports them;
//! [`crate::trace`] reads and writes them as W3C `traceparent`. They are exported over OTLP
//! (HTTP, protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! is set (the standard `OTEL_*` variables apply: headers, timeout, `OTEL_SERVICE_NAME`,
//! `OTEL_BSP_SCHEDULE_DELAY`…); otherwise they are only logged, with their trace id, by the
//! log layer.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Install the global subscriber (logs to stderr, spans to OTLP when configured); later
/// calls are no-ops.
pub fn init() {
    install(false);
}

/// For tests: logs go through libtest's capture and show only for failing tests.
pub fn init_for_tests() {
    install(true);
}

/// Export the spans still buffered (call before the process exits).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.force_flush()
    {
        eprintln!("flushing traces failed: {e}");
    }
}

/// Whether spans are exported over OTLP (from the standard environment variables).
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

fn install(test_writer: bool) {
    if PROVIDER.get().is_some() {
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,librdkafka=warn,rdkafka=warn,sqlx=warn,tansu=warn,opentelemetry=warn,opentelemetry_sdk=warn")
    });
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json");
    let provider = tracer_provider();
    let tracer = provider.tracer("sagaflow");
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let fmt = tracing_subscriber::fmt::layer();
    let installed = match (test_writer, json) {
        (true, true) => registry.with(fmt.with_test_writer().json()).try_init(),
        (true, false) => registry.with(fmt.with_test_writer()).try_init(),
        (false, true) => registry
            .with(fmt.with_writer(std::io::stderr).json())
            .try_init(),
        (false, false) => registry.with(fmt.with_writer(std::io::stderr)).try_init(),
    };
    if installed.is_ok() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        let _ = PROVIDER.set(provider);
    }
}

fn tracer_provider() -> SdkTracerProvider {
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(executable_name());
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    if !otlp_configured() {
        return builder.build();
    }
    match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => builder.with_batch_exporter(exporter).build(),
        Err(e) => {
            // Tracing is not worth refusing to start for: say so and run without export.
            eprintln!("OTLP trace export disabled: {e}");
            builder.build()
        }
    }
}

fn executable_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "sagaflow".to_string())
}
