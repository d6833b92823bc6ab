//! query-service: CQRS read models fed only by Kafka events.
//!
//! - **Order view** (`GET /views/orders/{id}`): status, items, totals and a timeline of every
//!   saga step; **customer history** (`GET /views/customers/{id}/orders`), newest first,
//!   keyset-paginated; **stock view** (`GET /views/stock/{sku}`): reserved per SKU.
//! - Every response carries `freshness` (newest event applied, messages not applied yet).
//!
//! Guarantees:
//! - The projections are idempotent and order-safe by construction ([`projection`]): the live
//!   consumer and a replay need no inbox, build the same rows, and duplicates or reordering
//!   across topics never change the result.
//! - The live tables and how far they have read (`projection_positions`) commit together.
//! - [`replay`] rebuilds a projection into shadow tables and switches them in atomically; the
//!   live view keeps answering meanwhile.
//! - An event a projection refuses goes to `<topic>.dlq` with its reason; the partition moves on.
//!
//! Layout: [`projection`] (the rules), `handler` (consumer glue), [`http`] (read API),
//! [`replay`], [`lag`] (lag sampling and metrics).

mod handler;
pub mod http;
pub mod lag;
pub mod projection;
pub mod replay;

use std::time::Duration;

use sagaflow_messaging::consumer::{self, ConsumerSettings};
use sagaflow_runtime::KafkaConfig;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use handler::QueryHandler;
pub use http::{openapi, router};
pub use projection::{Projection, QueryConfig, Rules};

/// The component's name: inbox consumer and consumer group.
pub const NAME: &str = "query-service";

/// Migrations of the query database.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        sagaflow_messaging::migrations::migrator(
            &sqlx::migrate!("../../migrations/query"),
            sagaflow_messaging::migrations::Tables::InboxOnly,
        )
    });

/// Topics this component reads.
pub fn topics() -> Vec<&'static str> {
    let mut topics: Vec<&'static str> = Projection::ALL
        .iter()
        .flat_map(|p| p.topics().iter().copied())
        .collect();
    topics.sort_unstable();
    topics.dedup();
    topics
}

/// Consume the events topics with the rules of `config` until `shutdown`, sampling its own lag.
pub async fn run_consumer(
    pool: PgPool,
    kafka: KafkaConfig,
    config: QueryConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rules = config.rules().map_err(anyhow::Error::msg)?;
    let groups = vec![lag::Group::new(NAME, &topics())];
    run_with(pool, kafka, rules, groups, shutdown).await
}

/// Consume with explicit `rules`, and sample the lag of `groups` (this consumer's and any
/// other the deployment wants as metrics) every second.
pub async fn run_with(
    pool: PgPool,
    kafka: KafkaConfig,
    rules: Rules,
    groups: Vec<lag::Group>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A child token: stopping the sampler must not stop the caller's other components.
    let sampler_stop = shutdown.child_token();
    // Aborted with this future: a crashed query service leaves no sampler behind.
    let sampler = AbortOnDropHandle::new(tokio::spawn(lag::run(
        pool.clone(),
        kafka.clone(),
        groups,
        Duration::from_secs(1),
        sampler_stop.clone(),
    )));
    let settings = ConsumerSettings::new(NAME, &topics(), &kafka);
    let handler = QueryHandler::new(rules, &kafka.topic_prefix);
    let result = consumer::run(pool, kafka, settings, handler, shutdown).await;
    sampler_stop.cancel();
    let _ = sampler.await;
    result
}
