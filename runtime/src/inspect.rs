//! Messages rendered for people: one JSON object per message with key, headers, decoded value,
//! partition and offset. Used by `sagaflow tail` and `sagaflow dlq list`. Never fails: a value
//! that cannot be decoded is shown as such, with base64-free hex of its first bytes.

use rdkafka::Message as _;
use rdkafka::message::BorrowedMessage;
use sagaflow_schemas::{decode_to_json, header_names};
use serde_json::{Value, json};

use crate::kafka;

/// One message as a JSON object.
pub fn to_json(message: &BorrowedMessage<'_>) -> Value {
    let pairs = kafka::header_pairs(message.headers());
    render(
        message.topic(),
        message.partition(),
        message.offset(),
        message.timestamp().to_millis(),
        message.key(),
        &pairs,
        message.payload(),
    )
}

/// Render the parts of a message.
pub fn render(
    topic: &str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
    payload: Option<&[u8]>,
) -> Value {
    let header_map: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value::String(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    let schema = headers
        .iter()
        .find(|(k, _)| k == header_names::SCHEMA)
        .and_then(|(_, v)| std::str::from_utf8(v).ok());
    let value = match (payload, schema) {
        (None, _) => Value::Null,
        (Some(bytes), Some(schema)) => match decode_to_json(schema, bytes) {
            Ok(decoded) => decoded,
            Err(e) => undecodable(bytes, &e.to_string()),
        },
        (Some(bytes), None) => undecodable(bytes, "no ce_dataschema header"),
    };
    json!({
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp_ms": timestamp_ms,
        "key": key.map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": header_map,
        "value": value,
    })
}

fn undecodable(bytes: &[u8], reason: &str) -> Value {
    let preview: String = bytes.iter().take(32).map(|b| format!("{b:02x}")).collect();
    json!({"undecodable": reason, "bytes": bytes.len(), "hex_prefix": preview})
}
