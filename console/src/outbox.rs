//! Parked outbox rows: the rows the relay can never publish as they are (too large, refused
//! by the broker's validation), per database, each with a retry action — the relay's own
//! `parked_rows` and `retry_parked` (what `sagaflow outbox` uses). Every retry is audited.

use axum::Extension;
use axum::extract::{Form, Query};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use crate::audit::{self, Action, Entry};
use crate::auth::Operator;
use crate::{ConsoleError, State, layout};

#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    retried: Option<String>,
}

/// `GET /console/outbox`.
pub async fn page(
    axum::extract::State(console): State,
    Query(params): Query<PageParams>,
) -> Result<Markup, ConsoleError> {
    let mut sections = Vec::new();
    for (database, pool) in &console.outboxes {
        let section = match sagaflow_messaging::parked_rows(pool).await {
            Ok(rows) => render_rows(database, &rows),
            Err(e) => layout::failed(&format!("The outbox of {database}"), &e.into()),
        };
        sections.push(section);
    }
    let audit_rows = audit::recent(&console.query, Action::RetryParked, 50).await?;
    Ok(layout::page(
        "Parked outbox rows",
        html! {
            h1 { "Parked outbox rows" }
            @if let Some(row) = &params.retried { p.flash #flash { "Row " (row) " handed back to the relay." } }
            p.note { "A parked row stays the head of its key: the key's later rows wait behind it. Retry once the cause is fixed; a row that still cannot be published is parked again." }
            @if console.outboxes.is_empty() { (layout::not_configured("No outbox database", "ORDER_DATABASE_URL, SAGA_DATABASE_URL, …")) }
            @for section in sections { (section) }
            (audit::section(&audit_rows))
        },
    ))
}

fn render_rows(database: &str, rows: &[sagaflow_messaging::ParkedRow]) -> Markup {
    html! {
        h2 { (database) }
        @if rows.is_empty() { p.note { "No parked row." } }
        @else {
            table.parked {
                tr { th { "Id" } th { "Key" } th { "Type" } th { "Topic" } th { "Parked at" } th { "Attempts" } th { "Held back" } th { "Reason" } th {} }
                @for row in rows {
                    tr {
                        td { (row.id) } td { code { (row.msg_key) } } td { (row.message_type) } td { (row.topic) }
                        td { (layout::time(&row.parked_at)) } td { (row.attempts) } td { (row.held_back) }
                        td { (row.parked_reason.as_deref().unwrap_or("-")) }
                        td {
                            form method="post" action="/console/outbox/retry" {
                                input type="hidden" name="database" value=(database);
                                input type="hidden" name="id" value=(row.id);
                                button type="submit" { "Retry" }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct RetryForm {
    database: String,
    id: i64,
}

/// `POST /console/outbox/retry`: hand one parked row back to the relay, audited.
pub async fn retry(
    axum::extract::State(console): State,
    Extension(Operator(operator)): Extension<Operator>,
    Form(form): Form<RetryForm>,
) -> Result<Response, ConsoleError> {
    let pool = console
        .outboxes
        .iter()
        .find(|(name, _)| *name == form.database)
        .map(|(_, pool)| pool)
        .ok_or_else(|| ConsoleError::BadRequest(format!("no outbox database {}", form.database)))?;
    let ids = [form.id];
    let result =
        sagaflow_messaging::retry_parked(pool, sagaflow_messaging::Unpark::Ids(&ids)).await;
    let entry = Entry {
        operator,
        action: Action::RetryParked,
        target: form.database.clone(),
        items: vec![form.id.to_string()],
        outcome: result
            .as_ref()
            .map(|ids| format!("{} row(s) handed back", ids.len()))
            .map_err(|e| format!("{e:#}")),
    };
    audit::record_now(&console.query, &entry, console.audit_retention).await?;
    result?;
    Ok(Redirect::to(&format!("/console/outbox?retried={}", form.id)).into_response())
}
