//! The payment-service binary: the HTTP API and operational routes, the consumer of
//! `payment.commands`, and optionally the simulated payment provider — configured by
//! environment (or flags), stopped cleanly by Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use clap::Parser;
use payment_service::{
    MIGRATOR, NAME, PaymentConfig, ProviderFaults, router, run_consumer, spawn_provider,
};
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::{ApiSecurity, protect};
use sagaflow_runtime::http::{Readiness, ops_router, serve, with_request_timeout};
use sagaflow_runtime::{db, kafka, telemetry};
use sagaflow_schemas::topics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Bound of one HTTP request, slow clients included.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "payment-service",
    version,
    about = "Charges and refunds orders for the order saga"
)]
struct Args {
    /// PostgreSQL URL of the payment database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Address of the HTTP API and the health and metrics routes.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8083")]
    http_addr: SocketAddr,
    /// Also serve the simulated payment provider on this address.
    #[arg(long, env = "SIMULATED_PROVIDER_ADDR")]
    simulated_provider_addr: Option<SocketAddr>,
    #[command(flatten)]
    faults: ProviderFaults,
    #[command(flatten)]
    kafka: KafkaConfig,
    #[command(flatten)]
    payment: PaymentConfig,
    #[command(flatten)]
    security: ApiSecurity,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let args = Args::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    // The API's address is bound first, so an API that would be open to the network is
    // refused before anything else happens (closed unless opened on purpose).
    let listener = TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    sagaflow_runtime::exposure::check(&args.security, listener.local_addr()?)?;
    // Then the provider: with a simulated provider, the consumer's first calls find it.
    if let Some(address) = args.simulated_provider_addr {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the simulated provider to {address}"))?;
        spawn_provider(listener, args.faults, shutdown.clone()).await;
    }

    // Dependencies may still be starting (containers start together): wait for them a while.
    let pool = startup("database", || db::connect(&args.database_url, 10)).await?;
    MIGRATOR
        .run(&pool)
        .await
        .context("running the payment migrations")?;
    let kafka_config = args.kafka.clone();
    startup("kafka topics", || {
        kafka::ensure_topics(
            &kafka_config,
            &[topics::PAYMENT_COMMANDS, topics::PAYMENT_EVENTS],
        )
    })
    .await?;

    let api = with_request_timeout(protect(router(pool.clone()), &args.security), TIMEOUT);
    let app = api.merge(ops_router(Readiness {
        databases: vec![("payment".into(), pool.clone())],
        kafka: Some(args.kafka.clone()),
    }));
    info!(address = %args.http_addr, provider = %args.payment.provider_url, "{NAME} listening");
    let server = tokio::spawn(serve(listener, app, shutdown.clone()));

    let consumed = run_consumer(pool.clone(), args.kafka, args.payment, shutdown.clone()).await;
    // However the consumer ended, take the HTTP server down with it.
    shutdown.cancel();
    let served = server.await.context("HTTP server task")?;
    pool.close().await;
    telemetry::shutdown();
    consumed.context("consumer")?;
    served.context("HTTP server")?;
    info!("{NAME} stopped");
    Ok(())
}

/// Retry a start-up step with backoff for about a minute, logging each failure.
async fn startup<T, E, F, Fut>(what: &str, step: F) -> anyhow::Result<T>
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
        .with_context(|| format!("connecting to the {what}"))
}

/// Cancel on Ctrl-C or SIGTERM (containers are stopped with SIGTERM).
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
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
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutting down");
    shutdown.cancel();
}
