//! Kafka clients configured the way the delivery guarantees need them.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use tracing::{debug, error, info, warn};

use crate::KafkaConfig;
use crate::topic_policy::{self, TopicPolicy};
use sagaflow_schemas::topics;

fn base(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("broker.address.family", "v4")
        .set("log_level", "4");
    if let Some(debug) = config.debug.as_deref().filter(|d| !d.is_empty()) {
        client.set("debug", debug).set("log_level", "7");
    }
    client
}

/// The idempotent producer: acks=all, retries without duplicates or reordering per partition.
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    base(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // No wait for a batch to fill: a relay pass hands librdkafka all its rows at once, and
        // under load librdkafka batches whatever queues while requests are in flight. At 1 ms
        // every hop of a saga paid ~2.5 ms more (saga p50 at 100/s 51-60 -> 33-35 ms; `bench
        // relay` commit->ack p50 3.6 -> 2.2 ms, drain unchanged: docs/benchmarks.md).
        .set("linger.ms", "0")
        .set("compression.type", &config.compression)
        // A send that cannot be acknowledged within this time fails and its row stays
        // unpublished; the relay retries it, so this only bounds how long a batch waits.
        .set("message.timeout.ms", "15000")
        // Every broker the metadata names is connected at once, rather than on the first send
        // to one of its partitions: see `ask_for_producer_id_now`.
        .set("enable.sparse.connections", "false")
        .create()
        .inspect(ask_for_producer_id_now)
}

/// Each request of [`ask_for_producer_id_now`]'s thread waits at most this long.
const PRODUCER_ID_METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Has a new idempotent producer ask for its producer id as soon as a broker is up.
///
/// Why: librdkafka (2.12) asks for the id on its bootstrap connection, then closes that
/// connection as soon as the first metadata answer names the cluster's brokers. The request,
/// finding no broker up, waits for the producer-id state machine's 500 ms retry timer — once
/// or twice — and every send waits for the id. So a new producer's first send took 0.5–1 s
/// (measured: 501–1 002 ms on the embedded broker, 105–506 ms on Apache Kafka; every relay's
/// first row after a start, every hop of the first saga after `sagaflow dev` starts). A
/// metadata answer from a broker that is up runs the state machine at once. The first request
/// still goes to the bootstrap connection, so a short-lived thread asks twice; it holds a
/// handle on the producer until its requests are answered or time out. Measured after:
/// first send 2–9 ms.
fn ask_for_producer_id_now(producer: &FutureProducer) {
    let producer = producer.clone();
    let asking = std::thread::Builder::new()
        .name("producer-id".into())
        .spawn(move || {
            for _ in 0..2 {
                if let Err(error) = producer
                    .client()
                    .fetch_metadata(None, PRODUCER_ID_METADATA_TIMEOUT)
                {
                    // The producer's own retry timer still gets the id once a broker answers.
                    debug!(%error, "early metadata for the producer id failed");
                    return;
                }
            }
        });
    if let Err(error) = asking {
        debug!(%error, "could not start the producer-id thread");
    }
}

/// A group member's context: logs every assignment and revocation, keeps the
/// `consumer_assigned_partitions{group}` gauge, and watches the member's group state (from
/// librdkafka's statistics) so a member that cannot get back into its group is noticed.
pub struct GroupContext {
    group: String,
    /// (last statistics seen, last seen in its group — state `up`, join state `steady`);
    /// both start at creation.
    seen: std::sync::Mutex<(Instant, Instant)>,
    /// Set when librdkafka gave up fetching the committed offsets of an assignment (see
    /// [`GroupContext::offsets_not_fetched`]).
    offsets_not_fetched: std::sync::atomic::AtomicBool,
}

impl GroupContext {
    fn new(group: String) -> Self {
        let now = Instant::now();
        GroupContext {
            group,
            seen: std::sync::Mutex::new((now, now)),
            offsets_not_fetched: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether librdkafka failed to fetch the committed offsets of the member's assignment
    /// since the last call. When that OffsetFetch fails with an error librdkafka does not
    /// retry (e.g. the coordinator moved while a broker restarted), the assigned partitions are
    /// never started: the member stays in its group, heartbeats, and consumes nothing from
    /// them for good. Only a new member (a new assignment) gets them going again.
    pub fn offsets_not_fetched(&self) -> bool {
        self.offsets_not_fetched
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// How long the member has been out of its group, by its latest statistics. Zero when
    /// the statistics are stale: they are served only while the consumer is polled, and a
    /// member busy with one message for a while is not out of its group.
    pub fn out_of_group_for(&self) -> Duration {
        let Ok(seen) = self.seen.lock() else {
            return Duration::ZERO;
        };
        let (stats, in_group) = *seen;
        if stats.elapsed() > Duration::from_secs(5) {
            return Duration::ZERO;
        }
        stats.saturating_duration_since(in_group)
    }
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if reason.starts_with(OFFSETS_NOT_FETCHED) {
            self.offsets_not_fetched
                .store(true, std::sync::atomic::Ordering::Release);
        }
        // As librdkafka's default: every client error is logged.
        error!(messaging.consumer.group.name = %self.group, "librdkafka: {error}: {reason}");
    }

    fn stats_raw(&self, statistics: &[u8]) {
        // Only the group state is needed; parse just that (the full typed statistics expect
        // fields some brokers' clients leave out).
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let in_group = stats["cgrp"]["state"] == "up" && stats["cgrp"]["join_state"] == "steady";
        // 1 while this member is in its group, for the out-of-group alert (a rebalance dips
        // it for seconds; the alert waits longer).
        metrics::gauge!("consumer_group_joined", "group" => self.group.clone()).set(if in_group {
            1.0
        } else {
            0.0
        });
        if let Ok(mut seen) = self.seen.lock() {
            let now = Instant::now();
            seen.0 = now;
            if in_group {
                seen.1 = now;
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    // No call into the client from here (e.g. `consumer.assignment()`): librdkafka runs this
    // callback on the thread that would have to answer it, and during a close that deadlocked
    // the member for good (seen after a frozen broker). With the eager assignor an assignment
    // is the member's whole set, and a revocation leaves it nothing.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let gauge = metrics::gauge!("consumer_assigned_partitions", "group" => self.group.clone());
        match rebalance {
            Rebalance::Assign(partitions) => {
                gauge.set(partitions.count() as f64);
                info!(messaging.consumer.group.name = %self.group, partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                gauge.set(0.0);
                info!(messaging.consumer.group.name = %self.group, partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Error(e) => {
                warn!(messaging.consumer.group.name = %self.group, error = %e, "rebalance failed");
            }
        }
    }
}

/// How librdkafka's consumer error starts when an assignment's committed offsets could not be
/// fetched (`rd_kafka_cgrp_offsets_fetch_response`).
const OFFSETS_NOT_FETCHED: &str = "Failed to fetch committed offsets";

/// A consumer group member (see [`consumer`]).
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// An at-least-once consumer: offsets are auto-committed, but only those explicitly stored
/// after the database transaction of the message committed (`enable.auto.offset.store=false`).
pub fn consumer(
    config: &KafkaConfig,
    group: &str,
) -> Result<GroupConsumer, rdkafka::error::KafkaError> {
    let group = config.group(group);
    let mut client = base(config);
    if let Some(instance) = &config.instance_id {
        // Static membership; the client id names the member in the brokers' group listings.
        client
            .set("group.instance.id", instance)
            .set("client.id", format!("{group}@{instance}"));
    }
    client
        .set("group.id", &group)
        // The eager assignor (librdkafka's default), not cooperative-sticky: with it, closing
        // a member during a rebalance (after a frozen broker) hung in librdkafka's close for
        // good and once aborted the process (librdkafka#4527 and #4312 are of that family).
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        // A member that stops polling (a stuck handler) gives its partitions back.
        .set("max.poll.interval.ms", "60000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", "100")
        .set("topic.metadata.refresh.interval.ms", "5000")
        // Feeds GroupContext's group-state watch.
        .set("statistics.interval.ms", "1000")
        .create_with_context(GroupContext::new(group))
}

/// A client in `group` (logical name) that only reads: committed offsets, watermarks and
/// metadata. It never joins the group nor commits, so it can read a group's offsets beside
/// that group's members (lag samplers, the console). Errors only in its log.
pub fn offsets_reader(config: &KafkaConfig, group: &str) -> KafkaResult<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("broker.address.family", "v4")
        .set("group.id", config.group(group))
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
}

/// An admin client.
pub fn admin(
    config: &KafkaConfig,
) -> Result<AdminClient<DefaultClientContext>, rdkafka::error::KafkaError> {
    base(config).create()
}

/// The number of brokers in the cluster, from a metadata request.
pub async fn broker_count(config: &KafkaConfig) -> anyhow::Result<usize> {
    let admin = admin(config)?;
    let brokers = config.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("metadata from {brokers}: {e}"))?;
        Ok(metadata.brokers().len())
    })
    .await?
}

/// The replication settings for this cluster ([`crate::topic_policy`]); a single-copy setup
/// is logged loudly.
pub async fn topic_policy(config: &KafkaConfig) -> anyhow::Result<TopicPolicy> {
    let brokers = broker_count(config).await?;
    let policy = topic_policy::decide(
        config.replication_factor,
        config.min_insync_replicas,
        brokers,
        config.allow_unreplicated,
    )?;
    // Once per process: `sagaflow dev` runs every component in one process and each asks,
    // and six copies of one warning read like six problems.
    static SINGLE_COPY_WARNED: std::sync::Once = std::sync::Once::new();
    if policy.single_copy() {
        SINGLE_COPY_WARNED.call_once(|| {
            warn!(
                brokers,
                "topics are created with replication factor 1: one broker holds the only copy of every message; production needs 3 brokers (replication factor 3, min.insync.replicas 2)"
            )
        });
    }
    Ok(policy)
}

/// Create topics (prefixed) that do not exist yet, with the cluster's [`TopicPolicy`].
/// Brokers may stall producers on topics that were never created, so every component calls
/// this at start-up for the topics it touches. Dead-letter topics (`*.dlq`) keep their
/// messages for ever: a dead letter is removed by a decision, never by age. Existing topics
/// are left as they are.
pub async fn ensure_topics(config: &KafkaConfig, logical_topics: &[&str]) -> anyhow::Result<()> {
    let policy = topic_policy(config).await?;
    let admin = admin(config)?;
    let names: Vec<String> = logical_topics.iter().map(|t| config.topic(t)).collect();
    let min_insync = policy.min_insync_replicas.to_string();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(
                name,
                config.partitions,
                TopicReplication::Fixed(policy.replication_factor),
            )
            .set("min.insync.replicas", &min_insync)
            .set("unclean.leader.election.enable", "false");
            if topics::is_dlq(name) {
                topic.set("retention.ms", "-1").set("retention.bytes", "-1")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Create every domain topic and its dead-letter topic (prefixed) that does not exist yet.
pub async fn ensure_all_topics(config: &KafkaConfig) -> anyhow::Result<()> {
    let mut all: Vec<String> = topics::ALL.iter().map(|t| t.to_string()).collect();
    all.extend(topics::ALL.iter().map(|t| topics::dlq(t)));
    ensure_topics(config, &all.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// A partition's (low, high) watermarks, asked again while the client's metadata is merely
/// stale, until `timeout`. Right after a topic is created, or after its leader moved,
/// librdkafka can send the ListOffsets request to a broker that does not lead the partition
/// (yet) and get NOT_LEADER_FOR_PARTITION — seen on Apache Kafka reading a dead-letter topic
/// created a moment before. Blocking: call it off the async runtime.
pub fn watermarks<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> KafkaResult<(i64, i64)> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        match consumer.fetch_watermarks(topic, partition, left) {
            Err(e) if is_stale_metadata(&e) && Instant::now() + pause < deadline => {
                warn!(topic, partition, error = %e, "watermarks not available yet; asking again");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            answer => return answer,
        }
    }
}

/// Errors that mean the client asked the wrong broker or asked too early, not that the
/// request is wrong.
fn is_stale_metadata(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::FencedLeaderEpoch
                | RDKafkaErrorCode::UnknownLeaderEpoch
                | RDKafkaErrorCode::BrokerNotAvailable
        )
    )
}

/// Kafka headers from (name, value) pairs.
pub fn to_headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> OwnedHeaders {
    pairs
        .into_iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        })
}

/// (name, value) pairs of a message's headers; headers without value are skipped.
pub fn header_pairs<H: Headers>(headers: Option<&H>) -> Vec<(String, Vec<u8>)> {
    headers
        .map(|h| {
            h.iter()
                .filter_map(|header| header.value.map(|v| (header.key.to_string(), v.to_vec())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::BaseProducer;

    /// Every producer has a polling thread calling `poll(100 ms)` in a loop. rdkafka 0.39
    /// truncated the time left to whole milliseconds, so each call ended in a busy spin of up
    /// to a millisecond (`rd_kafka_queue_poll(.., 0)` until the deadline passed): about 1 % of
    /// a core per idle producer. The vendored patch (vendor/rdkafka, `Timeout::as_millis`)
    /// rounds up. Polls that find nothing must wait blocked, costing next to no CPU.
    #[test]
    fn an_idle_producer_waits_for_events_without_spinning() {
        let config = KafkaConfig::new("127.0.0.1:9", "");
        let producer: BaseProducer = base(&config)
            .set("log_level", "0")
            .create()
            .expect("a producer needs no broker to be created");
        let polls = 40;
        let started = Instant::now();
        let cpu = cpu_time::ThreadTime::now();
        for _ in 0..polls {
            producer.poll(Duration::from_millis(25));
        }
        let spent = cpu.elapsed();
        assert!(
            started.elapsed() >= Duration::from_millis(25 * polls),
            "each poll waits its whole timeout"
        );
        // Spinning cost 36 ms here (0.9 ms per poll) before the patch; waiting costs about
        // 1.6 ms in all (the connection-refused error events it handles), even on a busy host.
        assert!(
            spent < Duration::from_millis(10),
            "{polls} polls of an idle producer used {spent:?} of CPU"
        );
    }
}
