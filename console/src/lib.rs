//! The operator console at `/console`: server-rendered HTML pages (maud, which escapes every
//! value; no JavaScript build, no CDN, works offline) over the platform's own tables and
//! topics, for the questions operators of a saga and outbox platform ask again and again:
//!
//! - **Sagas** ([`sagas`]): list by state, age, customer and order id with counts per state,
//!   the overdue and stuck ones, and a page per saga (timeline, every message of the order
//!   from the outboxes decoded, deadline, trace id).
//! - **Dead letters** ([`dead_letters`]): `<topic>.dlq` per topic with the reason headers and
//!   the decoded message, redrive one / the selected / all matching a filter, and whether each
//!   was applied since (the dead-lettering consumer's inbox, or the query service's timeline).
//!   Every redrive is written to the audit log ([`audit`]).
//! - **Parked outbox rows** ([`outbox`]), each with a retry action (audited too).
//! - **Health** ([`health`]): relay backlog per database, consumer lag per group and
//!   partition, outbox throughput of the last minutes as an inline SVG chart.
//!
//! Who may use it: [`auth`]. Which databases it reads: [`Console`] — the query database
//! always (it holds the audit log), the others when configured; a section whose source is
//! not configured says so instead of failing.

pub mod audit;
pub mod auth;
pub mod dead_letters;
mod error;
pub mod health;
mod layout;
pub mod outbox;
pub mod sagas;

use std::sync::Arc;

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::auth::{ApiSecurity, Authenticator};
use sqlx::PgPool;

pub use error::ConsoleError;

/// The databases of the other components, for the query service's console in production.
/// Each is optional: the sections that need an unset one say so.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConsoleDatabases {
    /// The saga database (saga list and pages; its outbox).
    #[arg(long = "saga-database-url", env = "SAGA_DATABASE_URL")]
    pub saga: Option<String>,
    /// The order database (its outbox: messages, parked rows, backlog).
    #[arg(long = "order-database-url", env = "ORDER_DATABASE_URL")]
    pub order: Option<String>,
    /// The inventory database (its outbox).
    #[arg(long = "inventory-database-url", env = "INVENTORY_DATABASE_URL")]
    pub inventory: Option<String>,
    /// The payment database (its outbox).
    #[arg(long = "payment-database-url", env = "PAYMENT_DATABASE_URL")]
    pub payment: Option<String>,
    /// The notification database (its outbox).
    #[arg(long = "notification-database-url", env = "NOTIFICATION_DATABASE_URL")]
    pub notification: Option<String>,
    /// Days the console's audit log keeps a row.
    #[arg(
        long = "console-audit-retention-days",
        env = "CONSOLE_AUDIT_RETENTION_DAYS",
        default_value_t = 90
    )]
    pub audit_retention_days: u32,
}

impl ConsoleDatabases {
    /// Pools of the configured databases, by name, connected lazily: the console starts while
    /// they are away, and a section whose database is down says so.
    pub fn connect_lazy(&self) -> anyhow::Result<Vec<(String, PgPool)>> {
        let named = [
            ("order", &self.order),
            ("inventory", &self.inventory),
            ("payment", &self.payment),
            ("notification", &self.notification),
            ("saga", &self.saga),
        ];
        let mut pools = Vec::new();
        for (name, url) in named {
            if let Some(url) = url.as_deref().filter(|u| !u.is_empty()) {
                let pool = sagaflow_runtime::db::connect_lazy(url, POOL_SIZE)
                    .map_err(|e| anyhow::anyhow!("the {name} database URL: {e}"))?;
                pools.push((name.to_string(), pool));
            }
        }
        Ok(pools)
    }

    /// How long the audit log keeps an entry.
    pub fn audit_retention(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.audit_retention_days))
    }
}

/// Connections of each pool the console opens for another component's database.
const POOL_SIZE: u32 = 2;

/// What the console reads and how it is protected. Cheap to clone (pools are handles).
#[derive(Clone)]
pub struct Console {
    /// The query database: the audit log, and the query service's timeline (what it applied).
    pub(crate) query: PgPool,
    /// The saga database, when configured.
    pub(crate) saga: Option<PgPool>,
    /// The databases with an outbox and an inbox, by name (order, inventory, …, saga).
    pub(crate) outboxes: Vec<(String, PgPool)>,
    pub(crate) kafka: KafkaConfig,
    pub(crate) authenticator: Option<Arc<Authenticator>>,
    pub(crate) audit_retention: chrono::Duration,
}

impl Console {
    /// A console on the query database and Kafka, protected as `security` says (tokens from
    /// the same secret as the API; none when authentication is off).
    pub fn new(query: PgPool, kafka: KafkaConfig, security: &ApiSecurity) -> Self {
        Console {
            query,
            saga: None,
            outboxes: Vec::new(),
            kafka,
            authenticator: security.authenticator().map(Arc::new),
            audit_retention: chrono::Duration::days(90),
        }
    }

    /// Add a database with an outbox (`saga` is also the source of the saga pages).
    pub fn with_database(mut self, name: &str, pool: PgPool) -> Self {
        if name == "saga" {
            self.saga = Some(pool.clone());
        }
        self.outboxes.push((name.to_string(), pool));
        self
    }

    /// Keep audit log entries this long.
    pub fn with_audit_retention(mut self, retention: chrono::Duration) -> Self {
        self.audit_retention = retention;
        self
    }

    /// Add every database of `databases`.
    pub fn with_databases(self, databases: Vec<(String, PgPool)>) -> Self {
        databases.into_iter().fold(self, |console, (name, pool)| {
            console.with_database(&name, pool)
        })
    }

    /// Every database with an inbox, by name: the query database and the outbox databases.
    pub(crate) fn inbox_databases(&self) -> Vec<(String, PgPool)> {
        let mut all = vec![("query".to_string(), self.query.clone())];
        all.extend(self.outboxes.iter().cloned());
        all
    }

    /// The console's routes, authentication included: merge them beside (not behind) the API's
    /// `protect`, since a browser carries the token in a cookie.
    pub fn router(self) -> Router {
        let pages = Router::new()
            .route("/console", get(|| async { Redirect::to("/console/sagas") }))
            .route("/console/sagas", get(sagas::list_page))
            .route("/console/sagas/{id}", get(sagas::saga_page))
            .route("/console/dead-letters", get(dead_letters::page))
            .route(
                "/console/dead-letters/redrive",
                axum::routing::post(dead_letters::redrive),
            )
            .route("/console/outbox", get(outbox::page))
            .route("/console/outbox/retry", axum::routing::post(outbox::retry))
            .route("/console/health", get(health::page));
        let state = Arc::new(self);
        auth::protect(pages, state.clone())
            .merge(auth::login_router())
            .with_state(state)
    }
}

/// The shared state of the console's handlers.
pub(crate) type State = axum::extract::State<Arc<Console>>;
