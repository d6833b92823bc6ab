//! The outbox and inbox tables: one source (`migrations/messaging`), applied in every service
//! database together with the service's own migrations, by one migrator and into one
//! `_sqlx_migrations` table.
//!
//! The two folders share one version sequence per database: `migrations/messaging` owns
//! versions 1, 2, 5, 6, 8 and 12, and a service's own migrations take the others (3, 4, 7, 9,
//! …). A collision is refused when the migrator is built (every component and test builds it
//! at start). Versions, descriptions and SQL are those the per-service copies had, so databases
//! migrated before the copies were merged validate unchanged.

use std::collections::BTreeSet;

use sqlx::migrate::{Migration, Migrator};

static SHARED: Migrator = sqlx::migrate!("../migrations/messaging");

/// Which halves of the pattern a database holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tables {
    /// A component that writes messages and consumes them.
    OutboxAndInbox,
    /// A component that only consumes (the query service).
    InboxOnly,
}

impl Tables {
    fn includes(self, migration: &Migration) -> bool {
        match self {
            Tables::OutboxAndInbox => true,
            Tables::InboxOnly => !migration.description.starts_with("outbox"),
        }
    }
}

/// The migrator of a service database: `tables` from `migrations/messaging`, then the
/// service's own migrations (`sqlx::migrate!` of its folder), in version order.
///
/// # Panics
/// When a service migration takes a version of a shared one (a programming error, found by
/// every test that starts the service).
pub fn migrator(service: &Migrator, tables: Tables) -> Migrator {
    let shared: BTreeSet<i64> = SHARED.iter().map(|m| m.version).collect();
    if let Some(taken) = service.iter().find(|m| shared.contains(&m.version)) {
        panic!(
            "migration {} ({}) takes a version of migrations/messaging ({shared:?})",
            taken.version, taken.description
        );
    }
    let migrations = SHARED
        .iter()
        .filter(|m| tables.includes(m))
        .chain(service.iter())
        .cloned()
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    // A database may hold migrations this binary does not know: a newer release applied them.
    // Starting anyway is what makes a rollback (or an old replica restarting mid-rollout)
    // possible, as Flyway's default `*:future` does; it relies on migrations being additive,
    // which every one so far is (columns and tables added, none dropped or renamed). Migrations
    // are never deleted from the source, so a "missing" one is always a newer one.
    migrator.set_ignore_missing(true);
    migrator
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(migrator: &Migrator) -> Vec<(i64, String)> {
        migrator
            .iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    }

    #[test]
    fn the_shared_migrations_keep_the_versions_and_names_the_service_copies_had() {
        assert_eq!(
            versions(&SHARED),
            [
                (1, "outbox".to_string()),
                (2, "inbox".to_string()),
                (5, "inbox processed at".to_string()),
                (6, "outbox retry at".to_string()),
                (8, "outbox relay sleepers".to_string()),
                (12, "outbox statistics".to_string()),
            ]
        );
    }

    #[test]
    fn an_inbox_only_database_gets_no_outbox() {
        let migrator = migrator(&Migrator::with_migrations(Vec::new()), Tables::InboxOnly);
        assert_eq!(
            versions(&migrator),
            [
                (2, "inbox".to_string()),
                (5, "inbox processed at".to_string())
            ]
        );
    }

    #[test]
    #[should_panic(expected = "takes a version of migrations/messaging")]
    fn a_service_migration_may_not_take_a_shared_version() {
        let own = SHARED.iter().next().cloned().into_iter().collect();
        migrator(&Migrator::with_migrations(own), Tables::OutboxAndInbox);
    }
}
