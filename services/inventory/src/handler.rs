//! The inventory.commands consumer: applies ReserveStock and ReleaseStock and answers on
//! inventory.events through the outbox.
//!
//! Guarantees (on top of the consumer's once-only application of each message):
//! - the stock change, the reservation row and the reply commit together or not at all;
//! - every command is answered, including repeats: a ReserveStock for an order already
//!   decided re-announces the recorded outcome, so a saga that retried after a timeout still
//!   gets its reply, and stock is never reserved twice for one order;
//! - commands for one order are serialised (the consumer's advisory lock on the order id,
//!   taken in the statement that claims the inbox row: [`Handler::lock_keys`]), so a
//!   ReserveStock and a ReleaseStock racing for a new order (e.g. during a consumer-group
//!   rebalance) are applied one after the other, and each sees what the other recorded; were
//!   they not, the second insert of a first outcome fails and is retried ([`record_first`]).

use chrono::{DateTime, Utc};
use sagaflow_messaging::consumer::{Handler, HandlerError, Incoming};
use sagaflow_messaging::{Origin, enqueue};
use sagaflow_runtime::db::Tx;
use sagaflow_schemas::MessageType;
use sagaflow_schemas::{Message, ReleaseStock, ReserveStock, StockLine};
use tracing::info;
use uuid::Uuid;

use crate::NAME;
use crate::domain::{self, Decision, Release, Status};
use crate::faults::InventoryFaults;
use crate::store;

/// Handles inventory commands.
#[derive(Debug, Clone, Default)]
pub struct InventoryHandler {
    /// Disarmed unless a dev/test platform arms it (see [`crate::faults`]).
    faults: InventoryFaults,
}

impl InventoryHandler {
    /// A handler whose ReleaseStock can be made to fail through `faults`.
    pub fn with_faults(faults: InventoryFaults) -> Self {
        InventoryHandler { faults }
    }
}

impl Handler for InventoryHandler {
    fn accepts(&self, message_type: MessageType) -> bool {
        matches!(
            message_type,
            MessageType::ReserveStock | MessageType::ReleaseStock
        )
    }

    type Report = Applied;

    async fn handle(&self, tx: &mut Tx, incoming: &Incoming) -> Result<Applied, HandlerError> {
        let now = Utc::now();
        let (reply, applied) = match &incoming.message {
            Message::ReserveStock(command) => reserve(tx, command, now).await?,
            Message::ReleaseStock(command) => {
                self.faults
                    .release_attempt(incoming.envelope.message_id)
                    .map_err(|reason| HandlerError::Failed(anyhow::anyhow!(reason)))?;
                release(tx, command, now).await?
            }
            other => {
                return Err(HandlerError::Rejected(format!(
                    "{NAME} does not handle {}",
                    other.message_type()
                )));
            }
        };
        enqueue(tx, &reply, &Origin::caused_by(NAME, &incoming.envelope)).await?;
        Ok(applied)
    }

    fn committed(&self, applied: Vec<Applied>) {
        applied.into_iter().for_each(Applied::tell);
    }
}

/// What a command did, counted and logged once it committed (a rolled-back attempt is
/// applied again and must not count twice).
#[derive(Debug)]
pub enum Applied {
    Reserve {
        order_id: Uuid,
        outcome: &'static str,
    },
    Release {
        order_id: Uuid,
        outcome: &'static str,
        reason: String,
    },
}

impl Applied {
    fn tell(self) {
        match self {
            Applied::Reserve { order_id, outcome } => {
                metrics::counter!("inventory_reserve_total", "outcome" => outcome).increment(1);
                info!(%order_id, outcome, "ReserveStock decided");
            }
            Applied::Release {
                order_id,
                outcome,
                reason,
            } => {
                metrics::counter!("inventory_release_total", "outcome" => outcome).increment(1);
                info!(%order_id, outcome, %reason, "ReleaseStock applied");
            }
        }
    }
}

async fn reserve(
    tx: &mut Tx,
    command: &ReserveStock,
    now: DateTime<Utc>,
) -> Result<(Message, Applied), HandlerError> {
    let order_id = command.order_id;
    let existing = store::reservation_for_update(tx, order_id).await?;
    // A decided order never looks at stock again, so it needs no stock locks.
    let stock = match existing {
        Some(_) => Vec::new(),
        None => store::lock_stock(tx, &domain::sorted_skus(&command.lines)).await?,
    };
    let decision = domain::decide_reserve(&stock, existing.as_ref(), &command.lines);
    match &decision {
        Decision::Reserve { lines } => {
            record_first(tx, order_id, Status::Reserved, lines, None, now).await?;
            let updated = store::move_to_reserved(tx, lines).await?;
            expect_all_updated(order_id, lines, updated)?;
        }
        Decision::Reject { reason } => {
            record_first(tx, order_id, Status::Rejected, &[], Some(reason), now).await?;
        }
        Decision::AlreadyReserved { .. }
        | Decision::AlreadyRejected { .. }
        | Decision::AlreadyReleased => {}
    }
    let applied = Applied::Reserve {
        order_id,
        outcome: decision.label(),
    };
    let reply = domain::reserve_reply(order_id, &decision, now.timestamp_millis());
    Ok((reply, applied))
}

async fn release(
    tx: &mut Tx,
    command: &ReleaseStock,
    now: DateTime<Utc>,
) -> Result<(Message, Applied), HandlerError> {
    let order_id = command.order_id;
    let existing = store::reservation_for_update(tx, order_id).await?;
    let release = domain::decide_release(existing.as_ref());
    match &release {
        Release::Return { lines } => {
            store::lock_stock(tx, &domain::sorted_skus(lines)).await?;
            let updated = store::return_to_available(tx, lines).await?;
            expect_all_updated(order_id, lines, updated)?;
            store::mark_released(tx, order_id, &command.reason, now).await?;
        }
        Release::Tombstone => {
            record_first(
                tx,
                order_id,
                Status::Released,
                &[],
                Some(&command.reason),
                now,
            )
            .await?;
        }
        Release::Nothing => {}
    }
    let applied = Applied::Release {
        order_id,
        outcome: release.label(),
        reason: command.reason.clone(),
    };
    let reply = domain::release_reply(order_id, &release, now.timestamp_millis());
    Ok((reply, applied))
}

/// Record an order's first outcome, or fail (rolling back) if one was recorded since we looked
/// — prevented by the order lock, but if it ever happened, the retry re-reads the record and
/// answers consistently instead of overwriting it.
async fn record_first(
    tx: &mut Tx,
    order_id: Uuid,
    status: Status,
    lines: &[StockLine],
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), HandlerError> {
    if store::insert_reservation(tx, order_id, status, lines, reason, now).await? {
        Ok(())
    } else {
        Err(HandlerError::Failed(anyhow::anyhow!(
            "order {order_id}: its reservation was recorded concurrently; retrying"
        )))
    }
}

/// Stock rows are never deleted, so a missing one means the data was edited by hand; fail
/// (and eventually dead-letter) rather than reserve or return quantities that exist nowhere.
fn expect_all_updated(
    order_id: Uuid,
    lines: &[StockLine],
    updated: u64,
) -> Result<(), HandlerError> {
    if updated == lines.len() as u64 {
        Ok(())
    } else {
        Err(HandlerError::Failed(anyhow::anyhow!(
            "order {order_id}: only {updated} of {} stock rows exist",
            lines.len()
        )))
    }
}
