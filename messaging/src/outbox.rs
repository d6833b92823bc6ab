//! The transactional outbox: [`enqueue`] writes a message inside the caller's transaction,
//! and the [`Relay`](crate::relay::Relay) publishes committed rows to Kafka.
//!
//! Guarantees of the relay:
//! - **Nothing committed is lost, nothing uncommitted is published.** The relay only sees
//!   committed rows, and a row is marked published only after the broker acknowledged it
//!   (idempotent producer, acks=all). A crash between ack and mark republishes the row: a
//!   duplicate, which consumers' inboxes absorb — never a loss.
//! - **No commit-order gap.** There is no `id > cursor`: every pass looks at all pending rows,
//!   so a row whose transaction committed late (with a smaller id than rows already published)
//!   is published as soon as it is visible.
//! - **Per-key order, with any number of replicas.** A pass claims only the *head* (oldest
//!   pending row) of each key, `FOR UPDATE SKIP LOCKED`, and holds the row locks until the
//!   broker acked and the marks committed. Another replica skips locked heads and cannot
//!   claim the next row of that key while its head is pending. Rows of one key are written by
//!   transactions serialised on the aggregate's row lock, so id order is commit order.
//! - **A row that can never be published** (too large for the broker, …) is parked with the
//!   reason. It stays the head of its key — no later row of that key is published before it —
//!   while other keys move on, until an operator hands it back ([`retry_parked`](crate::relay::retry_parked),
//!   `sagaflow outbox retry`); [`parked_rows`](crate::relay::parked_rows) lists them (`sagaflow outbox parked`).
//! - **A configuration error** (no ACL for the topic, the topic missing, an invalid topic
//!   name) is not the row's fault: the row is retried with a backoff of its own (`retry_at`,
//!   `RelayConfig::retry_backoff` doubling up to `retry_backoff_max`), holding back its key
//!   meanwhile, and is published in order once the configuration is fixed. Transient errors
//!   (broker unreachable, timeouts) fail the pass and the relay backs off.

use crate::consumer::HandlerError;
use sagaflow_runtime::db::Tx;
use sagaflow_runtime::trace;
use sagaflow_schemas::{CodecError, Envelope, Message};
use uuid::Uuid;

/// Where a message comes from: its envelope's source, saga, cause and trace.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The writing component, e.g. `order-service`.
    pub source: &'static str,
    /// The saga (order) id.
    pub correlation_id: Uuid,
    /// The message that caused this one.
    pub causation_id: Option<Uuid>,
    /// The trace the message belongs to; it carries the current span when that is part of
    /// this trace (see `trace::for_message`).
    pub traceparent: Option<String>,
}

impl Origin {
    /// A message caused by an incoming one: same saga, same trace.
    pub fn caused_by(source: &'static str, cause: &Envelope) -> Self {
        Origin {
            source,
            correlation_id: cause.correlation_id,
            causation_id: Some(cause.message_id),
            traceparent: cause.traceparent.clone(),
        }
    }
}

/// Enqueueing failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// How a consumer's handler fails when enqueueing its outgoing message fails — the one
/// mapping every handler uses (`?`). A database error stays a database error, so an outage is
/// retried without counting attempts and the message is never dead-lettered for it; a message
/// that does not encode is a handler failure (retried, then dead-lettered).
impl From<OutboxError> for HandlerError {
    fn from(error: OutboxError) -> Self {
        match error {
            OutboxError::Database(e) => HandlerError::Database(e),
            other @ OutboxError::Codec(_) => HandlerError::Failed(other.into()),
        }
    }
}

/// Write `message` to the outbox inside `tx`. It is published only if `tx` commits.
/// Returns the message id (UUID v7).
pub async fn enqueue(tx: &mut Tx, message: &Message, origin: &Origin) -> Result<Uuid, OutboxError> {
    let ids = enqueue_all(tx, [(message, origin)]).await?;
    Ok(ids[0])
}

/// Write several messages to the outbox inside `tx` in one statement, in the order given
/// (their ids, and so the relay's order per key, follow it). Returns their message ids in
/// that order.
pub async fn enqueue_all<'a>(
    tx: &mut Tx,
    messages: impl IntoIterator<Item = (&'a Message, &'a Origin)>,
) -> Result<Vec<Uuid>, OutboxError> {
    let mut batch = OutboxBatch::default();
    for (message, origin) in messages {
        batch.push(message, origin)?;
    }
    // Built from constants only.
    batch
        .bind(sqlx::query(sqlx::AssertSqlSafe(OutboxBatch::insert(1))))
        .execute(&mut **tx)
        .await?;
    Ok(batch.message_ids)
}

/// Outbox rows, encoded, as the columns of one multi-row insert — for writers that fold the
/// insert into a statement of their own (`POST /orders` stores keys, orders and OrderPlaced
/// in one statement): `INSERT INTO outbox (`[`COLUMNS`](Self::COLUMNS)`) SELECT … FROM`
/// [`unnest`](Self::unnest)`(n)`, with the arrays bound by [`bind`](Self::bind) as the
/// parameters `$n` to `$n+5`. Rows keep the order they were pushed in.
#[derive(Debug, Default)]
pub struct OutboxBatch {
    message_ids: Vec<Uuid>,
    message_types: Vec<&'static str>,
    topics: Vec<&'static str>,
    keys: Vec<String>,
    payloads: Vec<Vec<u8>>,
    headers: Vec<serde_json::Value>,
}

impl OutboxBatch {
    /// The outbox columns the batch fills, in the order of [`OutboxBatch::unnest`]'s columns.
    pub const COLUMNS: &'static str = "message_id, message_type, topic, msg_key, payload, headers";

    /// The rows as a table expression of the [`COLUMNS`](Self::COLUMNS), from parameters
    /// `$first` to `$first+5`.
    pub fn unnest(first: usize) -> String {
        let types = ["uuid", "text", "text", "text", "bytea", "jsonb"];
        let arrays: Vec<String> = (first..)
            .zip(types)
            .map(|(n, ty)| format!("${n}::{ty}[]"))
            .collect();
        format!(
            "unnest({}) AS outbox_rows({})",
            arrays.join(", "),
            Self::COLUMNS
        )
    }

    /// `INSERT INTO outbox (…) SELECT * FROM `[`unnest`](Self::unnest)`(first)`: the batch's
    /// insert, to end a statement whose data-modifying CTEs write the state it announces
    /// (`WITH changed AS (UPDATE …) INSERT INTO outbox …`) — one round trip for a state change
    /// and its messages. A `WHERE` may follow, to insert only when a CTE wrote something.
    pub fn insert(first: usize) -> String {
        format!(
            "INSERT INTO outbox ({}) SELECT * FROM {}",
            Self::COLUMNS,
            Self::unnest(first)
        )
    }

    /// One message's batch (see [`OutboxBatch::push`]); an [`OutboxError`], like
    /// [`enqueue`]'s, so a handler's `?` treats a message that does not encode the same way.
    pub fn of(message: &Message, origin: &Origin) -> Result<Self, OutboxError> {
        let mut batch = OutboxBatch::default();
        batch.push(message, origin)?;
        Ok(batch)
    }

    /// Bind the six column arrays as the next parameters of `query`.
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.message_ids)
            .bind(&self.message_types)
            .bind(&self.topics)
            .bind(&self.keys)
            .bind(&self.payloads)
            .bind(&self.headers)
    }

    /// Encode `message` and its envelope (a new message id, the origin's trace) as the next
    /// row; returns its message id.
    pub fn push(&mut self, message: &Message, origin: &Origin) -> Result<Uuid, CodecError> {
        let encoded = message.encode()?;
        let mut envelope = Envelope::new(
            encoded.message_type,
            origin.source,
            origin.correlation_id,
            origin.causation_id,
            encoded.schema_ref,
        );
        envelope.traceparent = Some(trace::for_message(origin.traceparent.as_deref()));
        let headers: serde_json::Map<String, serde_json::Value> = envelope
            .to_headers()
            .into_iter()
            .map(|(name, value)| (name.to_string(), serde_json::Value::String(value)))
            .collect();
        self.message_ids.push(envelope.message_id);
        self.message_types.push(encoded.message_type);
        self.topics.push(message.topic());
        self.keys.push(message.order_id().to_string());
        self.payloads.push(encoded.bytes);
        self.headers.push(serde_json::Value::Object(headers));
        Ok(envelope.message_id)
    }

    pub fn is_empty(&self) -> bool {
        self.message_ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_unnests_its_six_columns_from_the_parameters_given() {
        assert_eq!(
            OutboxBatch::unnest(3),
            "unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::jsonb[]) \
             AS outbox_rows(message_id, message_type, topic, msg_key, payload, headers)"
        );
    }

    #[test]
    fn a_database_error_while_enqueueing_stays_a_database_error() {
        let error: HandlerError = OutboxError::Database(sqlx::Error::PoolTimedOut).into();
        assert!(
            matches!(error, HandlerError::Database(sqlx::Error::PoolTimedOut)),
            "{error:?}"
        );
    }

    #[test]
    fn a_message_that_does_not_encode_is_a_handler_failure() {
        let codec = CodecError::UnknownType("NoSuchMessage".into());
        let error: HandlerError = OutboxError::Codec(codec).into();
        assert!(matches!(error, HandlerError::Failed(_)), "{error:?}");
    }
}
