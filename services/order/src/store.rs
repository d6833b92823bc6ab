//! Order persistence. Every write takes the caller's transaction; the caller commits once.

use std::collections::HashSet;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sagaflow_messaging::OutboxBatch;
use sagaflow_runtime::db::Tx;
use serde::Serialize;
use sqlx::{FromRow, PgPool, Row};
use uuid::Uuid;

use crate::domain::{NewOrder, OrderLine, OrderStatus};

/// An order as stored and served by `GET /orders/{id}`.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct OrderRow {
    #[serde(rename = "order_id")]
    pub id: Uuid,
    pub customer_id: Uuid,
    #[sqlx(try_from = "String")]
    pub status: OrderStatus,
    pub reason: Option<String>,
    #[sqlx(json)]
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub currency: String,
    pub payment_method: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The first use of an Idempotency-Key in a batch of `POST /orders`: it claims the key for a
/// new order. Keys are scoped to the principal that sent them.
#[derive(Debug, Clone, Copy)]
pub struct KeyClaim<'a> {
    /// The placement's position in its batch.
    pub index: usize,
    pub principal: &'a str,
    pub key: &'a str,
    pub request_hash: &'a str,
    /// The order the key places if it is claimed.
    pub order_id: Uuid,
}

/// A new order of a batch: its id, the request and its total in minor units.
pub type NewOrderRow<'a> = (Uuid, &'a NewOrder, i64);

/// Store a batch of `POST /orders` in one statement — its own transaction, committed when
/// this returns: claim each key for its order (in the order given: callers sort them, so
/// that concurrent batches lock keys in one order; keys must be distinct), then insert the
/// orders whose key was claimed (PENDING) and their outbox rows (`announcements`, keyed by
/// order id). A key is claimed when it was new for its principal or had expired (older than
/// `ttl`: it is taken over); a concurrent first use of a key is waited for, by the primary
/// key's lock. Returns the ids of the orders stored.
pub async fn place_orders(
    pool: &PgPool,
    claims: &[KeyClaim<'_>],
    orders: &[NewOrderRow<'_>],
    announcements: &OutboxBatch,
    ttl: std::time::Duration,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    static PLACE_ORDERS: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH claimed AS (
                INSERT INTO idempotency_keys (principal, key, request_hash, order_id)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[])
                ON CONFLICT (principal, key) DO UPDATE
                   SET request_hash = EXCLUDED.request_hash, order_id = EXCLUDED.order_id,
                       created_at = now()
                   WHERE idempotency_keys.created_at < now() - make_interval(secs => $5)
                RETURNING order_id
             ), placed AS (
                INSERT INTO orders (id, customer_id, status, items, total_cents, currency, payment_method)
                SELECT id, customer_id, 'PENDING', items, total_cents, currency, payment_method
                  FROM unnest($6::uuid[], $7::uuid[], $8::jsonb[], $9::bigint[], $10::text[], $11::text[])
                    AS o(id, customer_id, items, total_cents, currency, payment_method)
                 WHERE id IN (SELECT order_id FROM claimed)
             ), announced AS (
                INSERT INTO outbox ({columns})
                SELECT {columns} FROM {rows}
                 WHERE msg_key IN (SELECT order_id::text FROM claimed)
             )
             SELECT order_id FROM claimed",
            columns = OutboxBatch::COLUMNS,
            rows = OutboxBatch::unnest(12),
        )
    });
    let query = sqlx::query(sqlx::AssertSqlSafe(PLACE_ORDERS.as_str()))
        .bind(claims.iter().map(|c| c.principal).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.key).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.request_hash).collect::<Vec<_>>())
        .bind(claims.iter().map(|c| c.order_id).collect::<Vec<_>>())
        .bind(ttl.as_secs_f64())
        .bind(orders.iter().map(|o| o.0).collect::<Vec<_>>())
        .bind(orders.iter().map(|o| o.1.customer_id).collect::<Vec<_>>())
        .bind(
            orders
                .iter()
                .map(|o| sqlx::types::Json(&o.1.items))
                .collect::<Vec<_>>(),
        )
        .bind(orders.iter().map(|o| o.2).collect::<Vec<_>>())
        .bind(
            orders
                .iter()
                .map(|o| o.1.currency.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            orders
                .iter()
                .map(|o| o.1.payment_method.as_str())
                .collect::<Vec<_>>(),
        );
    let rows = announcements.bind(query).fetch_all(pool).await?;
    rows.iter().map(|row| row.try_get("order_id")).collect()
}

/// The order and request hash each key was first used with, as (principal, key, order id,
/// request hash); a key not stored is left out.
pub async fn find_idempotency_keys(
    pool: &PgPool,
    claims: &[KeyClaim<'_>],
) -> Result<Vec<(String, String, Uuid, String)>, sqlx::Error> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT k.principal, k.key, k.order_id, k.request_hash
           FROM idempotency_keys k
           JOIN unnest($1::text[], $2::text[]) AS wanted(principal, key)
             ON k.principal = wanted.principal AND k.key = wanted.key",
    )
    .bind(claims.iter().map(|c| c.principal).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.key).collect::<Vec<_>>())
    .fetch_all(pool)
    .await
}

/// Delete the idempotency keys older than `ttl` (they no longer answer anything); returns how
/// many went.
pub async fn prune_idempotency_keys(
    pool: &PgPool,
    ttl: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
    )
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}

macro_rules! columns {
    () => {
        "id, customer_id, status, reason, items, total_cents, currency, payment_method, created_at, updated_at"
    };
}

pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Lock the order row: every transaction that writes messages for an order holds it, which
/// keeps the order's outbox rows in commit order.
pub async fn lock(tx: &mut Tx, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM orders WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
}

/// Set the order's status (and reason) and enqueue `announcement` — the event that announces
/// it — in one statement, inside `tx`.
pub async fn set_status(
    tx: &mut Tx,
    id: Uuid,
    status: OrderStatus,
    reason: Option<&str>,
    announcement: &OutboxBatch,
) -> Result<(), sqlx::Error> {
    let statement = format!(
        "WITH changed AS (UPDATE orders SET status = $2, reason = $3, updated_at = now() WHERE id = $1)
         {}",
        OutboxBatch::insert(4)
    );
    announcement
        .bind(
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .bind(id)
                .bind(status.as_str())
                .bind(reason),
        )
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Up to `limit` PENDING orders past their order deadline (`created_at + deadline`), oldest
/// first; an order whose expiry failed waits for its `deadline_retry_at`.
pub async fn overdue_orders(
    pool: &PgPool,
    deadline: std::time::Duration,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM orders
          WHERE status = 'PENDING' AND created_at <= now() - make_interval(secs => $1)
            AND (deadline_retry_at IS NULL OR deadline_retry_at <= now())
          ORDER BY created_at
          LIMIT $2",
    )
    .bind(deadline.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Lock the order if it is still PENDING and past its deadline; `None` when it is not (any
/// more), or when another transaction holds it (the order-service consumer applying the saga's
/// verdict, another replica's sweeper): the next sweep looks again.
pub async fn lock_overdue(
    tx: &mut Tx,
    id: Uuid,
    deadline: std::time::Duration,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM orders
          WHERE id = $1 AND status = 'PENDING' AND created_at <= now() - make_interval(secs => $2)
            AND (deadline_retry_at IS NULL OR deadline_retry_at <= now())
          FOR UPDATE SKIP LOCKED"
    ))
    .bind(id)
    .bind(deadline.as_secs_f64())
    .fetch_optional(&mut **tx)
    .await
}

/// Try the deadline of an order whose expiry failed again after `delay`, so that it is not the
/// first row of every sweep.
pub async fn postpone_deadline(
    pool: &PgPool,
    id: Uuid,
    delay: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET deadline_retry_at = now() + make_interval(secs => $2)
          WHERE id = $1 AND status = 'PENDING'",
    )
    .bind(id)
    .bind(delay.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}
