//! `sagaflow bench`: the whole order saga under an open-loop load, against baselines measured
//! in the same run on the same database and broker.
//!
//! 1. Baselines (platform not started yet): the raw PostgreSQL commit rate of the
//!    POST /orders transaction (idempotency key + order row + outbox row, synchronous commit as
//!    configured on the server) with the platform's connection count, on a scratch database;
//!    and the raw produce rate of the idempotent producer on the same broker.
//! 2. The platform in-process (like `sagaflow dev`), scratch databases, plenty of stock.
//! 3. Ramp: fixed-rate steps, the rate grown geometrically until a step is not sustainable
//!    (HTTP or the sagas fall behind), refined once between the last good and the first bad rate.
//! 4. Accept burst: short steps above the saga ceiling, judged on HTTP only (the HTTP accept
//!    ceiling), then the backlog drains (the saga drain rate).
//! 5. Run at half the max sustainable rate: the latency figures.
//!
//! Open loop: request i of a step is due at start + i / rate and latency counts from that due
//! time, so a stall cannot hide by delaying the requests behind it. Completion is read from
//! the order database after each step (orders.updated_at of APPROVED / REJECTED rows), so
//! measuring adds no load while the step runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use payment_service::{PaymentConfig, ProviderFaults, spawn_provider};
use rdkafka::producer::FutureRecord;
use saga_orchestrator::SagaConfig;
use sagaflow_messaging::{Origin, enqueue};
use sagaflow_platform::{self as platform, DatabaseUrls, Platform, PlatformConfig};
use sagaflow_runtime::{KafkaConfig, kafka};
use sagaflow_schemas::{Message, OrderItem, OrderPlaced};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::relay::bar;
use super::stats::{
    Limits, Percentiles, StepOutcome, Verdict, due, judge, ms, next_rate, ratio, requests_in,
    summary,
};

#[derive(Debug, Clone, clap::Args)]
pub struct SagaBenchArgs {
    /// PostgreSQL server URL (scratch databases are created there); default: the dev cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Kafka brokers; default: an embedded broker on a free port.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Seconds of load in all (ramp + accept burst + the run at half the max sustainable
    /// rate); settling waits between steps come on top.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Fixed arrival rate (orders/s): no ramp, one run at this rate for --duration.
    #[arg(long)]
    pub rate: Option<f64>,
    /// First rate of the ramp (orders/s).
    #[arg(long, default_value_t = 50.0)]
    pub start_rate: f64,
    /// Growth of the rate from one ramp step to the next.
    #[arg(long, default_value_t = 1.5)]
    pub ramp_factor: f64,
    /// Seconds of one ramp step.
    #[arg(long, default_value_t = 2.0)]
    pub step_secs: f64,
    /// Connections per database pool, of the platform and of the commit baseline.
    #[arg(long, default_value_t = 8)]
    pub connections: u32,
    /// A step is sustainable only if HTTP accept p99 stays under this (ms)…
    #[arg(long, default_value_t = 100.0)]
    pub max_accept_p99_ms: f64,
    /// …and saga (POST → APPROVED) p99 under this (ms).
    #[arg(long, default_value_t = 1000.0)]
    pub max_saga_p99_ms: f64,
    /// Seconds of the commit baseline loop.
    #[arg(long, default_value_t = 5.0)]
    pub baseline_secs: f64,
    /// Messages of the produce baseline.
    #[arg(long, default_value_t = 20_000)]
    pub produce_messages: usize,
    /// Keep the scratch databases (default: dropped at the end).
    #[arg(long)]
    pub keep_databases: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = ".sagaflow")]
    pub data_dir: PathBuf,
}

/// More requests in flight than this counts as an error (the client, not the server, would
/// be the bottleneck).
const MAX_IN_FLIGHT: usize = 4096;
/// SKUs the orders spread over (one hot row would measure lock contention, not the platform).
const SKUS: usize = 64;
/// Longest wait for a step's sagas after its last request.
const GRACE: Duration = Duration::from_secs(3);
/// Longest wait for a backlog to drain between phases.
const DRAIN: Duration = Duration::from_secs(45);

pub async fn run(args: SagaBenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let result = tokio::select! {
        result = bench(args, shutdown.clone()) => result,
        _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
    };
    if result.is_ok() {
        // The report is out and the platform stopped. Leave now: tearing the runtime down
        // with the embedded broker's tasks and librdkafka's threads still alive can block for
        // a long time on connections to a broker that is already gone.
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    }
    result
}

async fn bench(args: SagaBenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(args.duration >= 1, "--duration must be at least 1 s");
    let progress = |what: &str| {
        if !args.json {
            eprintln!("{what}");
        }
    };
    // Infrastructure
    let brokers = match &args.kafka_brokers {
        Some(b) => b.clone(),
        None => crate::broker::spawn_on_free_port(shutdown.clone()).await?,
    };
    let tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut kafka_config = KafkaConfig::new(brokers.clone(), format!("sfbench{tag}."));
    kafka_config.partitions = 4;
    let server = match &args.database_url {
        Some(url) => crate::dev::split_database(url).0,
        None => crate::dev::local_cluster(&args.data_dir).await?,
    };
    let base = format!("bench_{tag}");
    let mut databases = Vec::new();
    let services = [
        "order",
        "inventory",
        "payment",
        "notification",
        "saga",
        "query",
    ];
    for service in services.iter().copied().chain(["baseline"]) {
        databases.push(crate::dev::ensure_database(&server, &format!("{base}_{service}")).await?);
    }
    let url = |name: &str| format!("{server}/{base}_{name}");

    // 1. Baselines, before the platform runs.
    progress("baseline: PostgreSQL commits of the POST /orders transaction");
    let baseline_pool = sagaflow_runtime::db::connect(&url("baseline"), args.connections).await?;
    order_service::MIGRATOR.run(&baseline_pool).await?;
    let settings: (String, String) =
        sqlx::query_as("SELECT current_setting('synchronous_commit'), current_setting('fsync')")
            .fetch_one(&baseline_pool)
            .await?;
    let commit_per_s =
        commit_baseline(&baseline_pool, args.connections, args.baseline_secs).await?;
    baseline_pool.close().await;
    progress("baseline: raw produce");
    let produce_per_s = produce_baseline(&kafka_config, args.produce_messages).await?;

    // 2. The platform.
    progress("starting the platform");
    let provider_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let provider_url = format!("http://{}", provider_listener.local_addr()?);
    spawn_provider(
        provider_listener,
        ProviderFaults::default(),
        shutdown.clone(),
    )
    .await;
    let config = || PlatformConfig {
        databases: DatabaseUrls {
            order: url("order"),
            inventory: url("inventory"),
            payment: url("payment"),
            notification: url("notification"),
            saga: url("saga"),
            query: url("query"),
        },
        kafka: kafka_config.clone(),
        payment: PaymentConfig::new(provider_url.clone()),
        saga: SagaConfig::default(),
        orders: Default::default(),
        pool_size: args.connections,
        request_timeout: Duration::from_secs(10),
        // The benchmark is one client pushing thousands of requests per second: open.
        security: Default::default(),
        relay_batch_size: sagaflow_messaging::relay::DEFAULT_BATCH_SIZE,
        query: Default::default(),
    };
    let mut platform = start_platform(config).await?;
    let stock: Vec<(String, i32)> = (0..SKUS).map(|i| (sku(i), 1_000_000_000)).collect();
    let stock: Vec<(&str, i32)> = stock.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    inventory_service::seed(&platform.pools.inventory, &stock).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = listener.local_addr()?;
    platform.serve(listener, &kafka_config);
    let load = Load {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .timeout(Duration::from_secs(30))
            .build()?,
        url: format!("http://{http}/orders"),
    };
    let orders = platform.pools.order.clone();
    // Warm up: connections, topic metadata, consumer group assignment.
    progress("warming up");
    let warm = drive(&load, 20.0, 2.0, args.json).await;
    settle(&orders, &warm, Duration::from_secs(30)).await?;

    let limits = Limits {
        max_accept_p99_ms: args.max_accept_p99_ms,
        max_saga_p99_ms: args.max_saga_p99_ms,
        max_loss: 0.01,
    };
    let mut steps: Vec<StepReport> = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let total = args.duration as f64;
    let (run_rate, run_secs, drain_sagas_per_s) = match args.rate {
        Some(rate) => (rate, total, None),
        None => {
            // 3. Ramp
            let ramp_budget = total * 0.5;
            let mut spent = 0.0;
            let mut rate = args.start_rate;
            let mut good: Option<f64> = None;
            let mut bad: Option<f64> = None;
            let mut refinements = 0;
            while spent + args.step_secs <= ramp_budget + 1e-9 {
                progress(&format!(
                    "ramp: {rate:.0} orders/s for {} s",
                    args.step_secs
                ));
                let drove = drive(&load, rate, args.step_secs, args.json).await;
                spent += args.step_secs;
                let completions = settle(&orders, &drove, GRACE).await?;
                let step = StepReport::new("ramp", &drove, &completions, &limits);
                step.count_errors(&mut errors);
                let verdict = step.verdict;
                steps.push(step);
                if verdict.saga_ok {
                    good = Some(good.map_or(rate, |g: f64| g.max(rate)));
                } else {
                    bad = Some(bad.map_or(rate, |b: f64| b.min(rate)));
                    // Let the backlog of a failed step drain before the next one.
                    drain(&orders, DRAIN).await?;
                }
                rate = match (good, bad) {
                    (_, None) => next_rate(rate, args.ramp_factor),
                    (Some(g), Some(b)) if refinements < 2 && b / g > 1.15 => {
                        refinements += 1;
                        (g * b).sqrt().round()
                    }
                    (None, Some(b)) if refinements < 2 && b > 1.0 => {
                        refinements += 1;
                        (b / 2.0).round().max(1.0)
                    }
                    _ => break,
                };
            }
            // 4. Accept burst above the saga ceiling: HTTP only, 1 s steps, no drain between.
            let saga_ceiling = good.unwrap_or(args.start_rate);
            let burst_budget = total * 0.2;
            let mut burst_rate = next_rate(
                bad.unwrap_or(saga_ceiling).max(saga_ceiling),
                args.ramp_factor,
            );
            let mut burst_spent = 0.0;
            let mut burst: Vec<Drive> = Vec::new();
            while burst_spent + 1.0 <= burst_budget + 1e-9 {
                progress(&format!("accept burst: {burst_rate:.0} orders/s for 1 s"));
                let drove = drive(&load, burst_rate, 1.0, args.json).await;
                burst_spent += 1.0;
                let step = StepReport::new("burst", &drove, &[], &limits);
                step.count_errors(&mut errors);
                let accept_ok = step.verdict.accept_ok;
                steps.push(step);
                burst.push(drove);
                if !accept_ok {
                    break;
                }
                burst_rate = next_rate(burst_rate, args.ramp_factor);
            }
            let drain_rate = if burst.is_empty() {
                None
            } else {
                progress("draining the burst backlog");
                let started = Instant::now();
                let before = terminal_count(&orders).await?;
                let pending = drain(&orders, DRAIN).await?;
                let done = terminal_count(&orders).await? - before;
                let secs = started.elapsed().as_secs_f64();
                (pending == 0 || done > 0).then_some(done as f64 / secs.max(1e-3))
            };
            let half = (saga_ceiling / 2.0).round().max(1.0);
            let run_secs = (total - spent - burst_spent).max(5.0);
            (half, run_secs, drain_rate)
        }
    };

    // 5. The run at half the max sustainable rate (or at --rate).
    progress(&format!(
        "measured run: {run_rate:.0} orders/s for {run_secs:.0} s"
    ));
    let drove = drive(&load, run_rate, run_secs, args.json).await;
    let completions = settle(&orders, &drove, Duration::from_secs(10)).await?;
    let run = StepReport::new("run", &drove, &completions, &limits);
    run.count_errors(&mut errors);
    let relay = relay_figures(&platform, &drove).await?;
    steps.push(run.clone());
    let pending_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING'")
            .fetch_one(&orders)
            .await?;

    let sustainable: Vec<&StepReport> = steps
        .iter()
        .filter(|s| s.phase == "ramp" && s.verdict.saga_ok)
        .collect();
    let max_sustainable = match args.rate {
        Some(_) => None,
        None => sustainable.iter().map(|s| s.rate).reduce(f64::max),
    };
    let accepted_per_s = steps
        .iter()
        .filter(|s| s.verdict.accept_ok)
        .map(|s| s.accepted_per_s)
        .fold(0.0, f64::max);
    let sagas_per_s = steps
        .iter()
        .filter(|s| s.verdict.saga_ok && s.phase != "burst")
        .map(|s| s.sagas_per_s)
        .fold(0.0, f64::max);
    let error_total: u64 = errors.values().sum();

    let report = json!({
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "settings": {
            "duration_s": args.duration, "connections": args.connections,
            "step_secs": args.step_secs, "ramp_factor": args.ramp_factor,
            "max_accept_p99_ms": args.max_accept_p99_ms, "max_saga_p99_ms": args.max_saga_p99_ms,
            "synchronous_commit": settings.0, "fsync": settings.1,
        },
        "baseline_commit_per_s": commit_per_s.round(),
        "baseline_produce_per_s": produce_per_s.round(),
        "max_sustainable_rate": max_sustainable,
        "accepted_per_s": accepted_per_s.round(),
        "accepted_vs_commit_baseline": ratio(accepted_per_s, commit_per_s),
        "sagas_per_s": sagas_per_s.round(),
        "sagas_vs_commit_baseline": ratio(sagas_per_s, commit_per_s),
        "drain_sagas_per_s": drain_sagas_per_s.map(f64::round),
        "drain_sagas_vs_commit_baseline": drain_sagas_per_s.map(|d| ratio(d, commit_per_s)),
        "run_rate": run_rate,
        "run_secs": run_secs,
        "run_accepted_per_s": run.accepted_per_s.round(),
        "run_sagas_per_s": run.sagas_per_s.round(),
        "accept_p50_ms": ms(run.accept.p50),
        "accept_p95_ms": ms(run.accept.p95),
        "accept_p99_ms": ms(run.accept.p99),
        "saga_p50_ms": ms(run.saga.p50),
        "saga_p95_ms": ms(run.saga.p95),
        "saga_p99_ms": ms(run.saga.p99),
        "relay_commit_to_ack_p50_ms": ms(relay.commit_to_ack.p50),
        "relay_commit_to_ack_p99_ms": ms(relay.commit_to_ack.p99),
        "relay_msgs_per_s": relay.msgs_per_s.round(),
        "relay_vs_produce_baseline": ratio(relay.msgs_per_s, produce_per_s),
        "approved": run.approved,
        "rejected": run.rejected,
        "pending_at_end": pending_after,
        "errors": error_total,
        "error_kinds": errors,
        "steps": steps.iter().map(StepReport::to_json).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{report}");
    } else {
        print_table(&report, &steps);
    }

    // Bounded: a consumer leaving its group on the embedded broker can hang.
    if tokio::time::timeout(Duration::from_secs(15), platform.stop())
        .await
        .is_err()
    {
        tracing::warn!("the platform did not stop within 15 s; leaving anyway");
    }
    if !args.keep_databases {
        for name in &databases {
            let _ = drop_database(&server, name).await;
        }
    }
    Ok(())
}

fn sku(i: usize) -> String {
    format!("BENCH-{i:02}")
}

async fn start_platform(config: impl Fn() -> PlatformConfig) -> anyhow::Result<Platform> {
    let mut last = None;
    for _ in 0..20 {
        match platform::start(config()).await {
            Ok(platform) => return Ok(platform),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("platform did not start")))
}

async fn drop_database(server: &str, name: &str) -> anyhow::Result<()> {
    use sqlx::{Connection, Executor};
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    let drop = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "")
    );
    admin
        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(drop)))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Baselines

fn placed(order_id: Uuid, customer_id: Uuid) -> OrderPlaced {
    OrderPlaced {
        order_id,
        customer_id,
        items: vec![OrderItem {
            sku: sku(0),
            quantity: 1,
            unit_price_cents: 1250,
        }],
        total_cents: 1250,
        currency: "EUR".into(),
        payment_method: "pm_card_visa".into(),
        placed_at: Utc::now().timestamp_millis(),
    }
}

/// The statements of POST /orders (order-service `place_order`), committed one transaction at
/// a time by `connections` concurrent workers for `secs`.
async fn commit_baseline(pool: &PgPool, connections: u32, secs: f64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut workers = JoinSet::new();
    for _ in 0..connections {
        let pool = pool.clone();
        workers.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                order_transaction(&pool).await?;
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let mut total = 0;
    while let Some(joined) = workers.join_next().await {
        total += joined??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn order_transaction(pool: &PgPool) -> anyhow::Result<()> {
    let (order_id, customer_id) = (Uuid::now_v7(), Uuid::new_v4());
    let items = json!([{"sku": sku(0), "quantity": 1, "unit_price_cents": 1250}]);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO idempotency_keys (key, request_hash, order_id) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(format!("{:064x}", order_id.as_u128()))
    .bind(order_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO orders (id, customer_id, status, items, total_cents, currency, payment_method)
         VALUES ($1, $2, 'PENDING', $3, $4, $5, $6)",
    )
    .bind(order_id)
    .bind(customer_id)
    .bind(sqlx::types::Json(&items))
    .bind(1250i64)
    .bind("EUR")
    .bind("pm_card_visa")
    .execute(&mut *tx)
    .await?;
    let origin = Origin {
        source: order_service::NAME,
        correlation_id: order_id,
        causation_id: None,
        traceparent: None,
    };
    enqueue(&mut tx, &placed(order_id, customer_id).into(), &origin).await?;
    tx.commit().await?;
    Ok(())
}

/// The idempotent producer (acks=all) alone, sending OrderPlaced-sized messages as fast as
/// it can.
async fn produce_baseline(config: &KafkaConfig, n: usize) -> anyhow::Result<f64> {
    let topic_name = "bench.produce-baseline";
    kafka::ensure_topics(config, &[topic_name]).await?;
    let producer = kafka::producer(config)?;
    let message: Message = placed(Uuid::now_v7(), Uuid::new_v4()).into();
    let encoded = message.encode()?;
    let topic = config.topic(topic_name);
    let keys: Vec<String> = (0..n).map(|_| Uuid::now_v7().to_string()).collect();
    let started = Instant::now();
    let sends = keys.iter().map(|key| {
        let record = FutureRecord::to(&topic)
            .key(key.as_bytes())
            .payload(encoded.bytes.as_slice());
        producer.send(record, Duration::from_secs(30))
    });
    let results = futures::future::join_all(sends).await;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        results.iter().all(|r| r.is_ok()),
        "produce baseline sends failed"
    );
    Ok(n as f64 / secs)
}

// ---------------------------------------------------------------------------------------
// Load

struct Load {
    client: reqwest::Client,
    url: String,
}

/// One scheduled request.
struct Sample {
    /// Intended send time, from the step's start.
    due: Duration,
    /// When the answer was read, from the step's start.
    answered: Duration,
    outcome: Result<Uuid, String>,
}

/// One fixed-rate step.
struct Drive {
    rate: f64,
    secs: f64,
    /// Wall clock of the step's start (to compare with database timestamps).
    start_wall: DateTime<Utc>,
    samples: Vec<Sample>,
}

impl Drive {
    fn accepted(&self) -> Vec<Uuid> {
        self.samples
            .iter()
            .filter_map(|s| s.outcome.as_ref().ok().copied())
            .collect()
    }
}

/// Send `rate` × `secs` orders open-loop: each at its due time, each on its own task.
async fn drive(load: &Load, rate: f64, secs: f64, quiet: bool) -> Drive {
    let n = requests_in(rate, secs);
    let progress = if quiet {
        ProgressBar::hidden()
    } else {
        bar(n, &format!("{rate:.0}/s"))
    };
    let start = Instant::now();
    let start_wall = Utc::now();
    let mut in_flight = JoinSet::new();
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = due(i, rate);
        tokio::time::sleep_until(start + at).await;
        while let Some(done) = in_flight.try_join_next() {
            samples.push(done.unwrap_or_else(|e| failed(at, start, format!("task: {e}"))));
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            samples.push(failed(at, start, "client saturated".into()));
            continue;
        }
        let request = load
            .client
            .post(&load.url)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&json!({
                "customer_id": Uuid::new_v4(),
                "items": [{"sku": sku(i as usize % SKUS), "quantity": 1, "unit_price_cents": 1250}],
                "currency": "EUR",
                "payment_method": "pm_card_visa",
            }));
        let progress = progress.clone();
        in_flight.spawn(async move {
            let outcome = match request.send().await {
                Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                    match response.json::<Value>().await {
                        Ok(body) => body["order_id"]
                            .as_str()
                            .and_then(|id| Uuid::parse_str(id).ok())
                            .ok_or_else(|| "202 without order_id".to_string()),
                        Err(e) => Err(format!("reading the answer: {}", kind(&e))),
                    }
                }
                Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
                Err(e) => Err(kind(&e)),
            };
            progress.inc(1);
            Sample {
                due: at,
                answered: start.elapsed(),
                outcome,
            }
        });
    }
    while let Some(done) = in_flight.join_next().await {
        let at = due(n, rate);
        samples.push(done.unwrap_or_else(|e| failed(at, start, format!("task: {e}"))));
    }
    progress.finish_and_clear();
    Drive {
        rate,
        secs,
        start_wall,
        samples,
    }
}

fn failed(due: Duration, start: Instant, why: String) -> Sample {
    Sample {
        due,
        answered: start.elapsed(),
        outcome: Err(why),
    }
}

fn kind(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect".into()
    } else {
        format!("transport: {error}")
    }
}

/// A completed saga: the order's terminal status and when it was written.
struct Completion {
    id: Uuid,
    status: String,
    at: DateTime<Utc>,
}

/// Wait (up to `grace`) until every accepted order of `drove` left PENDING; read their
/// terminal status and time from the order database.
async fn settle(pool: &PgPool, drove: &Drive, grace: Duration) -> anyhow::Result<Vec<Completion>> {
    let ids = drove.accepted();
    let deadline = Instant::now() + grace;
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE id = ANY($1) AND status <> 'PENDING'",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        if done as usize >= ids.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, status, updated_at FROM orders WHERE id = ANY($1) AND status <> 'PENDING'",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, status, at)| Completion { id, status, at })
        .collect())
}

async fn terminal_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'PENDING'")
            .fetch_one(pool)
            .await?,
    )
}

/// Wait (up to `bound`) until no order is PENDING; the number still pending.
async fn drain(pool: &PgPool, bound: Duration) -> anyhow::Result<i64> {
    let deadline = Instant::now() + bound;
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING'")
                .fetch_one(pool)
                .await?;
        if pending == 0 || Instant::now() >= deadline {
            return Ok(pending);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Figures

#[derive(Debug, Clone)]
struct StepReport {
    phase: &'static str,
    rate: f64,
    secs: f64,
    outcome: StepOutcome,
    verdict: Verdict,
    accept: Percentiles,
    saga: Percentiles,
    accepted_per_s: f64,
    sagas_per_s: f64,
    approved: u64,
    rejected: u64,
    error_kinds: BTreeMap<String, u64>,
}

impl StepReport {
    fn new(
        phase: &'static str,
        drove: &Drive,
        completions: &[Completion],
        limits: &Limits,
    ) -> Self {
        let mut accept_ms = Vec::new();
        let mut due_of = std::collections::HashMap::new();
        let mut error_kinds = BTreeMap::new();
        let mut last_answer = Duration::ZERO;
        for sample in &drove.samples {
            match &sample.outcome {
                Ok(id) => {
                    accept_ms
                        .push(sample.answered.saturating_sub(sample.due).as_secs_f64() * 1000.0);
                    due_of.insert(*id, sample.due);
                    last_answer = last_answer.max(sample.answered);
                }
                Err(kind) => *error_kinds.entry(kind.clone()).or_insert(0) += 1,
            }
        }
        let mut saga_ms = Vec::new();
        let (mut approved, mut rejected) = (0, 0);
        let mut last_completion = drove.start_wall;
        for c in completions {
            let Some(due) = due_of.get(&c.id) else {
                continue;
            };
            let intended = drove.start_wall
                + chrono::Duration::from_std(*due).unwrap_or(chrono::Duration::zero());
            let latency = (c.at - intended).num_microseconds().unwrap_or(0) as f64 / 1000.0;
            saga_ms.push(latency.max(0.0));
            last_completion = last_completion.max(c.at);
            if c.status == "APPROVED" {
                approved += 1;
            } else {
                rejected += 1;
            }
        }
        let accepted = accept_ms.len() as u64;
        let completed = saga_ms.len() as u64;
        let accept = summary(&mut accept_ms);
        let saga = summary(&mut saga_ms);
        let outcome = StepOutcome {
            offered: drove.samples.len() as u64,
            accepted,
            errors: error_kinds.values().sum(),
            accept_p99_ms: if accepted == 0 {
                f64::INFINITY
            } else {
                accept.p99
            },
            completed,
            saga_p99_ms: if completed == 0 {
                f64::INFINITY
            } else {
                saga.p99
            },
        };
        let window = (last_completion - drove.start_wall)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        StepReport {
            phase,
            rate: drove.rate,
            secs: drove.secs,
            verdict: judge(&outcome, limits),
            outcome,
            accept,
            saga,
            accepted_per_s: accepted as f64 / last_answer.as_secs_f64().max(drove.secs),
            sagas_per_s: if window > 0.0 {
                completed as f64 / window.max(drove.secs)
            } else {
                0.0
            },
            approved,
            rejected,
            error_kinds,
        }
    }

    fn count_errors(&self, into: &mut BTreeMap<String, u64>) {
        for (kind, n) in &self.error_kinds {
            *into.entry(kind.clone()).or_insert(0) += n;
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "phase": self.phase,
            "rate": self.rate,
            "secs": self.secs,
            "offered": self.outcome.offered,
            "accepted": self.outcome.accepted,
            "completed": self.outcome.completed,
            "errors": self.outcome.errors,
            "accepted_per_s": self.accepted_per_s.round(),
            "sagas_per_s": self.sagas_per_s.round(),
            "accept_p50_ms": ms(self.accept.p50),
            "accept_p99_ms": ms(self.accept.p99),
            "saga_p50_ms": ms(self.saga.p50),
            "saga_p99_ms": ms(self.saga.p99),
            "accept_ok": self.verdict.accept_ok,
            "saga_ok": self.verdict.saga_ok,
        })
    }
}

struct RelayFigures {
    commit_to_ack: Percentiles,
    msgs_per_s: f64,
}

/// Outbox rows of every database written during `drove`'s window (plus its settling): the
/// relay's `published_at − created_at` (created_at is the row's insert time, just before its
/// transaction commits), and the rows published per second during the window.
async fn relay_figures(platform: &Platform, drove: &Drive) -> anyhow::Result<RelayFigures> {
    let from = drove.start_wall;
    let to = from + chrono::Duration::milliseconds((drove.secs * 1000.0) as i64);
    let pools = &platform.pools;
    let mut latencies = Vec::new();
    let mut published = 0i64;
    for pool in [
        &pools.order,
        &pools.inventory,
        &pools.payment,
        &pools.notification,
        &pools.saga,
    ] {
        let rows: Vec<(f64,)> = sqlx::query_as(
            "SELECT (EXTRACT(EPOCH FROM (published_at - created_at)) * 1000)::float8 FROM outbox
             WHERE created_at >= $1 AND created_at < $2 AND published_at IS NOT NULL",
        )
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await
        .context("reading outbox latencies")?;
        latencies.extend(rows.into_iter().map(|(ms,)| ms.max(0.0)));
        published += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox WHERE published_at >= $1 AND published_at < $2",
        )
        .bind(from)
        .bind(to)
        .fetch_one(pool)
        .await?;
    }
    Ok(RelayFigures {
        commit_to_ack: summary(&mut latencies),
        msgs_per_s: published as f64 / drove.secs,
    })
}

fn print_table(report: &Value, steps: &[StepReport]) {
    let f = |key: &str| match &report[key] {
        Value::Null => "—".to_string(),
        v => v.to_string(),
    };
    println!("\nsaga benchmark (same database server, same broker, same run)");
    println!("  steps:");
    println!(
        "    {:<6} {:>7} {:>10} {:>9} {:>10} {:>9} {:>7}  verdict",
        "phase", "rate", "accepted/s", "accept99", "sagas/s", "saga99", "errors"
    );
    for s in steps {
        let verdict = match (s.verdict.accept_ok, s.verdict.saga_ok, s.phase) {
            (_, _, "run") => "",
            (true, true, _) => "sustainable",
            (true, false, "burst") => "accept ok",
            (true, false, _) => "sagas behind",
            _ => "HTTP behind",
        };
        println!(
            "    {:<6} {:>7.0} {:>10.0} {:>9} {:>10.0} {:>9} {:>7}  {verdict}",
            s.phase,
            s.rate,
            s.accepted_per_s,
            ms(s.accept.p99).map_or("—".into(), |v| format!("{v:.1}")),
            s.sagas_per_s,
            ms(s.saga.p99).map_or("—".into(), |v| format!("{v:.1}")),
            s.outcome.errors,
        );
    }
    println!();
    println!(
        "  baseline: PostgreSQL commits      {:>8} tx/s  (POST /orders transaction, {} connections, synchronous_commit={})",
        f("baseline_commit_per_s"),
        report["settings"]["connections"],
        report["settings"]["synchronous_commit"]
            .as_str()
            .unwrap_or("?"),
    );
    println!(
        "  baseline: raw produce             {:>8} msg/s",
        f("baseline_produce_per_s")
    );
    println!(
        "  max sustainable rate              {:>8} orders/s",
        f("max_sustainable_rate")
    );
    println!(
        "  accepted orders/s (HTTP ceiling)  {:>8}       {} × commit baseline",
        f("accepted_per_s"),
        f("accepted_vs_commit_baseline")
    );
    println!(
        "  completed sagas/s (sustained)     {:>8}       {} × commit baseline",
        f("sagas_per_s"),
        f("sagas_vs_commit_baseline")
    );
    println!(
        "  completed sagas/s (backlog drain) {:>8}       {} × commit baseline",
        f("drain_sagas_per_s"),
        f("drain_sagas_vs_commit_baseline")
    );
    println!("  at {} orders/s for {} s:", f("run_rate"), f("run_secs"));
    println!(
        "    HTTP accept p50/p95/p99         {} / {} / {} ms",
        f("accept_p50_ms"),
        f("accept_p95_ms"),
        f("accept_p99_ms")
    );
    println!(
        "    saga POST→APPROVED p50/p95/p99  {} / {} / {} ms",
        f("saga_p50_ms"),
        f("saga_p95_ms"),
        f("saga_p99_ms")
    );
    println!(
        "    relay commit→ack p50/p99        {} / {} ms",
        f("relay_commit_to_ack_p50_ms"),
        f("relay_commit_to_ack_p99_ms")
    );
    println!(
        "    relay messages/s                {}   {} × produce baseline",
        f("relay_msgs_per_s"),
        f("relay_vs_produce_baseline")
    );
    println!(
        "    approved / rejected             {} / {}",
        f("approved"),
        f("rejected")
    );
    println!(
        "  errors                            {}  {}",
        f("errors"),
        report["error_kinds"]
    );
}
