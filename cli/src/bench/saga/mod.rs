//! `sagaflow bench`: the whole order saga under an open-loop load, against baselines measured
//! in the same run on the same database and broker.
//!
//! 1. Baselines (platform not started yet): the physical commit ceiling — the POST /orders
//!    rows (idempotency key + order row + outbox row) in one transaction on tables with no
//!    trigger, synchronous commit as configured on the server, best of 1, 4 and 8
//!    connections — and, beside it, the transaction as implemented; the raw produce rate of
//!    the idempotent producer on the same broker ([`baseline`]).
//! 2. The platform in-process (like `sagaflow dev`), scratch databases, plenty of stock.
//! 3. Probe: short accept-burst steps, judged on HTTP only (the HTTP accept ceiling; a bad
//!    step is repeated once, two in a row end it), then the backlog drains (the saga drain
//!    rate: where the steady steps start).
//! 4. Steady steps: each begins once the work of earlier load is done — no saga in flight, no
//!    outbox row unpublished, every verdict in the read model and notified ([`load::quiesce`],
//!    at most 60 s) — so that a step does not measure its predecessor's catch-up; then a
//!    warm-up at its rate, then a steady window of `--step-secs`
//!    (≥ 15 s); a step is sustainable when HTTP and the sagas kept up and the sagas in flight
//!    did not grow over the window (their trend, counted once a second). The rate moves by
//!    small factors and is refined between the last good and the first bad rate ([`ramp`]
//!    decides, pure).
//! 5. Run at half the max sustainable rate, begun the same way: the latency figures
//!    ([`report`]).
//!
//! Open loop: request i of a step is due at start + i / rate and latency counts from that due
//! time, so a stall cannot hide by delaying the requests behind it ([`load`]). A saga is
//! complete when its saga row is terminal (APPROVED / REJECTED, read from the orchestrator's
//! database after each step); one that is not within the grace period counts at the grace
//! period in the percentiles.
//!
//! This file holds the arguments and the orchestration of the phases; each phase's work lives
//! in the module named after it.

mod baseline;
mod load;
mod ramp;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use order_service::OrderConfig;
use payment_service::{PaymentConfig, ProviderFaults, spawn_provider};
use saga_orchestrator::SagaConfig;
use sagaflow_platform::{self as platform, DatabaseUrls, Platform, PlatformConfig, Pools};
use sagaflow_runtime::KafkaConfig;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::stats::{self, Limits};
use baseline::Baselines;
use load::{Load, drain, drive, ended_count, quiesce, relay_figures, settle};
use report::{Report, Settings, StepReport, Steps, Window};

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
    /// `compression.type` of the producers; default: `none` when every broker is on this
    /// host (it only costs CPU there), else `lz4`.
    #[arg(
        long = "kafka-compression",
        env = "SAGAFLOW_KAFKA_COMPRESSION",
        value_parser = ["none", "gzip", "snappy", "lz4", "zstd"]
    )]
    pub kafka_compression: Option<String>,
    /// Seconds of load in all (probe + steady steps + the run at half the max sustainable
    /// rate); settling waits between steps come on top.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Fixed arrival rate (orders/s): no ramp, one run at this rate for --duration.
    #[arg(long)]
    pub rate: Option<f64>,
    /// First rate of the probe's accept burst (orders/s).
    #[arg(long, default_value_t = 50.0)]
    pub start_rate: f64,
    /// Growth of the rate from one accept-burst step to the next.
    #[arg(long, default_value_t = 1.5)]
    pub ramp_factor: f64,
    /// Seconds of the steady window of one step (after its warm-up): sustained rates come
    /// from windows this long.
    #[arg(long, default_value_t = 15.0)]
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
    /// Seconds of each commit baseline loop (the implemented transaction, then the ceiling at
    /// 1, 4 and 8 connections).
    #[arg(long, default_value_t = 3.0)]
    pub baseline_secs: f64,
    /// Messages of the produce baseline.
    #[arg(long, default_value_t = 20_000)]
    pub produce_messages: usize,
    /// Measure the NOTIFY lever: writers notify on every commit, as before relays registered
    /// as asleep (a permanent registration in every platform database).
    #[arg(long, hide = true)]
    pub notify_every_commit: bool,
    /// Measure the lane-batch lever: at most this many messages per consumer transaction
    /// (`1`: one transaction per message, as before batching).
    #[arg(long, hide = true)]
    pub consumer_max_batch: Option<u32>,
    /// Measure the group-commit lever of POST /orders: at most this many orders per
    /// transaction (`1`: one transaction per order, as before group commit).
    #[arg(long, hide = true)]
    pub order_intake_max_batch: Option<usize>,
    /// Measure the Unix-socket lever: reach the local cluster over loopback TCP, as before.
    #[arg(long, hide = true)]
    pub postgres_tcp: bool,
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
/// Longest wait, before a steady step, for the work of earlier load to finish ([`quiesce`]).
const QUIET_BOUND: Duration = Duration::from_secs(60);
/// Longest wait for a backlog to drain between phases.
const DRAIN: Duration = Duration::from_secs(45);
/// At most this many seconds of the accept-burst probe (1 s steps, × `--ramp-factor` each:
/// from 50/s that reaches ~1 900/s).
const PROBE_SECS: f64 = 10.0;
/// Seconds at a step's new rate before its steady window opens.
const WARMUP_SECS: f64 = 2.0;
/// How often the sagas in flight are counted through a steady window (a count over the
/// `sagas` table; 16 in a 15 s window).
const BACKLOG_SAMPLE_SECS: f64 = 1.0;
/// The shortest measured run.
const MIN_RUN_SECS: f64 = 15.0;
/// Growth of the rate between steady steps: the probe's drain rate already says where the
/// ceiling is, so the steps only have to find it to within this.
const STEADY_FACTOR: f64 = 1.15;
/// The first steady step runs at this share of the probe's drain rate. Measured: a steady
/// 0.9 × the drain rate was never sustainable, its backlog grew; 0.75 × failed in 53 of the 56
/// full runs kept from 2026-12-04/05, and the step after it (0.75², 0.56 ×) passed in 39 of
/// those 53. A 60 s run has budget for two steps, so a first step that nearly always fails
/// left 14 of them with no sustainable rate at all.
const STEADY_START: f64 = 0.56;
/// After an unsustainable first step, the next runs at this share of it.
const STEADY_BACK_OFF: f64 = 0.75;
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
        "baseline: PostgreSQL commits of the POST /orders rows (as implemented, then the ceiling)",
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
        sagas: platform.pools.saga.clone(),
        pools: platform.pools.clone(),
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
    settle(&bench.sagas, &warm, Duration::from_secs(30)).await?;

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
        let mut kafka =
            KafkaConfig::new(brokers, format!("sfbench{tag}.")).without_compression_on_loopback();
        if let Some(compression) = &args.kafka_compression {
            kafka.compression = compression.clone();
        }
        kafka.partitions = 4;
        if let Some(max_batch) = args.consumer_max_batch {
            kafka.consumer_max_batch = max_batch.max(1);
        }
        let server = match &args.database_url {
            Some(url) => crate::dev::split_database(url).0,
            None if args.postgres_tcp => {
                crate::dev::over_tcp(&crate::dev::local_cluster(&args.data_dir).await?)
            }
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
        crate::dev::database_url(&self.server, &format!("{}_{service}", self.base))
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
            let _ = crate::dev::drop_database(&self.server, name).await;
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
        orders: OrderConfig {
            intake_max_batch: args
                .order_intake_max_batch
                .unwrap_or(order_service::DEFAULT_ORDER_INTAKE_MAX_BATCH)
                .max(1),
            ..Default::default()
        },
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
    if args.notify_every_commit {
        for pool in platform.pools.outbox_databases() {
            sqlx::query("INSERT INTO outbox_relay_sleepers (relay_id) VALUES ($1)")
                .bind(Uuid::nil())
                .execute(pool)
                .await?;
        }
    }
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

/// Deadlocks PostgreSQL detected in the platform's databases, created for this run: the lane
/// batches' lock order must keep this at 0.
async fn deadlocks(pools: &sagaflow_platform::Pools) -> anyhow::Result<i64> {
    let mut total = 0;
    for pool in pools.outbox_databases().into_iter().chain([&pools.query]) {
        total += sqlx::query_scalar::<_, i64>(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await?;
    }
    Ok(total)
}

/// What the measuring phases share: the settings, the load client, the orchestrator's
/// database (where completions are read) and the bounds of a sustainable step.
struct Bench<'a> {
    args: &'a SagaBenchArgs,
    load: Load,
    sagas: PgPool,
    /// Every platform database, for [`quiesce`].
    pools: Pools,
    limits: Limits,
}

/// What the probe and the steady steps leave for the measured run.
struct Search {
    /// The rate of the measured run: half the saga ceiling.
    run_rate: f64,
    /// Seconds of load left for the measured run.
    run_secs: f64,
    /// Sagas completed per second while the burst's backlog drained (None: no burst, or
    /// nothing drained).
    drain_sagas_per_s: Option<f64>,
    /// Whether the steady steps ran (not with --rate): only then is there a max sustainable
    /// rate.
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
        let (run, drove) = self.steady_step("run", run_rate, 0.0, run_secs).await?;
        let relay = relay_figures(&platform.pools, &drove).await?;
        steps.push(run.clone());
        let pending_at_end = load::in_flight(&self.load, &self.sagas).await?.max(0);
        let deadlocks = deadlocks(&platform.pools).await?;
        let report = Report::new(
            Settings::new(self.args, &baselines.commit),
            baselines,
            &steps,
            &run,
            &search,
            &relay,
            report::AtEnd {
                pending: pending_at_end,
                deadlocks,
            },
        );
        Ok((report, steps))
    }

    /// One open-loop step at `rate`, once the platform is quiet ([`quiesce`]): `warmup`
    /// seconds, then a steady window of `window`
    /// seconds whose requests are the step's figures. The sagas in flight are counted through
    /// the window, for their trend; then the step's sagas get [`GRACE`] to complete.
    async fn steady_step(
        &self,
        phase: &'static str,
        rate: f64,
        warmup: f64,
        window: f64,
    ) -> anyhow::Result<(StepReport, load::Drive)> {
        let quiet_wait = quiesce(&self.load, &self.pools, QUIET_BOUND).await?;
        if quiet_wait.is_none() {
            self.progress(&format!(
                "the work of earlier load did not finish within {} s; the step begins anyway",
                QUIET_BOUND.as_secs()
            ));
        }
        let started = Instant::now();
        // The sagas in flight and the read side's backlog, once a second through the window
        // (its ends included).
        let counts = async {
            let (mut in_flight, mut read_side) = (Vec::new(), Vec::new());
            let mut at = 0.0;
            loop {
                tokio::time::sleep_until(started + Duration::from_secs_f64(warmup + at)).await;
                in_flight.push((at, load::in_flight(&self.load, &self.sagas).await?));
                read_side.push((at, load::read_side_behind(&self.pools).await?));
                if at >= window {
                    break;
                }
                at = (at + BACKLOG_SAMPLE_SECS).min(window);
            }
            let growth = stats::backlog_growth(&in_flight, window);
            let read_side_growth = stats::backlog_growth(&read_side, window);
            tracing::debug!(
                rate,
                growth,
                read_side_growth,
                ?in_flight,
                ?read_side,
                "sagas in flight and the read side's backlog through the steady window"
            );
            anyhow::Ok((growth, read_side_growth))
        };
        let (drove, growths) = tokio::join!(
            drive(&self.load, rate, warmup + window, self.args.json),
            counts
        );
        let (backlog_growth, read_side_growth) = growths?;
        let settled = settle(&self.sagas, &drove, GRACE).await?;
        let window = Window {
            from: Duration::from_secs_f64(warmup),
            backlog_growth,
            read_side_growth,
            quiet_wait,
        };
        let step = StepReport::new(phase, &drove, &settled, window, &self.limits);
        Ok((step, drove))
    }

    /// Phases 3 and 4: the HTTP ceiling and the drain rate (probe), then the saga ceiling
    /// (steady steps, starting just below the drain rate).
    async fn search(&self, total: f64, steps: &mut Steps) -> anyhow::Result<Search> {
        let probe_budget = (total * 0.2).min(PROBE_SECS);
        let (probe_spent, burst_steps) = self
            .burst(probe_budget, self.args.start_rate, steps)
            .await?;
        let drain_sagas_per_s = if burst_steps == 0 {
            None
        } else {
            self.drain_rate().await?
        };
        let start_rate = drain_sagas_per_s.map_or(self.args.start_rate, |d| {
            (d * STEADY_START).round().max(1.0)
        });
        let budget = total - probe_spent - MIN_RUN_SECS;
        let (ramp_spent, found) = self.ramp(budget, start_rate, steps).await?;
        Ok(Search {
            run_rate: found.run_rate,
            run_secs: (total - probe_spent - ramp_spent).max(MIN_RUN_SECS),
            drain_sagas_per_s,
            ramped: true,
        })
    }

    /// Phase 4, the steady steps: at least one, more while `budget` seconds last, each rate
    /// chosen by [`ramp::next`] from the steps before it. Returns the seconds spent and the
    /// verdict.
    async fn ramp(
        &self,
        budget: f64,
        start_rate: f64,
        steps: &mut Steps,
    ) -> anyhow::Result<(f64, ramp::Found)> {
        let plan = ramp::Plan {
            start_rate,
            factor: STEADY_FACTOR,
            back_off: STEADY_BACK_OFF,
        };
        let step_secs = WARMUP_SECS + self.args.step_secs;
        let mut probes = Vec::new();
        let mut spent = 0.0;
        let mut rate = plan.start_rate;
        while probes.is_empty() || spent + step_secs <= budget + 1e-9 {
            self.progress(&format!(
                "steady step: {rate:.0} orders/s for {WARMUP_SECS} + {} s",
                self.args.step_secs
            ));
            let (step, _) = self
                .steady_step("ramp", rate, WARMUP_SECS, self.args.step_secs)
                .await?;
            spent += step_secs;
            let saga_ok = step.verdict.saga_ok;
            steps.push(step);
            if !saga_ok {
                // Let the backlog of a failed step drain before the next one.
                drain(&self.load, &self.sagas, DRAIN).await?;
            }
            probes.push(ramp::Probe { rate, saga_ok });
            match ramp::next(&probes, plan) {
                ramp::Decision::Step(next) => rate = next,
                ramp::Decision::Stop => break,
            }
        }
        Ok((spent, ramp::found(&probes, plan)))
    }

    /// Phase 3, the accept burst: HTTP only, 1 s steps from `from`, no drain between, the
    /// rate grown until HTTP falls behind or `budget` is spent. Returns the seconds spent
    /// and the number of steps.
    async fn burst(
        &self,
        budget: f64,
        from: f64,
        steps: &mut Steps,
    ) -> anyhow::Result<(f64, usize)> {
        let mut rate = from;
        let mut spent = 0.0;
        let mut driven = 0;
        let mut accepted = Vec::new();
        while spent + 1.0 <= budget + 1e-9 {
            self.progress(&format!("accept burst: {rate:.0} orders/s for 1 s"));
            let drove = drive(&self.load, rate, 1.0, self.args.json).await;
            spent += 1.0;
            driven += 1;
            let step = StepReport::new(
                "burst",
                &drove,
                &load::Settled::none(),
                Window::default(),
                &self.limits,
            );
            accepted.push(step.verdict.accept_ok);
            steps.push(step);
            match ramp::next_burst(&accepted, rate, self.args.ramp_factor) {
                ramp::Decision::Step(next) => rate = next,
                ramp::Decision::Stop => break,
            }
        }
        Ok((spent, driven))
    }

    /// The saga drain rate: sagas ended per second while the burst's backlog drains.
    async fn drain_rate(&self) -> anyhow::Result<Option<f64>> {
        self.progress("draining the burst backlog");
        let started = Instant::now();
        let before = ended_count(&self.sagas).await?;
        let pending = drain(&self.load, &self.sagas, DRAIN).await?;
        let done = ended_count(&self.sagas).await? - before;
        let secs = started.elapsed().as_secs_f64();
        Ok((pending == 0 || done > 0).then_some(done as f64 / secs.max(1e-3)))
    }
}
