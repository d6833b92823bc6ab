//! A relay's housekeeping (retention, planner statistics, backlog gauges) runs beside its
//! passes, never between them: a retention round that cannot finish does not hold back what
//! writers commit meanwhile. Run between passes, an `ANALYZE` of the outbox held every row
//! committed during it for 160 ms in a bench run (docs/benchmarks.md). And a relay that starts
//! on an outbox the planner has not seen analyzes it before its first pass: the planner's
//! nested loop over a table it believes empty made a 50 000-row drain 50 times slower — and
//! then not again until the outbox has changed by its size once more.

use std::time::Duration;

use sagaflow_messaging::RelayConfig;
use sagaflow_tests::wait;
use sqlx::PgPool;
use uuid::Uuid;

use super::{BrokerShare, relay_with, setup, wait_published, write};

/// Whether a relay's retention `DELETE` is waiting for a lock.
async fn retention_blocked(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event_type = 'Lock'
                           AND query LIKE 'DELETE FROM outbox%')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_relay_publishes_while_its_retention_round_waits_for_a_lock() {
    let (pool, config, _broker) = setup().await;
    // A row published two days ago, past the relay's one-hour retention, locked by a
    // transaction that stays open: the relay's retention round waits for it.
    let expired: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (message_id, message_type, topic, msg_key, payload, headers, published_at)
         VALUES (gen_random_uuid(), 'RejectOrder', 'orders.commands', 'expired', '\\x00', '{}',
                 now() - interval '2 days')
         RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM outbox WHERE id = $1 FOR UPDATE")
        .bind(expired)
        .execute(&mut *holder)
        .await
        .unwrap();

    let mut relay_config = RelayConfig::new("housekeeping-test");
    relay_config.retention = Duration::from_secs(3600);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(relay_with(&pool, &config, relay_config).run(shutdown.clone()));
    wait::until(
        "the relay's retention round waits for the locked row",
        Duration::from_secs(15),
        || async { retention_blocked(&pool).await.then_some(()) },
    )
    .await;

    // Committed while the round waits: published all the same.
    let message_id = write(&pool, Uuid::now_v7(), 0).await;
    wait_published(
        &pool,
        message_id,
        "a row committed during the retention round",
    )
    .await;
    assert!(
        retention_blocked(&pool).await,
        "the round was still waiting when the row went out"
    );

    // Once the lock goes, the round finishes: the expired row is deleted.
    holder.rollback().await.unwrap();
    wait::until(
        "the expired row is deleted",
        Duration::from_secs(15),
        || async {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE id = $1")
                .bind(expired)
                .fetch_one(&pool)
                .await
                .unwrap();
            (left == 0).then_some(())
        },
    )
    .await;
    shutdown.cancel();
    relay.await.unwrap().unwrap();
}

/// The planner's row count for the outbox (-1: never analyzed).
async fn planner_rows(pool: &PgPool) -> f32 {
    sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'outbox'::regclass")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// PostgreSQL's count of the outbox's row changes since its last analyze.
async fn changes_since_analyze(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'outbox'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// An outbox of 5 000 rows that autovacuum leaves alone, never analyzed, whose inserts the
/// statistics system has counted as changes since the last analyze.
async fn unanalyzed_outbox() -> (PgPool, sagaflow_runtime::KafkaConfig, BrokerShare) {
    let (pool, config, broker) = setup().await;
    // Autovacuum must not do it for the relay.
    sqlx::query("ALTER TABLE outbox SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox (message_id, message_type, topic, msg_key, payload, headers, published_at)
         SELECT gen_random_uuid(), 'RejectOrder', 'orders.commands', 'k' || n, '\\x00', '{}', now()
           FROM generate_series(1, 5000) AS n",
    )
    .execute(&pool)
    .await
    .unwrap();
    // The statistics system learns of the inserts within about a second.
    wait::until(
        "the inserts are counted as changes since the last analyze",
        Duration::from_secs(15),
        || async { (changes_since_analyze(&pool).await >= 5000).then_some(()) },
    )
    .await;
    assert!(planner_rows(&pool).await < 0.0, "never analyzed yet");
    (pool, config, broker)
}

#[tokio::test]
async fn a_relay_starting_on_an_outbox_the_planner_has_not_seen_analyzes_it() {
    let (pool, config, _broker) = unanalyzed_outbox().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(
        relay_with(&pool, &config, RelayConfig::new("planner-test")).run(shutdown.clone()),
    );
    wait::until(
        "the relay to analyze the outbox",
        Duration::from_secs(15),
        || async { (planner_rows(&pool).await >= 4000.0).then_some(()) },
    )
    .await;
    shutdown.cancel();
    relay.await.unwrap().unwrap();
}

/// How often the outbox was analyzed by hand (the relay's refreshes; not autovacuum's).
async fn analyze_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'outbox'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The refresh is for statistics that fell behind, not a periodic `ANALYZE`: it ran every 2 s
/// on every outbox of a bench run, because an `ANALYZE` of some columns leaves PostgreSQL's
/// count of changes since the last analyze as it was.
#[tokio::test]
async fn a_refreshed_outbox_is_not_analyzed_again_until_it_changes_again() {
    let (pool, config, _broker) = unanalyzed_outbox().await;
    // Every row of an outbox is written twice, its insert and the relay's mark: so there are
    // more changes since the last analyze than rows, until an analyze resets the count.
    sqlx::query("UPDATE outbox SET published_at = clock_timestamp()")
        .execute(&pool)
        .await
        .unwrap();
    wait::until(
        "the marks are counted as changes too",
        Duration::from_secs(15),
        || async { (changes_since_analyze(&pool).await >= 10_000).then_some(()) },
    )
    .await;
    let relay = relay_with(&pool, &config, RelayConfig::new("refresh-test"));
    relay.refresh_planner_stats().await;
    assert_eq!(
        analyze_count(&pool).await,
        1,
        "the stale statistics are refreshed"
    );
    assert!(
        planner_rows(&pool).await >= 4000.0,
        "the planner knows the rows"
    );

    for _ in 0..3 {
        relay.refresh_planner_stats().await;
    }
    assert_eq!(
        analyze_count(&pool).await,
        1,
        "nothing changed since the refresh: no check may analyze again"
    );
}

/// Every `ANALYZE` of the outbox — autovacuum's, the relay's refresh — skips the message
/// itself (`migrations/messaging/0012_outbox_statistics.sql`): statistics over the payloads
/// and headers were half its CPU, and no query filters on them.
#[tokio::test]
async fn an_analyze_of_the_outbox_skips_the_message_columns() {
    let (pool, config, _broker) = unanalyzed_outbox().await;
    relay_with(&pool, &config, RelayConfig::new("columns-test"))
        .refresh_planner_stats()
        .await;
    let analyzed: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_stats WHERE tablename = 'outbox' ORDER BY attname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for filtered_on in ["id", "msg_key", "published_at", "parked_at", "retry_at"] {
        assert!(
            analyzed.iter().any(|c| c == filtered_on),
            "{filtered_on} keeps its statistics: {analyzed:?}"
        );
    }
    for message in ["payload", "headers"] {
        assert!(
            !analyzed.iter().any(|c| c == message),
            "{message} has no statistics: {analyzed:?}"
        );
    }
}
