//! The integration-test harness.
//!
//! Once per test binary it starts PostgreSQL and a Kafka-protocol broker with testcontainers
//! (images from `SAGAFLOW_TEST_POSTGRES_IMAGE` / `SAGAFLOW_TEST_KAFKA_IMAGE`, defaulting to the
//! official `postgres:16-alpine` and `apache/kafka:3.9.1` in KRaft mode), or uses running
//! infrastructure when `SAGAFLOW_TEST_DATABASE_URL` and `SAGAFLOW_TEST_KAFKA` are set. Each
//! test then gets its own databases ([`database`]) and its own topic prefix ([`kafka`]), so
//! tests run in parallel against shared servers without seeing each other.

pub mod cluster;
pub mod groups;
pub mod infra;
pub mod invariants;
pub mod kafka_probe;
pub mod load;
pub mod platform;
pub mod processes;
pub mod prometheus;
pub mod proxy;
pub mod wait;

pub use infra::{Infra, database, infra, kafka};

/// Tests that use the shared broker hold this for reading; a test that takes the broker away
/// (pause, stop) holds it for writing, so it never disturbs the others.
pub fn broker_lock() -> &'static tokio::sync::RwLock<()> {
    static LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
    &LOCK
}

/// Run a docker CLI command on a harness container (pause, unpause, restart, kill).
pub fn docker(args: &[&str]) {
    let output = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `sagaflow` binary of this workspace (built by `cargo build --workspace`, which
/// `scripts/test.sh` runs first).
pub fn sagaflow_binary() -> std::path::PathBuf {
    workspace_binary("sagaflow")
}

/// A binary of this workspace (`order-service`, …), built by `cargo build --workspace`.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("debug").join(name);
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --workspace` first",
        binary.display()
    );
    binary
}
