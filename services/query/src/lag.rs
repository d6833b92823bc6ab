//! Consumer lag, sampled every second:
//! - `consumer_group_lag{group, topic}`: messages past each group's committed offsets;
//! - `projection_lag_messages{projection}`: messages past what the live tables applied (from
//!   `projection_positions`, exact: written in the same transaction as the effect), also
//!   served in every read response as `freshness`.
//!
//! Watermarks are stored in `topic_watermarks` so the HTTP handlers never call Kafka.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sagaflow_runtime::KafkaConfig;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::projection::Projection;

/// A consumer group and the logical topics it reads.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub topics: Vec<&'static str>,
}

impl Group {
    pub fn new(name: &str, topics: &[&'static str]) -> Self {
        Group {
            name: name.to_string(),
            topics: topics.to_vec(),
        }
    }
}

/// One sample: (topic, partition, low, high, query-service's committed offset) and per
/// group (name, topic, lag).
struct Sample {
    watermarks: Vec<(String, i32, i64, i64, Option<i64>)>,
    group_lag: Vec<(String, String, i64)>,
}

/// Sample every `interval` until `shutdown`. Failures (broker away) skip a sample.
pub async fn run(
    pool: PgPool,
    kafka: KafkaConfig,
    groups: Vec<Group>,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut clients: Option<Arc<Clients>> = None;
    loop {
        if clients.is_none() {
            let (kafka, groups) = (kafka.clone(), groups.clone());
            match tokio::task::spawn_blocking(move || Clients::new(&kafka, groups)).await? {
                Ok(made) => clients = Some(Arc::new(made)),
                Err(e) => debug!(error = %e, "lag clients not created"),
            }
        }
        if let Some(clients) = &clients {
            let (kafka_config, clients) = (kafka.clone(), clients.clone());
            match tokio::task::spawn_blocking(move || sample(&kafka_config, &clients)).await? {
                Ok(sample) => {
                    if let Err(e) = record(&pool, &sample).await {
                        debug!(error = %e, "recording lag failed");
                    }
                }
                Err(e) => debug!(error = %e, "lag sample failed"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The clients the samples ask through, made once and kept: a librdkafka client is its own
/// threads and broker connections, and making one per group and a probe for every sample was
/// seven clients created and destroyed every second on the query service's host.
struct Clients {
    /// Reads watermarks and metadata (its group is never joined).
    probe: BaseConsumer,
    /// Each group with a client in that group, to read its committed offsets.
    groups: Vec<(Group, BaseConsumer)>,
}

impl Clients {
    fn new(kafka: &KafkaConfig, groups: Vec<Group>) -> Result<Self, rdkafka::error::KafkaError> {
        let client = |group: &str| sagaflow_runtime::kafka::offsets_reader(kafka, group);
        let probe = client("sagaflow-lag")?;
        let mut with_clients = Vec::with_capacity(groups.len());
        for group in groups {
            let consumer = client(&group.name)?;
            with_clients.push((group, consumer));
        }
        Ok(Clients {
            probe,
            groups: with_clients,
        })
    }

    /// Serve the events the clients queued since the last sample (errors such as a lost
    /// connection; they never join a group, so there are no messages): a kept client that is
    /// never polled would hold them for ever.
    fn serve_events(&self) {
        for client in std::iter::once(&self.probe).chain(self.groups.iter().map(|(_, c)| c)) {
            while let Some(event) = client.poll(Duration::ZERO) {
                if let Err(e) = event {
                    debug!(error = %e, "lag client event");
                }
            }
        }
    }
}

fn sample(kafka: &KafkaConfig, clients: &Clients) -> anyhow::Result<Sample> {
    let timeout = Duration::from_secs(5);
    clients.serve_events();
    let probe = &clients.probe;
    let mut topics: Vec<&'static str> = Projection::ALL
        .iter()
        .flat_map(|p| p.topics().iter().copied())
        .chain(
            clients
                .groups
                .iter()
                .flat_map(|(g, _)| g.topics.iter().copied()),
        )
        .collect();
    topics.sort_unstable();
    topics.dedup();
    let mut watermarks = Vec::new();
    for logical in &topics {
        let topic = kafka.topic(logical);
        let metadata = probe.fetch_metadata(Some(&topic), timeout)?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) =
                sagaflow_runtime::kafka::watermarks(probe, &topic, partition.id(), timeout)?;
            watermarks.push((logical.to_string(), partition.id(), low, high, None));
        }
    }
    let mut group_lag = Vec::new();
    for (group, consumer) in &clients.groups {
        for logical in &group.topics {
            let mut query = TopicPartitionList::new();
            let parts: Vec<_> = watermarks.iter().filter(|w| w.0 == *logical).collect();
            for (_, partition, _, _, _) in &parts {
                query.add_partition(&kafka.topic(logical), *partition);
            }
            let committed = consumer.committed_offsets(query, timeout)?;
            let committed_at = |partition: i32| match committed
                .find_partition(&kafka.topic(logical), partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            let lag: i64 = parts
                .iter()
                .map(|(_, partition, low, high, _)| {
                    (high - committed_at(*partition).unwrap_or(*low).max(*low)).max(0)
                })
                .sum();
            group_lag.push((group.name.clone(), logical.to_string(), lag));
            if group.name == crate::NAME {
                for w in watermarks.iter_mut().filter(|w| w.0 == *logical) {
                    w.4 = committed_at(w.1);
                }
            }
        }
    }
    Ok(Sample {
        watermarks,
        group_lag,
    })
}

async fn record(pool: &PgPool, sample: &Sample) -> Result<(), sqlx::Error> {
    for (group, topic, lag) in &sample.group_lag {
        metrics::gauge!("consumer_group_lag", "group" => group.clone(), "topic" => topic.clone())
            .set(*lag as f64);
    }
    let mut tx = pool.begin().await?;
    for (topic, partition, low, high, committed) in &sample.watermarks {
        sqlx::query(
            "INSERT INTO topic_watermarks (topic, kafka_partition, low_watermark, high_watermark,
                                           committed_offset, sampled_at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (topic, kafka_partition) DO UPDATE SET low_watermark = EXCLUDED.low_watermark,
                high_watermark = EXCLUDED.high_watermark, committed_offset = EXCLUDED.committed_offset,
                sampled_at = EXCLUDED.sampled_at",
        )
        .bind(topic)
        .bind(partition)
        .bind(low)
        .bind(high)
        .bind(committed)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    for projection in Projection::ALL {
        let freshness = crate::http::freshness(pool, projection).await?;
        if let Some(lag) = freshness.lag_messages {
            metrics::gauge!("projection_lag_messages", "projection" => projection.name())
                .set(lag as f64);
        }
    }
    Ok(())
}
