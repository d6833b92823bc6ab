//! The `payments` and `uncertain_charges` tables.
//!
//! Every write takes the handler's transaction, except [`remember_uncertain`], which must
//! survive that transaction's rollback. Callers serialise work on one order with
//! [`lock_order`] before reading, so a read-then-write here is never raced.

use chrono::{DateTime, Utc};
use sagaflow_runtime::db::Tx;
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

sagaflow_runtime::text_enum! {
    /// Where an order's payment stands (`payments.status`).
    // The schema's names: utoipa cannot read each variant's rename through the macro.
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum PaymentStatus("payment status") {
        /// Charged at the provider.
        Authorized = "AUTHORIZED",
        /// The provider (or validation) refused; nothing was charged.
        Declined = "DECLINED",
        /// Charged, then refunded.
        Refunded = "REFUNDED",
        /// Compensated before anything was charged: the order must never be charged.
        Cancelled = "CANCELLED",
    }
}

/// One row of `payments`: the payment of one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PaymentRow {
    pub order_id: Uuid,
    #[sqlx(try_from = "String")]
    pub status: PaymentStatus,
    pub customer_id: Option<Uuid>,
    /// Charged (AUTHORIZED, REFUNDED) or requested (DECLINED); 0 when CANCELLED.
    pub amount_cents: i64,
    pub currency: Option<String>,
    pub payment_method: Option<String>,
    pub charge_id: Option<String>,
    pub refund_id: Option<String>,
    pub decline_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub authorized_at: Option<DateTime<Utc>>,
    pub declined_at: Option<DateTime<Utc>>,
    pub refunded_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

/// A charge whose outcome is unknown (see the migration).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UncertainCharge {
    pub order_id: Uuid,
    pub idempotency_key: String,
    pub amount_cents: i64,
    pub currency: String,
}

/// Arbitrary, fixed namespace of this service's advisory locks (the two-int key space does not
/// overlap the bigint one sqlx's migrator uses).
const LOCK_NAMESPACE: i32 = 0x0050_4159; // "PAY"

/// Serialise everything done for `order_id` until the transaction ends. An advisory lock,
/// because the row to lock may not exist yet: two deliveries for an order without a payment
/// would both see "no row" under `SELECT … FOR UPDATE` and both charge.
pub async fn lock_order(tx: &mut Tx, order_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_NAMESPACE)
        .bind(order_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The columns of `payments`, in [`PaymentRow`] order (a macro: sqlx takes only static SQL).
macro_rules! columns {
    () => {
        "order_id, status, customer_id, amount_cents, currency, payment_method, charge_id, refund_id, \
         decline_reason, created_at, updated_at, authorized_at, declined_at, refunded_at, cancelled_at"
    };
}

/// The payment of an order, if any.
pub async fn find<'e>(
    db: impl PgExecutor<'e>,
    order_id: Uuid,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as::<_, PaymentRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM payments WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(db)
    .await
}

/// Record an order's first payment outcome. The caller holds [`lock_order`] and saw no row.
pub async fn insert(tx: &mut Tx, row: &PaymentRow) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "INSERT INTO payments (",
        columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    ))
    .bind(row.order_id)
    .bind(row.status.as_str())
    .bind(row.customer_id)
    .bind(row.amount_cents)
    .bind(&row.currency)
    .bind(&row.payment_method)
    .bind(&row.charge_id)
    .bind(&row.refund_id)
    .bind(&row.decline_reason)
    .bind(row.created_at)
    .bind(row.updated_at)
    .bind(row.authorized_at)
    .bind(row.declined_at)
    .bind(row.refunded_at)
    .bind(row.cancelled_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// AUTHORIZED → REFUNDED. Fails (rolling the caller back) if the row was not AUTHORIZED, which
/// the lock makes impossible unless the code that decided to refund is wrong.
pub async fn mark_refunded(
    tx: &mut Tx,
    order_id: Uuid,
    refund_id: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE payments SET status = 'REFUNDED', refund_id = $2, refunded_at = $3, updated_at = $3
         WHERE order_id = $1 AND status = 'AUTHORIZED'",
    )
    .bind(order_id)
    .bind(refund_id)
    .bind(at)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if updated == 1 {
        Ok(())
    } else {
        Err(sqlx::Error::RowNotFound)
    }
}

/// The uncertain charge of an order, if one was recorded.
pub async fn find_uncertain(
    tx: &mut Tx,
    order_id: Uuid,
) -> Result<Option<UncertainCharge>, sqlx::Error> {
    sqlx::query_as::<_, UncertainCharge>(
        "SELECT order_id, idempotency_key, amount_cents, currency FROM uncertain_charges WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await
}

/// Note, in its own transaction, that a charge may exist at the provider. Idempotent.
pub async fn remember_uncertain(
    pool: &PgPool,
    charge: &UncertainCharge,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO uncertain_charges (order_id, idempotency_key, amount_cents, currency)
         VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(charge.order_id)
    .bind(&charge.idempotency_key)
    .bind(charge.amount_cents)
    .bind(&charge.currency)
    .execute(pool)
    .await?;
    Ok(())
}

/// The order's outcome is known now: the note is no longer needed.
pub async fn forget_uncertain(tx: &mut Tx, order_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM uncertain_charges WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
