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
pub use store::{RETENTION_BATCH, delete_ended};

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
    /// APPROVED and REJECTED sagas (and their history) are deleted this many days after they
    /// ended; FAILED ones are kept for an operator. An OrderPlaced older than this starts no
    /// saga. Must exceed the inbox retention (`SAGAFLOW_INBOX_RETENTION_SECS`): between the
    /// two, the saga row is what makes a redelivered OrderPlaced a no-op.
    #[arg(
        long = "saga-retention-days",
        env = "SAGA_RETENTION_DAYS",
        default_value_t = 30
    )]
    pub retention_days: u32,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            step_timeout_ms: 30_000,
            max_attempts: 5,
            sweep_interval_ms: 250,
            retention_days: 30,
        }
    }
}

/// The longest saga retention accepted (a larger one is a typo, and would overflow the
/// durations it is turned into).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

impl SagaConfig {
    pub fn policy(&self) -> saga::Policy {
        saga::Policy {
            step_timeout: chrono::Duration::milliseconds(self.step_timeout_ms as i64),
            max_attempts: self.max_attempts,
            retention: chrono::Duration::days(self.retention_days.into()),
        }
    }

    /// The retention must outlast the inbox's: a redelivered OrderPlaced is recognised by its
    /// inbox row, then by its saga row — a gap between the two would start its saga again.
    pub fn validate(&self, kafka: &KafkaConfig) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.retention_days <= MAX_RETENTION_DAYS,
            "SAGA_RETENTION_DAYS ({}) must be at most {MAX_RETENTION_DAYS} (100 years)",
            self.retention_days
        );
        let saga = u64::from(self.retention_days) * 24 * 3600;
        anyhow::ensure!(
            saga > kafka.inbox_retention_secs,
            "SAGA_RETENTION_DAYS ({} days) must exceed SAGAFLOW_INBOX_RETENTION_SECS ({} s): \
             a redelivered OrderPlaced older than the inbox is recognised by its saga row only",
            self.retention_days,
            kafka.inbox_retention_secs
        );
        Ok(())
    }
}

/// Run the reply consumer and the deadline sweeper until `shutdown`.
pub async fn run(
    pool: PgPool,
    kafka: KafkaConfig,
    config: SagaConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate(&kafka)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_saga_retention_must_outlast_the_inbox() {
        let kafka = KafkaConfig::new("localhost:9092", "");
        let days = |retention_days| SagaConfig {
            retention_days,
            ..SagaConfig::default()
        };
        assert!(days(30).validate(&kafka).is_ok());
        let error = days(7).validate(&kafka).unwrap_err().to_string();
        assert!(error.contains("SAGA_RETENTION_DAYS"), "{error}");
        assert!(days(MAX_RETENTION_DAYS).validate(&kafka).is_ok());
        assert!(days(u32::MAX).validate(&kafka).is_err());
    }
}
