//! `sagaflow tail <topic>`: print each message as one JSON line.

use std::io::Write;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sagaflow_runtime::{KafkaConfig, inspect};

#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Logical topic, e.g. orders.events (the deployment's prefix is added).
    pub topic: String,
    /// Start at the first retained message instead of the end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Keep waiting for new messages; otherwise stop at the end of the topic.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub kafka: KafkaConfig,
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let topic = args.kafka.topic(&args.topic);
    // No consumer group: tail assigns partitions itself and never commits offsets.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka.brokers)
        .set("broker.address.family", "v4")
        .set("group.id", "sagaflow-tail")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let metadata_client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka.brokers)
        .set("broker.address.family", "v4")
        .set("log_level", "3")
        .create()?;
    let partitions: Vec<i32> = {
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<i32>> {
            let metadata = metadata_client.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            Ok(metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect())
        })
        .await??
    };
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} does not exist");
    }
    let mut ends = std::collections::HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) =
            sagaflow_runtime::kafka::watermarks(&consumer, &topic, p, Duration::from_secs(10))?;
        let start = if args.from_beginning {
            Offset::Offset(low)
        } else {
            Offset::Offset(high)
        };
        if start != Offset::Offset(high) {
            ends.insert(p, high);
        }
        assignment.add_partition_offset(&topic, p, start)?;
    }
    consumer.assign(&assignment)?;
    let stdout = std::io::stdout();
    loop {
        if !args.follow && ends.is_empty() {
            return Ok(());
        }
        let next = if args.follow {
            Some(consumer.recv().await)
        } else {
            tokio::time::timeout(Duration::from_secs(10), consumer.recv())
                .await
                .ok()
        };
        let Some(message) = next else {
            return Ok(()); // nothing more arrived within the wait
        };
        let message = message?;
        let line = inspect::to_json(&message);
        writeln!(stdout.lock(), "{line}")?;
        use rdkafka::Message as _;
        if let Some(&end) = ends.get(&message.partition())
            && message.offset() + 1 >= end
        {
            ends.remove(&message.partition());
        }
    }
}
