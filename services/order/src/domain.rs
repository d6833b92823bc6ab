//! The order request and its rules, without I/O.

use sagaflow_schemas::{OrderItem, OrderPlaced};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

sagaflow_runtime::text_enum! {
    /// Where an order stands (`orders.status`): PENDING until the saga (or the order
    /// deadline) decides it, then APPROVED or REJECTED for good.
    // The schema's names: utoipa cannot read each variant's rename through the macro.
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum OrderStatus("order status") {
        Pending = "PENDING",
        Approved = "APPROVED",
        Rejected = "REJECTED",
    }
}

pub const MAX_LINES: usize = 100;
pub const MAX_QUANTITY: i64 = 10_000;
pub const MAX_UNIT_PRICE_CENTS: i64 = 100_000_000;

/// The body of `POST /orders`. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "customer_id": "0190b6d2-0000-7000-8000-000000000001",
    "items": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}],
    "currency": "EUR",
    "payment_method": "pm_card_visa"
}))]
pub struct NewOrder {
    /// The customer: the token's `sub` unless the caller is an admin.
    pub customer_id: Uuid,
    /// 1 to 100 lines.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderLine>,
    /// ISO 4217 code, three upper-case letters (e.g. EUR).
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// 1-64 characters of `[A-Za-z0-9_]`; `pm_card_chargeDeclined` is declined.
    #[schema(pattern = "^[A-Za-z0-9_]{1,64}$")]
    pub payment_method: String,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// 1-64 characters of `[A-Za-z0-9._-]`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// 1 to 10000. (i64 so that an overflowing or negative value is a validation error
    /// naming the field, not a type error.)
    #[schema(minimum = 1, maximum = 10000)]
    pub quantity: i64,
    /// 0 to 100000000, in the currency's minor units.
    #[schema(minimum = 0, maximum = 100000000)]
    pub unit_price_cents: i64,
}

/// A rule the request breaks, with the field it concerns (JSON path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

/// Validate and compute the total in minor units.
pub fn validate(order: &NewOrder) -> Result<i64, ValidationError> {
    if order.items.is_empty() {
        return Err(invalid("items", "an order needs at least one line"));
    }
    if order.items.len() > MAX_LINES {
        return Err(invalid("items", format!("at most {MAX_LINES} lines")));
    }
    if order.currency.len() != 3 || !order.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid("currency", "an ISO 4217 code like EUR"));
    }
    let method_ok = (1..=64).contains(&order.payment_method.len())
        && order
            .payment_method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !method_ok {
        return Err(invalid(
            "payment_method",
            "1-64 characters of [A-Za-z0-9_], e.g. pm_card_visa",
        ));
    }
    let mut total: i64 = 0;
    for (i, line) in order.items.iter().enumerate() {
        let sku_ok = (1..=64).contains(&line.sku.len())
            && line
                .sku
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !sku_ok {
            return Err(invalid(
                format!("items[{i}].sku"),
                "1-64 characters of [A-Za-z0-9._-]",
            ));
        }
        if !(1..=MAX_QUANTITY).contains(&line.quantity) {
            return Err(invalid(
                format!("items[{i}].quantity"),
                format!("between 1 and {MAX_QUANTITY}"),
            ));
        }
        if !(0..=MAX_UNIT_PRICE_CENTS).contains(&line.unit_price_cents) {
            return Err(invalid(
                format!("items[{i}].unit_price_cents"),
                format!("between 0 and {MAX_UNIT_PRICE_CENTS}"),
            ));
        }
        total = line
            .quantity
            .checked_mul(line.unit_price_cents)
            .and_then(|amount| total.checked_add(amount))
            .ok_or_else(|| invalid(format!("items[{i}]"), "the order total overflows"))?;
    }
    Ok(total)
}

/// Why an order still PENDING at its order deadline is rejected, e.g. "no saga decision
/// within the order deadline (2h)".
pub fn deadline_reason(deadline: std::time::Duration) -> String {
    let secs = deadline.as_secs();
    let span = match secs {
        0 => format!("{}ms", deadline.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}min", s / 60),
        s => format!("{s}s"),
    };
    format!("no saga decision within the order deadline ({span})")
}

/// The request hash an Idempotency-Key is stored with: SHA-256 of the order's JSON, so that
/// a key reused with another body is told apart from a retry.
pub fn request_hash(order: &NewOrder) -> Result<String, serde_json::Error> {
    Ok(hex::encode(Sha256::digest(serde_json::to_vec(order)?)))
}

/// The `OrderPlaced` event of a validated order (`total_cents` from [`validate`]).
pub fn order_placed(
    order_id: Uuid,
    order: &NewOrder,
    total_cents: i64,
    placed_at: i64,
) -> OrderPlaced {
    OrderPlaced {
        order_id,
        customer_id: order.customer_id,
        items: order
            .items
            .iter()
            .map(|l| OrderItem {
                sku: l.sku.clone(),
                quantity: l.quantity as i32, // validated <= MAX_QUANTITY
                unit_price_cents: l.unit_price_cents,
            })
            .collect(),
        total_cents,
        currency: order.currency.clone(),
        payment_method: order.payment_method.clone(),
        placed_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_deadline_reason_names_the_deadline() {
        for (secs, span) in [(7200, "2h"), (5400, "90min"), (3, "3s"), (0, "0ms")] {
            assert_eq!(
                deadline_reason(Duration::from_secs(secs)),
                format!("no saga decision within the order deadline ({span})")
            );
        }
    }

    fn order() -> NewOrder {
        NewOrder {
            customer_id: Uuid::nil(),
            items: vec![
                OrderLine {
                    sku: "SKU-1".into(),
                    quantity: 2,
                    unit_price_cents: 1250,
                },
                OrderLine {
                    sku: "SKU-2".into(),
                    quantity: 1,
                    unit_price_cents: 500,
                },
            ],
            currency: "EUR".into(),
            payment_method: "pm_card_visa".into(),
        }
    }

    #[test]
    fn a_valid_order_totals_its_lines() {
        assert_eq!(validate(&order()), Ok(3000));
    }

    #[test]
    fn each_rule_names_its_field() {
        type Breaker = Box<dyn Fn(&mut NewOrder)>;
        let cases: Vec<(Breaker, &str)> = vec![
            (Box::new(|o| o.items.clear()), "items"),
            (
                Box::new(|o| o.items = vec![o.items[0].clone(); MAX_LINES + 1]),
                "items",
            ),
            (Box::new(|o| o.currency = "eur".into()), "currency"),
            (
                Box::new(|o| o.payment_method = String::new()),
                "payment_method",
            ),
            (
                Box::new(|o| o.items[1].sku = "bad sku".into()),
                "items[1].sku",
            ),
            (Box::new(|o| o.items[0].quantity = 0), "items[0].quantity"),
            (Box::new(|o| o.items[0].quantity = -3), "items[0].quantity"),
            (
                Box::new(|o| o.items[1].unit_price_cents = -1),
                "items[1].unit_price_cents",
            ),
        ];
        for (break_it, field) in cases {
            let mut o = order();
            break_it(&mut o);
            assert_eq!(validate(&o).unwrap_err().field, field);
        }
    }

    #[test]
    fn the_largest_allowed_order_totals_exactly() {
        let mut o = order();
        o.items = vec![
            OrderLine {
                sku: "A".into(),
                quantity: MAX_QUANTITY,
                unit_price_cents: MAX_UNIT_PRICE_CENTS
            };
            MAX_LINES
        ];
        assert_eq!(validate(&o), Ok(100 * 10_000 * 100_000_000));
    }
}
