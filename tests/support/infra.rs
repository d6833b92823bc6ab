//! Shared servers for one test binary, and per-test databases and topic prefixes.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sagaflow_runtime::KafkaConfig;
use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use testcontainers::core::{ContainerPort, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

const DEFAULT_POSTGRES_IMAGE: &str = "postgres:16-alpine";
const DEFAULT_KAFKA_IMAGE: &str = "apache/kafka:3.9.1";
/// Every container of a test run carries this label, so leftovers can be removed.
pub const LABEL: &str = "sagaflow-tests";

/// Where the shared servers are.
#[derive(Debug, Clone)]
pub struct Infra {
    /// A superuser URL of the `postgres` database (used to create per-test databases).
    pub postgres_admin_url: String,
    /// Bootstrap servers.
    pub kafka_brokers: String,
    /// Container ids, when the harness started containers (fault tests stop/pause them).
    pub postgres_container: Option<String>,
    pub kafka_container: Option<String>,
    /// Human-readable description of what the tests run against.
    pub description: String,
}

static INFRA: OnceLock<Infra> = OnceLock::new();

/// The shared servers, started on first use. Panics (failing the test) when they cannot be
/// started or do not answer within their deadline.
pub fn infra() -> &'static Infra {
    INFRA.get_or_init(|| {
        sagaflow_runtime::telemetry::init_for_tests();
        let infra = match (
            std::env::var("SAGAFLOW_TEST_DATABASE_URL"),
            std::env::var("SAGAFLOW_TEST_KAFKA"),
        ) {
            (Ok(postgres_admin_url), Ok(kafka_brokers)) => Infra {
                description: format!(
                    "running infrastructure: {postgres_admin_url} + {kafka_brokers}; {}",
                    remove_data_of_finished_runs(&postgres_admin_url, &kafka_brokers)
                ),
                postgres_admin_url,
                kafka_brokers,
                postgres_container: None,
                kafka_container: None,
            },
            _ => start_containers(),
        };
        // Straight to the stderr handle, past libtest's capture: CI checks this line.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "[sagaflow-tests] {}", infra.description);
        infra
    })
}

/// Remove what finished runs left on servers that outlive the tests
/// ([`crate::leftovers`]), on a runtime of its own (this runs inside whichever test comes
/// first); a failure is reported, never fatal: the leftovers only take space.
fn remove_data_of_finished_runs(postgres_admin_url: &str, kafka_brokers: &str) -> String {
    let (postgres, kafka) = (postgres_admin_url.to_string(), kafka_brokers.to_string());
    let removed = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()?
            .block_on(crate::leftovers::remove_finished_runs(&postgres, &kafka))
    })
    .join()
    .expect("leftover removal thread");
    match removed {
        Ok(r) => format!(
            "removed {} databases and {} topics left by finished runs",
            r.databases.len(),
            r.topics.len()
        ),
        Err(e) => format!("leftovers of finished runs not removed: {e:#}"),
    }
}

/// Containers live on a dedicated thread and runtime for the whole test process, independent
/// of the per-test runtimes of `#[tokio::test]`.
fn start_containers() -> Infra {
    hold_for_the_process("test-containers", start)
}

/// Run `start` on a thread and runtime of its own that live as long as the process, and
/// return what it describes; what it holds (containers, proxies) stays alive with it.
/// Panics, failing the test, when `start` fails.
pub fn hold_for_the_process<T, H, F, Fut>(name: &str, start: F) -> T
where
    T: Send + 'static,
    H: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<(T, H)>>,
{
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime for test servers");
            runtime.block_on(async move {
                match start().await {
                    Ok((value, held)) => {
                        let _ = sender.send(Ok(value));
                        // Hold the servers until the process exits.
                        let _held = held;
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = sender.send(Err(format!("{e:#}")));
                    }
                }
            });
        })
        .expect("spawn the servers' thread");
    match receiver.recv() {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("could not start {name}: {e}"),
        Err(_) => panic!("{name} thread died"),
    }
}

pub fn image_from_env(var: &str, default: &str) -> (String, String) {
    let reference = std::env::var(var).unwrap_or_else(|_| default.to_string());
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (reference, "latest".to_string()),
    }
}

async fn start() -> anyhow::Result<(Infra, Vec<ContainerAsync<GenericImage>>)> {
    remove_leftovers();
    let started = Instant::now();
    let (pg_name, pg_tag) = image_from_env("SAGAFLOW_TEST_POSTGRES_IMAGE", DEFAULT_POSTGRES_IMAGE);
    let (kafka_name, kafka_tag) = image_from_env("SAGAFLOW_TEST_KAFKA_IMAGE", DEFAULT_KAFKA_IMAGE);
    let owner = std::process::id().to_string();

    // A fixed host port, so a restarted container (fault tests) comes back at the same address.
    let pg_host_port = crate::stable_port();
    let postgres = GenericImage::new(&pg_name, &pg_tag)
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::Nothing)
        .with_mapped_port(pg_host_port, 5432.tcp())
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_env_var("POSTGRES_PASSWORD", "postgres")
        .with_label(LABEL, &owner)
        // Enough connections for many services per test running in parallel.
        .with_cmd([
            "postgres",
            "-c",
            "max_connections=600",
            "-c",
            "shared_buffers=256MB",
        ])
        .start();

    // Kafka advertises the address clients must use, so the host port is fixed up front and
    // mapped to the same port inside the container.
    let kafka_port = crate::stable_port();
    let kafka = GenericImage::new(&kafka_name, &kafka_tag)
        .with_exposed_port(kafka_port.tcp())
        .with_wait_for(WaitFor::Nothing)
        .with_mapped_port(kafka_port, ContainerPort::Tcp(kafka_port))
        .with_label(LABEL, &owner)
        .with_env_var("KAFKA_NODE_ID", "1")
        .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env_var(
            "KAFKA_LISTENERS",
            format!("PLAINTEXT://0.0.0.0:{kafka_port},CONTROLLER://0.0.0.0:9093"),
        )
        .with_env_var(
            "KAFKA_ADVERTISED_LISTENERS",
            format!("PLAINTEXT://localhost:{kafka_port}"),
        )
        .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env_var(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        )
        .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env_var("KAFKA_NUM_PARTITIONS", "4")
        // As in production: components create their topics explicitly, with their settings.
        .with_env_var("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env_var("KAFKA_HEAP_OPTS", "-Xms256m -Xmx1g")
        .start();

    let (postgres, kafka) = tokio::join!(postgres, kafka);
    let postgres = postgres.map_err(|e| anyhow::anyhow!("starting {pg_name}:{pg_tag}: {e}"))?;
    let kafka = kafka.map_err(|e| anyhow::anyhow!("starting {kafka_name}:{kafka_tag}: {e}"))?;
    let pg_port = postgres.get_host_port_ipv4(5432.tcp()).await?;
    let postgres_admin_url = format!("postgres://postgres:postgres@127.0.0.1:{pg_port}/postgres");
    let kafka_brokers = format!("127.0.0.1:{kafka_port}");

    wait_for_postgres(&postgres_admin_url, Duration::from_secs(90)).await?;
    wait_for_kafka(&kafka_brokers, Duration::from_secs(90)).await?;
    let infra = Infra {
        description: format!(
            "containers {pg_name}:{pg_tag} ({}) and {kafka_name}:{kafka_tag} ({}) up in {:.1}s",
            &postgres.id()[..12],
            &kafka.id()[..12],
            started.elapsed().as_secs_f64()
        ),
        postgres_admin_url,
        kafka_brokers,
        postgres_container: Some(postgres.id().to_string()),
        kafka_container: Some(kafka.id().to_string()),
    };
    Ok((infra, vec![postgres, kafka]))
}

/// Remove containers of earlier test processes that are gone (statics are never dropped, so
/// a test binary cannot remove its own containers on exit), and the cluster networks they
/// leave empty.
pub fn remove_leftovers() {
    remove_dead_owners_containers();
    let networks = std::process::Command::new("docker")
        .args(["network", "ls", "-q", "--filter", "name=sagaflow-cluster-"])
        .output();
    if let Ok(networks) = networks {
        for id in String::from_utf8_lossy(&networks.stdout).split_whitespace() {
            // Refused while a live cluster still uses it: that one is kept.
            let _ = std::process::Command::new("docker")
                .args(["network", "rm", id])
                .output();
        }
    }
}

fn remove_dead_owners_containers() {
    let output = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={LABEL}"),
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}}"),
        ])
        .output();
    let Ok(output) = output else { return };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut parts = line.split_whitespace();
        let (Some(id), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let alive = PathBuf::from(format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v", id])
                .output();
        }
    }
}

pub(crate) async fn wait_for_postgres(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match PgConnection::connect(url).await {
            Ok(mut conn) => {
                if conn.execute("SELECT 1").await.is_ok() {
                    return Ok(());
                }
            }
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!("PostgreSQL at {url} unreachable: {e}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait_for_kafka(brokers: &str, timeout: Duration) -> anyhow::Result<()> {
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("broker.address.family", "v4")
            .set("log_level", "0")
            .create()?;
        loop {
            match client.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
                Ok(_) => {}
                Err(e) if Instant::now() > deadline => {
                    anyhow::bail!("Kafka at {brokers} unreachable: {e}")
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await?
}

/// A database of its own for one test, migrated as its component migrates it.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

/// The repository's migrations of one component database.
pub fn migrations_dir(component: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(component)
}

/// The migrator of a component database: `migrations/<component>/` with the shared outbox and
/// inbox tables of `migrations/messaging/` (`sagaflow_messaging::migrations`).
pub fn migrator(component: &str) -> &'static Migrator {
    match component {
        "order" => &order_service::MIGRATOR,
        "inventory" => &inventory_service::MIGRATOR,
        "payment" => &payment_service::MIGRATOR,
        "notification" => &notification_service::MIGRATOR,
        "query" => &query_service::MIGRATOR,
        "saga" => &saga_orchestrator::MIGRATOR,
        other => panic!("no component database {other}"),
    }
}

/// Create a fresh database and apply its component's migrations ([`migrator`]).
pub async fn database(component: &str) -> TestDatabase {
    let infra = infra();
    // The run's tag lets a later run against the same server remove it (crate::leftovers).
    let name = format!(
        "t_{}_{component}_{}",
        crate::leftovers::current_tag(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut admin = match PgConnection::connect(&infra.postgres_admin_url).await {
        Ok(admin) => admin,
        Err(e) => panic!(
            "connect to the test PostgreSQL: {e}\n{}",
            diagnose_postgres(infra)
        ),
    };
    let create = format!("CREATE DATABASE {name}");
    admin
        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(create)))
        .await
        .expect("create test database");
    let url = database_url(&name);
    let pool = sagaflow_runtime::db::connect(&url, 20)
        .await
        .expect("connect to test database");
    migrator(component)
        .run(&pool)
        .await
        .expect("apply migrations");
    TestDatabase { name, url, pool }
}

/// Why the test PostgreSQL may be gone: its container's state (exit code, OOM kill), its last
/// log lines, and the host's free disk and memory — CI keeps no container logs, and a server
/// that stops mid-run (CI: connection refused in the `cluster` target) is diagnosed from this.
pub fn diagnose_postgres(infra: &Infra) -> String {
    let Some(container) = &infra.postgres_container else {
        return format!(
            "(PostgreSQL at {} is not the harness's)",
            infra.postgres_admin_url
        );
    };
    let state = crate::docker_output(&[
        "inspect",
        "-f",
        "{{.State.Status}} exit={{.State.ExitCode}} oom_killed={{.State.OOMKilled}} \
         started={{.State.StartedAt}} finished={{.State.FinishedAt}} error={{.State.Error}}",
        container,
    ]);
    let logs = crate::docker_output(&["logs", "--tail", "30", container]);
    format!(
        "--- PostgreSQL container {}: {}\n{logs}\n--- df -h /\n{}--- free -m\n{}",
        &container[..container.len().min(12)],
        state.trim(),
        crate::command_output("df", &["-h", "/"]),
        crate::command_output("free", &["-m"]),
    )
}

/// The URL of database `name` on the test server.
pub fn database_url(name: &str) -> String {
    let admin = &infra().postgres_admin_url;
    match admin.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => admin.clone(),
    }
}

/// A Kafka configuration with a topic prefix of its own.
pub fn kafka() -> KafkaConfig {
    let prefix = format!(
        "t{}_{}.",
        crate::leftovers::current_tag(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut config = KafkaConfig::new(infra().kafka_brokers.clone(), prefix);
    config.partitions = 4;
    config.debug = std::env::var("SAGAFLOW_KAFKA_DEBUG")
        .ok()
        .filter(|d| !d.is_empty());
    config
}
