//! The dead-letter pages: `<topic>.dlq` per topic with the reason headers and the original
//! message decoded, and redrive — one message, the selected ones, or all that match a filter —
//! through `sagaflow_messaging::dead_letters` (the code `sagaflow dlq` uses). Every redrive is
//! written to the audit log, shown on the page. A dead-letter topic keeps what was redriven
//! (Kafka cannot delete from it), so each message also shows whether the consumer that
//! dead-lettered it has applied it since (its inbox row, looked up in every configured
//! database; for the query service, which keeps no inbox, its timeline row).

use std::collections::HashMap;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::Query;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sagaflow_messaging::dead_letters::{self, DeadLetter};
use sagaflow_runtime::{KafkaConfig, inspect};
use sagaflow_schemas::{header_names, topics};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Action, Entry};
use crate::auth::Operator;
use crate::{Console, ConsoleError, State, layout};

/// Messages in each dead-letter topic (high minus low watermark), per source topic.
pub async fn sizes(kafka: &KafkaConfig) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("broker.address.family", "v4")
            .set("group.id", kafka.group("sagaflow-console"))
            .set("log_level", "3")
            .create()?;
        let timeout = Duration::from_secs(5);
        let mut sizes = Vec::new();
        for source in topics::ALL {
            let dlq = kafka.topic(&topics::dlq(source));
            let metadata = probe.fetch_metadata(Some(&dlq), timeout)?;
            let mut size = 0;
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let (low, high) =
                    sagaflow_runtime::kafka::watermarks(&probe, &dlq, partition.id(), timeout)?;
                size += high - low;
            }
            sizes.push((*source, size));
        }
        Ok(sizes)
    })
    .await?
}

/// Whether `letter` matches the free-text filter (id, type, key, reason, consumer, kind).
pub fn matches(letter: &DeadLetter, filter: &str) -> bool {
    let filter = filter.trim().to_lowercase();
    if filter.is_empty() {
        return true;
    }
    let key = letter
        .key
        .as_deref()
        .map(|k| String::from_utf8_lossy(k).into_owned());
    [
        letter.message_id(),
        letter.header(header_names::TYPE),
        key,
        letter.reason(),
        letter.header(header_names::DLQ_CONSUMER),
        letter.header(header_names::DLQ_ERROR_KIND),
    ]
    .into_iter()
    .flatten()
    .any(|field| field.to_lowercase().contains(&filter))
}

/// The query service's consumer name, as its dead letters carry it (`query_service::NAME`;
/// the console does not depend on that crate, as in `health`).
const QUERY_CONSUMER: &str = "query-service";

/// Who applied each of `ids`, and when: the inbox rows of every database with an inbox, and
/// the query service's timeline. That service keeps no inbox row per event (its projections
/// are idempotent by construction), but every event it applies leaves one timeline row, keyed
/// by message id and stamped `applied_at`. Its inbox is still read for rows written before it
/// stopped keeping them, until their retention ends.
pub async fn applied(
    query: &PgPool,
    databases: &[(String, PgPool)],
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<(String, DateTime<Utc>)>>, sqlx::Error> {
    let mut out: HashMap<Uuid, Vec<(String, DateTime<Utc>)>> = HashMap::new();
    for (_, pool) in databases {
        let rows: Vec<(String, Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT consumer, message_id, processed_at FROM inbox WHERE message_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(pool)
        .await?;
        for (consumer, id, at) in rows {
            out.entry(id).or_default().push((consumer, at));
        }
    }
    let timeline: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT message_id, applied_at FROM order_timeline WHERE message_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(query)
    .await?;
    for (id, at) in timeline {
        let entries = out.entry(id).or_default();
        if !entries
            .iter()
            .any(|(consumer, _)| consumer == QUERY_CONSUMER)
        {
            entries.push((QUERY_CONSUMER.to_string(), at));
        }
    }
    Ok(out)
}

/// The page's query string.
#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    topic: Option<String>,
    q: Option<String>,
    redriven: Option<usize>,
    failed: Option<String>,
}

/// A source topic the console knows, from what the operator gave (source or DLQ name).
fn known_topic(given: &str) -> Result<&'static str, ConsoleError> {
    let source = dead_letters::source_topic(given.trim());
    topics::ALL
        .iter()
        .find(|t| **t == source)
        .copied()
        .ok_or_else(|| ConsoleError::BadRequest(format!("no topic {source}")))
}

/// `GET /console/dead-letters[?topic=…&q=…]`.
pub async fn page(
    axum::extract::State(console): State,
    Query(params): Query<PageParams>,
) -> Result<Markup, ConsoleError> {
    let topic = params
        .topic
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(known_topic)
        .transpose()?;
    let filter = params.q.clone().unwrap_or_default();
    let summary = match sizes(&console.kafka).await {
        Ok(sizes) => render_sizes(&sizes),
        Err(e) => layout::failed("The dead-letter topics", &e),
    };
    let letters = match topic {
        None => html! { p.note { "Choose a topic." } },
        Some(topic) => render_topic(&console, topic, &filter).await?,
    };
    let audit_rows = audit::recent(&console.query, Action::Redrive, 50).await?;
    let flash = html! {
        @if let Some(n) = params.redriven { p.flash #flash { (n) " message(s) redriven." } }
        @if params.failed.is_some() { p.error #flash { "The redrive failed; the audit log below has the cause." } }
    };
    Ok(layout::page(
        "Dead letters",
        html! { h1 { "Dead letters" } (flash) (summary) (letters) (audit::section(&audit_rows)) },
    ))
}

fn render_sizes(sizes: &[(&str, i64)]) -> Markup {
    html! {
        table #dlq-topics {
            tr { th { "Topic" } th { "Dead letters (kept for ever, redriven ones included)" } }
            @for (topic, size) in sizes {
                tr { td { a href={"/console/dead-letters?topic=" (topic)} { (topic) ".dlq" } } td.size { (size) } }
            }
        }
    }
}

async fn render_topic(
    console: &Console,
    topic: &'static str,
    filter: &str,
) -> Result<Markup, ConsoleError> {
    let letters: Vec<DeadLetter> = dead_letters::read(&console.kafka, topic)
        .await?
        .into_iter()
        .filter(|l| matches(l, filter))
        .collect();
    let ids: Vec<Uuid> = letters
        .iter()
        .filter_map(|l| l.message_id().and_then(|id| Uuid::parse_str(&id).ok()))
        .collect();
    let applied = applied(&console.query, &console.inbox_databases(), &ids).await?;
    let dlq = console.kafka.topic(&topics::dlq(topic));
    Ok(html! {
        h2 { (topic) ".dlq" }
        form.filter method="get" action="/console/dead-letters" {
            input type="hidden" name="topic" value=(topic);
            label { "Filter (id, type, key, reason, consumer) " input name="q" #dlq-filter value=(filter); }
            button type="submit" { "Filter" }
        }
        form method="post" action="/console/dead-letters/redrive" #redrive-form {
            input type="hidden" name="topic" value=(topic);
            input type="hidden" name="q" value=(filter);
            p {
                button type="submit" name="scope" value="selected" #redrive-selected { "Redrive selected" }
                " "
                button type="submit" name="scope" value="matching" #redrive-matching { "Redrive all " (letters.len()) " matching" }
            }
            table #dead-letters {
                tr { th {} th { "Parked" } th { "Message" } th { "Reason" } th { "Applied since" } th { "Value" } th {} }
                @for letter in &letters {
                    @let id = letter.message_id().unwrap_or_default();
                    tr.dead-letter data-id=(id) {
                        td { input type="checkbox" name="id" value=(id); }
                        td { (letter.header(header_names::DLQ_TIME).unwrap_or_default()) br; span.note { "partition " (letter.partition) " offset " (letter.offset) } }
                        td {
                            code { (id) } br;
                            (letter.header(header_names::TYPE).unwrap_or_default()) br;
                            span.note { "key " (letter.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default()) }
                        }
                        td.reason {
                            b { (letter.header(header_names::DLQ_ERROR_KIND).unwrap_or_default()) } " by "
                            (letter.header(header_names::DLQ_CONSUMER).unwrap_or_default())
                            " after " (letter.header(header_names::DLQ_ATTEMPTS).unwrap_or_default()) " attempt(s): "
                            (letter.reason().unwrap_or_default())
                        }
                        td.applied { (render_applied(letter, &applied)) }
                        td {
                            @let rendered = inspect::render(&dlq, letter.partition, letter.offset, letter.timestamp_ms, letter.key.as_deref(), &letter.headers, letter.payload.as_deref());
                            (layout::json(&rendered["value"]))
                            details { summary { "headers" } (layout::json(&rendered["headers"])) }
                        }
                        td { button type="submit" name="one" value=(id) { "Redrive" } }
                    }
                }
            }
        }
    })
}

fn render_applied(
    letter: &DeadLetter,
    applied: &HashMap<Uuid, Vec<(String, DateTime<Utc>)>>,
) -> Markup {
    let consumer = letter
        .header(header_names::DLQ_CONSUMER)
        .unwrap_or_default();
    let entries = letter
        .message_id()
        .and_then(|id| Uuid::parse_str(&id).ok())
        .and_then(|id| applied.get(&id));
    let by_consumer = entries.and_then(|e| e.iter().find(|(c, _)| *c == consumer));
    html! {
        @match by_consumer {
            Some((_, at)) => { span.APPROVED.applied-yes { "applied by " (consumer) " at " (layout::time(at)) } }
            None => { span.note.applied-no { "not applied by " (consumer) } }
        }
    }
}

/// What a redrive form asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These message ids.
    Ids(Vec<String>),
    /// Every parked message that matches the filter.
    Matching(String),
}

/// The redrive form, parsed (checkboxes repeat the `id` field, which `Form` cannot take).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveRequest {
    pub topic: &'static str,
    pub selection: Selection,
}

impl RedriveRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ConsoleError> {
        let mut topic = None;
        let (mut ids, mut one, mut scope, mut filter) = (Vec::new(), None, None, String::new());
        for (name, value) in url::form_urlencoded::parse(body) {
            match name.as_ref() {
                "topic" => topic = Some(known_topic(&value)?),
                "id" if !value.is_empty() => ids.push(value.into_owned()),
                "one" => one = Some(value.into_owned()),
                "scope" => scope = Some(value.into_owned()),
                "q" => filter = value.into_owned(),
                _ => {}
            }
        }
        let topic = topic.ok_or_else(|| ConsoleError::BadRequest("no topic".into()))?;
        let selection = match (one, scope.as_deref()) {
            (Some(id), _) => Selection::Ids(vec![id]),
            (None, Some("matching")) => Selection::Matching(filter),
            (None, _) if ids.is_empty() => {
                return Err(ConsoleError::BadRequest(
                    "select at least one message".into(),
                ));
            }
            (None, _) => Selection::Ids(ids),
        };
        Ok(RedriveRequest { topic, selection })
    }
}

/// Redrive what `request` selects; returns the ids redriven.
pub async fn redrive_selected(
    kafka: &KafkaConfig,
    request: &RedriveRequest,
) -> anyhow::Result<Vec<String>> {
    let ids = match &request.selection {
        Selection::Ids(ids) => ids.clone(),
        Selection::Matching(filter) => dead_letters::read(kafka, request.topic)
            .await?
            .iter()
            .filter(|l| matches(l, filter))
            .filter_map(DeadLetter::message_id)
            .collect(),
    };
    // `redrive` takes "no ids" as "all": an empty selection must redrive nothing.
    anyhow::ensure!(!ids.is_empty(), "nothing matches");
    let sent = dead_letters::redrive(kafka, request.topic, &ids).await?;
    Ok(sent.iter().filter_map(DeadLetter::message_id).collect())
}

/// `POST /console/dead-letters/redrive`: redrive, audit, and back to the topic's page.
pub async fn redrive(
    axum::extract::State(console): State,
    Extension(Operator(operator)): Extension<Operator>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let request = RedriveRequest::parse(&body)?;
    let result = redrive_selected(&console.kafka, &request).await;
    let (items, outcome) = match &result {
        Ok(sent) => (
            sent.clone(),
            Ok(format!(
                "{} message(s) redriven to {}",
                sent.len(),
                request.topic
            )),
        ),
        Err(e) => (
            match &request.selection {
                Selection::Ids(ids) => ids.clone(),
                Selection::Matching(filter) => vec![format!("matching {filter:?}")],
            },
            Err(format!("{e:#}")),
        ),
    };
    let entry = Entry {
        operator,
        action: Action::Redrive,
        target: request.topic.to_string(),
        items,
        outcome,
    };
    audit::record_now(&console.query, &entry, console.audit_retention).await?;
    let mut location = url::form_urlencoded::Serializer::new(String::new());
    location.append_pair("topic", request.topic);
    match result {
        Ok(sent) => location.append_pair("redriven", &sent.len().to_string()),
        Err(_) => location.append_pair("failed", "1"),
    };
    Ok(Redirect::to(&format!("/console/dead-letters?{}", location.finish())).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(id: &str, reason: &str) -> DeadLetter {
        DeadLetter {
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(b"order-1".to_vec()),
            headers: vec![
                (header_names::ID.into(), id.as_bytes().to_vec()),
                (header_names::TYPE.into(), b"OrderPlaced".to_vec()),
                (header_names::DLQ_REASON.into(), reason.as_bytes().to_vec()),
            ],
            payload: None,
        }
    }

    #[test]
    fn the_filter_looks_at_id_type_key_and_reason() {
        let l = letter("abc", "no minor units for currency XTS");
        assert!(matches(&l, ""));
        assert!(matches(&l, "xts"));
        assert!(matches(&l, "orderplaced"));
        assert!(matches(&l, "order-1"));
        assert!(!matches(&l, "payment"));
    }

    #[test]
    fn the_form_selects_one_the_checked_or_the_matching() {
        let parse = |body: &str| RedriveRequest::parse(body.as_bytes());
        assert_eq!(
            parse("topic=orders.events&id=a&id=b&scope=selected")
                .unwrap()
                .selection,
            Selection::Ids(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse("topic=orders.events.dlq&id=a&one=c").unwrap(),
            RedriveRequest {
                topic: "orders.events",
                selection: Selection::Ids(vec!["c".into()])
            }
        );
        assert_eq!(
            parse("topic=orders.events&scope=matching&q=XTS")
                .unwrap()
                .selection,
            Selection::Matching("XTS".into())
        );
        assert!(
            parse("topic=orders.events&scope=selected").is_err(),
            "nothing selected"
        );
        assert!(parse("topic=nope&id=a").is_err());
        assert!(parse("id=a").is_err());
    }
}
