//! `sagaflow chaos --minutes N`: a soak under faults.
//!
//! Every component runs as its own child process (the binaries next to this one): the broker
//! (`sagaflow broker`, tansu with its log on disk under the run folder), order-, inventory-,
//! payment- (with its simulated provider) and notification-service, the saga orchestrator and
//! the outbox relay, each with fresh databases and a topic prefix of its own. An open-loop
//! client places orders at `--rate` (retrying each with its Idempotency-Key until
//! acknowledged) while, at seeded random times, one of relay, orchestrator, a service or the
//! broker is SIGKILLed and restarted, or the broker is frozen (SIGSTOP) for a few seconds.
//! Then the faults stop, every component runs, the platform settles, and the invariants are
//! checked in the databases (see `sagaflow_platform::invariants`).
//!
//! The broker keeps its log in `file://` storage, so a killed broker comes back with its
//! topics, records and committed offsets, as a Kafka broker with a disk would.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sagaflow_platform::invariants::{self, Databases, Findings, Settling};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::dev::{ensure_database, local_cluster, split_database};

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
    /// Print the report as JSON.
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
const SERVICES: [&str; 4] = [
    "order-service",
    "inventory-service",
    "payment-service",
    "notification-service",
];
const SETTLE: Duration = Duration::from_secs(120);
const DRAIN: Duration = Duration::from_secs(60);

/// One child process and how to start it again.
struct Proc {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env_remove("SAGAFLOW_JWT_SECRET")
            .env_remove("SAGAFLOW_RATE_LIMIT_PER_SECOND")
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

type Fleet = Arc<Mutex<Vec<Proc>>>;

#[derive(Default)]
struct Load {
    sent: AtomicU64,
    acknowledged: AtomicU64,
    retried: AtomicU64,
    rejected_by_api: AtomicU64,
    unacknowledged: AtomicU64,
    acked_ids: std::sync::Mutex<Vec<Uuid>>,
}

#[derive(Default)]
struct Faults {
    kills: BTreeMap<&'static str, u32>,
    broker_pauses: u32,
    exited_on_their_own: BTreeMap<&'static str, u32>,
}

impl Faults {
    fn total(&self) -> u32 {
        self.kills.values().sum::<u32>() + self.broker_pauses
    }
}

#[derive(Debug, Serialize)]
struct Report {
    seed: u64,
    run_folder: String,
    duration_s: f64,
    fault_minutes: f64,
    orders_sent: u64,
    orders_acknowledged: u64,
    orders_retried: u64,
    orders_refused_by_api: u64,
    orders_never_acknowledged: u64,
    approved: i64,
    rejected: i64,
    faults: BTreeMap<String, u32>,
    broker: String,
    exited_on_their_own: BTreeMap<String, u32>,
    lost: usize,
    acknowledged_not_terminal: usize,
    duplicate_effects: i64,
    sagas_non_terminal: i64,
    sagas_failed: usize,
    outbox_unpublished: i64,
    stock_conserved: bool,
    money_conserved: bool,
    settled_in_s: Option<f64>,
    /// Sagas still open, by state (empty when settled).
    open_sagas_by_state: BTreeMap<String, i64>,
    /// Partitions of each consumer's last assignment, from its log (0 = idle member).
    last_assignment: BTreeMap<String, u32>,
    not_checked: &'static str,
    violations: Vec<String>,
    passed: bool,
}

pub async fn run(args: ChaosArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !(args.minutes > 0.0 && args.rate > 0.0) {
        bail!("--minutes and --rate must be positive");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let started = Instant::now();
    let run_id = format!("{:08x}", rand::random::<u32>());
    let run_dir = std::path::absolute(args.data_dir.join("chaos").join(&run_id))?;
    std::fs::create_dir_all(&run_dir)?;
    println!(
        "sagaflow chaos: {} min at {} orders/s, seed {seed}",
        args.minutes, args.rate
    );
    println!("  run folder (logs): {}", run_dir.display());

    // Databases.
    let (server_url, base) = match &args.database_url {
        Some(url) => split_database(url),
        None => (local_cluster(&args.data_dir).await?, "sagaflow".to_string()),
    };
    let mut urls = HashMap::new();
    for db in ["order", "inventory", "payment", "notification", "saga"] {
        let name = ensure_database(&server_url, &format!("{base}_chaos_{run_id}_{db}")).await?;
        urls.insert(db, format!("{server_url}/{name}"));
    }
    println!(
        "  databases: {base}_chaos_{run_id}_* on {}",
        redact(&server_url)
    );

    // Processes.
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("the folder of this executable")?
        .to_path_buf();
    let port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let broker_addr = format!("127.0.0.1:{}", port()?);
    let prefix = format!("chaos{run_id}-");
    let common = |http: &str| -> Vec<(String, String)> {
        vec![
            ("KAFKA_BROKERS".into(), broker_addr.clone()),
            ("SAGAFLOW_TOPIC_PREFIX".into(), prefix.clone()),
            ("SAGAFLOW_TOPIC_PARTITIONS".into(), "4".into()),
            ("HTTP_ADDR".into(), http.to_string()),
        ]
    };
    let program = |name: &str| -> anyhow::Result<PathBuf> {
        let path = bin_dir.join(name);
        if !path.exists() {
            bail!(
                "{} not found: build every binary first (cargo build --workspace --bins)",
                path.display()
            );
        }
        Ok(path)
    };
    let mut procs = vec![Proc {
        name: "broker",
        program: std::env::current_exe()?,
        args: vec![
            "broker".into(),
            "--listen".into(),
            broker_addr.clone(),
            "--storage".into(),
            format!("file://{}", run_dir.join("broker-data").display()),
        ],
        // At info the broker logs every request: gigabytes in minutes.
        env: vec![("RUST_LOG".into(), "warn".into())],
        log: run_dir.join("broker.log"),
        child: None,
    }];
    let mut http = HashMap::new();
    for (name, db) in [
        ("order-service", "order"),
        ("inventory-service", "inventory"),
        ("payment-service", "payment"),
        ("notification-service", "notification"),
        ("saga-orchestrator", "saga"),
    ] {
        let addr = format!("127.0.0.1:{}", port()?);
        let mut env = common(&addr);
        env.push(("DATABASE_URL".into(), urls[db].clone()));
        if name == "payment-service" {
            let provider = format!("127.0.0.1:{}", port()?);
            env.push(("SIMULATED_PROVIDER_ADDR".into(), provider.clone()));
            env.push(("PAYMENT_PROVIDER_URL".into(), format!("http://{provider}")));
        }
        http.insert(name, addr);
        procs.push(Proc {
            name,
            program: program(name)?,
            args: vec![],
            env,
            log: run_dir.join(format!("{name}.log")),
            child: None,
        });
    }
    let relay_addr = format!("127.0.0.1:{}", port()?);
    let mut env = common(&relay_addr);
    env.push((
        "OUTBOX_DATABASE_URLS".into(),
        ["order", "inventory", "payment", "notification", "saga"]
            .iter()
            .map(|db| format!("{db}={}", urls[db]))
            .collect::<Vec<_>>()
            .join(","),
    ));
    http.insert("outbox-relay", relay_addr);
    procs.push(Proc {
        name: "outbox-relay",
        program: program("outbox-relay")?,
        args: vec![],
        env,
        log: run_dir.join("outbox-relay.log"),
        child: None,
    });

    procs[0].start()?;
    wait_for_port(&broker_addr, Duration::from_secs(20)).await?;
    for proc in procs.iter_mut().skip(1) {
        proc.start()?;
    }
    let fleet: Fleet = Arc::new(Mutex::new(procs));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let ready = async {
        for (name, addr) in &http {
            wait_ready(&client, name, addr, Duration::from_secs(90)).await?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = ready => r?,
        _ = shutdown.cancelled() => bail!("interrupted"),
    }
    let inventory = format!("http://{}", http["inventory-service"]);
    for (sku, available) in STOCK {
        seed_stock(&client, &inventory, sku, available).await?;
    }
    let initial: HashMap<String, i64> = STOCK.iter().map(|(s, n)| (s.to_string(), *n)).collect();
    println!(
        "  every component is up (broker {broker_addr}, orders http://{}); load and faults start",
        http["order-service"]
    );

    // Load, faults, progress.
    let load = Arc::new(Load::default());
    let faults = Arc::new(std::sync::Mutex::new(Faults::default()));
    let stop = CancellationToken::new();
    let give_up = CancellationToken::new();
    let fault_minutes = Duration::from_secs_f64(args.minutes * 60.0);
    let loader = tokio::spawn(generate_load(
        client.clone(),
        format!("http://{}/orders", http["order-service"]),
        args.rate,
        seed,
        load.clone(),
        stop.clone(),
        give_up.clone(),
    ));
    let injector = tokio::spawn(inject_faults(
        fleet.clone(),
        seed,
        faults.clone(),
        stop.clone(),
        started,
    ));
    let watchdog_stop = CancellationToken::new();
    let watchdog = tokio::spawn(watchdog(
        fleet.clone(),
        faults.clone(),
        watchdog_stop.clone(),
        started,
    ));
    let load_started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    ticker.tick().await;
    let deadline = tokio::time::sleep(fault_minutes);
    tokio::pin!(deadline);
    let interrupted = loop {
        tokio::select! {
            _ = &mut deadline => break false,
            _ = shutdown.cancelled() => break true,
            _ = ticker.tick() => {
                let elapsed = load_started.elapsed().as_secs_f64();
                let acked = load.acknowledged.load(Ordering::Relaxed);
                println!(
                    "[{:>6.1}s] sent {} acknowledged {} ({:.1}/s) retried {} faults {}",
                    started.elapsed().as_secs_f64(),
                    load.sent.load(Ordering::Relaxed),
                    acked,
                    acked as f64 / elapsed,
                    load.retried.load(Ordering::Relaxed),
                    faults.lock().unwrap().total(),
                );
            }
        }
    };
    stop.cancel();
    if interrupted {
        give_up.cancel();
        bail!("interrupted; every child process is stopped");
    }
    println!(
        "[{:>6.1}s] load and faults stop; restoring every component and draining the retries",
        started.elapsed().as_secs_f64()
    );
    injector.await?;
    watchdog_stop.cancel();
    watchdog.await?;
    // Every component runs (the broker is resumed by the injector before it returns).
    {
        let mut fleet = fleet.lock().await;
        for proc in fleet.iter_mut() {
            let exited = match proc.child.as_mut() {
                None => true,
                Some(child) => child.try_wait()?.is_some(),
            };
            if exited {
                proc.start()?;
            }
        }
    }
    let give_up_later = give_up.clone();
    let drain_timer = tokio::spawn(async move {
        tokio::time::sleep(DRAIN).await;
        give_up_later.cancel();
    });
    loader.await?;
    drain_timer.abort();

    // Settle, then check.
    let pools = connect(&urls).await?;
    let db = Databases {
        order: &pools[0],
        inventory: &pools[1],
        payment: &pools[2],
        notification: &pools[3],
        saga: &pools[4],
    };
    let settle_started = Instant::now();
    let mut last = Settling::default();
    let mut settled_in = None;
    while settle_started.elapsed() < SETTLE {
        if shutdown.is_cancelled() {
            bail!("interrupted");
        }
        match invariants::settling(db, &[]).await {
            Ok(s) if s.settled() => {
                settled_in = Some(settle_started.elapsed().as_secs_f64());
                break;
            }
            Ok(s) => last = s,
            Err(e) => tracing::debug!(error = %e, "settling query failed"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if settled_in.is_none() {
        println!("not settled after {SETTLE:?}: {last:?}");
    }
    let findings: Findings = invariants::check(db, &initial, &[]).await?;
    let open_sagas_by_state: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT state, count(*) FROM sagas WHERE deadline IS NOT NULL GROUP BY state",
    )
    .fetch_all(db.saga)
    .await?
    .into_iter()
    .collect();
    let last_assignment = last_assignments(&run_dir);
    let acked: Vec<Uuid> = load.acked_ids.lock().unwrap().clone();
    let (missing, not_terminal) = invariants::acknowledged_orders(db.order, &acked).await?;
    let faults = std::mem::take(&mut *faults.lock().unwrap());
    let mut violations = findings.violations.clone();
    if !missing.is_empty() {
        violations.push(format!(
            "{} acknowledged orders are missing, e.g. {}",
            missing.len(),
            missing[0]
        ));
    }
    if !not_terminal.is_empty() {
        violations.push(format!(
            "{} acknowledged orders are not terminal",
            not_terminal.len()
        ));
    }
    let mut by_component: BTreeMap<String, u32> = faults
        .kills
        .iter()
        .map(|(k, v)| (format!("{k} (SIGKILL)"), *v))
        .collect();
    by_component.insert("broker (SIGSTOP 2-4 s)".into(), faults.broker_pauses);
    let report = Report {
        seed,
        run_folder: run_dir.display().to_string(),
        duration_s: started.elapsed().as_secs_f64(),
        fault_minutes: args.minutes,
        orders_sent: load.sent.load(Ordering::Relaxed),
        orders_acknowledged: load.acknowledged.load(Ordering::Relaxed),
        orders_retried: load.retried.load(Ordering::Relaxed),
        orders_refused_by_api: load.rejected_by_api.load(Ordering::Relaxed),
        orders_never_acknowledged: load.unacknowledged.load(Ordering::Relaxed),
        approved: findings.approved,
        rejected: findings.rejected,
        faults: by_component,
        broker: format!(
            "killed {} times (log on disk, restarted), frozen {} times",
            faults.kills.get("broker").copied().unwrap_or(0),
            faults.broker_pauses
        ),
        exited_on_their_own: faults
            .exited_on_their_own
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        lost: missing.len(),
        acknowledged_not_terminal: not_terminal.len(),
        duplicate_effects: findings.duplicate_effects,
        sagas_non_terminal: findings.sagas_non_terminal,
        sagas_failed: findings.sagas_failed.len(),
        outbox_unpublished: findings.outbox_unpublished,
        stock_conserved: findings.stock_conserved,
        money_conserved: findings.money_conserved,
        settled_in_s: settled_in,
        open_sagas_by_state,
        last_assignment,
        not_checked: "the simulated provider's own ledger (it lives in payment-service and restarts empty with it); topic contents",
        passed: violations.is_empty() && findings.orders > 0,
        violations,
    };
    print_report(&report, args.json)?;
    for pool in pools {
        pool.close().await;
    }
    // Children are killed when the fleet drops.
    drop(fleet);
    if !report.passed {
        bail!("chaos: invariants failed (logs in {})", report.run_folder);
    }
    Ok(())
}

/// The partition count of each component's last "partitions assigned" log line.
fn last_assignments(run_dir: &std::path::Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let last = text
            .lines()
            .rev()
            .find(|l| l.contains("partitions assigned"))
            .map(strip_ansi)
            .and_then(|l| {
                l.rsplit_once("partitions=")
                    .map(|(_, tail)| tail.to_string())
            })
            .map(|tail| {
                tail.chars()
                    .skip_while(|c| !c.is_ascii_digit())
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|n| n.parse().ok());
        if let Some(n) = last {
            out.insert(name.to_string(), n);
        }
    }
    out
}

/// A log line without its colour codes (ESC [ … m).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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

async fn connect(urls: &HashMap<&str, String>) -> anyhow::Result<Vec<PgPool>> {
    let mut pools = Vec::new();
    for db in ["order", "inventory", "payment", "notification", "saga"] {
        pools.push(
            PgPoolOptions::new()
                .max_connections(3)
                .connect(&urls[db])
                .await
                .with_context(|| format!("connecting to the {db} database"))?,
        );
    }
    Ok(pools)
}

async fn wait_for_port(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the broker did not listen on {addr} within {timeout:?}")
}

async fn wait_ready(
    client: &reqwest::Client,
    name: &str,
    addr: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let url = format!("http://{addr}/health/ready");
    while Instant::now() < deadline {
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("{name} was not ready at {url} within {timeout:?} (see its log in the run folder)")
}

async fn seed_stock(
    client: &reqwest::Client,
    inventory: &str,
    sku: &str,
    available: i64,
) -> anyhow::Result<()> {
    for _ in 0..40 {
        if let Ok(r) = client
            .put(format!("{inventory}/inventory/{sku}"))
            .json(&json!({ "available": available }))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("could not seed the stock of {sku}")
}

/// Place orders at `rate` per second until `stop`; each one is retried with its key until
/// acknowledged or `give_up`. Returns when every order task has ended.
async fn generate_load(
    client: reqwest::Client,
    url: String,
    rate: f64,
    seed: u64,
    load: Arc<Load>,
    stop: CancellationToken,
    give_up: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let lines = rng.random_range(1..=2);
        let items: Vec<_> = (0..lines)
            .map(|_| {
                let sku = if rng.random_bool(0.1) {
                    "CHAOS-SCARCE"
                } else {
                    ["CHAOS-1", "CHAOS-2", "CHAOS-3"][rng.random_range(0..3)]
                };
                json!({"sku": sku, "quantity": rng.random_range(1..=3), "unit_price_cents": rng.random_range(100..=5000)})
            })
            .collect();
        let method = if rng.random_bool(0.2) {
            "pm_card_chargeDeclined"
        } else {
            "pm_card_visa"
        };
        let body = json!({
            "customer_id": Uuid::from_u128(rng.random()),
            "items": items,
            "currency": "EUR",
            "payment_method": method,
        });
        let key = Uuid::from_u128(rng.random()).to_string();
        load.sent.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(place_order(
            client.clone(),
            url.clone(),
            key,
            body,
            load.clone(),
            give_up.clone(),
        ));
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn place_order(
    client: reqwest::Client,
    url: String,
    key: String,
    body: serde_json::Value,
    load: Arc<Load>,
    give_up: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = client
            .post(&url)
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        match attempt {
            Ok(r) if r.status().is_success() => {
                let order_id = r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["order_id"].as_str().and_then(|s| s.parse().ok()));
                load.acknowledged.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = order_id {
                    load.acked_ids.lock().unwrap().push(id);
                }
                return;
            }
            Ok(r)
                if r.status().is_client_error()
                    && r.status() != reqwest::StatusCode::REQUEST_TIMEOUT
                    && r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                load.rejected_by_api.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(status = %r.status(), "order refused");
                return;
            }
            _ => {}
        }
        load.retried.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = give_up.cancelled() => {
                load.unacknowledged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
}

/// Every 5–15 s (seeded), one fault: SIGKILL a component (the broker included) and restart
/// it 0.5–3 s later (the broker 1–5 s), or freeze the broker for 2–4 s. A fault under way is
/// always completed (restarted, resumed) before this returns.
async fn inject_faults(
    fleet: Fleet,
    seed: u64,
    faults: Arc<std::sync::Mutex<Faults>>,
    stop: CancellationToken,
    started: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let wait = Duration::from_secs_f64(rng.random_range(5.0..15.0));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let target: &'static str = match rng.random_range(0..5) {
            0 => "outbox-relay",
            1 => "saga-orchestrator",
            2 => SERVICES[rng.random_range(0..SERVICES.len())],
            3 => "broker",
            _ => "broker (freeze)",
        };
        let at = started.elapsed().as_secs_f64();
        if target == "broker (freeze)" {
            let pause = Duration::from_secs_f64(rng.random_range(2.0..4.0));
            let pid = fleet.lock().await[0].pid();
            let Some(pid) = pid else { continue };
            println!("[{at:>6.1}s] fault: broker frozen (SIGSTOP) for {pause:.1?}");
            signal("-STOP", pid).await;
            tokio::time::sleep(pause).await;
            signal("-CONT", pid).await;
            faults.lock().unwrap().broker_pauses += 1;
            continue;
        }
        let down = if target == "broker" {
            Duration::from_secs_f64(rng.random_range(1.0..5.0))
        } else {
            Duration::from_secs_f64(rng.random_range(0.5..3.0))
        };
        {
            let mut fleet = fleet.lock().await;
            let Some(proc) = fleet.iter_mut().find(|p| p.name == target) else {
                continue;
            };
            if let Some(mut child) = proc.child.take() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        println!("[{at:>6.1}s] fault: {target} killed (SIGKILL), restart in {down:.1?}");
        *faults.lock().unwrap().kills.entry(target).or_default() += 1;
        tokio::time::sleep(down).await;
        let mut fleet = fleet.lock().await;
        if let Some(proc) = fleet.iter_mut().find(|p| p.name == target)
            && let Err(e) = proc.start()
        {
            println!("could not restart {target}: {e:#}");
        }
    }
}

async fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .await;
    if !status.is_ok_and(|s| s.success()) {
        println!("kill {which} {pid} failed");
    }
}

/// Restart a component that exited without being killed (and count it).
async fn watchdog(
    fleet: Fleet,
    faults: Arc<std::sync::Mutex<Faults>>,
    stop: CancellationToken,
    started: Instant,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let mut fleet = fleet.lock().await;
        for proc in fleet.iter_mut() {
            let exited = proc
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                println!(
                    "[{:>6.1}s] {} exited on its own ({status}); restarting",
                    started.elapsed().as_secs_f64(),
                    proc.name
                );
                *faults
                    .lock()
                    .unwrap()
                    .exited_on_their_own
                    .entry(proc.name)
                    .or_default() += 1;
                if let Err(e) = proc.start() {
                    println!("could not restart {}: {e:#}", proc.name);
                }
            }
        }
    }
}

fn print_report(report: &Report, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "NO" };
    let faults = report
        .faults
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let own = if report.exited_on_their_own.is_empty() {
        "none".to_string()
    } else {
        format!("{:?}", report.exited_on_their_own)
    };
    println!(
        "
sagaflow chaos report (seed {seed})
  duration                  {duration:.1} s ({minutes} min of faults under load)
  orders sent               {sent}
  orders acknowledged       {acked}
  orders retried (attempts) {retried}
  refused by the API (4xx)  {refused}
  never acknowledged        {unacked}
  approved / rejected       {approved} / {rejected}
  faults                    {faults}
  broker                    {broker}
  exited on their own       {own}
  settled in                {settled}
  open sagas by state       {open_by_state:?}
  last assignment (parts.)  {assignment:?}
  lost                      {lost}
  acknowledged not terminal {not_terminal}
  duplicate effects         {dup}
  sagas non-terminal        {open} (FAILED: {failed})
  outbox rows unpublished   {outbox}
  stock conserved           {stock}
  money conserved           {money}
  not checked               {not_checked}
  logs                      {folder}
  result                    {result}",
        seed = report.seed,
        duration = report.duration_s,
        minutes = report.fault_minutes,
        sent = report.orders_sent,
        acked = report.orders_acknowledged,
        retried = report.orders_retried,
        refused = report.orders_refused_by_api,
        unacked = report.orders_never_acknowledged,
        approved = report.approved,
        rejected = report.rejected,
        broker = report.broker,
        settled = report
            .settled_in_s
            .map_or("NOT SETTLED".to_string(), |s| format!("{s:.1} s")),
        lost = report.lost,
        open_by_state = report.open_sagas_by_state,
        assignment = report.last_assignment,
        not_terminal = report.acknowledged_not_terminal,
        dup = report.duplicate_effects,
        open = report.sagas_non_terminal,
        failed = report.sagas_failed,
        outbox = report.outbox_unpublished,
        stock = yes(report.stock_conserved),
        money = yes(report.money_conserved),
        not_checked = report.not_checked,
        folder = report.run_folder,
        result = if report.passed { "PASS" } else { "FAIL" },
    );
    for v in &report.violations {
        println!("  violation: {v}");
    }
    Ok(())
}
