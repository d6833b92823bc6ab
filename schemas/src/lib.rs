//! The event and command contracts of Sagaflow.
//!
//! Every message on Kafka is one of the records in `schemas/avro/*.avsc`, encoded as a plain
//! Avro datum (no registry framing). The Kafka key is the aggregate (order) id as UTF-8 and
//! the envelope travels in headers (see [`envelope`]); the `ce_dataschema` header names the
//! writer schema by its Rabin fingerprint, so any reader can find the exact writer schema in
//! [`registry`] and resolve it against the schema it was compiled with.
//!
//! `schemas/avro/released/` holds the last released version of every schema; the
//! [`compatibility`] gate fails when the current one stops being fully compatible with it.

pub mod asyncapi;
pub mod compatibility;
pub mod envelope;
mod messages;
pub mod registry;

pub use envelope::{Envelope, EnvelopeError, headers as header_names};
pub use messages::*;

/// Kafka topics, before the deployment's optional prefix is applied.
pub mod topics {
    pub const ORDERS_EVENTS: &str = "orders.events";
    pub const ORDERS_COMMANDS: &str = "orders.commands";
    pub const INVENTORY_COMMANDS: &str = "inventory.commands";
    pub const INVENTORY_EVENTS: &str = "inventory.events";
    pub const PAYMENT_COMMANDS: &str = "payment.commands";
    pub const PAYMENT_EVENTS: &str = "payment.events";
    pub const NOTIFICATION_EVENTS: &str = "notification.events";

    /// Every domain topic, for start-up creation.
    pub const ALL: &[&str] = &[
        ORDERS_EVENTS,
        ORDERS_COMMANDS,
        INVENTORY_COMMANDS,
        INVENTORY_EVENTS,
        PAYMENT_COMMANDS,
        PAYMENT_EVENTS,
        NOTIFICATION_EVENTS,
    ];

    /// The dead-letter topic of a source topic.
    pub fn dlq(topic: &str) -> String {
        format!("{topic}{DLQ_SUFFIX}")
    }

    /// The suffix of dead-letter topics.
    pub const DLQ_SUFFIX: &str = ".dlq";

    /// Whether a (possibly prefixed) topic name is a dead-letter topic.
    pub fn is_dlq(topic: &str) -> bool {
        topic.ends_with(DLQ_SUFFIX)
    }
}

/// Errors of encoding or decoding a message value.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("unknown writer schema {0:?}")]
    UnknownSchema(String),
    #[error("{message_type}: avro: {source}")]
    Avro {
        message_type: String,
        #[source]
        source: Box<apache_avro::Error>,
    },
}
