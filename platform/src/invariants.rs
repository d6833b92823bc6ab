//! The invariants of the platform, checked directly in the service databases. Shared by the
//! fault tests (tests/support/invariants.rs, which adds the topic and provider checks) and
//! `sagaflow chaos`.
//!
//! - every order is terminal (no PENDING left) and every saga terminal, none FAILED unless
//!   allowed (exactly those FAILED, their orders PENDING);
//! - stock conserved: per SKU, available + reserved = initial, and reserved = quantities of
//!   approved orders (+ what FAILED sagas still hold);
//! - charges − refunds = the sum of approved orders;
//! - every outbox row of every database is published;
//! - no effect applied twice: one order per idempotency key, at most one reservation, one
//!   payment and one outcome notification per order, one notification per terminal order.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Pools;

/// The databases the invariants read (the query database is not one of them).
#[derive(Debug, Clone, Copy)]
pub struct Databases<'a> {
    pub order: &'a PgPool,
    pub inventory: &'a PgPool,
    pub payment: &'a PgPool,
    pub notification: &'a PgPool,
    pub saga: &'a PgPool,
}

impl<'a> From<&'a Pools> for Databases<'a> {
    fn from(pools: &'a Pools) -> Self {
        Databases {
            order: &pools.order,
            inventory: &pools.inventory,
            payment: &pools.payment,
            notification: &pools.notification,
            saga: &pools.saga,
        }
    }
}

impl<'a> Databases<'a> {
    /// The databases with an outbox, named.
    pub fn with_outbox(&self) -> [(&'static str, &'a PgPool); 5] {
        [
            ("order", self.order),
            ("inventory", self.inventory),
            ("payment", self.payment),
            ("notification", self.notification),
            ("saga", self.saga),
        ]
    }
}

/// How far the platform is from quiet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Settling {
    /// PENDING orders, those of allowed FAILED sagas excepted.
    pub pending_orders: i64,
    /// Sagas with a deadline (not terminal).
    pub open_sagas: i64,
    /// Outbox rows not yet published, all databases.
    pub outbox_backlog: i64,
    /// Terminal orders without their notification yet.
    pub missing_notifications: i64,
}

impl Settling {
    pub fn settled(&self) -> bool {
        *self == Settling::default()
    }
}

/// Where the platform stands: `failed` are the orders whose saga is allowed to end FAILED.
pub async fn settling(db: Databases<'_>, failed: &[Uuid]) -> sqlx::Result<Settling> {
    let pending_orders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE status = 'PENDING' AND id <> ALL($1)",
    )
    .bind(failed)
    .fetch_one(db.order)
    .await?;
    let open_sagas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sagas WHERE deadline IS NOT NULL")
            .fetch_one(db.saga)
            .await?;
    let mut outbox_backlog = 0;
    for (_, pool) in db.with_outbox() {
        outbox_backlog +=
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(pool)
                .await?;
    }
    let terminal: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'PENDING'")
        .fetch_one(db.order)
        .await?;
    let notified: i64 = sqlx::query_scalar("SELECT count(DISTINCT order_id) FROM notifications")
        .fetch_one(db.notification)
        .await?;
    Ok(Settling {
        pending_orders,
        open_sagas,
        outbox_backlog,
        missing_notifications: (terminal - notified).max(0),
    })
}

/// What the databases show once settled. `violations` is empty when every invariant holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    pub orders: i64,
    pub approved: i64,
    pub rejected: i64,
    pub pending: i64,
    pub sagas_non_terminal: i64,
    pub sagas_failed: Vec<Uuid>,
    pub outbox_unpublished: i64,
    /// Effects applied more than once (orders per key, notifications per order, …).
    pub duplicate_effects: i64,
    pub stock_conserved: bool,
    pub money_conserved: bool,
    /// Net money taken: charges − refunds, in cents (orders of allowed FAILED sagas excluded).
    pub net_charged_cents: i64,
    pub approved_total_cents: i64,
    /// Recorded charges (payments with a charge id).
    pub charges: i64,
    pub notifications: i64,
    pub violations: Vec<String>,
}

/// Check every invariant once (call it when [`settling`] says settled).
pub async fn check(
    db: Databases<'_>,
    initial_stock: &HashMap<String, i64>,
    failed: &[Uuid],
) -> sqlx::Result<Findings> {
    let mut f = Findings {
        stock_conserved: true,
        money_conserved: true,
        ..Findings::default()
    };
    check_terminal_states(&mut f, db, failed).await?;
    check_stock(&mut f, db, initial_stock, failed).await?;
    check_money(&mut f, db, failed).await?;
    check_outboxes(&mut f, db).await?;
    check_effects_once(&mut f, db).await?;
    Ok(f)
}

/// Every order ended and every saga is terminal, but for the FAILED sagas allowed (whose
/// orders stay PENDING).
async fn check_terminal_states(
    f: &mut Findings,
    db: Databases<'_>,
    failed: &[Uuid],
) -> sqlx::Result<()> {
    let (orders, approved, rejected, pending): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'APPROVED'),
                count(*) FILTER (WHERE status = 'REJECTED'), count(*) FILTER (WHERE status = 'PENDING')
           FROM orders",
    )
    .fetch_one(db.order)
    .await?;
    (f.orders, f.approved, f.rejected, f.pending) = (orders, approved, rejected, pending);
    f.sagas_non_terminal =
        sqlx::query_scalar("SELECT count(*) FROM sagas WHERE deadline IS NOT NULL")
            .fetch_one(db.saga)
            .await?;
    if f.sagas_non_terminal > 0 {
        f.violations
            .push(format!("{} sagas are not terminal", f.sagas_non_terminal));
    }
    f.sagas_failed = sqlx::query_scalar("SELECT order_id FROM sagas WHERE state = 'FAILED'")
        .fetch_all(db.saga)
        .await?;
    let failed_sagas: BTreeSet<Uuid> = f.sagas_failed.iter().copied().collect();
    let allowed: BTreeSet<Uuid> = failed.iter().copied().collect();
    if failed_sagas != allowed {
        f.violations.push(format!(
            "no saga may end FAILED but the allowed ones: FAILED {failed_sagas:?}, allowed {allowed:?}"
        ));
    }
    let failed_pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING' AND id = ANY($1)")
            .bind(failed)
            .fetch_one(db.order)
            .await?;
    if failed_pending != failed.len() as i64 {
        f.violations.push(format!(
            "{} of {} orders of FAILED sagas are PENDING (the others were approved or rejected)",
            failed_pending,
            failed.len()
        ));
    }
    if pending != failed_pending {
        f.violations
            .push(format!("{} orders are PENDING", pending - failed_pending));
    }

    Ok(())
}

/// Per SKU: available + reserved = initial, and reserved = sold (+ held by FAILED sagas).
async fn check_stock(
    f: &mut Findings,
    db: Databases<'_>,
    initial_stock: &HashMap<String, i64>,
    failed: &[Uuid],
) -> sqlx::Result<()> {
    let mut sold: HashMap<String, i64> = HashMap::new();
    let approved_items: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT items FROM orders WHERE status = 'APPROVED'")
            .fetch_all(db.order)
            .await?;
    let held_lines: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT lines FROM reservations WHERE status = 'RESERVED' AND order_id = ANY($1)",
    )
    .bind(failed)
    .fetch_all(db.inventory)
    .await?;
    for line in approved_items
        .iter()
        .chain(&held_lines)
        .filter_map(|v| v.as_array())
        .flatten()
    {
        if let (Some(sku), Some(quantity)) = (line["sku"].as_str(), line["quantity"].as_i64()) {
            *sold.entry(sku.to_string()).or_default() += quantity;
        }
    }
    for (sku, initial) in initial_stock {
        let row: Option<(i32, i32)> =
            sqlx::query_as("SELECT available, reserved FROM stock WHERE sku = $1")
                .bind(sku)
                .fetch_optional(db.inventory)
                .await?;
        let (available, reserved) = row.map_or((0, 0), |(a, r)| (a as i64, r as i64));
        if available + reserved != *initial {
            f.stock_conserved = false;
            f.violations.push(format!(
                "{sku}: available {available} + reserved {reserved} != initial {initial}"
            ));
        }
        let expected = sold.get(sku).copied().unwrap_or(0);
        if reserved != expected {
            f.stock_conserved = false;
            f.violations.push(format!(
                "{sku}: reserved {reserved} != sold (+ held by FAILED sagas) {expected}"
            ));
        }
    }

    Ok(())
}

/// Charges − refunds = the approved orders' totals (orders of FAILED sagas left out).
async fn check_money(f: &mut Findings, db: Databases<'_>, failed: &[Uuid]) -> sqlx::Result<()> {
    f.approved_total_cents = sqlx::query_scalar(
        "SELECT COALESCE(sum(total_cents), 0)::bigint FROM orders WHERE status = 'APPROVED'",
    )
    .fetch_one(db.order)
    .await?;
    f.net_charged_cents = sqlx::query_scalar(
        "SELECT (COALESCE(sum(amount_cents) FILTER (WHERE charge_id IS NOT NULL), 0)
               - COALESCE(sum(amount_cents) FILTER (WHERE refund_id IS NOT NULL), 0))::bigint
           FROM payments WHERE order_id <> ALL($1)",
    )
    .bind(failed)
    .fetch_one(db.payment)
    .await?;
    if f.net_charged_cents != f.approved_total_cents {
        f.money_conserved = false;
        f.violations.push(format!(
            "charges - refunds = {} cents, approved orders total {} cents",
            f.net_charged_cents, f.approved_total_cents
        ));
    }
    f.charges = sqlx::query_scalar("SELECT count(*) FROM payments WHERE charge_id IS NOT NULL")
        .fetch_one(db.payment)
        .await?;

    Ok(())
}

/// Every outbox row published.
async fn check_outboxes(f: &mut Findings, db: Databases<'_>) -> sqlx::Result<()> {
    for (name, pool) in db.with_outbox() {
        let unpublished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(pool)
                .await?;
        if unpublished > 0 {
            f.violations
                .push(format!("{name}: {unpublished} outbox rows unpublished"));
        }
        f.outbox_unpublished += unpublished;
    }

    Ok(())
}

/// No effect applied twice: one idempotency key per order, one notification per terminal
/// order, no reservation or charge without its order. Needs the terminal counts.
async fn check_effects_once(f: &mut Findings, db: Databases<'_>) -> sqlx::Result<()> {
    let orders_without_one_key: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o
           LEFT JOIN (SELECT order_id, count(*) AS n FROM idempotency_keys GROUP BY order_id) k
                  ON k.order_id = o.id
          WHERE k.n IS DISTINCT FROM 1",
    )
    .fetch_one(db.order)
    .await?;
    if orders_without_one_key > 0 {
        f.violations.push(format!(
            "{orders_without_one_key} orders do not have exactly one idempotency key"
        ));
    }
    let double_notified: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id FROM notifications GROUP BY order_id HAVING count(*) > 1) d",
    )
    .fetch_one(db.notification)
    .await?;
    if double_notified > 0 {
        f.violations.push(format!(
            "{double_notified} orders were notified more than once"
        ));
    }
    f.notifications = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(db.notification)
        .await?;
    let terminal = f.orders - f.pending;
    if f.notifications != terminal {
        f.violations.push(format!(
            "{} notifications for {terminal} terminal orders",
            f.notifications
        ));
    }
    // One reservation and one payment per order are primary keys; count what the tables
    // hold beyond one per known order anyway (a reservation or charge for an unknown order
    // would be an effect without a cause).
    let order_ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(db.order)
        .await?;
    let stray_reservations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reservations WHERE lines <> '[]'::jsonb AND order_id <> ALL($1)",
    )
    .bind(&order_ids)
    .fetch_one(db.inventory)
    .await?;
    let stray_charges: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE charge_id IS NOT NULL AND order_id <> ALL($1)",
    )
    .bind(&order_ids)
    .fetch_one(db.payment)
    .await?;
    if stray_reservations + stray_charges > 0 {
        f.violations.push(format!(
            "{stray_reservations} reservations and {stray_charges} charges for unknown orders"
        ));
    }
    f.duplicate_effects = orders_without_one_key
        + double_notified
        + (f.notifications - terminal).max(0)
        + stray_reservations
        + stray_charges;
    Ok(())
}

/// Of the orders a client saw acknowledged: those missing from the order database, and those
/// not terminal.
pub async fn acknowledged_orders(
    order: &PgPool,
    acknowledged: &[Uuid],
) -> sqlx::Result<(Vec<Uuid>, Vec<Uuid>)> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM orders WHERE id = ANY($1)")
            .bind(acknowledged)
            .fetch_all(order)
            .await?;
    let found: HashMap<Uuid, String> = rows.into_iter().collect();
    let missing = acknowledged
        .iter()
        .filter(|id| !found.contains_key(id))
        .copied()
        .collect();
    let pending = acknowledged
        .iter()
        .filter(|id| found.get(id).is_some_and(|s| s == "PENDING"))
        .copied()
        .collect();
    Ok((missing, pending))
}
