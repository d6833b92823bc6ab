//! Late commits under sustained load (issue 16 item 8): while every pass is full the relay
//! resumes after its previous claims, so a row committed late with a lower id must still be
//! found — by a rescan from the start at least every `RESCAN_EVERY` (1 s) — not only once
//! the load stops. Bound asserted: published within 5 s of its commit while writers keep
//! every 5-row pass full.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sagaflow_messaging::{RelayConfig, enqueue};
use sagaflow_tests::wait;
use uuid::Uuid;

use super::{message, origin, relay_with, setup, write};

#[tokio::test]
async fn a_late_low_id_commit_is_published_while_full_passes_go_on() {
    let (pool, config, _broker) = setup().await;
    let mut relay_config = RelayConfig::new("late");
    relay_config.batch_size = 5;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(relay_with(&pool, &config, relay_config).run(shutdown.clone()));

    // The late writer takes a low id and holds its transaction open.
    let late_order = Uuid::now_v7();
    let mut late_tx = pool.begin().await.unwrap();
    enqueue(&mut late_tx, &message(late_order, 0), &origin(late_order))
        .await
        .unwrap();
    let late_id: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox")
        .fetch_one(&mut *late_tx)
        .await
        .unwrap();

    // Writers keep every pass full: many more rows than a pass takes, all the time.
    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (pool, writing) = (pool.clone(), writing.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while writing.load(Ordering::Relaxed) {
                write(&pool, Uuid::now_v7(), w * 1_000_000 + i).await;
                i += 1;
            }
            i
        }));
    }
    // The relay is draining the writers' rows (past the late id) before the late commit.
    wait::until(
        "rows above the late id published",
        Duration::from_secs(30),
        || async {
            let published: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE id > $1 AND published_at IS NOT NULL",
            )
            .bind(late_id)
            .fetch_one(&pool)
            .await
            .ok()?;
            (published >= 50).then_some(())
        },
    )
    .await;
    late_tx.commit().await.unwrap();
    let committed = Instant::now();
    let waited = wait::until(
        "the late row published under full passes",
        Duration::from_secs(30),
        || async {
            let published: Option<chrono::DateTime<chrono::Utc>> =
                sqlx::query_scalar("SELECT published_at FROM outbox WHERE id = $1")
                    .bind(late_id)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            published.map(|_| committed.elapsed())
        },
    )
    .await;
    // The writers were still going: the passes were full all along.
    assert!(writing.load(Ordering::Relaxed));
    let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    writing.store(false, Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.unwrap();
    }
    eprintln!(
        "late row published {waited:?} after its commit; {written} rows written meanwhile, backlog {backlog} when it went"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the late row waited {waited:?} behind full passes"
    );
    shutdown.cancel();
    relay.await.unwrap().unwrap();
}
