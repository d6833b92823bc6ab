//! The live consumer of the events topics: applies each event to every projection and records
//! how far it has read (once per batch), all in the consumer's transaction. No inbox rows: the
//! projections are idempotent and order-safe by construction, so a redelivered event is
//! applied again and changes nothing.

use sagaflow_schemas::MessageType;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

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

    /// The inbox row would be one write per event for nothing: applying an event twice
    /// changes no row (`projection`'s guarantees, which replay relies on too).
    fn keeps_inbox(&self) -> bool {
        false
    }

    fn lock_keys(&self, incoming: &Incoming) -> Vec<String> {
        projection::lock_keys(&incoming.message)
    }

    type Report = ();

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

    /// How far the transaction has read: one statement per batch (a lane's batch holds one
    /// partition number of up to four topics), not one per event.
    async fn finish(&self, tx: &mut Tx, batch: &[&Incoming]) -> Result<(), HandlerError> {
        // (logical topic, partition) -> (next offset, newest event time)
        let mut read: BTreeMap<(&str, i32), (i64, DateTime<Utc>)> = BTreeMap::new();
        for incoming in batch {
            let topic = incoming
                .topic
                .strip_prefix(self.topic_prefix.as_str())
                .unwrap_or(&incoming.topic);
            let seen = (incoming.offset + 1, incoming.envelope.time);
            read.entry((topic, incoming.partition))
                .and_modify(|(next, at)| {
                    *next = (*next).max(seen.0);
                    *at = (*at).max(seen.1);
                })
                .or_insert(seen);
        }
        record_positions(tx, &read).await?;
        Ok(())
    }
}

/// Remember that the live tables hold everything of each topic/partition before its next
/// offset, and when its newest event was written (never moving either back), in one statement.
async fn record_positions(
    tx: &mut Tx,
    read: &BTreeMap<(&str, i32), (i64, DateTime<Utc>)>,
) -> Result<(), sqlx::Error> {
    if read.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO projection_positions (topic, kafka_partition, next_offset, last_event_at)
         SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::timestamptz[])
         ON CONFLICT (topic, kafka_partition) DO UPDATE SET
            next_offset = GREATEST(projection_positions.next_offset, EXCLUDED.next_offset),
            last_event_at = GREATEST(projection_positions.last_event_at, EXCLUDED.last_event_at)",
    )
    .bind(read.keys().map(|(topic, _)| *topic).collect::<Vec<_>>())
    .bind(
        read.keys()
            .map(|(_, partition)| *partition)
            .collect::<Vec<_>>(),
    )
    .bind(read.values().map(|(next, _)| *next).collect::<Vec<_>>())
    .bind(read.values().map(|(_, at)| *at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
