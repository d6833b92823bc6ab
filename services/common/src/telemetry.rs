//! Structured logs. `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` switches to JSON.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber; later calls (several components in one process) are no-ops.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn,rdkafka=warn,sqlx=warn,tansu=warn"));
    // The test writer goes through libtest's capture (shown for failing tests only) and is
    // plain stderr outside tests.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer();
    let _ = if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
