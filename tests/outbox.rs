//! The transactional outbox and its relay against the real PostgreSQL and broker: nothing
//! committed is lost, nothing rolled back is published, per-key order holds with several
//! relays, and the relay survives kills, injected failures and an unreachable broker.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use outbox_relay::{Origin, Relay, RelayConfig, RelayHooks, enqueue};
use sagaflow_common::{KafkaConfig, kafka as clients};
use sagaflow_schemas::{Message, RejectOrder, topics};
use sagaflow_tests::kafka_probe::{Record, read_until};
use sagaflow_tests::{broker_lock, database, kafka, wait};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A message on orders.commands whose `reason` carries a sequence number.
fn message(order_id: Uuid, seq: usize) -> Message {
    RejectOrder {
        order_id,
        reason: format!("seq-{seq}"),
    }
    .into()
}

fn origin(order_id: Uuid) -> Origin {
    Origin {
        source: "outbox-test",
        correlation_id: order_id,
        causation_id: None,
        traceparent: None,
    }
}

/// Enqueue one message in its own committed transaction.
async fn write(pool: &PgPool, order_id: Uuid, seq: usize) -> Uuid {
    let mut tx = pool.begin().await.unwrap();
    let id = enqueue(&mut tx, &message(order_id, seq), &origin(order_id))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

fn relay(pool: &PgPool, config: &KafkaConfig) -> Relay {
    Relay::new(
        pool.clone(),
        clients::producer(config).unwrap(),
        config.clone(),
        RelayConfig::new("test"),
    )
}

fn spawn_relay(
    pool: &PgPool,
    config: &KafkaConfig,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(relay(pool, config).run(shutdown.clone()));
    (shutdown, handle)
}

async fn setup() -> (PgPool, KafkaConfig) {
    let db = database("order").await;
    let config = kafka();
    clients::ensure_topics(&config, &[topics::ORDERS_COMMANDS])
        .await
        .unwrap();
    (db.pool, config)
}

fn ids(records: &[Record]) -> BTreeSet<Uuid> {
    records.iter().map(|r| r.envelope().message_id).collect()
}

async fn published_ids(
    config: &KafkaConfig,
    expected: &BTreeSet<Uuid>,
    timeout: Duration,
) -> BTreeSet<Uuid> {
    let records = read_until(config, topics::ORDERS_COMMANDS, timeout, |records| {
        ids(records).is_superset(expected)
    })
    .await;
    ids(&records)
}

fn seq_of(record: &Record) -> usize {
    let envelope = record.envelope();
    let message = Message::decode(
        &envelope.message_type,
        Some(&envelope.schema_ref),
        record.payload.as_deref().unwrap(),
    )
    .unwrap();
    match message {
        Message::RejectOrder(m) => m.reason.trim_start_matches("seq-").parse().unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_late_committing_writer_is_published_and_rolled_back_writers_never_are() {
    let _broker = broker_lock().read().await;
    let (pool, config) = setup().await;
    let (shutdown, relay_task) = spawn_relay(&pool, &config);

    // The slow writer takes its id first, then holds its transaction open while later ids
    // commit and get published: a `WHERE id > cursor` relay would skip it for ever.
    let slow_order = Uuid::now_v7();
    let mut slow_tx = pool.begin().await.unwrap();
    let slow_id = enqueue(&mut slow_tx, &message(slow_order, 0), &origin(slow_order))
        .await
        .unwrap();

    let mut committed = BTreeSet::new();
    let mut writers = Vec::new();
    for w in 0..8 {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..25 {
                let order = Uuid::now_v7();
                if (w + i) % 10 == 0 {
                    // A rolled-back writer: its row must never appear.
                    let mut tx = pool.begin().await.unwrap();
                    enqueue(&mut tx, &message(order, i), &origin(order))
                        .await
                        .unwrap();
                    tx.rollback().await.unwrap();
                } else {
                    mine.push(write(&pool, order, i).await);
                }
            }
            mine
        }));
    }
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    // Everything committed so far is published while the slow transaction is still open.
    published_ids(&config, &committed, Duration::from_secs(30)).await;
    // The relay marks rows after the broker's ack, so a reader can see them on the topic a
    // moment before; then nothing stays pending: the relay does not see the uncommitted row.
    wait::until(
        "every committed row marked published",
        Duration::from_secs(10),
        || async {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (pending == 0).then_some(())
        },
    )
    .await;
    slow_tx.commit().await.unwrap();
    committed.insert(slow_id);

    let published = published_ids(&config, &committed, Duration::from_secs(30)).await;
    assert_eq!(
        published, committed,
        "published ids equal committed ids: nothing lost, nothing rolled back"
    );
    shutdown.cancel();
    relay_task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_relay_killed_repeatedly_loses_nothing() {
    let _broker = broker_lock().read().await;
    let (pool, config) = setup().await;
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, done) = (pool.clone(), done.clone());
        tokio::spawn(async move {
            let mut committed = BTreeSet::new();
            for i in 0..400 {
                committed.insert(write(&pool, Uuid::now_v7(), i).await);
                if i % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            done.store(true, Ordering::SeqCst);
            committed
        })
    };
    // Abort the relay task at arbitrary points: mid-claim, mid-publish, before marking.
    let mut kills = 0;
    while !done.load(Ordering::SeqCst) {
        let (_, task) = spawn_relay(&pool, &config);
        tokio::time::sleep(Duration::from_millis(40 + rand::random::<u64>() % 120)).await;
        task.abort();
        let _ = task.await;
        kills += 1;
    }
    let committed = writer.await.unwrap();
    assert!(kills >= 3, "the relay was killed {kills} times");
    let (shutdown, task) = spawn_relay(&pool, &config);
    let published = published_ids(&config, &committed, Duration::from_secs(60)).await;
    assert!(
        published.is_superset(&committed),
        "every committed row is on the topic after {kills} kills"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failure_after_the_ack_republishes_instead_of_losing() {
    let _broker = broker_lock().read().await;
    let (pool, config) = setup().await;
    let order = Uuid::now_v7();
    let id = write(&pool, order, 1).await;

    let failing = relay(&pool, &config).with_hooks(RelayHooks {
        after_ack: Some(Arc::new(|| {
            anyhow::bail!("injected crash after the broker ack")
        })),
    });
    let error = failing
        .publish_once()
        .await
        .expect_err("the injected failure aborts the pass");
    assert!(error.to_string().contains("injected"));
    let published_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT published_at FROM outbox WHERE message_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        published_at, None,
        "the row is not marked when the pass failed after the ack"
    );

    // The restarted relay publishes it again: a duplicate on the topic, never a loss.
    assert_eq!(relay(&pool, &config).drain().await.unwrap(), 1);
    let records = read_until(
        &config,
        topics::ORDERS_COMMANDS,
        Duration::from_secs(30),
        |r| r.len() >= 2,
    )
    .await;
    assert!(records.iter().all(|r| r.envelope().message_id == id));
    assert_eq!(records.len(), 2);
}

#[tokio::test]
async fn three_relays_keep_per_key_order() {
    let _broker = broker_lock().read().await;
    let (pool, config) = setup().await;
    let keys: Vec<Uuid> = (0..30).map(|_| Uuid::now_v7()).collect();
    let relays: Vec<_> = (0..3).map(|_| spawn_relay(&pool, &config)).collect();
    // Each key's messages are written in sequence (as an aggregate's transactions are),
    // keys interleaved, while three relays compete for the rows.
    let per_key = 15;
    let mut writers = Vec::new();
    for chunk in keys.chunks(10) {
        let (pool, chunk) = (pool.clone(), chunk.to_vec());
        writers.push(tokio::spawn(async move {
            for seq in 0..per_key {
                for key in &chunk {
                    write(&pool, *key, seq).await;
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let total = keys.len() * per_key;
    let records = read_until(
        &config,
        topics::ORDERS_COMMANDS,
        Duration::from_secs(60),
        |r| r.len() >= total,
    )
    .await;
    let mut by_key: HashMap<String, Vec<(i32, i64, usize)>> = HashMap::new();
    for record in &records {
        by_key
            .entry(record.key.clone().unwrap())
            .or_default()
            .push((record.partition, record.offset, seq_of(record)));
    }
    assert_eq!(by_key.len(), keys.len());
    let mut seen = BTreeSet::new();
    let redelivered: Vec<(i32, i64)> = records
        .iter()
        .map(|r| (r.partition, r.offset))
        .filter(|at| !seen.insert(*at))
        .collect();
    assert!(
        redelivered.is_empty(),
        "the broker delivered records twice: {redelivered:?}"
    );
    for (key, mut consumed) in by_key {
        consumed.sort();
        let partitions: BTreeSet<i32> = consumed.iter().map(|c| c.0).collect();
        assert_eq!(partitions.len(), 1, "key {key} stays on one partition");
        let seqs: Vec<usize> = consumed.iter().map(|c| c.2).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} went back in order: {seqs:?}"
        );
        assert_eq!(seqs.len(), per_key, "key {key}: every message once");
    }
    for (shutdown, task) in relays {
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn an_unpublishable_row_is_parked_without_blocking_other_keys() {
    let _broker = broker_lock().read().await;
    let (pool, config) = setup().await;
    let huge_order = Uuid::now_v7();
    let huge: Message = RejectOrder {
        order_id: huge_order,
        reason: "x".repeat(3 * 1024 * 1024),
    }
    .into();
    let mut tx = pool.begin().await.unwrap();
    let huge_id = enqueue(&mut tx, &huge, &origin(huge_order)).await.unwrap();
    tx.commit().await.unwrap();
    let others: BTreeSet<Uuid> = {
        let mut set = BTreeSet::new();
        for i in 0..20 {
            set.insert(write(&pool, Uuid::now_v7(), i).await);
        }
        set
    };
    let (shutdown, task) = spawn_relay(&pool, &config);
    let published = published_ids(&config, &others, Duration::from_secs(30)).await;
    assert!(!published.contains(&huge_id));
    let reason: Option<String> = sagaflow_tests::wait::until(
        "the huge row to be parked",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT parked_reason FROM outbox WHERE message_id = $1",
            )
            .bind(huge_id)
            .fetch_one(&pool)
            .await
            .unwrap()
            .map(Some)
        },
    )
    .await;
    assert!(
        reason.unwrap().to_lowercase().contains("size"),
        "parked with the broker's reason"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_unreachable_broker_delays_but_loses_nothing() {
    let Some(broker) = sagaflow_tests::infra().kafka_container.clone() else {
        eprintln!("skipped: needs the harness's broker container (not SAGAFLOW_TEST_KAFKA)");
        return;
    };
    // Alone on the broker: the other tests of this binary wait.
    let _broker = broker_lock().write().await;
    let (pool, config) = setup().await;
    let (shutdown, task) = spawn_relay(&pool, &config);
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (pool, written) = (pool.clone(), written.clone());
        tokio::spawn(async move {
            let mut committed = BTreeSet::new();
            for i in 0..300 {
                committed.insert(write(&pool, Uuid::now_v7(), i).await);
                written.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await; // a steady ~10 writes/s
            }
            committed
        })
    };
    sagaflow_tests::wait::until("first writes", Duration::from_secs(10), || async {
        (written.load(Ordering::SeqCst) > 20).then_some(())
    })
    .await;
    // The broker stops answering (frozen: its in-memory log survives) for 20 s.
    sagaflow_tests::docker(&["pause", &broker]);
    let before = written.load(Ordering::SeqCst);
    sagaflow_tests::wait::until(
        "writes to continue while the broker is down",
        Duration::from_secs(30),
        || async { (written.load(Ordering::SeqCst) >= before + 200).then_some(()) },
    )
    .await;
    let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    sagaflow_tests::docker(&["unpause", &broker]);
    assert!(
        backlog > 50,
        "rows accumulated while the broker was unreachable: {backlog}"
    );
    let committed = writer.await.unwrap();
    let published = published_ids(&config, &committed, Duration::from_secs(90)).await;
    assert!(
        published.is_superset(&committed),
        "the backlog drained after the broker returned"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[path = "outbox/retention.rs"]
mod retention;
