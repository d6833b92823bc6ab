//! The dead-letter topics, read and redriven: what a consumer could not apply is parked in
//! `<topic>.dlq` ([`crate::consumer`] writes it, with the reason in `dlq_*` headers);
//! [`read`] lists it, [`redrive`] republishes it to its source topic.
//!
//! A redriven message keeps its bytes, its envelope headers and its message id, without the
//! `dlq_*` headers, so each consumer's inbox applies it at most once: redriving twice, or
//! redriving a message some consumers had applied, is harmless. Kafka cannot delete from the
//! dead-letter topic; a redriven message stays there as history.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sagaflow_runtime::{KafkaConfig, kafka};
use sagaflow_schemas::{header_names, topics};

/// One parked message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Option<Vec<u8>>,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn message_id(&self) -> Option<String> {
        self.header(header_names::ID)
    }

    pub fn reason(&self) -> Option<String> {
        self.header(header_names::DLQ_REASON)
    }
}

/// The logical source topic of `topic`, whether given as the source or as its DLQ.
pub fn source_topic(topic: &str) -> &str {
    topic.strip_suffix(topics::DLQ_SUFFIX).unwrap_or(topic)
}

/// Everything currently parked for `topic` (read up to the high watermarks, no group).
pub async fn read(kafka_config: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let dlq = kafka_config.topic(&topics::dlq(source_topic(topic)));
    let client = || {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &kafka_config.brokers)
            .set("broker.address.family", "v4")
            .set("group.id", kafka_config.group("sagaflow-dlq"))
            .set("enable.auto.commit", "false")
            .set("log_level", "3");
        config
    };
    let probe: BaseConsumer = client().create()?;
    let ends: HashMap<i32, (i64, i64)> = {
        let dlq = dlq.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let timeout = Duration::from_secs(10);
            let metadata = probe.fetch_metadata(Some(&dlq), timeout)?;
            let mut ends = HashMap::new();
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let marks = kafka::watermarks(&probe, &dlq, partition.id(), timeout)?;
                ends.insert(partition.id(), marks);
            }
            Ok(ends)
        })
        .await??
    };
    let mut pending: HashMap<i32, i64> = ends
        .iter()
        .filter(|(_, (low, high))| high > low)
        .map(|(p, (_, high))| (*p, *high))
        .collect();
    let mut out = Vec::new();
    if pending.is_empty() {
        return Ok(out);
    }
    let consumer: StreamConsumer = client().create()?;
    let mut assignment = TopicPartitionList::new();
    for (partition, (low, _)) in &ends {
        assignment.add_partition_offset(&dlq, *partition, Offset::Offset(*low))?;
    }
    consumer.assign(&assignment)?;
    while !pending.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| anyhow::anyhow!("timed out reading {dlq}"))??;
        out.push(DeadLetter {
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            headers: kafka::header_pairs(message.headers()),
            payload: message.payload().map(<[u8]>::to_vec),
        });
        if pending
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            pending.remove(&message.partition());
        }
    }
    out.sort_by_key(|d| (d.timestamp_ms, d.partition, d.offset));
    Ok(out)
}

/// Republish the parked messages of `topic` whose id is in `ids` (all when empty) to their
/// source topics; returns those sent, after the broker acknowledged each.
pub async fn redrive(
    kafka_config: &KafkaConfig,
    topic: &str,
    ids: &[String],
) -> anyhow::Result<Vec<DeadLetter>> {
    let parked = read(kafka_config, topic).await?;
    let chosen: Vec<DeadLetter> = parked
        .into_iter()
        .filter(|d| ids.is_empty() || d.message_id().is_some_and(|id| ids.contains(&id)))
        .collect();
    if let Some(missing) = ids
        .iter()
        .find(|id| !chosen.iter().any(|d| d.message_id().as_ref() == Some(id)))
    {
        anyhow::bail!("no parked message with id {missing} in {topic}.dlq");
    }
    let producer = kafka::producer(kafka_config)?;
    for letter in &chosen {
        let source = letter
            .header(header_names::DLQ_SOURCE_TOPIC)
            .unwrap_or_else(|| source_topic(topic).to_string());
        let target = kafka_config.topic(&source);
        let headers = kafka::to_headers(
            letter
                .headers
                .iter()
                .filter(|(k, _)| !k.starts_with("dlq_"))
                .filter_map(|(k, v)| Some((k.as_str(), std::str::from_utf8(v).ok()?))),
        );
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&target).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        if let Some(payload) = &letter.payload {
            record = record.payload(payload);
        }
        producer
            .send(record, Duration::from_secs(15))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("redriving to {target}: {e}"))?;
    }
    Ok(chosen)
}
