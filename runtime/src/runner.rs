//! The one shape of every component binary (the services, the orchestrator, the relay): bind
//! the HTTP address and refuse an open API (closed unless opened on purpose), start a sidecar
//! if it has one, connect to its databases (lazily, so a component starts while PostgreSQL is
//! still coming up) and migrate those it owns, create the topics, serve its API next to health,
//! readiness and metrics, run its work (consumer, relays) until a signal ([`stop_on_signal`],
//! the one signal handler, also the `sagaflow` CLI's) or until the work ends, then stop the
//! HTTP server with it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::KafkaConfig;
use crate::auth::ApiSecurity;
use crate::http::{Readiness, ops_router, serve};

/// A component's long-running work, or a sidecar's start.
pub type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Starts a component's work on its pools; a closure, so it can capture its configuration.
pub type Work = Box<dyn FnOnce(Pools, KafkaConfig, CancellationToken) -> Task + Send>;

/// Starts a sidecar (e.g. payment's simulated provider); the returned task ends once it is
/// serving, and it runs until the token is cancelled.
pub type Sidecar = Box<dyn FnOnce(CancellationToken) -> Task + Send>;

/// Connections of a component's pool for its own database (API, consumer lanes, sweepers).
const OWN_POOL_SIZE: u32 = 16;
/// Connections of a pool for another component's database (a relay: one pass at a time).
const SHARED_POOL_SIZE: u32 = 4;

/// Bound of one HTTP request, slow clients included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One component process.
pub struct Component {
    pub name: &'static str,
    pub http_addr: String,
    pub kafka: KafkaConfig,
    /// Its databases, its own first.
    pub databases: Vec<Database>,
    /// Its API, if it has one (the relay serves only health, readiness and metrics).
    pub api: Option<Api>,
    /// Started before the databases are connected, and awaited until serving.
    pub sidecar: Option<Sidecar>,
    pub work: Work,
}

/// A database a component uses.
pub struct Database {
    /// Its name in readiness reports and logs.
    pub name: String,
    pub url: String,
    /// The component's migrations for it, when the component owns it.
    pub migrator: Option<&'static Migrator>,
    pub max_connections: u32,
}

impl Database {
    /// The component's own database, migrated by it.
    pub fn owned(name: impl Into<String>, url: String, migrator: &'static Migrator) -> Self {
        Database {
            name: name.into(),
            url,
            migrator: Some(migrator),
            max_connections: OWN_POOL_SIZE,
        }
    }

    /// Another component's database (the relay's), not migrated here.
    pub fn shared(name: impl Into<String>, url: String) -> Self {
        Database {
            name: name.into(),
            url,
            migrator: None,
            max_connections: SHARED_POOL_SIZE,
        }
    }
}

/// A component's API routes and who may call them.
pub struct Api {
    /// Builds the routes on the component's own pool; a closure, so it can capture settings.
    pub router: Box<dyn FnOnce(PgPool) -> Router + Send>,
    /// Authentication and rate limit of `router` (health and metrics stay open).
    pub security: ApiSecurity,
    /// The OpenAPI description of `router`'s routes, served at `/openapi.json`.
    pub openapi: Option<utoipa::openapi::OpenApi>,
    /// Routes that check tokens on their own (the operator console: cookie or bearer), merged
    /// beside `router`'s protection rather than behind it.
    pub self_protected: Option<Box<dyn FnOnce(PgPool) -> Router + Send>>,
}

impl Api {
    pub fn new(
        security: ApiSecurity,
        router: impl FnOnce(PgPool) -> Router + Send + 'static,
    ) -> Self {
        Api {
            router: Box::new(router),
            security,
            openapi: None,
            self_protected: None,
        }
    }

    /// Serve `doc` (the routes' OpenAPI description) at `/openapi.json`.
    pub fn with_openapi(mut self, doc: utoipa::openapi::OpenApi) -> Self {
        self.openapi = Some(doc);
        self
    }

    /// Also serve `routes`, which check tokens on their own (see [`Api::self_protected`]).
    pub fn with_self_protected(
        mut self,
        routes: impl FnOnce(PgPool) -> Router + Send + 'static,
    ) -> Self {
        self.self_protected = Some(Box::new(routes));
        self
    }
}

/// A component's pools, in the order of [`Component::databases`].
#[derive(Debug, Clone)]
pub struct Pools(Vec<(String, PgPool)>);

impl Pools {
    /// The component's own database (the first).
    pub fn own(&self) -> PgPool {
        self.0[0].1.clone()
    }

    /// Every pool with its database's name.
    pub fn named(&self) -> Vec<(String, PgPool)> {
        self.0.clone()
    }
}

/// Run until a signal arrives or the work ends; the work's error is the process's.
pub async fn run(component: Component) -> anyhow::Result<()> {
    crate::telemetry::init();
    // Bound first, so an API that would be open to the network is refused before anything
    // else happens (closed unless opened on purpose).
    let listener = tokio::net::TcpListener::bind(&component.http_addr)
        .await
        .with_context(|| format!("binding {}", component.http_addr))?;
    if let Some(api) = &component.api {
        crate::exposure::check(&api.security, listener.local_addr()?)?;
    }
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone())?;
    // Before the work: a consumer's first calls find the sidecar serving.
    if let Some(sidecar) = component.sidecar {
        sidecar(shutdown.clone())
            .await
            .context("starting the sidecar")?;
    }
    let pools = connect_and_migrate(&component.databases, &shutdown).await?;
    // Components create the topics they touch (brokers may stall on topics never created).
    retry_while_starting("kafka topics", || {
        crate::kafka::ensure_all_topics(&component.kafka)
    })
    .await?;
    let mut router = ops_router(Readiness {
        databases: pools.named(),
        kafka: Some(component.kafka.clone()),
    });
    let mut api_doc = None;
    if let Some(api) = component.api {
        let mut routes = crate::auth::protect((api.router)(pools.own()), &api.security);
        if let Some(self_protected) = api.self_protected {
            routes = routes.merge(self_protected(pools.own()));
        }
        router = crate::http::with_request_timeout(routes, REQUEST_TIMEOUT).merge(router);
        api_doc = api.openapi;
    }
    // Open, like health and metrics: the documents describe the contract, not data.
    let router = router.merge(crate::openapi::docs_router(&crate::openapi::document(
        component.name,
        api_doc,
    )));
    info!(component = component.name, addr = %listener.local_addr()?, "serving HTTP");
    let http = tokio::spawn(serve(listener, router, shutdown.clone()));
    let worked = (component.work)(pools.clone(), component.kafka, shutdown.clone()).await;
    // However the work ended, take the HTTP server down with it.
    shutdown.cancel();
    let served = http.await.context("HTTP server task")?;
    for (_, pool) in pools.named() {
        pool.close().await;
    }
    crate::telemetry::shutdown();
    worked.with_context(|| format!("{} stopped", component.name))?;
    served.context("HTTP server")?;
    info!(component = component.name, "stopped");
    Ok(())
}

async fn connect_and_migrate(
    databases: &[Database],
    shutdown: &CancellationToken,
) -> anyhow::Result<Pools> {
    anyhow::ensure!(!databases.is_empty(), "a component needs a database");
    let mut pools = Vec::with_capacity(databases.len());
    for database in databases {
        let pool = crate::db::connect_lazy(&database.url, database.max_connections)
            .with_context(|| format!("the {} database URL", database.name))?;
        if let Some(migrator) = database.migrator {
            migrate_with_retry(&pool, migrator, shutdown)
                .await
                .with_context(|| format!("migrating the {} database", database.name))?;
        }
        pools.push((database.name.clone(), pool));
    }
    Ok(Pools(pools))
}

/// Retry a start-up step with backoff for about a minute, logging each failure: dependencies
/// started together (containers) may not answer yet.
async fn retry_while_starting<T, E, F, Fut>(what: &str, step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<anyhow::Error> + std::fmt::Display,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(Duration::from_secs(60)))
        .without_max_times()
        .with_jitter();
    step.retry(backoff)
        .notify(|e, delay| warn!(%what, error = %e, ?delay, "start-up step failed; retrying"))
        .await
        .map_err(Into::<anyhow::Error>::into)
        .with_context(|| format!("setting up the {what}"))
}

/// Apply migrations, waiting for the database to accept connections.
async fn migrate_with_retry(
    pool: &PgPool,
    migrator: &Migrator,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e)) if crate::db::is_unavailable(&e) => {
                warn!(error = %e, "database not reachable yet; retrying migrations");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped before the database became reachable"),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// How long a stop may take after the first SIGINT or SIGTERM before the process exits anyway
/// (container runtimes SIGKILL 10 s after their SIGTERM).
const STOP_DEADLINE: Duration = Duration::from_secs(9);

/// SIGINT (Ctrl-C) and SIGTERM (containers are stopped with it): the first cancels `shutdown`,
/// and the command stops gracefully; a second one, or a graceful stop longer than
/// [`STOP_DEADLINE`], exits the process at once (said in a warning), with status 128 + the
/// signal's number, as if the signal had killed it.
///
/// Watched on a thread and runtime of their own: however busy (or stuck) the command's runtime
/// is, a signal is seen and the deadline kept. Registered before the command starts, so a
/// signal during start-up is not lost either.
pub fn stop_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut signals = {
        let _in_runtime = runtime.enter();
        Signals::new()?
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                let (first, code) = signals.next().await;
                info!(
                    signal = first,
                    "shutdown requested (a second signal exits at once)"
                );
                shutdown.cancel();
                tokio::select! {
                    (second, _) = signals.next() => {
                        warn!(signal = second, "second signal while stopping: exiting now");
                    }
                    _ = tokio::time::sleep(STOP_DEADLINE) => {
                        warn!(
                            deadline_s = STOP_DEADLINE.as_secs(),
                            "the graceful stop did not finish in time: exiting now"
                        );
                    }
                }
                std::process::exit(code);
            })
        })?;
    Ok(())
}

struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal's name and the exit status it stands for (128 + its number).
    async fn next(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.interrupt.recv() => ("SIGINT", 130),
            _ = self.terminate.recv() => ("SIGTERM", 143),
        }
    }
}
