//! The invariants every fault test ends with. A violation fails the test with what broke.
//!
//! - every committed order is terminal (no PENDING left) and every saga terminal, none FAILED
//!   unless allowed ([`check_allowing_failed`]: exactly those FAILED, their orders PENDING);
//! - stock conserved: per SKU, available + reserved = initial, and reserved = quantities of
//!   approved orders;
//! - charges − refunds = the sum of approved orders, and the provider agrees;
//! - every outbox row of every database is published and on its topic;
//! - no effect applied twice: at most one charge per order, one notification per order event.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sqlx::PgPool;

use crate::kafka_probe::read_until;
use crate::platform::TestApp;
use crate::wait;

#[derive(Debug, Default)]
pub struct Report {
    pub orders: i64,
    pub approved: i64,
    pub rejected: i64,
    pub published_messages: usize,
}

/// Wait until every order and saga is terminal (within `settle`), then check everything.
pub async fn check(
    app: &TestApp,
    initial_stock: &HashMap<String, i64>,
    settle: Duration,
) -> Report {
    check_allowing_failed(app, initial_stock, settle, &[]).await
}

/// [`check`], where exactly the sagas of `failed` ended FAILED (a compensation that never
/// completed; the caller asserts the alert). Their orders stay PENDING without a notification,
/// and what they still hold — stock reservations, money — is left for an operator: stock is
/// still conserved, and reserved = sold + still held by those orders; their payments are left
/// out of the money balance.
pub async fn check_allowing_failed(
    app: &TestApp,
    initial_stock: &HashMap<String, i64>,
    settle: Duration,
    failed: &[uuid::Uuid],
) -> Report {
    wait::until("every order and saga to be terminal", settle, || async {
        let pending: i64 = scalar_except(&app.pools.order, "SELECT count(*) FROM orders WHERE status = 'PENDING' AND id <> ALL($1)", failed).await;
        let open: i64 = scalar(&app.pools.saga, "SELECT count(*) FROM sagas WHERE deadline IS NOT NULL").await;
        let backlog = outbox_backlog(app).await;
        let settled = pending == 0 && open == 0 && backlog == 0;
        if !settled {
            eprintln!("not settled: {pending} pending orders, {open} open sagas, {backlog} unpublished outbox rows");
        }
        settled.then_some(())
    })
    .await;
    let failed_sagas: BTreeSet<uuid::Uuid> =
        sqlx::query_scalar("SELECT order_id FROM sagas WHERE state = 'FAILED'")
            .fetch_all(&app.pools.saga)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let allowed: BTreeSet<uuid::Uuid> = failed.iter().copied().collect();
    assert_eq!(failed_sagas, allowed, "no saga FAILED but the allowed ones");
    let failed_pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING' AND id = ANY($1)")
            .bind(failed)
            .fetch_one(&app.pools.order)
            .await
            .unwrap();
    assert_eq!(
        failed_pending,
        failed.len() as i64,
        "the order of a FAILED saga is neither approved nor rejected"
    );

    // Stock.
    let approved_lines: Vec<(serde_json::Value,)> =
        sqlx::query_as("SELECT items FROM orders WHERE status = 'APPROVED'")
            .fetch_all(&app.pools.order)
            .await
            .unwrap();
    let mut sold: HashMap<String, i64> = HashMap::new();
    for (items,) in approved_lines {
        for item in items.as_array().unwrap() {
            *sold
                .entry(item["sku"].as_str().unwrap().to_string())
                .or_default() += item["quantity"].as_i64().unwrap();
        }
    }
    // Still reserved for the orders of FAILED sagas (their release never happened).
    let held_lines: Vec<(serde_json::Value,)> = sqlx::query_as(
        "SELECT lines FROM reservations WHERE status = 'RESERVED' AND order_id = ANY($1)",
    )
    .bind(failed)
    .fetch_all(&app.pools.inventory)
    .await
    .unwrap();
    for (lines,) in held_lines {
        for line in lines.as_array().unwrap() {
            *sold
                .entry(line["sku"].as_str().unwrap().to_string())
                .or_default() += line["quantity"].as_i64().unwrap();
        }
    }
    for (sku, initial) in initial_stock {
        let (available, reserved): (i32, i32) =
            sqlx::query_as("SELECT available, reserved FROM stock WHERE sku = $1")
                .bind(sku)
                .fetch_one(&app.pools.inventory)
                .await
                .unwrap();
        assert_eq!(
            (available + reserved) as i64,
            *initial,
            "{sku}: stock conserved"
        );
        assert_eq!(
            reserved as i64,
            sold.get(sku).copied().unwrap_or(0),
            "{sku}: reserved = sold (+ held by FAILED sagas)"
        );
    }

    // Money.
    let approved_total: i64 = scalar(
        &app.pools.order,
        "SELECT COALESCE(sum(total_cents), 0)::bigint FROM orders WHERE status = 'APPROVED'",
    )
    .await;
    let net: i64 = scalar_except(
        &app.pools.payment,
        "SELECT (COALESCE(sum(amount_cents) FILTER (WHERE charge_id IS NOT NULL), 0)
               - COALESCE(sum(amount_cents) FILTER (WHERE refund_id IS NOT NULL), 0))::bigint
           FROM payments WHERE order_id <> ALL($1)",
        failed,
    )
    .await;
    assert_eq!(net, approved_total, "charges - refunds = approved totals");
    let charges: i64 = scalar(
        &app.pools.payment,
        "SELECT count(*) FROM payments WHERE charge_id IS NOT NULL",
    )
    .await;
    let stats = app.provider.stats();
    assert_eq!(
        stats.charges as i64, charges,
        "the provider charged once per recorded charge"
    );

    // Notifications: one per terminal order, never two.
    let notifications: i64 = scalar(
        &app.pools.notification,
        "SELECT count(*) FROM notifications",
    )
    .await;
    let (orders, approved, rejected): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'APPROVED'), count(*) FILTER (WHERE status = 'REJECTED') FROM orders",
    )
    .fetch_one(&app.pools.order)
    .await
    .unwrap();
    let terminal_orders = orders - failed.len() as i64;
    wait::until("one notification per terminal order", settle, || async {
        let n: i64 = scalar(
            &app.pools.notification,
            "SELECT count(*) FROM notifications",
        )
        .await;
        (n == terminal_orders).then_some(())
    })
    .await;
    assert!(notifications <= terminal_orders);

    // Every event of every database is on its topic: read each topic until every published
    // outbox row's message id has been seen (a deadline, not a watermark snapshot: the broker
    // may acknowledge a write a moment before its high watermark shows it).
    let mut expected: HashMap<String, BTreeSet<uuid::Uuid>> = HashMap::new();
    for pool in databases(app) {
        let rows: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT message_id, topic FROM outbox WHERE published_at IS NOT NULL")
                .fetch_all(pool)
                .await
                .unwrap();
        for (id, topic) in rows {
            expected.entry(topic).or_default().insert(id);
        }
    }
    let mut published = 0;
    for (topic, ids) in &expected {
        let ids_of = |records: &[crate::kafka_probe::Record]| -> BTreeSet<uuid::Uuid> {
            records
                .iter()
                .filter_map(|r| {
                    sagaflow_schemas::Envelope::from_headers(
                        r.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                    )
                    .ok()
                    .map(|e| e.message_id)
                })
                .collect()
        };
        read_until(&app.kafka, topic, Duration::from_secs(60), |records| {
            ids_of(records).is_superset(ids)
        })
        .await;
        published += ids.len();
    }
    Report {
        orders,
        approved,
        rejected,
        published_messages: published,
    }
}

fn databases(app: &TestApp) -> [&PgPool; 5] {
    [
        &app.pools.order,
        &app.pools.inventory,
        &app.pools.payment,
        &app.pools.notification,
        &app.pools.saga,
    ]
}

async fn outbox_backlog(app: &TestApp) -> i64 {
    let mut total = 0;
    for pool in databases(app) {
        total += scalar(
            pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await;
    }
    total
}

/// [`scalar`] with the ids of FAILED sagas' orders bound as `$1`.
async fn scalar_except(pool: &PgPool, sql: &'static str, failed: &[uuid::Uuid]) -> i64 {
    for _ in 0..50 {
        if let Ok(value) = sqlx::query_scalar::<_, i64>(sql)
            .bind(failed)
            .fetch_one(pool)
            .await
        {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("query failed repeatedly: {sql}");
}

async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    // A restarted PostgreSQL may need a moment: retry a few times.
    for _ in 0..50 {
        if let Ok(value) = sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("query failed repeatedly: {sql}");
}
