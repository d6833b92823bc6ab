//! The notification-service production binary: migrations, the HTTP API next to health and metrics,
//! and its consumer, configured by environment; stops cleanly on Ctrl-C or SIGTERM.

use clap::Parser;
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::ApiSecurity;
use sagaflow_runtime::runner::{self, Api, Component, Database};

#[derive(Debug, Parser)]
#[command(name = "notification-service", version)]
struct Args {
    /// PostgreSQL URL of the notification database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Address of the HTTP API (and /health, /metrics).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8084")]
    http_addr: String,
    #[command(flatten)]
    kafka: KafkaConfig,
    #[command(flatten)]
    security: ApiSecurity,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    runner::run(Component {
        name: notification_service::NAME,
        http_addr: args.http_addr,
        kafka: args.kafka,
        databases: vec![Database::owned(
            "notification",
            args.database_url,
            &notification_service::MIGRATOR,
        )],
        api: Some(
            Api::new(args.security, notification_service::router)
                .with_openapi(notification_service::openapi()),
        ),
        sidecar: None,
        work: Box::new(move |pools, kafka, shutdown| {
            Box::pin(notification_service::run_consumer(
                pools.own(),
                kafka,
                shutdown,
            ))
        }),
    })
    .await
}
