//! `sagaflow dev`: the whole platform in one process, for a laptop.
//!
//! - Kafka: an embedded tansu broker on 127.0.0.1:9092, unless `KAFKA_BROKERS` is set.
//! - PostgreSQL: `DATABASE_URL` (a server where we may create databases), or else a throwaway
//!   cluster started from the machine's PostgreSQL binaries under `.sagaflow/postgres`
//!   (reused on the next start).
//! - One database per service (`<base>_order`, …), created when missing.
//! - A simulated payment provider, demo stock, every HTTP route on one port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use payment_service::{PaymentConfig, ProviderFaults, spawn_provider};
use saga_orchestrator::SagaConfig;
use sagaflow_platform::{self as platform, DatabaseUrls};
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::ApiSecurity;
use sqlx::{Connection, Executor, PgConnection};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::broker;

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where every HTTP route is served.
    #[arg(long, env = "SAGAFLOW_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// A PostgreSQL server URL; its database name is the base of the per-service names.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Kafka bootstrap servers; when absent an embedded broker is started on 127.0.0.1:9092.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Port of the embedded broker.
    #[arg(long, env = "SAGAFLOW_BROKER_PORT", default_value_t = 9092)]
    pub broker_port: u16,
    /// Prefix of topics and consumer groups.
    #[arg(
        long = "topic-prefix",
        env = "SAGAFLOW_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,
    /// Folder of the throwaway PostgreSQL cluster.
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = ".sagaflow")]
    pub data_dir: PathBuf,
    /// Address of the simulated payment provider.
    #[arg(
        long,
        env = "SIMULATED_PROVIDER_ADDR",
        default_value = "127.0.0.1:8090"
    )]
    pub provider_addr: String,
    #[command(flatten)]
    pub saga: SagaConfig,
    #[command(flatten)]
    pub security: ApiSecurity,
    #[command(flatten)]
    pub orders: order_service::OrderConfig,
    /// Outbox rows each relay claims per pass.
    #[arg(
        long = "relay-batch-size",
        env = "OUTBOX_BATCH_SIZE",
        default_value_t = sagaflow_messaging::relay::DEFAULT_BATCH_SIZE
    )]
    pub relay_batch_size: i64,
    #[command(flatten)]
    pub query: query_service::QueryConfig,
}

pub async fn run(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    // What the platform's components talk to — the embedded broker and the simulated payment
    // provider — stops after them, however `run` ends: stopped first, the broker would leave
    // every client still closing to log its loss (AllBrokersDown) and wait for it.
    let stop_last = CancellationToken::new();
    let _stop_last_on_return = stop_last.clone().drop_guard();
    // Open on loopback, as a development platform should be; anywhere else only with a
    // secret or by explicit choice — checked before anything starts.
    for addr in tokio::net::lookup_host(&args.http_addr)
        .await
        .with_context(|| format!("resolving {}", args.http_addr))?
    {
        sagaflow_runtime::exposure::check(&args.security, addr)?;
    }
    // Kafka
    let brokers = match &args.kafka_brokers {
        Some(brokers) => brokers.clone(),
        None => {
            let address = format!("127.0.0.1:{}", args.broker_port);
            std::net::TcpListener::bind(&address).with_context(|| {
                format!("port {address} is taken: set KAFKA_BROKERS or SAGAFLOW_BROKER_PORT")
            })?;
            broker::spawn_in_own_runtime(
                address.clone(),
                address.clone(),
                broker::IN_MEMORY.parse()?,
                stop_last.clone(),
            )?;
            address
        }
    };
    let mut kafka = KafkaConfig::new(brokers.clone(), args.topic_prefix.clone())
        .without_compression_on_loopback();
    kafka.partitions = 4;

    // PostgreSQL
    let (server_url, base) = match &args.database_url {
        Some(url) => split_database(url),
        None => (local_cluster(&args.data_dir).await?, "sagaflow".to_string()),
    };
    let mut names = Vec::new();
    for service in [
        "order",
        "inventory",
        "payment",
        "notification",
        "saga",
        "query",
    ] {
        names.push(ensure_database(&server_url, &format!("{base}_{service}")).await?);
    }
    let url = |i: usize| database_url(&server_url, &names[i]);

    // Simulated payment provider
    let provider_listener = tokio::net::TcpListener::bind(&args.provider_addr)
        .await
        .with_context(|| format!("binding the simulated provider on {}", args.provider_addr))?;
    let provider_url = format!("http://{}", provider_listener.local_addr()?);
    spawn_provider(
        provider_listener,
        ProviderFaults::default(),
        stop_last.clone(),
    )
    .await;

    let config = platform::PlatformConfig {
        databases: DatabaseUrls {
            order: url(0),
            inventory: url(1),
            payment: url(2),
            notification: url(3),
            saga: url(4),
            query: url(5),
        },
        kafka: kafka.clone(),
        payment: PaymentConfig::new(provider_url.clone()),
        saga: args.saga.clone(),
        orders: args.orders,
        pool_size: 8,
        request_timeout: Duration::from_secs(10),
        security: args.security.clone(),
        relay_batch_size: args.relay_batch_size,
        query: args.query.clone(),
    };
    let Some(mut platform) = wait_for_broker_then_start(config, &shutdown).await? else {
        info!("sagaflow dev stopped while starting");
        return Ok(());
    };
    inventory_service::seed(
        &platform.pools.inventory,
        &[("SKU-1", 100), ("SKU-2", 100), ("SKU-3", 25)],
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    let http = listener.local_addr()?;
    platform.serve(listener, &kafka);
    print_banner(
        &http.to_string(),
        &brokers,
        &provider_url,
        &args.topic_prefix,
        &args.security,
    );

    let stopper = platform.shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        info!("stopping the platform, then the broker");
        stopper.cancel();
    });
    let stopped = platform.wait().await;
    stop_last.cancel();
    stopped?;
    info!("sagaflow dev stopped");
    Ok(())
}

/// The embedded broker takes a moment to listen; retry the start-up (topic creation) briefly.
/// `None` when `shutdown` is cancelled meanwhile.
async fn wait_for_broker_then_start(
    config: platform::PlatformConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<platform::Platform>> {
    let mut last = None;
    for _ in 0..20 {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let attempt = config.clone();
        match platform::start(attempt).await {
            Ok(platform) => return Ok(Some(platform)),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("platform did not start")))
}

fn print_banner(http: &str, brokers: &str, provider: &str, prefix: &str, security: &ApiSecurity) {
    let topic = format!("{prefix}orders.events");
    let security_line = security.describe();
    let token_hint = if security.authentication_enabled() {
        "\n  Every API call needs -H \"Authorization: Bearer $(sagaflow token --admin)\" (same SAGAFLOW_JWT_SECRET).\n"
    } else {
        "\n  The API is OPEN (development): anyone who reaches the port may call every route.\n"
    };
    println!(
        r#"
Sagaflow is running.
  HTTP API         http://{http}   (orders, inventory, sagas, payments, notifications, views)
  health / metrics http://{http}/health/ready   http://{http}/metrics
  operator console http://{http}/console   (sagas, dead letters, parked rows, health)
  Kafka            {brokers}
  payment provider {provider}   (pm_card_visa approves, pm_card_chargeDeclined declines)
  security         {security_line}{token_hint}
Place an order:
  curl -si http://{http}/orders -H 'Content-Type: application/json' -H "Idempotency-Key: $(uuidgen || date +%s%N)" \
    -d '{{"customer_id":"0190b6d2-0000-7000-8000-000000000001","items":[{{"sku":"SKU-1","quantity":2,"unit_price_cents":1250}}],"currency":"EUR","payment_method":"pm_card_visa"}}'
  curl -s http://{http}/orders/<order_id>     curl -s http://{http}/sagas/<order_id>

Watch the events:
  kcat -b {brokers} -C -t {topic} -f '%k %h\n'
  sagaflow tail orders.events --from-beginning --follow

Ctrl-C stops everything.
"#
    );
}

/// `postgres://u@h:p/name?x` → (`postgres://u@h:p?x`, `name`). The query stays with the
/// server: `sslmode`, a socket directory (`host=`) and the like say how to reach it, and every
/// database of the platform is reached the same way ([`database_url`] puts it back).
pub(crate) fn split_database(url: &str) -> (String, String) {
    let (without_query, query) = match url.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (url, None),
    };
    let (server, name) = match without_query.rsplit_once('/') {
        Some((server, name))
            if !name.is_empty() && server.contains("://") && server.len() > "postgres://".len() =>
        {
            (server.to_string(), name.to_string())
        }
        _ => (
            without_query.trim_end_matches('/').to_string(),
            "sagaflow".to_string(),
        ),
    };
    match query {
        Some(query) => (format!("{server}?{query}"), name),
        None => (server, name),
    }
}

/// The URL of database `name` on `server_url`, keeping the server's query (the local
/// cluster's `?host=` socket directory).
pub(crate) fn database_url(server_url: &str, name: &str) -> String {
    match server_url.split_once('?') {
        Some((server, query)) => format!("{server}/{name}?{query}"),
        None => format!("{server_url}/{name}"),
    }
}

/// The server URL without its query: the local cluster over TCP instead of its socket.
pub(crate) fn over_tcp(server_url: &str) -> String {
    server_url
        .split_once('?')
        .map_or(server_url, |(server, _)| server)
        .to_string()
}

pub(crate) async fn ensure_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    let mut admin = PgConnection::connect(&database_url(server_url, "postgres"))
        .await
        .with_context(|| format!("connecting to PostgreSQL at {server_url}"))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', ""));
        admin
            .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(create)))
            .await
            .with_context(|| format!("creating database {name}"))?;
    }
    Ok(name.to_string())
}

/// Drop database `name` on the server, closing whatever connections it still has (a
/// benchmark's scratch database).
pub(crate) async fn drop_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&database_url(server_url, "postgres"))
        .await
        .with_context(|| format!("connecting to PostgreSQL at {server_url}"))?;
    let drop = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "")
    );
    admin
        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(drop)))
        .await
        .with_context(|| format!("dropping database {name}"))?;
    Ok(())
}

/// Start (or reuse) a PostgreSQL cluster under `data_dir/postgres`; returns its server URL.
///
/// The URL names the cluster's Unix socket (`?host=/tmp`, which sqlx and libpq both read):
/// on the same machine a socket costs less CPU per round trip than loopback TCP, and a saga
/// is some 150 round trips. The cluster also listens on 127.0.0.1 for other clients.
pub(crate) async fn local_cluster(data_dir: &Path) -> anyhow::Result<String> {
    let bin = find_pg_bin().context(
        "PostgreSQL is neither given nor installed: set DATABASE_URL=postgres://user:pass@host:5432/sagaflow, \
         or install PostgreSQL (e.g. apt-get install postgresql) so `sagaflow dev` can start a throwaway cluster",
    )?;
    let cluster = std::path::absolute(data_dir.join("postgres"))?;
    let port = 54329;
    let as_postgres_user = nix_is_root();
    let run = |program: &str, args: &[&str]| -> anyhow::Result<std::process::Output> {
        let path = bin.join(program);
        let mut command = if as_postgres_user {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                .arg(&path);
            c
        } else {
            Command::new(&path)
        };
        Ok(command.args(args).output()?)
    };
    if !cluster.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&cluster)?;
        if as_postgres_user {
            chown_to_postgres(&cluster)?;
        }
        eprintln!(
            "initialising a throwaway PostgreSQL cluster in {}",
            cluster.display()
        );
        let output = run(
            "initdb",
            &[
                "-D",
                &cluster.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        )?;
        if !output.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        }
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}?host={SOCKET_DIR}");
    if PgConnection::connect(&database_url(&url, "postgres"))
        .await
        .is_err()
    {
        let log = cluster.join("server.log");
        let options = format!(
            "-p {port} -k {SOCKET_DIR} -c listen_addresses=127.0.0.1 -c max_connections=200"
        );
        let output = run(
            "pg_ctl",
            &[
                "-D",
                &cluster.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        )?;
        if !output.status.success() {
            bail!(
                "starting PostgreSQL failed (see {}): {}",
                log.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        eprintln!(
            "PostgreSQL started on 127.0.0.1:{port} (data in {}; stop with pg_ctl -D … stop)",
            cluster.display()
        );
    }
    Ok(url)
}

/// Where the local cluster puts its Unix socket.
const SOCKET_DIR: &str = "/tmp";

pub(crate) fn find_pg_bin() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    candidates.sort();
    candidates.pop().or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        })
    })
}

/// initdb refuses to run as root; as root the cluster is owned and run by `postgres`.
fn nix_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn chown_to_postgres(path: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()?;
    if !status.success() {
        bail!(
            "running as root needs a `postgres` user to own {}",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{database_url, over_tcp, split_database};

    #[test]
    fn the_local_cluster_is_reached_through_its_socket_unless_asked_for_tcp() {
        let local = "postgres://postgres@127.0.0.1:54329?host=/tmp";
        assert_eq!(
            database_url(local, "sagaflow_order"),
            "postgres://postgres@127.0.0.1:54329/sagaflow_order?host=/tmp"
        );
        assert_eq!(
            database_url(&over_tcp(local), "x"),
            "postgres://postgres@127.0.0.1:54329/x"
        );
        assert_eq!(
            database_url("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
    }

    #[test]
    fn a_database_url_splits_into_server_and_base_name() {
        assert_eq!(
            split_database("postgres://u:p@h:5432/shop?sslmode=disable"),
            (
                "postgres://u:p@h:5432?sslmode=disable".into(),
                "shop".into()
            )
        );
        // A socket directory: the server is reached through it, whatever the database.
        let (server, name) = split_database("postgres://u@localhost?host=/tmp/pg");
        assert_eq!(
            (server.as_str(), name.as_str()),
            ("postgres://u@localhost?host=/tmp/pg", "sagaflow")
        );
        assert_eq!(
            database_url(&server, "x_order"),
            "postgres://u@localhost/x_order?host=/tmp/pg"
        );
        assert_eq!(
            split_database("postgres://u@h:5432"),
            ("postgres://u@h:5432".into(), "sagaflow".into())
        );
    }
}
