//! Runs `decide` against the store: the reply consumer and the deadline sweeper.
//!
//! Each transition, its history row, its outgoing commands (outbox) and — for messages — the
//! inbox row commit in one transaction, under the saga's row lock. Several orchestrators may
//! run: messages of one saga arrive on one partition, and the sweeper claims overdue sagas
//! with `FOR UPDATE SKIP LOCKED`, one transaction per saga so that one that cannot fire does
//! not hold up the others.

use sagaflow_schemas::MessageType;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sagaflow_messaging::consumer::{Handler, HandlerError, Incoming};
use sagaflow_messaging::{Origin, OutboxBatch, OutboxError};
use sagaflow_runtime::db::{self, Tx};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::NAME;
use crate::saga::{Decision, Policy, Saga, State, Trigger, decide};
use crate::store::{self, HistoryEntry};

/// A transition that was written, told — counted, logged, alerted — only once its
/// transaction has committed: a batch that rolls back and is applied again one message at a
/// time, or a conflict retried, must not count a transition twice nor page twice for one
/// FAILED saga.
#[derive(Debug)]
pub struct Transitioned {
    order_id: Uuid,
    to: State,
    note: String,
    alert: bool,
    /// When the saga started (OrderPlaced's arrival): the duration of an ended saga.
    started: DateTime<Utc>,
}

impl Transitioned {
    fn tell(self) {
        let Transitioned {
            order_id,
            to,
            note,
            alert,
            started,
        } = self;
        metrics::counter!("saga_transitions_total", "to" => to.as_str()).increment(1);
        if alert {
            metrics::counter!("saga_failed_total").increment(1);
            error!(alert = true, %order_id, %note, "ALERT: saga FAILED and needs an operator");
        } else if to.is_terminal() {
            info!(%order_id, state = to.as_str(), "saga finished");
        }
        if to.is_terminal() {
            // From OrderPlaced's arrival to the end, by outcome: the saga latency panel.
            let seconds = (Utc::now() - started).to_std().unwrap_or_default();
            metrics::histogram!("saga_duration_seconds", "outcome" => to.as_str())
                .record(seconds.as_secs_f64());
        }
    }
}

/// Apply one decision to the saga inside `tx`; the transition made, if any, to tell after
/// the commit.
async fn apply(
    tx: &mut Tx,
    current: Option<&Saga>,
    trigger: Trigger<'_>,
    origin: Origin,
    message_id: Option<Uuid>,
    policy: &Policy,
) -> Result<Option<Transitioned>, HandlerError> {
    let trigger_name = match trigger {
        Trigger::Message(m) => m.message_type(),
        Trigger::Deadline => "DEADLINE",
    };
    let order_id = origin.correlation_id;
    match decide(current, trigger, Utc::now(), policy) {
        Decision::Ignore(note) => {
            if let Some(saga) = current {
                store::record(
                    tx,
                    HistoryEntry {
                        order_id,
                        from: Some(saga.state),
                        to: saga.state,
                        trigger: trigger_name,
                        message_id,
                        note: &note,
                        commands: vec![],
                    },
                )
                .await?;
            }
            Ok(None)
        }
        Decision::Transition {
            saga,
            commands,
            note,
            alert,
        } => {
            let mut outgoing = OutboxBatch::default();
            for command in &commands {
                outgoing.push(command, &origin).map_err(OutboxError::from)?;
            }
            let started = store::transition(
                tx,
                &saga,
                origin.traceparent.as_deref(),
                HistoryEntry {
                    order_id,
                    from: current.map(|s| s.state),
                    to: saga.state,
                    trigger: trigger_name,
                    message_id,
                    note: &note,
                    commands: commands
                        .iter()
                        .map(|c| c.message_type().to_string())
                        .collect(),
                },
                &outgoing,
            )
            .await?;
            Ok(Some(Transitioned {
                order_id,
                to: saga.state,
                note,
                alert,
                started,
            }))
        }
    }
}

/// Replies and order events.
pub struct SagaReplies {
    pub policy: Policy,
}

impl Handler for SagaReplies {
    fn accepts(&self, message_type: MessageType) -> bool {
        matches!(
            message_type,
            MessageType::OrderPlaced
                | MessageType::OrderApproved
                | MessageType::OrderRejected
                | MessageType::StockReserved
                | MessageType::StockRejected
                | MessageType::StockReleased
                | MessageType::PaymentAuthorized
                | MessageType::PaymentDeclined
                | MessageType::PaymentRefunded
        )
    }

    /// Replies of one saga come on three topics, so on three lanes: each batch locks its
    /// sagas' order ids first (see `consumer`), and has no effect outside the transaction.
    fn max_batch(&self) -> usize {
        sagaflow_messaging::consumer::DEFAULT_MAX_BATCH
    }

    type Report = Option<Transitioned>;

    async fn handle(
        &self,
        tx: &mut Tx,
        incoming: &Incoming,
    ) -> Result<Option<Transitioned>, HandlerError> {
        let order_id = incoming.message.order_id();
        let current = store::lock(tx, order_id).await?;
        let mut origin = Origin::caused_by(NAME, &incoming.envelope);
        origin.correlation_id = order_id;
        apply(
            tx,
            current.as_ref().map(|(saga, _)| saga),
            Trigger::Message(&incoming.message),
            origin,
            Some(incoming.envelope.message_id),
            &self.policy,
        )
        .await
    }

    fn committed(&self, reports: Vec<Option<Transitioned>>) {
        reports.into_iter().flatten().for_each(Transitioned::tell);
    }
}

/// Fire deadlines until `shutdown`. Also refreshes the gauges `sagas{state}` and
/// `saga_oldest_overdue_seconds`.
pub async fn sweep_deadlines(
    pool: PgPool,
    policy: Policy,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks: u64 = 0;
    let mut last_retention = None::<std::time::Instant>;
    while !shutdown.is_cancelled() {
        match sweep_once(&pool, &policy).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(e) => warn!(error = %e, "deadline sweep failed"),
        }
        if ticks.is_multiple_of(8) {
            record_gauges(&pool).await;
        }
        if last_retention.is_none_or(|at| at.elapsed() >= RETENTION_EVERY) {
            last_retention = Some(std::time::Instant::now());
            delete_ended(&pool, &policy).await;
        }
        ticks += 1;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Register the saga counters at zero: a counter born at 1 by its first increment has no
/// earlier sample, so `increase()` would miss the first FAILED saga and its alert not fire.
pub fn zero_metrics() {
    metrics::counter!("saga_failed_total").increment(0);
    metrics::counter!("saga_deadline_failures_total").increment(0);
    metrics::counter!("sagas_deleted_total").increment(0);
}

/// How often ended sagas past the retention are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Delete the sagas that ended more than the retention ago (`sagas_deleted_total`).
async fn delete_ended(pool: &PgPool, policy: &Policy) {
    let retention = policy.retention.to_std().unwrap_or(Duration::MAX);
    match store::delete_ended(pool, retention).await {
        Ok(0) => {}
        Ok(n) => {
            metrics::counter!("sagas_deleted_total").increment(n);
            info!(sagas = n, "ended sagas past the retention deleted");
        }
        Err(e) => debug!(error = %e, "saga retention cleanup failed"),
    }
}

/// Sagas in flight and FAILED by state, and how late the most overdue one is.
async fn record_gauges(pool: &PgPool) {
    if let Ok(counts) = store::count_by_state(pool).await {
        // Ended sagas are not counted (see store::count_by_state), FAILED ones are.
        for state in State::ALL
            .iter()
            .filter(|s| !s.is_terminal() || **s == State::Failed)
        {
            let n = counts
                .iter()
                .find(|(s, _)| s == state.as_str())
                .map_or(0, |(_, n)| *n);
            metrics::gauge!("sagas", "state" => state.as_str()).set(n as f64);
        }
    }
    if let Ok(seconds) = store::oldest_overdue_seconds(pool).await {
        metrics::gauge!("saga_oldest_overdue_seconds").set(seconds);
    }
}

/// Overdue sagas looked at per sweep.
const SWEEP_BATCH: i64 = 100;

/// Fire the deadlines of up to 100 overdue sagas, each in its own transaction; returns how
/// many were handled (fired, or failed and postponed).
///
/// One saga whose deadline cannot fire (a state this version does not know, corrupt data, a
/// command that does not encode) must not hold up the others: it is reported — an error log
/// with its order id and `saga_deadline_failures_total` — and its deadline is pushed back
/// ([`store::postpone`]), otherwise it would be the most overdue row and picked first for
/// ever. Its row is left as it is for an operator. A database that cannot be reached ends the
/// sweep instead (nothing is postponed for an outage); a deadlock or serialization conflict
/// just leaves the saga for the next sweep.
pub async fn sweep_once(pool: &PgPool, policy: &Policy) -> Result<usize, HandlerError> {
    let overdue = store::overdue_ids(pool, SWEEP_BATCH).await?;
    let mut handled = 0;
    for order_id in overdue {
        match fire(pool, policy, order_id).await {
            Ok(fired) => handled += usize::from(fired),
            Err(HandlerError::Database(e)) if db::is_unavailable(&e) => return Err(e.into()),
            Err(HandlerError::Database(e)) if db::is_conflict(&e) => {
                warn!(%order_id, error = %e, "deadline conflicted with a concurrent change; retried next sweep");
            }
            Err(e) => {
                metrics::counter!("saga_deadline_failures_total").increment(1);
                error!(%order_id, error = %e, "saga deadline failed to fire; skipping the saga and postponing its deadline");
                match postpone(pool, order_id).await {
                    Ok(retry_at) => {
                        info!(%order_id, ?retry_at, "saga deadline postponed");
                        handled += 1;
                    }
                    Err(e) if db::is_unavailable(&e) => return Err(e.into()),
                    // Not counted as handled: the sweep does not start over at once.
                    Err(e) => error!(%order_id, error = %e, "postponing a saga deadline failed"),
                }
            }
        }
    }
    Ok(handled)
}

/// Fire one saga's deadline in a transaction of its own; `false` if it is no longer overdue
/// or another orchestrator holds it.
async fn fire(pool: &PgPool, policy: &Policy, order_id: Uuid) -> Result<bool, HandlerError> {
    let mut tx = pool.begin().await?;
    let Some((saga, traceparent)) = store::lock_overdue(&mut tx, order_id).await? else {
        return Ok(false);
    };
    let origin = Origin {
        source: NAME,
        correlation_id: saga.order_id,
        causation_id: None,
        traceparent,
    };
    let transitioned = apply(
        &mut tx,
        Some(&saga),
        Trigger::Deadline,
        origin,
        None,
        policy,
    )
    .await?;
    tx.commit().await?;
    if let Some(transitioned) = transitioned {
        transitioned.tell();
    }
    Ok(true)
}

/// [`store::postpone`] in a transaction of its own (the failed one was rolled back).
async fn postpone(pool: &PgPool, order_id: Uuid) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let retry_at = store::postpone(&mut tx, order_id).await?;
    tx.commit().await?;
    Ok(retry_at)
}
