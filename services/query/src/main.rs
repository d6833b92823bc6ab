//! The query-service binary: the read models' HTTP API (orders, stock, freshness), the operator
//! console (`/console`, sagaflow-console; the other databases it reads are optional), and the
//! consumer of the events topics that feeds them, sampling its consumer lag.

use clap::Parser;
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::ApiSecurity;
use sagaflow_runtime::runner::{self, Api, Component, Database};

#[derive(Debug, Parser)]
#[command(
    name = "query-service",
    version,
    about = "Read models of orders and stock, fed by the events topics"
)]
struct Args {
    /// PostgreSQL URL of the query database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Address of the HTTP API and the health and metrics routes.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8087")]
    http_addr: String,
    #[command(flatten)]
    kafka: KafkaConfig,
    #[command(flatten)]
    security: ApiSecurity,
    #[command(flatten)]
    query: query_service::QueryConfig,
    /// The other databases the operator console (`/console`) reads, each optional.
    #[command(flatten)]
    console: sagaflow_console::ConsoleDatabases,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // A configuration mistake is reported before anything starts.
    args.query.rules().map_err(anyhow::Error::msg)?;
    let query = args.query;
    // The operator console's other databases: a malformed URL fails here, before anything starts.
    let console_pools = args.console.connect_lazy()?;
    let audit_retention = args.console.audit_retention();
    let (console_kafka, console_security) = (args.kafka.clone(), args.security.clone());
    let console = move |pool| {
        sagaflow_console::Console::new(pool, console_kafka, &console_security)
            .with_audit_retention(audit_retention)
            .with_databases(console_pools)
            .router()
    };
    runner::run(Component {
        name: query_service::NAME,
        http_addr: args.http_addr,
        kafka: args.kafka,
        databases: vec![Database::owned(
            "query",
            args.database_url,
            &query_service::MIGRATOR,
        )],
        api: Some(
            Api::new(args.security, query_service::router)
                .with_openapi(query_service::openapi())
                .with_self_protected(console),
        ),
        sidecar: None,
        work: Box::new(move |pools, kafka, shutdown| {
            Box::pin(query_service::run_consumer(
                pools.own(),
                kafka,
                query,
                shutdown,
            ))
        }),
    })
    .await
}
