//! Configuration shared by every component, read from the environment.

use clap::Args;

/// How to reach Kafka and how this deployment names its topics.
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
        env = "SAGAFLOW_TOPIC_PARTITIONS",
        default_value_t = 4
    )]
    pub partitions: i32,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            partitions: 4,
        }
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
