//! The live consumer of the events topics: applies each event to every projection and records
//! how far it has read, all in the consumer's transaction (with the inbox row).

use sagaflow_schemas::MessageType;
use std::sync::Arc;

use sagaflow_messaging::consumer::{Handler, HandlerError, Incoming};
use sagaflow_runtime::db::Tx;

use crate::projection::{self, Projection, ProjectionError, Rules, Target};

/// Feeds the live tables.
#[derive(Debug, Clone)]
pub struct QueryHandler {
    rules: Arc<Rules>,
    /// The deployment's topic prefix, stripped so positions use logical names (like replay).
    topic_prefix: String,
}

impl QueryHandler {
    pub fn new(rules: Rules, topic_prefix: &str) -> Self {
        QueryHandler {
            rules: Arc::new(rules),
            topic_prefix: topic_prefix.to_string(),
        }
    }
}

impl Handler for QueryHandler {
    fn accepts(&self, message_type: MessageType) -> bool {
        Projection::ALL.iter().any(|p| p.accepts(message_type))
    }

    /// Events of one order come on several topics (several lanes), and stock events of many
    /// orders move the same SKU's row: a batch locks both, the order id and every SKU.
    fn max_batch(&self) -> usize {
        sagaflow_messaging::consumer::DEFAULT_MAX_BATCH
    }

    fn lock_keys(&self, incoming: &Incoming) -> Vec<String> {
        projection::lock_keys(&incoming.message)
    }

    async fn handle(&self, tx: &mut Tx, incoming: &Incoming) -> Result<(), HandlerError> {
        for projection in Projection::ALL {
            projection::apply(
                tx,
                Target::Live,
                projection,
                &self.rules,
                &incoming.envelope,
                &incoming.message,
            )
            .await
            .map_err(|e| match e {
                ProjectionError::Rejected(reason) => HandlerError::Rejected(reason),
                ProjectionError::Database(e) => HandlerError::Database(e),
            })?;
        }
        let topic = incoming
            .topic
            .strip_prefix(self.topic_prefix.as_str())
            .unwrap_or(&incoming.topic);
        record_position(
            tx,
            topic,
            incoming.partition,
            incoming.offset + 1,
            incoming.envelope.time,
        )
        .await?;
        Ok(())
    }
}

/// Remember that the live tables hold everything of `topic`/`partition` before `next_offset`.
pub(crate) async fn record_position(
    tx: &mut Tx,
    topic: &str,
    partition: i32,
    next_offset: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_positions (topic, kafka_partition, next_offset, last_event_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (topic, kafka_partition) DO UPDATE SET
            next_offset = GREATEST(projection_positions.next_offset, EXCLUDED.next_offset),
            last_event_at = GREATEST(projection_positions.last_event_at, EXCLUDED.last_event_at)",
    )
    .bind(topic)
    .bind(partition)
    .bind(next_offset)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
