//! Runs `decide` against the store: the reply consumer and the deadline sweeper.
//!
//! Each transition, its history row, its outgoing commands (outbox) and — for messages — the
//! inbox row commit in one transaction, under the saga's row lock. Several orchestrators may
//! run: messages of one saga arrive on one partition, and the sweeper claims overdue sagas
//! with `FOR UPDATE SKIP LOCKED`.

use std::time::Duration;

use chrono::Utc;
use outbox_relay::{Origin, enqueue};
use sagaflow_common::consumer::{Handler, HandlerError, Incoming};
use sagaflow_common::db::Tx;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::NAME;
use crate::saga::{Decision, Policy, Saga, State, Trigger, decide};
use crate::store::{self, HistoryEntry};

/// Apply one decision to the saga inside `tx`.
async fn apply(
    tx: &mut Tx,
    current: Option<&Saga>,
    trigger: Trigger<'_>,
    origin: Origin,
    message_id: Option<Uuid>,
    policy: &Policy,
) -> Result<(), HandlerError> {
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
        }
        Decision::Transition {
            saga,
            commands,
            note,
            alert,
        } => {
            store::save(tx, &saga, origin.traceparent.as_deref()).await?;
            store::record(
                tx,
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
            )
            .await?;
            for command in &commands {
                enqueue(tx, command, &origin)
                    .await
                    .map_err(|e| HandlerError::Failed(e.into()))?;
            }
            metrics::counter!("saga_transitions_total", "to" => saga.state.as_str()).increment(1);
            if alert {
                metrics::counter!("saga_failed_total").increment(1);
                error!(alert = true, %order_id, %note, "ALERT: saga FAILED and needs an operator");
            } else if saga.state.is_terminal() {
                info!(%order_id, state = saga.state.as_str(), "saga finished");
            }
        }
    }
    Ok(())
}

/// Replies and order events.
pub struct SagaReplies {
    pub policy: Policy,
}

impl Handler for SagaReplies {
    fn accepts(&self, message_type: &str) -> bool {
        matches!(
            message_type,
            "OrderPlaced"
                | "OrderApproved"
                | "OrderRejected"
                | "StockReserved"
                | "StockRejected"
                | "StockReleased"
                | "PaymentAuthorized"
                | "PaymentDeclined"
                | "PaymentRefunded"
        )
    }

    async fn handle(&self, tx: &mut Tx, incoming: &Incoming) -> Result<(), HandlerError> {
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
}

/// Fire deadlines until `shutdown`. Also refreshes the sagas-by-state gauge.
pub async fn sweep_deadlines(
    pool: PgPool,
    policy: Policy,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks: u64 = 0;
    while !shutdown.is_cancelled() {
        match sweep_once(&pool, &policy).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(e) => warn!(error = %e, "deadline sweep failed"),
        }
        if ticks.is_multiple_of(8)
            && let Ok(counts) = store::count_by_state(&pool).await
        {
            for state in State::ALL {
                let n = counts
                    .iter()
                    .find(|(s, _)| s == state.as_str())
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("sagas", "state" => state.as_str()).set(n as f64);
            }
        }
        ticks += 1;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Fire the deadlines of up to 100 overdue sagas in one transaction; returns how many.
pub async fn sweep_once(pool: &PgPool, policy: &Policy) -> Result<usize, HandlerError> {
    let mut tx = pool.begin().await?;
    let overdue = store::lock_overdue(&mut tx, 100).await?;
    for (saga, traceparent) in &overdue {
        let origin = Origin {
            source: NAME,
            correlation_id: saga.order_id,
            causation_id: None,
            traceparent: traceparent.clone(),
        };
        apply(&mut tx, Some(saga), Trigger::Deadline, origin, None, policy).await?;
    }
    tx.commit().await?;
    Ok(overdue.len())
}
