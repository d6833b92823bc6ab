//! The notifications table. Write functions take the caller's transaction and never commit.

use chrono::{DateTime, Utc};
use sagaflow_messaging::OutboxBatch;
use sagaflow_runtime::db::Tx;
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::Notification;

/// A recorded notification, as served over HTTP.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Recorded {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub template: String,
    pub subject: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// Record `notification` unless the order already has one of its template, and enqueue
/// `sent` (its NotificationSent) only if it was recorded — one statement. Returns whether it
/// was recorded (and so must be sent): a concurrent insert of the same one waits for the other
/// transaction and then finds the conflict, so exactly one of them sends.
pub async fn insert(
    tx: &mut Tx,
    notification: &Notification,
    at: DateTime<Utc>,
    sent: &OutboxBatch,
) -> Result<bool, sqlx::Error> {
    let statement = format!(
        "WITH recorded AS (
             INSERT INTO notifications (id, order_id, customer_id, template, subject, body, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (order_id, template) DO NOTHING
             RETURNING id),
         sent AS ({} WHERE EXISTS (SELECT 1 FROM recorded))
         SELECT count(*) FROM recorded",
        OutboxBatch::insert(8)
    );
    let query = sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(Uuid::now_v7())
        .bind(notification.order_id)
        .bind(notification.customer_id)
        .bind(notification.template)
        .bind(&notification.subject)
        .bind(&notification.body)
        .bind(at);
    let recorded: i64 = sent.bind(query).fetch_one(&mut **tx).await?.try_get(0)?;
    Ok(recorded == 1)
}

/// An order's notifications, oldest first.
pub async fn for_order(pool: &PgPool, order_id: Uuid) -> Result<Vec<Recorded>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, order_id, customer_id, template, subject, body, created_at
         FROM notifications WHERE order_id = $1 ORDER BY created_at, id",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
}
