//! Which notification an order event calls for, and its text. Pure: no I/O, no clock.

use sagaflow_schemas::{Message, OrderApproved, OrderRejected};
use uuid::Uuid;

/// Template of the notification for an approved order.
pub const ORDER_APPROVED: &str = "order_approved";
/// Template of the notification for a rejected order.
pub const ORDER_REJECTED: &str = "order_rejected";

/// Longest reason quoted in a subject line (the body carries it whole).
const SUBJECT_REASON_MAX_CHARS: usize = 120;

/// A notification to record and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub template: &'static str,
    pub subject: String,
    pub body: String,
}

/// The notification for a terminal order event; `None` for any other message.
pub fn compose(message: &Message) -> Option<Notification> {
    match message {
        Message::OrderApproved(event) => Some(approved(event)),
        Message::OrderRejected(event) => Some(rejected(event)),
        _ => None,
    }
}

fn approved(event: &OrderApproved) -> Notification {
    Notification {
        order_id: event.order_id,
        customer_id: event.customer_id,
        template: ORDER_APPROVED,
        subject: format!("Your order {} is confirmed", short_id(event.order_id)),
        body: format!(
            "Good news: your order {} has been approved.\nTotal: {}.\nWe will let you know when it ships.",
            event.order_id,
            format_amount(event.total_cents, &event.currency)
        ),
    }
}

fn rejected(event: &OrderRejected) -> Notification {
    Notification {
        order_id: event.order_id,
        customer_id: event.customer_id,
        template: ORDER_REJECTED,
        subject: format!(
            "Your order {} could not be completed: {}",
            short_id(event.order_id),
            one_line(&event.reason, SUBJECT_REASON_MAX_CHARS)
        ),
        body: format!(
            "We are sorry: your order {} could not be completed.\nReason: {}.\n\
             Any payment taken for it is refunded and any reserved items are released.",
            event.order_id, event.reason
        ),
    }
}

/// The first block of the order id: enough for a person to recognise the order in a subject.
fn short_id(order_id: Uuid) -> String {
    order_id.simple().to_string()[..8].to_string()
}

/// `text` as one line of at most `max` characters: a subject with a line break would be
/// rejected (or worse, interpreted as a header) by mail transports.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// An amount in minor units as people read it: `1234, "EUR"` → `12.34 EUR`, using the
/// currency's ISO 4217 minor units (0 for JPY, 3 for KWD, 2 otherwise).
pub fn format_amount(minor: i64, currency: &str) -> String {
    let digits: u32 = match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    if digits == 0 {
        return format!("{sign}{magnitude} {currency}");
    }
    let scale = 10u64.pow(digits);
    format!(
        "{sign}{}.{:0width$} {currency}",
        magnitude / scale,
        magnitude % scale,
        width = digits as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_schemas::{ApproveOrder, OrderPlaced};

    fn order() -> Uuid {
        Uuid::parse_str("0195f0c2-7a1b-7c3d-8e4f-a1b2c3d4e5f6").unwrap()
    }

    fn customer() -> Uuid {
        Uuid::from_u128(42)
    }

    #[test]
    fn given_an_approved_order_then_the_customer_gets_a_confirmation_with_the_total() {
        let event = OrderApproved {
            order_id: order(),
            customer_id: customer(),
            total_cents: 2500,
            currency: "EUR".into(),
            approved_at: 0,
        };
        let n = compose(&event.into()).unwrap();
        assert_eq!(n.template, ORDER_APPROVED);
        assert_eq!((n.order_id, n.customer_id), (order(), customer()));
        assert_eq!(n.subject, "Your order 0195f0c2 is confirmed");
        assert!(n.body.contains("25.00 EUR"), "{}", n.body);
        assert!(n.body.contains(&order().to_string()));
    }

    #[test]
    fn given_a_rejected_order_then_subject_and_body_give_the_reason() {
        let event = OrderRejected {
            order_id: order(),
            customer_id: customer(),
            reason: "SKU-1 out of stock".into(),
            rejected_at: 0,
        };
        let n = compose(&event.into()).unwrap();
        assert_eq!(n.template, ORDER_REJECTED);
        assert_eq!(
            n.subject,
            "Your order 0195f0c2 could not be completed: SKU-1 out of stock"
        );
        assert!(n.body.contains("Reason: SKU-1 out of stock."), "{}", n.body);
    }

    #[test]
    fn given_a_multi_line_or_long_reason_then_the_subject_stays_one_short_line() {
        let event = OrderRejected {
            order_id: order(),
            customer_id: customer(),
            reason: format!("declined\r\nBcc: x@example.com {}", "x".repeat(500)),
            rejected_at: 0,
        };
        let n = compose(&event.into()).unwrap();
        assert!(!n.subject.contains(['\r', '\n']), "{}", n.subject);
        assert!(n.subject.contains("declined Bcc: x@example.com"));
        assert!(n.subject.chars().count() < 200);
        assert!(n.body.contains(&"x".repeat(500)));
    }

    #[test]
    fn given_any_other_message_then_there_is_nothing_to_send() {
        let placed = OrderPlaced {
            order_id: order(),
            customer_id: customer(),
            items: vec![],
            total_cents: 0,
            currency: "EUR".into(),
            payment_method: "pm".into(),
            placed_at: 0,
        };
        assert_eq!(compose(&placed.into()), None);
        assert_eq!(compose(&ApproveOrder { order_id: order() }.into()), None);
    }

    #[test]
    fn amounts_use_the_currency_minor_units() {
        assert_eq!(format_amount(2500, "EUR"), "25.00 EUR");
        assert_eq!(format_amount(5, "USD"), "0.05 USD");
        assert_eq!(format_amount(1500, "JPY"), "1500 JPY");
        assert_eq!(format_amount(1234, "KWD"), "1.234 KWD");
        assert_eq!(format_amount(-199, "EUR"), "-1.99 EUR");
        assert_eq!(format_amount(i64::MIN, "EUR"), "-92233720368547758.08 EUR");
    }
}
