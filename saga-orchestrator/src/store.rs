//! Saga persistence. A transition, its history row and its outgoing commands are written in
//! the caller's transaction (with the inbox row when a message triggered it).

use chrono::{DateTime, Utc};
use sagaflow_messaging::OutboxBatch;
use sagaflow_runtime::db::Tx;
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::saga::{Saga, SagaData, State};

#[derive(FromRow)]
struct SagaRow {
    order_id: Uuid,
    state: String,
    #[sqlx(json)]
    data: SagaData,
    deadline: Option<DateTime<Utc>>,
    attempts: i32,
    traceparent: Option<String>,
}

impl SagaRow {
    fn into_saga(self) -> Result<(Saga, Option<String>), sqlx::Error> {
        // Decoded here rather than by `#[sqlx(try_from)]`, so that one bad row fails alone and
        // not the whole fetch it is part of (the sweeper reports it and moves on).
        let state = State::try_from(self.state).map_err(|e| sqlx::Error::Decode(e.into()))?;
        let saga = Saga {
            order_id: self.order_id,
            state,
            data: self.data,
            deadline: self.deadline,
            attempts: self.attempts.max(0) as u32,
        };
        Ok((saga, self.traceparent))
    }
}

/// Lock and load a saga (and its trace context).
pub async fn lock(
    tx: &mut Tx,
    order_id: Uuid,
) -> Result<Option<(Saga, Option<String>)>, sqlx::Error> {
    let row: Option<SagaRow> = sqlx::query_as(
        "SELECT order_id, state, data, deadline, attempts, traceparent FROM sagas WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(SagaRow::into_saga).transpose()
}

/// Up to `limit` sagas whose deadline passed, most overdue first: only their ids, so a row
/// that does not decode (an unknown state, corrupt data) cannot fail the listing — it fails
/// on its own in [`lock_overdue`], and the others still fire.
pub async fn overdue_ids(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT order_id FROM sagas WHERE deadline <= now() ORDER BY deadline LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Lock and load one saga if its deadline (still) passed; `None` if it did not, or another
/// orchestrator holds it (`SKIP LOCKED`: several orchestrators share the sweep).
pub async fn lock_overdue(
    tx: &mut Tx,
    order_id: Uuid,
) -> Result<Option<(Saga, Option<String>)>, sqlx::Error> {
    let row: Option<SagaRow> = sqlx::query_as(
        "SELECT order_id, state, data, deadline, attempts, traceparent FROM sagas
          WHERE order_id = $1 AND deadline <= now() FOR UPDATE SKIP LOCKED",
    )
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(SagaRow::into_saga).transpose()
}

/// Push back the deadline of a saga whose deadline could not fire, so that it is not picked
/// first again at once (it would be, for ever: it is the most overdue) and the sweep moves on.
/// It is retried after as long again as it has been stuck since its last transition
/// (`updated_at`, which this does not touch), at least 1 s and at most 5 min: the delay
/// roughly doubles with each failure, so a broken row is retried — and reported — ever less
/// often but at least every 5 minutes, while a row that failed for a passing reason is not
/// held back long. Only the deadline changes: state, data and attempts stay as they were, for
/// an operator to inspect. Returns the new deadline (`None`: the saga is no longer overdue).
pub async fn postpone(tx: &mut Tx, order_id: Uuid) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE sagas
            SET deadline = now() + LEAST(GREATEST(now() - updated_at, interval '1 second'),
                                         interval '5 minutes')
          WHERE order_id = $1 AND deadline <= now()
      RETURNING deadline",
    )
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await
}

pub struct HistoryEntry<'a> {
    pub order_id: Uuid,
    pub from: Option<State>,
    pub to: State,
    pub trigger: &'a str,
    pub message_id: Option<Uuid>,
    pub note: &'a str,
    pub commands: Vec<String>,
}

/// Write a transition in **one statement**: insert or update the saga, append its history
/// row, and enqueue its commands (`commands`, already encoded; empty for none). Returns when
/// the saga started (`created_at`, for its duration). One round trip instead of three: the
/// orchestrator writes a transition for every reply of every saga, so its statements are a
/// good part of the saga's cost (docs/benchmarks.md, "One statement per transition"). The
/// three writes touch three tables, so PostgreSQL runs them as one statement's data-modifying
/// CTEs without any of them needing another's result.
pub async fn transition(
    tx: &mut Tx,
    saga: &Saga,
    traceparent: Option<&str>,
    entry: HistoryEntry<'_>,
    commands: &OutboxBatch,
) -> Result<DateTime<Utc>, sqlx::Error> {
    let statement = format!(
        "WITH saved AS (
             INSERT INTO sagas (order_id, state, data, deadline, attempts, traceparent)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (order_id) DO UPDATE
                SET state = EXCLUDED.state, data = EXCLUDED.data, deadline = EXCLUDED.deadline,
                    attempts = EXCLUDED.attempts, updated_at = now()
             RETURNING created_at),
         history AS (
             INSERT INTO saga_history (order_id, from_state, to_state, trigger, message_id, note, commands)
             VALUES ($1, $7, $8, $9, $10, $11, $12)),
         commands AS ({commands})
         SELECT created_at FROM saved",
        commands = OutboxBatch::insert(13),
    );
    let query = sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(saga.order_id)
        .bind(saga.state.as_str())
        .bind(sqlx::types::Json(&saga.data))
        .bind(saga.deadline)
        .bind(saga.attempts as i32)
        .bind(traceparent)
        .bind(entry.from.map(State::as_str))
        .bind(entry.to.as_str())
        .bind(entry.trigger)
        .bind(entry.message_id)
        .bind(entry.note)
        .bind(&entry.commands);
    let row = commands.bind(query).fetch_one(&mut **tx).await?;
    sqlx::Row::try_get(&row, "created_at")
}

/// Append a history row without a transition (a message the saga ignored).
pub async fn record(tx: &mut Tx, entry: HistoryEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO saga_history (order_id, from_state, to_state, trigger, message_id, note, commands)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(entry.order_id)
    .bind(entry.from.map(State::as_str))
    .bind(entry.to.as_str())
    .bind(entry.trigger)
    .bind(entry.message_id)
    .bind(entry.note)
    .bind(&entry.commands)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A saga as served by the saga API.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct SagaView {
    pub order_id: Uuid,
    pub state: String,
    pub data: serde_json::Value,
    pub deadline: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One transition of a saga.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct HistoryView {
    pub at: DateTime<Utc>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub trigger: String,
    pub message_id: Option<Uuid>,
    pub note: String,
    pub commands: Vec<String>,
}

pub async fn view(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<(SagaView, Vec<HistoryView>)>, sqlx::Error> {
    let saga: Option<SagaView> = sqlx::query_as(
        "SELECT order_id, state, data, deadline, attempts, created_at, updated_at FROM sagas WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    let Some(saga) = saga else { return Ok(None) };
    let history = sqlx::query_as(
        "SELECT at, from_state, to_state, trigger, message_id, note, commands FROM saga_history
          WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    Ok(Some((saga, history)))
}

/// Sagas whose current step is past its deadline (should be empty but for a moment).
pub async fn overdue(pool: &PgPool, limit: i64) -> Result<Vec<SagaView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, state, data, deadline, attempts, created_at, updated_at FROM sagas
          WHERE deadline < now() ORDER BY deadline LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How far past its deadline the most overdue saga is, in seconds (0 when none is). The
/// sweeper fires deadlines within its interval, so a value that keeps growing means deadlines
/// are not firing.
pub async fn oldest_overdue_seconds(pool: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(deadline))::float8, 0)
           FROM sagas WHERE deadline < now()",
    )
    .fetch_one(pool)
    .await
}

/// Sagas by state, of the states that stay small: in flight (a deadline set, the partial
/// index `sagas_deadline`) and FAILED (waiting for an operator). Ended sagas are not counted:
/// a count over them grows with the table (`saga_transitions_total{to}` counts endings).
pub async fn count_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT state, count(*) FROM sagas WHERE deadline IS NOT NULL GROUP BY state
         UNION ALL
         SELECT state, count(*) FROM sagas WHERE state = 'FAILED' GROUP BY state",
    )
    .fetch_all(pool)
    .await
}

/// Saga rows deleted per statement by [`delete_ended`].
pub const RETENTION_BATCH: i64 = 5_000;

/// Delete APPROVED and REJECTED sagas that ended more than `retention` ago, with their
/// history, in batches of [`RETENTION_BATCH`] until none is left; FAILED sagas stay (they hold
/// stock or money for an operator). Returns how many sagas went.
pub async fn delete_ended(
    pool: &PgPool,
    retention: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted: i64 = sqlx::query_scalar(
            "WITH ended AS (
                 DELETE FROM sagas WHERE order_id IN (
                     SELECT order_id FROM sagas
                      WHERE state IN ('APPROVED', 'REJECTED')
                        AND updated_at < now() - make_interval(secs => $1)
                      LIMIT $2)
                 RETURNING order_id),
             history AS (
                 DELETE FROM saga_history h USING ended WHERE h.order_id = ended.order_id)
             SELECT count(*) FROM ended",
        )
        .bind(retention.as_secs_f64())
        .bind(RETENTION_BATCH)
        .fetch_one(pool)
        .await?;
        total += deleted as u64;
        if deleted < RETENTION_BATCH {
            return Ok(total);
        }
    }
}
