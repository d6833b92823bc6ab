//! The outbox-relay binary: one relay per configured database, one idempotent producer,
//! health and Prometheus metrics over HTTP. Run as many replicas as you like.
//!
//! `OUTBOX_DATABASE_URLS=order=postgres://…/order,inventory=postgres://…/inventory`

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sagaflow_messaging::{Relay, RelayConfig};
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::runner::{self, Component, Database, Pools};
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
    let args = Args::parse();
    let databases = args
        .databases
        .iter()
        .map(|entry| {
            let (name, url) = entry
                .split_once('=')
                .with_context(|| format!("OUTBOX_DATABASE_URLS entry {entry:?} is not name=url"))?;
            Ok(Database::shared(name, url.to_string()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let settings = RelaySettings {
        batch_size: args.batch_size,
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        retention: Duration::from_secs(args.retention_hours * 3600),
    };
    runner::run(Component {
        name: "outbox-relay",
        http_addr: args.http_addr,
        kafka: args.kafka,
        databases,
        api: None,
        sidecar: None,
        work: Box::new(move |pools, kafka, shutdown| {
            Box::pin(relay_all(pools, kafka, settings, shutdown))
        }),
    })
    .await
}

/// The relay flags, applied to every database's relay.
#[derive(Debug, Clone, Copy)]
struct RelaySettings {
    batch_size: i64,
    poll_interval: Duration,
    retention: Duration,
}

/// One relay per database, sharing one idempotent producer; ends when any relay fails.
async fn relay_all(
    pools: Pools,
    kafka: KafkaConfig,
    settings: RelaySettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer = sagaflow_runtime::kafka::producer(&kafka)?;
    let mut relays = tokio::task::JoinSet::new();
    for (name, pool) in pools.named() {
        let mut config = RelayConfig::new(name);
        config.batch_size = settings.batch_size;
        config.poll_interval = settings.poll_interval;
        config.retention = settings.retention;
        let relay = Relay::new(pool, producer.clone(), kafka.clone(), config);
        relays.spawn(relay.run(shutdown.clone()));
    }
    while let Some(result) = relays.join_next().await {
        result??;
    }
    Ok(())
}
