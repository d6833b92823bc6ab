//! The saga pages: the list (filtered by state, age, customer and order id, with counts per
//! state, and the overdue and stuck sagas) and a page per saga (its timeline from
//! `saga_history`, every message of the order from the outboxes, decoded, its deadline and
//! its trace id). Reads the saga database (`SAGA_DATABASE_URL` in the query service).

use std::collections::BTreeMap;

use axum::extract::{Path, Query};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::{ConsoleError, State, layout};

/// The saga states, in the order the list shows their counts.
pub const STATES: [&str; 8] = [
    "RESERVING_STOCK",
    "AUTHORIZING_PAYMENT",
    "APPROVING",
    "COMPENSATING",
    "REJECTING",
    "APPROVED",
    "REJECTED",
    "FAILED",
];

/// A saga not in a terminal state without a transition for this long is "stuck".
pub const STUCK_AFTER_SECS: i64 = 300;

/// Rows a list shows at most.
const LIST_LIMIT: i64 = 200;

/// Messages published this long before the saga started or after its last transition are not
/// looked for (the outbox's index on publication time bounds the search).
const MESSAGE_WINDOW_MINUTES: i64 = 10;

/// Which sagas need attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// Past their step's deadline (the sweeper should fire it within a moment).
    Overdue,
    /// Not terminal, and retrying a step or without a transition for [`STUCK_AFTER_SECS`].
    Stuck,
}

/// The list's filter, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub state: Option<String>,
    pub customer: Option<Uuid>,
    pub order: Option<Uuid>,
    /// Started at least this many minutes ago.
    pub min_age_minutes: Option<i64>,
    /// Started at most this many minutes ago.
    pub max_age_minutes: Option<i64>,
    pub attention: Option<Attention>,
}

/// The list's query string, as the form sends it (empty fields are absent).
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    state: Option<String>,
    customer: Option<String>,
    order: Option<String>,
    min_age_minutes: Option<String>,
    max_age_minutes: Option<String>,
    attention: Option<String>,
}

fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl TryFrom<ListParams> for Filter {
    type Error = ConsoleError;

    fn try_from(params: ListParams) -> Result<Self, Self::Error> {
        let uuid = |field: &str, value: &Option<String>| {
            present(value)
                .map(|v| {
                    Uuid::parse_str(v)
                        .map_err(|_| ConsoleError::BadRequest(format!("{field} must be a UUID")))
                })
                .transpose()
        };
        let minutes = |field: &str, value: &Option<String>| {
            present(value)
                .map(|v| {
                    v.parse::<i64>().ok().filter(|m| *m >= 0).ok_or_else(|| {
                        ConsoleError::BadRequest(format!("{field} must be whole minutes"))
                    })
                })
                .transpose()
        };
        let state = present(&params.state)
            .map(|s| {
                STATES
                    .iter()
                    .find(|known| known.eq_ignore_ascii_case(s))
                    .map(|known| known.to_string())
                    .ok_or_else(|| ConsoleError::BadRequest(format!("no saga state {s}")))
            })
            .transpose()?;
        let attention = match present(&params.attention) {
            None => None,
            Some("overdue") => Some(Attention::Overdue),
            Some("stuck") => Some(Attention::Stuck),
            Some(_) => {
                return Err(ConsoleError::BadRequest(
                    "attention is overdue or stuck".into(),
                ));
            }
        };
        Ok(Filter {
            state,
            customer: uuid("customer", &params.customer)?,
            order: uuid("order", &params.order)?,
            min_age_minutes: minutes("min_age_minutes", &params.min_age_minutes)?,
            max_age_minutes: minutes("max_age_minutes", &params.max_age_minutes)?,
            attention,
        })
    }
}

/// One saga of a list.
#[derive(Debug, Clone, FromRow)]
pub struct SagaRow {
    pub order_id: Uuid,
    pub state: String,
    pub customer_id: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub traceparent: Option<String>,
}

/// The columns of a [`SagaRow`] (a macro, so that queries stay `&'static str` literals).
macro_rules! saga_columns {
    () => {
        "order_id, state, data->>'customer_id' AS customer_id, deadline, attempts, created_at, \
         updated_at, traceparent"
    };
}

/// The sagas matching `filter`, newest first, at most `limit`.
pub async fn list(pool: &PgPool, filter: &Filter, limit: i64) -> Result<Vec<SagaRow>, sqlx::Error> {
    let sql = concat!(
        "SELECT ",
        saga_columns!(),
        " FROM sagas
          WHERE ($1::text IS NULL OR state = $1)
            AND ($2::uuid IS NULL OR data->>'customer_id' = $2::text)
            AND ($3::uuid IS NULL OR order_id = $3)
            AND ($4::bigint IS NULL OR created_at <= now() - make_interval(mins => $4::int))
            AND ($5::bigint IS NULL OR created_at >= now() - make_interval(mins => $5::int))
            AND (NOT $6 OR deadline < now())
            AND (NOT $7 OR (deadline IS NOT NULL
                            AND (attempts > 0 OR updated_at < now() - make_interval(secs => $8))))
          ORDER BY created_at DESC LIMIT $9"
    );
    sqlx::query_as(sql)
        .bind(&filter.state)
        .bind(filter.customer)
        .bind(filter.order)
        .bind(filter.min_age_minutes)
        .bind(filter.max_age_minutes)
        .bind(filter.attention == Some(Attention::Overdue))
        .bind(filter.attention == Some(Attention::Stuck))
        .bind(STUCK_AFTER_SECS as f64)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// How many sagas are in each state, and how many are overdue and stuck.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub by_state: BTreeMap<String, i64>,
    pub overdue: i64,
    pub stuck: i64,
}

pub async fn counts(pool: &PgPool) -> Result<Counts, sqlx::Error> {
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM sagas GROUP BY state")
            .fetch_all(pool)
            .await?;
    let (overdue, stuck): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE deadline < now()),
                count(*) FILTER (WHERE attempts > 0 OR updated_at < now() - make_interval(secs => $1))
           FROM sagas WHERE deadline IS NOT NULL",
    )
    .bind(STUCK_AFTER_SECS as f64)
    .fetch_one(pool)
    .await?;
    Ok(Counts {
        by_state: by_state.into_iter().collect(),
        overdue,
        stuck,
    })
}

/// One step of a saga's timeline.
#[derive(Debug, Clone, FromRow)]
pub struct Step {
    pub at: DateTime<Utc>,
    pub trigger: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub commands: Vec<String>,
    pub note: String,
    pub message_id: Option<Uuid>,
}

/// A saga and its timeline.
pub async fn saga(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<(SagaRow, Vec<Step>)>, sqlx::Error> {
    let row: Option<SagaRow> = sqlx::query_as(concat!(
        "SELECT ",
        saga_columns!(),
        " FROM sagas WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let steps = sqlx::query_as(
        "SELECT at, trigger, from_state, to_state, commands, note, message_id FROM saga_history
          WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    Ok(Some((row, steps)))
}

/// One message of an order, as its outbox row holds it.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxMessage {
    pub message_id: Uuid,
    pub message_type: String,
    pub topic: String,
    pub headers: serde_json::Value,
    pub payload: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub parked_reason: Option<String>,
}

impl OutboxMessage {
    /// The value decoded with the writer schema its `ce_dataschema` header names.
    pub fn decoded(&self) -> serde_json::Value {
        let schema = self.headers[sagaflow_schemas::header_names::SCHEMA].as_str();
        match schema.map(|s| sagaflow_schemas::decode_to_json(s, &self.payload)) {
            Some(Ok(value)) => value,
            Some(Err(e)) => serde_json::json!({"undecodable": e.to_string()}),
            None => serde_json::json!({"undecodable": "no ce_dataschema header"}),
        }
    }
}

/// The messages with key `order_id` in one outbox: those published within
/// [`MESSAGE_WINDOW_MINUTES`] of `[from, to]` (by the index on publication time) and those not
/// published yet (by the index of unpublished rows per key).
pub async fn messages(
    pool: &PgPool,
    order_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<OutboxMessage>, sqlx::Error> {
    let window = chrono::Duration::minutes(MESSAGE_WINDOW_MINUTES);
    sqlx::query_as(
        "SELECT message_id, message_type, topic, headers, payload, created_at, published_at, parked_reason
           FROM outbox WHERE msg_key = $1 AND published_at BETWEEN $2 AND $3
         UNION ALL
         SELECT message_id, message_type, topic, headers, payload, created_at, published_at, parked_reason
           FROM outbox WHERE msg_key = $1 AND published_at IS NULL
         ORDER BY created_at",
    )
    .bind(order_id.to_string())
    .bind(from - window)
    .bind(to + window)
    .fetch_all(pool)
    .await
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| id.len() == 32)
}

fn saga_pool(console: &crate::Console) -> Result<&PgPool, ConsoleError> {
    console.saga.as_ref().ok_or(ConsoleError::NotConfigured(
        "the saga database is not configured (set SAGA_DATABASE_URL)",
    ))
}

/// `GET /console/sagas`.
pub async fn list_page(
    axum::extract::State(console): State,
    Query(params): Query<ListParams>,
) -> Result<Markup, ConsoleError> {
    let filter = Filter::try_from(params)?;
    let pool = saga_pool(&console)?;
    let (counts, rows) = tokio::try_join!(counts(pool), list(pool, &filter, LIST_LIMIT))?;
    Ok(layout::page("Sagas", render_list(&filter, &counts, &rows)))
}

fn render_list(filter: &Filter, counts: &Counts, rows: &[SagaRow]) -> Markup {
    let now = Utc::now();
    let text = |v: Option<String>| v.unwrap_or_default();
    html! {
        h1 { "Sagas" }
        p.counts #counts {
            @for state in STATES {
                a href={"/console/sagas?state=" (state)} { span.state.(state) { (state) } ": " span.count data-state=(state) { (counts.by_state.get(state).copied().unwrap_or(0)) } }
            }
            a href="/console/sagas?attention=overdue" { "overdue: " span #overdue-count { (counts.overdue) } }
            a href="/console/sagas?attention=stuck" { "stuck: " span #stuck-count { (counts.stuck) } }
        }
        form.filter #saga-filter method="get" action="/console/sagas" {
            label { "State " select name="state" {
                option value="" { "any" }
                @for state in STATES { option value=(state) selected[filter.state.as_deref() == Some(state)] { (state) } }
            } }
            label { "Customer " input name="customer" size="36" value=(text(filter.customer.map(|c| c.to_string()))); }
            label { "Order " input name="order" size="36" value=(text(filter.order.map(|c| c.to_string()))); }
            label { "Age ≥ " input name="min_age_minutes" size="4" value=(text(filter.min_age_minutes.map(|m| m.to_string()))); " min" }
            label { " ≤ " input name="max_age_minutes" size="4" value=(text(filter.max_age_minutes.map(|m| m.to_string()))); " min " }
            label { "Attention " select name="attention" {
                option value="" { "all" }
                option value="overdue" selected[filter.attention == Some(Attention::Overdue)] { "overdue" }
                option value="stuck" selected[filter.attention == Some(Attention::Stuck)] { "stuck" }
            } }
            button type="submit" #apply-filter { "Filter" }
        }
        p.note { (rows.len()) " saga(s) shown, newest first (at most " (LIST_LIMIT) "). Stuck: not terminal, and retrying a step or without a transition for " (STUCK_AFTER_SECS / 60) " min." }
        table #sagas {
            tr { th { "Order" } th { "State" } th { "Customer" } th { "Age" } th { "Last step" } th { "Deadline" } th { "Attempts" } }
            @for row in rows {
                tr.saga data-order=(row.order_id.to_string()) {
                    td { a href={"/console/sagas/" (row.order_id.to_string())} { code { (row.order_id.to_string()) } } }
                    td { span.state.(row.state) { (row.state) } }
                    td { code { (text(row.customer_id.clone())) } }
                    td { (layout::age(now - row.created_at)) }
                    td { (layout::age(now - row.updated_at)) " ago" }
                    td { (deadline(row.deadline, now)) }
                    td { (row.attempts) }
                }
            }
        }
    }
}

fn deadline(deadline: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    html! {
        @match deadline {
            None => { "none (terminal)" }
            Some(at) if at < now => { span.error.overdue { (layout::time(&at)) " (overdue by " (layout::age(now - at)) ")" } }
            Some(at) => { (layout::time(&at)) " (in " (layout::age(at - now)) ")" }
        }
    }
}

/// `GET /console/sagas/{id}`.
pub async fn saga_page(
    axum::extract::State(console): State,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let order_id = Uuid::parse_str(&id)
        .map_err(|_| ConsoleError::BadRequest("a saga id is an order id (a UUID)".into()))?;
    let (saga, steps) = saga(saga_pool(&console)?, order_id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("no saga {order_id}")))?;
    let mut found = Vec::new();
    for (database, pool) in &console.outboxes {
        let rows = messages(pool, order_id, saga.created_at, saga.updated_at).await?;
        found.extend(rows.into_iter().map(|m| (database.clone(), m)));
    }
    found.sort_by_key(|(_, m)| m.created_at);
    let missing: Vec<&str> = ["order", "inventory", "payment", "notification", "saga"]
        .into_iter()
        .filter(|name| !console.outboxes.iter().any(|(n, _)| n == name))
        .collect();
    Ok(layout::page(
        &format!("Saga {order_id}"),
        render_saga(&saga, &steps, &found, &missing),
    ))
}

fn render_saga(
    saga: &SagaRow,
    steps: &[Step],
    messages: &[(String, OutboxMessage)],
    missing: &[&str],
) -> Markup {
    let now = Utc::now();
    let trace = saga.traceparent.as_deref().and_then(trace_id);
    html! {
        h1 { "Saga " code #order-id { (saga.order_id.to_string()) } }
        table #summary {
            tr { th { "State" } td { span.state.(saga.state) #saga-state { (saga.state) } } }
            tr { th { "Customer" } td { code { (saga.customer_id.clone().unwrap_or_default()) } } }
            tr { th { "Started" } td { (layout::time(&saga.created_at)) " (" (layout::age(now - saga.created_at)) " ago)" } }
            tr { th { "Last transition" } td { (layout::time(&saga.updated_at)) } }
            tr { th { "Deadline" } td #deadline { (deadline(saga.deadline, now)) } }
            tr { th { "Attempts" } td { (saga.attempts) } }
            tr { th { "Trace id" } td { code #trace-id { (trace.unwrap_or("-")) } } }
        }
        h2 { "Timeline" }
        table #timeline {
            tr { th { "Time" } th { "Trigger" } th { "From → to" } th { "Commands" } th { "Note" } th { "Message" } }
            @for step in steps {
                tr.step {
                    td { (layout::time(&step.at)) }
                    td.trigger { (step.trigger) }
                    td.transition { (step.from_state.as_deref().unwrap_or("—")) " → " (step.to_state) }
                    td.commands { (step.commands.join(", ")) }
                    td { (step.note) }
                    td { code { (step.message_id.map(|m| m.to_string()).unwrap_or_default()) } }
                }
            }
        }
        h2 { "Messages of this order" }
        p.note { "From the outboxes of the components (the source of every domain message), published within " (MESSAGE_WINDOW_MINUTES) " min of the saga's life or not yet published; rows are kept OUTBOX_RETENTION_HOURS after publication." }
        @if !missing.is_empty() { (layout::not_configured(&format!("The outbox of {}", missing.join(", ")), "<NAME>_DATABASE_URL")) }
        table #messages {
            tr { th { "Created" } th { "Topic" } th { "Type" } th { "Published" } th { "Headers" } th { "Value" } }
            @for (database, m) in messages {
                tr.message data-type=(m.message_type) {
                    td { (layout::time(&m.created_at)) br; span.note { "outbox of " (database) } }
                    td { (m.topic) }
                    td.type { (m.message_type) }
                    td { @if let Some(reason) = &m.parked_reason { span.error { "parked: " (reason) } } @else { (layout::maybe_time(m.published_at.as_ref())) } }
                    td { details { summary { "headers" } (layout::json(&m.headers)) } }
                    td { (layout::json(&m.decoded())) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameters as the list page receives them: form-encoded in the query string.
    fn params(pairs: &[(&str, &str)]) -> ListParams {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let Query(p) =
            Query::<ListParams>::try_from_uri(&format!("/x?{query}").parse().unwrap()).unwrap();
        p
    }

    #[test]
    fn empty_fields_are_no_filter() {
        let filter = Filter::try_from(params(&[
            ("state", ""),
            ("customer", " "),
            ("attention", ""),
        ]))
        .unwrap();
        assert_eq!(filter, Filter::default());
    }

    #[test]
    fn fields_parse_into_the_filter() {
        let id = Uuid::now_v7();
        let filter = Filter::try_from(params(&[
            ("state", "approved"),
            ("order", &id.to_string()),
            ("min_age_minutes", "5"),
            ("attention", "stuck"),
        ]))
        .unwrap();
        assert_eq!(filter.state.as_deref(), Some("APPROVED"));
        assert_eq!(filter.order, Some(id));
        assert_eq!(filter.min_age_minutes, Some(5));
        assert_eq!(filter.attention, Some(Attention::Stuck));
    }

    #[test]
    fn bad_fields_are_refused() {
        for pairs in [
            [("state", "NOPE")],
            [("customer", "42")],
            [("max_age_minutes", "-1")],
            [("attention", "x")],
        ] {
            assert!(matches!(
                Filter::try_from(params(&pairs)),
                Err(ConsoleError::BadRequest(_))
            ));
        }
    }

    #[test]
    fn the_trace_id_is_the_second_field_of_traceparent() {
        assert_eq!(
            trace_id("00-6314acbdf0c08b35ab8faae92c686139-3ebb66e6b1734127-01"),
            Some("6314acbdf0c08b35ab8faae92c686139")
        );
        assert_eq!(trace_id("garbage"), None);
    }
}
