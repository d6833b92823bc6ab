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
pub mod leftovers;
pub mod load;
pub mod pg_wire;
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

/// A free host port for a server a test stops and starts again at the same address (a published
/// container port, a restarted broker or PostgreSQL), chosen below the kernel's ephemeral range.
///
/// Why not `bind(0)`: it hands out a port of the ephemeral range, the one every outgoing
/// connection takes its local port from. Between a kill and the restart, any of the hundreds
/// of connections the platform opens can take that port, and the restart then fails with
/// "address already in use". Below the range only an explicit bind takes a port, and this
/// process hands each one out once.
pub fn stable_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_start = ephemeral_start();
    let low = 10_000u16.min(ephemeral_start / 2);
    let span = u128::from(ephemeral_start - low);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = low + (uuid::Uuid::new_v4().as_u128() % span) as u16;
        let free = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
        if free && !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port in {low}..{ephemeral_start} after 1000 tries");
}

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
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

/// What a docker CLI command printed (stdout and stderr), or why it did not run.
pub fn docker_output(args: &[&str]) -> String {
    command_output("docker", args)
}

/// What a command printed (stdout and stderr), for a diagnosis; why it did not run otherwise.
pub fn command_output(program: &str, args: &[&str]) -> String {
    match std::process::Command::new(program).args(args).output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("{program} {args:?}: {e}"),
    }
}

/// A `docker restart` of a harness PostgreSQL container, running in the background while the
/// test goes on. Dropping it — also when the test panics — waits for the restart to end and
/// for PostgreSQL to accept connections again: a failing test must not hand the next one (which
/// takes the broker lock the moment this test's guard drops) a server that is going down. So
/// declare it after the lock's guard: locals drop in reverse order.
pub struct PostgresRestart {
    container: String,
    restart: Option<std::thread::JoinHandle<()>>,
}

impl PostgresRestart {
    /// Start `docker restart -t <grace_seconds> <container>`.
    pub fn start(container: &str, grace_seconds: u32) -> Self {
        let args = ["restart", "-t", &grace_seconds.to_string(), container].map(String::from);
        let restart = std::thread::spawn(move || {
            docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        });
        PostgresRestart {
            container: container.to_string(),
            restart: Some(restart),
        }
    }
}

impl Drop for PostgresRestart {
    fn drop(&mut self) {
        if let Some(restart) = self.restart.take()
            && restart.join().is_err()
        {
            eprintln!("docker restart {} failed", self.container);
        }
        // The harness's own readiness wait, on a runtime of its own: this may run while the
        // test's runtime unwinds.
        let url = infra().postgres_admin_url.clone();
        let ready = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(infra::wait_for_postgres(
                    &url,
                    std::time::Duration::from_secs(60),
                ))
        })
        .join();
        if !matches!(ready, Ok(Ok(()))) {
            eprintln!(
                "{} did not accept connections within 60 s of its restart",
                self.container
            );
        }
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn stable_ports_are_below_the_ephemeral_range_free_and_handed_out_once() {
        let ephemeral_start = super::ephemeral_start();
        let ports: Vec<u16> = (0..50).map(|_| super::stable_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        for port in ports {
            assert!(port < ephemeral_start, "{port} is in the ephemeral range");
            std::net::TcpListener::bind(("0.0.0.0", port)).expect("the port is free");
        }
    }
}
