//! ApproveOrder / RejectOrder from the saga, and the announcement of an order's verdict (also
//! used by the order deadline, [`crate::deadline`]).
//!
//! What a command does depends on the order's status:
//! - PENDING: the command decides. The order becomes APPROVED / REJECTED and OrderApproved /
//!   OrderRejected is enqueued, in one transaction ([`conclude`]).
//! - already the command's target: announced again (the saga may have retried after a lost
//!   reply).
//! - REJECTED, and the command is ApproveOrder: the order deadline rejected the order while its
//!   saga was still running (a saga never rejects an order and then approves it). A verdict
//!   announced is never reversed: the order stays REJECTED, and the ApproveOrder is answered
//!   with OrderRejected again instead of being dead-lettered. The saga, which believes it
//!   approved and holds stock and a charge, compensates on that reply (refund + release, in
//!   `saga_orchestrator::saga`) and then sends RejectOrder, which lands in the case above.
//!   Dead-lettering would leave the saga retrying ApproveOrder until FAILED, with both held.
//! - APPROVED, and the command is RejectOrder: contradicts the state (nothing rejects an
//!   approved order); dead-lettered.

use chrono::Utc;
use sagaflow_messaging::consumer::{Handler, HandlerError, Incoming};
use sagaflow_messaging::{Origin, OutboxBatch, enqueue};
use sagaflow_runtime::db::Tx;
use sagaflow_schemas::MessageType;
use sagaflow_schemas::{Message, OrderApproved, OrderRejected};

use crate::NAME;
use crate::domain::OrderStatus;
use crate::store::{self, OrderRow};

pub struct OrderCommands;

impl Handler for OrderCommands {
    fn accepts(&self, message_type: MessageType) -> bool {
        matches!(
            message_type,
            MessageType::ApproveOrder | MessageType::RejectOrder
        )
    }

    /// Commands of one order come on one partition; the batch still locks the order ids
    /// (the consumer's protocol). No effect outside the transaction.
    fn max_batch(&self) -> usize {
        sagaflow_messaging::consumer::DEFAULT_MAX_BATCH
    }

    type Report = ();

    async fn handle(&self, tx: &mut Tx, incoming: &Incoming) -> Result<(), HandlerError> {
        let (order_id, target, reason) = match &incoming.message {
            Message::ApproveOrder(m) => (m.order_id, OrderStatus::Approved, None),
            Message::RejectOrder(m) => (m.order_id, OrderStatus::Rejected, Some(m.reason.as_str())),
            _ => return Ok(()),
        };
        let Some(order) = store::lock(tx, order_id).await? else {
            return Err(HandlerError::Rejected(format!(
                "order {order_id} does not exist"
            )));
        };
        let origin = Origin::caused_by(NAME, &incoming.envelope);
        match order.status {
            OrderStatus::Pending => conclude(tx, &order, target, reason, &origin).await,
            status if status == target => announce(tx, &order, target, reason, &origin).await,
            // Rejected by the order deadline before the saga's approval came: the saga is told
            // the order is rejected and compensates (see the module documentation).
            OrderStatus::Rejected => {
                announce(tx, &order, OrderStatus::Rejected, None, &origin).await
            }
            status => Err(HandlerError::Rejected(format!(
                "order {order_id} is {status}; cannot become {target}"
            ))),
        }
    }
}

/// Decide a PENDING `order`, locked by the caller: it becomes `status` (APPROVED, or REJECTED
/// with `reason`) and the verdict is enqueued, inside `tx`, in one statement.
pub(crate) async fn conclude(
    tx: &mut Tx,
    order: &OrderRow,
    status: OrderStatus,
    reason: Option<&str>,
    origin: &Origin,
) -> Result<(), HandlerError> {
    let announcement = OutboxBatch::of(&verdict(order, status, reason), origin)?;
    store::set_status(tx, order.id, status, reason, &announcement).await?;
    Ok(())
}

/// Enqueue the event announcing `order`'s `status` again (its status does not change).
async fn announce(
    tx: &mut Tx,
    order: &OrderRow,
    status: OrderStatus,
    reason: Option<&str>,
    origin: &Origin,
) -> Result<(), HandlerError> {
    enqueue(tx, &verdict(order, status, reason), origin).await?;
    Ok(())
}

/// The event announcing `order`'s `status`: OrderApproved, or OrderRejected with the order's
/// reason (`reason` when the row has none yet).
fn verdict(order: &OrderRow, status: OrderStatus, reason: Option<&str>) -> Message {
    let now = Utc::now().timestamp_millis();
    if status == OrderStatus::Approved {
        OrderApproved {
            order_id: order.id,
            customer_id: order.customer_id,
            total_cents: order.total_cents,
            currency: order.currency.clone(),
            approved_at: now,
        }
        .into()
    } else {
        OrderRejected {
            order_id: order.id,
            customer_id: order.customer_id,
            reason: order
                .reason
                .clone()
                .or(reason.map(str::to_string))
                .unwrap_or_default(),
            rejected_at: now,
        }
        .into()
    }
}
