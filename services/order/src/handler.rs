//! ApproveOrder / RejectOrder from the saga. A command for an order already in the target
//! state re-announces it (the saga may have retried after a lost reply); a command that
//! contradicts the state is rejected to the dead-letter topic.

use chrono::Utc;
use outbox_relay::{Origin, enqueue};
use sagaflow_common::consumer::{Handler, HandlerError, Incoming};
use sagaflow_common::db::Tx;
use sagaflow_schemas::{Message, OrderApproved, OrderRejected};

use crate::{NAME, store};

pub struct OrderCommands;

impl Handler for OrderCommands {
    fn accepts(&self, message_type: &str) -> bool {
        matches!(message_type, "ApproveOrder" | "RejectOrder")
    }

    async fn handle(&self, tx: &mut Tx, incoming: &Incoming) -> Result<(), HandlerError> {
        let (order_id, target, reason) = match &incoming.message {
            Message::ApproveOrder(m) => (m.order_id, "APPROVED", None),
            Message::RejectOrder(m) => (m.order_id, "REJECTED", Some(m.reason.as_str())),
            _ => return Ok(()),
        };
        let Some(order) = store::lock(tx, order_id).await? else {
            return Err(HandlerError::Rejected(format!(
                "order {order_id} does not exist"
            )));
        };
        match order.status.as_str() {
            "PENDING" => store::set_status(tx, order_id, target, reason).await?,
            status if status == target => {} // re-announce below
            status => {
                return Err(HandlerError::Rejected(format!(
                    "order {order_id} is {status}; cannot become {target}"
                )));
            }
        }
        let now = Utc::now().timestamp_millis();
        let event: Message = if target == "APPROVED" {
            OrderApproved {
                order_id,
                customer_id: order.customer_id,
                total_cents: order.total_cents,
                currency: order.currency.clone(),
                approved_at: now,
            }
            .into()
        } else {
            OrderRejected {
                order_id,
                customer_id: order.customer_id,
                reason: order
                    .reason
                    .clone()
                    .or(reason.map(str::to_string))
                    .unwrap_or_default(),
                rejected_at: now,
            }
            .into()
        };
        enqueue(tx, &event, &Origin::caused_by(NAME, &incoming.envelope)).await?;
        Ok(())
    }
}
