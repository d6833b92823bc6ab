//! The platform on a three-broker Apache Kafka cluster (KRaft): topics with replication
//! factor 3 and `min.insync.replicas` 2, producers with `acks=all` and idempotence — the
//! production settings — under broker and network faults with a steady order load.
//!
//! The scenarios share one cluster and take turns (each restores all three brokers before
//! it ends).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sagaflow_platform::invariants::Databases;
use sagaflow_runtime::KafkaConfig;
use sagaflow_schemas::topics;
use sagaflow_tests::cluster::{BROKERS, Cluster, cluster, wait_for_brokers};
use sagaflow_tests::kafka_probe::read_until;
use sagaflow_tests::load::SteadyLoad;
use sagaflow_tests::platform::{Options, TestApp, spawn_platform};
use sagaflow_tests::{groups, invariants, wait};
use tokio_util::sync::CancellationToken;

const SKUS: [&str; 3] = ["SKU-C1", "SKU-C2", "SKU-C3"];
const RATE: u32 = 10;

/// One scenario at a time: they kill brokers of the shared cluster.
fn turn() -> &'static tokio::sync::Mutex<()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    &TURN
}

async fn platform_on(cluster: &Cluster) -> (TestApp, HashMap<String, i64>) {
    let app = spawn_platform(Options {
        kafka_brokers: Some(cluster.bootstrap.clone()),
        // Long enough that an outage of the cluster is not a payment timeout.
        step_timeout: Duration::from_secs(90),
        ..Options::default()
    })
    .await;
    // Every scenario starts on a healthy cluster: all topics with 3 in-sync replicas.
    assert_replicated(&app.kafka).await;
    let mut initial = HashMap::new();
    for sku in SKUS {
        app.set_stock(sku, 100_000).await;
        initial.insert(sku.to_string(), 100_000);
    }
    (app, initial)
}

/// One topic's partitions as (replicas, in-sync replicas).
struct TopicReplicas {
    partitions: Vec<(usize, usize)>,
}

/// The platform's topics (prefixed) as the cluster's metadata lists them.
fn our_topics(kafka: &KafkaConfig) -> Vec<TopicReplicas> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("log_level", "3")
        .create()
        .unwrap();
    let Ok(metadata) = client.fetch_metadata(None, Duration::from_secs(10)) else {
        return Vec::new();
    };
    metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(&kafka.topic_prefix))
        .map(|t| TopicReplicas {
            partitions: t
                .partitions()
                .iter()
                .map(|p| (p.replicas().len(), p.isr().len()))
                .collect(),
        })
        .collect()
}

/// Every topic the platform created has three replicas, all in sync.
async fn assert_replicated(kafka: &KafkaConfig) {
    let want = topics::ALL.len() * 2; // every topic and its .dlq
    let topics = wait::until(
        "every topic of the platform with 3 in-sync replicas",
        Duration::from_secs(120),
        || async {
            let topics = our_topics(kafka);
            let complete = topics.len() == want
                && topics.iter().all(|topic| {
                    topic
                        .partitions
                        .iter()
                        .all(|(replicas, isr)| *replicas == BROKERS && *isr == BROKERS)
                });
            complete.then_some(topics)
        },
    )
    .await;
    assert_eq!(topics.len(), want);
}

/// The broker leading most partitions of the platform's topics.
fn busiest_leader(kafka: &KafkaConfig) -> i32 {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("log_level", "3")
        .create()
        .unwrap();
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for topic in metadata.topics() {
        if topics::ALL.iter().any(|t| kafka.topic(t) == topic.name()) {
            for partition in topic.partitions() {
                *led.entry(partition.leader()).or_default() += 1;
            }
        }
    }
    let (leader, _) = led.into_iter().max_by_key(|(_, n)| *n).expect("leaders");
    leader
}

/// Per key, the messages of each topic appear in the order their outbox rows were written
/// (the first delivery of each; a redelivery after a lost ack may repeat one later).
async fn assert_per_key_order(app: &TestApp) {
    let db = Databases::from(&app.pools);
    let mut expected: HashMap<(String, String), Vec<uuid::Uuid>> = HashMap::new();
    for (_, pool) in db.with_outbox() {
        let rows: Vec<(String, String, uuid::Uuid)> =
            sqlx::query_as("SELECT topic, msg_key, message_id FROM outbox ORDER BY id")
                .fetch_all(pool)
                .await
                .unwrap();
        for (topic, key, id) in rows {
            expected.entry((topic, key)).or_default().push(id);
        }
    }
    let mut by_topic: BTreeMap<String, std::collections::BTreeSet<uuid::Uuid>> = BTreeMap::new();
    for ((topic, _), ids) in &expected {
        by_topic.entry(topic.clone()).or_default().extend(ids);
    }
    for (topic, wanted) in &by_topic {
        let records = read_until(&app.kafka, topic, Duration::from_secs(60), |records| {
            let ids: std::collections::BTreeSet<_> =
                records.iter().map(|r| r.envelope().message_id).collect();
            ids.is_superset(wanted)
        })
        .await;
        let mut seen: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
        for record in &records {
            let key = record.key.clone().expect("keyed record");
            let id = record.envelope().message_id;
            let ids = seen.entry(key).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        for ((t, key), ids) in expected.iter().filter(|((t, _), _)| t == topic) {
            assert_eq!(
                seen.get(key),
                Some(ids),
                "per-key order of {key} on {t}: topic order differs from outbox order"
            );
        }
    }
}

/// Restart stopped brokers and wait until `up` brokers are registered.
async fn start_brokers(cluster: &Cluster, killed: &[i32], up: usize) {
    for node in killed {
        cluster.start_broker(*node);
    }
    if let Err(e) = wait_for_brokers(&cluster.bootstrap, up, Duration::from_secs(120)).await {
        panic!(
            "the restarted brokers {killed:?} did not register: {e:#}\n{}",
            cluster.diagnose()
        );
    }
}

async fn terminal_count(app: &TestApp, ids: &[uuid::Uuid]) -> usize {
    let terminal: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE id = ANY($1) AND status IN ('APPROVED', 'REJECTED')",
    )
    .bind(ids)
    .fetch_one(&app.pools.order)
    .await
    .unwrap();
    terminal as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_of_the_busiest_partitions_killed_loses_duplicates_and_reorders_nothing() {
    let cluster = cluster();
    let _turn = turn().lock().await;
    let (app, initial) = platform_on(cluster).await;
    let load = SteadyLoad::start(&app, &SKUS, RATE);
    tokio::time::sleep(Duration::from_secs(5)).await; // load before the fault
    let leader = busiest_leader(&app.kafka);
    let killed_at = Instant::now();
    cluster.kill_broker(leader);
    eprintln!("killed broker {leader} (leader of the most partitions)");
    tokio::time::sleep(Duration::from_secs(15)).await; // load on two brokers
    let report = load.stop().await;
    assert!(report.refused.is_empty(), "refused: {:?}", report.refused);
    // Sagas complete on the two remaining brokers, before the killed one returns.
    let after: Vec<_> = report.accepted[report.accepted.len() / 2..].to_vec();
    wait::until(
        "sagas started after the kill to complete on two brokers",
        Duration::from_secs(60),
        || async { (terminal_count(&app, &after).await == after.len()).then_some(()) },
    )
    .await;
    eprintln!(
        "{} orders, the later half terminal {:.1}s after the kill",
        report.accepted.len(),
        killed_at.elapsed().as_secs_f64()
    );
    start_brokers(cluster, &[leader], BROKERS).await;
    assert_replicated(&app.kafka).await;
    let checked = invariants::check(&app, &initial, Duration::from_secs(120)).await;
    assert_eq!(checked.orders as usize, report.accepted.len());
    assert_per_key_order(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn below_min_insync_replicas_rows_wait_unpublished_orders_are_accepted_and_all_drains() {
    let cluster = cluster();
    let _turn = turn().lock().await;
    let (app, initial) = platform_on(cluster).await;
    let load = SteadyLoad::start(&app, &SKUS, RATE);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let first = busiest_leader(&app.kafka);
    cluster.kill_broker(first);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = cluster
        .brokers
        .iter()
        .map(|b| b.node_id)
        .find(|n| *n != first)
        .unwrap();
    cluster.kill_broker(second);
    let second_killed = chrono::Utc::now();
    eprintln!("killed brokers {first} and {second}: one left, below min.insync.replicas 2");
    tokio::time::sleep(Duration::from_secs(20)).await;
    // Nothing written after the second kill was acknowledged, so nothing of it is marked
    // published; the orders themselves were accepted and wait in the outbox.
    let grace = second_killed + chrono::Duration::seconds(1);
    let mut waiting = 0i64;
    let mut published_without_ack = 0i64;
    for (name, pool) in Databases::from(&app.pools).with_outbox() {
        let (unpublished, published): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE published_at IS NULL),
                    count(*) FILTER (WHERE published_at IS NOT NULL)
               FROM outbox WHERE created_at > $1",
        )
        .bind(grace)
        .fetch_one(pool)
        .await
        .unwrap();
        eprintln!("{name}: {unpublished} rows waiting, {published} published since the outage");
        waiting += unpublished;
        published_without_ack += published;
    }
    assert_eq!(
        published_without_ack, 0,
        "rows marked published without an ack"
    );
    assert!(
        waiting > 0,
        "orders placed during the outage wait in the outbox"
    );
    // One broker back: two in sync again, everything drains.
    start_brokers(cluster, &[second], BROKERS - 1).await;
    let report = load.stop().await;
    assert!(report.refused.is_empty(), "refused: {:?}", report.refused);
    let checked = invariants::check(&app, &initial, Duration::from_secs(180)).await;
    assert_eq!(checked.orders as usize, report.accepted.len());
    start_brokers(cluster, &[first], BROKERS).await;
    assert_replicated(&app.kafka).await;
    assert_per_key_order(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_cut_from_the_brokers_gives_its_partitions_away_and_nothing_is_applied_twice() {
    let cluster = cluster();
    let _turn = turn().lock().await;
    let (app, initial) = platform_on(cluster).await;
    // A second inventory-service member, reaching the brokers only through the proxies.
    let mut cut_kafka = app.kafka.clone();
    cut_kafka.brokers = cluster.proxied_bootstrap.clone();
    cut_kafka.instance_id = Some("cut-member".into());
    let stop_cut_member = CancellationToken::new();
    let cut_member = tokio::spawn(inventory_service::run_consumer_with(
        app.pools.inventory.clone(),
        cut_kafka,
        inventory_service::InventoryFaults::default(),
        stop_cut_member.clone(),
    ));
    let group = app.kafka.group(inventory_service::NAME);
    let members = |cluster: &'static Cluster, group: String| async move {
        group_members(cluster, &group).await
    };
    wait::until(
        "both inventory members to hold partitions",
        Duration::from_secs(60),
        || async {
            let m = members(cluster, group.clone()).await;
            eprintln!("inventory-service members: {m:?}");
            (m.len() == 2 && m.values().all(|p| *p > 0)).then_some(())
        },
    )
    .await;
    let load = SteadyLoad::start(&app, &SKUS, RATE);
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.cut_proxied_clients();
    eprintln!("cut the second inventory member from every broker");
    let moved = wait::until(
        "the cut member's partitions to move to the other member",
        Duration::from_secs(60),
        || async {
            let m = members(cluster, group.clone()).await;
            (m.len() == 1 && m.values().all(|p| *p == 4)).then_some(m)
        },
    )
    .await;
    eprintln!("members after the cut: {moved:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = load.stop().await;
    assert!(report.refused.is_empty(), "refused: {:?}", report.refused);
    let checked = invariants::check(&app, &initial, Duration::from_secs(120)).await;
    assert_eq!(checked.orders as usize, report.accepted.len());
    cluster.heal_proxied_clients();
    stop_cut_member.cancel();
    cut_member.await.unwrap().unwrap();
    app.stop().await;
}

/// Members of a consumer group as the live brokers see them.
async fn group_members(cluster: &Cluster, group: &str) -> BTreeMap<String, usize> {
    for broker in &cluster.brokers {
        if let Some(members) = groups::members(&broker.container, "localhost:19092", group).await {
            return members;
        }
    }
    BTreeMap::new()
}
