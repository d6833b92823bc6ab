//! `sagaflow dlq list <topic>` and `sagaflow dlq redrive <topic> [--id ...]`.
//!
//! `list` shows what is parked in `<topic>.dlq` with the reason the consumer gave.
//! `redrive` republishes parked messages, byte for byte with their envelope headers, to the
//! topic they came from (`dlq_source_topic`), without the `dlq_*` headers. The message id is
//! unchanged, so each consumer's inbox applies a redriven message at most once, and the query
//! service (no inbox) applies it again to no effect: redriving twice, or redriving a message
//! some consumers had applied, is harmless. Kafka cannot delete from the DLQ; a redriven
//! message stays there as history. The reading and redriving are
//! `sagaflow_messaging::dead_letters`; this module is the command line around them.

use std::io::Write;

use sagaflow_messaging::dead_letters::{read, redrive, source_topic};
use sagaflow_runtime::{KafkaConfig, inspect};
use sagaflow_schemas::{header_names, topics};
use serde_json::json;

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Source topic (e.g. orders.events) or its DLQ (orders.events.dlq).
    pub topic: String,
    /// One JSON object per message (key, headers, decoded value) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub kafka: KafkaConfig,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RedriveArgs {
    /// Source topic (e.g. orders.events) or its DLQ (orders.events.dlq).
    pub topic: String,
    /// Only these message ids (`ce_id`); repeatable. All parked messages without it.
    #[arg(long = "id")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub kafka: KafkaConfig,
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let parked = read(&args.kafka, &args.topic).await?;
    let dlq = topics::dlq(source_topic(&args.topic));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        for d in &parked {
            let line = inspect::render(
                &dlq,
                d.partition,
                d.offset,
                d.timestamp_ms,
                d.key.as_deref(),
                &d.headers,
                d.payload.as_deref(),
            );
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    writeln!(out, "{} parked message(s) in {dlq}", parked.len())?;
    for d in &parked {
        let h = |name| d.header(name).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{}",
            json!({
                "id": h(header_names::ID),
                "type": h(header_names::TYPE),
                "key": d.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                "source": format!("{}/{}@{}", h(header_names::DLQ_SOURCE_TOPIC), h(header_names::DLQ_SOURCE_PARTITION), h(header_names::DLQ_SOURCE_OFFSET)),
                "consumer": h(header_names::DLQ_CONSUMER),
                "kind": h(header_names::DLQ_ERROR_KIND),
                "attempts": h(header_names::DLQ_ATTEMPTS),
                "parked_at": h(header_names::DLQ_TIME),
                "reason": h(header_names::DLQ_REASON),
            })
        )?;
    }
    Ok(())
}

pub async fn redrive_command(args: RedriveArgs) -> anyhow::Result<()> {
    let sent = redrive(&args.kafka, &args.topic, &args.ids).await?;
    for d in &sent {
        println!(
            "redriven {} ({}) to {}",
            d.message_id().unwrap_or_else(|| "-".into()),
            d.header(header_names::TYPE).unwrap_or_else(|| "-".into()),
            d.header(header_names::DLQ_SOURCE_TOPIC)
                .unwrap_or_else(|| source_topic(&args.topic).to_string())
        );
    }
    println!("{} message(s) redriven", sent.len());
    Ok(())
}
