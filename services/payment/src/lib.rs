//! payment-service: charges and refunds orders through a payment provider, driven by the
//! saga's commands on `payment.commands`, answering on `payment.events` through the outbox.
//!
//! Guarantees:
//! - a charge is made at most once per order and a refund at most once per charge, across
//!   redeliveries, duplicate commands, concurrent consumers and crashes ([`handler`]);
//! - every state change and its reply commit in one transaction with the message's inbox
//!   row; the service never produces to Kafka itself;
//! - the provider is called through a circuit breaker with bounded, jittered retries
//!   ([`client`]); an unavailable provider fails the message (retried, then dead-lettered),
//!   it never declines a payment.
//!
//! Modules: [`decision`] (the rules, pure), [`handler`] (the consumer), [`store`] (tables),
//! [`client`] (provider client), [`provider`] (the simulated provider), [`http`] (API).

pub mod client;
pub mod decision;
pub mod handler;
pub mod http;
pub mod provider;
pub mod store;

use std::time::Duration;

use sagaflow_messaging::consumer::{self, ConsumerSettings};
use sagaflow_runtime::KafkaConfig;
use sagaflow_schemas::topics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use client::{ClientSettings, ProviderClient};
pub use handler::PaymentHandler;
pub use http::{openapi, router};
pub use provider::{
    ProviderControl, ProviderFaults, ProviderStats, provider_openapi, provider_router,
    spawn_provider,
};
pub use store::{PaymentRow, PaymentStatus};

/// The component's name: its consumer group, inbox key and outbox source.
pub const NAME: &str = "payment-service";

/// The migrations of the payment database.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        sagaflow_messaging::migrations::migrator(
            &sqlx::migrate!("../../migrations/payment"),
            sagaflow_messaging::migrations::Tables::OutboxAndInbox,
        )
    });

/// How to reach the payment provider.
#[derive(Debug, Clone, clap::Args)]
pub struct PaymentConfig {
    /// Base URL of the payment provider.
    #[arg(
        long = "payment-provider-url",
        env = "PAYMENT_PROVIDER_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    pub provider_url: String,
    /// Bound of one provider call attempt, in milliseconds.
    #[arg(
        long = "payment-provider-timeout-ms",
        env = "PAYMENT_PROVIDER_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub provider_timeout_ms: u64,
    /// Attempts per provider call (transient failures only), the first included.
    #[arg(
        long = "payment-provider-attempts",
        env = "PAYMENT_PROVIDER_ATTEMPTS",
        default_value_t = 3
    )]
    pub provider_attempts: usize,
    /// Consecutive failed provider calls that open the circuit.
    #[arg(
        long = "payment-circuit-failures",
        env = "PAYMENT_CIRCUIT_FAILURES",
        default_value_t = 5
    )]
    pub circuit_failures: u32,
    /// How long the circuit stays open before probing, in milliseconds (grows while the
    /// provider stays down).
    #[arg(
        long = "payment-circuit-open-ms",
        env = "PAYMENT_CIRCUIT_OPEN_MS",
        default_value_t = 1000
    )]
    pub circuit_open_ms: u64,
    /// The longest the circuit stays open before probing, in milliseconds (plus up to 50 %
    /// jitter): after the provider comes back, the first payment may wait this long.
    #[arg(
        long = "payment-circuit-open-max-ms",
        env = "PAYMENT_CIRCUIT_OPEN_MAX_MS",
        default_value_t = 30_000
    )]
    pub circuit_open_max_ms: u64,
}

impl PaymentConfig {
    /// Defaults, with the provider at `provider_url`.
    pub fn new(provider_url: impl Into<String>) -> Self {
        PaymentConfig {
            provider_url: provider_url.into(),
            ..PaymentConfig::default()
        }
    }

    /// The provider client's settings.
    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            base_url: self.provider_url.clone(),
            timeout: Duration::from_millis(self.provider_timeout_ms),
            max_attempts: self.provider_attempts.max(1),
            circuit_failures: self.circuit_failures.max(1),
            circuit_open: Duration::from_millis(self.circuit_open_ms),
            circuit_open_max: Duration::from_millis(self.circuit_open_max_ms),
            ..ClientSettings::default()
        }
    }
}

impl Default for PaymentConfig {
    fn default() -> Self {
        PaymentConfig {
            provider_url: "http://127.0.0.1:8090".into(),
            provider_timeout_ms: 2000,
            provider_attempts: 3,
            circuit_failures: 5,
            circuit_open_ms: 1000,
            circuit_open_max_ms: 30_000,
        }
    }
}

/// Consume `payment.commands` until `shutdown`.
pub async fn run_consumer(
    pool: PgPool,
    kafka: KafkaConfig,
    config: PaymentConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = ProviderClient::new(config.client_settings())?;
    let handler = PaymentHandler::new(pool.clone(), client);
    let settings =
        ConsumerSettings::new(NAME, &[topics::PAYMENT_COMMANDS], &kafka).with_outbox("payment");
    consumer::run(pool, kafka, settings, handler, shutdown).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        payment: PaymentConfig,
    }

    #[test]
    fn config_defaults_match_the_clap_defaults() {
        let parsed = Cli::try_parse_from(["payment"]).unwrap().payment;
        let default = PaymentConfig::default();
        assert_eq!(parsed.provider_url, default.provider_url);
        assert_eq!(parsed.provider_timeout_ms, default.provider_timeout_ms);
        assert_eq!(parsed.provider_attempts, default.provider_attempts);
        assert_eq!(parsed.circuit_failures, default.circuit_failures);
        assert_eq!(parsed.circuit_open_ms, default.circuit_open_ms);
        assert_eq!(parsed.circuit_open_max_ms, default.circuit_open_max_ms);
    }
}
