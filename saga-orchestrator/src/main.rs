//! The saga-orchestrator binary.

use clap::Parser;
use saga_orchestrator::SagaConfig;
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::{ApiSecurity, protect};
use sagaflow_runtime::http::{Readiness, ops_router, serve, with_request_timeout};
use sagaflow_runtime::runner;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "saga-orchestrator")]
struct Args {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8085")]
    http_addr: String,
    #[command(flatten)]
    kafka: KafkaConfig,
    #[command(flatten)]
    saga: SagaConfig,
    #[command(flatten)]
    security: ApiSecurity,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sagaflow_runtime::telemetry::init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.http_addr).await?;
    sagaflow_runtime::exposure::check(&args.security, listener.local_addr()?)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(runner::cancel_on_signal(shutdown.clone()));
    let pool = sagaflow_runtime::db::connect_lazy(&args.database_url, 16)?;
    runner::migrate_with_retry(&pool, &saga_orchestrator::MIGRATOR, &shutdown).await?;
    let api = with_request_timeout(
        protect(saga_orchestrator::router(pool.clone()), &args.security),
        std::time::Duration::from_secs(10),
    );
    let router = api.merge(ops_router(Readiness {
        databases: vec![("saga".into(), pool.clone())],
        kafka: Some(args.kafka.clone()),
    }));
    let http = tokio::spawn(serve(listener, router, shutdown.clone()));
    let result = saga_orchestrator::run(pool, args.kafka, args.saga, shutdown.clone()).await;
    shutdown.cancel();
    http.await??;
    sagaflow_runtime::telemetry::shutdown();
    result
}
