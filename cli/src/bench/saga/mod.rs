//! `sagaflow bench`: the whole order saga under an open-loop load, against baselines measured
//! in the same run on the same database and broker.
//!
//! 1. Baselines (platform not started yet): the raw PostgreSQL commit rate of the
//!    POST /orders transaction (idempotency key + order row + outbox row, synchronous commit as
//!    configured on the server) with the platform's connection count, on a scratch database;
//!    and the raw produce rate of the idempotent producer on the same broker ([`baseline`]).
//! 2. The platform in-process (like `sagaflow dev`), scratch databases, plenty of stock.
//! 3. Ramp: fixed-rate steps, the rate grown geometrically until a step is not sustainable
//!    (HTTP or the sagas fall behind), refined once between the last good and the first bad
//!    rate ([`ramp`] decides, pure).
//! 4. Accept burst: short steps above the saga ceiling, judged on HTTP only (the HTTP accept
//!    ceiling), then the backlog drains (the saga drain rate).
//! 5. Run at half the max sustainable rate: the latency figures ([`report`]).
//!
//! Open loop: request i of a step is due at start + i / rate and latency counts from that due
//! time, so a stall cannot hide by delaying the requests behind it ([`load`]). Completion is
//! read from the order database after each step (orders.updated_at of APPROVED / REJECTED
//! rows), so measuring adds no load while the step runs.
//!
//! This file holds the arguments and the orchestration of the phases; each phase's work lives
//! in the module named after it.

mod baseline;
mod load;
mod ramp;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use payment_service::{PaymentConfig, ProviderFaults, spawn_provider};
use saga_orchestrator::SagaConfig;
use sagaflow_platform::{self as platform, DatabaseUrls, Platform, PlatformConfig};
use sagaflow_runtime::KafkaConfig;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::stats::{Limits, next_rate};
use baseline::Baselines;
use load::{Load, drain, drive, relay_figures, settle, terminal_count};
use report::{Report, Settings, StepReport, Steps};

#[derive(Debug, Clone, clap::Args)]
pub struct SagaBenchArgs {
    /// Outbox rows each relay claims per pass.
    #[arg(
        long = "relay-batch-size",
        env = "OUTBOX_BATCH_SIZE",
        default_value_t = sagaflow_messaging::relay::DEFAULT_BATCH_SIZE
    )]
    pub relay_batch_size: i64,
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

/// SKUs the orders spread over (one hot row would measure lock contention, not the platform).
const SKUS: usize = 64;
/// Longest wait for a step's sagas after its last request.
const GRACE: Duration = Duration::from_secs(3);
/// Longest wait for a backlog to drain between phases.
const DRAIN: Duration = Duration::from_secs(45);
/// The platform's databases, by service (each `bench_<tag>_<service>`).
const PLATFORM_DATABASES: [&str; 6] = [
    "order",
    "inventory",
    "payment",
    "notification",
    "saga",
    "query",
];
/// The commit baseline's own database: the platform never touches it.
const BASELINE_DATABASE: &str = "baseline";

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

/// The phases, in order: baselines, platform, measurement, report, teardown.
async fn bench(args: SagaBenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(args.duration >= 1, "--duration must be at least 1 s");
    let scratch = Scratch::create(&args, &shutdown).await?;

    // 1. Baselines, before the platform runs.
    progress(
        &args,
        "baseline: PostgreSQL commits of the POST /orders transaction",
    );
    let commit = baseline::commit(
        &scratch.url(BASELINE_DATABASE),
        args.connections,
        args.baseline_secs,
    )
    .await?;
    progress(&args, "baseline: raw produce");
    let produce_per_s = baseline::produce(&scratch.kafka, args.produce_messages).await?;
    let baselines = Baselines {
        commit,
        produce_per_s,
    };

    // 2. The platform.
    progress(&args, "starting the platform");
    let (platform, load) = start(&args, &scratch, &shutdown).await?;
    let bench = Bench {
        args: &args,
        orders: platform.pools.order.clone(),
        load,
        limits: Limits {
            max_accept_p99_ms: args.max_accept_p99_ms,
            max_saga_p99_ms: args.max_saga_p99_ms,
            max_loss: 0.01,
        },
    };
    // Warm up: connections, topic metadata, consumer group assignment.
    progress(&args, "warming up");
    let warm = drive(&bench.load, 20.0, 2.0, args.json).await;
    settle(&bench.orders, &warm, Duration::from_secs(30)).await?;

    // 3.–5. Ramp, accept burst, measured run.
    let (report, steps) = bench.measure(&platform, &baselines).await?;
    report.print(args.json, &steps.steps);

    // Bounded: a consumer leaving its group on the embedded broker can hang.
    if tokio::time::timeout(Duration::from_secs(15), platform.stop())
        .await
        .is_err()
    {
        tracing::warn!("the platform did not stop within 15 s; leaving anyway");
    }
    if !args.keep_databases {
        scratch.drop_all().await;
    }
    Ok(())
}

/// A progress line on stderr, unless the output is JSON.
fn progress(args: &SagaBenchArgs, what: &str) {
    if !args.json {
        eprintln!("{what}");
    }
}

pub(super) fn sku(i: usize) -> String {
    format!("BENCH-{i:02}")
}

/// The infrastructure of one run: the broker, a topic prefix and scratch databases of its
/// own, so that runs never see each other's data.
struct Scratch {
    kafka: KafkaConfig,
    /// The PostgreSQL server URL, without a database.
    server: String,
    /// `bench_<tag>`: the prefix of this run's databases.
    base: String,
    /// Every database created, to drop at the end.
    databases: Vec<String>,
}

impl Scratch {
    async fn create(args: &SagaBenchArgs, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let brokers = match &args.kafka_brokers {
            Some(b) => b.clone(),
            None => crate::broker::spawn_on_free_port(shutdown.clone()).await?,
        };
        let tag = Uuid::new_v4().simple().to_string()[..8].to_string();
        let mut kafka = KafkaConfig::new(brokers, format!("sfbench{tag}."));
        kafka.partitions = 4;
        let server = match &args.database_url {
            Some(url) => crate::dev::split_database(url).0,
            None => crate::dev::local_cluster(&args.data_dir).await?,
        };
        let base = format!("bench_{tag}");
        let mut databases = Vec::new();
        for service in PLATFORM_DATABASES.into_iter().chain([BASELINE_DATABASE]) {
            let name = format!("{base}_{service}");
            databases.push(crate::dev::ensure_database(&server, &name).await?);
        }
        Ok(Scratch {
            kafka,
            server,
            base,
            databases,
        })
    }

    fn url(&self, service: &str) -> String {
        format!("{}/{}_{service}", self.server, self.base)
    }

    fn database_urls(&self) -> DatabaseUrls {
        DatabaseUrls {
            order: self.url("order"),
            inventory: self.url("inventory"),
            payment: self.url("payment"),
            notification: self.url("notification"),
            saga: self.url("saga"),
            query: self.url("query"),
        }
    }

    /// Best effort: a database left behind is only disk space.
    async fn drop_all(&self) {
        for name in &self.databases {
            let _ = drop_database(&self.server, name).await;
        }
    }
}

/// The platform in-process with plenty of stock, serving HTTP on a free port, and the load
/// client aimed at its POST /orders.
async fn start(
    args: &SagaBenchArgs,
    scratch: &Scratch,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Platform, Load)> {
    let provider_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let provider_url = format!("http://{}", provider_listener.local_addr()?);
    spawn_provider(
        provider_listener,
        ProviderFaults::default(),
        shutdown.clone(),
    )
    .await;
    let config = || PlatformConfig {
        databases: scratch.database_urls(),
        kafka: scratch.kafka.clone(),
        payment: PaymentConfig::new(provider_url.clone()),
        saga: SagaConfig::default(),
        orders: Default::default(),
        pool_size: args.connections,
        request_timeout: Duration::from_secs(10),
        // The benchmark is one client pushing thousands of requests per second: open.
        security: Default::default(),
        relay_batch_size: args.relay_batch_size,
        query: Default::default(),
    };
    let mut platform = start_platform(config).await?;
    let stock: Vec<(String, i32)> = (0..SKUS).map(|i| (sku(i), 1_000_000_000)).collect();
    let stock: Vec<(&str, i32)> = stock.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    inventory_service::seed(&platform.pools.inventory, &stock).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = listener.local_addr()?;
    platform.serve(listener, &scratch.kafka);
    let load = Load::new(format!("http://{http}/orders"))?;
    Ok((platform, load))
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

/// What the measuring phases share: the settings, the load client, the order database (where
/// completions are read) and the bounds of a sustainable step.
struct Bench<'a> {
    args: &'a SagaBenchArgs,
    load: Load,
    orders: PgPool,
    limits: Limits,
}

/// What the ramp and the burst leave for the measured run.
struct Search {
    /// The rate of the measured run: half the saga ceiling.
    run_rate: f64,
    /// Seconds of load left for the measured run.
    run_secs: f64,
    /// Sagas completed per second while the burst's backlog drained (None: no burst, or
    /// nothing drained).
    drain_sagas_per_s: Option<f64>,
    /// Whether the ramp ran (not with --rate): only then is there a max sustainable rate.
    ramped: bool,
}

impl Bench<'_> {
    fn progress(&self, what: &str) {
        progress(self.args, what);
    }

    /// Phases 3 to 5: the report, and every step (the table shows them unrounded).
    async fn measure(
        &self,
        platform: &Platform,
        baselines: &Baselines,
    ) -> anyhow::Result<(Report, Steps)> {
        let mut steps = Steps::default();
        let total = self.args.duration as f64;
        let search = match self.args.rate {
            Some(rate) => Search {
                run_rate: rate,
                run_secs: total,
                drain_sagas_per_s: None,
                ramped: false,
            },
            None => self.search(total, &mut steps).await?,
        };

        // 5. The run at half the max sustainable rate (or at --rate).
        let (run_rate, run_secs) = (search.run_rate, search.run_secs);
        self.progress(&format!(
            "measured run: {run_rate:.0} orders/s for {run_secs:.0} s"
        ));
        let drove = drive(&self.load, run_rate, run_secs, self.args.json).await;
        let completions = settle(&self.orders, &drove, Duration::from_secs(10)).await?;
        let run = StepReport::new("run", &drove, &completions, &self.limits);
        let relay = relay_figures(&platform.pools, &drove).await?;
        steps.push(run.clone());
        let pending_at_end = load::pending(&self.orders).await?;
        let report = Report::new(
            Settings::new(self.args, &baselines.commit),
            baselines,
            &steps,
            &run,
            &search,
            &relay,
            pending_at_end,
        );
        Ok((report, steps))
    }

    /// Phases 3 and 4: the saga ceiling (ramp), then the HTTP ceiling (burst) and the drain.
    async fn search(&self, total: f64, steps: &mut Steps) -> anyhow::Result<Search> {
        let (ramp_spent, found) = self.ramp(total * 0.5, steps).await?;
        let (burst_spent, burst_steps) = self.burst(total * 0.2, found.burst_rate, steps).await?;
        let drain_sagas_per_s = if burst_steps == 0 {
            None
        } else {
            self.drain_rate().await?
        };
        Ok(Search {
            run_rate: found.run_rate,
            run_secs: (total - ramp_spent - burst_spent).max(5.0),
            drain_sagas_per_s,
            ramped: true,
        })
    }

    /// Phase 3, the ramp: fixed-rate steps for `budget` seconds at most, each rate chosen
    /// by [`ramp::next`] from the steps before it. Returns the seconds spent and the verdict.
    async fn ramp(&self, budget: f64, steps: &mut Steps) -> anyhow::Result<(f64, ramp::Found)> {
        let plan = ramp::Plan {
            start_rate: self.args.start_rate,
            factor: self.args.ramp_factor,
        };
        let step_secs = self.args.step_secs;
        let mut probes = Vec::new();
        let mut spent = 0.0;
        let mut rate = plan.start_rate;
        while spent + step_secs <= budget + 1e-9 {
            self.progress(&format!("ramp: {rate:.0} orders/s for {step_secs} s"));
            let drove = drive(&self.load, rate, step_secs, self.args.json).await;
            spent += step_secs;
            let completions = settle(&self.orders, &drove, GRACE).await?;
            let step = StepReport::new("ramp", &drove, &completions, &self.limits);
            let saga_ok = step.verdict.saga_ok;
            steps.push(step);
            if !saga_ok {
                // Let the backlog of a failed step drain before the next one.
                drain(&self.orders, DRAIN).await?;
            }
            probes.push(ramp::Probe { rate, saga_ok });
            match ramp::next(&probes, plan) {
                ramp::Decision::Step(next) => rate = next,
                ramp::Decision::Stop => break,
            }
        }
        Ok((spent, ramp::found(&probes, plan)))
    }

    /// Phase 4, the accept burst above the saga ceiling: HTTP only, 1 s steps, no drain
    /// between, the rate grown until HTTP falls behind or `budget` is spent. Returns the
    /// seconds spent and the number of steps.
    async fn burst(
        &self,
        budget: f64,
        from: f64,
        steps: &mut Steps,
    ) -> anyhow::Result<(f64, usize)> {
        let mut rate = from;
        let mut spent = 0.0;
        let mut driven = 0;
        while spent + 1.0 <= budget + 1e-9 {
            self.progress(&format!("accept burst: {rate:.0} orders/s for 1 s"));
            let drove = drive(&self.load, rate, 1.0, self.args.json).await;
            spent += 1.0;
            driven += 1;
            let step = StepReport::new("burst", &drove, &[], &self.limits);
            let accept_ok = step.verdict.accept_ok;
            steps.push(step);
            if !accept_ok {
                break;
            }
            rate = next_rate(rate, self.args.ramp_factor);
        }
        Ok((spent, driven))
    }

    /// The saga drain rate: sagas completed per second while the burst's backlog drains.
    async fn drain_rate(&self) -> anyhow::Result<Option<f64>> {
        self.progress("draining the burst backlog");
        let started = Instant::now();
        let before = terminal_count(&self.orders).await?;
        let pending = drain(&self.orders, DRAIN).await?;
        let done = terminal_count(&self.orders).await? - before;
        let secs = started.elapsed().as_secs_f64();
        Ok((pending == 0 || done > 0).then_some(done as f64 / secs.max(1e-3)))
    }
}
