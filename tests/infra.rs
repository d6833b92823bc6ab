//! The foundation: every migration folder applies to the real PostgreSQL, and the real broker
//! carries messages with headers through an idempotent producer and a consumer group whose
//! committed offset survives a restart of the consumer.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use sagaflow_runtime::kafka as clients;
use sagaflow_tests::infra::migrations_dir;
use sagaflow_tests::{database, infra, kafka};

#[tokio::test]
async fn every_migration_folder_applies_to_the_database_server() {
    let root = migrations_dir("");
    let mut folders: Vec<String> = std::fs::read_dir(&root)
        .expect("migrations/ exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(
        folders,
        [
            "inventory",
            "messaging",
            "notification",
            "order",
            "payment",
            "query",
            "saga"
        ],
        "one migration folder per service database, and the shared outbox and inbox tables"
    );
    let shared_files: Vec<String> = std::fs::read_dir(root.join("messaging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let shared = shared_files.len() as i64;
    // `NNNN_outbox*.sql`: the outbox half, which a consume-only database does not get.
    let outbox_half = shared_files
        .iter()
        .filter(|name| {
            name.split_once('_')
                .is_some_and(|(_, rest)| rest.starts_with("outbox"))
        })
        .count() as i64;
    for folder in folders.iter().filter(|f| *f != "messaging") {
        let db = database(folder).await;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert!(
            tables.contains(&"inbox".to_string()),
            "{folder}: {tables:?}"
        );
        if folder != "query" {
            assert!(
                tables.contains(&"outbox".to_string()),
                "{folder} publishes, so it has an outbox: {tables:?}"
            );
        }
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let files = std::fs::read_dir(root.join(folder)).unwrap().count() as i64;
        // The query database consumes only: the inbox migrations, not the outbox ones.
        let shared = if folder == "query" {
            shared - outbox_half
        } else {
            shared
        };
        assert_eq!(applied, files + shared, "{folder}: every migration applied");
    }
}

/// A rollback: the database was migrated by a newer release (a version this binary does not
/// know), and this release must still start on it. sqlx refuses that by default
/// (`VersionMissing`), which would make every rollback, and an old replica restarting during a
/// rollout, fail at start.
#[tokio::test]
async fn a_database_migrated_by_a_newer_release_still_starts_this_one() {
    let db = database("order").await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999999, 'from a newer release', true, '\\x00', 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    order_service::MIGRATOR
        .run(&db.pool)
        .await
        .expect("the order service's migrations run on a database a newer release migrated");
}

#[tokio::test]
async fn broker_round_trip_with_headers_group_commit_and_resume() {
    let config = kafka();
    clients::ensure_topics(&config, &["probe"])
        .await
        .expect("create topic");
    let topic = config.topic("probe");
    let producer = clients::producer(&config).unwrap();
    for i in 0..10 {
        let key = format!("order-{}", i % 3);
        let value = format!("value-{i}");
        let index = i.to_string();
        let headers = clients::to_headers([("ce_type", "Probe"), ("index", index.as_str())]);
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&value)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("broker acknowledged");
    }

    // First member of the group reads five messages, commits, leaves.
    let group = "probe-group";
    let first = clients::consumer(&config, group).unwrap();
    first.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(30), first.recv())
            .await
            .expect("a message within 30 s")
            .unwrap();
        let headers = message.headers().expect("headers travel with the message");
        let ce_type = headers
            .iter()
            .find(|h| h.key == "ce_type")
            .and_then(|h| h.value);
        assert_eq!(ce_type, Some(b"Probe".as_slice()));
        let index: String = headers
            .iter()
            .find(|h| h.key == "index")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap();
        assert_eq!(message.payload(), Some(format!("value-{index}").as_bytes()));
        first.store_offset_from_message(&message).unwrap();
        seen.push(index);
    }
    first
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit offsets");
    drop(first);

    // A new member resumes after the committed offsets and reads exactly the rest.
    let second = clients::consumer(&config, group).unwrap();
    second.subscribe(&[&topic]).unwrap();
    while seen.len() < 10 {
        let message = tokio::time::timeout(Duration::from_secs(30), second.recv())
            .await
            .expect("the rest within 30 s")
            .unwrap();
        let index = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "index").and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap();
        seen.push(index);
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(
        seen, expected,
        "each message exactly once across the restart"
    );
    // Nothing beyond the ten: the resumed member did not start from the beginning.
    let extra = tokio::time::timeout(Duration::from_secs(2), second.recv()).await;
    assert!(extra.is_err(), "no redelivery after the committed offset");
    assert!(infra().kafka_brokers.contains("127.0.0.1"));
}

/// A member that resumes from a committed offset in the middle of a record batch (the usual
/// case after a crash or rebalance: producers batch, consumers commit per message) gets the
/// rest of that batch and everything after it — nothing skipped, nothing stuck. The embedded
/// broker needed a patch for this (vendor/README.md).
#[tokio::test]
async fn a_consumer_resuming_inside_a_batch_gets_the_rest_of_it() {
    let config = kafka();
    clients::ensure_topics(&config, &["probe-batch"])
        .await
        .expect("create topic");
    let topic = config.topic("probe-batch");
    // Lingering producer: the 20 sends below leave as one batch on partition 0.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("broker.address.family", "v4")
        .set("linger.ms", "200")
        .create()
        .unwrap();
    let send = |i: usize| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let value = i.to_string();
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic)
                        .partition(0)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("broker acknowledged")
        }
    };
    let acks = futures::future::join_all((0..20).map(send)).await;
    let base = acks.iter().map(|d| d.offset).min().unwrap();

    let group = "probe-batch-group";
    let first = clients::consumer(&config, group).unwrap();
    first.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let message = tokio::time::timeout(Duration::from_secs(30), first.recv())
            .await
            .expect("a message within 30 s")
            .unwrap();
        first.store_offset_from_message(&message).unwrap();
        seen.push(String::from_utf8_lossy(message.payload().unwrap()).into_owned());
    }
    first
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit offsets");
    drop(first);

    // The committed offset is base + 7: inside the batch.
    let second = clients::consumer(&config, group).unwrap();
    second.subscribe(&[&topic]).unwrap();
    let later = futures::future::join_all((20..23).map(send)).await;
    assert!(later.iter().all(|d| d.offset >= base + 20));
    while seen.len() < 23 {
        let message = tokio::time::timeout(Duration::from_secs(30), second.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the rest of the batch within 30 s; got {} of 23: {seen:?}",
                    seen.len()
                )
            })
            .unwrap();
        seen.push(String::from_utf8_lossy(message.payload().unwrap()).into_owned());
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..23).map(|i| i.to_string()).collect();
    assert_eq!(
        seen, expected,
        "each message exactly once across the restart"
    );
}

/// The offsets a broker reports (ListOffsets: earliest and latest) bound every record,
/// however the records were batched. The embedded broker answered "latest" with the base
/// offset of the newest batch + 1, so a batch of several records had its tail cut off: probes
/// that read "up to the high watermark" (and consumers starting from latest, and lag) missed
/// records — the root cause of the saga redelivery test's flake (vendor/README.md).
#[tokio::test]
async fn watermarks_count_every_record_of_a_multi_record_batch() {
    let config = kafka();
    clients::ensure_topics(&config, &["batched"])
        .await
        .expect("create topic");
    let topic = config.topic("batched");
    let producer = clients::producer(&config).unwrap();
    // One key: one partition; sent together, so they travel in one batch (linger.ms 1).
    let sends = (0..5).map(|i| {
        let value = format!("value-{i}");
        let producer = &producer;
        let topic = &topic;
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key("one-key").payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("broker acknowledged")
        }
    });
    let delivered = futures::future::join_all(sends).await;
    let partition = delivered[0].partition;
    let last = delivered.iter().map(|d| d.offset).max().unwrap();
    let probe: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("log_level", "3")
        .create()
        .unwrap();
    let (low, high) = tokio::task::spawn_blocking(move || {
        clients::watermarks(&probe, &topic, partition, Duration::from_secs(10))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (low, high),
        (0, last + 1),
        "watermarks of 5 records at offsets 0..={last}"
    );
    let read = sagaflow_tests::kafka_probe::read_all(&config, "batched").await;
    assert_eq!(read.len(), 5, "every record up to the high watermark");
}

#[path = "infra/consumer.rs"]
mod consumer;

#[path = "infra/pool.rs"]
mod pool;

#[path = "infra/transactions.rs"]
mod transactions;

/// A new producer's first send waited for librdkafka's 500 ms producer-id retry timer, once or
/// twice (`sagaflow_runtime::kafka::producer`, `ask_for_producer_id_now`): every relay's first
/// row after a start, every hop of the first saga after `sagaflow dev` starts. Before the fix
/// it took 501–1 002 ms on the embedded broker and 105–506 ms on Apache Kafka; after, 1–10 ms.
/// The bound is half the timer's period: a first send that had to wait for it cannot pass.
#[tokio::test]
async fn a_new_producer_sends_its_first_record_without_waiting_for_a_retry_timer() {
    const RETRY_TIMER: Duration = Duration::from_millis(500);
    let config = kafka();
    clients::ensure_topics(&config, &["first-send"])
        .await
        .expect("create topic");
    let topic = config.topic("first-send");
    // The topic is in the cluster's metadata before the producer that is measured starts.
    let warm = clients::producer(&config).unwrap();
    warm.send(
        FutureRecord::to(&topic).key("k").payload("warm"),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .expect("broker acknowledged");

    for attempt in 0..3 {
        let producer = clients::producer(&config).unwrap();
        let sent = std::time::Instant::now();
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload("first"),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("broker acknowledged");
        let took = sent.elapsed();
        assert!(
            took < RETRY_TIMER / 2,
            "new producer {attempt}: first send acknowledged after {took:?}"
        );
    }
}

/// Against servers that outlive the tests (the fast local loop), a run removes the databases
/// and topics that finished runs of this machine left — a full run leaves about a thousand of
/// each — and nothing of a run still going.
#[tokio::test]
async fn databases_and_topics_of_finished_runs_are_removed_and_those_of_live_runs_kept() {
    use sagaflow_tests::leftovers::{RunTag, remove_finished_runs};
    use sqlx::{Connection, Executor, PgConnection};

    let infra = infra();
    let current = RunTag::current().expect("a Linux boot id");
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let finished = RunTag {
        boot: current.boot.clone(),
        pid: ended.id(),
    };
    ended.wait().unwrap();
    let random = || uuid::Uuid::new_v4().simple().to_string()[..8].to_string();

    // A finished run's database and topic, named as the harness names them.
    let finished_db = format!("t_{}_order_{}", finished.render(), random());
    let mut admin = PgConnection::connect(&infra.postgres_admin_url)
        .await
        .unwrap();
    admin
        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {finished_db}"
        ))))
        .await
        .unwrap();
    let mut finished_kafka = kafka();
    finished_kafka.topic_prefix = format!("t{}_{}.", finished.render(), random());
    let finished_topic = finished_kafka.topic("probe");
    // This run's, which must stay.
    let live_db = database("order").await;
    let live_kafka = kafka();
    let live_topic = live_kafka.topic("probe");
    for config in [&finished_kafka, &live_kafka] {
        clients::ensure_topics(config, &["probe"])
            .await
            .expect("create topic");
    }

    let removed = remove_finished_runs(&infra.postgres_admin_url, &infra.kafka_brokers)
        .await
        .expect("leftovers removed");
    assert!(removed.databases.contains(&finished_db), "{removed:?}");
    assert!(removed.topics.contains(&finished_topic), "{removed:?}");

    let databases: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    assert!(
        !databases.contains(&finished_db),
        "finished run's database dropped"
    );
    assert!(
        databases.contains(&live_db.name),
        "this run's database kept"
    );
    // Kafka deletes topics asynchronously: the metadata stops listing one within seconds.
    let admin_client = clients::admin(&live_kafka).unwrap();
    let topics = sagaflow_tests::wait::until(
        "the finished run's topic gone",
        Duration::from_secs(30),
        || {
            let names: Option<Vec<String>> = admin_client
                .inner()
                .fetch_metadata(None, Duration::from_secs(5))
                .ok()
                .map(|m| m.topics().iter().map(|t| t.name().to_string()).collect());
            let gone = names.filter(|names| !names.contains(&finished_topic));
            std::future::ready(gone)
        },
    )
    .await;
    assert!(
        topics.contains(&live_topic),
        "this run's topic kept: {topics:?}"
    );
}
