//! The payment rules, as pure functions of the recorded state: no I/O, so every rule is a
//! given/when/then unit test. The handler does the locking, the provider calls and the writes
//! these functions ask for.
//!
//! The rules:
//! - a charge is made at most once per order: an order with a payment row is never charged
//!   again, its recorded outcome is re-emitted;
//! - an order compensated before it was charged (CANCELLED) or already refunded is never
//!   charged: AuthorizePayment is answered PaymentDeclined "cancelled";
//! - no charge starts after the command's `charge_before` (the saga's step deadline, after
//!   which it compensates): it is declined "expired", so a command that waited out a provider
//!   outage in its queue does not take money only for the compensation behind it to give it
//!   back. Unless a charge of it may already exist: one whose outcome was lost (noted) is
//!   collected by charging again with its idempotency key, and without a note the charge is
//!   looked up first (a charge whose transaction rolled back leaves none) — declining a charge
//!   that exists would record "nothing charged" and the refund would give nothing back;
//! - a refund is made at most once, and only of a charge: every other state answers
//!   PaymentRefunded with what was recorded (amount 0 when nothing was charged);
//! - a refund for an order without a payment writes CANCELLED, so a late AuthorizePayment
//!   cannot charge — unless a charge of that order might exist at the provider (an earlier
//!   call's outcome was lost), which must be looked up first.

use chrono::{DateTime, Utc};
use sagaflow_schemas::{
    AuthorizePayment, Message, PaymentAuthorized, PaymentDeclined, PaymentRefunded, RefundPayment,
};

use crate::store::{PaymentRow, PaymentStatus, UncertainCharge};

/// The decline reason of an AuthorizePayment for an order that was compensated or refunded.
pub const REASON_CANCELLED: &str = "cancelled";
/// The decline reason of an AuthorizePayment handled after its `charge_before`.
pub const REASON_EXPIRED: &str = "expired";
/// ISO 4217 "no currency": the currency of a PaymentRefunded when nothing was ever charged
/// and the currency is unknown.
pub const NO_CURRENCY: &str = "XXX";

/// What to do with an AuthorizePayment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeDecision {
    /// No payment yet: charge through the provider.
    Charge,
    /// Record a decline without calling the provider (the request cannot be charged).
    Decline { reason: String },
    /// Past its `charge_before`: no new charge may start, but one may exist — see
    /// [`decide_expired`].
    Expired,
    /// Already decided: emit this again and change nothing.
    Reply(Message),
}

/// Decide an AuthorizePayment given the order's payment, if any.
pub fn decide_authorize(
    existing: Option<&PaymentRow>,
    command: &AuthorizePayment,
    now: DateTime<Utc>,
) -> AuthorizeDecision {
    let Some(row) = existing else {
        let expired = command
            .charge_before
            .is_some_and(|limit| now.timestamp_millis() > limit);
        return match invalid_reason(command) {
            Some(reason) => AuthorizeDecision::Decline {
                reason: reason.to_string(),
            },
            None if expired => AuthorizeDecision::Expired,
            None => AuthorizeDecision::Charge,
        };
    };
    let order_id = row.order_id;
    match row.status {
        PaymentStatus::Authorized => AuthorizeDecision::Reply(
            PaymentAuthorized {
                order_id,
                payment_id: row.charge_id.clone().unwrap_or_default(),
                amount_cents: row.amount_cents,
                currency: row
                    .currency
                    .clone()
                    .unwrap_or_else(|| command.currency.clone()),
                authorized_at: millis(row.authorized_at.unwrap_or(row.updated_at)),
            }
            .into(),
        ),
        PaymentStatus::Declined => AuthorizeDecision::Reply(
            PaymentDeclined {
                order_id,
                reason: row
                    .decline_reason
                    .clone()
                    .unwrap_or_else(|| "declined".to_string()),
                declined_at: millis(row.declined_at.unwrap_or(row.updated_at)),
            }
            .into(),
        ),
        // The saga already gave up on this payment (or the refund overtook the command):
        // charging now would take money nobody will ever give back.
        PaymentStatus::Refunded | PaymentStatus::Cancelled => AuthorizeDecision::Reply(
            PaymentDeclined {
                order_id,
                reason: REASON_CANCELLED.to_string(),
                declined_at: millis(now),
            }
            .into(),
        ),
    }
}

/// What to do with an [`AuthorizeDecision::Expired`] command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpiredDecision {
    /// An earlier call's outcome was lost: charge again with the same idempotency key, which
    /// returns that call's charge if it was made (and makes it otherwise: the note says the
    /// provider may already hold it, so the key is what decides, not the clock).
    Collect,
    /// Look the charge up by the key: record it if it exists, decline "expired" if not.
    LookUp,
}

/// Decide an expired AuthorizePayment given the order's uncertain-charge note, if any.
pub fn decide_expired(uncertain: Option<&UncertainCharge>) -> ExpiredDecision {
    match uncertain {
        Some(_) => ExpiredDecision::Collect,
        None => ExpiredDecision::LookUp,
    }
}

/// Why a command cannot be sent to the provider at all. Declining (rather than failing) lets
/// the saga compensate at once instead of waiting for its deadline.
fn invalid_reason(command: &AuthorizePayment) -> Option<&'static str> {
    if command.amount_cents <= 0 {
        Some("invalid_amount")
    } else if command.currency.len() != 3
        || !command.currency.bytes().all(|b| b.is_ascii_uppercase())
    {
        Some("invalid_currency")
    } else if command.payment_method.trim().is_empty() {
        Some("invalid_payment_method")
    } else {
        None
    }
}

/// What to do with a RefundPayment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundDecision {
    /// The order was charged: refund this charge, then mark the row REFUNDED.
    Refund { charge_id: String },
    /// Nothing was charged: write CANCELLED and answer with amount 0.
    Cancel,
    /// No payment row, but a charge may exist at the provider: look it up by this
    /// idempotency key; refund it if found, cancel otherwise.
    Reconcile { idempotency_key: String },
    /// Already compensated, or nothing to refund: emit this again and change nothing.
    Reply(Message),
}

/// Decide a RefundPayment given the order's payment and uncertain charge, if any.
pub fn decide_refund(
    existing: Option<&PaymentRow>,
    uncertain: Option<&UncertainCharge>,
    command: &RefundPayment,
    now: DateTime<Utc>,
) -> RefundDecision {
    let Some(row) = existing else {
        return match uncertain {
            Some(charge) => RefundDecision::Reconcile {
                idempotency_key: charge.idempotency_key.clone(),
            },
            None => RefundDecision::Cancel,
        };
    };
    let order_id = command.order_id;
    match (row.status, &row.charge_id) {
        (PaymentStatus::Authorized, Some(charge_id)) => RefundDecision::Refund {
            charge_id: charge_id.clone(),
        },
        (PaymentStatus::Refunded, charge_id) => RefundDecision::Reply(
            PaymentRefunded {
                order_id,
                payment_id: charge_id.clone(),
                amount_cents: row.amount_cents,
                currency: currency_of(row),
                refunded_at: millis(row.refunded_at.unwrap_or(row.updated_at)),
            }
            .into(),
        ),
        (PaymentStatus::Cancelled, _) => RefundDecision::Reply(nothing_refunded(
            order_id,
            currency_of(row),
            row.cancelled_at.unwrap_or(row.updated_at),
        )),
        // Declined (or, impossibly, authorized without a charge id): no money moved.
        (PaymentStatus::Declined | PaymentStatus::Authorized, _) => {
            RefundDecision::Reply(nothing_refunded(order_id, currency_of(row), now))
        }
    }
}

/// The answer to a refund of an order that was never charged.
pub fn nothing_refunded(order_id: uuid::Uuid, currency: String, at: DateTime<Utc>) -> Message {
    PaymentRefunded {
        order_id,
        payment_id: None,
        amount_cents: 0,
        currency,
        refunded_at: millis(at),
    }
    .into()
}

fn currency_of(row: &PaymentRow) -> String {
    row.currency
        .clone()
        .unwrap_or_else(|| NO_CURRENCY.to_string())
}

/// Epoch milliseconds, the unit of every `*_at` field of the messages.
pub fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// The row of a charged order.
pub fn authorized_row(
    command: &AuthorizePayment,
    charge_id: &str,
    amount_cents: i64,
    currency: &str,
    at: DateTime<Utc>,
) -> PaymentRow {
    PaymentRow {
        status: PaymentStatus::Authorized,
        amount_cents,
        currency: Some(currency.to_string()),
        charge_id: Some(charge_id.to_string()),
        authorized_at: Some(at),
        ..base_row(command, at)
    }
}

/// The row of a declined order.
pub fn declined_row(command: &AuthorizePayment, reason: &str, at: DateTime<Utc>) -> PaymentRow {
    PaymentRow {
        status: PaymentStatus::Declined,
        decline_reason: Some(reason.to_string()),
        declined_at: Some(at),
        ..base_row(command, at)
    }
}

/// The row of an order compensated before it was charged.
pub fn cancelled_row(order_id: uuid::Uuid, at: DateTime<Utc>) -> PaymentRow {
    PaymentRow {
        order_id,
        status: PaymentStatus::Cancelled,
        customer_id: None,
        amount_cents: 0,
        currency: None,
        payment_method: None,
        charge_id: None,
        refund_id: None,
        decline_reason: None,
        created_at: at,
        updated_at: at,
        authorized_at: None,
        declined_at: None,
        refunded_at: None,
        cancelled_at: Some(at),
    }
}

/// The row of a charge found at the provider after its outcome had been lost, refunded by a
/// compensation before this service ever recorded it.
pub fn reconciled_refund_row(
    order_id: uuid::Uuid,
    charge_id: &str,
    refund_id: &str,
    amount_cents: i64,
    currency: &str,
    at: DateTime<Utc>,
) -> PaymentRow {
    PaymentRow {
        status: PaymentStatus::Refunded,
        amount_cents,
        currency: Some(currency.to_string()),
        charge_id: Some(charge_id.to_string()),
        refund_id: Some(refund_id.to_string()),
        refunded_at: Some(at),
        cancelled_at: None,
        ..cancelled_row(order_id, at)
    }
}

fn base_row(command: &AuthorizePayment, at: DateTime<Utc>) -> PaymentRow {
    PaymentRow {
        customer_id: Some(command.customer_id),
        amount_cents: command.amount_cents,
        currency: Some(command.currency.clone()),
        payment_method: Some(command.payment_method.clone()),
        cancelled_at: None,
        ..cancelled_row(command.order_id, at)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use uuid::Uuid;

    use super::*;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, second).unwrap()
    }

    fn authorize(order_id: Uuid) -> AuthorizePayment {
        AuthorizePayment {
            order_id,
            customer_id: Uuid::from_u128(7),
            amount_cents: 4_200,
            currency: "EUR".into(),
            payment_method: "pm_card_visa".into(),
            charge_before: None,
        }
    }

    fn refund(order_id: Uuid) -> RefundPayment {
        RefundPayment {
            order_id,
            reason: "saga compensation".into(),
        }
    }

    fn order() -> Uuid {
        Uuid::from_u128(42)
    }

    #[test]
    fn authorize_without_payment_charges() {
        assert_eq!(
            decide_authorize(None, &authorize(order()), at(0)),
            AuthorizeDecision::Charge
        );
    }

    #[test]
    fn authorize_after_its_charge_before_declines_expired_without_charging() {
        let mut command = authorize(order());
        command.charge_before = Some(at(10).timestamp_millis());
        assert_eq!(
            decide_authorize(None, &command, at(10)),
            AuthorizeDecision::Charge,
            "up to the limit itself"
        );
        assert_eq!(
            decide_authorize(None, &command, at(11)),
            AuthorizeDecision::Expired
        );
    }

    #[test]
    fn an_expired_authorize_collects_a_charge_whose_outcome_was_lost_else_looks_it_up() {
        let note = UncertainCharge {
            order_id: order(),
            idempotency_key: "sagaflow-charge-42".into(),
            amount_cents: 4_200,
            currency: "EUR".into(),
        };
        assert_eq!(decide_expired(Some(&note)), ExpiredDecision::Collect);
        assert_eq!(decide_expired(None), ExpiredDecision::LookUp);
    }

    #[test]
    fn an_expired_authorize_for_a_decided_payment_re_emits_the_outcome() {
        let mut command = authorize(order());
        command.charge_before = Some(at(0).timestamp_millis());
        let row = authorized_row(&authorize(order()), "ch_1", 4_200, "EUR", at(0));
        assert!(matches!(
            decide_authorize(Some(&row), &command, at(30)),
            AuthorizeDecision::Reply(Message::PaymentAuthorized(_))
        ));
    }

    #[test]
    fn authorize_with_invalid_request_declines_without_charging() {
        let mut zero = authorize(order());
        zero.amount_cents = 0;
        let mut currency = authorize(order());
        currency.currency = "euro".into();
        let mut method = authorize(order());
        method.payment_method = " ".into();
        for (command, reason) in [
            (zero, "invalid_amount"),
            (currency, "invalid_currency"),
            (method, "invalid_payment_method"),
        ] {
            assert_eq!(
                decide_authorize(None, &command, at(0)),
                AuthorizeDecision::Decline {
                    reason: reason.into()
                }
            );
        }
    }

    #[test]
    fn authorize_again_re_emits_the_recorded_authorization() {
        let command = authorize(order());
        let row = authorized_row(&command, "ch_1", 4_200, "EUR", at(1));
        let expected = Message::from(PaymentAuthorized {
            order_id: order(),
            payment_id: "ch_1".into(),
            amount_cents: 4_200,
            currency: "EUR".into(),
            authorized_at: millis(at(1)),
        });
        assert_eq!(
            decide_authorize(Some(&row), &command, at(9)),
            AuthorizeDecision::Reply(expected)
        );
    }

    #[test]
    fn authorize_again_re_emits_the_recorded_decline() {
        let command = authorize(order());
        let row = declined_row(&command, "card_declined", at(1));
        let expected = Message::from(PaymentDeclined {
            order_id: order(),
            reason: "card_declined".into(),
            declined_at: millis(at(1)),
        });
        assert_eq!(
            decide_authorize(Some(&row), &command, at(9)),
            AuthorizeDecision::Reply(expected)
        );
    }

    #[test]
    fn authorize_after_compensation_is_declined_as_cancelled_without_charging() {
        let command = authorize(order());
        let cancelled = cancelled_row(order(), at(1));
        let refunded = PaymentRow {
            status: PaymentStatus::Refunded,
            refund_id: Some("re_1".into()),
            refunded_at: Some(at(2)),
            ..authorized_row(&command, "ch_1", 4_200, "EUR", at(1))
        };
        for row in [cancelled, refunded] {
            let expected = Message::from(PaymentDeclined {
                order_id: order(),
                reason: REASON_CANCELLED.into(),
                declined_at: millis(at(9)),
            });
            assert_eq!(
                decide_authorize(Some(&row), &command, at(9)),
                AuthorizeDecision::Reply(expected)
            );
        }
    }

    #[test]
    fn refund_of_a_charge_refunds_it() {
        let row = authorized_row(&authorize(order()), "ch_1", 4_200, "EUR", at(1));
        assert_eq!(
            decide_refund(Some(&row), None, &refund(order()), at(2)),
            RefundDecision::Refund {
                charge_id: "ch_1".into()
            }
        );
    }

    #[test]
    fn refund_without_payment_cancels() {
        assert_eq!(
            decide_refund(None, None, &refund(order()), at(2)),
            RefundDecision::Cancel
        );
    }

    #[test]
    fn refund_without_payment_but_an_uncertain_charge_reconciles_first() {
        let uncertain = UncertainCharge {
            order_id: order(),
            idempotency_key: "key".into(),
            amount_cents: 4_200,
            currency: "EUR".into(),
        };
        assert_eq!(
            decide_refund(None, Some(&uncertain), &refund(order()), at(2)),
            RefundDecision::Reconcile {
                idempotency_key: "key".into()
            }
        );
    }

    #[test]
    fn refund_again_re_emits_the_recorded_refund_and_never_refunds_twice() {
        let row = PaymentRow {
            status: PaymentStatus::Refunded,
            refund_id: Some("re_1".into()),
            refunded_at: Some(at(2)),
            ..authorized_row(&authorize(order()), "ch_1", 4_200, "EUR", at(1))
        };
        let expected = Message::from(PaymentRefunded {
            order_id: order(),
            payment_id: Some("ch_1".into()),
            amount_cents: 4_200,
            currency: "EUR".into(),
            refunded_at: millis(at(2)),
        });
        assert_eq!(
            decide_refund(Some(&row), None, &refund(order()), at(9)),
            RefundDecision::Reply(expected)
        );
    }

    #[test]
    fn refund_of_a_cancelled_or_declined_payment_answers_zero() {
        let cancelled = cancelled_row(order(), at(1));
        assert_eq!(
            decide_refund(Some(&cancelled), None, &refund(order()), at(9)),
            RefundDecision::Reply(nothing_refunded(order(), NO_CURRENCY.into(), at(1)))
        );
        let declined = declined_row(&authorize(order()), "card_declined", at(1));
        assert_eq!(
            decide_refund(Some(&declined), None, &refund(order()), at(9)),
            RefundDecision::Reply(nothing_refunded(order(), "EUR".into(), at(9)))
        );
    }

    #[test]
    fn rows_satisfy_the_table_constraints() {
        // charge id exactly when money moved; refund id exactly when refunded
        let command = authorize(order());
        let rows = [
            authorized_row(&command, "ch_1", 1, "EUR", at(0)),
            declined_row(&command, "card_declined", at(0)),
            cancelled_row(order(), at(0)),
            reconciled_refund_row(order(), "ch_1", "re_1", 1, "EUR", at(0)),
        ];
        for row in rows {
            let moved = matches!(
                row.status,
                PaymentStatus::Authorized | PaymentStatus::Refunded
            );
            assert_eq!(moved, row.charge_id.is_some(), "{row:?}");
            assert_eq!(
                row.status == PaymentStatus::Refunded,
                row.refund_id.is_some(),
                "{row:?}"
            );
            assert!(row.amount_cents >= 0);
        }
        assert_eq!(cancelled_row(order(), at(0)).amount_cents, 0);
    }
}
