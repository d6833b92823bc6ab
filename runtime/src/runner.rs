//! The shape every service binary shares: connect (lazily, so a component starts while
//! PostgreSQL is still coming up), migrate, serve its routes next to health and metrics, run
//! its consumer, stop cleanly on Ctrl-C / SIGTERM.

use std::future::Future;
use std::pin::Pin;

use axum::Router;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::KafkaConfig;
use crate::http::{Readiness, ops_router, serve};

pub type ConsumerFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// One service process.
pub struct Component {
    pub name: &'static str,
    pub database_url: String,
    pub migrator: &'static Migrator,
    pub http_addr: String,
    pub kafka: KafkaConfig,
    /// Builds the component's API routes; a closure, so it can capture the component's settings.
    pub router: Box<dyn FnOnce(PgPool) -> Router + Send>,
    /// Authentication and rate limit of `router` (health and metrics stay open).
    pub security: crate::auth::ApiSecurity,
    /// Starts the component's background work (its consumer); a closure, like `router`.
    pub consumer: Box<dyn FnOnce(PgPool, KafkaConfig, CancellationToken) -> ConsumerFuture + Send>,
}

/// Run until a signal arrives or a part fails.
pub async fn run(component: Component) -> anyhow::Result<()> {
    crate::telemetry::init();
    // Bound first, so an API that would be open to the network is refused before anything
    // else happens (closed unless opened on purpose).
    let listener = tokio::net::TcpListener::bind(&component.http_addr).await?;
    crate::exposure::check(&component.security, listener.local_addr()?)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let pool = crate::db::connect_lazy(&component.database_url, 16)?;
    migrate_with_retry(&pool, component.migrator, &shutdown).await?;
    // Components create the topics they touch (brokers may stall on topics never created).
    crate::kafka::ensure_all_topics(&component.kafka).await?;
    let api = crate::http::with_request_timeout(
        crate::auth::protect((component.router)(pool.clone()), &component.security),
        std::time::Duration::from_secs(10),
    );
    let router = api.merge(ops_router(Readiness {
        databases: vec![(component.name.to_string(), pool.clone())],
        kafka: Some(component.kafka.clone()),
    }));
    info!(component = component.name, addr = %listener.local_addr()?, "serving HTTP");
    let http = tokio::spawn(serve(listener, router, shutdown.clone()));
    let consumer = (component.consumer)(pool, component.kafka, shutdown.clone());
    let result = consumer.await;
    shutdown.cancel();
    http.await??;
    crate::telemetry::shutdown();
    result
}

/// Apply migrations, waiting for the database to accept connections.
pub async fn migrate_with_retry(
    pool: &PgPool,
    migrator: &Migrator,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e)) if crate::db::is_unavailable(&e) => {
                tracing::warn!(error = %e, "database not reachable yet; retrying migrations");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped before the database became reachable"),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Cancel `shutdown` on Ctrl-C or SIGTERM.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    info!("shutdown requested");
    shutdown.cancel();
}
