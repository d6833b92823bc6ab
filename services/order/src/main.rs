//! The order-service binary: HTTP API + orders.commands consumer.

use clap::Parser;
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::ApiSecurity;
use sagaflow_runtime::runner::{self, Api, Component, Database};

#[derive(Debug, Parser)]
#[command(name = "order-service")]
struct Args {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8081")]
    http_addr: String,
    #[command(flatten)]
    kafka: KafkaConfig,
    #[command(flatten)]
    security: ApiSecurity,
    #[command(flatten)]
    orders: order_service::OrderConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    runner::run(Component {
        name: order_service::NAME,
        http_addr: args.http_addr,
        kafka: args.kafka,
        databases: vec![Database::owned(
            "order",
            args.database_url,
            &order_service::MIGRATOR,
        )],
        api: Some(
            Api::new(args.security, move |pool| {
                order_service::router(pool, args.orders)
            })
            .with_openapi(order_service::openapi()),
        ),
        sidecar: None,
        work: Box::new(move |pools, kafka, shutdown| {
            Box::pin(order_service::run(
                pools.own(),
                kafka,
                args.orders,
                shutdown,
            ))
        }),
    })
    .await
}
