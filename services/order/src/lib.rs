//! order-service: accepts orders over HTTP and applies the saga's verdict.
//!
//! `POST /orders` writes the order (PENDING) and `OrderPlaced` in one transaction; the saga
//! answers with `ApproveOrder` / `RejectOrder` on orders.commands, which this service applies
//! and announces (`OrderApproved` / `OrderRejected`), again in one transaction.

mod domain;
mod handler;
mod http;
mod store;

use sagaflow_common::KafkaConfig;
use sagaflow_common::consumer::{self, ConsumerSettings};
use sagaflow_schemas::topics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use domain::{NewOrder, OrderLine, ValidationError, validate};
pub use http::router;

pub const NAME: &str = "order-service";
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/order");

/// Consume orders.commands until `shutdown`.
pub async fn run_consumer(
    pool: PgPool,
    kafka: KafkaConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = ConsumerSettings::new(NAME, &[topics::ORDERS_COMMANDS]);
    consumer::run(pool, kafka, settings, handler::OrderCommands, shutdown).await
}
