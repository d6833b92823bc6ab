//! The payment-service binary: the HTTP API and operational routes, the consumer of
//! `payment.commands`, and optionally the simulated payment provider — configured by
//! environment (or flags), stopped cleanly by Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use payment_service::{
    MIGRATOR, NAME, PaymentConfig, ProviderFaults, router, run_consumer, spawn_provider,
};
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::ApiSecurity;
use sagaflow_runtime::runner::{self, Api, Component, Database, Sidecar};
use tokio::net::TcpListener;

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
    http_addr: String,
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
    let args = Args::parse();
    let payment = args.payment;
    runner::run(Component {
        name: NAME,
        http_addr: args.http_addr,
        kafka: args.kafka,
        databases: vec![Database::owned("payment", args.database_url, &MIGRATOR)],
        api: Some(Api::new(args.security, router).with_openapi(payment_service::openapi())),
        sidecar: args
            .simulated_provider_addr
            .map(|address| simulated_provider(address, args.faults)),
        work: Box::new(move |pools, kafka, shutdown| {
            Box::pin(run_consumer(pools.own(), kafka, payment, shutdown))
        }),
    })
    .await
}

/// The simulated payment provider, served beside the service until it stops.
fn simulated_provider(address: SocketAddr, faults: ProviderFaults) -> Sidecar {
    Box::new(move |shutdown| {
        Box::pin(async move {
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the simulated provider to {address}"))?;
            spawn_provider(listener, faults, shutdown).await;
            Ok(())
        })
    })
}
