//! The open-loop load of the saga benchmark and what is read from the databases after it:
//! driving a fixed-rate step, waiting for its sagas to settle, draining a backlog, and the
//! relay's figures from the outbox tables.
//!
//! Nothing is read from the databases while a step runs, so measuring adds no load.

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
}

impl Load {
    pub(super) fn new(url: String) -> anyhow::Result<Self> {
        Ok(Load {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(MAX_IN_FLIGHT)
                .timeout(Duration::from_secs(30))
                .build()?,
            url,
        })
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
        in_flight.spawn(async move {
            let outcome = place(request).await;
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

/// A completed saga: the order's terminal status and when it was written.
pub(super) struct Completion {
    pub id: Uuid,
    pub status: String,
    pub at: DateTime<Utc>,
}

/// Wait (up to `grace`) until every accepted order of `drove` left PENDING; read their
/// terminal status and time from the order database.
pub(super) async fn settle(
    pool: &PgPool,
    drove: &Drive,
    grace: Duration,
) -> anyhow::Result<Vec<Completion>> {
    let ids = drove.accepted();
    let deadline = Instant::now() + grace;
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE id = ANY($1) AND status <> 'PENDING'",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        if done as usize >= ids.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, status, updated_at FROM orders WHERE id = ANY($1) AND status <> 'PENDING'",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, status, at)| Completion { id, status, at })
        .collect())
}

pub(super) async fn terminal_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'PENDING'")
            .fetch_one(pool)
            .await?,
    )
}

/// Orders still PENDING.
pub(super) async fn pending(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING'")
            .fetch_one(pool)
            .await?,
    )
}

/// Wait (up to `bound`) until no order is PENDING; the number still pending.
pub(super) async fn drain(pool: &PgPool, bound: Duration) -> anyhow::Result<i64> {
    let deadline = Instant::now() + bound;
    loop {
        let pending = pending(pool).await?;
        if pending == 0 || Instant::now() >= deadline {
            return Ok(pending);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    for pool in [
        &pools.order,
        &pools.inventory,
        &pools.payment,
        &pools.notification,
        &pools.saga,
    ] {
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
