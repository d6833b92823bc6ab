//! inventory-service: holds stock per SKU and reserves it for orders.
//!
//! It consumes `inventory.commands` (ReserveStock, ReleaseStock) and answers on
//! `inventory.events` (StockReserved, StockRejected, StockReleased) through its outbox.
//!
//! Guarantees:
//! - **All or nothing**: an order's lines are reserved together or not at all.
//! - **Never negative, never twice**: quantities cannot go below zero (checked in code under
//!   row locks, and by CHECK constraints), and an order is reserved at most once, however
//!   often its command is delivered or retried.
//! - **Compensation wins**: a ReleaseStock that overtakes its ReserveStock leaves a tombstone,
//!   so the late reservation is refused and no stock is stranded.
//! - **Stock is conserved**: reserving and releasing only move quantity between `available`
//!   and `reserved`; approved orders keep their reservation (sold), so for every SKU the
//!   restocked quantity equals available + what approved orders reserved.
//! - **No deadlocks** between concurrent reservations: stock rows are locked in SKU order.
//! - Every state change commits together with its inbox row and its reply (outbox).
//!
//! Layout: [`domain`] holds the pure rules, `store` the SQL, `handler` the consumer glue and
//! `http` the restocking API. [`faults`] is a dev/test-only switch that makes ReleaseStock
//! fail, for compensation fault tests.

pub mod domain;
pub mod faults;
mod handler;
mod http;
mod store;

use sagaflow_messaging::consumer::{self, ConsumerSettings};
use sagaflow_runtime::KafkaConfig;
use sagaflow_schemas::topics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use faults::{InventoryFaults, control_openapi, control_router};
pub use handler::InventoryHandler;
pub use http::{openapi, router};

/// The component's name: envelope source, inbox consumer and consumer group.
pub const NAME: &str = "inventory-service";

/// Migrations of the inventory database.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        sagaflow_messaging::migrations::migrator(
            &sqlx::migrate!("../../migrations/inventory"),
            sagaflow_messaging::migrations::Tables::OutboxAndInbox,
        )
    });

/// Topics this component reads or writes, for start-up creation.
pub const TOPICS: &[&str] = &[topics::INVENTORY_COMMANDS, topics::INVENTORY_EVENTS];

/// Consume `inventory.commands` until `shutdown` is cancelled.
pub async fn run_consumer(
    pool: PgPool,
    kafka: KafkaConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_consumer_with(pool, kafka, InventoryFaults::default(), shutdown).await
}

/// [`run_consumer`] with a fault switch (dev and test platforms; see [`faults`]).
pub async fn run_consumer_with(
    pool: PgPool,
    kafka: KafkaConfig,
    faults: InventoryFaults,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings =
        ConsumerSettings::new(NAME, &[topics::INVENTORY_COMMANDS], &kafka).with_outbox("inventory");
    let handler = InventoryHandler::with_faults(faults);
    consumer::run(pool, kafka, settings, handler, shutdown).await
}

/// Create the SKUs of `stock` that do not exist yet (demo data); existing SKUs are kept as
/// they are, so seeding at every start never resets live stock.
pub async fn seed(pool: &PgPool, stock: &[(&str, i32)]) -> Result<(), sqlx::Error> {
    store::seed(pool, stock).await
}
