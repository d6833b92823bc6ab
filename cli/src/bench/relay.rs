//! `sagaflow bench relay`: the outbox relay measured against the raw broker in the same run.
//!
//! 1. Baseline: the idempotent producer alone sends the same messages as fast as it can.
//! 2. Steady rate: open-loop writers commit order rows' outbox messages at a fixed rate while
//!    the relay runs; commit→ack latency is the broker-ack time the relay records minus the
//!    writer's commit time.
//! 3. Drain: a backlog is written with the relay stopped, then drained; rows/s.
//!
//! The rows go to a scratch database `bench_<tag>` on the server, dropped at the end whether
//! the run succeeded or not; the topics are the run's own (`bench<tag>.` prefix).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sagaflow_messaging::{Origin, Relay, RelayConfig, enqueue};
use sagaflow_runtime::{KafkaConfig, kafka};
use sagaflow_schemas::{Message, RejectOrder, topics};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::stats::percentile;

#[derive(Debug, Clone, clap::Args)]
pub struct RelayBenchArgs {
    /// PostgreSQL server URL (a scratch database is created there); default: the dev cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Kafka brokers; default: an embedded broker on a free port.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Steady-state write rate (rows/s).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Steady-state duration (s).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Backlog rows for the drain phase.
    #[arg(long, default_value_t = 50_000)]
    pub drain_rows: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = ".sagaflow")]
    pub data_dir: std::path::PathBuf,
}

fn message(order_id: Uuid) -> Message {
    RejectOrder {
        order_id,
        reason: "benchmark row of a typical size: out of stock for SKU-1".into(),
    }
    .into()
}

fn origin(order_id: Uuid) -> Origin {
    Origin {
        source: "bench",
        correlation_id: order_id,
        causation_id: None,
        traceparent: None,
    }
}

pub(super) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

pub async fn run(args: RelayBenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let brokers = match &args.kafka_brokers {
        Some(b) => b.clone(),
        None => crate::broker::spawn_on_free_port(shutdown.clone()).await?,
    };
    let mut config = KafkaConfig::new(
        brokers,
        format!("bench{}.", &Uuid::new_v4().simple().to_string()[..6]),
    )
    .without_compression_on_loopback();
    config.partitions = 4;
    kafka::ensure_topics(&config, &[topics::ORDERS_COMMANDS]).await?;
    let server = match &args.database_url {
        Some(url) => crate::dev::split_database(url).0,
        None => crate::dev::local_cluster(&args.data_dir).await?,
    };
    let name = format!("bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
    crate::dev::ensure_database(&server, &name).await?;
    let measured = measure(&crate::dev::database_url(&server, &name), &config, &args).await;
    // The scratch database goes whether the run succeeded or not (best effort: a database left
    // behind is only disk space, and the run's own error matters more).
    if let Err(e) = crate::dev::drop_database(&server, &name).await {
        eprintln!("could not drop the scratch database {name}: {e:#}");
    }
    let Measured {
        produce_per_s,
        latencies,
        drained,
        drain_per_s,
    } = measured?;
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));

    let report = json!({
        "baseline_produce_per_s": produce_per_s.round(),
        "steady_rate_per_s": args.rate,
        "steady_rows": latencies.len(),
        "commit_to_ack_p50_ms": (p50 * 100.0).round() / 100.0,
        "commit_to_ack_p99_ms": (p99 * 100.0).round() / 100.0,
        "drain_rows": drained,
        "drain_per_s": drain_per_s.round(),
        "drain_vs_baseline": (drain_per_s / produce_per_s * 1000.0).round() / 1000.0,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("\nrelay benchmark (same broker, same database, same run)");
        println!(
            "  raw produce baseline        {:>10.0} msg/s",
            produce_per_s
        );
        println!(
            "  steady rate                 {:>10} rows/s for {} s ({} rows)",
            args.rate,
            args.duration,
            latencies.len()
        );
        println!(
            "  commit→ack p50 / p99        {:>10.2} / {:.2} ms",
            p50, p99
        );
        println!(
            "  backlog drain               {:>10.0} rows/s ({drained} rows, {:.0}% of raw produce)",
            drain_per_s,
            drain_per_s / produce_per_s * 100.0
        );
    }
    Ok(())
}

/// What the three phases measured.
struct Measured {
    produce_per_s: f64,
    /// Commit→ack of each steady row, ms, sorted.
    latencies: Vec<f64>,
    drained: usize,
    drain_per_s: f64,
}

async fn measure(
    database_url: &str,
    config: &KafkaConfig,
    args: &RelayBenchArgs,
) -> anyhow::Result<Measured> {
    let pool = sagaflow_runtime::db::connect(database_url, 8).await?;
    order_service::MIGRATOR.run(&pool).await?;
    let producer = kafka::producer(config)?;
    let produce_per_s = produce_baseline(&producer, config, args.drain_rows.max(10_000)).await?;
    let latencies = steady_commit_to_ack(&pool, &producer, config, args).await?;
    let (drained, drain_per_s) = drain_backlog(&pool, &producer, config, args.drain_rows).await?;
    pool.close().await;
    Ok(Measured {
        produce_per_s,
        latencies,
        drained,
        drain_per_s,
    })
}

/// 1. The baseline: the raw produce rate of `n` of the same messages, all sent at once, with
///    no database and no relay — the ceiling the drain is a share of.
async fn produce_baseline(
    producer: &FutureProducer,
    config: &KafkaConfig,
    n: usize,
) -> anyhow::Result<f64> {
    let encoded = message(Uuid::now_v7()).encode()?;
    let topic = config.topic(topics::ORDERS_COMMANDS);
    let progress = bar(n as u64, "baseline");
    let started = Instant::now();
    let keys: Vec<String> = (0..n).map(|_| Uuid::now_v7().to_string()).collect();
    let sends = keys.iter().map(|key| {
        let record = FutureRecord::to(&topic)
            .key(key.as_bytes())
            .payload(encoded.bytes.as_slice());
        let progress = progress.clone();
        let send = producer.send(record, Duration::from_secs(30));
        async move {
            let result = send.await;
            progress.inc(1);
            result
        }
    });
    let results = futures::future::join_all(sends).await;
    let secs = started.elapsed().as_secs_f64();
    progress.finish();
    anyhow::ensure!(results.iter().all(|r| r.is_ok()), "baseline sends failed");
    Ok(n as f64 / secs)
}

/// 2. Rows committed at `args.rate` for `args.duration` by four open-loop writers while a
///    relay runs; each row's commit→ack latency in ms, sorted.
async fn steady_commit_to_ack(
    pool: &PgPool,
    producer: &FutureProducer,
    config: &KafkaConfig,
    args: &RelayBenchArgs,
) -> anyhow::Result<Vec<f64>> {
    let stop_relay = CancellationToken::new();
    let relay = Relay::new(
        pool.clone(),
        producer.clone(),
        config.clone(),
        RelayConfig::new("bench"),
    );
    let relay_task = tokio::spawn(relay.run(stop_relay.clone()));
    let total = (args.rate * args.duration) as usize;
    let commits: Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>> = Arc::default();
    let progress = bar(total as u64, "steady");
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let writers = 4;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (pool, commits, progress) = (pool.clone(), commits.clone(), progress.clone());
        tasks.spawn(async move {
            // Open loop: row i is due at start + i * interval, whatever happened before.
            for i in (w..total).step_by(writers) {
                tokio::time::sleep_until(start + interval * i as u32).await;
                let order = Uuid::now_v7();
                let mut tx = pool.begin().await?;
                let id = enqueue(&mut tx, &message(order), &origin(order)).await?;
                tx.commit().await?;
                commits.lock().await.insert(id, Utc::now());
                progress.inc(1);
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    progress.finish();
    wait_drained(pool).await?;
    stop_relay.cancel();
    relay_task.await??;
    let published: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT message_id, published_at FROM outbox WHERE published_at IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    let commits = commits.lock().await;
    let mut latencies: Vec<f64> = published
        .iter()
        .filter_map(|(id, at)| {
            commits
                .get(id)
                .map(|c| (*at - *c).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        })
        .map(|ms| ms.max(0.0))
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok(latencies)
}

/// 3. A backlog of `rows` written with no relay running, then drained by one relay's passes:
///    how many rows it published, and how many per second.
async fn drain_backlog(
    pool: &PgPool,
    producer: &FutureProducer,
    config: &KafkaConfig,
    rows: usize,
) -> anyhow::Result<(usize, f64)> {
    sqlx::query("TRUNCATE outbox").execute(pool).await?;
    let progress = bar(rows as u64, "backlog");
    write_backlog(pool, rows, &progress).await?;
    progress.finish();
    let relay = Relay::new(
        pool.clone(),
        producer.clone(),
        config.clone(),
        RelayConfig::new("bench"),
    );
    let progress = bar(rows as u64, "drain");
    let started = Instant::now();
    // As `Relay::run` does before its first pass (timed: it is part of draining).
    relay.refresh_planner_stats().await;
    let mut drained = 0;
    loop {
        let n = relay.publish_once().await?;
        if n == 0 {
            break;
        }
        drained += n;
        progress.set_position(drained as u64);
    }
    let secs = started.elapsed().as_secs_f64();
    progress.finish();
    Ok((drained, drained as f64 / secs))
}

async fn wait_drained(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(pool)
                .await?;
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{pending} rows still pending after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Write `rows` outbox rows quickly (1 000 per transaction).
async fn write_backlog(pool: &PgPool, rows: usize, progress: &ProgressBar) -> anyhow::Result<()> {
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let mut tx = pool.begin().await?;
        for _ in chunk {
            let order = Uuid::now_v7();
            enqueue(&mut tx, &message(order), &origin(order)).await?;
        }
        tx.commit().await?;
        progress.inc(chunk.len() as u64);
    }
    Ok(())
}
