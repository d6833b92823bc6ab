//! The console's audit log (`console_audit` in the query database): every redrive and every
//! retry of parked rows, with who, when, what and the result. Each new entry deletes the
//! entries past the retention in the same transaction, so the table never grows for ever.

use chrono::{DateTime, Utc};
use maud::{Markup, html};
use sagaflow_runtime::db::Tx;
use sqlx::{FromRow, PgPool};

use crate::layout;

/// What an operator did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Redrive,
    RetryParked,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Redrive => "redrive",
            Action::RetryParked => "retry-parked",
        }
    }
}

/// One entry to write.
#[derive(Debug, Clone)]
pub struct Entry {
    pub operator: String,
    pub action: Action,
    /// The topic, or the outbox database.
    pub target: String,
    /// Message ids, or outbox row ids.
    pub items: Vec<String>,
    /// `Ok(summary)` or `Err(what failed)`.
    pub outcome: Result<String, String>,
}

/// A written entry.
#[derive(Debug, Clone, FromRow)]
pub struct Row {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub operator: String,
    pub action: String,
    pub target: String,
    pub items: Vec<String>,
    pub outcome: String,
    pub detail: String,
}

/// Write `entry` and delete the entries older than `retention`, in `tx`.
pub async fn record(
    tx: &mut Tx,
    entry: &Entry,
    retention: chrono::Duration,
) -> Result<(), sqlx::Error> {
    let (outcome, detail) = match &entry.outcome {
        Ok(summary) => ("ok", summary.as_str()),
        Err(error) => ("failed", error.as_str()),
    };
    sqlx::query(
        "INSERT INTO console_audit (operator, action, target, items, outcome, detail)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&entry.operator)
    .bind(entry.action.as_str())
    .bind(&entry.target)
    .bind(&entry.items)
    .bind(outcome)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM console_audit WHERE at < now() - make_interval(secs => $1)")
        .bind(retention.num_seconds() as f64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Write `entry` in a transaction of its own.
pub async fn record_now(
    pool: &PgPool,
    entry: &Entry,
    retention: chrono::Duration,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    record(&mut tx, entry, retention).await?;
    tx.commit().await
}

/// The newest `limit` entries of `action`.
pub async fn recent(pool: &PgPool, action: Action, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, operator, action, target, items, outcome, detail FROM console_audit
          WHERE action = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(action.as_str())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The audit section of a page.
pub fn section(rows: &[Row]) -> Markup {
    html! {
        h2 { "Audit log" }
        @if rows.is_empty() { p.note { "Nothing recorded yet." } }
        @else {
            table #audit {
                tr { th { "When" } th { "Who" } th { "Action" } th { "Target" } th { "Items" } th { "Result" } th { "Detail" } }
                @for row in rows {
                    tr.audit-row {
                        td { (layout::time(&row.at)) }
                        td.operator { (row.operator) }
                        td { (row.action) }
                        td { (row.target) }
                        td.items { (row.items.join(", ")) }
                        td.outcome { (row.outcome) }
                        td { (row.detail) }
                    }
                }
            }
        }
    }
}
