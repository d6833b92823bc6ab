//! The at-least-once, effectively-once consumer every service uses.
//!
//! Guarantee: a message's effect and its inbox row `(consumer, message_id)` commit in one
//! PostgreSQL transaction; its offset is stored (and later auto-committed) only after that
//! commit. A crash before the commit redelivers the message and applies it once; a crash
//! after it redelivers it and the inbox row makes it a no-op. So every effect is applied
//! exactly once even though delivery is at-least-once. (A handler whose effects are idempotent
//! by construction may do without the inbox row, [`Handler::keeps_inbox`]: a redelivery is
//! then applied again and changes nothing.)
//!
//! Concurrency: messages of one partition are applied one after the other, in offset order
//! (keys — order ids — are partition-affine, so one saga's messages never race). A lane task
//! applies partition *p* of every topic the consumer reads (lane = partition number): keys
//! are partition-affine across topics too (the same key, partitioner and partition count),
//! so one saga's events — OrderPlaced, InventoryReserved, … on three topics — meet in one
//! lane, where they batch together instead of waiting on each other's locks from three
//! lanes; and a consumer of several topics forms batches as a one-topic consumer does, with
//! three times the messages per lane. Lanes run concurrently. A consumer's throughput is
//! therefore not bounded by one commit round trip per message but by one per message *per
//! lane*. Handlers that touch rows shared across keys (stock) lock them in a fixed order. The
//! fetch loop never waits for a lane: when a lane is full (a slow provider, a lock wait) the
//! partitions whose messages no longer fit are paused and their messages wait in order,
//! while the other lanes keep moving.
//!
//! Batches: a lane applies the messages already queued on it (at most the handler's
//! [`Handler::max_batch`]; never waiting for more to arrive, so at low load a batch is one
//! message) in **one** transaction: one statement takes the advisory locks of every message's
//! [`Handler::lock_keys`], sorted, and inserts their inbox rows; then each new message is
//! handled in offset order; the handler's [`Handler::finish`] once for the batch; one commit;
//! then what the handlers reported is told ([`Handler::committed`]: metrics and alerts of a
//! rolled-back attempt are never emitted) and the offsets are stored. Every transaction of
//! every consumer (batches of one included) takes its locks that way, all at once and in one
//! order, so two lanes' batches never wait on each other in a cycle, and a handler that
//! serialises per order needs no lock statement of its own. A batch that fails in any way — a
//! poison message in it, a handler error, a conflict, the database gone — is rolled back as a
//! whole and its messages are applied again one at a time, each with the retries and
//! dead-lettering below: one bad message never takes its neighbours' effects with it. A batch
//! may hold messages of several topics (one partition number): the offset stored after its
//! commit is each topic-partition's last.
//!
//! Failures:
//! - the database unreachable: retried with backoff for as long as it takes (never
//!   dead-lettered: the message is fine, the infrastructure is not);
//! - a malformed value, missing envelope or unknown type: dead-lettered at once;
//! - a handler error: retried `max_attempts` times with exponential backoff and jitter, then
//!   dead-lettered to `<topic>.dlq` with the reason in headers, and the partition moves on;
//!   a dependency that said when it takes calls again (an open circuit) is not asked sooner;
//! - a handler that panics: the consumer stops with an error (the component exits non-zero)
//!   and `/health/ready` turns red; nothing of that lane is committed.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::Message as _;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sagaflow_schemas::{CodecError, Envelope, Message, MessageType, header_names, topics};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, error, info_span, warn};

use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::db::{self, Tx};
use sagaflow_runtime::kafka;
use sagaflow_runtime::periodic;
use sagaflow_runtime::trace;

/// A decoded message with where it came from.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub envelope: Envelope,
    pub message: Message,
}

/// Why a handler did not apply a message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The message can never be applied (e.g. it contradicts the state): dead-lettered
    /// without retrying.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Retried with backoff; dead-lettered after the last attempt unless the database was
    /// unreachable.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Retried with backoff, then dead-lettered.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
    /// A dependency refuses calls until a known moment (the payment provider's circuit
    /// breaker is open): retried no sooner than `retry_after` — an earlier attempt would be
    /// refused without reaching it, and a message that burnt its attempts that way would be
    /// dead-lettered though the dependency was back — counted as an attempt, then
    /// dead-lettered like [`HandlerError::Failed`].
    #[error("{error:#} (refused for {retry_after:?} more)")]
    Unavailable {
        error: anyhow::Error,
        retry_after: Duration,
    },
}

impl HandlerError {
    /// Not the message's fault (the database is down, or a deadlock/serialization conflict
    /// with a concurrent lane): retried without counting the attempt.
    fn transient(&self) -> bool {
        matches!(self, HandlerError::Database(e) if db::is_unavailable(e) || db::is_conflict(e))
    }

    /// The wait before the next attempt: the backoff's `delay`, or longer when the error
    /// says when its dependency takes calls again (capped: a wrong hint must not park a
    /// partition for long).
    fn retry_delay(&self, delay: Duration) -> Duration {
        match self {
            HandlerError::Unavailable { retry_after, .. } => {
                delay.max((*retry_after).min(MAX_RETRY_AFTER))
            }
            _ => delay,
        }
    }
}

/// The longest a [`HandlerError::Unavailable`] holds a message back before its next attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A component's reaction to messages.
pub trait Handler: Send + Sync + 'static {
    /// Whether this consumer cares about a message type; others are skipped without an inbox
    /// row (they share a topic with types it handles).
    fn accepts(&self, message_type: MessageType) -> bool;

    /// How many queued messages of one partition may be applied in one transaction. `1`, the
    /// default, applies each alone. A handler opts in only when [`Handler::lock_keys`] names
    /// everything its messages lock that a message on another partition may lock too, and
    /// when it has no side effect outside the transaction (a rolled-back batch is applied
    /// again, one message at a time).
    fn max_batch(&self) -> usize {
        1
    }

    /// What handling `incoming` locks that a message on another partition (or topic) may lock
    /// too: by default its order id, whose rows the messages of every topic touch. The
    /// consumer takes these as transaction-scoped advisory locks, sorted, in the statement that
    /// claims the inbox rows — before the handler runs, in every transaction, batched or not —
    /// so a handler that must serialise the messages of one order needs no lock of its own
    /// (and no round trip for it).
    fn lock_keys(&self, incoming: &Incoming) -> Vec<String> {
        vec![incoming.message.order_id().to_string()]
    }

    /// Whether each message gets an inbox row, so that a redelivery is recognised and skipped.
    /// `true` by default. A handler returns `false` only when applying any message twice, in
    /// any order, changes nothing (the query service's projections are idempotent and
    /// order-safe by construction). The inbox row is then one write per message for nothing,
    /// and a redelivery is simply applied again. Within one batch, a repeated message id is
    /// still applied once. Locks are taken as with an inbox.
    fn keeps_inbox(&self) -> bool {
        true
    }

    /// What handling one message did that may be told only once its transaction has
    /// committed — counters, logs, alerts (see [`Handler::committed`]). `()` when there is
    /// nothing to tell.
    type Report: Send;

    /// Apply the message inside `tx` (which already holds its inbox row). Do not commit, and
    /// do not count or log what it did here: the transaction may still roll back and be
    /// applied again; return it as the [`Handler::Report`] instead.
    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx,
        incoming: &'a Incoming,
    ) -> impl Future<Output = Result<Self::Report, HandlerError>> + Send + 'a;

    /// Once per transaction, after [`Handler::handle`] ran for its new messages and before the
    /// commit: work that covers the whole batch in one statement (the query service records
    /// how far it has read here, not once per message). `batch` is every message of the
    /// transaction, in offset order, duplicates included. Nothing by default.
    fn finish<'a>(
        &'a self,
        tx: &'a mut Tx,
        batch: &'a [&'a Incoming],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a {
        let _ = (tx, batch);
        std::future::ready(Ok(()))
    }

    /// After the commit, once: the reports of the transaction's new messages, in offset
    /// order. A batch that rolled back and is applied again one message at a time reports
    /// each message once, from the transaction that committed it; a message that never
    /// commits (dead-lettered) reports nothing. At most once: a crash between the commit and
    /// this call loses the report, never the effect. Nothing by default.
    fn committed(&self, reports: Vec<Self::Report>) {
        let _ = reports;
    }
}

/// Settings of one consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The consumer's name: its inbox key and (prefixed) consumer group.
    pub name: String,
    /// Logical topics it reads.
    pub topics: Vec<&'static str>,
    /// Attempts before a failing message is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (doubles, with jitter, up to 2 s).
    pub first_backoff: Duration,
    /// A member out of its group this long is replaced by a new one (self-healing after
    /// broker outages; see [`run`]). Added for the embedded broker, whose frozen-broker
    /// recovery left librdkafka members out of their group; on Apache Kafka librdkafka
    /// rejoins by itself well within this (the `faults` and `cluster` targets never trip it),
    /// so it is kept as a safety net that costs nothing there.
    pub rejoin_after: Duration,
    /// Messages fetched ahead per partition lane (back-pressure on the fetch loop).
    pub lane_depth: usize,
    /// At most this many messages per transaction, whatever the handler allows
    /// ([`Handler::max_batch`]); the property tests vary it.
    pub max_batch: usize,
    /// Inbox rows older than this are deleted (hourly-ish rounds). A redelivery older than it
    /// would be applied again, so it must stay far above any redelivery window.
    pub inbox_retention: Duration,
    /// The name of this component's database (`order`, …) when it writes an outbox there:
    /// the consumer then measures that outbox's backlog ([`crate::relay::watch_backlog`]), so
    /// the backlog alerts keep working while the relay is down.
    pub outbox: Option<String>,
}

/// Messages per transaction a batching handler allows; the consumer's own cap is
/// `SAGAFLOW_CONSUMER_MAX_BATCH` ([`ConsumerSettings::max_batch`]).
pub const DEFAULT_MAX_BATCH: usize = 64;

/// Namespace of the consumer's advisory locks (the first key of the two-key form), apart from
/// the handlers' own.
const BATCH_LOCK_NAMESPACE: i32 = 0x5346_4200; // "SFB\0"

/// Inbox rows are kept this long by default: 7 days.
pub const DEFAULT_INBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Inbox rows deleted per statement by [`prune_inbox`].
pub const INBOX_PRUNE_BATCH: i64 = 5_000;
/// How often a consumer prunes its inbox.
const INBOX_PRUNE_EVERY: Duration = Duration::from_secs(60);

impl ConsumerSettings {
    /// The settings of consumer `name` of `topics`, with the process's retry and inbox
    /// retention settings from `kafka`.
    pub fn new(name: &str, topics: &[&'static str], kafka: &KafkaConfig) -> Self {
        ConsumerSettings {
            name: name.to_string(),
            topics: topics.to_vec(),
            max_attempts: kafka.consumer_max_attempts,
            first_backoff: Duration::from_millis(50),
            rejoin_after: Duration::from_secs(20),
            lane_depth: 64,
            max_batch: kafka.consumer_max_batch as usize,
            inbox_retention: Duration::from_secs(kafka.inbox_retention_secs),
            outbox: None,
        }
    }

    /// Also measure the outbox of database `database` (see [`ConsumerSettings::outbox`]).
    pub fn with_outbox(mut self, database: &str) -> Self {
        self.outbox = Some(database.to_string());
        self
    }
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Duplicate,
    Skipped,
    DeadLettered,
    /// Shutdown interrupted the retries; the offset is not stored.
    Interrupted,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::Skipped,
        Outcome::DeadLettered,
        Outcome::Interrupted,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Skipped => "skipped",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// How long closing a member (leaving its group, committing stored offsets) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Run a consumer until `shutdown` is cancelled.
pub async fn run<H: Handler>(
    pool: PgPool,
    kafka_config: KafkaConfig,
    settings: ConsumerSettings,
    handler: H,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut dlq_topics: Vec<String> = settings.topics.iter().map(|t| topics::dlq(t)).collect();
    dlq_topics.extend(settings.topics.iter().map(|t| t.to_string()));
    let all: Vec<&str> = dlq_topics.iter().map(String::as_str).collect();
    kafka::ensure_topics(&kafka_config, &all).await?;

    let subscribed: Vec<String> = settings
        .topics
        .iter()
        .map(|t| kafka_config.topic(t))
        .collect();
    let dead_letters = kafka::producer(&kafka_config)?;
    zero_metrics(&kafka_config, &settings);
    // Aborted with this future: a crashed component measures nothing.
    let _backlog = settings.outbox.clone().map(|database| {
        AbortOnDropHandle::new(tokio::spawn(crate::relay::watch_backlog(
            pool.clone(),
            database,
            shutdown.clone(),
        )))
    });
    tokio::spawn(prune_inbox_every(
        pool.clone(),
        settings.name.clone(),
        settings.inbox_retention,
        shutdown.clone(),
    ));
    let metrics = MessageMetrics::new(&kafka_config.group(&settings.name));
    let worker = Arc::new(Worker {
        pool,
        kafka_config,
        settings,
        handler,
        dead_letters,
        shutdown,
        metrics,
    });
    loop {
        let consumer = Arc::new(kafka::consumer(
            &worker.kafka_config,
            &worker.settings.name,
        )?);
        consumer.subscribe(&subscribed.iter().map(String::as_str).collect::<Vec<_>>())?;
        let ended = Worker::consume(&worker, &consumer).await;
        // Closing a member blocks its thread until it has left the group: not on a runtime
        // worker, which other tasks (an in-process broker among them) may need meanwhile. And
        // not for ever: after a frozen Apache Kafka broker librdkafka's close was seen never
        // to finish, which must not keep the component (or a shutdown) waiting. So the close
        // runs on a thread of its own — not `spawn_blocking`, whose threads a runtime waits
        // for when it shuts down — and is left behind, and said so, after CLOSE_TIMEOUT.
        let (closed, close_done) = tokio::sync::oneshot::channel::<()>();
        let closer = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = closed.send(());
            });
        if closer.is_ok()
            && tokio::time::timeout(CLOSE_TIMEOUT, close_done)
                .await
                .is_err()
        {
            error!(consumer = %worker.settings.name, timeout_s = CLOSE_TIMEOUT.as_secs(), "closing the Kafka consumer did not finish; moving on without it");
        }
        match ended {
            Ended::Stopped => return Ok(()),
            Ended::LanePanicked(panic) => {
                // A handler bug, not a transient fault: the component stops (non-zero exit)
                // and reports not ready meanwhile, instead of consuming nothing while looking
                // healthy. Its messages stay uncommitted for the next member.
                let group = worker.group();
                error!(consumer = %worker.settings.name, panic = %panic, "a partition lane panicked; the consumer stops");
                sagaflow_runtime::http::mark_failed(
                    &group,
                    format!("consumer {group}: a lane panicked: {panic}"),
                );
                anyhow::bail!("consumer {group}: a partition lane panicked: {panic}");
            }
            Ended::OutOfGroup(out_for) => {
                // Seen after a broker outage longer than the session timeout: the client kept
                // its connections but never rejoined. A new member (the old one leaves as it
                // drops) resumes from the committed offsets; the inbox absorbs redeliveries.
                warn!(consumer = %worker.settings.name, out_for_s = out_for.as_secs(), "member out of its group too long; rejoining with a new member");
                metrics::counter!("consumer_rejoins_total", "group" => worker.group()).increment(1);
            }
            Ended::OffsetsNotFetched => {
                warn!(consumer = %worker.settings.name, "committed offsets of the assignment could not be fetched; rejoining with a new member");
                metrics::counter!("consumer_rejoins_total", "group" => worker.group()).increment(1);
            }
        }
    }
}

/// Register the group's counters and gauges at zero before anything happens. A counter born
/// at 1 by its first increment has no earlier sample, so `increase()` never sees that first
/// dead letter or rejoin and its alert never fires; and a member that never gets an
/// assignment must show 0 partitions, not nothing.
fn zero_metrics(config: &KafkaConfig, settings: &ConsumerSettings) {
    let group = config.group(&settings.name);
    for topic in &settings.topics {
        metrics::counter!("consumer_dead_lettered_total", "group" => group.clone(), "topic" => topic.to_string()).increment(0);
    }
    metrics::counter!("consumer_rejoins_total", "group" => group.clone()).increment(0);
    metrics::gauge!("consumer_assigned_partitions", "group" => group).set(0.0);
}

/// Delete `consumer`'s inbox rows older than `retention`, in batches of [`INBOX_PRUNE_BATCH`]
/// until none is left; returns how many went.
pub async fn prune_inbox(
    pool: &PgPool,
    consumer: &str,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM inbox WHERE (consumer, message_id) IN (
                SELECT consumer, message_id FROM inbox
                 WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2)
                 LIMIT $3)",
        )
        .bind(consumer)
        .bind(retention.as_secs_f64())
        .bind(INBOX_PRUNE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < INBOX_PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// [`prune_inbox`] every [`INBOX_PRUNE_EVERY`] until `shutdown`; a failed round is logged and
/// the next one tries again.
async fn prune_inbox_every(
    pool: PgPool,
    consumer: String,
    retention: Duration,
    shutdown: CancellationToken,
) {
    periodic::every(INBOX_PRUNE_EVERY, shutdown, || async {
        match prune_inbox(&pool, &consumer, retention).await {
            Ok(deleted) => {
                metrics::counter!("inbox_rows_deleted_total", "consumer" => consumer.clone())
                    .increment(deleted);
            }
            Err(e) => {
                warn!(consumer, error = %e, "pruning the inbox failed; the next round retries")
            }
        }
    })
    .await
}

/// The fetch loop's side of one partition: its lane's queue (shared with the same partition
/// number of the consumer's other topics), and the messages that did not fit (while there are
/// any, the partition is paused and every newer message queues behind them, so offset order
/// is kept).
struct LaneFeed {
    queue: mpsc::Sender<OwnedMessage>,
    overflow: VecDeque<OwnedMessage>,
    /// The offset after the last message handed over: anything below it is a re-fetch
    /// (librdkafka may fetch again what it had prefetched when a partition is paused and
    /// resumed) of a message the lane already has.
    next_offset: i64,
}

/// The lane's task has ended.
#[derive(Debug, PartialEq, Eq)]
struct Closed;

/// Where [`LaneFeed::offer`] put a message.
#[derive(Debug, PartialEq, Eq)]
enum Offered {
    /// In the lane's queue, or dropped as a re-fetch.
    Queued,
    /// In the overflow: pause the partition.
    Overflowed { topic: String, partition: i32 },
}

impl LaneFeed {
    fn new(queue: mpsc::Sender<OwnedMessage>) -> Self {
        LaneFeed {
            queue,
            overflow: VecDeque::new(),
            next_offset: i64::MIN,
        }
    }

    fn has_overflow(&self) -> bool {
        !self.overflow.is_empty()
    }

    /// Hand `raw` to the lane without waiting.
    fn offer(&mut self, raw: OwnedMessage) -> Result<Offered, Closed> {
        if raw.offset() < self.next_offset {
            return Ok(Offered::Queued);
        }
        self.next_offset = raw.offset() + 1;
        if self.overflow.is_empty() {
            match self.queue.try_send(raw) {
                Ok(()) => return Ok(Offered::Queued),
                Err(TrySendError::Closed(_)) => return Err(Closed),
                Err(TrySendError::Full(raw)) => self.overflow.push_back(raw),
            }
        } else {
            self.overflow.push_back(raw);
        }
        let last = self.overflow.back().expect("just pushed");
        Ok(Offered::Overflowed {
            topic: last.topic().to_string(),
            partition: last.partition(),
        })
    }

    /// Move what fits from the overflow into the queue. `Some((topic, partition))` when the
    /// overflow has just emptied: the partition can be resumed.
    fn drain(&mut self) -> Result<Option<(String, i32)>, Closed> {
        let Some(first) = self.overflow.front() else {
            return Ok(None);
        };
        let partition = (first.topic().to_string(), first.partition());
        while let Some(raw) = self.overflow.pop_front() {
            match self.queue.try_send(raw) {
                Ok(()) => {}
                Err(TrySendError::Closed(_)) => return Err(Closed),
                Err(TrySendError::Full(raw)) => {
                    self.overflow.push_front(raw);
                    return Ok(None);
                }
            }
        }
        Ok(Some(partition))
    }
}

/// The fetch loop's side of every lane: a [`LaneFeed`] per topic-partition, and one lane —
/// a queue and the task applying it — per partition number, shared by that partition of
/// every topic the consumer reads.
struct Lanes {
    feeds: HashMap<(String, i32), LaneFeed>,
    queues: HashMap<i32, mpsc::Sender<OwnedMessage>>,
    /// Messages a lane's queue holds.
    depth: usize,
    /// Which overflowing feed goes first in the next drain (see [`Lanes::drain_overflows`]).
    drain_turn: usize,
}

impl Lanes {
    fn new(depth: usize) -> Self {
        Lanes {
            feeds: HashMap::new(),
            queues: HashMap::new(),
            depth,
            drain_turn: 0,
        }
    }

    /// The feed of `topic`/`partition`; `start` is given the queue of a partition number not
    /// seen before, to start its lane.
    fn feed(
        &mut self,
        topic: &str,
        partition: i32,
        start: impl FnOnce(mpsc::Receiver<OwnedMessage>),
    ) -> &mut LaneFeed {
        let (queues, depth) = (&mut self.queues, self.depth);
        self.feeds
            .entry((topic.to_string(), partition))
            .or_insert_with(|| {
                let queue = queues.entry(partition).or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(depth);
                    start(rx);
                    tx
                });
                LaneFeed::new(queue.clone())
            })
    }

    fn has_backlog(&self) -> bool {
        self.feeds.values().any(LaneFeed::has_overflow)
    }

    /// Move overflowed messages into their lanes; the partitions whose overflow emptied (to
    /// be resumed). Feeds of one lane compete for its queue, and the first to drain may fill
    /// it: the overflowing feeds take turns at going first, so a topic whose partition is
    /// paused behind a busier one of the same lane is never starved.
    fn drain_overflows(&mut self) -> Result<Vec<(String, i32)>, Closed> {
        let mut waiting: Vec<(&(String, i32), &mut LaneFeed)> = self
            .feeds
            .iter_mut()
            .filter(|(_, feed)| feed.has_overflow())
            .collect();
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        waiting.sort_by(|a, b| a.0.cmp(b.0));
        let first = self.drain_turn % waiting.len();
        waiting.rotate_left(first);
        self.drain_turn = self.drain_turn.wrapping_add(1);
        let mut emptied = Vec::new();
        for (_, feed) in waiting {
            emptied.extend(feed.drain()?);
        }
        Ok(emptied)
    }
}

/// Pause or resume fetching one partition. A failure (the partition was revoked meanwhile)
/// is only logged: a new assignment starts unpaused, and a full lane pauses it again.
fn pause(consumer: &kafka::GroupConsumer, topic: &str, partition: i32, paused: bool) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    match result {
        Ok(()) => {
            metrics::counter!("consumer_partition_pauses_total", "action" => if paused { "pause" } else { "resume" }).increment(1);
            debug!(
                topic,
                partition, paused, "partition fetch paused/resumed (lane full)"
            );
        }
        Err(e) => {
            debug!(topic, partition, paused, error = %e, "pausing/resuming a partition failed")
        }
    }
}

/// The message of a lane's panic.
fn panic_message(error: tokio::task::JoinError) -> String {
    let panic = error.into_panic();
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Why [`Worker::consume`] returned.
enum Ended {
    /// Shutdown (or an interrupted message).
    Stopped,
    /// A lane's task panicked (the panic's message).
    LanePanicked(String),
    /// The member was out of its group longer than `rejoin_after`.
    OutOfGroup(Duration),
    /// librdkafka could not fetch the committed offsets of the member's assignment, so those
    /// partitions would never be consumed by it ([`kafka::GroupContext::offsets_not_fetched`]).
    OffsetsNotFetched,
}

struct Worker<H> {
    pool: PgPool,
    kafka_config: KafkaConfig,
    settings: ConsumerSettings,
    handler: H,
    dead_letters: FutureProducer,
    shutdown: CancellationToken,
    metrics: MessageMetrics,
}

/// The per-message metrics of a consumer, registered once: no label is built per message.
struct MessageMetrics {
    /// `consumer_messages_total{group, outcome}`, in the order of [`Outcome::ALL`].
    messages: [metrics::Counter; 5],
    handle_seconds: metrics::Histogram,
    /// `consumer_batch_size{group}`: messages per lane transaction.
    batch_size: metrics::Histogram,
    /// `consumer_batch_fallbacks_total{group}`: batches rolled back and applied one by one.
    batch_fallbacks: metrics::Counter,
}

impl MessageMetrics {
    fn new(group: &str) -> Self {
        MessageMetrics {
            messages: Outcome::ALL.map(|outcome| {
                metrics::counter!("consumer_messages_total", "group" => group.to_string(), "outcome" => outcome.label())
            }),
            handle_seconds: metrics::histogram!("consumer_handle_seconds", "group" => group.to_string()),
            batch_size: metrics::histogram!("consumer_batch_size", "group" => group.to_string()),
            batch_fallbacks: {
                let counter = metrics::counter!("consumer_batch_fallbacks_total", "group" => group.to_string());
                counter.increment(0);
                counter
            },
        }
    }

    fn record(&self, outcome: Outcome, seconds: f64) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.messages[i].increment(1);
        }
        self.handle_seconds.record(seconds);
    }
}

impl<H: Handler> Worker<H> {
    /// The consumer group: the metrics label (prefixed, so deployments sharing a process differ).
    fn group(&self) -> String {
        self.kafka_config.group(&self.settings.name)
    }

    /// The fetch loop: hands each message to its partition number's lane, spawning lanes as
    /// partitions show up, and watches group membership. It never waits for a lane: a lane
    /// whose queue is full (a slow handler, a lock wait) gets its partition paused, and its
    /// messages wait in the lane's overflow, so every other partition keeps moving. On return
    /// every lane has stopped, so nothing stores an offset into a consumer that is about to
    /// be dropped.
    async fn consume(this: &Arc<Self>, consumer: &Arc<kafka::GroupConsumer>) -> Ended {
        let stop_lanes = this.shutdown.child_token();
        let mut lanes = Lanes::new(this.settings.lane_depth);
        let mut running = JoinSet::new();
        let mut watch = tokio::time::interval(Duration::from_secs(1));
        let mut drain = tokio::time::interval(Duration::from_millis(20));
        let ended = loop {
            let backlog = lanes.has_backlog();
            let received = tokio::select! {
                _ = this.shutdown.cancelled() => break Ended::Stopped,
                // A lane ends early only when shutdown interrupted its retries — or when it
                // panicked.
                Some(joined) = running.join_next() => match joined {
                    Err(e) if e.is_panic() => break Ended::LanePanicked(panic_message(e)),
                    _ => break Ended::Stopped,
                },
                received = consumer.recv() => received,
                _ = watch.tick() => {
                    let out_for = consumer.context().out_of_group_for();
                    if out_for > this.settings.rejoin_after {
                        break Ended::OutOfGroup(out_for);
                    }
                    if consumer.context().offsets_not_fetched() {
                        break Ended::OffsetsNotFetched;
                    }
                    continue;
                }
                _ = drain.tick(), if backlog => {
                    match lanes.drain_overflows() {
                        Ok(emptied) => {
                            for (topic, partition) in emptied {
                                pause(consumer, &topic, partition, false);
                            }
                        }
                        Err(Closed) => break Ended::Stopped,
                    }
                    continue;
                }
            };
            let raw = match received {
                Ok(raw) => raw.detach(),
                Err(e) => {
                    // librdkafka reconnects by itself; errors here are informational.
                    warn!(consumer = %this.settings.name, error = %e, "kafka consumer error");
                    continue;
                }
            };
            let feed = lanes.feed(raw.topic(), raw.partition(), |queue| {
                running.spawn(Self::lane(
                    this.clone(),
                    consumer.clone(),
                    queue,
                    stop_lanes.clone(),
                ));
            });
            match feed.offer(raw) {
                Ok(Offered::Queued) => {}
                Ok(Offered::Overflowed { topic, partition }) => {
                    pause(consumer, &topic, partition, true);
                }
                Err(Closed) => break Ended::Stopped,
            }
        };
        // Messages still queued in a lane are not applied and their offsets not stored:
        // the next member gets them again.
        stop_lanes.cancel();
        drop(lanes);
        while running.join_next().await.is_some() {}
        ended
    }

    /// Applies one partition number's messages (of every topic) in order, a batch of what is
    /// queued at a time, and stores the offsets after their commit.
    async fn lane(
        self: Arc<Self>,
        consumer: Arc<kafka::GroupConsumer>,
        mut queue: mpsc::Receiver<OwnedMessage>,
        stop: CancellationToken,
    ) {
        let max_batch = self.handler.max_batch().min(self.settings.max_batch).max(1);
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                raw = queue.recv() => match raw {
                    Some(raw) => raw,
                    None => return,
                },
            };
            // What is queued already, never waiting for more: at low load a batch is one
            // message and costs no latency.
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(raw) => batch.push(raw),
                    Err(_) => break,
                }
            }
            let carried_on = if batch.len() == 1 {
                self.consume_one(&consumer, &batch[0]).await
            } else {
                self.consume_batch(&consumer, &batch).await
            };
            if !carried_on {
                return;
            }
        }
    }

    /// The tracing span of one message; its trace continues the producer's.
    fn span(&self, raw: &OwnedMessage) -> tracing::Span {
        let span = info_span!(
            "consume",
            otel.name = format!("{} process", raw.topic()),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = raw.topic(),
            messaging.kafka.destination.partition = raw.partition(),
            messaging.kafka.message.offset = raw.offset(),
            messaging.consumer.group.name = %self.settings.name,
            messaging.message.id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        trace::continue_from(&span, traceparent(raw).as_deref());
        span
    }

    /// Apply one message (with its retries) and store its offset; `false` when shutdown
    /// interrupted it (its offset is not stored).
    async fn consume_one(&self, consumer: &kafka::GroupConsumer, raw: &OwnedMessage) -> bool {
        let started = Instant::now();
        let outcome = self.process(raw).instrument(self.span(raw)).await;
        self.metrics
            .record(outcome, started.elapsed().as_secs_f64());
        if outcome == Outcome::Interrupted {
            return false;
        }
        self.store_offset(consumer, raw);
        true
    }

    /// Apply a lane's batch in one transaction and store each topic-partition's last offset;
    /// when anything about it fails, roll it back and apply its messages one at a time instead.
    async fn consume_batch(&self, consumer: &kafka::GroupConsumer, batch: &[OwnedMessage]) -> bool {
        let started = Instant::now();
        let mut parsed = Vec::with_capacity(batch.len());
        for raw in batch {
            match parse(raw, |kind| self.handler.accepts(kind)) {
                Ok(incoming) => parsed.push(Some(incoming)),
                Err(Unreadable::NotOurs) => parsed.push(None),
                // It is dead-lettered on the one-at-a-time path, in its place.
                Err(Unreadable::Poison { .. }) => {
                    return self.consume_one_by_one(consumer, batch).await;
                }
            }
        }
        let spans: Vec<tracing::Span> = batch.iter().map(|raw| self.span(raw)).collect();
        let applying: Vec<(&Incoming, &tracing::Span)> = parsed
            .iter()
            .zip(&spans)
            .filter_map(|(incoming, span)| incoming.as_ref().map(|i| (i, span)))
            .collect();
        // Nothing this consumer handles (types it skips): no transaction at all.
        let applied = if applying.is_empty() {
            Ok(Vec::new())
        } else {
            self.apply(&applying).await
        };
        let outcomes = match applied {
            Ok(outcomes) => outcomes,
            Err(error) => {
                debug!(consumer = %self.settings.name, messages = batch.len(), %error, "batch rolled back; applying its messages one at a time");
                self.metrics.batch_fallbacks.increment(1);
                return self.consume_one_by_one(consumer, batch).await;
            }
        };
        self.metrics.batch_size.record(applying.len() as f64);
        let per_message = started.elapsed().as_secs_f64() / batch.len() as f64;
        let mut applied = outcomes.into_iter();
        for incoming in &parsed {
            let outcome = match incoming {
                Some(_) => applied.next().unwrap_or(Outcome::Applied),
                None => Outcome::Skipped,
            };
            self.metrics.record(outcome, per_message);
        }
        // librdkafka commits the stored offset + 1, which covers each partition's part of it.
        for raw in last_of_each_partition(batch) {
            self.store_offset(consumer, raw);
        }
        true
    }

    async fn consume_one_by_one(
        &self,
        consumer: &kafka::GroupConsumer,
        batch: &[OwnedMessage],
    ) -> bool {
        for raw in batch {
            if !self.consume_one(consumer, raw).await {
                return false;
            }
        }
        true
    }

    fn store_offset(&self, consumer: &kafka::GroupConsumer, raw: &OwnedMessage) {
        // Same call as `store_offset_from_message`: librdkafka commits offset + 1.
        if let Err(e) = consumer.store_offset(raw.topic(), raw.partition(), raw.offset()) {
            // After a revocation the partition is not ours any more: its new owner gets the
            // message again and the inbox makes it a no-op. Otherwise the offset is re-stored
            // with the partition's next message.
            warn!(consumer = %self.settings.name, topic = raw.topic(), partition = raw.partition(), offset = raw.offset(), error = %e, "storing offset failed");
        }
    }

    async fn process(&self, raw: &OwnedMessage) -> Outcome {
        let incoming = match parse(raw, |kind| self.handler.accepts(kind)) {
            Ok(incoming) => incoming,
            Err(Unreadable::NotOurs) => return Outcome::Skipped,
            Err(Unreadable::Poison { kind, reason }) => {
                return self.dead_letter(raw, kind, &reason, 1).await;
            }
        };
        tracing::Span::current().record(
            "messaging.message.id",
            tracing::field::display(incoming.envelope.message_id),
        );
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.settings.first_backoff)
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let span = tracing::Span::current();
            let error = match self.apply(&[(&incoming, &span)]).await {
                Ok(outcomes) => return outcomes.first().copied().unwrap_or(Outcome::Duplicate),
                Err(error) => error,
            };
            if let HandlerError::Rejected(reason) = &error {
                return self.dead_letter(raw, "rejected", reason, attempts).await;
            }
            if error.transient() {
                // Not the message's fault: wait and retry, do not count the attempt.
                attempts -= 1;
                warn!(consumer = %self.settings.name, error = %error, "database unavailable or conflict; retrying");
            } else if attempts >= self.settings.max_attempts {
                return self
                    .dead_letter(raw, "failed", &error.to_string(), attempts)
                    .await;
            } else {
                debug!(consumer = %self.settings.name, attempts, error = %error, "handler failed; retrying");
            }
            let delay = error.retry_delay(delays.next().unwrap_or(Duration::from_secs(2)));
            tokio::select! {
                _ = self.shutdown.cancelled() => return Outcome::Interrupted,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt at applying messages of one lane, in offset order: their inbox rows and
    /// effects in one transaction (see the module doc for the locks). The outcome of each:
    /// applied, or a duplicate (its inbox row existed, or its message id came earlier in the
    /// batch).
    async fn apply(
        &self,
        batch: &[(&Incoming, &tracing::Span)],
    ) -> Result<Vec<Outcome>, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let fresh = self.lock_and_claim(&mut tx, batch).await?;
        let mut reports = Vec::with_capacity(batch.len());
        for ((incoming, span), fresh) in batch.iter().zip(&fresh) {
            if *fresh {
                let report = self
                    .handler
                    .handle(&mut tx, incoming)
                    .instrument((*span).clone())
                    .await?;
                reports.push(report);
            }
        }
        let all: Vec<&Incoming> = batch.iter().map(|(incoming, _)| *incoming).collect();
        self.handler.finish(&mut tx, &all).await?;
        tx.commit().await?;
        // Only now: a rolled-back attempt's reports were dropped with it.
        self.handler.committed(reports);
        Ok(fresh
            .into_iter()
            .map(|fresh| {
                if fresh {
                    Outcome::Applied
                } else {
                    Outcome::Duplicate
                }
            })
            .collect())
    }

    /// One statement: the batch's advisory locks ([`Handler::lock_keys`]), then the inbox
    /// rows. Which messages are new (first time seen, and first in the batch).
    async fn lock_and_claim(
        &self,
        tx: &mut Tx,
        batch: &[(&Incoming, &tracing::Span)],
    ) -> Result<Vec<bool>, sqlx::Error> {
        let locks = lock_order(
            batch
                .iter()
                .flat_map(|(incoming, _)| self.handler.lock_keys(incoming)),
        );
        let firsts = first_occurrences(batch.iter().map(|(i, _)| i.envelope.message_id));
        if !self.handler.keeps_inbox() {
            take_locks(tx, &locks).await?;
            return Ok(firsts);
        }
        let claimed: Vec<&Incoming> = batch
            .iter()
            .zip(&firsts)
            .filter(|(_, first)| **first)
            .map(|((incoming, _), _)| *incoming)
            .collect();
        let inserted: Vec<uuid::Uuid> = sqlx::query_scalar(
            // The aggregate takes every lock, in array order, before the join yields the first
            // row to insert.
            "WITH locked AS (SELECT count(pg_advisory_xact_lock($1, k)) AS n FROM unnest($2::int4[]) AS k)
             INSERT INTO inbox (consumer, message_id, message_type, topic, kafka_partition, kafka_offset)
             SELECT $3, m.id, m.kind, m.topic, m.part, m.off
               FROM locked, unnest($4::uuid[], $5::text[], $6::text[], $7::int4[], $8::int8[])
                    AS m(id, kind, topic, part, off)
             ON CONFLICT DO NOTHING
             RETURNING message_id",
        )
        .bind(BATCH_LOCK_NAMESPACE)
        .bind(&locks)
        .bind(&self.settings.name)
        .bind(claimed.iter().map(|i| i.envelope.message_id).collect::<Vec<_>>())
        .bind(claimed.iter().map(|i| i.envelope.message_type.as_str()).collect::<Vec<_>>())
        .bind(claimed.iter().map(|i| self.kafka_config.logical(&i.topic)).collect::<Vec<_>>())
        .bind(claimed.iter().map(|i| i.partition).collect::<Vec<_>>())
        .bind(claimed.iter().map(|i| i.offset).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        Ok(batch
            .iter()
            .zip(firsts)
            .map(|((incoming, _), first)| first && inserted.contains(&incoming.envelope.message_id))
            .collect())
    }

    /// Publish the message as it is, plus reason headers, to `<topic>.dlq`; retried until the
    /// broker acknowledges it, because storing the offset without it would lose the message.
    async fn dead_letter(
        &self,
        raw: &OwnedMessage,
        kind: &str,
        reason: &str,
        attempts: u32,
    ) -> Outcome {
        let source_topic = self.kafka_config.logical(raw.topic()).to_string();
        let dlq = self.kafka_config.topic(&topics::dlq(&source_topic));
        error!(consumer = %self.settings.name, topic = raw.topic(), partition = raw.partition(), offset = raw.offset(), kind, reason, "dead-lettering message");
        let mut pairs = kafka::header_pairs(raw.headers());
        let extra = [
            (header_names::DLQ_REASON, reason.to_string()),
            (header_names::DLQ_ERROR_KIND, kind.to_string()),
            (header_names::DLQ_SOURCE_TOPIC, source_topic.clone()),
            (
                header_names::DLQ_SOURCE_PARTITION,
                raw.partition().to_string(),
            ),
            (header_names::DLQ_SOURCE_OFFSET, raw.offset().to_string()),
            (header_names::DLQ_CONSUMER, self.settings.name.clone()),
            (header_names::DLQ_ATTEMPTS, attempts.to_string()),
            (header_names::DLQ_TIME, chrono::Utc::now().to_rfc3339()),
        ];
        pairs.extend(
            extra
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into_bytes())),
        );
        loop {
            let headers = pairs
                .iter()
                .fold(rdkafka::message::OwnedHeaders::new(), |h, (k, v)| {
                    h.insert(rdkafka::message::Header {
                        key: k,
                        value: Some(v),
                    })
                });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&dlq).headers(headers);
            if let Some(key) = raw.key() {
                record = record.key(key);
            }
            if let Some(payload) = raw.payload() {
                record = record.payload(payload);
            }
            match self.dead_letters.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    metrics::counter!("consumer_dead_lettered_total", "group" => self.group(), "topic" => source_topic.clone()).increment(1);
                    return Outcome::DeadLettered;
                }
                Err((e, _)) => {
                    warn!(topic = %dlq, error = %e, "dead-letter publish failed; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Outcome::Interrupted,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }
}

/// The batch's advisory locks alone, for a handler without inbox rows
/// ([`Handler::keeps_inbox`]); the same namespace and order as the claiming statement.
async fn take_locks(tx: &mut Tx, locks: &[i32]) -> Result<(), sqlx::Error> {
    if locks.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT count(pg_advisory_xact_lock($1, k)) FROM unnest($2::int4[]) AS k")
        .bind(BATCH_LOCK_NAMESPACE)
        .bind(locks)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The advisory-lock keys of `names`: hashed, sorted, each once — the one order every
/// transaction of a batching consumer takes its locks in. Two names with the same hash share
/// a lock, which only makes one wait for the other.
/// The last message of each topic-partition in `batch` (a lane's batch: each partition's
/// messages in offset order), in the order of those last messages.
fn last_of_each_partition(batch: &[OwnedMessage]) -> Vec<&OwnedMessage> {
    batch
        .iter()
        .enumerate()
        .filter(|(i, raw)| {
            !batch[i + 1..]
                .iter()
                .any(|later| later.partition() == raw.partition() && later.topic() == raw.topic())
        })
        .map(|(_, raw)| raw)
        .collect()
}

fn lock_order(names: impl Iterator<Item = String>) -> Vec<i32> {
    let mut keys: Vec<i32> = names.map(|name| lock_key(&name)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// FNV-1a, folded to 32 bits: stable across processes and builds (every replica must lock
/// the same key for the same name), unlike the standard library's hasher.
fn lock_key(name: &str) -> i32 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    ((hash >> 32) ^ hash) as u32 as i32
}

/// For each id, whether it is its first occurrence: a message id twice in one batch is
/// applied once.
fn first_occurrences(ids: impl Iterator<Item = uuid::Uuid>) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    ids.map(|id| seen.insert(id)).collect()
}

enum Unreadable {
    /// A tombstone or a value without our envelope type: nothing to do.
    NotOurs,
    Poison {
        kind: &'static str,
        reason: String,
    },
}

/// The message's `traceparent` header: its consumer span continues the producer's trace.
fn traceparent(raw: &OwnedMessage) -> Option<String> {
    use rdkafka::message::Headers as _;
    raw.headers()?
        .iter()
        .find(|h| h.key == header_names::TRACEPARENT)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string)
}

/// The message with its envelope, decoded — unless its envelope names a type this consumer
/// does not handle (`accepts`): then it is not decoded at all (`NotOurs`; the consumers that
/// handle it judge its payload). A type no one knows is decoded and dead-lettered as
/// `unknown_type`.
fn parse(
    raw: &OwnedMessage,
    accepts: impl Fn(MessageType) -> bool,
) -> Result<Incoming, Unreadable> {
    let pairs = kafka::header_pairs(raw.headers());
    let envelope = Envelope::from_headers(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(|e| Unreadable::Poison {
            kind: "malformed_envelope",
            reason: e.to_string(),
        })?;
    let Some(payload) = raw.payload() else {
        return Err(Unreadable::NotOurs);
    };
    if let Ok(kind) = envelope.message_type.parse::<MessageType>()
        && !accepts(kind)
    {
        return Err(Unreadable::NotOurs);
    }
    let message = Message::decode(&envelope.message_type, Some(&envelope.schema_ref), payload)
        .map_err(|e| {
            let kind = match e {
                CodecError::UnknownType(_) => "unknown_type",
                CodecError::UnknownSchema(_) => "unknown_schema",
                CodecError::Avro { .. } => "undecodable",
            };
            Unreadable::Poison {
                kind,
                reason: e.to_string(),
            }
        })?;
    Ok(Incoming {
        topic: raw.topic().to_string(),
        partition: raw.partition(),
        offset: raw.offset(),
        key: raw.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        envelope,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn message(offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "orders.events".into(),
            Timestamp::NotAvailable,
            3,
            offset,
            None,
        )
    }

    fn message_of(topic: &str, partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            topic.into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn the_same_partition_of_every_topic_shares_one_lane_in_arrival_order() {
        let mut lanes = Lanes::new(8);
        let mut started = Vec::new();
        let arrivals = [
            ("orders.events", 3, 10),
            ("inventory.events", 3, 7),
            ("orders.events", 1, 4),
            ("orders.events", 3, 11),
            ("payment.events", 3, 2),
        ];
        for (topic, partition, offset) in arrivals {
            let offered = lanes
                .feed(topic, partition, |queue| started.push((partition, queue)))
                .offer(message_of(topic, partition, offset));
            assert_eq!(offered, Ok(Offered::Queued));
        }
        let mut queued = |partition: i32| -> Vec<(String, i64)> {
            let (_, queue) = started.iter_mut().find(|(p, _)| *p == partition).unwrap();
            std::iter::from_fn(|| queue.try_recv().ok())
                .map(|m| (m.topic().to_string(), m.offset()))
                .collect()
        };
        let lane_3 = queued(3);
        let lane_1 = queued(1);
        assert_eq!(started.len(), 2, "one lane per partition number");
        assert_eq!(
            lane_3,
            [
                ("orders.events".to_string(), 10),
                ("inventory.events".to_string(), 7),
                ("orders.events".to_string(), 11),
                ("payment.events".to_string(), 2)
            ]
        );
        assert_eq!(lane_1, [("orders.events".to_string(), 4)]);
        assert_eq!(
            lanes.feeds.len(),
            4,
            "a feed (pause, overflow) per topic-partition"
        );
    }

    #[test]
    fn feeds_of_one_lane_take_turns_when_their_overflows_drain() {
        let mut lanes = Lanes::new(1);
        let mut queue = None;
        for (topic, offsets) in [("orders.events", 0..4), ("payment.events", 0..4)] {
            for offset in offsets {
                lanes
                    .feed(topic, 3, |q| queue = Some(q))
                    .offer(message_of(topic, 3, offset))
                    .unwrap();
            }
        }
        let mut queue = queue.expect("one lane");
        // The lane takes one message at a time; the fetch loop drains after each.
        let mut taken = Vec::new();
        while let Ok(raw) = queue.try_recv() {
            taken.push((raw.topic().to_string(), raw.offset()));
            lanes.drain_overflows().unwrap();
        }
        assert_eq!(taken.len(), 8, "everything arrives: {taken:?}");
        let at = |topic: &str, offset: i64| {
            taken
                .iter()
                .position(|(t, o)| t == topic && *o == offset)
                .unwrap()
        };
        assert!(
            at("payment.events", 0) < at("orders.events", 3),
            "the second feed is not starved until the first one's overflow is gone: {taken:?}"
        );
        for topic in ["orders.events", "payment.events"] {
            let offsets: Vec<i64> = taken
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, o)| *o)
                .collect();
            assert_eq!(offsets, [0, 1, 2, 3], "{topic} in offset order");
        }
    }

    #[test]
    fn a_batch_of_several_topics_stores_each_topic_partitions_last_offset() {
        let batch = [
            message_of("orders.events", 3, 10),
            message_of("inventory.events", 3, 7),
            message_of("orders.events", 3, 11),
            message_of("payment.events", 3, 2),
            message_of("inventory.events", 3, 8),
        ];
        let stored: Vec<(&str, i64)> = last_of_each_partition(&batch)
            .into_iter()
            .map(|raw| (raw.topic(), raw.offset()))
            .collect();
        assert_eq!(
            stored,
            [
                ("orders.events", 11),
                ("payment.events", 2),
                ("inventory.events", 8)
            ]
        );
    }

    #[test]
    fn a_dependency_refusing_calls_delays_the_next_attempt_until_it_takes_them_again() {
        let backoff = Duration::from_millis(50);
        let unavailable = |retry_after| HandlerError::Unavailable {
            error: anyhow::anyhow!("circuit open"),
            retry_after,
        };
        assert_eq!(
            unavailable(Duration::from_millis(800)).retry_delay(backoff),
            Duration::from_millis(800),
            "not asked again before it takes calls"
        );
        assert_eq!(
            unavailable(Duration::from_millis(10)).retry_delay(backoff),
            backoff,
            "never sooner than the backoff"
        );
        assert_eq!(
            unavailable(Duration::from_secs(3600)).retry_delay(backoff),
            MAX_RETRY_AFTER,
            "a wrong hint does not park the partition for an hour"
        );
        let failed = HandlerError::Failed(anyhow::anyhow!("boom"));
        assert_eq!(failed.retry_delay(backoff), backoff);
        assert!(
            !unavailable(Duration::ZERO).transient(),
            "it counts as an attempt"
        );
    }

    /// A message whose envelope says `message_type` and whose payload is not Avro at all.
    fn undecodable(message_type: &str) -> OwnedMessage {
        let envelope = Envelope::new(
            message_type,
            "test",
            uuid::Uuid::now_v7(),
            None,
            "sagaflow.OrderPlaced.v1".into(),
        );
        let pairs = envelope.to_headers();
        let headers = kafka::to_headers(pairs.iter().map(|(k, v)| (*k, v.as_str())));
        OwnedMessage::new(
            Some(vec![0xff; 3]),
            None,
            "orders.events".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(headers),
        )
    }

    #[test]
    fn a_type_the_consumer_does_not_handle_is_skipped_without_decoding() {
        let only_placed = |kind| kind == MessageType::OrderPlaced;
        assert!(matches!(
            parse(&undecodable("OrderApproved"), only_placed),
            Err(Unreadable::NotOurs)
        ));
        // The type it handles is decoded, and a payload that is not Avro is poison…
        assert!(matches!(
            parse(&undecodable("OrderPlaced"), only_placed),
            Err(Unreadable::Poison { .. })
        ));
        // …and so is a type no one knows.
        assert!(matches!(
            parse(&undecodable("NoSuchMessage"), only_placed),
            Err(Unreadable::Poison { .. })
        ));
    }

    fn offsets(queue: &mut mpsc::Receiver<OwnedMessage>) -> Vec<i64> {
        std::iter::from_fn(|| queue.try_recv().ok())
            .map(|m| m.offset())
            .collect()
    }

    #[test]
    fn a_full_lane_overflows_in_order_and_asks_for_a_pause() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut feed = LaneFeed::new(tx);
        assert_eq!(feed.offer(message(10)), Ok(Offered::Queued));
        assert_eq!(feed.offer(message(11)), Ok(Offered::Queued));
        let paused = Offered::Overflowed {
            topic: "orders.events".into(),
            partition: 3,
        };
        assert_eq!(feed.offer(message(12)), Ok(paused));
        assert!(feed.has_overflow());
        // Behind an overflow everything queues up, even when the lane has room again.
        assert_eq!(offsets(&mut rx), vec![10, 11]);
        assert!(matches!(
            feed.offer(message(13)),
            Ok(Offered::Overflowed { .. })
        ));
        assert_eq!(feed.drain(), Ok(Some(("orders.events".into(), 3))));
        assert!(!feed.has_overflow());
        assert_eq!(offsets(&mut rx), vec![12, 13]);
    }

    #[test]
    fn a_drain_stops_where_the_lane_is_full_again() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut feed = LaneFeed::new(tx);
        for offset in 0..4 {
            feed.offer(message(offset)).unwrap();
        }
        assert_eq!(offsets(&mut rx), vec![0]);
        assert_eq!(feed.drain(), Ok(None), "only one fits: still paused");
        assert_eq!(offsets(&mut rx), vec![1]);
        assert_eq!(feed.drain(), Ok(None));
        assert_eq!(offsets(&mut rx), vec![2]);
        assert_eq!(feed.drain(), Ok(Some(("orders.events".into(), 3))));
        assert_eq!(offsets(&mut rx), vec![3]);
    }

    #[test]
    fn a_refetch_of_what_the_lane_already_has_is_dropped() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut feed = LaneFeed::new(tx);
        for offset in [5, 6, 7, 6, 7, 8] {
            feed.offer(message(offset)).unwrap();
        }
        assert_eq!(offsets(&mut rx), vec![5, 6, 7, 8]);
    }

    #[test]
    fn batch_locks_are_taken_sorted_and_once_whatever_the_message_order() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let one = lock_order(names(&["order-b", "sku:7", "order-a", "sku:7"]).into_iter());
        let other = lock_order(names(&["sku:7", "order-a", "order-b"]).into_iter());
        assert_eq!(
            one, other,
            "two lanes holding the same names lock in the same order"
        );
        assert_eq!(one.len(), 3);
        assert!(one.windows(2).all(|w| w[0] < w[1]));
        // Stable across processes: a replica built elsewhere must lock the same key.
        assert_eq!(lock_key("order-a"), lock_key("order-a"));
        assert_ne!(lock_key("order-a"), lock_key("order-b"));
    }

    #[test]
    fn the_same_message_id_twice_in_a_batch_is_new_only_the_first_time() {
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        assert_eq!(
            first_occurrences([a, b, a, b, a].into_iter()),
            vec![true, true, false, false, false]
        );
    }

    #[test]
    fn a_closed_lane_is_reported() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut feed = LaneFeed::new(tx);
        assert_eq!(feed.offer(message(0)), Err(Closed));
    }
}
