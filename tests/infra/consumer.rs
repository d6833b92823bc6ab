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

/// Records every applied message; blocks on [`STUCK`] until `released`, or panics on every
/// message when `panics`.
#[derive(Clone, Default)]
struct Probe {
    applied: Arc<Mutex<Vec<(i32, i64, Instant)>>>,
    stuck: CancellationToken,
    released: CancellationToken,
    panics: bool,
}

impl Handler for Probe {
    fn accepts(&self, _message_type: MessageType) -> bool {
        true
    }

    async fn handle(&self, _tx: &mut Tx, incoming: &Incoming) -> Result<(), HandlerError> {
        assert!(!self.panics, "the handler's bug");
        if incoming.key.as_deref() == Some(STUCK) {
            self.stuck.cancel();
            self.released.cancelled().await;
        }
        self.applied
            .lock()
            .unwrap()
            .push((incoming.partition, incoming.offset, Instant::now()));
        Ok(())
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
