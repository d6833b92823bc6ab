//! Retention that keeps up (issue 16 item 9): one housekeeping round deletes every row past
//! retention — 30,000 of them, far more than the old 10,000-per-minute cap — and nothing else,
//! in the outbox (published rows) and in the inbox (rows older than the inbox retention).

use sagaflow_messaging::consumer;
use sagaflow_tests::{database, kafka};

use super::relay;

const EXPIRED: i64 = 30_000;

#[tokio::test]
async fn one_housekeeping_round_deletes_every_published_row_past_retention_and_nothing_else() {
    let config = kafka();
    let db = database("order").await;
    // 30,000 published two days ago, 10 published a moment ago, 10 never published.
    sqlx::query(
        "INSERT INTO outbox (message_id, message_type, topic, msg_key, payload, headers, published_at)
         SELECT gen_random_uuid(), 'RejectOrder', 'orders.commands', 'k' || (n % 100), '\\x00', '{}',
                CASE WHEN n <= $1 THEN now() - interval '2 days'
                     WHEN n <= $1 + 10 THEN now() END
           FROM generate_series(1, $1 + 20) AS n",
    )
    .bind(EXPIRED)
    .execute(&db.pool)
    .await
    .unwrap();
    // Unpublished rows with no broker topic are never sent: only the retention is exercised.
    let deleted = relay(&db.pool, &config).delete_expired().await.unwrap();
    assert_eq!(deleted, EXPIRED as u64);
    let (published, pending): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE published_at IS NOT NULL),
                count(*) FILTER (WHERE published_at IS NULL) FROM outbox",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (published, pending),
        (10, 10),
        "recent and pending rows stay"
    );
}

#[tokio::test]
async fn one_inbox_pruning_round_deletes_every_row_past_retention_of_that_consumer_only() {
    let db = database("inventory").await;
    sqlx::query(
        "INSERT INTO inbox (consumer, message_id, message_type, topic, kafka_partition, kafka_offset, processed_at)
         SELECT CASE WHEN n <= $1 + 10 THEN 'inventory-service' ELSE 'another' END,
                gen_random_uuid(), 'ReserveStock', 'inventory.commands', 0, n,
                CASE WHEN n <= $1 THEN now() - interval '8 days'
                     WHEN n <= $1 + 10 THEN now()
                     ELSE now() - interval '8 days' END
           FROM generate_series(1, $1 + 20) AS n",
    )
    .bind(EXPIRED)
    .execute(&db.pool)
    .await
    .unwrap();
    let deleted = consumer::prune_inbox(
        &db.pool,
        "inventory-service",
        consumer::DEFAULT_INBOX_RETENTION,
    )
    .await
    .unwrap();
    assert_eq!(deleted, EXPIRED as u64);
    let left: Vec<(String, i64)> =
        sqlx::query_as("SELECT consumer, count(*) FROM inbox GROUP BY consumer ORDER BY consumer")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        left,
        vec![
            ("another".to_string(), 10),
            ("inventory-service".to_string(), 10)
        ],
        "recent rows and other consumers' rows stay"
    );
}
