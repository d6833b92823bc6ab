//! `sagaflow outbox parked [--json]` and `sagaflow outbox retry <id> | --all`.
//!
//! The relay parks a row only when it can never be published as it is (larger than the
//! broker accepts, refused by the broker's record validation). A parked row stays the head of
//! its key: the key's later rows wait behind it, other keys move on. `parked` lists the parked
//! rows of every outbox database (and how many rows each holds back); once the cause is fixed
//! (e.g. the producer's and topic's size limits raised), `retry` hands rows back to the relay,
//! which publishes them — and then the rows they held back — in their key's order. A row that
//! still cannot be published is parked again.
//!
//! The databases are named the way the relay names them: `OUTBOX_DATABASE_URLS` /
//! `--databases name=url,…`; `--database <name>` picks one (needed by `retry <id>` when there
//! are several: row ids are per database).

use std::io::Write;

use anyhow::Context;
use sagaflow_messaging::{ParkedRow, Unpark};
use sagaflow_runtime::db;
use serde_json::json;
use sqlx::PgPool;

#[derive(Debug, Clone, clap::Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    pub action: OutboxCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum OutboxCommand {
    /// List the parked outbox rows: database, id, key, type, topic, parked_at, reason.
    Parked(ParkedArgs),
    /// Hand parked rows back to the relay (clears parked_at, parked_reason, retry_at); each is
    /// published again in its key's order, and the rows it held back after it.
    Retry(RetryArgs),
}

/// The outbox databases, as the relay is given them.
#[derive(Debug, Clone, clap::Args)]
pub struct Databases {
    /// `name=url` pairs, comma separated (the relay's setting).
    #[arg(
        long,
        env = "OUTBOX_DATABASE_URLS",
        value_delimiter = ',',
        required = true
    )]
    pub databases: Vec<String>,
    /// Only this database (a name of `--databases`).
    #[arg(long)]
    pub database: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ParkedArgs {
    /// One JSON object per row instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub databases: Databases,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RetryArgs {
    /// The outbox row ids (the `id` column of `parked`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub ids: Vec<i64>,
    /// Every parked row (of `--database`, or of every database).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub databases: Databases,
}

impl Databases {
    /// The selected `(name, url)` pairs.
    fn selected(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut all = Vec::new();
        for entry in &self.databases {
            let (name, url) = entry
                .split_once('=')
                .with_context(|| format!("database entry {entry:?} is not name=url"))?;
            all.push((name.trim().to_string(), url.trim().to_string()));
        }
        match &self.database {
            None => Ok(all),
            Some(wanted) => {
                let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                let chosen: Vec<_> = all.iter().filter(|(n, _)| n == wanted).cloned().collect();
                anyhow::ensure!(
                    !chosen.is_empty(),
                    "no database {wanted:?} among {}",
                    names.join(", ")
                );
                Ok(chosen)
            }
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<PgPool> {
    Ok(db::connect(url, 2).await?)
}

/// The parked rows of each selected database.
pub async fn parked(databases: &Databases) -> anyhow::Result<Vec<(String, ParkedRow)>> {
    let mut out = Vec::new();
    for (name, url) in databases.selected()? {
        let pool = connect(&url).await?;
        let rows = sagaflow_messaging::parked_rows(&pool)
            .await
            .with_context(|| format!("reading the parked rows of {name}"))?;
        out.extend(rows.into_iter().map(|row| (name.clone(), row)));
    }
    Ok(out)
}

/// Hand parked rows back to the relay; returns the `(database, id)`s un-parked.
pub async fn retry(args: &RetryArgs) -> anyhow::Result<Vec<(String, i64)>> {
    let selected = args.databases.selected()?;
    if !args.all {
        anyhow::ensure!(
            selected.len() == 1,
            "row ids are per database: name one with --database ({})",
            selected
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let which = if args.all {
        Unpark::All
    } else {
        Unpark::Ids(&args.ids)
    };
    let mut out = Vec::new();
    for (name, url) in selected {
        let pool = connect(&url).await?;
        let ids = sagaflow_messaging::retry_parked(&pool, which)
            .await
            .with_context(|| format!("database {name}"))?;
        out.extend(ids.into_iter().map(|id| (name.clone(), id)));
    }
    Ok(out)
}

pub async fn run(args: OutboxArgs) -> anyhow::Result<()> {
    match args.action {
        OutboxCommand::Parked(args) => list(args).await,
        OutboxCommand::Retry(args) => {
            let retried = retry(&args).await?;
            for (database, id) in &retried {
                println!("{database} {id}: handed back to the relay");
            }
            println!("{} parked row(s) handed back to the relay", retried.len());
            Ok(())
        }
    }
}

async fn list(args: ParkedArgs) -> anyhow::Result<()> {
    let rows = parked(&args.databases).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        for (database, row) in &rows {
            writeln!(
                out,
                "{}",
                json!({
                    "database": database,
                    "id": row.id,
                    "message_id": row.message_id,
                    "key": row.msg_key,
                    "type": row.message_type,
                    "topic": row.topic,
                    "attempts": row.attempts,
                    "parked_at": row.parked_at,
                    "reason": row.parked_reason,
                    "held_back": row.held_back,
                })
            )?;
        }
        return Ok(());
    }
    writeln!(out, "{} parked outbox row(s)", rows.len())?;
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:>10}  {:<36}  {:<22} {:<22} {:<30} {:>9}  REASON",
        "DATABASE", "ID", "KEY", "TYPE", "TOPIC", "PARKED_AT", "HELD_BACK"
    )?;
    for (database, row) in &rows {
        writeln!(
            out,
            "{:<12} {:>10}  {:<36}  {:<22} {:<22} {:<30} {:>9}  {}",
            database,
            row.id,
            row.msg_key,
            row.message_type,
            row.topic,
            row.parked_at.to_rfc3339(),
            row.held_back,
            row.parked_reason.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}
