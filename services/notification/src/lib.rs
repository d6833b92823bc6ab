//! notification-service: tells customers how their order ended.
//!
//! It consumes `orders.events` and, for each terminal order event (OrderApproved,
//! OrderRejected), records one notification and announces NotificationSent on
//! `notification.events` through its outbox. Sending is simulated: the e-mail is logged.
//!
//! Guarantees:
//! - **Exactly one notification per order outcome**: the (order_id, template) key absorbs
//!   redeliveries and re-announcements alike, and NotificationSent is enqueued only by the
//!   transaction that inserted the row.
//! - The notification, its NotificationSent and the inbox row commit together.
//! - Other orders.events types are not this consumer's business and are skipped without
//!   an inbox row.
//!
//! Layout: [`domain`] composes the texts (pure), `store` the SQL, `handler` the consumer
//! glue and `http` the read API.

pub mod domain;
mod handler;
mod http;
mod store;

use sagaflow_messaging::consumer::{self, ConsumerSettings};
use sagaflow_runtime::KafkaConfig;
use sagaflow_schemas::topics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use handler::NotificationHandler;
pub use http::{openapi, router};

/// The component's name: envelope source, inbox consumer and consumer group.
pub const NAME: &str = "notification-service";

/// Migrations of the notification database.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        sagaflow_messaging::migrations::migrator(
            &sqlx::migrate!("../../migrations/notification"),
            sagaflow_messaging::migrations::Tables::OutboxAndInbox,
        )
    });

/// Topics this component reads or writes, for start-up creation.
pub const TOPICS: &[&str] = &[topics::ORDERS_EVENTS, topics::NOTIFICATION_EVENTS];

/// Consume `orders.events` until `shutdown` is cancelled.
pub async fn run_consumer(
    pool: PgPool,
    kafka: KafkaConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings =
        ConsumerSettings::new(NAME, &[topics::ORDERS_EVENTS], &kafka).with_outbox("notification");
    consumer::run(pool, kafka, settings, NotificationHandler, shutdown).await
}
