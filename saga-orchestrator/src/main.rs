//! The saga-orchestrator binary.

use clap::Parser;
use saga_orchestrator::SagaConfig;
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::ApiSecurity;
use sagaflow_runtime::runner::{self, Api, Component, Database};

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
    let args = Args::parse();
    let saga = args.saga;
    runner::run(Component {
        name: saga_orchestrator::NAME,
        http_addr: args.http_addr,
        kafka: args.kafka,
        databases: vec![Database::owned(
            "saga",
            args.database_url,
            &saga_orchestrator::MIGRATOR,
        )],
        api: Some(
            Api::new(args.security, saga_orchestrator::router)
                .with_openapi(saga_orchestrator::openapi()),
        ),
        sidecar: None,
        work: Box::new(move |pools, kafka, shutdown| {
            Box::pin(saga_orchestrator::run(pools.own(), kafka, saga, shutdown))
        }),
    })
    .await
}
