//! Configuration shared by every component. Binaries read it (clap, from flags or the
//! environment) and pass it in; libraries never read the environment.

use clap::Args;

/// How to reach Kafka, how this deployment names its topics, and how its consumers retry and
/// remember what they applied.
#[derive(Debug, Clone, Args)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Prefix for every topic and consumer group (isolates tenants and tests on one cluster).
    #[arg(
        long = "topic-prefix",
        env = "SAGAFLOW_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,
    /// Partitions of each topic created at start-up.
    #[arg(
        long = "topic-partitions",
        visible_alias = "partitions",
        env = "SAGAFLOW_TOPIC_PARTITIONS",
        default_value_t = 4
    )]
    pub partitions: i32,
    /// Replication factor of topics created at start-up. Default: 3, or the cluster's broker
    /// count when it has fewer (a single development broker gets 1, with a warning).
    #[arg(long = "replication-factor", env = "SAGAFLOW_TOPIC_REPLICATION_FACTOR")]
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas` of topics created at start-up. Default: replication factor - 1
    /// (2 with the production factor of 3), at least 1.
    #[arg(
        long = "min-insync-replicas",
        env = "SAGAFLOW_TOPIC_MIN_INSYNC_REPLICAS"
    )]
    pub min_insync_replicas: Option<i32>,
    /// Allow a replication factor of 1 (or a min.insync.replicas of 1) on a cluster of 3 or
    /// more brokers, which is otherwise refused: one disk loss would lose acknowledged messages.
    #[arg(
        long = "allow-unreplicated-topics",
        env = "SAGAFLOW_TOPIC_ALLOW_UNREPLICATED"
    )]
    pub allow_unreplicated: bool,
    /// This process's stable identity in its consumer groups (`group.instance.id`, static
    /// membership): a restarted member with the same id takes its partitions back at once,
    /// without a rebalance and without waiting out the dead member's session. Unique per
    /// replica (e.g. the pod or container name); unset, membership is dynamic.
    #[arg(long = "instance-id", env = "SAGAFLOW_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// librdkafka debug contexts for every client (e.g. `consumer,cgrp,fetch`), logged at
    /// debug level: for diagnosing a stuck partition, not for normal operation.
    #[arg(long = "kafka-debug", env = "SAGAFLOW_KAFKA_DEBUG")]
    pub debug: Option<String>,
    /// Delivery attempts of a message whose handler fails before it is dead-lettered (an
    /// unreachable database does not count as an attempt).
    #[arg(
        long = "consumer-max-attempts",
        env = "SAGAFLOW_CONSUMER_MAX_ATTEMPTS",
        default_value_t = 5
    )]
    pub consumer_max_attempts: u32,
    /// Inbox rows (the ids of applied messages) are deleted after this many seconds. A
    /// redelivery older than this would be applied again: keep it far above any redelivery
    /// window.
    #[arg(
        long = "inbox-retention-secs",
        env = "SAGAFLOW_INBOX_RETENTION_SECS",
        default_value_t = 7 * 24 * 3600
    )]
    pub inbox_retention_secs: u64,
    /// At most this many messages of one partition are applied in one transaction (those
    /// already queued; a consumer never waits to fill a batch). `1` applies each message in a
    /// transaction of its own.
    #[arg(
        long = "consumer-max-batch",
        env = "SAGAFLOW_CONSUMER_MAX_BATCH",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    pub consumer_max_batch: u32,
    /// `compression.type` of the producers: lz4 saves network and broker disk between hosts;
    /// on loopback (`sagaflow dev`, `sagaflow bench` with the embedded broker) it is only CPU,
    /// and those set `none`.
    #[arg(
        long = "kafka-compression",
        env = "SAGAFLOW_KAFKA_COMPRESSION",
        default_value = "lz4",
        value_parser = ["none", "gzip", "snappy", "lz4", "zstd"]
    )]
    pub compression: String,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            partitions: 4,
            replication_factor: None,
            min_insync_replicas: None,
            allow_unreplicated: false,
            instance_id: None,
            debug: None,
            consumer_max_attempts: 5,
            inbox_retention_secs: 7 * 24 * 3600,
            consumer_max_batch: 64,
            compression: "lz4".into(),
        }
    }

    /// No compression when every bootstrap broker is on this host: there it saves no network,
    /// only costs CPU on both sides (the tools that run the platform in one process set this).
    pub fn without_compression_on_loopback(mut self) -> Self {
        let local = |broker: &str| {
            let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        };
        if self.brokers.split(',').map(str::trim).all(local) {
            self.compression = "none".into();
        }
        self
    }

    /// The deployment's name of a logical topic.
    pub fn topic(&self, logical: &str) -> String {
        format!("{}{}", self.topic_prefix, logical)
    }

    /// The logical topic of a deployment topic name.
    pub fn logical<'a>(&self, topic: &'a str) -> &'a str {
        topic
            .strip_prefix(self.topic_prefix.as_str())
            .unwrap_or(topic)
    }

    /// The deployment's name of a consumer group.
    pub fn group(&self, logical: &str) -> String {
        format!("{}{}", self.topic_prefix, logical)
    }
}

#[cfg(test)]
mod tests {
    use super::KafkaConfig;

    fn compression(brokers: &str) -> String {
        KafkaConfig::new(brokers, "")
            .without_compression_on_loopback()
            .compression
    }

    #[test]
    fn compression_is_off_only_when_every_broker_is_on_this_host() {
        assert_eq!(compression("127.0.0.1:9092"), "none");
        assert_eq!(compression("localhost:9092, [::1]:9093"), "none");
        assert_eq!(compression("127.0.0.1:9092,kafka-1:9092"), "lz4");
        assert_eq!(compression("10.0.0.7:9092"), "lz4");
        assert_eq!(KafkaConfig::new("127.0.0.1:9092", "").compression, "lz4");
    }
}
