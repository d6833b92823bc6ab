//! The inventory tables. Write functions take the caller's transaction and never commit.
//!
//! Locking protocol (deadlock-free): a transaction locks at most one order — its advisory lock
//! (taken by the consumer, `Handler::lock_keys`), then its reservation row — and then stock
//! rows in ascending SKU order (byte order,
//! `COLLATE "C"`, the same order Rust sorts `String`s in). Restocking and adjustments over
//! HTTP lock a single stock row.
//!
//! Every write to a stock row increments its `version` in the same statement (migration 0004):
//! the HTTP API serves it as the ETag, so any change since a client's read — a reservation
//! included — makes that client's `If-Match` fail.

use chrono::{DateTime, Utc};
use sagaflow_runtime::db::Tx;
use sagaflow_schemas::StockLine;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{Reservation, Status, StockRow};

#[derive(sqlx::FromRow)]
struct StockRecord {
    sku: String,
    available: i32,
    reserved: i32,
}

impl From<StockRecord> for StockRow {
    fn from(record: StockRecord) -> Self {
        StockRow {
            sku: record.sku,
            available: record.available,
            reserved: record.reserved,
        }
    }
}

/// A SKU's stock and the version of its row: bumped by every write, served as the ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedStock {
    pub stock: StockRow,
    pub version: i64,
}

#[derive(sqlx::FromRow)]
struct VersionedRecord {
    sku: String,
    available: i32,
    reserved: i32,
    version: i64,
}

impl From<VersionedRecord> for VersionedStock {
    fn from(record: VersionedRecord) -> Self {
        VersionedStock {
            stock: StockRow {
                sku: record.sku,
                available: record.available,
                reserved: record.reserved,
            },
            version: record.version,
        }
    }
}

#[derive(sqlx::FromRow)]
struct ReservationRecord {
    #[sqlx(try_from = "String")]
    status: Status,
    lines: Json<Vec<StockLine>>,
    reason: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<ReservationRecord> for Reservation {
    type Error = sqlx::Error;

    fn try_from(record: ReservationRecord) -> Result<Self, Self::Error> {
        Ok(Reservation {
            status: record.status,
            lines: record.lines.0,
            reason: record.reason,
            decided_at: record.created_at.timestamp_millis(),
        })
    }
}

/// The order's reservation, locked until the transaction ends, so concurrent commands for one
/// order are applied one after the other.
pub async fn reservation_for_update(
    tx: &mut Tx,
    order_id: Uuid,
) -> Result<Option<Reservation>, sqlx::Error> {
    let record: Option<ReservationRecord> = sqlx::query_as(
        "SELECT status, lines, reason, created_at FROM reservations WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await?;
    record.map(Reservation::try_from).transpose()
}

/// Record the first outcome for an order. Returns false, changing nothing, when one exists
/// already (impossible under the consumer's order lock; checked rather than assumed); the caller must then
/// roll back and decide again.
pub async fn insert_reservation(
    tx: &mut Tx,
    order_id: Uuid,
    status: Status,
    lines: &[StockLine],
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let released_at = (status == Status::Released).then_some(at);
    let inserted = sqlx::query(
        "INSERT INTO reservations (order_id, status, lines, reason, created_at, released_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $5)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(status.as_str())
    .bind(Json(lines))
    .bind(reason)
    .bind(at)
    .bind(released_at)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Mark a reservation (locked by [`reservation_for_update`]) released.
pub async fn mark_released(
    tx: &mut Tx,
    order_id: Uuid,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE reservations SET status = 'RELEASED', reason = $2, released_at = $3, updated_at = $3
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(reason)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Lock the stock rows of `skus` in ascending SKU order and return those that exist.
pub async fn lock_stock(tx: &mut Tx, skus: &[String]) -> Result<Vec<StockRow>, sqlx::Error> {
    let records: Vec<StockRecord> = sqlx::query_as(
        r#"SELECT sku, available, reserved FROM stock WHERE sku = ANY($1)
           ORDER BY sku COLLATE "C" FOR UPDATE"#,
    )
    .bind(skus)
    .fetch_all(&mut **tx)
    .await?;
    Ok(records.into_iter().map(StockRow::from).collect())
}

/// Move `lines` from available to reserved. The rows must be locked already (so the
/// decision that they fit still holds); the CHECK constraints are the last line of defence.
/// Returns how many SKUs were updated: fewer than `lines` means a row is missing.
pub async fn move_to_reserved(tx: &mut Tx, lines: &[StockLine]) -> Result<u64, sqlx::Error> {
    shift(tx, lines, 1).await
}

/// Move `lines` from reserved back to available (rows locked already). Returns how many SKUs
/// were updated.
pub async fn return_to_available(tx: &mut Tx, lines: &[StockLine]) -> Result<u64, sqlx::Error> {
    shift(tx, lines, -1).await
}

/// Move quantities towards reserved (`direction` 1) or back to available (-1), in one
/// statement.
async fn shift(tx: &mut Tx, lines: &[StockLine], direction: i32) -> Result<u64, sqlx::Error> {
    if lines.is_empty() {
        return Ok(0);
    }
    let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    let quantities: Vec<i32> = lines.iter().map(|l| l.quantity * direction).collect();
    let updated = sqlx::query(
        "UPDATE stock s
         SET available = s.available - l.quantity, reserved = s.reserved + l.quantity,
             version = s.version + 1, updated_at = now()
         FROM unnest($1::text[], $2::int[]) AS l(sku, quantity)
         WHERE s.sku = l.sku",
    )
    .bind(&skus)
    .bind(&quantities)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated)
}

/// One SKU's stock and version.
pub async fn get(pool: &PgPool, sku: &str) -> Result<Option<VersionedStock>, sqlx::Error> {
    let record: Option<VersionedRecord> =
        sqlx::query_as("SELECT sku, available, reserved, version FROM stock WHERE sku = $1")
            .bind(sku)
            .fetch_optional(pool)
            .await?;
    Ok(record.map(VersionedStock::from))
}

/// One SKU's stock and version, its row locked until the transaction ends: the single-row
/// case of [`lock_stock`], so HTTP writes and reservations of that SKU apply one at a time.
pub async fn stock_for_update(
    tx: &mut Tx,
    sku: &str,
) -> Result<Option<VersionedStock>, sqlx::Error> {
    let record: Option<VersionedRecord> = sqlx::query_as(
        "SELECT sku, available, reserved, version FROM stock WHERE sku = $1 FOR UPDATE",
    )
    .bind(sku)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(record.map(VersionedStock::from))
}

/// Set a SKU's available quantity, creating it (at version 1) if needed; what is reserved is
/// untouched. An existing row should be locked by [`stock_for_update`] first, so the caller's
/// precondition still holds when this applies.
pub async fn set_available(
    tx: &mut Tx,
    sku: &str,
    available: i32,
) -> Result<VersionedStock, sqlx::Error> {
    let record: VersionedRecord = sqlx::query_as(
        "INSERT INTO stock (sku, available, reserved) VALUES ($1, $2, 0)
         ON CONFLICT (sku) DO UPDATE
         SET available = EXCLUDED.available, version = stock.version + 1, updated_at = now()
         RETURNING sku, available, reserved, version",
    )
    .bind(sku)
    .bind(available)
    .fetch_one(&mut **tx)
    .await?;
    Ok(record.into())
}

/// Add `delta` to an existing SKU's available quantity in one statement (relative, so it
/// composes with concurrent writes instead of overwriting them). Returns `None` when the SKU
/// does not exist. The CHECK constraint refuses a negative result; callers check first under
/// [`stock_for_update`] to answer with a reason.
pub async fn add_available(
    tx: &mut Tx,
    sku: &str,
    delta: i32,
) -> Result<Option<VersionedStock>, sqlx::Error> {
    let record: Option<VersionedRecord> = sqlx::query_as(
        "UPDATE stock SET available = available + $2, version = version + 1, updated_at = now()
         WHERE sku = $1
         RETURNING sku, available, reserved, version",
    )
    .bind(sku)
    .bind(delta)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(record.map(VersionedStock::from))
}

/// Create the SKUs of `stock` that do not exist yet, with the given available quantity.
/// Existing SKUs are left alone, so seeding again at every start never resets live stock.
pub async fn seed(pool: &PgPool, stock: &[(&str, i32)]) -> Result<(), sqlx::Error> {
    let skus: Vec<&str> = stock.iter().map(|(sku, _)| *sku).collect();
    let quantities: Vec<i32> = stock.iter().map(|(_, available)| *available).collect();
    sqlx::query(
        "INSERT INTO stock (sku, available, reserved)
         SELECT sku, available, 0 FROM unnest($1::text[], $2::int[]) AS s(sku, available)
         ON CONFLICT (sku) DO NOTHING",
    )
    .bind(&skus)
    .bind(&quantities)
    .execute(pool)
    .await?;
    Ok(())
}
