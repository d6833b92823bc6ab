//! Rebuild a projection from its topics without taking the live view down.
//!
//! 1. **Build** into shadow tables (`<table>_rebuild`, created `LIKE` the live ones): read
//!    every partition of the projection's topics from the beginning — or, with a start time,
//!    start from a copy of the live view and re-apply everything since that time — up to the
//!    high watermarks seen at start, through the same [`projection::apply`] the live consumer
//!    uses. Each batch commits with its per-partition positions (`replay_positions`), so an
//!    interrupted replay resumes where it stopped.
//! 2. **Switch**, in one transaction: lock the live tables and `projection_positions` against
//!    writes (reads go on), catch the shadows up to exactly the positions the live consumer
//!    has applied, checksum both, then rename the shadows into place. Readers wait at most
//!    for the renames; the live consumer resumes on the rebuilt tables (the projections are
//!    idempotent, so anything both applied is harmless).
//!
//! The report gives the checksum of the rebuilt view and of the live view it replaced, taken
//! at the same positions: equal unless the projection code changed (the point of a replay).
//! Only one replay of a projection runs at a time (advisory lock).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sagaflow_common::{KafkaConfig, kafka};
use sagaflow_schemas::{Envelope, Message};
use sqlx::{Acquire, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::projection::{self, Projection, ProjectionError, Rules, Target};

/// Where a new replay starts (an interrupted one always resumes where it stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Empty shadows, every partition from its first retained offset.
    Beginning,
    /// Shadows copied from the live view, partitions from the first offset at or after `T`.
    Time(DateTime<Utc>),
}

/// A progress sample, passed to the caller's callback about every 200 ms.
#[derive(Debug, Clone)]
pub struct Progress {
    pub projection: Projection,
    /// Messages read by this run.
    pub messages: u64,
    /// Messages this run has to read to reach the end offsets.
    pub total: u64,
    /// Messages still to read before the end offsets.
    pub lag: u64,
    /// Messages per second since this run started.
    pub rate: f64,
}

/// What a finished replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub projection: Projection,
    /// Whether it continued an interrupted replay.
    pub resumed: bool,
    pub messages: u64,
    /// Events the projection refused (they are in the dead-letter topic too).
    pub rejected: u64,
    /// Checksum of the rebuilt view, now live.
    pub checksum: String,
    /// Checksum of the view it replaced, at the same positions.
    pub previous_checksum: String,
}

/// Why a replay stopped without switching.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("interrupted; run it again to resume")]
    Interrupted,
    #[error("a replay of {0} is already running")]
    Busy(&'static str),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Other(String),
}

type Key = (String, i32);

/// Replay `projection`; see the module docs.
pub async fn replay(
    pool: &PgPool,
    kafka_config: &KafkaConfig,
    projection: Projection,
    start: Start,
    rules: &Rules,
    mut on_progress: impl FnMut(&Progress),
    shutdown: &CancellationToken,
) -> Result<Report, ReplayError> {
    let mut guard = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(format!("sagaflow-replay-{}", projection.name()))
        .fetch_one(&mut *guard)
        .await?;
    if !locked {
        return Err(ReplayError::Busy(projection.name()));
    }
    let result = run(
        pool,
        kafka_config,
        projection,
        start,
        rules,
        &mut on_progress,
        shutdown,
    )
    .await;
    // Unlock explicitly: the connection returns to the pool.
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(format!("sagaflow-replay-{}", projection.name()))
        .execute(&mut *guard)
        .await;
    result
}

async fn run(
    pool: &PgPool,
    kafka_config: &KafkaConfig,
    projection: Projection,
    start: Start,
    rules: &Rules,
    on_progress: &mut dyn FnMut(&Progress),
    shutdown: &CancellationToken,
) -> Result<Report, ReplayError> {
    let mut positions = saved_positions(pool, projection).await?;
    let resumed = !positions.is_empty() && shadows_exist(pool, projection).await?;
    if resumed {
        info!(
            projection = projection.name(),
            "resuming an interrupted replay"
        );
    } else {
        positions = prepare(pool, kafka_config, projection, start).await?;
    }
    let consumer = assigned_consumer(kafka_config, &positions)?;
    let total: u64 = positions
        .values()
        .map(|(next, end)| (end - next).max(0) as u64)
        .sum();
    let mut state = Build {
        projection,
        rules,
        kafka_config,
        positions,
        messages: 0,
        rejected: 0,
        started: Instant::now(),
        total,
    };
    // Build up to the end offsets, committing batches with their positions.
    let mut last_progress = Instant::now();
    on_progress(&state.progress());
    while !state.reached_end() {
        let batch = state.next_batch(&consumer, shutdown).await?;
        let mut tx = pool.begin().await?;
        for message in &batch {
            state.apply(&mut tx, message).await?;
        }
        state.save_positions(&mut tx).await?;
        tx.commit().await?;
        if last_progress.elapsed() >= Duration::from_millis(200) {
            on_progress(&state.progress());
            last_progress = Instant::now();
        }
    }
    on_progress(&state.progress());
    let (checksum, previous_checksum) = state.switch(pool, &consumer, shutdown).await?;
    info!(projection = projection.name(), messages = state.messages, rejected = state.rejected, %checksum, "replay switched in");
    Ok(Report {
        projection,
        resumed,
        messages: state.messages,
        rejected: state.rejected,
        checksum,
        previous_checksum,
    })
}

/// (topic, partition) → (next offset, end offset) of an unfinished replay.
async fn saved_positions(
    pool: &PgPool,
    projection: Projection,
) -> Result<BTreeMap<Key, (i64, i64)>, sqlx::Error> {
    let rows: Vec<(String, i32, i64, i64)> = sqlx::query_as(
        "SELECT topic, kafka_partition, next_offset, end_offset FROM replay_positions WHERE projection = $1",
    )
    .bind(projection.name())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, p, next, end)| ((t, p), (next, end)))
        .collect())
}

async fn shadows_exist(pool: &PgPool, projection: Projection) -> Result<bool, sqlx::Error> {
    let names: Vec<String> = projection
        .tables()
        .iter()
        .map(|t| Target::Rebuild.table(t))
        .collect();
    let found: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = ANY($1)",
    )
    .bind(&names)
    .fetch_one(pool)
    .await?;
    Ok(found == names.len() as i64)
}

/// Fresh shadows and start/end offsets, in one transaction.
async fn prepare(
    pool: &PgPool,
    kafka_config: &KafkaConfig,
    projection: Projection,
    start: Start,
) -> Result<BTreeMap<Key, (i64, i64)>, ReplayError> {
    let positions = start_positions(kafka_config, projection, start).await?;
    let mut tx = pool.begin().await?;
    for table in projection.tables() {
        let shadow = Target::Rebuild.table(table);
        let ddl = format!(
            "DROP TABLE IF EXISTS {shadow}; CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL);"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut *tx)
            .await?;
        if matches!(start, Start::Time(_)) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {shadow} SELECT * FROM {table}"
            )))
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::query("DELETE FROM replay_positions WHERE projection = $1")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    for ((topic, partition), (next, end)) in &positions {
        sqlx::query(
            "INSERT INTO replay_positions (projection, topic, kafka_partition, next_offset, end_offset)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(projection.name())
        .bind(topic)
        .bind(partition)
        .bind(next)
        .bind(end)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(positions)
}

fn client(kafka_config: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka_config.brokers)
        .set("broker.address.family", "v4")
        // Partitions are assigned explicitly; the group id is never used to commit.
        .set("group.id", kafka_config.group("sagaflow-replay"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .set("log_level", "3");
    config
}

/// First and end offsets of every partition of the projection's topics.
async fn start_positions(
    kafka_config: &KafkaConfig,
    projection: Projection,
    start: Start,
) -> Result<BTreeMap<Key, (i64, i64)>, ReplayError> {
    kafka::ensure_topics(kafka_config, projection.topics())
        .await
        .map_err(|e| ReplayError::Other(format!("{e:#}")))?;
    let config = kafka_config.clone();
    let topics = projection.topics();
    tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = client(&config).create()?;
        let timeout = Duration::from_secs(10);
        let mut out = BTreeMap::new();
        for logical in topics {
            let topic = config.topic(logical);
            let metadata = probe.fetch_metadata(Some(&topic), timeout)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            for partition in partitions {
                let (low, high) = kafka::watermarks(&probe, &topic, partition, timeout)?;
                let first = match start {
                    Start::Beginning => low,
                    Start::Time(at) => {
                        let mut query = TopicPartitionList::new();
                        query.add_partition_offset(
                            &topic,
                            partition,
                            Offset::Offset(at.timestamp_millis()),
                        )?;
                        let found = probe.offsets_for_times(query, timeout)?;
                        match found.find_partition(&topic, partition).map(|e| e.offset()) {
                            Some(Offset::Offset(o)) => o.max(low),
                            _ => high, // nothing at or after T
                        }
                    }
                };
                out.insert((logical.to_string(), partition), (first, high));
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| ReplayError::Other(e.to_string()))?
}

fn assigned_consumer(
    kafka_config: &KafkaConfig,
    positions: &BTreeMap<Key, (i64, i64)>,
) -> Result<StreamConsumer, ReplayError> {
    let consumer: StreamConsumer = client(kafka_config).create()?;
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), (next, _)) in positions {
        assignment.add_partition_offset(
            &kafka_config.topic(topic),
            *partition,
            Offset::Offset(*next),
        )?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// One replay run's state.
struct Build<'a> {
    projection: Projection,
    rules: &'a Rules,
    kafka_config: &'a KafkaConfig,
    positions: BTreeMap<Key, (i64, i64)>,
    messages: u64,
    rejected: u64,
    started: Instant,
    total: u64,
}

/// A message copied out of librdkafka's buffer.
struct Owned {
    key: Key,
    offset: i64,
    decoded: Option<(Envelope, Message)>,
}

const BATCH: usize = 500;

impl Build<'_> {
    fn remaining(&self, targets: impl Fn(&Key, i64) -> i64) -> u64 {
        self.positions
            .iter()
            .map(|(k, (next, end))| (targets(k, *end) - next).max(0) as u64)
            .sum()
    }

    fn reached_end(&self) -> bool {
        self.remaining(|_, end| end) == 0
    }

    fn progress(&self) -> Progress {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        Progress {
            projection: self.projection,
            messages: self.messages,
            total: self.total,
            lag: self.remaining(|_, end| end),
            rate: self.messages as f64 / secs,
        }
    }

    /// Up to [`BATCH`] messages: waits for the first, then takes what arrives within 50 ms.
    async fn next_batch(
        &self,
        consumer: &StreamConsumer,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Owned>, ReplayError> {
        let mut batch = Vec::new();
        // Armed when the first message arrives: a batch waits at most 50 ms for company.
        let deadline = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(deadline);
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return Err(ReplayError::Interrupted),
                _ = &mut deadline, if !batch.is_empty() => return Ok(batch),
                received = tokio::time::timeout(Duration::from_secs(30), consumer.recv()) => received,
            };
            match received {
                Ok(Ok(message)) => {
                    if batch.is_empty() {
                        deadline
                            .as_mut()
                            .reset(tokio::time::Instant::now() + Duration::from_millis(50));
                    }
                    batch.push(self.own(&message));
                }
                Ok(Err(e)) => warn!(error = %e, "replay consumer error"),
                Err(_) => {
                    return Err(ReplayError::Other(
                        "no message for 30 s before the end offsets; is the broker up?".into(),
                    ));
                }
            }
            if batch.len() >= BATCH {
                return Ok(batch);
            }
        }
    }

    fn own(&self, message: &BorrowedMessage<'_>) -> Owned {
        let pairs = kafka::header_pairs(message.headers());
        let decoded = Envelope::from_headers(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .ok()
            .and_then(|envelope| {
                let payload = message.payload()?;
                let decoded =
                    Message::decode(&envelope.message_type, Some(&envelope.schema_ref), payload)
                        .ok()?;
                Some((envelope, decoded))
            });
        Owned {
            key: (
                self.kafka_config.logical(message.topic()).to_string(),
                message.partition(),
            ),
            offset: message.offset(),
            decoded,
        }
    }

    async fn apply(&mut self, conn: &mut PgConnection, message: &Owned) -> Result<(), ReplayError> {
        let Some(position) = self.positions.get_mut(&message.key) else {
            return Ok(());
        };
        if message.offset < position.0 {
            return Ok(()); // already applied before a resume
        }
        position.0 = message.offset + 1;
        self.messages += 1;
        let Some((envelope, decoded)) = &message.decoded else {
            self.rejected += 1; // unreadable: the live consumer dead-lettered it too
            return Ok(());
        };
        // A savepoint, so a refused event leaves the batch intact.
        let mut savepoint = conn.begin().await?;
        match projection::apply(
            &mut savepoint,
            Target::Rebuild,
            self.projection,
            self.rules,
            envelope,
            decoded,
        )
        .await
        {
            Ok(()) => savepoint.commit().await?,
            Err(ProjectionError::Rejected(reason)) => {
                savepoint.rollback().await?;
                self.rejected += 1;
                warn!(projection = self.projection.name(), message_id = %envelope.message_id, %reason, "replay skipped a refused event");
            }
            Err(ProjectionError::Database(e)) => return Err(e.into()),
        }
        Ok(())
    }

    async fn save_positions(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        for ((topic, partition), (next, _)) in &self.positions {
            sqlx::query(
                "UPDATE replay_positions SET next_offset = $4
                 WHERE projection = $1 AND topic = $2 AND kafka_partition = $3",
            )
            .bind(self.projection.name())
            .bind(topic)
            .bind(partition)
            .bind(next)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Catch up to the live positions under lock, checksum both views, swap the tables.
    async fn switch(
        &mut self,
        pool: &PgPool,
        consumer: &StreamConsumer,
        shutdown: &CancellationToken,
    ) -> Result<(String, String), ReplayError> {
        let mut tx = pool.begin().await?;
        // EXCLUSIVE: blocks the live consumer's writes, not the readers. Same order as the
        // consumer's writes (projection tables, then positions), so no lock cycle.
        let mut tables: Vec<&str> = self.projection.tables().to_vec();
        tables.push("projection_positions");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            tables.join(", ")
        )))
        .execute(&mut *tx)
        .await?;
        let live: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT topic, kafka_partition, next_offset FROM projection_positions WHERE topic = ANY($1)",
        )
        .bind(
            self.projection
                .topics()
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        let live: BTreeMap<Key, i64> = live.into_iter().map(|(t, p, o)| ((t, p), o)).collect();
        let behind = |build: &Build<'_>| build.remaining(|k, _| live.get(k).copied().unwrap_or(0));
        while behind(self) > 0 {
            let batch = self.next_batch(consumer, shutdown).await?;
            for message in &batch {
                self.apply(&mut tx, message).await?;
            }
        }
        let previous = checksum_of(&mut tx, self.projection, Target::Live).await?;
        let rebuilt = checksum_of(&mut tx, self.projection, Target::Rebuild).await?;
        for table in self.projection.tables() {
            let shadow = Target::Rebuild.table(table);
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {table} RENAME TO {table}_retired;
                 ALTER TABLE {shadow} RENAME TO {table};
                 DROP TABLE {table}_retired;"
            )))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM replay_positions WHERE projection = $1")
            .bind(self.projection.name())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((rebuilt, previous))
    }
}

/// The checksum of a projection's view: md5 over every row of its tables in key order.
pub async fn checksum(pool: &PgPool, projection: Projection) -> Result<String, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    checksum_of(&mut conn, projection, Target::Live).await
}

async fn checksum_of(
    conn: &mut PgConnection,
    projection: Projection,
    target: Target,
) -> Result<String, sqlx::Error> {
    let parts: Vec<String> = projection
        .tables()
        .iter()
        .map(|table| {
            format!(
                "(SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {}), '')) FROM {} t)",
                Projection::order_by(table),
                target.table(table)
            )
        })
        .collect();
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT md5({})",
        parts.join(" || ")
    )))
    .fetch_one(conn)
    .await
}
