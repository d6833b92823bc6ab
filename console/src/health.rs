//! The health page: the relay backlog per outbox database (pending and parked rows, age of the
//! oldest), the consumer lag per group and partition (committed offsets against the high
//! watermarks, asked of the broker at each view), and the platform's throughput over the last
//! minutes (outbox rows published per interval, all databases together) as an inline SVG.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use maud::{Markup, html};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use sagaflow_runtime::KafkaConfig;
use sagaflow_schemas::topics;
use sqlx::PgPool;

use crate::{ConsoleError, State, layout};

/// The platform's consumer groups and the topics each reads.
pub const CONSUMER_GROUPS: &[(&str, &[&str])] = &[
    ("order-service", &[topics::ORDERS_COMMANDS]),
    ("inventory-service", &[topics::INVENTORY_COMMANDS]),
    ("payment-service", &[topics::PAYMENT_COMMANDS]),
    ("notification-service", &[topics::ORDERS_EVENTS]),
    (
        "saga-orchestrator",
        &[
            topics::ORDERS_EVENTS,
            topics::INVENTORY_EVENTS,
            topics::PAYMENT_EVENTS,
        ],
    ),
    (
        "query-service",
        &[
            topics::INVENTORY_EVENTS,
            topics::NOTIFICATION_EVENTS,
            topics::ORDERS_EVENTS,
            topics::PAYMENT_EVENTS,
        ],
    ),
];

/// The throughput chart's interval and how many of them it shows.
const BUCKET_SECS: i64 = 30;
const BUCKETS: i64 = 20;

/// The relay backlog of one outbox.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Backlog {
    pub pending: i64,
    pub parked: i64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE parked_at IS NULL) AS pending,
                count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
                min(created_at) FILTER (WHERE parked_at IS NULL) AS oldest_pending
           FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// Rows published per [`BUCKET_SECS`] over the last [`BUCKETS`] intervals: (bucket start in
/// epoch seconds, count).
pub async fn published_per_bucket(pool: &PgPool) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT (floor(extract(epoch FROM published_at) / $1) * $1)::bigint AS bucket, count(*)
           FROM outbox WHERE published_at > now() - make_interval(secs => $2)
          GROUP BY 1 ORDER BY 1",
    )
    .bind(BUCKET_SECS as f64)
    .bind((BUCKET_SECS * BUCKETS) as f64)
    .fetch_all(pool)
    .await
}

/// The last [`BUCKETS`] intervals up to `now`, each with the sum of `counts` in it.
pub fn series(counts: &[(i64, i64)], now: DateTime<Utc>) -> Vec<(String, i64)> {
    let mut sums: BTreeMap<i64, i64> = BTreeMap::new();
    for (bucket, count) in counts {
        *sums.entry(*bucket).or_default() += count;
    }
    let last = now.timestamp() / BUCKET_SECS * BUCKET_SECS;
    (0..BUCKETS)
        .rev()
        .map(|i| last - i * BUCKET_SECS)
        .map(|start| {
            let label = DateTime::<Utc>::from_timestamp(start, 0)
                .map_or_else(String::new, |t| t.format("%H:%M:%S").to_string());
            (label, sums.get(&start).copied().unwrap_or(0))
        })
        .collect()
}

/// The lag of one group on one partition.
#[derive(Debug, Clone)]
pub struct PartitionLag {
    pub group: &'static str,
    pub topic: &'static str,
    pub partition: i32,
    pub committed: Option<i64>,
    pub high: i64,
    pub lag: i64,
}

/// The lag of every group of [`CONSUMER_GROUPS`] on every partition of its topics.
pub async fn lag(kafka: &KafkaConfig) -> anyhow::Result<Vec<PartitionLag>> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let timeout = Duration::from_secs(5);
        let client = |group: &str| sagaflow_runtime::kafka::offsets_reader(&kafka, group);
        let probe = client("sagaflow-console")?;
        let mut marks: BTreeMap<&'static str, Vec<(i32, i64, i64)>> = BTreeMap::new();
        for logical in topics::ALL.iter().copied() {
            let topic = kafka.topic(logical);
            let metadata = probe.fetch_metadata(Some(&topic), timeout)?;
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let (low, high) =
                    sagaflow_runtime::kafka::watermarks(&probe, &topic, partition.id(), timeout)?;
                marks
                    .entry(logical)
                    .or_default()
                    .push((partition.id(), low, high));
            }
        }
        let mut out = Vec::new();
        for &(group, group_topics) in CONSUMER_GROUPS {
            let consumer = client(group)?;
            let mut query = TopicPartitionList::new();
            for logical in group_topics {
                for (partition, _, _) in marks.get(logical).into_iter().flatten() {
                    query.add_partition(&kafka.topic(logical), *partition);
                }
            }
            let committed = consumer.committed_offsets(query, timeout)?;
            for &logical in group_topics {
                for (partition, low, high) in marks.get(logical).into_iter().flatten() {
                    let at = committed
                        .find_partition(&kafka.topic(logical), *partition)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                    out.push(PartitionLag {
                        group,
                        topic: logical,
                        partition: *partition,
                        committed: at,
                        high: *high,
                        lag: (high - at.unwrap_or(*low).max(*low)).max(0),
                    });
                }
            }
        }
        Ok(out)
    })
    .await?
}

/// `GET /console/health`.
pub async fn page(axum::extract::State(console): State) -> Result<Markup, ConsoleError> {
    let now = Utc::now();
    let mut backlogs = Vec::new();
    let mut published = Vec::new();
    for (database, pool) in &console.outboxes {
        backlogs.push((database.clone(), backlog(pool).await));
        published.extend(published_per_bucket(pool).await?);
    }
    let lag_section = match lag(&console.kafka).await {
        Ok(lags) => render_lag(&lags),
        Err(e) => layout::failed("The consumer lag", &e),
    };
    Ok(layout::page(
        "Health",
        html! {
            h1 { "Health" }
            h2 { "Throughput" }
            @if console.outboxes.is_empty() { (layout::not_configured("No outbox database", "ORDER_DATABASE_URL, SAGA_DATABASE_URL, …")) }
            @else {
                p.note { "Outbox rows published per " (BUCKET_SECS) " s, every database together, over the last " (BUCKET_SECS * BUCKETS / 60) " min." }
                (layout::bar_chart(&series(&published, now), "messages"))
            }
            h2 { "Relay backlog" }
            table #backlog {
                tr { th { "Database" } th { "Pending" } th { "Parked" } th { "Oldest pending" } }
                @for (database, backlog) in &backlogs {
                    tr {
                        td { (database) }
                        @match backlog {
                            Ok(b) => {
                                td.pending { (b.pending) } td { (b.parked) }
                                td { (b.oldest_pending.map(|t| layout::age(now - t)).unwrap_or_else(|| "-".into())) }
                            }
                            Err(_) => { td.error colspan="3" { "not readable; see the log" } }
                        }
                    }
                }
            }
            h2 { "Consumer lag" }
            (lag_section)
        },
    ))
}

fn render_lag(lags: &[PartitionLag]) -> Markup {
    html! {
        table #lag {
            tr { th { "Group" } th { "Topic" } th { "Partition" } th { "Committed" } th { "End" } th { "Lag" } }
            @for l in lags {
                tr {
                    td { (l.group) } td { (l.topic) } td { (l.partition) }
                    td { (l.committed.map(|c| c.to_string()).unwrap_or_else(|| "-".into())) }
                    td { (l.high) } td.lag { (l.lag) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_fills_empty_intervals_and_sums_databases() {
        let now = DateTime::<Utc>::from_timestamp(1_000_000_015, 0).unwrap();
        let last = 1_000_000_015 / BUCKET_SECS * BUCKET_SECS;
        let series = series(&[(last, 3), (last, 4), (last - BUCKET_SECS, 1)], now);
        assert_eq!(series.len(), BUCKETS as usize);
        assert_eq!(series.last().unwrap().1, 7);
        assert_eq!(series[series.len() - 2].1, 1);
        assert_eq!(series[0].1, 0);
    }
}
