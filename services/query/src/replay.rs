//! Rebuild a projection from its topics without taking the live view down.
//!
//! 0. **Check the history**: before anything is created, every partition the replay needs must
//!    still hold the events it needs. Retention (or `DeleteRecords`) moves a partition's low
//!    watermark above 0; a rebuild from what is left would silently lack those events (old
//!    orders gone, reserved stock below zero), so the replay is refused with
//!    [`ReplayError::TruncatedHistory`] unless [`Options::allow_truncated_history`].
//! 1. **Build** into shadow tables (`<table>_rebuild`, created `LIKE` the live ones): read
//!    every partition of the projection's topics from the beginning — or, with a start time,
//!    start from a copy of the live view and re-apply everything since that time — up to the
//!    high watermarks seen at start, through the same [`projection::apply`] the live consumer
//!    uses. Each batch commits with its per-partition positions (`replay_positions`), so an
//!    interrupted replay resumes where it stopped.
//! 2. **Compare**, blocking nobody: in one `REPEATABLE READ` snapshot, read the positions the
//!    live consumer has applied (they commit with the live tables, so the snapshot's live view
//!    is exactly the view at those positions), catch the shadows up to exactly those
//!    positions, and checksum both views. If they differ and [`Options::force`] is not set,
//!    the shadows are dropped, the live view stays, and the replay fails with
//!    [`ReplayError::ViewsDiffer`].
//! 3. **Switch**, in one short transaction: lock the live tables and `projection_positions`
//!    against writes (reads go on), catch the shadows up to what the live consumer applied
//!    since the comparison, and rename them into place. The live consumer resumes on the
//!    rebuilt tables (the projections are idempotent, so anything both applied is harmless).
//!
//! The report gives the checksum of the rebuilt view and of the live view it replaced, taken
//! at the same positions: equal unless the projection code changed (the point of a replay,
//! then switched with `force`). Only one replay of a projection runs at a time (advisory
//! lock).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sagaflow_runtime::{KafkaConfig, kafka};
use sagaflow_schemas::{Envelope, Message};
use sqlx::{Acquire, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::projection::{self, Projection, ProjectionError, Rules, Target};

/// Where a new replay starts (an interrupted one always resumes where it stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Empty shadows, every partition from offset 0.
    Beginning,
    /// Shadows copied from the live view, partitions from the first offset at or after `T`.
    Time(DateTime<Utc>),
}

/// How to run a replay. `Start` converts into the default options for that start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub start: Start,
    /// Rebuild even when the start of a partition the replay needs was deleted (retention,
    /// `DeleteRecords`): the rebuilt view then lacks those events. Without it such a replay
    /// is refused before anything is created ([`ReplayError::TruncatedHistory`]). CLI:
    /// `--allow-truncated-history`.
    pub allow_truncated_history: bool,
    /// Switch to the rebuilt view even when its checksum differs from the live view's.
    /// Without it a difference keeps the live view ([`ReplayError::ViewsDiffer`]). CLI:
    /// `--force`.
    pub force: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            start: Start::Beginning,
            allow_truncated_history: false,
            force: false,
        }
    }
}

impl From<Start> for Options {
    fn from(start: Start) -> Self {
        Options {
            start,
            ..Options::default()
        }
    }
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
    /// Checksum of the rebuilt view, now live, at the positions of the comparison.
    pub checksum: String,
    /// Checksum of the view it replaced, at the same positions.
    pub previous_checksum: String,
}

/// A partition whose start was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The topic as named in Kafka (with the deployment's prefix).
    pub topic: String,
    pub partition: i32,
    /// The partition's first retained offset: the records before it are gone.
    pub low_watermark: i64,
}

impl fmt::Display for Truncation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} partition {} starts at low watermark {} (the records before it were deleted)",
            self.topic, self.partition, self.low_watermark
        )
    }
}

/// Why a replay stopped without switching.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("interrupted; run it again to resume")]
    Interrupted,
    #[error("a replay of {0} is already running")]
    Busy(&'static str),
    #[error(
        "history truncated: {}; a rebuild would silently lack the deleted events. Nothing was \
         changed. Replay --from-time a moment after the deletion, or pass \
         --allow-truncated-history to rebuild from what is left",
        list(.0)
    )]
    TruncatedHistory(Vec<Truncation>),
    #[error(
        "the rebuilt {projection} view differs from the live one (checksum {rebuilt}, live \
         {live}, compared at the live consumer's positions){}; the live view was kept and the \
         rebuild discarded. If the rebuilt view is the one you want (changed projection rules, \
         history knowingly given up), replay again with --force",
        behind_hint(.live_behind)
    )]
    ViewsDiffer {
        projection: &'static str,
        /// Checksum of the rebuilt view.
        rebuilt: String,
        /// Checksum of the live view, which stays.
        live: String,
        /// `topic/partition` the rebuild had read further than the live consumer had applied
        /// (a live consumer that is stopped or lagging makes the views differ too).
        live_behind: Vec<String>,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Other(String),
}

fn list(truncations: &[Truncation]) -> String {
    truncations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn behind_hint(behind: &[String]) -> String {
    if behind.is_empty() {
        return String::new();
    }
    format!(
        "; the live consumer had not applied everything the rebuild read on {}: if the query \
         service is stopped or lagging, let it catch up and run the replay again",
        behind.join(", ")
    )
}

type Key = (String, i32);

/// How long the switch waits for the live consumer to apply messages produced during the
/// replay that the build already read, so that both views are compared at the same positions.
const LIVE_GRACE: Duration = Duration::from_secs(10);

/// Replay `projection`; see the module docs. `options` may be a bare [`Start`].
pub async fn replay(
    pool: &PgPool,
    kafka_config: &KafkaConfig,
    projection: Projection,
    options: impl Into<Options>,
    rules: &Rules,
    mut on_progress: impl FnMut(&Progress),
    shutdown: &CancellationToken,
) -> Result<Report, ReplayError> {
    let options = options.into();
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
        options,
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
    options: Options,
    rules: &Rules,
    on_progress: &mut dyn FnMut(&Progress),
    shutdown: &CancellationToken,
) -> Result<Report, ReplayError> {
    let saved = saved_positions(pool, projection).await?;
    let resumed = !saved.is_empty() && shadows_exist(pool, projection).await?;
    // The history check comes first: a refused replay leaves everything as it was.
    let positions = if resumed {
        // Needed: everything from where the interrupted replay stopped.
        let bounds = probe(kafka_config, projection, Start::Beginning).await?;
        let low = |key: &Key| bounds.get(key).map_or(0, |b| b.low);
        let truncated = saved
            .iter()
            .filter(|(key, (next, _))| *next < low(key))
            .map(|(key, _)| truncation(kafka_config, key, low(key)))
            .collect();
        check_history(projection, truncated, options)?;
        info!(
            projection = projection.name(),
            "resuming an interrupted replay"
        );
        saved
            .into_iter()
            .map(|(key, (next, end))| {
                let next = next.max(low(&key));
                (key, (next, end))
            })
            .collect()
    } else {
        let bounds = probe(kafka_config, projection, options.start).await?;
        let truncated = bounds
            .iter()
            .filter(|(_, b)| {
                b.low > 0
                    && match options.start {
                        Start::Beginning => true,
                        // The retained log starts at or after T: events between T and the
                        // low watermark may have been deleted (it cannot tell which).
                        Start::Time(_) => b.first == b.low,
                    }
            })
            .map(|(key, b)| truncation(kafka_config, key, b.low))
            .collect();
        check_history(projection, truncated, options)?;
        let positions = bounds
            .into_iter()
            .map(|(key, b)| (key, (b.first, b.high)))
            .collect();
        prepare(pool, projection, options.start, &positions).await?;
        positions
    };
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
        pending: Vec::new(),
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
    let (checksum, previous_checksum) = state
        .switch(pool, &consumer, options.force, shutdown)
        .await?;
    info!(projection = projection.name(), messages = state.messages, rejected = state.rejected, %checksum, %previous_checksum, "replay switched in");
    Ok(Report {
        projection,
        resumed,
        messages: state.messages,
        rejected: state.rejected,
        checksum,
        previous_checksum,
    })
}

fn truncation(kafka_config: &KafkaConfig, (topic, partition): &Key, low: i64) -> Truncation {
    Truncation {
        topic: kafka_config.topic(topic),
        partition: *partition,
        low_watermark: low,
    }
}

/// Refuse a replay whose history is truncated, unless the caller accepts that.
fn check_history(
    projection: Projection,
    truncated: Vec<Truncation>,
    options: Options,
) -> Result<(), ReplayError> {
    if truncated.is_empty() {
        return Ok(());
    }
    if !options.allow_truncated_history {
        return Err(ReplayError::TruncatedHistory(truncated));
    }
    warn!(
        projection = projection.name(),
        truncated = list(&truncated),
        "replaying a truncated history (--allow-truncated-history): the rebuilt view lacks the deleted events"
    );
    Ok(())
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

/// Fresh shadows and the start/end offsets, in one transaction.
async fn prepare(
    pool: &PgPool,
    projection: Projection,
    start: Start,
    positions: &BTreeMap<Key, (i64, i64)>,
) -> Result<(), ReplayError> {
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
    for ((topic, partition), (next, end)) in positions {
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
    Ok(())
}

/// Drop the shadows and forget the replay's positions: the live view stays as it is.
async fn discard(pool: &PgPool, projection: Projection) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for table in projection.tables() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {}",
            Target::Rebuild.table(table)
        )))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM replay_positions WHERE projection = $1")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// How far the live consumer has applied each partition of the projection's topics.
async fn live_positions(
    conn: &mut PgConnection,
    projection: Projection,
) -> Result<BTreeMap<Key, i64>, sqlx::Error> {
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT topic, kafka_partition, next_offset FROM projection_positions WHERE topic = ANY($1)",
    )
    .bind(
        projection
            .topics()
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>(),
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
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

/// A partition when a replay starts.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Low watermark: the first retained offset (above 0 once the start was deleted).
    low: i64,
    /// Where `start` begins reading.
    first: i64,
    /// High watermark: where the build ends.
    high: i64,
}

/// The bounds of every partition of the projection's topics.
async fn probe(
    kafka_config: &KafkaConfig,
    projection: Projection,
    start: Start,
) -> Result<BTreeMap<Key, Bounds>, ReplayError> {
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
                out.insert(
                    (logical.to_string(), partition),
                    Bounds { low, first, high },
                );
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
    /// (topic, partition) → (next offset, end offset).
    positions: BTreeMap<Key, (i64, i64)>,
    /// Messages read during a catch-up beyond its target, in partition order: the next
    /// catch-up applies them first.
    pending: Vec<Owned>,
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

    /// Apply messages until every partition has been read up to `target`, never past it: a
    /// message beyond its partition's target waits in `pending` for the next catch-up. So the
    /// shadows end exactly at the live positions, and the checksums compare like with like.
    async fn catch_up(
        &mut self,
        conn: &mut PgConnection,
        consumer: &StreamConsumer,
        target: &BTreeMap<Key, i64>,
        shutdown: &CancellationToken,
    ) -> Result<(), ReplayError> {
        let goal = |key: &Key| target.get(key).copied().unwrap_or(0);
        let held = std::mem::take(&mut self.pending);
        self.apply_before(conn, held, &goal).await?;
        while self.remaining(|key, _| goal(key)) > 0 {
            let batch = self.next_batch(consumer, shutdown).await?;
            self.apply_before(conn, batch, &goal).await?;
        }
        Ok(())
    }

    async fn apply_before(
        &mut self,
        conn: &mut PgConnection,
        messages: Vec<Owned>,
        goal: &dyn Fn(&Key) -> i64,
    ) -> Result<(), ReplayError> {
        for message in messages {
            if message.offset < goal(&message.key) {
                self.apply(conn, &message).await?;
            } else {
                self.pending.push(message);
            }
        }
        Ok(())
    }

    /// `topic/partition`s the shadows have read further than `live` (at most five named).
    fn ahead_of(&self, live: &BTreeMap<Key, i64>) -> Vec<String> {
        let ahead: Vec<String> = self
            .positions
            .iter()
            .filter_map(|(key, (next, _))| {
                let applied = live.get(key).copied().unwrap_or(0);
                (*next > applied).then(|| {
                    format!(
                        "{}/{} (rebuild at offset {next}, live at {applied})",
                        key.0, key.1
                    )
                })
            })
            .collect();
        let mut named: Vec<String> = ahead.iter().take(5).cloned().collect();
        if ahead.len() > named.len() {
            named.push(format!("{} more", ahead.len() - named.len()));
        }
        named
    }

    /// Wait, at most [`LIVE_GRACE`], until the live consumer has applied what the build read
    /// beyond its end offsets: messages produced during the replay, which a running consumer
    /// applies within moments. Without this, a replay under traffic would compare shadows a
    /// few messages ahead of the live view. A consumer that is stopped, or behind the end
    /// offsets themselves, is not waited for: the comparison shows it.
    async fn await_live(
        &self,
        pool: &PgPool,
        shutdown: &CancellationToken,
    ) -> Result<(), ReplayError> {
        let deadline = Instant::now() + LIVE_GRACE;
        loop {
            let live = live_positions(&mut *pool.acquire().await?, self.projection).await?;
            let waiting = self.positions.iter().any(|(key, (next, end))| {
                next > end && live.get(key).copied().unwrap_or(0) < *next
            });
            if !waiting || Instant::now() >= deadline {
                return Ok(());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(ReplayError::Interrupted),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Compare the rebuilt and live views at the same positions; switch the rebuilt one in if
    /// they are equal or `force` says so, otherwise drop it and keep the live one.
    async fn switch(
        &mut self,
        pool: &PgPool,
        consumer: &StreamConsumer,
        force: bool,
        shutdown: &CancellationToken,
    ) -> Result<(String, String), ReplayError> {
        self.await_live(pool, shutdown).await?;

        // Compare in one snapshot, taking no lock that anyone waits for: the live consumer
        // keeps writing, readers keep reading, however long the checksums take. The first
        // statement fixes the snapshot. The live tables and `projection_positions` commit
        // together, so the live view seen here is exactly the view at `live`; the shadows,
        // caught up to exactly `live` inside this transaction (its own writes are visible to
        // it, and nothing else writes the shadows), are at the same positions.
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await?;
        let live = live_positions(&mut tx, self.projection).await?;
        self.catch_up(&mut tx, consumer, &live, shutdown).await?;
        self.save_positions(&mut tx).await?;
        let previous = checksum_of(&mut tx, self.projection, Target::Live).await?;
        let rebuilt = checksum_of(&mut tx, self.projection, Target::Rebuild).await?;
        let live_behind = self.ahead_of(&live);
        tx.commit().await?;
        if rebuilt != previous {
            if !force {
                discard(pool, self.projection).await?;
                warn!(projection = self.projection.name(), %rebuilt, live = %previous, "the rebuilt view differs from the live one; kept the live view, dropped the rebuild");
                return Err(ReplayError::ViewsDiffer {
                    projection: self.projection.name(),
                    rebuilt,
                    live: previous,
                    live_behind,
                });
            }
            warn!(projection = self.projection.name(), %rebuilt, live = %previous, "the rebuilt view differs from the live one; switching anyway (force)");
        }

        // Switch. EXCLUSIVE blocks the live consumer's writes, not the readers: they go on
        // reading the old live tables while the shadows catch up with what the consumer
        // applied since the comparison (moments' worth, mostly already read into `pending`).
        // The renames take ACCESS EXCLUSIVE: a reader arriving from then on waits for the
        // commit — the renames' duration — and then reads the rebuilt tables; no reader ever
        // sees a half-switched view. The views are not checksummed again under the lock: both
        // applied the same events since the comparison, through the projections that agreed.
        // Lock order as the consumer's writes (projection tables, then positions): no cycle.
        let mut tx = pool.begin().await?;
        let mut tables: Vec<&str> = self.projection.tables().to_vec();
        tables.push("projection_positions");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            tables.join(", ")
        )))
        .execute(&mut *tx)
        .await?;
        let live = live_positions(&mut tx, self.projection).await?;
        self.catch_up(&mut tx, consumer, &live, shutdown).await?;
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
                "(SELECT md5(coalesce(string_agg({}::text, E'\\n' ORDER BY {}), '')) FROM {} t)",
                Projection::checksummed_row(table),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusals_say_what_happened_and_how_to_go_on() {
        let truncated = ReplayError::TruncatedHistory(vec![Truncation {
            topic: "prod.orders.events".into(),
            partition: 3,
            low_watermark: 1200,
        }])
        .to_string();
        for named in [
            "history truncated",
            "prod.orders.events partition 3 starts at low watermark 1200",
            "Nothing was changed",
            "--allow-truncated-history",
        ] {
            assert!(truncated.contains(named), "{named:?} in: {truncated}");
        }
        let differs = |live_behind: Vec<String>| {
            ReplayError::ViewsDiffer {
                projection: "stock",
                rebuilt: "aaa".into(),
                live: "bbb".into(),
                live_behind,
            }
            .to_string()
        };
        let plain = differs(vec![]);
        for named in [
            "rebuilt stock view differs",
            "checksum aaa, live bbb",
            "live view was kept",
            "--force",
        ] {
            assert!(plain.contains(named), "{named:?} in: {plain}");
        }
        assert!(!plain.contains("catch up"), "{plain}");
        let behind = differs(vec![
            "inventory.events/1 (rebuild at offset 9, live at 7)".into(),
        ]);
        assert!(
            behind.contains("inventory.events/1 (rebuild at offset 9, live at 7)")
                && behind.contains("let it catch up"),
            "{behind}"
        );
    }

    #[test]
    fn a_start_is_the_default_options_for_it() {
        let at = Utc::now();
        assert_eq!(
            Options::from(Start::Time(at)),
            Options {
                start: Start::Time(at),
                allow_truncated_history: false,
                force: false,
            }
        );
        assert_eq!(Options::from(Start::Beginning), Options::default());
    }
}
