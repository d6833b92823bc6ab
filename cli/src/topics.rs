//! `sagaflow topics`: create every domain topic and its dead-letter topic (with the
//! deployment's prefix, partition count and replication settings: `--partitions`,
//! `--replication-factor`, `--min-insync-replicas`; see `sagaflow_runtime::topic_policy`) if
//! missing, then print them as the broker sees them. Components do the same at start-up;
//! this runs it once, up front, without Kafka's shell tools (docker-compose's `topics`
//! service).

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sagaflow_runtime::topic_policy::PolicyError;
use sagaflow_runtime::{KafkaConfig, kafka};
use sagaflow_schemas::topics;

#[derive(Debug, Clone, clap::Args)]
pub struct TopicsArgs {
    /// Keep retrying this long (seconds) while the broker is not reachable yet.
    #[arg(long, env = "SAGAFLOW_TOPICS_WAIT_SECS", default_value_t = 60)]
    pub wait_secs: u64,
    #[command(flatten)]
    pub kafka: KafkaConfig,
}

pub async fn run(args: TopicsArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let mut delay = Duration::from_millis(250);
    loop {
        match kafka::ensure_all_topics(&args.kafka).await {
            Ok(()) => break,
            // Settings the cluster cannot have: waiting will not change that.
            Err(e) if e.downcast_ref::<PolicyError>().is_some() => return Err(e),
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, brokers = %args.kafka.brokers, "creating topics; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.context(format!("creating topics on {}", args.kafka.brokers))),
        }
    }
    let mut names: Vec<String> = topics::ALL.iter().map(|t| args.kafka.topic(t)).collect();
    names.extend(
        topics::ALL
            .iter()
            .map(|t| args.kafka.topic(&topics::dlq(t))),
    );
    let brokers = args.kafka.brokers.clone();
    let partitions =
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, usize, usize)>> {
            let client: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("broker.address.family", "v4")
                .set("log_level", "3")
                .create()?;
            names
                .into_iter()
                .map(|name| {
                    let metadata = client.fetch_metadata(Some(&name), Duration::from_secs(10))?;
                    let partitions: Vec<_> = metadata
                        .topics()
                        .iter()
                        .flat_map(|t| t.partitions())
                        .collect();
                    let replicas = partitions
                        .iter()
                        .map(|p| p.replicas().len())
                        .min()
                        .unwrap_or(0);
                    Ok((name, partitions.len(), replicas))
                })
                .collect()
        })
        .await??;
    for (name, count, replicas) in &partitions {
        println!("{name} partitions={count} replication_factor={replicas}");
    }
    if let Some((name, _, _)) = partitions.iter().find(|(_, count, _)| *count == 0) {
        anyhow::bail!("topic {name} has no partitions after creation");
    }
    Ok(())
}
