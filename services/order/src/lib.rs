//! order-service: accepts orders over HTTP and applies the saga's verdict.
//!
//! `POST /orders` writes the order (PENDING) and `OrderPlaced` in one transaction; the saga
//! answers with `ApproveOrder` / `RejectOrder` on orders.commands, which this service applies
//! and announces (`OrderApproved` / `OrderRejected`), again in one transaction. An order the
//! saga has not decided within `ORDER_DEADLINE_SECS` is rejected by this service itself
//! (`deadline`).

mod deadline;
mod domain;
mod handler;
mod http;
mod intake;
mod store;

use sagaflow_messaging::consumer::{self, ConsumerSettings};
use sagaflow_runtime::{KafkaConfig, periodic};
use sagaflow_schemas::topics;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use domain::{
    NewOrder, OrderLine, ValidationError, deadline_reason, order_placed, request_hash, validate,
};
pub use http::{openapi, router};
/// The transaction of `POST /orders`, for callers that run it without HTTP (the
/// as-implemented commit rate of `sagaflow bench`).
pub use intake::{Placed, Placement, store_batch};

pub const NAME: &str = "order-service";
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        sagaflow_messaging::migrations::migrator(
            &sqlx::migrate!("../../migrations/order"),
            sagaflow_messaging::migrations::Tables::OutboxAndInbox,
        )
    });

/// How long an Idempotency-Key is remembered by default: 24 h, as Stripe does.
pub const DEFAULT_IDEMPOTENCY_KEY_TTL_SECS: u64 = 24 * 60 * 60;
/// How often expired keys are deleted by default.
pub const DEFAULT_IDEMPOTENCY_PRUNE_INTERVAL_MS: u64 = 60_000;
/// How long an order may stay PENDING by default: 2 h. It must exceed the saga's own worst
/// case, or orders the saga would still have approved get rejected (and compensated). With the
/// saga's defaults (`SAGA_STEP_TIMEOUT_MS` 30 s, `SAGA_MAX_ATTEMPTS` 5; a step that cannot be
/// undone is retried after 60, 120, 240, 480 and 960 s, so it takes up to 30 + 1,860 = 1,890 s
/// before FAILED) the longest way to a verdict is reserve (30 s) + authorize (30 s) + compensate
/// (1,890 s) + reject (1,890 s) = 3,840 s, 64 min; 2 h leaves as much again for lag. Raise it
/// with the saga's timeouts.
pub const DEFAULT_ORDER_DEADLINE_SECS: u64 = 2 * 60 * 60;
/// How often overdue orders are looked for by default.
pub const DEFAULT_ORDER_SWEEP_INTERVAL_MS: u64 = 5_000;
/// How many transactions store `POST /orders` at once by default: two, so that a request
/// arriving while one commit flushes starts at once instead of waiting for it.
pub const DEFAULT_ORDER_INTAKE_WRITERS: usize = 2;
/// The most orders one `POST /orders` transaction stores by default.
pub const DEFAULT_ORDER_INTAKE_MAX_BATCH: usize = 64;

/// The order service's settings (read by the binary; libraries take them as arguments).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct OrderConfig {
    /// How long an Idempotency-Key is remembered; later, the same key places a new order.
    #[arg(
        id = "idempotency_key_ttl_secs",
        long = "idempotency-key-ttl-secs",
        env = "ORDER_IDEMPOTENCY_KEY_TTL_SECS",
        default_value_t = DEFAULT_IDEMPOTENCY_KEY_TTL_SECS
    )]
    pub idempotency_key_ttl_secs: u64,
    /// How often expired Idempotency-Keys are deleted.
    #[arg(
        id = "idempotency_prune_interval_ms",
        long = "idempotency-prune-interval-ms",
        env = "ORDER_IDEMPOTENCY_PRUNE_INTERVAL_MS",
        default_value_t = DEFAULT_IDEMPOTENCY_PRUNE_INTERVAL_MS
    )]
    pub idempotency_prune_interval_ms: u64,
    /// How long an order may stay PENDING: then it is REJECTED ("no saga decision within the
    /// order deadline") and OrderRejected announced, saga or no saga. Keep it above the saga's
    /// worst case (64 min with the saga's default step timeout and attempts).
    #[arg(
        id = "order_deadline_secs",
        long = "order-deadline-secs",
        env = "ORDER_DEADLINE_SECS",
        default_value_t = DEFAULT_ORDER_DEADLINE_SECS
    )]
    pub order_deadline_secs: u64,
    /// How often orders past their deadline are looked for.
    #[arg(
        id = "order_sweep_interval_ms",
        long = "order-sweep-interval-ms",
        env = "ORDER_SWEEP_INTERVAL_MS",
        default_value_t = DEFAULT_ORDER_SWEEP_INTERVAL_MS
    )]
    pub order_sweep_interval_ms: u64,
    /// How many transactions store accepted orders at once (group commit, see `intake`):
    /// each takes every order queued when it is free.
    #[arg(
        id = "order_intake_writers",
        long = "order-intake-writers",
        env = "ORDER_INTAKE_WRITERS",
        default_value_t = DEFAULT_ORDER_INTAKE_WRITERS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64)
    )]
    pub intake_writers: usize,
    /// The most orders one transaction stores (1 turns group commit off).
    #[arg(
        id = "order_intake_max_batch",
        long = "order-intake-max-batch",
        env = "ORDER_INTAKE_MAX_BATCH",
        default_value_t = DEFAULT_ORDER_INTAKE_MAX_BATCH,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000)
    )]
    pub intake_max_batch: usize,
}

impl Default for OrderConfig {
    fn default() -> Self {
        OrderConfig {
            idempotency_key_ttl_secs: DEFAULT_IDEMPOTENCY_KEY_TTL_SECS,
            idempotency_prune_interval_ms: DEFAULT_IDEMPOTENCY_PRUNE_INTERVAL_MS,
            order_deadline_secs: DEFAULT_ORDER_DEADLINE_SECS,
            order_sweep_interval_ms: DEFAULT_ORDER_SWEEP_INTERVAL_MS,
            intake_writers: DEFAULT_ORDER_INTAKE_WRITERS,
            intake_max_batch: DEFAULT_ORDER_INTAKE_MAX_BATCH,
        }
    }
}

impl OrderConfig {
    pub fn idempotency_key_ttl(&self) -> Duration {
        Duration::from_secs(self.idempotency_key_ttl_secs)
    }

    pub fn order_deadline(&self) -> Duration {
        Duration::from_secs(self.order_deadline_secs)
    }
}

/// The order service's background work: the orders.commands consumer, the pruning of expired
/// idempotency keys and the order deadline, until `shutdown` (or the consumer fails).
pub async fn run(
    pool: PgPool,
    kafka: KafkaConfig,
    config: OrderConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop_pruning = shutdown.child_token();
    let pruner = tokio::spawn(prune_idempotency_keys(
        pool.clone(),
        config,
        stop_pruning.clone(),
    ));
    let stop_expiring = shutdown.child_token();
    let expirer = tokio::spawn(deadline::expire_overdue_orders(
        pool.clone(),
        config,
        stop_expiring.clone(),
    ));
    let consumed = run_consumer(pool, kafka, shutdown).await;
    stop_pruning.cancel();
    stop_expiring.cancel();
    let _ = pruner.await;
    let _ = expirer.await;
    consumed
}

/// Delete expired idempotency keys every `idempotency_prune_interval_ms`; a failed round is
/// logged and tried again at the next one (the keys only wait longer).
async fn prune_idempotency_keys(pool: PgPool, config: OrderConfig, shutdown: CancellationToken) {
    let period = Duration::from_millis(config.idempotency_prune_interval_ms.max(100));
    periodic::every(period, shutdown, || async {
        match store::prune_idempotency_keys(&pool, config.idempotency_key_ttl()).await {
            Ok(0) => {}
            Ok(deleted) => {
                metrics::counter!("order_idempotency_keys_pruned_total").increment(deleted);
                tracing::debug!(deleted, "expired idempotency keys deleted");
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning idempotency keys failed; next round retries")
            }
        }
    })
    .await
}

/// Consume orders.commands until `shutdown`.
pub async fn run_consumer(
    pool: PgPool,
    kafka: KafkaConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings =
        ConsumerSettings::new(NAME, &[topics::ORDERS_COMMANDS], &kafka).with_outbox("order");
    consumer::run(pool, kafka, settings, handler::OrderCommands, shutdown).await
}
