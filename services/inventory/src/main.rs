//! The inventory-service production binary: migrations, the HTTP API with health and metrics,
//! and the inventory.commands consumer, configured by environment. Stops cleanly on Ctrl-C or
//! SIGTERM: the HTTP server drains, the consumer finishes its current message.

use std::net::SocketAddr;

use clap::Parser;
use inventory_service::{MIGRATOR, TOPICS, router, run_consumer};
use sagaflow_common::KafkaConfig;
use sagaflow_common::http::{Readiness, ops_router, serve};
use sagaflow_common::{db, kafka, telemetry};
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "inventory-service",
    version,
    about = "Sagaflow inventory service"
)]
struct Args {
    /// PostgreSQL URL of the inventory database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[command(flatten)]
    kafka: KafkaConfig,
    /// Address of the HTTP API (and /health, /metrics).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8082")]
    http_addr: SocketAddr,
    /// Database connections (the consumer needs one, HTTP requests the rest).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    database_max_connections: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let args = Args::parse();
    let pool = db::connect(&args.database_url, args.database_max_connections).await?;
    MIGRATOR.run(&pool).await?;
    kafka::ensure_topics(&args.kafka, TOPICS).await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let app = router(pool.clone())
        .merge(ops_router(Readiness {
            databases: vec![("inventory".into(), pool.clone())],
            kafka: Some(args.kafka.clone()),
        }))
        .layer(TraceLayer::new_for_http());
    let listener = tokio::net::TcpListener::bind(args.http_addr).await?;
    info!(addr = %listener.local_addr()?, "inventory-service listening");

    // Whichever half stops first (error or signal) stops the other.
    let http = async {
        let result = serve(listener, app, shutdown.clone()).await;
        shutdown.cancel();
        result.map_err(anyhow::Error::from)
    };
    let consumer = async {
        let result = run_consumer(pool.clone(), args.kafka.clone(), shutdown.clone()).await;
        shutdown.cancel();
        result
    };
    let (http, consumer) = tokio::join!(http, consumer);
    pool.close().await;
    http?;
    consumer?;
    info!("inventory-service stopped");
    Ok(())
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
    shutdown.cancel();
}
