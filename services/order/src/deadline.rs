//! The order deadline (issue 16): every order reaches a terminal status within
//! `ORDER_DEADLINE_SECS` of being placed, saga or no saga.
//!
//! The saga decides an order only if it ever hears of it, and its deadlines live on saga rows:
//! an OrderPlaced the orchestrator dead-letters (a schema reference it does not know during a
//! rolling upgrade, an undecodable value, a handler that failed five times) or the relay parks
//! starts no saga, and its order would stay PENDING for ever. So this sweeper rejects every
//! order still PENDING `ORDER_DEADLINE_SECS` after its `created_at`: REJECTED with
//! [`deadline_reason`] and OrderRejected enqueued, in one transaction per order — the code that
//! applies the saga's RejectOrder ([`handler::conclude`]). The deadline is computed from the
//! configuration at each sweep, so orders placed before it existed have one too (migration
//! 0007 indexes PENDING orders by `created_at`).
//!
//! A saga still running for an expired order cannot approve it any more: the order service
//! answers its ApproveOrder with OrderRejected, and an OrderRejected the saga did not ask for
//! makes it compensate (see [`handler`]). That also covers an OrderPlaced that reaches the
//! orchestrator after the expiry (a parked row handed back, a dead letter replayed by an
//! operator): its saga starts, is told the order is rejected — by the OrderRejected queued
//! behind it on the order's partition, or at the latest by the answer to its ApproveOrder — and
//! gives back whatever stock and money it took.
//!
//! One order that cannot be expired (a row that does not decode, …) must not hold up the
//! others: it is logged with its id and counted (`order_deadline_failures_total`), and retried
//! only after [`RETRY_FAILED_AFTER`] (`deadline_retry_at`), so that it is not the first row of
//! every sweep. A database that cannot be reached ends the round instead; a lock conflict
//! leaves the order to the next one.

use std::time::Duration;

use sagaflow_messaging::Origin;
use sagaflow_messaging::consumer::HandlerError;
use sagaflow_runtime::{db, periodic};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::domain::OrderStatus;
use crate::domain::deadline_reason;
use crate::store;
use crate::{NAME, OrderConfig, handler};

/// Overdue orders looked at per statement; a full batch is followed by the next one at once.
const SWEEP_BATCH: i64 = 100;
/// When an order whose expiry failed is tried again.
pub(crate) const RETRY_FAILED_AFTER: Duration = Duration::from_secs(60);

/// Reject the orders past their deadline every `order_sweep_interval_ms`, until `shutdown`. A
/// failed round is logged and the next one tries again.
pub(crate) async fn expire_overdue_orders(
    pool: PgPool,
    config: OrderConfig,
    shutdown: CancellationToken,
) {
    let period = Duration::from_millis(config.order_sweep_interval_ms.max(100));
    periodic::every(period, shutdown.clone(), || async {
        // Full batches: more are overdue, go on at once.
        loop {
            match sweep_once(&pool, config.order_deadline()).await {
                Ok(handled) if handled as i64 >= SWEEP_BATCH && !shutdown.is_cancelled() => {}
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "order deadline sweep failed; next round retries");
                    break;
                }
            }
        }
    })
    .await
}

/// Expire up to [`SWEEP_BATCH`] overdue orders, each in its own transaction; returns how many
/// were handled (expired, or failed and postponed).
pub(crate) async fn sweep_once(pool: &PgPool, deadline: Duration) -> Result<usize, sqlx::Error> {
    let reason = deadline_reason(deadline);
    let mut handled = 0;
    for order_id in store::overdue_orders(pool, deadline, SWEEP_BATCH).await? {
        match expire(pool, order_id, deadline, &reason).await {
            Ok(false) => {}
            Ok(true) => {
                metrics::counter!("order_deadline_expired_total").increment(1);
                info!(%order_id, %reason, "order deadline passed: order REJECTED");
                handled += 1;
            }
            Err(HandlerError::Database(e)) if db::is_unavailable(&e) => return Err(e),
            Err(HandlerError::Database(e)) if db::is_conflict(&e) => {
                warn!(%order_id, error = %e, "order deadline conflicted with a concurrent change; retried next round");
            }
            Err(e) => {
                metrics::counter!("order_deadline_failures_total").increment(1);
                error!(%order_id, error = %e, retry_in_s = RETRY_FAILED_AFTER.as_secs(), "order deadline failed to fire; skipping the order and postponing it");
                match store::postpone_deadline(pool, order_id, RETRY_FAILED_AFTER).await {
                    Ok(()) => handled += 1,
                    Err(e) if db::is_unavailable(&e) => return Err(e),
                    Err(e) => error!(%order_id, error = %e, "postponing an order deadline failed"),
                }
            }
        }
    }
    Ok(handled)
}

/// Reject one overdue order in a transaction of its own; `false` if it is no longer PENDING
/// and overdue, or is locked by another transaction.
async fn expire(
    pool: &PgPool,
    order_id: Uuid,
    deadline: Duration,
    reason: &str,
) -> Result<bool, HandlerError> {
    let mut tx = pool.begin().await?;
    let Some(order) = store::lock_overdue(&mut tx, order_id, deadline).await? else {
        return Ok(false);
    };
    let origin = Origin {
        source: NAME,
        correlation_id: order_id,
        causation_id: None,
        traceparent: None,
    };
    handler::conclude(
        &mut tx,
        &order,
        OrderStatus::Rejected,
        Some(reason),
        &origin,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
