//! `sagaflow chaos --minutes N`: a soak under faults.
//!
//! Every component runs as its own child process (the binaries next to this one): the broker
//! (`sagaflow broker`, tansu with its log on disk under the run folder), order-, inventory-,
//! payment- (with its simulated provider) and notification-service, the saga orchestrator and
//! the outbox relay, each with fresh databases and a topic prefix of its own ([`fleet`]). An
//! open-loop client places orders at `--rate` (retrying each with its Idempotency-Key until
//! acknowledged, [`load`]) while, at seeded random times, one of relay, orchestrator, a
//! service or the broker is SIGKILLed and restarted, or the broker is frozen (SIGSTOP) for a
//! few seconds ([`faults`]). Then the faults stop, every component runs, the platform settles,
//! and the invariants are checked in the databases (see `sagaflow_platform::invariants`;
//! [`report`]).
//!
//! The broker keeps its log in `file://` storage, so a killed broker comes back with its
//! topics, records and committed offsets, as a Kafka broker with a disk would.
//!
//! Output: the progress (the run folder, every fault, the load each 10 s) goes to stderr and
//! the report alone to stdout, so `sagaflow chaos --json | jq` reads one JSON object.
//!
//! This file holds the arguments, the services and their databases, and the orchestration.

mod faults;
mod fleet;
mod load;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sagaflow_platform::invariants::{self, Databases, Settling};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::dev::{ensure_database, local_cluster, split_database};
use faults::Faults;
use fleet::{Fleet, Ports};
use load::Load;
use report::Report;

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// How long to inject faults under load (fractions allowed: 0.5 = 30 s).
    #[arg(long, default_value_t = 5.0)]
    pub minutes: f64,
    /// Orders placed per second (open loop).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seed of the fault schedule and of the orders (random when absent; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A PostgreSQL server URL where databases may be created (else a throwaway local
    /// cluster, as `sagaflow dev`).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Folder of the throwaway PostgreSQL cluster and of the run folders (logs).
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = ".sagaflow")]
    pub data_dir: PathBuf,
    /// Print the report as JSON (stdout holds that object only; progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Stock seeded before the load: plenty of three SKUs, few of one (stock rejections).
const STOCK: [(&str, i64); 4] = [
    ("CHAOS-1", 1_000_000),
    ("CHAOS-2", 1_000_000),
    ("CHAOS-3", 1_000_000),
    ("CHAOS-SCARCE", 60),
];
/// Longest wait for the platform to settle once the faults stopped.
const SETTLE: Duration = Duration::from_secs(120);
/// Longest wait for the orders still being retried once the faults stopped.
const DRAIN: Duration = Duration::from_secs(60);

/// A component with a database of its own (and an outbox the relay publishes from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Service {
    Order,
    Inventory,
    Payment,
    Notification,
    Saga,
}

impl Service {
    /// In start order; also the order of the relay's `OUTBOX_DATABASE_URLS`.
    const ALL: [Service; 5] = [
        Service::Order,
        Service::Inventory,
        Service::Payment,
        Service::Notification,
        Service::Saga,
    ];
    /// The domain services (the orchestrator apart): one of them is a fault target. The
    /// order matters: the seeded schedule picks by index.
    const DOMAIN: [Service; 4] = [
        Service::Order,
        Service::Inventory,
        Service::Payment,
        Service::Notification,
    ];

    /// The suffix of its database (`<base>_chaos_<run>_<database>`), and its name in the
    /// relay's `OUTBOX_DATABASE_URLS`.
    fn database(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::Inventory => "inventory",
            Service::Payment => "payment",
            Service::Notification => "notification",
            Service::Saga => "saga",
        }
    }

    /// Its binary, next to this one; also its name in the output and its log file's.
    fn binary(self) -> &'static str {
        match self {
            Service::Order => "order-service",
            Service::Inventory => "inventory-service",
            Service::Payment => "payment-service",
            Service::Notification => "notification-service",
            Service::Saga => "saga-orchestrator",
        }
    }
}

/// The database URL of every service.
type Urls = BTreeMap<Service, String>;

/// A pool on each service's database, for the settling and invariant queries.
struct Pools {
    order: PgPool,
    inventory: PgPool,
    payment: PgPool,
    notification: PgPool,
    saga: PgPool,
}

impl Pools {
    async fn connect(urls: &Urls) -> anyhow::Result<Self> {
        Ok(Pools {
            order: connect(urls, Service::Order).await?,
            inventory: connect(urls, Service::Inventory).await?,
            payment: connect(urls, Service::Payment).await?,
            notification: connect(urls, Service::Notification).await?,
            saga: connect(urls, Service::Saga).await?,
        })
    }

    fn databases(&self) -> Databases<'_> {
        Databases {
            order: &self.order,
            inventory: &self.inventory,
            payment: &self.payment,
            notification: &self.notification,
            saga: &self.saga,
        }
    }

    async fn close(self) {
        for pool in [
            self.order,
            self.inventory,
            self.payment,
            self.notification,
            self.saga,
        ] {
            pool.close().await;
        }
    }
}

async fn connect(urls: &Urls, service: Service) -> anyhow::Result<PgPool> {
    let db = service.database();
    PgPoolOptions::new()
        .max_connections(3)
        .connect(&urls[&service])
        .await
        .with_context(|| format!("connecting to the {db} database"))
}

/// One run: where it keeps its logs, when it started, its seed.
struct RunInfo {
    seed: u64,
    started: Instant,
    id: String,
    dir: PathBuf,
}

pub async fn run(args: ChaosArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !(args.minutes > 0.0 && args.rate > 0.0) {
        bail!("--minutes and --rate must be positive");
    }
    let run = RunInfo::create(&args)?;
    let urls = databases(&args, &run.id).await?;
    let ports = Ports::pick()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let fleet = Fleet::launch(&run, &urls, &ports, &client, &shutdown).await?;
    let inventory = format!("http://{}", ports.http_of(Service::Inventory.binary()));
    for (sku, available) in STOCK {
        load::seed_stock(&client, &inventory, sku, available).await?;
    }
    eprintln!(
        "  every component is up (broker {}, orders http://{}); load and faults start",
        ports.broker,
        ports.http_of(Service::Order.binary())
    );
    let orders_url = format!("http://{}/orders", ports.http_of(Service::Order.binary()));
    let (load, faults) = soak(&args, &run, &fleet, client, orders_url, &shutdown).await?;

    let pools = Pools::connect(&urls).await?;
    let settled_in = settle(pools.databases(), &shutdown).await?;
    let report = Report::check(&run, &args, pools.databases(), &load, faults, settled_in).await?;
    report.print(args.json)?;
    pools.close().await;
    // Children are killed when the fleet drops.
    drop(fleet);
    if !report.passed {
        bail!("chaos: invariants failed (logs in {})", report.run_folder);
    }
    Ok(())
}

impl RunInfo {
    /// A seed (the given one or a random one), an id and a run folder; printed.
    fn create(args: &ChaosArgs) -> anyhow::Result<Self> {
        let seed = args.seed.unwrap_or_else(rand::random);
        let started = Instant::now();
        let id = format!("{:08x}", rand::random::<u32>());
        let dir = std::path::absolute(args.data_dir.join("chaos").join(&id))?;
        std::fs::create_dir_all(&dir)?;
        eprintln!(
            "sagaflow chaos: {} min at {} orders/s, seed {seed}",
            args.minutes, args.rate
        );
        eprintln!("  run folder (logs): {}", dir.display());
        Ok(RunInfo {
            seed,
            started,
            id,
            dir,
        })
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// Seconds since the run started, for the progress lines.
    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Fresh databases of this run, one per service, on the given server or the local cluster.
async fn databases(args: &ChaosArgs, run_id: &str) -> anyhow::Result<Urls> {
    let (server_url, base) = match &args.database_url {
        Some(url) => split_database(url),
        None => (local_cluster(&args.data_dir).await?, "sagaflow".to_string()),
    };
    let mut urls = Urls::new();
    for service in Service::ALL {
        let db = service.database();
        let name = ensure_database(&server_url, &format!("{base}_chaos_{run_id}_{db}")).await?;
        urls.insert(service, crate::dev::database_url(&server_url, &name));
    }
    eprintln!(
        "  databases: {base}_chaos_{run_id}_* on {}",
        redact(&server_url)
    );
    Ok(urls)
}

/// The load and the faults for `--minutes` with a progress line every 10 s; then every
/// component is restored and the retries drain. Returns the load's counters and the faults.
async fn soak(
    args: &ChaosArgs,
    run: &RunInfo,
    fleet: &Fleet,
    client: reqwest::Client,
    orders_url: String,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Arc<Load>, Faults)> {
    let load = Arc::new(Load::default());
    let faults = faults::Shared::default();
    let stop = CancellationToken::new();
    let give_up = CancellationToken::new();
    let loader = tokio::spawn(load::generate(
        client,
        orders_url,
        args.rate,
        run.seed,
        load.clone(),
        stop.clone(),
        give_up.clone(),
    ));
    let injector = tokio::spawn(faults::inject(
        fleet.clone(),
        run.seed,
        faults.clone(),
        stop.clone(),
        run.started,
    ));
    let watchdog_stop = CancellationToken::new();
    let watchdog = tokio::spawn(faults::watchdog(
        fleet.clone(),
        faults.clone(),
        watchdog_stop.clone(),
        run.started,
    ));
    let fault_minutes = Duration::from_secs_f64(args.minutes * 60.0);
    let interrupted = progress(run, &load, &faults, fault_minutes, shutdown).await;
    stop.cancel();
    if interrupted {
        give_up.cancel();
        bail!("interrupted; every child process is stopped");
    }
    eprintln!(
        "[{:>6.1}s] load and faults stop; restoring every component and draining the retries",
        run.elapsed()
    );
    injector.await?;
    watchdog_stop.cancel();
    watchdog.await?;
    // Every component runs (the broker is resumed by the injector before it returns).
    fleet.restart_exited().await?;
    let give_up_later = give_up.clone();
    let drain_timer = tokio::spawn(async move {
        tokio::time::sleep(DRAIN).await;
        give_up_later.cancel();
    });
    loader.await?;
    drain_timer.abort();
    let faults = std::mem::take(&mut *faults.lock().unwrap());
    Ok((load, faults))
}

/// A progress line every 10 s until `duration` is over (false) or the run is interrupted
/// (true).
async fn progress(
    run: &RunInfo,
    load: &Load,
    faults: &faults::Shared,
    duration: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let load_started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    ticker.tick().await;
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return false,
            _ = shutdown.cancelled() => return true,
            _ = ticker.tick() => {
                let elapsed = load_started.elapsed().as_secs_f64();
                let acked = load.acknowledged.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>6.1}s] sent {} acknowledged {} ({:.1}/s) retried {} faults {}",
                    run.elapsed(),
                    load.sent.load(Ordering::Relaxed),
                    acked,
                    acked as f64 / elapsed,
                    load.retried.load(Ordering::Relaxed),
                    faults.lock().unwrap().total(),
                );
            }
        }
    }
}

/// Wait (up to [`SETTLE`]) until nothing is in flight; the seconds it took, None when it did
/// not settle (and what was still in flight is printed).
async fn settle(db: Databases<'_>, shutdown: &CancellationToken) -> anyhow::Result<Option<f64>> {
    let settle_started = Instant::now();
    let mut last = Settling::default();
    while settle_started.elapsed() < SETTLE {
        if shutdown.is_cancelled() {
            bail!("interrupted");
        }
        match invariants::settling(db, &[]).await {
            Ok(s) if s.settled() => return Ok(Some(settle_started.elapsed().as_secs_f64())),
            Ok(s) => last = s,
            Err(e) => tracing::debug!(error = %e, "settling query failed"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("not settled after {SETTLE:?}: {last:?}");
    Ok(None)
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// The initial stock, as the invariant check wants it.
fn initial_stock() -> HashMap<String, i64> {
    STOCK.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_name_their_databases_and_binaries() {
        let databases = Service::ALL.map(Service::database);
        assert_eq!(
            databases,
            ["order", "inventory", "payment", "notification", "saga"]
        );
        let binaries = Service::ALL.map(Service::binary);
        assert_eq!(
            binaries,
            [
                "order-service",
                "inventory-service",
                "payment-service",
                "notification-service",
                "saga-orchestrator"
            ]
        );
        // The fault schedule picks among the domain services by index: their order is part
        // of what a seed replays.
        assert_eq!(
            Service::DOMAIN.map(Service::binary),
            [
                "order-service",
                "inventory-service",
                "payment-service",
                "notification-service"
            ]
        );
    }
}
