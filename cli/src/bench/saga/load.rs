//! The open-loop load of the saga benchmark and what is read from the databases around it:
//! driving a fixed-rate step, waiting for its sagas to settle, the sagas in flight, draining
//! a backlog, and the relay's figures from the outbox tables.
//!
//! A saga is complete when its saga row is terminal (APPROVED or REJECTED, in the
//! orchestrator's database: the last hop, after the order row changed). While a step runs,
//! the databases are read twice (the in-flight count at the start and the end of its steady
//! window: one `count(*)` each), so measuring adds next to no load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use sagaflow_platform::Pools;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use super::{SKUS, sku};
use crate::bench::relay::bar;
use crate::bench::stats::{Percentiles, due, requests_in, summary};

/// More requests in flight than this counts as an error (the client, not the server, would
/// be the bottleneck).
const MAX_IN_FLIGHT: usize = 4096;

/// The HTTP client and the POST /orders it sends to.
pub(super) struct Load {
    client: reqwest::Client,
    url: String,
    /// Orders answered 202 since the start, every step included.
    accepted: Arc<AtomicU64>,
}

impl Load {
    pub(super) fn new(url: String) -> anyhow::Result<Self> {
        Ok(Load {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(MAX_IN_FLIGHT)
                .timeout(Duration::from_secs(30))
                .build()?,
            url,
            accepted: Arc::default(),
        })
    }

    /// Orders accepted since the start.
    pub(super) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Request `i` of a step: a new customer and key each, the SKUs taken in turn.
    fn request(&self, i: u64) -> reqwest::RequestBuilder {
        self.client
            .post(&self.url)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&json!({
                "customer_id": Uuid::new_v4(),
                "items": [{"sku": sku(i as usize % SKUS), "quantity": 1, "unit_price_cents": 1250}],
                "currency": "EUR",
                "payment_method": "pm_card_visa",
            }))
    }
}

/// One scheduled request.
pub(super) struct Sample {
    /// Intended send time, from the step's start.
    pub due: Duration,
    /// When the answer was read, from the step's start.
    pub answered: Duration,
    pub outcome: Result<Uuid, String>,
}

/// One fixed-rate step.
pub(super) struct Drive {
    pub rate: f64,
    pub secs: f64,
    /// Wall clock of the step's start (to compare with database timestamps).
    pub start_wall: DateTime<Utc>,
    pub samples: Vec<Sample>,
}

impl Drive {
    fn accepted(&self) -> Vec<Uuid> {
        self.samples
            .iter()
            .filter_map(|s| s.outcome.as_ref().ok().copied())
            .collect()
    }
}

/// Send `rate` × `secs` orders open-loop: each at its due time, each on its own task.
pub(super) async fn drive(load: &Load, rate: f64, secs: f64, quiet: bool) -> Drive {
    let n = requests_in(rate, secs);
    let progress = if quiet {
        ProgressBar::hidden()
    } else {
        bar(n, &format!("{rate:.0}/s"))
    };
    let start = Instant::now();
    let start_wall = Utc::now();
    let mut in_flight = JoinSet::new();
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = due(i, rate);
        tokio::time::sleep_until(start + at).await;
        while let Some(done) = in_flight.try_join_next() {
            samples.push(done.unwrap_or_else(|e| failed(at, start, format!("task: {e}"))));
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            samples.push(failed(at, start, "client saturated".into()));
            continue;
        }
        let request = load.request(i);
        let progress = progress.clone();
        let accepted = load.accepted.clone();
        in_flight.spawn(async move {
            let outcome = place(request).await;
            if outcome.is_ok() {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            progress.inc(1);
            Sample {
                due: at,
                answered: start.elapsed(),
                outcome,
            }
        });
    }
    while let Some(done) = in_flight.join_next().await {
        let at = due(n, rate);
        samples.push(done.unwrap_or_else(|e| failed(at, start, format!("task: {e}"))));
    }
    progress.finish_and_clear();
    Drive {
        rate,
        secs,
        start_wall,
        samples,
    }
}

/// Send one order: its id when answered 202, else the kind of failure.
async fn place(request: reqwest::RequestBuilder) -> Result<Uuid, String> {
    match request.send().await {
        Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
            match response.json::<Value>().await {
                Ok(body) => body["order_id"]
                    .as_str()
                    .and_then(|id| Uuid::parse_str(id).ok())
                    .ok_or_else(|| "202 without order_id".to_string()),
                Err(e) => Err(format!("reading the answer: {}", kind(&e))),
            }
        }
        Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
        Err(e) => Err(kind(&e)),
    }
}

fn failed(due: Duration, start: Instant, why: String) -> Sample {
    Sample {
        due,
        answered: start.elapsed(),
        outcome: Err(why),
    }
}

fn kind(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect".into()
    } else {
        format!("transport: {error}")
    }
}

/// A completed saga: its terminal state and when it was written.
pub(super) struct Completion {
    pub id: Uuid,
    pub status: String,
    pub at: DateTime<Utc>,
}

/// What a step's sagas did by the end of its grace period.
pub(super) struct Settled {
    pub completions: Vec<Completion>,
    /// When the wait ended: a saga not complete by then counts as taking until then. None
    /// when nothing was waited for.
    pub gave_up_at: Option<DateTime<Utc>>,
}

impl Settled {
    /// Nothing waited for (burst steps, judged on HTTP only): no saga figures.
    pub(super) fn none() -> Self {
        Settled {
            completions: Vec::new(),
            gave_up_at: None,
        }
    }
}

/// Wait (up to `grace`) until the saga of every accepted order of `drove` is complete; read
/// their terminal state and time from the orchestrator's database.
pub(super) async fn settle(
    sagas: &PgPool,
    drove: &Drive,
    grace: Duration,
) -> anyhow::Result<Settled> {
    let ids = drove.accepted();
    let deadline = Instant::now() + grace;
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE order_id = ANY($1) AND state IN ('APPROVED', 'REJECTED')",
        )
            .bind(&ids)
            .fetch_one(sagas)
            .await?;
        if done as usize >= ids.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gave_up_at = Utc::now();
    let rows: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT order_id, state, updated_at FROM sagas
          WHERE order_id = ANY($1) AND state IN ('APPROVED', 'REJECTED')",
    )
    .bind(&ids)
    .fetch_all(sagas)
    .await?;
    let completions = rows
        .into_iter()
        .map(|(id, status, at)| Completion { id, status, at })
        .collect();
    Ok(Settled {
        completions,
        gave_up_at: Some(gave_up_at),
    })
}

/// Sagas that ended, all steps included: complete, or FAILED (nothing more happens to those
/// until an operator steps in, so they are not in flight).
pub(super) async fn ended_count(sagas: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM sagas WHERE state IN ('APPROVED', 'REJECTED', 'FAILED')",
    )
    .fetch_one(sagas)
    .await?)
}

/// Sagas in flight: orders accepted whose saga has not ended (not yet started included).
pub(super) async fn in_flight(load: &Load, sagas: &PgPool) -> anyhow::Result<i64> {
    // The count first: an order accepted between the two reads can only make the figure
    // larger, never negative.
    let ended = ended_count(sagas).await?;
    Ok(load.accepted() as i64 - ended)
}

/// Wait (up to `bound`) until no saga is in flight; the number still in flight.
pub(super) async fn drain(load: &Load, sagas: &PgPool, bound: Duration) -> anyhow::Result<i64> {
    let deadline = Instant::now() + bound;
    loop {
        let pending = in_flight(load, sagas).await?;
        if pending <= 0 || Instant::now() >= deadline {
            return Ok(pending.max(0));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait (up to `bound`) until the platform has finished the work of earlier load: no saga in
/// flight, no outbox row waiting for the relay, and the read side and the notifications have
/// every verdict. A step that starts while the read side still catches up with the step
/// before it measures that catch-up, not its own rate: the first seconds of a measured run
/// after the steps at the ceiling held its slowest sagas. The seconds waited, or None when the
/// bound passed first (the step then starts anyway).
pub(super) async fn quiesce(
    load: &Load,
    pools: &Pools,
    bound: Duration,
) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    loop {
        if is_quiet(load, pools).await? {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() >= bound {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One look at what [`quiesce`] waits for.
async fn is_quiet(load: &Load, pools: &Pools) -> anyhow::Result<bool> {
    if in_flight(load, &pools.saga).await? > 0 {
        return Ok(false);
    }
    for pool in pools.outbox_databases() {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL AND parked_at IS NULL)",
        )
        .fetch_one(pool)
        .await
        .context("looking for unpublished outbox rows")?;
        if waiting {
            return Ok(false);
        }
    }
    Ok(read_side_behind(pools).await? == 0)
}

/// Verdicts (sagas APPROVED or REJECTED) that the read model does not show yet or that were
/// not notified yet: the read side's backlog. The read side is counted first, so a verdict
/// applied between the reads cannot make the figure negative.
pub(super) async fn read_side_behind(pools: &Pools) -> anyhow::Result<i64> {
    let viewed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders_view WHERE status IN ('APPROVED', 'REJECTED')",
    )
    .fetch_one(&pools.query)
    .await
    .context("counting verdicts in the read model")?;
    let notified: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&pools.notification)
        .await
        .context("counting notifications")?;
    let verdicts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sagas WHERE state IN ('APPROVED', 'REJECTED')")
            .fetch_one(&pools.saga)
            .await?;
    Ok((verdicts - viewed.min(notified)).max(0))
}

/// What the outbox tables say about the relay during one step.
pub(super) struct RelayFigures {
    pub commit_to_ack: Percentiles,
    pub msgs_per_s: f64,
}

/// Outbox rows of every database written during `drove`'s window (plus its settling): the
/// relay's `published_at − created_at` (created_at is the row's insert time, just before its
/// transaction commits), and the rows published per second during the window.
pub(super) async fn relay_figures(pools: &Pools, drove: &Drive) -> anyhow::Result<RelayFigures> {
    let from = drove.start_wall;
    let to = from + chrono::Duration::milliseconds((drove.secs * 1000.0) as i64);
    let mut latencies = Vec::new();
    let mut published = 0i64;
    for pool in pools.outbox_databases() {
        let rows: Vec<(f64,)> = sqlx::query_as(
            "SELECT (EXTRACT(EPOCH FROM (published_at - created_at)) * 1000)::float8 FROM outbox
             WHERE created_at >= $1 AND created_at < $2 AND published_at IS NOT NULL",
        )
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await
        .context("reading outbox latencies")?;
        latencies.extend(rows.into_iter().map(|(ms,)| ms.max(0.0)));
        published += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox WHERE published_at >= $1 AND published_at < $2",
        )
        .bind(from)
        .bind(to)
        .fetch_one(pool)
        .await?;
    }
    Ok(RelayFigures {
        commit_to_ack: summary(&mut latencies),
        msgs_per_s: published as f64 / drove.secs,
    })
}
