//! The live consumer of the events topics: applies each event to every projection and records
//! how far it has read (once per batch), all in the consumer's transaction (with the inbox rows).

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
        Ok(())
    }

    /// How far the transaction has read: one statement per batch (a lane's batch is one
    /// partition), not one per event.
    async fn finish(&self, tx: &mut Tx, batch: &[&Incoming]) -> Result<(), HandlerError> {
        let mut read: Vec<Position> = Vec::new();
        for incoming in batch {
            let topic = incoming
                .topic
                .strip_prefix(self.topic_prefix.as_str())
                .unwrap_or(&incoming.topic);
            let position = Position {
                topic: topic.to_string(),
                partition: incoming.partition,
                next_offset: incoming.offset + 1,
                at: incoming.envelope.time,
            };
            match read
                .iter_mut()
                .find(|p| p.topic == position.topic && p.partition == position.partition)
            {
                Some(known) => {
                    known.next_offset = known.next_offset.max(position.next_offset);
                    known.at = known.at.max(position.at);
                }
                None => read.push(position),
            }
        }
        record_positions(tx, &read).await?;
        Ok(())
    }
}

/// The live tables hold everything of `topic`/`partition` before `next_offset`; the newest
/// event among them was written at `at`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Position {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Remember `positions` (never moving one back), in one statement.
pub(crate) async fn record_positions(
    tx: &mut Tx,
    positions: &[Position],
) -> Result<(), sqlx::Error> {
    if positions.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO projection_positions (topic, kafka_partition, next_offset, last_event_at)
         SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::timestamptz[])
         ON CONFLICT (topic, kafka_partition) DO UPDATE SET
            next_offset = GREATEST(projection_positions.next_offset, EXCLUDED.next_offset),
            last_event_at = GREATEST(projection_positions.last_event_at, EXCLUDED.last_event_at)",
    )
    .bind(
        positions
            .iter()
            .map(|p| p.topic.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(positions.iter().map(|p| p.partition).collect::<Vec<_>>())
    .bind(positions.iter().map(|p| p.next_offset).collect::<Vec<_>>())
    .bind(positions.iter().map(|p| p.at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
