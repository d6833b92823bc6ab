//! The outbox-relay binary: one relay per configured database, one idempotent producer,
//! health and Prometheus metrics over HTTP. Run as many replicas as you like.
//!
//! `OUTBOX_DATABASE_URLS=order=postgres://…/order,inventory=postgres://…/inventory`

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sagaflow_messaging::{Relay, RelayConfig};
use sagaflow_runtime::http::{Readiness, ops_router, serve};
use sagaflow_runtime::{KafkaConfig, db, kafka, runner};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    about = "Publishes committed outbox rows to Kafka"
)]
struct Args {
    /// `name=url` pairs, comma separated; one relay each.
    #[arg(
        long,
        env = "OUTBOX_DATABASE_URLS",
        value_delimiter = ',',
        required = true
    )]
    databases: Vec<String>,
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8086")]
    http_addr: String,
    /// Heads claimed per pass.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = 2000)]
    batch_size: i64,
    /// Fallback poll interval when no NOTIFY arrives, in milliseconds.
    #[arg(long, env = "OUTBOX_POLL_INTERVAL_MS", default_value_t = 500)]
    poll_interval_ms: u64,
    /// Published rows are deleted after this many hours.
    #[arg(long, env = "OUTBOX_RETENTION_HOURS", default_value_t = 24)]
    retention_hours: u64,
    #[command(flatten)]
    kafka: KafkaConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sagaflow_runtime::telemetry::init();
    let args = Args::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn(runner::cancel_on_signal(shutdown.clone()));

    kafka::ensure_all_topics(&args.kafka).await?;
    let producer = kafka::producer(&args.kafka)?;

    let mut pools = Vec::new();
    let mut relays = tokio::task::JoinSet::new();
    for entry in &args.databases {
        let (name, url) = entry
            .split_once('=')
            .with_context(|| format!("OUTBOX_DATABASE_URLS entry {entry:?} is not name=url"))?;
        let pool = db::connect_lazy(url, 4)?;
        pools.push((name.to_string(), pool.clone()));
        let mut config = RelayConfig::new(name);
        config.batch_size = args.batch_size;
        config.poll_interval = Duration::from_millis(args.poll_interval_ms);
        config.retention = Duration::from_secs(args.retention_hours * 3600);
        let relay = Relay::new(pool, producer.clone(), args.kafka.clone(), config);
        relays.spawn(relay.run(shutdown.clone()));
    }
    let router = ops_router(Readiness {
        databases: pools,
        kafka: Some(args.kafka.clone()),
    });
    let listener = tokio::net::TcpListener::bind(&args.http_addr).await?;
    let http = tokio::spawn(serve(listener, router, shutdown.clone()));
    while let Some(result) = relays.join_next().await {
        result??;
    }
    shutdown.cancel();
    http.await??;
    sagaflow_runtime::telemetry::shutdown();
    Ok(())
}
