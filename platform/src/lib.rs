//! Every component of Sagaflow in one process: the four services, the orchestrator, the query
//! service, one outbox relay per publishing database, and all HTTP routes on one listener —
//! the composition `sagaflow dev`, `sagaflow bench`, `sagaflow chaos` and the integration
//! tests run. Production runs the same parts as separate binaries; the wiring is identical.
//! [`invariants`] checks, in the service databases, what must hold after any run.

pub mod invariants;

use axum::Router;
use payment_service::PaymentConfig;
use saga_orchestrator::SagaConfig;
use sagaflow_messaging::{Relay, RelayConfig};
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::{ApiSecurity, protect};
use sagaflow_runtime::http::{Readiness, ops_router, serve, with_request_timeout};
use sagaflow_runtime::{db, kafka};
use sagaflow_schemas::topics;
use sqlx::PgPool;
use std::collections::HashMap;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Database URL of each service.
#[derive(Debug, Clone)]
pub struct DatabaseUrls {
    pub order: String,
    pub inventory: String,
    pub payment: String,
    pub notification: String,
    pub saga: String,
    pub query: String,
}

/// One pool per service database.
#[derive(Debug, Clone)]
pub struct Pools {
    pub order: PgPool,
    pub inventory: PgPool,
    pub payment: PgPool,
    pub notification: PgPool,
    pub saga: PgPool,
    pub query: PgPool,
}

impl Pools {
    /// The pools of the databases with an outbox (all but the query database).
    pub fn outbox_databases(&self) -> [&PgPool; 5] {
        [
            &self.order,
            &self.inventory,
            &self.payment,
            &self.notification,
            &self.saga,
        ]
    }

    fn named(&self) -> Vec<(String, PgPool)> {
        vec![
            ("order".into(), self.order.clone()),
            ("inventory".into(), self.inventory.clone()),
            ("payment".into(), self.payment.clone()),
            ("notification".into(), self.notification.clone()),
            ("saga".into(), self.saga.clone()),
        ]
    }

    /// Every pool with its name, the query database included (it has no outbox).
    fn all_named(&self) -> Vec<(String, PgPool)> {
        let mut all = self.named();
        all.push(("query".into(), self.query.clone()));
        all
    }
}

#[derive(Clone)]
pub struct PlatformConfig {
    pub databases: DatabaseUrls,
    pub kafka: KafkaConfig,
    pub payment: PaymentConfig,
    pub saga: SagaConfig,
    pub orders: order_service::OrderConfig,
    /// Connections per database pool.
    pub pool_size: u32,
    /// Bound of one HTTP request, slow clients included.
    pub request_timeout: std::time::Duration,
    /// Authentication and rate limit of the API routes; the default is open (development).
    pub security: ApiSecurity,
    /// Outbox rows each relay claims per pass (`RelayConfig::batch_size`).
    pub relay_batch_size: i64,
    /// The query service's settings.
    pub query: query_service::QueryConfig,
}

/// A running platform.
pub struct Platform {
    pub pools: Pools,
    /// The inventory consumer's fault switch (dev/test only), also served as
    /// `/_control/inventory`.
    pub inventory_faults: inventory_service::InventoryFaults,
    request_timeout: std::time::Duration,
    security: ApiSecurity,
    pub shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    /// Each component's task, to crash it alone.
    running: HashMap<&'static str, AbortHandle>,
    config: PlatformConfig,
}

/// Connect, migrate, create topics, start every consumer and relay. HTTP is separate
/// ([`Platform::serve`]) so callers choose the listener.
pub async fn start(config: PlatformConfig) -> anyhow::Result<Platform> {
    // Install the metrics recorder before any component records.
    sagaflow_runtime::http::metrics_handle();
    let urls = &config.databases;
    let size = config.pool_size;
    let pools = Pools {
        order: db::connect(&urls.order, size).await?,
        inventory: db::connect(&urls.inventory, size).await?,
        payment: db::connect(&urls.payment, size).await?,
        notification: db::connect(&urls.notification, size).await?,
        saga: db::connect(&urls.saga, size).await?,
        query: db::connect(&urls.query, size).await?,
    };
    order_service::MIGRATOR.run(&pools.order).await?;
    inventory_service::MIGRATOR.run(&pools.inventory).await?;
    payment_service::MIGRATOR.run(&pools.payment).await?;
    notification_service::MIGRATOR
        .run(&pools.notification)
        .await?;
    saga_orchestrator::MIGRATOR.run(&pools.saga).await?;
    query_service::MIGRATOR.run(&pools.query).await?;

    kafka::ensure_all_topics(&config.kafka).await?;

    let mut platform = Platform {
        pools,
        inventory_faults: inventory_service::InventoryFaults::default(),
        request_timeout: config.request_timeout,
        security: config.security.clone(),
        shutdown: CancellationToken::new(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
        config,
    };
    for component in COMPONENTS {
        platform.spawn_component(component)?;
    }
    info!(prefix = %platform.config.kafka.topic_prefix, brokers = %platform.config.kafka.brokers, "platform started");
    Ok(platform)
}

type ComponentTask = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// The components [`Platform::kill_component`] can crash and restart one by one.
pub const COMPONENTS: [&str; 7] = [
    "outbox-relay",
    "order-service",
    "inventory-service",
    "payment-service",
    "notification-service",
    "saga-orchestrator",
    "query-service",
];

/// The OpenAPI document of every route [`Platform::router`] serves (`sagaflow dev`):
/// each component's routes, the fault switch, health, metrics and the documents themselves.
/// `sagaflow openapi` writes it to `docs/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = order_service::openapi();
    for doc in [
        inventory_service::openapi(),
        payment_service::openapi(),
        notification_service::openapi(),
        saga_orchestrator::openapi(),
        query_service::openapi(),
        inventory_service::control_openapi(),
    ] {
        api.merge(doc);
    }
    sagaflow_runtime::openapi::document("Sagaflow", Some(api))
}

/// Every consumer group of the platform, for the `consumer_group_lag` metric.
fn consumer_groups() -> Vec<query_service::lag::Group> {
    use query_service::lag::Group;
    vec![
        Group::new(order_service::NAME, &[topics::ORDERS_COMMANDS]),
        Group::new(inventory_service::NAME, &[topics::INVENTORY_COMMANDS]),
        Group::new(payment_service::NAME, &[topics::PAYMENT_COMMANDS]),
        Group::new(notification_service::NAME, &[topics::ORDERS_EVENTS]),
        Group::new(
            saga_orchestrator::NAME,
            &[
                topics::ORDERS_EVENTS,
                topics::INVENTORY_EVENTS,
                topics::PAYMENT_EVENTS,
            ],
        ),
        Group::new(query_service::NAME, &query_service::topics()),
    ]
}

async fn named(
    name: &'static str,
    task: impl Future<Output = anyhow::Result<()>>,
) -> (&'static str, anyhow::Result<()>) {
    (name, task.await)
}

impl Platform {
    /// Start one of [`COMPONENTS`] (the relay: one per publishing database, in one task).
    fn spawn_component(&mut self, component: &'static str) -> anyhow::Result<()> {
        let k = self.config.kafka.clone();
        let s = self.shutdown.clone();
        let pools = self.pools.clone();
        let task: ComponentTask = match component {
            "outbox-relay" => {
                let producer = kafka::producer(&k)?;
                let relays: Vec<_> = pools
                    .named()
                    .into_iter()
                    .map(|(db, pool)| {
                        let mut config = RelayConfig::new(&db);
                        config.batch_size = self.config.relay_batch_size;
                        Relay::new(pool, producer.clone(), k.clone(), config).run(s.clone())
                    })
                    .collect();
                Box::pin(async move { futures::future::try_join_all(relays).await.map(drop) })
            }
            "order-service" => Box::pin(order_service::run(pools.order, k, self.config.orders, s)),
            "inventory-service" => Box::pin(inventory_service::run_consumer_with(
                pools.inventory,
                k,
                self.inventory_faults.clone(),
                s,
            )),
            "payment-service" => Box::pin(payment_service::run_consumer(
                pools.payment,
                k,
                self.config.payment.clone(),
                s,
            )),
            "notification-service" => {
                Box::pin(notification_service::run_consumer(pools.notification, k, s))
            }
            "saga-orchestrator" => Box::pin(saga_orchestrator::run(
                pools.saga,
                k,
                self.config.saga.clone(),
                s,
            )),
            "query-service" => Box::pin(query_service::run_with(
                pools.query,
                k,
                self.config.query.rules().map_err(anyhow::Error::msg)?,
                consumer_groups(),
                s,
            )),
            other => anyhow::bail!("no component {other}; one of {COMPONENTS:?}"),
        };
        let handle = self.tasks.spawn(named(component, task));
        self.running.insert(component, handle);
        Ok(())
    }

    /// Crash one component, as a SIGKILL of its process would (its task aborted mid-flight,
    /// no graceful stop; open transactions roll back when their connections are dropped), and
    /// start it again. The rest of the platform keeps running.
    pub async fn kill_component(&mut self, component: &'static str) -> anyhow::Result<()> {
        self.remove_component(component).await;
        self.spawn_component(component)
    }

    /// Crash one component as [`Platform::kill_component`] does, without starting it again:
    /// for tests that run it as a process of its own instead.
    pub async fn remove_component(&mut self, component: &'static str) {
        if let Some(handle) = self.running.remove(component) {
            handle.abort();
            // The new instance starts only once the old one is gone (as a process would).
            while let Some(joined) = self.tasks.join_next_with_id().await {
                let id = match joined {
                    Ok((id, (name, result))) => {
                        if let Err(e) = result {
                            error!(component = name, error = %e, "component failed");
                        }
                        id
                    }
                    Err(e) => e.id(),
                };
                if id == handle.id() {
                    break;
                }
            }
        }
    }

    /// Every HTTP route of every component, plus health, metrics and the API documents.
    pub fn router(&self, kafka: &KafkaConfig) -> Router {
        let api = order_service::router(self.pools.order.clone(), self.config.orders)
            .merge(inventory_service::router(self.pools.inventory.clone()))
            .merge(payment_service::router(self.pools.payment.clone()))
            .merge(notification_service::router(
                self.pools.notification.clone(),
            ))
            .merge(saga_orchestrator::router(self.pools.saga.clone()))
            .merge(query_service::router(self.pools.query.clone()))
            .merge(inventory_service::control_router(
                self.inventory_faults.clone(),
            ));
        // Authentication and rate limit in front of the API only: health and metrics stay open.
        let api = protect(api, &self.security);
        with_request_timeout(api, self.request_timeout)
            .merge(with_request_timeout(
                self.console(kafka),
                self.request_timeout,
            ))
            .merge(ops_router(Readiness {
                databases: self.pools.all_named(),
                kafka: Some(kafka.clone()),
            }))
            .merge(sagaflow_runtime::openapi::docs_router(&openapi()))
    }

    /// The operator console (issue 18) on every database; it checks its own tokens (cookie or
    /// bearer), so it is merged beside the API's `protect`, not behind it.
    fn console(&self, kafka: &KafkaConfig) -> Router {
        self.pools
            .named()
            .into_iter()
            .fold(
                sagaflow_console::Console::new(
                    self.pools.query.clone(),
                    kafka.clone(),
                    &self.security,
                ),
                |console, (name, pool)| console.with_database(&name, pool),
            )
            .router()
    }

    /// Serve [`Platform::router`] on `listener` until shutdown.
    pub fn serve(&mut self, listener: TcpListener, kafka: &KafkaConfig) {
        let router = self.router(kafka);
        let token = self.shutdown.clone();
        self.tasks.spawn(async move {
            (
                "http",
                serve(listener, router, token).await.map_err(Into::into),
            )
        });
    }

    /// Wait until shutdown is requested or a component fails (then stop the rest).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok((name, Err(e))) => {
                    error!(component = name, error = %e, "component failed; stopping the platform");
                    first_error.get_or_insert(anyhow::anyhow!("{name}: {e}"));
                    self.shutdown.cancel();
                }
                Ok((name, Ok(()))) if !self.shutdown.is_cancelled() => {
                    error!(
                        component = name,
                        "component stopped unexpectedly; stopping the platform"
                    );
                    self.shutdown.cancel();
                }
                Ok(_) => {}
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    first_error.get_or_insert(anyhow::anyhow!("a component panicked: {e}"));
                    self.shutdown.cancel();
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Crash: abort every component at whatever point it is (no graceful shutdown), as a
    /// killed process would. Uncommitted transactions roll back; stored offsets may be lost.
    pub async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // A dead process's connections close, and PostgreSQL rolls back what they held open;
        // without this, aborted transactions would sit idle holding row locks.
        for (_, pool) in self.pools.named() {
            pool.close().await;
        }
    }

    /// Stop every component and wait for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}
