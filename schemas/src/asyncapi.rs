//! The AsyncAPI 3.0 document of Sagaflow's topics, generated from what the code uses: the
//! topic list ([`crate::topics`]), each message type's topic ([`MessageType::topic`]), the
//! Avro schemas compiled in ([`crate::registry`], i.e. `schemas/avro/*.avsc`) and the header
//! names ([`crate::header_names`]).
//!
//! - One channel per topic and one per dead-letter topic (`<topic>.dlq`), addressed by the
//!   unprefixed name (a deployment's `SAGAFLOW_TOPIC_PREFIX` goes in front).
//! - One message per type: the payload is the Avro schema itself
//!   (`schemaFormat: application/vnd.apache.avro;version=1.9.0`), the headers the envelope
//!   (CloudEvents Kafka binding names) with `ce_type` and `ce_dataschema` fixed to the type
//!   and its current writer schema, the Kafka key the order id as UTF-8. The dead-letter twin
//!   of each message adds the `dlq_*` reason headers.
//!
//! Served as `GET /asyncapi.json`, written by `sagaflow asyncapi`, committed as
//! `docs/asyncapi.json` (a test fails when that copy is stale).

use serde_json::{Map, Value, json};

use crate::envelope::{self, headers};
use crate::{MessageType, registry, topics};

/// The media type of an Avro schema used as a payload schema.
pub const AVRO_SCHEMA_FORMAT: &str = "application/vnd.apache.avro;version=1.9.0";

/// The Kafka bindings version the document uses.
const KAFKA_BINDING: &str = "0.5.0";

/// The AsyncAPI document.
pub fn document() -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    for topic in topics::ALL {
        channels.insert(topic.to_string(), channel(topic, false));
        channels.insert(topics::dlq(topic), channel(topic, true));
        operations.insert(format!("publish.{topic}"), operation("send", topic, false));
        operations.insert(
            format!("consume.{topic}"),
            operation("receive", topic, false),
        );
        operations.insert(
            format!("dead-letter.{topic}"),
            operation("send", topic, true),
        );
    }
    let mut messages = Map::new();
    for kind in MessageType::ALL {
        messages.insert(kind.as_str().to_string(), message(*kind, false));
        messages.insert(dead_letter_name(*kind), message(*kind, true));
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Sagaflow topics",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The order saga's events and commands on Kafka. Producers write \
                outbox rows in the transaction of their state change; the outbox relay publishes \
                them (idempotent producer, acks=all, per-key order). Consumers apply each \
                message once (inbox) and send what keeps failing to <topic>.dlq with reason \
                headers. Topic names are shown unprefixed: SAGAFLOW_TOPIC_PREFIX goes in front.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": envelope::CONTENT_TYPE,
        "servers": {
            "dev": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The embedded broker of `sagaflow dev` (KAFKA_BROKERS elsewhere).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": {
                "EnvelopeHeaders": envelope_headers(),
                "DeadLetterHeaders": dead_letter_headers(),
                "OrderKey": {
                    "type": "string",
                    "format": "uuid",
                    "description": "The Kafka key: the order (saga) id as UTF-8 text, so every \
                        message of one order lands on one partition, in order.",
                },
            },
        },
    })
}

/// [`document`] as served and committed: pretty JSON with a final newline.
pub fn render() -> String {
    let mut text =
        serde_json::to_string_pretty(&document()).expect("a JSON value always serialises");
    text.push('\n');
    text
}

/// The message types published to `topic`, in declaration order.
fn types_of(topic: &str) -> impl Iterator<Item = MessageType> + '_ {
    MessageType::ALL
        .iter()
        .copied()
        .filter(move |kind| kind.topic() == topic)
}

fn dead_letter_name(kind: MessageType) -> String {
    format!("{}.dead-letter", kind.as_str())
}

fn message_name(kind: MessageType, dead_letter: bool) -> String {
    if dead_letter {
        dead_letter_name(kind)
    } else {
        kind.as_str().to_string()
    }
}

fn channel(topic: &str, dead_letter: bool) -> Value {
    let address = if dead_letter {
        topics::dlq(topic)
    } else {
        topic.to_string()
    };
    let messages: Map<String, Value> = types_of(topic)
        .map(|kind| {
            let name = message_name(kind, dead_letter);
            let reference = json!({"$ref": format!("#/components/messages/{name}")});
            (name, reference)
        })
        .collect();
    let description = if dead_letter {
        format!(
            "Dead letters of {topic}: messages a consumer could not apply after its attempts \
             (or could not read at all), as they were, plus dlq_* reason headers. Kept for \
             ever (retention.ms=-1); `sagaflow dlq redrive` sends them back to {topic} with \
             the same message id."
        )
    } else {
        format!("{topic}: {}", purpose(topic))
    };
    json!({
        "address": address,
        "description": description,
        "messages": messages,
        "bindings": {"kafka": {"topic": address, "bindingVersion": KAFKA_BINDING}},
    })
}

/// What a topic carries and who writes and reads it.
fn purpose(topic: &str) -> &'static str {
    match topic {
        topics::ORDERS_EVENTS => {
            "order-service's events; read by the saga orchestrator, notification-service and \
             the query service."
        }
        topics::ORDERS_COMMANDS => "the saga's commands to order-service.",
        topics::INVENTORY_COMMANDS => "the saga's commands to inventory-service.",
        topics::INVENTORY_EVENTS => {
            "inventory-service's answers; read by the saga orchestrator and the query service."
        }
        topics::PAYMENT_COMMANDS => "the saga's commands to payment-service.",
        topics::PAYMENT_EVENTS => {
            "payment-service's answers; read by the saga orchestrator and the query service."
        }
        topics::NOTIFICATION_EVENTS => "what notification-service sent; read by the query service.",
        _ => "a Sagaflow topic.",
    }
}

fn operation(action: &str, topic: &str, dead_letter: bool) -> Value {
    let channel_id = if dead_letter {
        topics::dlq(topic)
    } else {
        topic.to_string()
    };
    let messages: Vec<Value> = types_of(topic)
        .map(|kind| {
            json!({"$ref": format!(
                "#/channels/{channel_id}/messages/{}",
                message_name(kind, dead_letter)
            )})
        })
        .collect();
    let summary = match (action, dead_letter) {
        ("send", false) => format!("The outbox relay publishes the rows written for {topic}."),
        ("receive", _) => format!("Consumers of {topic} (one consumer group per component)."),
        _ => format!("A consumer of {topic} parks a message it cannot apply."),
    };
    json!({
        "action": action,
        "channel": {"$ref": format!("#/channels/{channel_id}")},
        "summary": summary,
        "messages": messages,
    })
}

fn message(kind: MessageType, dead_letter: bool) -> Value {
    let entry = registry::current(kind.as_str())
        .unwrap_or_else(|| panic!("{kind} has no schema in schemas/avro (a build defect)"));
    let source = registry::CURRENT_SOURCES
        .iter()
        .find(|(name, _)| *name == kind.as_str())
        .map(|(_, text)| *text)
        .unwrap_or_else(|| panic!("{kind} has no .avsc source"));
    let schema: Value = serde_json::from_str(source)
        .unwrap_or_else(|e| panic!("schemas/avro/{kind}.avsc is not JSON: {e}"));
    let base = if dead_letter {
        "DeadLetterHeaders"
    } else {
        "EnvelopeHeaders"
    };
    let headers = json!({
        "allOf": [
            {"$ref": format!("#/components/schemas/{base}")},
            {
                "type": "object",
                "properties": {
                    headers::TYPE: {"const": kind.as_str()},
                    headers::SCHEMA: {
                        "type": "string",
                        "description": "The writer schema; this build writes the one shown.",
                        "examples": [entry.reference],
                    },
                },
            },
        ],
    });
    let summary = schema
        .get("doc")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let title = if dead_letter {
        format!("{kind} (dead letter)")
    } else {
        kind.to_string()
    };
    json!({
        "name": kind.as_str(),
        "title": title,
        "summary": summary,
        "contentType": envelope::CONTENT_TYPE,
        "headers": headers,
        "payload": {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": schema},
        "correlationId": {
            "description": "The saga (order) this message belongs to.",
            "location": format!("$message.header#/{}", headers::CORRELATION_ID),
        },
        "bindings": {
            "kafka": {
                "key": {"$ref": "#/components/schemas/OrderKey"},
                "bindingVersion": KAFKA_BINDING,
            },
        },
    })
}

/// The envelope headers of every message (values are UTF-8 text).
fn envelope_headers() -> Value {
    let uuid =
        |description: &str| json!({"type": "string", "format": "uuid", "description": description});
    let text = |description: &str| json!({"type": "string", "description": description});
    json!({
        "type": "object",
        "description": "The envelope, in Kafka headers (CloudEvents Kafka binding, binary mode).",
        "required": [
            headers::SPEC_VERSION, headers::ID, headers::TYPE, headers::SOURCE, headers::TIME,
            headers::SCHEMA, headers::CONTENT_TYPE, headers::CORRELATION_ID,
        ],
        "properties": {
            headers::SPEC_VERSION: {"const": envelope::SPEC_VERSION},
            headers::ID: uuid("The message id (UUID v7); consumers apply a message id once."),
            headers::TYPE: text("The message type: the Avro record's name."),
            headers::SOURCE: text("The component that wrote it, e.g. order-service."),
            headers::TIME: {"type": "string", "format": "date-time", "description": "When it was written (RFC 3339, UTC)."},
            headers::SCHEMA: text("`<full schema name>@<Rabin fingerprint>` of the writer schema."),
            headers::CONTENT_TYPE: {"const": envelope::CONTENT_TYPE},
            headers::CORRELATION_ID: uuid("The saga: the order id."),
            headers::CAUSATION_ID: uuid("The message that caused this one, if any."),
            headers::TRACEPARENT: text("W3C trace context of the span that wrote it."),
        },
    })
}

/// The envelope plus what a consumer adds when it dead-letters a message.
fn dead_letter_headers() -> Value {
    let text = |description: &str| json!({"type": "string", "description": description});
    json!({
        "allOf": [
            {"$ref": "#/components/schemas/EnvelopeHeaders"},
            {
                "type": "object",
                "required": [
                    headers::DLQ_REASON, headers::DLQ_ERROR_KIND, headers::DLQ_SOURCE_TOPIC,
                    headers::DLQ_SOURCE_PARTITION, headers::DLQ_SOURCE_OFFSET,
                    headers::DLQ_CONSUMER, headers::DLQ_ATTEMPTS, headers::DLQ_TIME,
                ],
                "properties": {
                    headers::DLQ_REASON: text("Why the message was parked (the last error)."),
                    headers::DLQ_ERROR_KIND: {
                        "type": "string",
                        "enum": ["failed", "rejected", "malformed_envelope", "unknown_type", "unknown_schema", "undecodable"],
                        "description": "failed: the handler kept failing; rejected: the handler refused it; the others: it could not be read.",
                    },
                    headers::DLQ_SOURCE_TOPIC: text("The topic it came from (unprefixed)."),
                    headers::DLQ_SOURCE_PARTITION: text("Its partition there (decimal)."),
                    headers::DLQ_SOURCE_OFFSET: text("Its offset there (decimal)."),
                    headers::DLQ_CONSUMER: text("The consumer (group) that parked it."),
                    headers::DLQ_ATTEMPTS: text("Attempts made (decimal)."),
                    headers::DLQ_TIME: {"type": "string", "format": "date-time", "description": "When it was parked."},
                },
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_and_its_dead_letter_topic_is_a_channel() {
        let doc = document();
        let channels = doc["channels"].as_object().unwrap();
        assert_eq!(channels.len(), topics::ALL.len() * 2);
        for topic in topics::ALL {
            assert_eq!(channels[*topic]["address"], *topic);
            assert_eq!(channels[&topics::dlq(topic)]["address"], topics::dlq(topic));
        }
    }

    #[test]
    fn every_message_type_carries_its_avro_schema_on_its_topic() {
        let doc = document();
        for kind in MessageType::ALL {
            let message = &doc["components"]["messages"][kind.as_str()];
            assert_eq!(message["payload"]["schemaFormat"], AVRO_SCHEMA_FORMAT);
            assert_eq!(message["payload"]["schema"]["name"], kind.as_str());
            let channel = &doc["channels"][kind.topic()]["messages"][kind.as_str()];
            assert_eq!(
                channel["$ref"],
                format!("#/components/messages/{}", kind.as_str())
            );
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for reference in refs {
            let pointer = reference.strip_prefix('#').unwrap();
            assert!(
                doc.pointer(pointer).is_some(),
                "{reference} does not resolve"
            );
        }
    }

    fn collect_refs(value: &Value, refs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    refs.push(r.clone());
                }
                map.values().for_each(|v| collect_refs(v, refs));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
            _ => {}
        }
    }
}
