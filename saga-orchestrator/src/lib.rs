//! saga-orchestrator: drives the order saga (see [`saga`] for the state machine and its
//! guarantees). Consumes orders/inventory/payment events, sends commands through the outbox,
//! fires persisted deadlines.

mod engine;
mod http;
pub mod saga;
mod store;

use std::time::Duration;

use clap::Args;
use sagaflow_messaging::consumer::{self, ConsumerSettings};
use sagaflow_runtime::KafkaConfig;
use sagaflow_schemas::topics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use engine::sweep_once;
pub use http::{openapi, router};

pub const NAME: &str = "saga-orchestrator";
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        sagaflow_messaging::migrations::migrator(
            &sqlx::migrate!("../migrations/saga"),
            sagaflow_messaging::migrations::Tables::OutboxAndInbox,
        )
    });

/// Deadlines and retries of the saga.
#[derive(Debug, Clone, Args)]
pub struct SagaConfig {
    /// Deadline of each saga step, in milliseconds.
    #[arg(
        long = "saga-step-timeout-ms",
        env = "SAGA_STEP_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub step_timeout_ms: u64,
    /// Retries of a step that cannot be compensated (approve, compensate, reject) before FAILED.
    #[arg(
        long = "saga-max-attempts",
        env = "SAGA_MAX_ATTEMPTS",
        default_value_t = 5
    )]
    pub max_attempts: u32,
    /// How often deadlines are checked, in milliseconds.
    #[arg(
        long = "saga-sweep-interval-ms",
        env = "SAGA_SWEEP_INTERVAL_MS",
        default_value_t = 250
    )]
    pub sweep_interval_ms: u64,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            step_timeout_ms: 30_000,
            max_attempts: 5,
            sweep_interval_ms: 250,
        }
    }
}

impl SagaConfig {
    pub fn policy(&self) -> saga::Policy {
        saga::Policy {
            step_timeout: chrono::Duration::milliseconds(self.step_timeout_ms as i64),
            max_attempts: self.max_attempts,
        }
    }
}

/// Run the reply consumer and the deadline sweeper until `shutdown`.
pub async fn run(
    pool: PgPool,
    kafka: KafkaConfig,
    config: SagaConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let policy = config.policy();
    engine::zero_metrics();
    // Aborted with this future: a crashed orchestrator leaves no sweeper behind.
    let sweeper = AbortOnDropHandle::new(tokio::spawn(engine::sweep_deadlines(
        pool.clone(),
        policy,
        Duration::from_millis(config.sweep_interval_ms),
        shutdown.clone(),
    )));
    let settings = ConsumerSettings::new(
        NAME,
        &[
            topics::ORDERS_EVENTS,
            topics::INVENTORY_EVENTS,
            topics::PAYMENT_EVENTS,
        ],
        &kafka,
    )
    .with_outbox("saga");
    let result = consumer::run(
        pool,
        kafka,
        settings,
        engine::SagaReplies { policy },
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    sweeper.await?;
    result
}
