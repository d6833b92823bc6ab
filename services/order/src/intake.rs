//! Group commit for `POST /orders`.
//!
//! **Guarantee: a request is answered 202 only after the transaction that stored its
//! Idempotency-Key, its order (PENDING) and its OrderPlaced committed** — synchronously, as
//! before: an acknowledged order survives a crash, and an order whose commit failed is
//! answered with an error (503 when the database is unreachable).
//!
//! Why: one transaction per order costs five round trips and a WAL flush per order, and
//! concurrent requests each wait for their own flush. Here the handlers queue their orders and
//! a few writers store them: a free writer takes every order queued at that moment — one at low
//! load (no timer fills a batch), under load the orders that arrived while the previous commit
//! was flushing — and stores them with one statement (keys, orders and OrderPlaced rows; one
//! round trip and one commit for the batch).
//!
//! Idempotency-Keys keep their meaning across and within batches: the same key (per principal)
//! twice in one batch is one order, answered to both if the bodies match and 422 to the one
//! whose body differs from the stored one. Writers claim keys in (principal, key) order, so two
//! batches that share keys wait for each other instead of deadlocking. A batch that fails for a
//! reason other than an unreachable database is retried one order at a time, so one bad order
//! fails alone.

use std::collections::HashMap;
use std::sync::Arc;

use sagaflow_messaging::{Origin, OutboxBatch};
use sagaflow_runtime::db::is_unavailable;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{NewOrder, order_placed};
use crate::store::{self, KeyClaim, NewOrderRow};
use crate::{NAME, OrderConfig};

/// Orders waiting for a writer at most; a handler waits for room beyond that (and its
/// request timeout bounds the wait).
const QUEUE_CAPACITY: usize = 4_096;

/// One accepted request, validated, waiting to be stored.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Whose Idempotency-Key `key` is (the token's `sub`, or anonymous when authentication is off).
    pub principal: String,
    pub key: String,
    /// The hash of the body (`domain::request_hash`): the same key with another body is refused.
    pub request_hash: String,
    pub order: NewOrder,
    pub total_cents: i64,
    /// The order's trace, carried by its OrderPlaced.
    pub traceparent: String,
    /// The request's span. The writer encodes the OrderPlaced inside it, so the row carries
    /// this span (`trace::for_message`) and the consumer's span is the request's child; the
    /// writer's own span belongs to no order's trace.
    pub span: tracing::Span,
}

/// How a placement was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// 202: the order stored now, or earlier under the same key and body.
    Accepted(Uuid),
    /// 422: the key was used before with another body.
    KeyReused,
}

/// Why a placement was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    /// 503: the database is unreachable; nothing was stored (or the commit's outcome is
    /// unknown: the same key and body again answers the order if it was stored).
    #[error("the order database is unavailable")]
    Unavailable,
    /// 500: storing failed otherwise (logged by the writer).
    #[error("storing the order failed")]
    Failed,
    /// 500: the writers are gone (the service is stopping).
    #[error("the order intake has stopped")]
    Stopped,
}

struct Pending {
    placement: Placement,
    answer: oneshot::Sender<Result<Placed, IntakeError>>,
}

/// The queue of the order writers; cloned into every handler. The writers stop when the
/// last clone is dropped, after storing what was queued.
#[derive(Clone)]
pub struct Intake {
    queue: mpsc::Sender<Pending>,
}

impl Intake {
    /// Start `config.intake_writers` writers on `pool` (needs a Tokio runtime).
    pub fn start(pool: PgPool, config: OrderConfig) -> Intake {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let receiver = Arc::new(Mutex::new(receiver));
        let max_batch = config.intake_max_batch.max(1);
        for _ in 0..config.intake_writers.max(1) {
            tokio::spawn(write(pool.clone(), receiver.clone(), max_batch, config));
        }
        Intake { queue }
    }

    /// Store `placement` (or find the order its key already placed); returns once committed.
    pub async fn place(&self, placement: Placement) -> Result<Placed, IntakeError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending { placement, answer })
            .await
            .map_err(|_| IntakeError::Stopped)?;
        answered.await.map_err(|_| IntakeError::Stopped)?
    }
}

/// One writer: take what is queued (up to `max_batch`), store it, answer, again.
async fn write(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max_batch: usize,
    config: OrderConfig,
) {
    loop {
        let mut batch = Vec::new();
        // The lock is held only while waiting for the next orders: another writer takes the
        // ones that arrive while this one commits.
        if receiver.lock().await.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let (placements, answers): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|pending| (pending.placement, pending.answer))
            .unzip();
        let span = tracing::debug_span!("order intake", orders = placements.len());
        let results = store_or_split(&pool, &placements, config)
            .instrument(span)
            .await;
        for (answer, result) in answers.into_iter().zip(results) {
            // A handler that gave up (timeout, client gone) no longer waits: its order is
            // stored all the same, and its key answers it on a retry.
            let _ = answer.send(result);
        }
    }
}

/// Store the batch; if that fails other than by an unreachable database, store its orders
/// one by one so that one bad order fails alone.
async fn store_or_split(
    pool: &PgPool,
    placements: &[Placement],
    config: OrderConfig,
) -> Vec<Result<Placed, IntakeError>> {
    match store_batch(pool, placements, config).await {
        Ok(placed) => placed.into_iter().map(Ok).collect(),
        Err(e) if placements.len() > 1 && !is_unavailable(&e) => {
            tracing::warn!(error = %e, orders = placements.len(), "storing a batch of orders failed; storing them one by one");
            let mut results = Vec::with_capacity(placements.len());
            for placement in placements {
                results.push(
                    store_batch(pool, std::slice::from_ref(placement), config)
                        .await
                        .map(|mut placed| placed.remove(0))
                        .map_err(failure),
                );
            }
            results
        }
        Err(e) => {
            let error = failure(e);
            vec![Err(error); placements.len()]
        }
    }
}

fn failure(error: sqlx::Error) -> IntakeError {
    if is_unavailable(&error) {
        tracing::warn!(%error, "order database unavailable");
        IntakeError::Unavailable
    } else {
        tracing::error!(%error, "storing an order failed");
        IntakeError::Failed
    }
}

/// Store `placements` in one statement (one round trip, its own transaction: see
/// `store::place_orders`): claim their keys, insert the orders whose key was claimed and their
/// OrderPlaced. Returns each placement's answer, in order, once committed.
///
/// Also the transaction `sagaflow bench` measures as the as-implemented commit rate (one
/// placement per call).
pub async fn store_batch(
    pool: &PgPool,
    placements: &[Placement],
    config: OrderConfig,
) -> Result<Vec<Placed>, sqlx::Error> {
    let claims = first_uses(placements);
    let orders: Vec<NewOrderRow<'_>> = claims
        .iter()
        .map(|claim| {
            let placement = &placements[claim.index];
            (claim.order_id, &placement.order, placement.total_cents)
        })
        .collect();
    let announcements = order_placed_rows(placements, &claims)?;
    let claimed = store::place_orders(
        pool,
        &claims,
        &orders,
        &announcements,
        config.idempotency_key_ttl(),
    )
    .await?;
    let mut stored: HashMap<(&str, &str), (Uuid, String)> = HashMap::new();
    let mut taken = Vec::new();
    for claim in &claims {
        if claimed.contains(&claim.order_id) {
            stored.insert(
                (claim.principal, claim.key),
                (claim.order_id, claim.request_hash.to_string()),
            );
        } else {
            taken.push(*claim);
        }
    }
    // Keys used before (rare: retries): the order and body they were first used with —
    // committed, by this batch's statement or an earlier one, so read after it.
    for (principal, key, order_id, hash) in store::find_idempotency_keys(pool, &taken).await? {
        if let Some(claim) = taken
            .iter()
            .find(|claim| claim.principal == principal && claim.key == key)
        {
            stored.insert((claim.principal, claim.key), (order_id, hash));
        }
    }
    metrics::histogram!("order_intake_batch_size").record(placements.len() as f64);
    metrics::counter!("orders_placed_total").increment(claimed.len() as u64);
    // Nothing stored for a key: it expired and was pruned between the claim and the read.
    // The batch fails and is stored again order by order; the orders it did store answer
    // then through their keys.
    answers(placements, &stored).ok_or(sqlx::Error::RowNotFound)
}

/// The OrderPlaced of each claim's order, in the claims' order (written only for the claims
/// that take).
fn order_placed_rows(
    placements: &[Placement],
    claims: &[KeyClaim<'_>],
) -> Result<OutboxBatch, sqlx::Error> {
    let placed_at = chrono::Utc::now().timestamp_millis();
    let mut rows = OutboxBatch::default();
    for claim in claims {
        let placement = &placements[claim.index];
        let message = order_placed(
            claim.order_id,
            &placement.order,
            placement.total_cents,
            placed_at,
        )
        .into();
        let origin = Origin {
            source: NAME,
            correlation_id: claim.order_id,
            causation_id: None,
            traceparent: Some(placement.traceparent.clone()),
        };
        // OrderPlaced of a validated order always encodes; if it did not, the batch fails (and
        // is retried one by one, where it fails alone).
        placement
            .span
            .in_scope(|| rows.push(&message, &origin))
            .map_err(|e| sqlx::Error::Protocol(format!("encoding OrderPlaced: {e}")))?;
    }
    Ok(rows)
}

/// The first placement of each (principal, key) in the batch, which claims the key, with a new
/// order id — sorted by (principal, key): the order every writer locks keys in.
fn first_uses(placements: &[Placement]) -> Vec<KeyClaim<'_>> {
    let mut claims: Vec<KeyClaim<'_>> = Vec::with_capacity(placements.len());
    let mut seen = std::collections::HashSet::new();
    for (index, placement) in placements.iter().enumerate() {
        if seen.insert((placement.principal.as_str(), placement.key.as_str())) {
            claims.push(KeyClaim {
                index,
                principal: &placement.principal,
                key: &placement.key,
                request_hash: &placement.request_hash,
                order_id: Uuid::now_v7(),
            });
        }
    }
    claims.sort_by(|a, b| (a.principal, a.key).cmp(&(b.principal, b.key)));
    claims
}

/// Each placement's answer, given what its key stands for after the claims: the same body
/// answers the stored order, another body 422. `None` if a key has nothing stored (a key that
/// expired and was pruned between the claim and the read: the batch is retried).
fn answers(
    placements: &[Placement],
    stored: &HashMap<(&str, &str), (Uuid, String)>,
) -> Option<Vec<Placed>> {
    placements
        .iter()
        .map(|p| {
            let (order_id, hash) = stored.get(&(p.principal.as_str(), p.key.as_str()))?;
            Some(if *hash == p.request_hash {
                Placed::Accepted(*order_id)
            } else {
                Placed::KeyReused
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(principal: &str, key: &str, hash: &str) -> Placement {
        Placement {
            principal: principal.into(),
            key: key.into(),
            request_hash: hash.into(),
            order: NewOrder {
                customer_id: Uuid::nil(),
                items: vec![],
                currency: "EUR".into(),
                payment_method: "pm_card_visa".into(),
            },
            total_cents: 0,
            traceparent: String::new(),
            span: tracing::Span::none(),
        }
    }

    #[test]
    fn the_first_use_of_each_key_claims_it_in_key_order() {
        let batch = [
            placement("bob", "k2", "h1"),
            placement("alice", "k9", "h2"),
            placement("bob", "k2", "h3"),
            placement("bob", "k1", "h4"),
            placement("carol", "k2", "h5"),
        ];
        let claims: Vec<_> = first_uses(&batch)
            .iter()
            .map(|c| (c.principal, c.key, c.request_hash, c.index))
            .collect();
        assert_eq!(
            claims,
            [
                ("alice", "k9", "h2", 1),
                ("bob", "k1", "h4", 3),
                ("bob", "k2", "h1", 0),
                ("carol", "k2", "h5", 4),
            ]
        );
    }

    #[test]
    fn the_same_key_twice_in_a_batch_is_one_order_and_another_body_is_refused() {
        let batch = [
            placement("bob", "k", "h1"),
            placement("bob", "k", "h1"),
            placement("bob", "k", "h2"),
            placement("alice", "k", "h2"),
        ];
        let bobs = Uuid::now_v7();
        let alices = Uuid::now_v7();
        let stored = HashMap::from([
            (("bob", "k"), (bobs, "h1".to_string())),
            (("alice", "k"), (alices, "h2".to_string())),
        ]);
        assert_eq!(
            answers(&batch, &stored),
            Some(vec![
                Placed::Accepted(bobs),
                Placed::Accepted(bobs),
                Placed::KeyReused,
                Placed::Accepted(alices),
            ])
        );
    }

    #[test]
    fn a_key_stored_earlier_with_another_body_refuses_even_its_first_use_in_the_batch() {
        let batch = [placement("bob", "k", "new"), placement("bob", "k", "old")];
        let earlier = Uuid::now_v7();
        let stored = HashMap::from([(("bob", "k"), (earlier, "old".to_string()))]);
        assert_eq!(
            answers(&batch, &stored),
            Some(vec![Placed::KeyReused, Placed::Accepted(earlier)])
        );
    }

    #[test]
    fn a_key_with_nothing_stored_fails_the_batch() {
        let batch = [placement("bob", "k", "h")];
        assert_eq!(answers(&batch, &HashMap::new()), None);
    }
}
