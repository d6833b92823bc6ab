//! Structured logs. `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` switches to JSON.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber (logs to stderr); later calls are no-ops.
pub fn init() {
    install(false);
}

/// For tests: logs go through libtest's capture and show only for failing tests.
pub fn init_for_tests() {
    install(true);
}

fn install(test_writer: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,librdkafka=warn,rdkafka=warn,sqlx=warn,tansu=warn")
    });
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match (test_writer, json) {
        (true, true) => builder.with_test_writer().json().try_init(),
        (true, false) => builder.with_test_writer().try_init(),
        (false, true) => builder.with_writer(std::io::stderr).json().try_init(),
        (false, false) => builder.with_writer(std::io::stderr).try_init(),
    };
}
