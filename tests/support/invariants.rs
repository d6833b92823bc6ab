//! The invariants every fault test ends with. A violation fails the test with what broke.
//!
//! - every committed order is terminal (no PENDING left) and every saga terminal, none FAILED
//!   unless allowed ([`check_allowing_failed`]: exactly those FAILED, their orders PENDING);
//! - stock conserved: per SKU, available + reserved = initial, and reserved = quantities of
//!   approved orders;
//! - charges − refunds = the sum of approved orders, and the provider agrees;
//! - every outbox row of every database is published and on its topic;
//! - no effect applied twice: at most one charge per order, one notification per order event.
//!
//! The database checks live in `sagaflow_platform::invariants` (shared with `sagaflow chaos`);
//! the provider's ledger and the topics are checked here.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sagaflow_platform::invariants::{self, Databases};

use crate::kafka_probe::read_until;
use crate::platform::TestApp;
use crate::wait;

#[derive(Debug)]
pub struct Report {
    pub orders: i64,
    pub approved: i64,
    pub rejected: i64,
    pub published_messages: usize,
    /// When every order and saga was seen terminal — before the checks that follow (reading
    /// every topic back can take seconds), so liveness bounds measure the platform, not them.
    pub settled_at: std::time::Instant,
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
///
/// The database checks are `sagaflow_platform::invariants` (shared with `sagaflow chaos`); this
/// adds what only a test can see: the provider's ledger and the topics.
pub async fn check_allowing_failed(
    app: &TestApp,
    initial_stock: &HashMap<String, i64>,
    settle: Duration,
    failed: &[uuid::Uuid],
) -> Report {
    let db = Databases::from(&app.pools);
    wait::until("every order and saga to be terminal", settle, || async {
        // A restarted PostgreSQL may need a moment: a failed query is "not yet".
        match invariants::settling(db, failed).await {
            Ok(s) if s.settled() => Some(()),
            Ok(s) => {
                eprintln!(
                    "not settled: {} pending orders, {} open sagas, {} unpublished outbox rows, {} notifications missing",
                    s.pending_orders, s.open_sagas, s.outbox_backlog, s.missing_notifications
                );
                None
            }
            Err(_) => None,
        }
    })
    .await;
    let settled_at = std::time::Instant::now();
    let mut findings = None;
    for _ in 0..50 {
        if let Ok(f) = invariants::check(db, initial_stock, failed).await {
            findings = Some(f);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let findings = findings.expect("the invariant queries failed repeatedly");
    assert!(
        findings.violations.is_empty(),
        "invariants violated: {:#?}",
        findings.violations
    );
    let stats = app.provider.stats();
    assert_eq!(
        stats.charges as i64, findings.charges,
        "the provider charged once per recorded charge"
    );
    if failed.is_empty() {
        // The provider's own ledger, net: money still taken is exactly one charge per
        // approved order (every other charge was refunded).
        assert_eq!(
            stats.charges as i64 - stats.refunds as i64,
            findings.approved,
            "the provider's net charges differ from the approved orders: {stats:?}"
        );
    }

    // Every event of every database is on its topic: read each topic until every published
    // outbox row's message id has been seen (a deadline, not a watermark snapshot: the broker
    // may acknowledge a write a moment before its high watermark shows it).
    let mut expected: HashMap<String, BTreeSet<uuid::Uuid>> = HashMap::new();
    for (_, pool) in db.with_outbox() {
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
        orders: findings.orders,
        approved: findings.approved,
        rejected: findings.rejected,
        published_messages: published,
        settled_at,
    }
}
