//! PostgreSQL pools and migrations.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres, Transaction};

/// A transaction: every write function takes one, its caller commits once.
pub type Tx = Transaction<'static, Postgres>;

/// A pooled connection idle for longer than this is pinged before it is handed out.
pub const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// Every pool's options. Acquiring fails after 5 s instead of hanging, so a request while the
/// database is down answers 503 quickly.
///
/// Why no ping per checkout: sqlx pings a pooled connection (a round trip) before handing it
/// out, and — unpatched — again when it comes back: two round trips that run nothing per
/// transaction, and per statement sent straight to a pool. Here a connection that sat idle for
/// [`PING_WHEN_IDLE_FOR`] is still pinged (it may have died with a server restart: a dead one
/// is replaced, not handed out); a busy one is not — if it broke in the last second, the
/// caller's statement fails as unavailable ([`is_unavailable`]) and is retried like any other
/// outage. The release side is vendor/README.md row 12 (only an unsettled connection is
/// pinged when it comes back).
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Connect a pool.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    pool_options(max_connections).connect_with(options).await
}

/// Connect lazily (no connection until first use): components start even when PostgreSQL is
/// still coming up, and report not-ready until it answers.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(pool_options(max_connections).connect_lazy_with(options))
}

/// Run a component's migrations.
pub async fn migrate(
    pool: &PgPool,
    migrator: &Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    migrator.run(pool).await
}

/// Whether an error means the database could not be reached (as opposed to a query the
/// database refused): such failures are retried forever, never dead-lettered.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => true,
        // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08* connection
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300"),
        _ => false,
    }
}

/// Whether an error is a serialization failure or deadlock, worth retrying at once.
pub fn is_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001") | Some("40P01")))
}

/// A text column holding a value its enum does not know (the table's CHECK constraint should
/// make that impossible): the error of every [`text_enum!`](crate::text_enum) `TryFrom<String>`.
#[derive(Debug, thiserror::Error)]
#[error("unknown {of} {value:?}")]
pub struct UnknownValue {
    /// What the value should have been, e.g. `order status`.
    pub of: &'static str,
    pub value: String,
}

/// The one idiom for status enums stored as text: each variant with its text, `ALL`,
/// `as_str`, `Display`, serde as the text, and `TryFrom<String>` (use it on a row field with
/// `#[sqlx(try_from = "String")]`), failing with [`UnknownValue`].
///
/// ```ignore
/// sagaflow_runtime::text_enum! {
///     /// Where an order stands.
///     pub enum OrderStatus("order status") { Pending = "PENDING", Approved = "APPROVED" }
/// }
/// ```
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $($(#[$variant_meta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        $vis enum $name {
            $($(#[$variant_meta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::db::UnknownValue;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|known| known.as_str() == value)
                    .ok_or($crate::db::UnknownValue { of: $what, value })
            }
        }
    };
}

#[cfg(test)]
mod text_enum_tests {
    crate::text_enum! {
        /// A test enum.
        enum Light("light") { Red = "RED", Green = "GREEN" }
    }

    #[test]
    fn a_text_enum_round_trips_through_its_text_and_refuses_others() {
        for light in Light::ALL {
            assert_eq!(Light::try_from(light.as_str().to_string()).unwrap(), *light);
            assert_eq!(light.to_string(), light.as_str());
            assert_eq!(
                serde_json::to_value(light).unwrap(),
                serde_json::json!(light.as_str())
            );
        }
        let error = Light::try_from("red".to_string()).unwrap_err();
        assert_eq!(error.to_string(), "unknown light \"red\"");
    }
}
