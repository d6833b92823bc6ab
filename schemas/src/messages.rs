//! Typed Rust values of every message, and their Avro encoding.

use apache_avro::types::Value;
use apache_avro::{from_avro_datum, from_value, to_avro_datum, to_value};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{CodecError, registry, topics};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// A SKU and a quantity, as reserved, released or requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    pub sku: String,
    pub quantity: i32,
}

macro_rules! records {
    ($($(#[$doc:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? })*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
            pub struct $name { $(pub $field: $ty),* }
        )*
    };
}

records! {
    /// orders.events — an order was accepted.
    OrderPlaced { order_id: Uuid, customer_id: Uuid, items: Vec<OrderItem>, total_cents: i64,
                  currency: String, payment_method: String, placed_at: i64 }
    /// orders.events — the saga approved the order.
    OrderApproved { order_id: Uuid, customer_id: Uuid, total_cents: i64, currency: String,
                    approved_at: i64 }
    /// orders.events — the saga rejected the order.
    OrderRejected { order_id: Uuid, customer_id: Uuid, reason: String, rejected_at: i64 }
    /// inventory.events — every line reserved.
    StockReserved { order_id: Uuid, lines: Vec<StockLine>, reserved_at: i64 }
    /// inventory.events — nothing reserved.
    StockRejected { order_id: Uuid, reason: String, rejected_at: i64 }
    /// inventory.events — a reservation was returned (lines empty when there was none).
    StockReleased { order_id: Uuid, lines: Vec<StockLine>, released_at: i64 }
    /// payment.events — the total was charged.
    PaymentAuthorized { order_id: Uuid, payment_id: String, amount_cents: i64, currency: String,
                        authorized_at: i64 }
    /// payment.events — no charge was made.
    PaymentDeclined { order_id: Uuid, reason: String, declined_at: i64 }
    /// payment.events — a charge was refunded (amount 0 when nothing had been charged).
    PaymentRefunded { order_id: Uuid, payment_id: Option<String>, amount_cents: i64,
                      currency: String, refunded_at: i64 }
    /// notification.events — a customer notification was recorded.
    NotificationSent { order_id: Uuid, customer_id: Uuid, template: String, subject: String,
                       sent_at: i64 }
    /// inventory.commands
    ReserveStock { order_id: Uuid, lines: Vec<StockLine> }
    /// inventory.commands — compensation.
    ReleaseStock { order_id: Uuid, reason: String }
    /// payment.commands
    AuthorizePayment { order_id: Uuid, customer_id: Uuid, amount_cents: i64, currency: String,
                       payment_method: String, charge_before: Option<i64> }
    /// payment.commands — compensation.
    RefundPayment { order_id: Uuid, reason: String }
    /// orders.commands
    ApproveOrder { order_id: Uuid }
    /// orders.commands
    RejectOrder { order_id: Uuid, reason: String }
}

macro_rules! message_enum {
    ($($name:ident => $topic:expr),* $(,)?) => {
        /// Any Sagaflow message.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(untagged)]
        pub enum Message {
            $($name($name)),*
        }

        $(impl From<$name> for Message {
            fn from(message: $name) -> Self {
                Message::$name(message)
            }
        })*

        /// The type of a message: one variant per [`Message`] variant, named as the
        /// `ce_type` header and the schema record. Consumers say which they handle with
        /// these, so a misspelt type is a compile error, not a message silently skipped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum MessageType {
            $($name),*
        }

        impl MessageType {
            /// Every message type.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$name),*];

            /// Its name (`ce_type` header, schema record name).
            pub fn as_str(self) -> &'static str {
                match self { $(MessageType::$name => stringify!($name)),* }
            }

            /// The topic messages of this type are published to (before any prefix).
            pub fn topic(self) -> &'static str {
                match self { $(MessageType::$name => $topic),* }
            }
        }

        impl std::str::FromStr for MessageType {
            type Err = CodecError;

            fn from_str(name: &str) -> Result<Self, CodecError> {
                match name {
                    $(stringify!($name) => Ok(MessageType::$name),)*
                    other => Err(CodecError::UnknownType(other.to_string())),
                }
            }
        }

        impl std::fmt::Display for MessageType {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Message {
            /// Every message type name, as used in the `ce_type` header.
            pub const TYPES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Its type.
            pub fn kind(&self) -> MessageType {
                match self { $(Message::$name(_) => MessageType::$name),* }
            }

            /// The type name (`ce_type` header, schema record name).
            pub fn message_type(&self) -> &'static str {
                self.kind().as_str()
            }

            /// The topic a message of this type is published to (before any prefix).
            pub fn topic(&self) -> &'static str {
                match self { $(Message::$name(_) => $topic),* }
            }

            /// The aggregate id: the Kafka key.
            pub fn order_id(&self) -> Uuid {
                match self { $(Message::$name(m) => m.order_id),* }
            }

            fn to_avro(&self) -> Result<Value, apache_avro::Error> {
                match self { $(Message::$name(m) => to_value(m)),* }
            }

            fn from_avro(message_type: &str, value: &Value) -> Result<Self, CodecError> {
                let wrap = |e| avro_error(message_type, e);
                match message_type {
                    $(stringify!($name) => Ok(Message::$name(from_value(value).map_err(wrap)?)),)*
                    other => Err(CodecError::UnknownType(other.to_string())),
                }
            }
        }
    };
}

message_enum! {
    OrderPlaced => topics::ORDERS_EVENTS,
    OrderApproved => topics::ORDERS_EVENTS,
    OrderRejected => topics::ORDERS_EVENTS,
    StockReserved => topics::INVENTORY_EVENTS,
    StockRejected => topics::INVENTORY_EVENTS,
    StockReleased => topics::INVENTORY_EVENTS,
    PaymentAuthorized => topics::PAYMENT_EVENTS,
    PaymentDeclined => topics::PAYMENT_EVENTS,
    PaymentRefunded => topics::PAYMENT_EVENTS,
    NotificationSent => topics::NOTIFICATION_EVENTS,
    ReserveStock => topics::INVENTORY_COMMANDS,
    ReleaseStock => topics::INVENTORY_COMMANDS,
    AuthorizePayment => topics::PAYMENT_COMMANDS,
    RefundPayment => topics::PAYMENT_COMMANDS,
    ApproveOrder => topics::ORDERS_COMMANDS,
    RejectOrder => topics::ORDERS_COMMANDS,
}

/// Uuids travel as Avro `string` (logicalType uuid). apache-avro's serde bridge must say it
/// is human-readable for `uuid` to serialise as text rather than bytes; the setting is
/// process-global and set once, so every entry point makes sure of it.
fn human_readable_serde() {
    assert!(
        apache_avro::util::set_serde_human_readable(true),
        "apache-avro serde was set to non-human-readable elsewhere; uuids would encode as bytes"
    );
}

fn avro_error(message_type: &str, source: apache_avro::Error) -> CodecError {
    CodecError::Avro {
        message_type: message_type.to_string(),
        source: Box::new(source),
    }
}

/// An encoded message value and the reference to the schema that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub message_type: &'static str,
    pub schema_ref: String,
    pub bytes: Vec<u8>,
}

impl Message {
    /// Encode with the current schema of this message type.
    pub fn encode(&self) -> Result<Encoded, CodecError> {
        human_readable_serde();
        let message_type = self.message_type();
        let entry = registry::current(message_type)
            .ok_or_else(|| CodecError::UnknownType(message_type.to_string()))?;
        let wrap = |e| avro_error(message_type, e);
        let value = self
            .to_avro()
            .map_err(wrap)?
            .resolve(&entry.schema)
            .map_err(wrap)?;
        let bytes = to_avro_datum(&entry.schema, value).map_err(wrap)?;
        Ok(Encoded {
            message_type,
            schema_ref: entry.reference.clone(),
            bytes,
        })
    }

    /// Decode a value of `message_type` written with the schema `schema_ref` names (the
    /// current one when absent), resolved against the current schema.
    pub fn decode(
        message_type: &str,
        schema_ref: Option<&str>,
        bytes: &[u8],
    ) -> Result<Self, CodecError> {
        human_readable_serde();
        let reader = registry::current(message_type)
            .ok_or_else(|| CodecError::UnknownType(message_type.to_string()))?;
        let writer = match schema_ref {
            Some(reference) => registry::by_reference(reference)
                .ok_or_else(|| CodecError::UnknownSchema(reference.to_string()))?,
            None => reader,
        };
        let mut input = bytes;
        let value = from_avro_datum(&writer.schema, &mut input, Some(&reader.schema))
            .map_err(|e| avro_error(message_type, e))?;
        Self::from_avro(message_type, &value)
    }
}

/// Decode any value whose writer schema is known, into JSON, without knowing its Rust type.
/// Used by tools (`sagaflow tail`, `dlq list`) that show messages as they are.
pub fn decode_to_json(schema_ref: &str, bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
    human_readable_serde();
    let writer = registry::by_reference(schema_ref)
        .ok_or_else(|| CodecError::UnknownSchema(schema_ref.to_string()))?;
    let mut input = bytes;
    let value = from_avro_datum(&writer.schema, &mut input, None)
        .map_err(|e| avro_error(writer.message_type, e))?;
    serde_json::Value::try_from(value).map_err(|e| avro_error(writer.message_type, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_type_is_named_as_its_ce_type_and_parses_back() {
        assert_eq!(MessageType::ALL.len(), Message::TYPES.len());
        for (kind, name) in MessageType::ALL.iter().zip(Message::TYPES) {
            assert_eq!(kind.as_str(), *name);
            assert_eq!(name.parse::<MessageType>().unwrap(), *kind);
        }
        assert!(matches!(
            "ApproveOrders".parse::<MessageType>(),
            Err(CodecError::UnknownType(name)) if name == "ApproveOrders"
        ));
    }

    #[test]
    fn a_message_knows_its_type_and_the_type_its_topic() {
        let approve = Message::from(ApproveOrder { order_id: id(1) });
        assert_eq!(approve.kind(), MessageType::ApproveOrder);
        assert_eq!(approve.message_type(), "ApproveOrder");
        assert_eq!(approve.kind().topic(), approve.topic());
        assert_eq!(MessageType::StockReserved.topic(), topics::INVENTORY_EVENTS);
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn lines() -> Vec<StockLine> {
        vec![
            StockLine {
                sku: "SKU-1".into(),
                quantity: 2,
            },
            StockLine {
                sku: "SKU-2".into(),
                quantity: 1,
            },
        ]
    }

    /// One example of every message type.
    fn every_message() -> Vec<Message> {
        let at = 1_763_000_000_123;
        vec![
            OrderPlaced {
                order_id: id(1),
                customer_id: id(2),
                items: vec![OrderItem {
                    sku: "SKU-1".into(),
                    quantity: 2,
                    unit_price_cents: 1250,
                }],
                total_cents: 2500,
                currency: "EUR".into(),
                payment_method: "pm_card_visa".into(),
                placed_at: at,
            }
            .into(),
            OrderApproved {
                order_id: id(1),
                customer_id: id(2),
                total_cents: 2500,
                currency: "EUR".into(),
                approved_at: at,
            }
            .into(),
            OrderRejected {
                order_id: id(1),
                customer_id: id(2),
                reason: "out of stock".into(),
                rejected_at: at,
            }
            .into(),
            StockReserved {
                order_id: id(1),
                lines: lines(),
                reserved_at: at,
            }
            .into(),
            StockRejected {
                order_id: id(1),
                reason: "SKU-1 short by 3".into(),
                rejected_at: at,
            }
            .into(),
            StockReleased {
                order_id: id(1),
                lines: vec![],
                released_at: at,
            }
            .into(),
            PaymentAuthorized {
                order_id: id(1),
                payment_id: "ch_1".into(),
                amount_cents: 2500,
                currency: "EUR".into(),
                authorized_at: at,
            }
            .into(),
            PaymentDeclined {
                order_id: id(1),
                reason: "card_declined".into(),
                declined_at: at,
            }
            .into(),
            PaymentRefunded {
                order_id: id(1),
                payment_id: Some("ch_1".into()),
                amount_cents: 2500,
                currency: "EUR".into(),
                refunded_at: at,
            }
            .into(),
            PaymentRefunded {
                order_id: id(1),
                payment_id: None,
                amount_cents: 0,
                currency: "EUR".into(),
                refunded_at: at,
            }
            .into(),
            NotificationSent {
                order_id: id(1),
                customer_id: id(2),
                template: "order_approved".into(),
                subject: "Your order".into(),
                sent_at: at,
            }
            .into(),
            ReserveStock {
                order_id: id(1),
                lines: lines(),
            }
            .into(),
            ReleaseStock {
                order_id: id(1),
                reason: "payment declined".into(),
            }
            .into(),
            AuthorizePayment {
                order_id: id(1),
                customer_id: id(2),
                amount_cents: 2500,
                currency: "EUR".into(),
                payment_method: "pm_card_visa".into(),
                charge_before: Some(1_764_000_000_000),
            }
            .into(),
            RefundPayment {
                order_id: id(1),
                reason: "timeout".into(),
            }
            .into(),
            ApproveOrder { order_id: id(1) }.into(),
            RejectOrder {
                order_id: id(1),
                reason: "declined".into(),
            }
            .into(),
        ]
    }

    #[test]
    fn every_message_type_round_trips_through_its_schema() {
        let messages = every_message();
        let covered: std::collections::BTreeSet<_> =
            messages.iter().map(|m| m.message_type()).collect();
        assert_eq!(
            covered.len(),
            Message::TYPES.len(),
            "a message type has no round-trip example"
        );
        for message in messages {
            let encoded = message.encode().unwrap();
            assert!(encoded.schema_ref.contains(message.message_type()));
            let decoded = Message::decode(
                encoded.message_type,
                Some(&encoded.schema_ref),
                &encoded.bytes,
            )
            .unwrap();
            assert_eq!(decoded, message);
        }
    }

    #[test]
    fn every_type_has_a_current_and_a_released_schema() {
        for message_type in Message::TYPES {
            assert!(registry::current(message_type).is_some(), "{message_type}");
            assert!(
                registry::all_released()
                    .iter()
                    .any(|e| e.message_type == *message_type),
                "{message_type}"
            );
        }
    }

    #[test]
    fn a_value_decodes_to_json_from_its_writer_schema_alone() {
        let message: Message = ApproveOrder { order_id: id(7) }.into();
        let encoded = message.encode().unwrap();
        let json = decode_to_json(&encoded.schema_ref, &encoded.bytes).unwrap();
        assert_eq!(json["order_id"], serde_json::json!(id(7).to_string()));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let reference = registry::current("OrderPlaced").unwrap().reference.clone();
        assert!(Message::decode("OrderPlaced", Some(&reference), &[0xff, 0xff, 0x01]).is_err());
        assert!(matches!(
            Message::decode("Nope", None, &[]),
            Err(CodecError::UnknownType(_))
        ));
        assert!(matches!(
            Message::decode("OrderPlaced", Some("x@00"), &[]),
            Err(CodecError::UnknownSchema(_))
        ));
    }
}
