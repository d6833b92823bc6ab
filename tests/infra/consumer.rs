//! The consumer's liveness (issue 16, items 3 and 4): a slow partition does not stall the
//! others, and a lane that panics stops its consumer with an error and a red readiness —
//! not a process that exits 0 or keeps looking healthy while consuming nothing.

use sagaflow_schemas::MessageType;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use sagaflow_messaging::consumer::{self, ConsumerSettings, Handler, HandlerError, Incoming};
use sagaflow_runtime::db::Tx;
use sagaflow_runtime::http::{Readiness, ops_router, serve};
use sagaflow_runtime::{KafkaConfig, kafka as clients};
use sagaflow_schemas::{Envelope, Message, ReleaseStock, topics};
use sagaflow_tests::{database, kafka, wait};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The key whose messages block until `released`.
const STUCK: &str = "stuck-key";

/// The key whose messages the handler rejects (dead-lettered at once).
const POISON: &str = "poison-key";

/// Records every message handled (in transactions that commit or not) and, after each
/// commit, the reports of the messages it applied; blocks on [`STUCK`] until `released`,
/// rejects [`POISON`], or panics on every message when `panics`. Applies up to `batch`
/// queued messages per transaction (0: the consumer's default of one).
#[derive(Clone, Default)]
struct Probe {
    applied: Arc<Mutex<Vec<(i32, i64, Instant)>>>,
    committed: Arc<Mutex<Vec<(i32, i64)>>>,
    stuck: CancellationToken,
    released: CancellationToken,
    panics: bool,
    batch: usize,
}

impl Handler for Probe {
    fn accepts(&self, _message_type: MessageType) -> bool {
        true
    }

    fn max_batch(&self) -> usize {
        self.batch.max(1)
    }

    /// The message's place, told after the commit.
    type Report = (i32, i64);

    async fn handle(&self, _tx: &mut Tx, incoming: &Incoming) -> Result<(i32, i64), HandlerError> {
        assert!(!self.panics, "the handler's bug");
        if incoming.key.as_deref() == Some(STUCK) {
            self.stuck.cancel();
            self.released.cancelled().await;
        }
        self.applied
            .lock()
            .unwrap()
            .push((incoming.partition, incoming.offset, Instant::now()));
        if incoming.key.as_deref() == Some(POISON) {
            return Err(HandlerError::Rejected("the probe rejects it".into()));
        }
        Ok((incoming.partition, incoming.offset))
    }

    fn committed(&self, reports: Vec<(i32, i64)>) {
        self.committed.lock().unwrap().extend(reports);
    }
}

/// Send a ReleaseStock with a full envelope to `partition`, keyed `key`.
async fn send(producer: &FutureProducer, config: &KafkaConfig, partition: i32, key: &str) {
    let order_id = Uuid::now_v7();
    let message = Message::from(ReleaseStock {
        order_id,
        reason: "probe".into(),
    });
    let encoded = message.encode().unwrap();
    let envelope = Envelope::new(
        encoded.message_type,
        "tests",
        order_id,
        None,
        encoded.schema_ref.clone(),
    );
    let pairs = envelope.to_headers();
    let topic = config.topic(topics::INVENTORY_COMMANDS);
    producer
        .send(
            FutureRecord::to(&topic)
                .partition(partition)
                .key(key)
                .payload(&encoded.bytes)
                .headers(clients::to_headers(
                    pairs.iter().map(|(k, v)| (*k, v.as_str())),
                )),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("broker acknowledged");
}

#[tokio::test]
async fn a_partition_whose_handler_blocks_does_not_stall_the_other_partitions() {
    let config = kafka();
    let db = database("inventory").await;
    clients::ensure_all_topics(&config).await.unwrap();
    let producer = clients::producer(&config).unwrap();
    // One blocking message, then more than a lane holds (64) behind it, all on partition 0.
    send(&producer, &config, 0, STUCK).await;
    for i in 0..100 {
        send(&producer, &config, 0, &format!("p0-{i}")).await;
    }
    let probe = Probe::default();
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(consumer::run(
        db.pool.clone(),
        config.clone(),
        ConsumerSettings::new("slow-lane", &[topics::INVENTORY_COMMANDS], &config),
        probe.clone(),
        shutdown.clone(),
    ));
    wait::until(
        "the handler blocked on partition 0",
        Duration::from_secs(60),
        || async { probe.stuck.is_cancelled().then_some(()) },
    )
    .await;

    send(&producer, &config, 1, "p1").await;
    let sent = Instant::now();
    let applied_at = wait::until(
        "partition 1's message applied while partition 0 is stuck",
        Duration::from_secs(30),
        || async {
            let applied = probe.applied.lock().unwrap();
            applied.iter().find(|(p, ..)| *p == 1).map(|(.., at)| *at)
        },
    )
    .await;
    let latency = applied_at.saturating_duration_since(sent);
    assert!(
        latency < Duration::from_secs(2),
        "partition 1 waited {latency:?} behind a stuck partition 0"
    );

    // Released, partition 0 catches up, in offset order, nothing skipped.
    probe.released.cancel();
    wait::until(
        "all 102 messages applied",
        Duration::from_secs(60),
        || async { (probe.applied.lock().unwrap().len() == 102).then_some(()) },
    )
    .await;
    let p0: Vec<i64> = probe
        .applied
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, ..)| *p == 0)
        .map(|(_, offset, _)| *offset)
        .collect();
    assert_eq!(p0.len(), 101);
    assert!(
        p0.windows(2).all(|w| w[0] + 1 == w[1]),
        "partition 0 out of order or with gaps: {p0:?}"
    );
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_panicking_handler_stops_the_consumer_with_an_error_and_readiness_turns_red() {
    let config = kafka();
    let db = database("inventory").await;
    clients::ensure_all_topics(&config).await.unwrap();
    let producer = clients::producer(&config).unwrap();
    send(&producer, &config, 2, "boom").await;

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ready_url = format!("http://{}/health/ready", listener.local_addr().unwrap());
    let ops = ops_router(Readiness {
        databases: vec![],
        kafka: Some(config.clone()),
    });
    tokio::spawn(serve(listener, ops, shutdown.clone()));
    let ready = || async {
        let response = reqwest::get(&ready_url).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(ready().await.0, 200, "ready before the panic");

    let ended = tokio::time::timeout(
        Duration::from_secs(60),
        consumer::run(
            db.pool.clone(),
            config.clone(),
            ConsumerSettings::new("panicky", &[topics::INVENTORY_COMMANDS], &config),
            Probe {
                panics: true,
                ..Probe::default()
            },
            shutdown.clone(),
        ),
    )
    .await
    .expect("the consumer stops after its lane panicked");
    let error = ended.expect_err("a dead lane is an error, not a clean stop");
    assert!(
        error.to_string().contains("panicked"),
        "the error says what happened: {error}"
    );
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("panicked"), "{body}");
    shutdown.cancel();
}

/// What a handler tells after the commit — the orchestrator's transition counters and FAILED
/// alerts, the notification e-mails — is told once per applied message, even when the batch
/// holding it rolled back (a poison message in its middle) and was applied again one message
/// at a time; and never for the message that did not commit.
#[tokio::test]
async fn a_rolled_back_batch_reports_each_message_once_from_the_commit_that_applied_it() {
    let config = kafka();
    let db = database("inventory").await;
    clients::ensure_all_topics(&config).await.unwrap();
    let producer = clients::producer(&config).unwrap();
    // Queued before the consumer starts, so that its lane takes them as one batch.
    for i in 0..20 {
        let key = if i == 10 {
            POISON.to_string()
        } else {
            format!("k{i}")
        };
        send(&producer, &config, 0, &key).await;
    }
    let probe = Probe {
        batch: 64,
        ..Probe::default()
    };
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(consumer::run(
        db.pool.clone(),
        config.clone(),
        ConsumerSettings::new("reporting", &[topics::INVENTORY_COMMANDS], &config),
        probe.clone(),
        shutdown.clone(),
    ));
    let inbox_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM inbox WHERE consumer = 'reporting'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    wait::until(
        "every message but the poison applied",
        Duration::from_secs(60),
        || async { (inbox_rows().await == 19).then_some(()) },
    )
    .await;
    // The reports follow each commit at once.
    wait::until("19 reports", Duration::from_secs(10), || async {
        (probe.committed.lock().unwrap().len() >= 19).then_some(())
    })
    .await;
    let handled = probe.applied.lock().unwrap().len();
    assert!(
        handled > 20,
        "a batch formed and rolled back (messages handled {handled} times); else this test shows nothing"
    );
    // The topics are this test's own: partition 0's offsets are 0..20, the poison at 10.
    let expected: Vec<(i32, i64)> = (0..20).filter(|o| *o != 10).map(|o| (0, o)).collect();
    assert_eq!(
        *probe.committed.lock().unwrap(),
        expected,
        "each applied message reported once, in offset order, the poison never"
    );
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
}
