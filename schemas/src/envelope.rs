//! The message envelope, carried in Kafka headers (CloudEvents Kafka binding names, binary
//! content mode) so `kcat -f '%k %h'` shows it without decoding the value.

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

/// Header names.
pub mod headers {
    pub const SPEC_VERSION: &str = "ce_specversion";
    pub const ID: &str = "ce_id";
    pub const TYPE: &str = "ce_type";
    pub const SOURCE: &str = "ce_source";
    pub const TIME: &str = "ce_time";
    pub const SCHEMA: &str = "ce_dataschema";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const CAUSATION_ID: &str = "causation_id";
    pub const TRACEPARENT: &str = "traceparent";
    /// Dead-letter headers, added when a message is parked.
    pub const DLQ_REASON: &str = "dlq_reason";
    pub const DLQ_ERROR_KIND: &str = "dlq_error_kind";
    pub const DLQ_SOURCE_TOPIC: &str = "dlq_source_topic";
    pub const DLQ_SOURCE_PARTITION: &str = "dlq_source_partition";
    pub const DLQ_SOURCE_OFFSET: &str = "dlq_source_offset";
    pub const DLQ_CONSUMER: &str = "dlq_consumer";
    pub const DLQ_ATTEMPTS: &str = "dlq_attempts";
    pub const DLQ_TIME: &str = "dlq_time";
}

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/avro";

/// The metadata of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// UUID v7: unique, and sorts by creation time.
    pub message_id: Uuid,
    pub message_type: String,
    /// The component that wrote it, e.g. `order-service`.
    pub source: String,
    pub time: DateTime<Utc>,
    /// The saga (order) this message belongs to.
    pub correlation_id: Uuid,
    /// The message that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// W3C trace context of the span that wrote it.
    pub traceparent: Option<String>,
    /// `<full schema name>@<fingerprint>` of the writer schema.
    pub schema_ref: String,
}

/// A header that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("header {name} is malformed: {value:?}")]
    Malformed { name: &'static str, value: String },
}

impl Envelope {
    /// A fresh envelope for a message about to be written.
    pub fn new(
        message_type: &str,
        source: &str,
        correlation_id: Uuid,
        causation_id: Option<Uuid>,
        schema_ref: String,
    ) -> Self {
        Envelope {
            message_id: Uuid::now_v7(),
            message_type: message_type.to_string(),
            source: source.to_string(),
            time: Utc::now(),
            correlation_id,
            causation_id,
            traceparent: None,
            schema_ref,
        }
    }

    /// The envelope as (name, value) header pairs, in a stable order.
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (headers::SPEC_VERSION, SPEC_VERSION.to_string()),
            (headers::ID, self.message_id.to_string()),
            (headers::TYPE, self.message_type.clone()),
            (headers::SOURCE, self.source.clone()),
            (
                headers::TIME,
                self.time.to_rfc3339_opts(SecondsFormat::Millis, true),
            ),
            (headers::SCHEMA, self.schema_ref.clone()),
            (headers::CONTENT_TYPE, CONTENT_TYPE.to_string()),
            (headers::CORRELATION_ID, self.correlation_id.to_string()),
        ];
        if let Some(causation) = self.causation_id {
            out.push((headers::CAUSATION_ID, causation.to_string()));
        }
        if let Some(traceparent) = &self.traceparent {
            out.push((headers::TRACEPARENT, traceparent.clone()));
        }
        out
    }

    /// Read an envelope back from header pairs; the value bytes of a header are UTF-8.
    pub fn from_headers<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, EnvelopeError> {
        let pairs: Vec<(&str, &[u8])> = pairs.into_iter().collect();
        let text = |name: &'static str| -> Result<Option<String>, EnvelopeError> {
            match pairs.iter().rev().find(|(n, _)| *n == name) {
                None => Ok(None),
                Some((_, value)) => std::str::from_utf8(value)
                    .map(|s| Some(s.to_string()))
                    .map_err(|_| EnvelopeError::Malformed {
                        name,
                        value: String::from_utf8_lossy(value).into_owned(),
                    }),
            }
        };
        let required = |name: &'static str| text(name)?.ok_or(EnvelopeError::Missing(name));
        let uuid = |name: &'static str, value: String| {
            Uuid::parse_str(&value).map_err(|_| EnvelopeError::Malformed { name, value })
        };
        let time_text = required(headers::TIME)?;
        let time = DateTime::parse_from_rfc3339(&time_text)
            .map_err(|_| EnvelopeError::Malformed {
                name: headers::TIME,
                value: time_text.clone(),
            })?
            .with_timezone(&Utc);
        Ok(Envelope {
            message_id: uuid(headers::ID, required(headers::ID)?)?,
            message_type: required(headers::TYPE)?,
            source: required(headers::SOURCE)?,
            time,
            correlation_id: uuid(headers::CORRELATION_ID, required(headers::CORRELATION_ID)?)?,
            causation_id: text(headers::CAUSATION_ID)?
                .map(|v| uuid(headers::CAUSATION_ID, v))
                .transpose()?,
            traceparent: text(headers::TRACEPARENT)?,
            schema_ref: required(headers::SCHEMA)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let mut envelope = Envelope::new(
            "ApproveOrder",
            "saga-orchestrator",
            Uuid::now_v7(),
            Some(Uuid::now_v7()),
            "x@1".into(),
        );
        envelope.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        envelope.time = DateTime::from_timestamp_millis(envelope.time.timestamp_millis()).unwrap();
        let headers = envelope.to_headers();
        let back = Envelope::from_headers(headers.iter().map(|(n, v)| (*n, v.as_bytes()))).unwrap();
        assert_eq!(back, envelope);
        assert_eq!(envelope.message_id.get_version_num(), 7);
    }

    #[test]
    fn a_missing_or_bad_header_is_named() {
        let envelope = Envelope::new("ApproveOrder", "test", Uuid::now_v7(), None, "x@1".into());
        let headers: Vec<_> = envelope
            .to_headers()
            .into_iter()
            .filter(|(n, _)| *n != headers::TYPE)
            .collect();
        assert_eq!(
            Envelope::from_headers(headers.iter().map(|(n, v)| (*n, v.as_bytes()))),
            Err(EnvelopeError::Missing(headers::TYPE))
        );
        let bad = [(headers::ID, b"not-a-uuid".as_slice())];
        assert!(Envelope::from_headers(bad).is_err());
    }
}
