//! The order-service binary: HTTP API + orders.commands consumer.

use clap::Parser;
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::ApiSecurity;
use sagaflow_runtime::runner::{self, Component};

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
        database_url: args.database_url,
        migrator: &order_service::MIGRATOR,
        http_addr: args.http_addr,
        kafka: args.kafka,
        security: args.security,
        router: Box::new(move |pool| order_service::router(pool, args.orders)),
        consumer: Box::new(move |pool, kafka, shutdown| {
            Box::pin(order_service::run(pool, kafka, args.orders, shutdown))
        }),
    })
    .await
}
