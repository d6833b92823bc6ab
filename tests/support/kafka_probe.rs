//! Reading topics from the test's side: every partition from the beginning, no group.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sagaflow_runtime::{KafkaConfig, kafka};
use sagaflow_schemas::Envelope;

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Option<Vec<u8>>,
}

impl Record {
    pub fn envelope(&self) -> Envelope {
        Envelope::from_headers(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .expect("record has a valid envelope")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Read `logical_topic` from the beginning until `done(records)` holds, or panic after
/// `timeout`.
pub async fn read_until(
    config: &KafkaConfig,
    logical_topic: &str,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let topic = config.topic(logical_topic);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("broker.address.family", "v4")
        .set("group.id", "sagaflow-tests-probe")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .expect("probe consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..config.partitions {
        assignment
            .add_partition_offset(&topic, partition, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign partitions");
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while !done(&records) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "timed out after {timeout:?} reading {topic}: {} records so far",
            records.len()
        );
        match tokio::time::timeout(remaining.min(Duration::from_millis(500)), consumer.recv()).await
        {
            Ok(Ok(message)) => records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                headers: kafka::header_pairs(message.headers()),
                payload: message.payload().map(<[u8]>::to_vec),
            }),
            Ok(Err(e)) => eprintln!("probe: {e}"),
            Err(_) => {}
        }
    }
    records
}

/// Everything currently on `logical_topic`: every partition read up to the high watermark it
/// had when this was called.
///
/// Done by offsets, not by counting records: a count of `high - low` is reached early when a
/// broker hands a record over twice (the embedded broker did: the saga redelivery test then
/// missed one record and waited for ever on its duplicate), and never when offsets are not
/// all records (transaction markers). A record delivered twice is kept once.
pub async fn read_all(config: &KafkaConfig, logical_topic: &str) -> Vec<Record> {
    let topic = config.topic(logical_topic);
    let probe: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("broker.address.family", "v4")
        .set("group.id", "sagaflow-tests-probe")
        .set("log_level", "3")
        .create()
        .expect("probe client");
    let high_watermarks = {
        let topic = topic.clone();
        let partitions = config.partitions;
        tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    kafka::watermarks(&probe, &topic, p, Duration::from_secs(10))
                        .expect("watermarks")
                        .1
                })
                .collect::<Vec<i64>>()
        })
        .await
        .unwrap()
    };
    let records = read_until(config, logical_topic, Duration::from_secs(60), |records| {
        high_watermarks.iter().enumerate().all(|(partition, high)| {
            *high == 0
                || records
                    .iter()
                    .any(|r| r.partition == partition as i32 && r.offset >= high - 1)
        })
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    let mut unique = Vec::with_capacity(records.len());
    for record in records {
        if seen.insert((record.partition, record.offset)) {
            if record.offset < high_watermarks[record.partition as usize] {
                unique.push(record);
            }
        } else {
            eprintln!(
                "probe: {topic} partition {} offset {} delivered twice by the broker",
                record.partition, record.offset
            );
        }
    }
    unique
}

/// Per partition of each topic: its watermarks and each group's committed offset — where a
/// consumer group stands, for a test that waited in vain on one.
pub async fn positions(config: &KafkaConfig, logical_topics: &[&str], groups: &[&str]) -> String {
    let config = config.clone();
    let topics: Vec<String> = logical_topics.iter().map(|t| config.topic(t)).collect();
    let groups: Vec<String> = groups.iter().map(|g| config.group(g)).collect();
    tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        let probe: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("log_level", "3")
            .create()
            .expect("probe client");
        for topic in &topics {
            for partition in 0..config.partitions {
                let watermarks =
                    kafka::watermarks(&probe, topic, partition, Duration::from_secs(10));
                out.push_str(&format!("{topic}[{partition}] watermarks {watermarks:?}"));
                for group in &groups {
                    let member: rdkafka::consumer::BaseConsumer = ClientConfig::new()
                        .set("bootstrap.servers", &config.brokers)
                        .set("group.id", group)
                        .set("log_level", "3")
                        .create()
                        .expect("group client");
                    let mut wanted = TopicPartitionList::new();
                    wanted.add_partition(topic, partition);
                    let committed = member
                        .committed_offsets(wanted, Duration::from_secs(10))
                        .ok()
                        .and_then(|list| list.elements().first().map(|e| e.offset()));
                    out.push_str(&format!(", {group} committed {committed:?}"));
                }
                out.push('\n');
            }
        }
        out
    })
    .await
    .unwrap()
}
