//! Saga persistence. A transition, its history row and its outgoing commands are written in
//! the caller's transaction (with the inbox row when a message triggered it).

use chrono::{DateTime, Utc};
use sagaflow_common::db::Tx;
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
        let state = State::parse(&self.state).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown saga state {:?}", self.state).into())
        })?;
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

/// Lock up to `limit` sagas whose deadline passed; other orchestrators skip them.
pub async fn lock_overdue(
    tx: &mut Tx,
    limit: i64,
) -> Result<Vec<(Saga, Option<String>)>, sqlx::Error> {
    let rows: Vec<SagaRow> = sqlx::query_as(
        "SELECT order_id, state, data, deadline, attempts, traceparent FROM sagas
          WHERE deadline <= now() ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter().map(SagaRow::into_saga).collect()
}

/// Insert or update a saga after a transition.
pub async fn save(tx: &mut Tx, saga: &Saga, traceparent: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sagas (order_id, state, data, deadline, attempts, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (order_id) DO UPDATE
            SET state = EXCLUDED.state, data = EXCLUDED.data, deadline = EXCLUDED.deadline,
                attempts = EXCLUDED.attempts, updated_at = now()",
    )
    .bind(saga.order_id)
    .bind(saga.state.as_str())
    .bind(sqlx::types::Json(&saga.data))
    .bind(saga.deadline)
    .bind(saga.attempts as i32)
    .bind(traceparent)
    .execute(&mut **tx)
    .await?;
    Ok(())
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

#[derive(Debug, Serialize, FromRow)]
pub struct SagaView {
    pub order_id: Uuid,
    pub state: String,
    pub data: serde_json::Value,
    pub deadline: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, FromRow)]
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

pub async fn count_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT state, count(*) FROM sagas GROUP BY state")
        .fetch_all(pool)
        .await
}
