//! The payment-service consumer of `payment.commands`: AuthorizePayment and RefundPayment.
//!
//! Guarantees (on top of the consumer's inbox: each message applied once):
//! - **At most one charge and one refund per order**, whatever the redeliveries, duplicates
//!   with new message ids, concurrent deliveries or crashes: the order is locked for the whole
//!   transaction (see [`store::lock_order`]), an order with a payment row is never charged
//!   again, and the provider gets idempotency keys derived from the order id, so repeating a
//!   call whose transaction rolled back gets the same charge or refund back.
//! - **State and reply commit together**: the payment row and the reply (through the outbox)
//!   are written in the consumer's transaction; the provider call happens inside it, before
//!   the commit.
//! - **An unavailable provider is not a decline**: the handler fails, the consumer retries and
//!   eventually dead-letters; the saga's deadline decides what happens to the order. While
//!   the circuit is open, the next attempt waits until it lets a probe through.
//! - **A lost answer is not forgotten**: when a charge's outcome is unknown (timeout after
//!   sending), that is noted outside the rolled-back transaction, and a later refund of an
//!   order without a payment row asks the provider before declaring nothing was charged.
//!   Residual gap: a crash while a charge call is in flight leaves no note; the redelivered
//!   AuthorizePayment finds the charge through its idempotency key, unless the saga refunded
//!   the order first (only possible if that redelivery was dead-lettered).

use chrono::Utc;
use sagaflow_messaging::Origin;
use sagaflow_messaging::consumer::{Handler, HandlerError, Incoming};
use sagaflow_runtime::db::Tx;
use sagaflow_schemas::MessageType;
use sagaflow_schemas::{
    AuthorizePayment, Message, PaymentAuthorized, PaymentDeclined, PaymentRefunded, RefundPayment,
};
use sqlx::PgPool;
use tracing::{info, warn};

use crate::NAME;
use crate::client::{
    Charge, ChargeOutcome, ChargeRequest, ProviderClient, ProviderError, charge_key, refund_key,
};
use crate::decision::{self, AuthorizeDecision, ExpiredDecision, RefundDecision};
use crate::store::{self, UncertainCharge};

/// Handles `payment.commands`.
#[derive(Debug, Clone)]
pub struct PaymentHandler {
    /// For writes that must outlive the message's transaction (uncertain charges).
    pool: PgPool,
    client: ProviderClient,
}

impl PaymentHandler {
    pub fn new(pool: PgPool, client: ProviderClient) -> Self {
        PaymentHandler { pool, client }
    }

    async fn authorize(
        &self,
        tx: &mut Tx,
        incoming: &Incoming,
        command: &AuthorizePayment,
    ) -> Result<(), HandlerError> {
        let order_id = command.order_id;
        store::lock_order(tx, order_id).await?;
        let existing = store::find(&mut **tx, order_id).await?;
        let now = Utc::now();
        let reply: Message = match decision::decide_authorize(existing.as_ref(), command, now) {
            AuthorizeDecision::Reply(reply) => {
                if let Some(row) = &existing
                    && row.amount_cents != command.amount_cents
                    && row.status == store::PaymentStatus::Authorized
                {
                    warn!(%order_id, recorded = row.amount_cents, requested = command.amount_cents, "AuthorizePayment amount differs from the recorded charge; re-emitting the recorded one");
                }
                info!(%order_id, reply = reply.message_type(), "payment already decided; re-emitting the outcome");
                reply
            }
            AuthorizeDecision::Decline { reason } => {
                store::insert(tx, &decision::declined_row(command, &reason, now)).await?;
                info!(%order_id, %reason, "payment declined without calling the provider");
                declined(order_id, reason, now)
            }
            AuthorizeDecision::Charge => self.charge(tx, command, now).await?,
            AuthorizeDecision::Expired => {
                let uncertain = store::find_uncertain(tx, order_id).await?;
                match decision::decide_expired(uncertain.as_ref()) {
                    ExpiredDecision::Collect => self.charge(tx, command, now).await?,
                    ExpiredDecision::LookUp => self.expire(tx, command, now).await?,
                }
            }
        };
        enqueue(tx, incoming, &reply).await
    }

    /// Charge through the provider and record the outcome.
    async fn charge(
        &self,
        tx: &mut Tx,
        command: &AuthorizePayment,
        now: chrono::DateTime<Utc>,
    ) -> Result<Message, HandlerError> {
        let order_id = command.order_id;
        let request = ChargeRequest {
            amount: command.amount_cents,
            currency: command.currency.clone(),
            payment_method: command.payment_method.clone(),
            idempotency_key: charge_key(order_id),
        };
        let outcome = match self.client.charge(&request).await {
            Ok(outcome) => outcome,
            Err(error) => return Err(self.charge_failed(command, &request, error).await),
        };
        store::forget_uncertain(tx, order_id).await?;
        match outcome {
            ChargeOutcome::Charged(charge) => {
                if charge.amount != command.amount_cents {
                    warn!(%order_id, charged = charge.amount, requested = command.amount_cents, "provider charged a different amount");
                }
                info!(%order_id, charge = %charge.id, amount_cents = charge.amount, "payment authorized");
                authorized(tx, command, &charge, now).await
            }
            ChargeOutcome::Declined { code } => {
                store::insert(tx, &decision::declined_row(command, &code, now)).await?;
                info!(%order_id, reason = %code, "payment declined by the provider");
                Ok(declined(order_id, code, now))
            }
        }
    }

    /// Past `charge_before`, with no note of a lost outcome: record the charge if one exists
    /// after all (its transaction rolled back after the provider made it), decline "expired"
    /// without charging otherwise. The lookup moves no money.
    async fn expire(
        &self,
        tx: &mut Tx,
        command: &AuthorizePayment,
        now: chrono::DateTime<Utc>,
    ) -> Result<Message, HandlerError> {
        let order_id = command.order_id;
        let found = self
            .client
            .find_charge(&charge_key(order_id))
            .await
            .map_err(|e| provider_failed(e, "looking up the charge of an expired payment"))?;
        match found {
            Some(charge) => {
                warn!(%order_id, charge = %charge.id, "an expired payment had been charged already; recording the charge");
                authorized(tx, command, &charge, now).await
            }
            None => {
                let reason = decision::REASON_EXPIRED;
                store::insert(tx, &decision::declined_row(command, reason, now)).await?;
                info!(%order_id, reason, "payment declined: the saga's deadline for it has passed");
                Ok(declined(order_id, reason.to_string(), now))
            }
        }
    }

    /// The error to fail the message with; notes the charge first if it may have been made.
    async fn charge_failed(
        &self,
        command: &AuthorizePayment,
        request: &ChargeRequest,
        error: ProviderError,
    ) -> HandlerError {
        if error.outcome_unknown() {
            let note = UncertainCharge {
                order_id: command.order_id,
                idempotency_key: request.idempotency_key.clone(),
                amount_cents: command.amount_cents,
                currency: command.currency.clone(),
            };
            if let Err(db) = store::remember_uncertain(&self.pool, &note).await {
                // Without the note a later refund could wrongly report "nothing charged":
                // fail on the database error so the message is retried, not dead-lettered
                // while the database is away.
                return HandlerError::Database(db);
            }
            metrics::counter!("payment_charge_outcome_unknown_total").increment(1);
            warn!(order_id = %command.order_id, error = %error, "charge outcome unknown; noted for reconciliation");
        }
        provider_failed(error, "charging the order")
    }

    async fn refund(
        &self,
        tx: &mut Tx,
        incoming: &Incoming,
        command: &RefundPayment,
    ) -> Result<(), HandlerError> {
        let order_id = command.order_id;
        store::lock_order(tx, order_id).await?;
        let existing = store::find(&mut **tx, order_id).await?;
        let uncertain = store::find_uncertain(tx, order_id).await?;
        let now = Utc::now();
        let reply: Message = match decision::decide_refund(
            existing.as_ref(),
            uncertain.as_ref(),
            command,
            now,
        ) {
            RefundDecision::Reply(reply) => {
                info!(%order_id, "payment already compensated or never charged; re-emitting the outcome");
                reply
            }
            RefundDecision::Refund { charge_id } => {
                let refund = self
                    .client
                    .refund(&charge_id, &refund_key(order_id))
                    .await
                    .map_err(|e| provider_failed(e, "refunding the charge"))?;
                store::mark_refunded(tx, order_id, &refund.id, now).await?;
                // `existing` is AUTHORIZED here: its amount is what was charged.
                let (amount_cents, currency) = existing
                    .map(|row| {
                        (
                            row.amount_cents,
                            row.currency.unwrap_or_else(|| decision::NO_CURRENCY.into()),
                        )
                    })
                    .unwrap_or((0, decision::NO_CURRENCY.into()));
                info!(%order_id, charge = %charge_id, refund = %refund.id, amount_cents, "payment refunded");
                PaymentRefunded {
                    order_id,
                    payment_id: Some(charge_id),
                    amount_cents,
                    currency,
                    refunded_at: decision::millis(now),
                }
                .into()
            }
            RefundDecision::Cancel => self.cancel(tx, command, now).await?,
            RefundDecision::Reconcile { idempotency_key } => {
                let found = self
                    .client
                    .find_charge(&idempotency_key)
                    .await
                    .map_err(|e| provider_failed(e, "looking up an uncertain charge"))?;
                store::forget_uncertain(tx, order_id).await?;
                match found {
                    None => self.cancel(tx, command, now).await?,
                    Some(charge) => {
                        let refund = self
                            .client
                            .refund(&charge.id, &refund_key(order_id))
                            .await
                            .map_err(|e| provider_failed(e, "refunding an uncertain charge"))?;
                        let currency = charge.currency.to_ascii_uppercase();
                        let row = decision::reconciled_refund_row(
                            order_id,
                            &charge.id,
                            &refund.id,
                            charge.amount,
                            &currency,
                            now,
                        );
                        store::insert(tx, &row).await?;
                        warn!(%order_id, charge = %charge.id, refund = %refund.id, "refunded a charge whose outcome had been lost");
                        PaymentRefunded {
                            order_id,
                            payment_id: Some(charge.id),
                            amount_cents: charge.amount,
                            currency,
                            refunded_at: decision::millis(now),
                        }
                        .into()
                    }
                }
            }
        };
        enqueue(tx, incoming, &reply).await
    }

    /// Nothing was charged: record CANCELLED so a late AuthorizePayment never charges.
    async fn cancel(
        &self,
        tx: &mut Tx,
        command: &RefundPayment,
        now: chrono::DateTime<Utc>,
    ) -> Result<Message, HandlerError> {
        store::insert(tx, &decision::cancelled_row(command.order_id, now)).await?;
        info!(order_id = %command.order_id, reason = %command.reason, "payment cancelled before any charge");
        Ok(decision::nothing_refunded(
            command.order_id,
            decision::NO_CURRENCY.into(),
            now,
        ))
    }
}

/// The error to fail the message with when a provider call failed `doing` something: when the
/// open circuit refused it, one the consumer retries no sooner than the circuit lets a call
/// through (retrying earlier would burn the attempts without reaching the provider, and
/// dead-letter a payment though the provider was back).
fn provider_failed(error: ProviderError, doing: &'static str) -> HandlerError {
    match error.retry_after() {
        Some(retry_after) => HandlerError::Unavailable {
            error: anyhow::Error::new(error).context(doing),
            retry_after,
        },
        None => HandlerError::Failed(anyhow::Error::new(error).context(doing)),
    }
}

/// Record `charge` as the order's payment; the PaymentAuthorized that announces it.
async fn authorized(
    tx: &mut Tx,
    command: &AuthorizePayment,
    charge: &Charge,
    now: chrono::DateTime<Utc>,
) -> Result<Message, HandlerError> {
    let row = decision::authorized_row(command, &charge.id, charge.amount, &command.currency, now);
    store::insert(tx, &row).await?;
    Ok(PaymentAuthorized {
        order_id: command.order_id,
        payment_id: charge.id.clone(),
        amount_cents: charge.amount,
        currency: command.currency.clone(),
        authorized_at: decision::millis(now),
    }
    .into())
}

fn declined(order_id: uuid::Uuid, reason: String, now: chrono::DateTime<Utc>) -> Message {
    PaymentDeclined {
        order_id,
        reason,
        declined_at: decision::millis(now),
    }
    .into()
}

async fn enqueue(tx: &mut Tx, incoming: &Incoming, reply: &Message) -> Result<(), HandlerError> {
    sagaflow_messaging::enqueue(tx, reply, &Origin::caused_by(NAME, &incoming.envelope)).await?;
    Ok(())
}

impl Handler for PaymentHandler {
    fn accepts(&self, message_type: MessageType) -> bool {
        matches!(
            message_type,
            MessageType::AuthorizePayment | MessageType::RefundPayment
        )
    }

    /// Nothing to tell after the commit: its logs are about provider calls, which happened
    /// whether or not the transaction commits.
    type Report = ();

    async fn handle(&self, tx: &mut Tx, incoming: &Incoming) -> Result<(), HandlerError> {
        match &incoming.message {
            Message::AuthorizePayment(command) => self.authorize(tx, incoming, command).await,
            Message::RefundPayment(command) => self.refund(tx, incoming, command).await,
            other => Err(HandlerError::Rejected(format!(
                "payment-service does not handle {}",
                other.message_type()
            ))),
        }
    }
}
