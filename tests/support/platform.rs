//! `spawn_platform()`: the whole platform in-process against the shared servers, with its
//! own databases, topic prefix, simulated payment provider and HTTP port — like
//! zero-to-production's `spawn_app()`.

use std::time::Duration;

use payment_service::{PaymentConfig, ProviderControl, ProviderFaults, spawn_provider};
use saga_orchestrator::SagaConfig;
use sagaflow_platform::{self as platform, DatabaseUrls, Platform, Pools};
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::ApiSecurity;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{database, kafka, wait};

pub struct TestApp {
    pub base_url: String,
    pub http: reqwest::Client,
    pub pools: Pools,
    pub kafka: KafkaConfig,
    pub provider: ProviderControl,
    pub(crate) platform: Option<Platform>,
    pub(crate) config: platform::PlatformConfig,
    provider_shutdown: CancellationToken,
}

/// Options of a test platform.
pub struct Options {
    pub step_timeout: Duration,
    pub max_attempts: u32,
    pub request_timeout: Duration,
    /// Authentication and rate limit of the API (default: open, no limit).
    pub security: ApiSecurity,
    /// Bootstrap servers other than the shared broker's (the `cluster` target's brokers).
    pub kafka_brokers: Option<String>,
    /// Static group membership (`SAGAFLOW_INSTANCE_ID`) for every consumer.
    pub instance_id: Option<String>,
    /// Idempotency-Key lifetime and pruning (default: the production defaults).
    pub orders: order_service::OrderConfig,
    /// The payment provider circuit's first and longest open period (default: the
    /// production defaults).
    pub circuit_open: (Duration, Duration),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            step_timeout: Duration::from_secs(20),
            max_attempts: 5,
            request_timeout: Duration::from_secs(10),
            security: ApiSecurity::default(),
            kafka_brokers: None,
            instance_id: None,
            orders: order_service::OrderConfig::default(),
            circuit_open: {
                let production = PaymentConfig::default();
                (
                    Duration::from_millis(production.circuit_open_ms),
                    Duration::from_millis(production.circuit_open_max_ms),
                )
            },
        }
    }
}

pub async fn spawn_platform(options: Options) -> TestApp {
    let (order, inventory, payment, notification, saga, query) = tokio::join!(
        database("order"),
        database("inventory"),
        database("payment"),
        database("notification"),
        database("saga"),
        database("query"),
    );
    let mut kafka = kafka();
    if let Some(brokers) = options.kafka_brokers {
        kafka.brokers = brokers;
    }
    kafka.instance_id = options.instance_id;
    let provider_shutdown = CancellationToken::new();
    let provider_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider_url = format!("http://{}", provider_listener.local_addr().unwrap());
    let provider = spawn_provider(
        provider_listener,
        ProviderFaults::default(),
        provider_shutdown.clone(),
    )
    .await;
    let mut payment_config = PaymentConfig::new(provider_url);
    payment_config.provider_timeout_ms = 500;
    payment_config.circuit_open_ms = options.circuit_open.0.as_millis() as u64;
    payment_config.circuit_open_max_ms = options.circuit_open.1.as_millis() as u64;
    let config = platform::PlatformConfig {
        databases: DatabaseUrls {
            order: order.url,
            inventory: inventory.url,
            payment: payment.url,
            notification: notification.url,
            saga: saga.url,
            query: query.url,
        },
        kafka: kafka.clone(),
        payment: payment_config,
        saga: SagaConfig {
            step_timeout_ms: options.step_timeout.as_millis() as u64,
            max_attempts: options.max_attempts,
            sweep_interval_ms: 100,
            ..SagaConfig::default()
        },
        orders: options.orders,
        pool_size: 8,
        request_timeout: options.request_timeout,
        security: options.security,
        relay_batch_size: sagaflow_messaging::relay::DEFAULT_BATCH_SIZE,
        query: Default::default(),
    };
    let mut platform = platform::start(config.clone())
        .await
        .expect("platform starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    platform.serve(listener, &kafka);
    TestApp {
        base_url,
        http: reqwest::Client::new(),
        pools: platform.pools.clone(),
        kafka,
        provider,
        platform: Some(platform),
        config,
        provider_shutdown,
    }
}

impl TestApp {
    pub async fn stop(mut self) {
        if let Some(platform) = self.platform.take() {
            platform.stop().await.expect("platform stops cleanly");
        }
        self.provider_shutdown.cancel();
    }

    /// Kill every component mid-flight (tasks aborted, no graceful stop), then start them again
    /// on the same databases and topics, serving HTTP on a new port.
    pub async fn crash_and_restart(&mut self) {
        if let Some(platform) = self.platform.take() {
            platform.kill().await;
        }
        let mut platform = platform::start(self.config.clone())
            .await
            .expect("platform restarts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.base_url = format!("http://{}", listener.local_addr().unwrap());
        platform.serve(listener, &self.kafka);
        self.pools = platform.pools.clone();
        self.platform = Some(platform);
    }

    /// Crash one component (`sagaflow_platform::COMPONENTS`) mid-flight and start it
    /// again; the rest keeps running.
    pub async fn kill_component(&mut self, component: &'static str) {
        self.platform
            .as_mut()
            .expect("platform running")
            .kill_component(component)
            .await
            .expect("component restarts");
    }

    /// Crash one component as [`TestApp::kill_component`] does and leave it stopped, as a
    /// SIGKILLed process that nobody restarts; the rest keeps running.
    pub async fn stop_component(&mut self, component: &'static str) {
        self.platform
            .as_mut()
            .expect("platform running")
            .remove_component(component)
            .await;
    }

    /// The Prometheus text of this process's `/metrics` (counters are process-wide).
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of every series of counter `name` on `/metrics` (0 before its first
    /// increment). The metrics recorder is process-wide, shared by every platform of a test
    /// process: compare a value with one read before the action, not with a constant.
    pub async fn counter(&self, name: &str) -> f64 {
        counter_sum(&self.metrics().await, name)
    }

    /// The value of metric `name` for this platform's payment provider (its series labelled
    /// `provider`: platforms of one test process share a metrics recorder). `None` before
    /// the series exists.
    pub async fn provider_metric(&self, name: &str) -> Option<f64> {
        let provider = payment_service::client::provider_label(&self.config.payment.provider_url);
        let series = format!("{name}{{provider=\"{provider}\"}} ");
        let metrics = self.metrics().await;
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))?;
        Some(value.trim().parse().expect("a metric's value is a number"))
    }

    /// Whether this platform's payment provider circuit is open (or half-open).
    pub async fn circuit_open(&self) -> Option<bool> {
        let value = self
            .provider_metric("payment_provider_circuit_open")
            .await?;
        Some(value == 1.0)
    }

    pub async fn set_stock(&self, sku: &str, available: i64) {
        let response = self
            .http
            .put(format!("{}/inventory/{sku}", self.base_url))
            .json(&json!({"available": available}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "PUT /inventory/{sku}: {}",
            response.status()
        );
    }

    pub async fn stock(&self, sku: &str) -> (i64, i64) {
        let body: Value = self
            .http
            .get(format!("{}/inventory/{sku}", self.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            body["available"].as_i64().unwrap(),
            body["reserved"].as_i64().unwrap(),
        )
    }

    /// POST /orders; returns (status, body).
    pub async fn post_order(&self, body: &Value, idempotency_key: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/orders", self.base_url))
            .header("Idempotency-Key", idempotency_key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Place an order for `lines` (sku, quantity, unit price) and return its id.
    pub async fn place(&self, lines: &[(&str, i64, i64)], payment_method: &str) -> Uuid {
        let body = order_body(lines, payment_method);
        let (status, body) = self.post_order(&body, &Uuid::new_v4().to_string()).await;
        assert_eq!(status, 202, "{body}");
        Uuid::parse_str(body["order_id"].as_str().unwrap()).unwrap()
    }

    /// `GET {base_url}{path}` as JSON (whatever the status).
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn order(&self, id: Uuid) -> Value {
        self.get_json(&format!("/orders/{id}")).await
    }

    pub async fn saga(&self, id: Uuid) -> Value {
        self.get_json(&format!("/sagas/{id}")).await
    }

    /// Wait until the order is APPROVED or REJECTED; returns the order.
    pub async fn terminal(&self, id: Uuid, timeout: Duration) -> Value {
        wait::until(&format!("order {id} to finish"), timeout, || async {
            let order = self.order(id).await;
            matches!(order["status"].as_str(), Some("APPROVED" | "REJECTED")).then_some(order)
        })
        .await
    }

    /// Wait until the saga is in a terminal state; returns it.
    pub async fn saga_terminal(&self, id: Uuid, timeout: Duration) -> Value {
        wait::until(&format!("saga {id} to finish"), timeout, || async {
            let saga = self.saga(id).await;
            matches!(
                saga["saga"]["state"].as_str(),
                Some("APPROVED" | "REJECTED" | "FAILED")
            )
            .then_some(saga)
        })
        .await
    }
}

pub fn order_body(lines: &[(&str, i64, i64)], payment_method: &str) -> Value {
    json!({
        "customer_id": Uuid::new_v4(),
        "items": lines.iter().map(|(sku, q, p)| json!({"sku": sku, "quantity": q, "unit_price_cents": p})).collect::<Vec<_>>(),
        "currency": "EUR",
        "payment_method": payment_method,
    })
}

/// The sum of every series of `name` in a Prometheus text exposition: `name value` and
/// `name{labels} value` lines, not those of a longer name sharing its prefix.
pub fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            Some(
                value
                    .trim()
                    .parse::<f64>()
                    .expect("a metric's value is a number"),
            )
        })
        .sum()
}

#[cfg(test)]
mod counter_tests {
    use super::counter_sum;

    #[test]
    fn every_series_of_the_name_counts_and_no_other_name() {
        let text = "# TYPE http_rate_limited_total counter\n\
                    http_rate_limited_total{route=\"/orders\"} 3\n\
                    http_rate_limited_total{route=\"/x\"} 2\n\
                    http_rate_limited_total_other 100\n\
                    orders_placed_total 7\n";
        assert_eq!(counter_sum(text, "http_rate_limited_total"), 5.0);
        assert_eq!(counter_sum(text, "orders_placed_total"), 7.0);
        assert_eq!(counter_sum(text, "orders_placed"), 0.0);
    }
}
