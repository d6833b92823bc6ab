//! The orders.events consumer: one notification per terminal order event.
//!
//! Guarantees (on top of the consumer's once-only application of each message): a
//! notification is recorded at most once per (order, template) — even when the same outcome
//! is announced again under a new message id — and NotificationSent is enqueued in the same
//! statement, only when the row was actually inserted.

use chrono::Utc;
use sagaflow_messaging::consumer::{Handler, HandlerError, Incoming};
use sagaflow_messaging::{Origin, OutboxBatch};
use sagaflow_runtime::db::Tx;
use sagaflow_schemas::MessageType;
use sagaflow_schemas::{Message, NotificationSent};
use tracing::{debug, info};

use crate::NAME;
use crate::domain::{self, Notification};
use crate::store;

/// Handles OrderApproved and OrderRejected; other orders.events types are skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotificationHandler;

impl Handler for NotificationHandler {
    fn accepts(&self, message_type: MessageType) -> bool {
        matches!(
            message_type,
            MessageType::OrderApproved | MessageType::OrderRejected
        )
    }

    /// One order's notifications are keyed by its id, and the simulated e-mail is sent (logged)
    /// only after the commit ([`Handler::committed`]): nothing leaves the transaction.
    fn max_batch(&self) -> usize {
        sagaflow_messaging::consumer::DEFAULT_MAX_BATCH
    }

    /// The notification recorded, if it was new.
    type Report = Option<Notification>;

    async fn handle(
        &self,
        tx: &mut Tx,
        incoming: &Incoming,
    ) -> Result<Option<Notification>, HandlerError> {
        let Some(notification) = domain::compose(&incoming.message) else {
            return Err(HandlerError::Rejected(format!(
                "{NAME} does not handle {}",
                incoming.message.message_type()
            )));
        };
        let now = Utc::now();
        let sent: Message = NotificationSent {
            order_id: notification.order_id,
            customer_id: notification.customer_id,
            template: notification.template.to_string(),
            subject: notification.subject.clone(),
            sent_at: now.timestamp_millis(),
        }
        .into();
        let sent = OutboxBatch::of(&sent, &Origin::caused_by(NAME, &incoming.envelope))?;
        if !store::insert(tx, &notification, now, &sent).await? {
            debug!(order_id = %notification.order_id, template = notification.template, "already notified");
            return Ok(None);
        }
        Ok(Some(notification))
    }

    /// The simulated e-mails, once their rows committed: a rolled-back batch sends nothing,
    /// and its retry sends each once. (A real sender would be fed from NotificationSent.)
    fn committed(&self, sent: Vec<Option<Notification>>) {
        for notification in sent.into_iter().flatten() {
            info!(
                order_id = %notification.order_id,
                customer_id = %notification.customer_id,
                template = notification.template,
                subject = %notification.subject,
                body = ?notification.body, // Debug: one log line despite the line breaks
                "e-mail sent (simulated)"
            );
            metrics::counter!("notifications_sent_total", "template" => notification.template)
                .increment(1);
        }
    }
}
