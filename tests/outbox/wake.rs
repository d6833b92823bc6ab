//! No NOTIFY per transaction (issue 15): writers notify only while a relay sleeps (is
//! registered in `outbox_relay_sleepers`); a busy relay claims again by itself. Proven here:
//! the trigger notifies exactly while a registration exists, and a sleeping relay whose
//! fallback poll is a minute away publishes a new row within seconds — woken by the writer.

use std::time::Duration;

use sagaflow_messaging::RelayConfig;
use sagaflow_messaging::relay::ASLEEP_RECHECK;
use sagaflow_runtime::KafkaConfig;
use sagaflow_tests::wait;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use super::{relay_with, setup, write};

/// Whether a notification on the relays' channel arrives within `within`.
async fn notified(listener: &mut PgListener, within: Duration) -> bool {
    tokio::time::timeout(within, listener.recv()).await.is_ok()
}

async fn sleepers(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_relay_sleepers")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A running relay whose fallback poll is a minute away, once it has registered as asleep;
/// cancel the token to stop it.
async fn asleep_relay(
    pool: &PgPool,
    config: &KafkaConfig,
    name: &str,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    tokio_util::sync::CancellationToken,
) {
    let mut relay_config = RelayConfig::new(name);
    relay_config.poll_interval = Duration::from_secs(60);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(relay_with(pool, config, relay_config).run(shutdown.clone()));
    wait::until(
        "the idle relay registers as asleep",
        Duration::from_secs(15),
        || async { (sleepers(pool).await == 1).then_some(()) },
    )
    .await;
    (relay, shutdown)
}

#[tokio::test]
async fn writers_notify_only_while_a_relay_sleeps() {
    let (pool, _config, _broker) = setup().await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("sagaflow_outbox").await.unwrap();
    let quiet = Duration::from_millis(500);

    write(&pool, Uuid::now_v7(), 0).await;
    assert!(
        !notified(&mut listener, quiet).await,
        "no relay asleep: the commit must not notify (it would lose group commit)"
    );

    let relay_id = Uuid::new_v4();
    sqlx::query("INSERT INTO outbox_relay_sleepers (relay_id) VALUES ($1)")
        .bind(relay_id)
        .execute(&pool)
        .await
        .unwrap();
    write(&pool, Uuid::now_v7(), 1).await;
    assert!(
        notified(&mut listener, Duration::from_secs(5)).await,
        "a relay is asleep: the commit must wake it"
    );

    sqlx::query("DELETE FROM outbox_relay_sleepers WHERE relay_id = $1")
        .bind(relay_id)
        .execute(&pool)
        .await
        .unwrap();
    write(&pool, Uuid::now_v7(), 2).await;
    assert!(
        !notified(&mut listener, quiet).await,
        "the relay woke up: commits stop notifying"
    );
}

#[tokio::test]
async fn a_sleeping_relay_is_woken_by_the_writer_not_by_its_poll() {
    let (pool, config, _broker) = setup().await;
    let (relay, shutdown) = asleep_relay(&pool, &config, "wake").await;
    // Let the relay's one re-check after registering go by (it would find a row written
    // before it): from then on only a notification wakes it within the next minute. Not a
    // synchronisation — if the machine stalls past this, the re-check finds the row and the
    // test still passes, only without proving the wake-up that time.
    tokio::time::sleep(ASLEEP_RECHECK * 10).await;
    let id = write(&pool, Uuid::now_v7(), 0).await;
    wait::until("the row is published", Duration::from_secs(10), || async {
        let published: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT published_at FROM outbox WHERE message_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        published.map(|_| ())
    })
    .await;

    shutdown.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(sleepers(&pool).await, 0, "a stopped relay deregisters");
}

/// A relay kept busy by a stream of rows (each pass finds some) deregisters, so the writers'
/// commits stop notifying; once the stream stops it registers again. (Through a trickle it
/// stays registered — `DEREGISTER_AFTER_BUSY_PASSES` — which saves statements, not shown here.)
#[tokio::test]
async fn a_busy_relay_stops_the_writers_notifying_and_an_idle_one_starts_them_again() {
    let (pool, config, _broker) = setup().await;
    let (relay, shutdown) = asleep_relay(&pool, &config, "busy").await;

    // Four writers, each committing rows back to back: passes keep finding rows.
    let writing = tokio_util::sync::CancellationToken::new();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (pool, writing) = (pool.clone(), writing.clone());
            tokio::spawn(async move {
                let key = Uuid::now_v7();
                let mut seq = 0;
                while !writing.is_cancelled() {
                    write(&pool, key, seq).await;
                    seq += 1;
                }
            })
        })
        .collect();
    wait::until(
        "the busy relay deregisters",
        Duration::from_secs(20),
        || async { (sleepers(&pool).await == 0).then_some(()) },
    )
    .await;
    writing.cancel();
    for writer in writers {
        writer.await.unwrap();
    }
    wait::until(
        "every row is published and the idle relay registers again",
        Duration::from_secs(30),
        || async {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (pending == 0 && sleepers(&pool).await == 1).then_some(())
        },
    )
    .await;

    shutdown.cancel();
    relay.await.unwrap().unwrap();
}
