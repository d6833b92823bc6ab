//! The relay loop: claim pending heads, publish, mark after the ack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::kafka;
use sqlx::postgres::PgListener;
use sqlx::{FromRow, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A sweep of full passes (each resuming after the previous one's claims) starts over from
/// the lowest pending id at least this often: a row committed late, with an id below the
/// sweep's position, is published within about this bound even while every pass is full.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// How often [`watch_backlog`] measures the outbox.
pub const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// Measure `database`'s outbox into the gauges `outbox_backlog`, `outbox_parked_rows` and
/// `outbox_oldest_unpublished_seconds` (label `database`).
pub async fn record_backlog(pool: &PgPool, database: &str) -> Result<(), sqlx::Error> {
    let (count, oldest, parked): (i64, Option<f64>, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE parked_at IS NULL),
                EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL))::float8,
                count(*) FILTER (WHERE parked_at IS NOT NULL)
           FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    let label = database.to_string();
    metrics::gauge!("outbox_backlog", "database" => label.clone()).set(count as f64);
    // Each parked row holds back its key: alert on this above zero.
    metrics::gauge!("outbox_parked_rows", "database" => label.clone()).set(parked as f64);
    metrics::gauge!("outbox_oldest_unpublished_seconds", "database" => label)
        .set(oldest.unwrap_or(0.0));
    Ok(())
}

/// [`record_backlog`] every [`BACKLOG_EVERY`] until `shutdown`. Run by the components that
/// write to an outbox, beside the relay's own measurement: the backlog must keep being
/// measured when the relay is dead or stuck in a publish — exactly when it grows.
pub async fn watch_backlog(pool: PgPool, database: String, shutdown: CancellationToken) {
    sagaflow_runtime::periodic::every(BACKLOG_EVERY, shutdown, || async {
        if let Err(e) = record_backlog(&pool, &database).await {
            debug!(database, error = %e, "backlog query failed");
        }
    })
    .await
}

/// How often the relay's housekeeping looks whether the outbox's planner statistics are
/// stale (see [`refresh_planner_stats`]).
pub const STATS_CHECK_EVERY: Duration = Duration::from_secs(2);

/// How often the relay's housekeeping deletes published rows past retention.
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Consecutive failed passes after which the relay replaces its producer (see
/// [`Relay::run`]): a pass fails only after its sends waited `message.timeout.ms`.
pub const RENEW_PRODUCER_AFTER: u32 = 2;

/// Published rows deleted per statement by [`Relay::delete_expired`].
pub const RETENTION_BATCH: i64 = 5_000;

/// After a relay registered as asleep and found nothing, it looks once more after this long
/// (unless a notification comes first): a writer whose insert ran just before the
/// registration became visible, and whose commit landed just after the re-check, did not
/// notify. Its row waits at most about this long instead of a whole `poll_interval`.
pub const ASLEEP_RECHECK: Duration = Duration::from_millis(10);

/// A relay that found rows on this many passes in a row deregisters as asleep: it is busy,
/// claims again as soon as a pass ends, and writers' notifications would only cost them group
/// commit. Fewer busy passes than this — a trickle, where each wake-up finds a row or two — keep
/// the registration: deregistering and registering again around every row cost two statements
/// per row (measured: 5 of the ~150 statements per saga at 40 sagas/s).
pub const DEREGISTER_AFTER_BUSY_PASSES: u32 = 3;

/// Tunables of one relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// A label for metrics and logs: the database this relay drains (e.g. `order`).
    pub name: String,
    /// Heads claimed per pass.
    pub batch_size: i64,
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
    /// How long a publish may wait for the broker before the pass gives up (rows stay pending).
    pub send_timeout: Duration,
    /// A row refused for a configuration error (topic missing, not authorised, invalid name)
    /// is tried again after this, doubled for each earlier attempt of the row …
    pub retry_backoff: Duration,
    /// … up to this.
    pub retry_backoff_max: Duration,
}

/// Heads claimed per pass, unless configured (`OUTBOX_BATCH_SIZE` of the binaries). Measured
/// (docs/benchmarks.md): 2 000 drains a backlog ~3x faster than 500 (fewer passes, fewer
/// broker round trips); at a steady rate passes are small whatever the cap, so latency does
/// not change.
pub const DEFAULT_BATCH_SIZE: i64 = 2000;

impl RelayConfig {
    pub fn new(name: impl Into<String>) -> Self {
        RelayConfig {
            name: name.into(),
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: Duration::from_millis(500),
            retention: Duration::from_secs(24 * 3600),
            send_timeout: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
        }
    }
}

/// Fault injection for tests: runs after the broker acked a pass and before the marks commit.
/// An error aborts the pass (rows stay pending and are republished).
#[derive(Clone, Default)]
pub struct RelayHooks {
    #[allow(clippy::type_complexity)]
    pub after_ack: Option<Arc<dyn Fn() -> anyhow::Result<()> + Send + Sync>>,
}

/// One relay over one database.
pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    kafka: KafkaConfig,
    config: RelayConfig,
    hooks: RelayHooks,
    /// Set when a send failed in a way only a new producer recovers from.
    producer_poisoned: std::sync::atomic::AtomicBool,
    /// Lowest id the next pass looks at (0: all pending rows).
    resume_from: std::sync::atomic::AtomicI64,
    /// When the current sweep (the run of passes since the last one from 0) started, in ms
    /// since `created`.
    sweep_started_ms: std::sync::atomic::AtomicU64,
    created: Instant,
    /// This relay's row in `outbox_relay_sleepers` while it is asleep.
    id: uuid::Uuid,
}

#[derive(FromRow)]
struct Pending {
    id: i64,
    topic: String,
    msg_key: String,
    payload: Vec<u8>,
    headers: serde_json::Value,
    created_at: DateTime<Utc>,
}

/// The heads of keys, from id $2 on: rows with no earlier unpublished row of the same key —
/// parked or waiting for its `retry_at` included, so a key never moves past a row it has not
/// published — that are neither parked nor waiting for their `retry_at`.
const CLAIM_HEADS: &str = "
    SELECT id, topic, msg_key, payload, headers, created_at
      FROM outbox o
     WHERE published_at IS NULL AND parked_at IS NULL AND id >= $2
       AND (retry_at IS NULL OR retry_at <= now())
       AND NOT EXISTS (SELECT 1 FROM outbox e
                        WHERE e.msg_key = o.msg_key AND e.id < o.id
                          AND e.published_at IS NULL)
     ORDER BY id
     LIMIT $1
       FOR UPDATE SKIP LOCKED";

/// A parked row: it can never be published as it is, and it holds back the later rows of its
/// key until an operator hands it back with [`retry_parked`].
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct ParkedRow {
    pub id: i64,
    pub message_id: uuid::Uuid,
    pub msg_key: String,
    pub message_type: String,
    /// The logical topic (the relay adds its prefix).
    pub topic: String,
    pub attempts: i32,
    pub parked_at: DateTime<Utc>,
    pub parked_reason: Option<String>,
    /// Later unpublished rows of the same key, held back by this one.
    pub held_back: i64,
}

/// The parked rows of one outbox database, oldest first.
pub async fn parked_rows(pool: &PgPool) -> Result<Vec<ParkedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, message_id, msg_key, message_type, topic, attempts, parked_at, parked_reason,
                (SELECT count(*) FROM outbox e
                  WHERE e.msg_key = o.msg_key AND e.id > o.id AND e.published_at IS NULL) AS held_back
           FROM outbox o
          WHERE published_at IS NULL AND parked_at IS NOT NULL
          ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// Which parked rows to hand back to the relay.
#[derive(Debug, Clone, Copy)]
pub enum Unpark<'a> {
    All,
    Ids(&'a [i64]),
}

/// Hand parked rows back to the relay (clears `parked_at`, `parked_reason` and `retry_at`;
/// `attempts` and `last_error` stay as history) and wake the relays. Each is published again
/// in its key's order: it is still the head of its key. Returns the ids un-parked; asking for
/// an id that is not parked is an error, and then nothing changes.
pub async fn retry_parked(pool: &PgPool, which: Unpark<'_>) -> anyhow::Result<Vec<i64>> {
    let mut tx = pool.begin().await?;
    let (all, ids): (bool, &[i64]) = match which {
        Unpark::All => (true, &[]),
        Unpark::Ids(ids) => (false, ids),
    };
    let mut unparked: Vec<i64> = sqlx::query_scalar(
        "UPDATE outbox SET parked_at = NULL, parked_reason = NULL, retry_at = NULL
          WHERE published_at IS NULL AND parked_at IS NOT NULL AND ($1 OR id = ANY($2))
         RETURNING id",
    )
    .bind(all)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    unparked.sort_unstable();
    if let Some(missing) = ids.iter().find(|id| unparked.binary_search(id).is_err()) {
        anyhow::bail!("outbox row {missing} is not parked (no such row, published, or pending)");
    }
    if !unparked.is_empty() {
        // Relays wake on this as on a new row (notifications are delivered at commit).
        sqlx::query("SELECT pg_notify('sagaflow_outbox', '')")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(unparked)
}

impl Relay {
    pub fn new(
        pool: PgPool,
        producer: FutureProducer,
        kafka: KafkaConfig,
        config: RelayConfig,
    ) -> Self {
        Relay {
            pool,
            producer,
            kafka,
            config,
            hooks: RelayHooks::default(),
            producer_poisoned: Default::default(),
            resume_from: Default::default(),
            sweep_started_ms: Default::default(),
            created: Instant::now(),
            id: uuid::Uuid::new_v4(),
        }
    }

    pub fn with_hooks(mut self, hooks: RelayHooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// One pass: claim up to `batch_size` heads, publish them, mark the acknowledged ones —
    /// in one transaction that holds the claimed rows' locks across the sends, so no other
    /// replica publishes them meanwhile, and that commits the marks only after the broker's
    /// acks. Returns how many rows were claimed.
    pub async fn publish_once(&self) -> anyhow::Result<usize> {
        let (from, sweep_age) = self.sweep_position();
        let pass_started = Instant::now();
        let pass_started_at = Utc::now();
        // The relay's own bookkeeping commits asynchronously (no wait for the WAL flush): the
        // marks come after the broker's ack, so a mark lost to a database crash only
        // republishes its rows — at least once, as ever; consumers apply each message once
        // through their inbox. One round trip for both statements.
        let mut tx = self
            .pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit TO OFF")
            .await?;
        let rows: Vec<Pending> = sqlx::query_as(CLAIM_HEADS)
            .bind(self.config.batch_size)
            .bind(from)
            .fetch_all(&mut *tx)
            .await?;
        self.advance_sweep(&rows, sweep_age);
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let claimed = pass_started.elapsed();
        let results = self.send(&rows).await;
        let acked_at = Utc::now();
        let sent = pass_started.elapsed();

        self.record_publish_latency(
            rows.iter()
                .zip(&results)
                .filter(|(_, result)| result.is_ok())
                .map(|(row, _)| row),
            acked_at,
        );
        let outcome = PassOutcome::sort(
            rows.iter()
                .zip(results)
                .map(|(row, result)| (row.id, result.map(|_| ()).map_err(|(error, _)| error))),
        );
        if outcome.poisons_producer {
            self.producer_poisoned
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(hook) = &self.hooks.after_ack {
            hook()?; // dropping `tx` rolls back: the rows stay pending
        }
        self.warn_of_refusals(&outcome);
        mark(&mut tx, &outcome, acked_at, &self.config).await?;
        tx.commit().await?;

        let phases = PassPhases {
            waited: rows
                .iter()
                .map(|r| pass_started_at - r.created_at)
                .max()
                .and_then(|w| w.to_std().ok())
                .unwrap_or_default(),
            claimed,
            sent,
            done: pass_started.elapsed(),
        };
        self.record_pass(rows.len(), &phases, &outcome);
        if let Some((_, error)) = outcome.failed.first() {
            anyhow::bail!(
                "{} of {} rows not acknowledged: {error}",
                outcome.failed.len(),
                rows.len()
            );
        }
        Ok(rows.len())
    }

    /// Where this pass's claim starts, and how old the current sweep is. While a backlog
    /// drains (full batches), each pass starts after the previous one's claims instead of
    /// walking again through the index entries of rows just published.
    fn sweep_position(&self) -> (i64, Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let from = self.resume_from.load(Relaxed);
        let now_ms = self.created.elapsed().as_millis() as u64;
        if from == 0 {
            self.sweep_started_ms.store(now_ms, Relaxed);
        }
        let sweep_age =
            Duration::from_millis(now_ms.saturating_sub(self.sweep_started_ms.load(Relaxed)));
        (from, sweep_age)
    }

    /// After a claim: a full pass lets the next one resume after it. Any pass that is not full
    /// starts the next from 0 again, so rows skipped meanwhile (a late commit, a row locked by
    /// another replica) are found as soon as the backlog is gone — and under a load that keeps
    /// every pass full, a sweep older than [`RESCAN_EVERY`] starts over too, so such a row
    /// waits at most about that long, not until the load stops.
    fn advance_sweep(&self, claimed: &[Pending], sweep_age: Duration) {
        let full = claimed.len() as i64 >= self.config.batch_size;
        let next = if full && sweep_age < RESCAN_EVERY {
            claimed.last().map_or(0, |r| r.id + 1)
        } else {
            0
        };
        self.resume_from
            .store(next, std::sync::atomic::Ordering::Relaxed);
    }

    /// Send every claimed row and wait for each one's ack or error. `join_all` polls the sends
    /// in order, so they are enqueued in id order: a key's rows reach its partition in order.
    async fn send(
        &self,
        rows: &[Pending],
    ) -> Vec<rdkafka::producer::future_producer::OwnedDeliveryResult> {
        let topics: Vec<String> = rows.iter().map(|r| self.kafka.topic(&r.topic)).collect();
        let header_pairs: Vec<Vec<(String, String)>> =
            rows.iter().map(|r| headers_of(&r.headers)).collect();
        let sends = rows
            .iter()
            .zip(&topics)
            .zip(&header_pairs)
            .map(|((row, topic), pairs)| {
                let record = FutureRecord::to(topic)
                    .key(row.msg_key.as_bytes())
                    .payload(row.payload.as_slice())
                    .headers(kafka::to_headers(
                        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    ));
                self.producer.send(record, self.config.send_timeout)
            });
        join_all(sends).await
    }

    /// `outbox_publish_latency_seconds`: from each acknowledged row's insert to its ack.
    fn record_publish_latency<'a>(
        &self,
        acknowledged: impl Iterator<Item = &'a Pending>,
        acked_at: DateTime<Utc>,
    ) {
        // One handle per pass: a label built per row was an allocation per message.
        let histogram = metrics::histogram!("outbox_publish_latency_seconds", "database" => self.config.name.clone());
        for row in acknowledged {
            let latency = (acked_at - row.created_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
            histogram.record(latency.max(0.0));
        }
    }

    fn warn_of_refusals(&self, outcome: &PassOutcome) {
        for (id, reason) in &outcome.parked {
            warn!(relay = %self.config.name, id, %reason, "parking outbox row that cannot be published; it holds back the later rows of its key until `sagaflow outbox retry`");
        }
        if let Some((_, error)) = outcome.deferred.first() {
            warn!(relay = %self.config.name, rows = outcome.deferred.len(), %error, "the broker refused rows for a configuration error (topic missing, not authorised, invalid name); retrying each with backoff");
        }
    }

    /// A pass's phases (`outbox_pass_phase_seconds{phase}` and a debug line) and its counts.
    fn record_pass(&self, rows: usize, phases: &PassPhases, outcome: &PassOutcome) {
        let name = &self.config.name;
        for (phase, seconds) in phases.seconds() {
            metrics::histogram!("outbox_pass_phase_seconds", "database" => name.clone(), "phase" => phase)
                .record(seconds);
        }
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        debug!(relay = %name, rows, wait_ms = ms(phases.waited), claim_ms = ms(phases.claimed), send_ms = ms(phases.sent - phases.claimed), mark_ms = ms(phases.done - phases.sent), "relay pass");
        for (counter, n) in [
            ("outbox_published_total", outcome.published.len()),
            ("outbox_parked_total", outcome.parked.len()),
            ("outbox_configuration_errors_total", outcome.deferred.len()),
            ("outbox_publish_failures_total", outcome.failed.len()),
        ] {
            metrics::counter!(counter, "database" => name.clone()).increment(n as u64);
        }
    }

    /// Whether any row is waiting to be claimed: one read-only statement, no transaction. A
    /// pass that is likely to find nothing (the previous one was not full, and no writer woke
    /// the relay) looks first, instead of opening a claim transaction for nothing (three
    /// statements). It may say yes when the claim then finds nothing (a row locked by another
    /// replica, or behind an unpublished row of its key): that costs one empty pass, as before.
    pub async fn anything_pending(&self) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM outbox
                             WHERE published_at IS NULL AND parked_at IS NULL
                               AND (retry_at IS NULL OR retry_at <= now()))",
        )
        .fetch_one(&self.pool)
        .await
    }

    /// [`Relay::publish_once`] if [`Relay::anything_pending`] says so.
    async fn publish_if_pending(&self) -> anyhow::Result<usize> {
        if self.anything_pending().await? {
            self.publish_once().await
        } else {
            Ok(0)
        }
    }

    /// Analyze the outbox if the planner's statistics are stale ([`refresh_planner_stats`]).
    /// [`Relay::run`] does it before its first pass and then beside its passes; a caller that
    /// runs passes itself ([`Relay::publish_once`]) on a backlog written meanwhile does it first.
    pub async fn refresh_planner_stats(&self) {
        refresh_planner_stats(&self.pool, &self.config.name).await;
    }

    /// Publish until nothing is pending (tests and tools; the service uses [`Relay::run`]).
    pub async fn drain(&self) -> anyhow::Result<usize> {
        self.refresh_planner_stats().await;
        let mut total = 0;
        loop {
            let n = self.publish_once().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Run until `shutdown`: publish while there is work; when a pass finds nothing, sleep
    /// until a NOTIFY (writers send one only while a relay is registered as asleep — see
    /// `migrations/messaging/0008_outbox_relay_sleepers.sql`; it deregisters only after
    /// [`DEREGISTER_AFTER_BUSY_PASSES`] busy passes in a row) or the fallback poll. A pass that
    /// is likely to find nothing looks first ([`Relay::anything_pending`]). Back off
    /// on errors. Its housekeeping (retention, planner statistics, backlog gauges) runs beside
    /// the passes, never between them.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        info!(relay = %self.config.name, "outbox relay started");
        // Before the first pass: a relay may start on a backlog the planner does not know of.
        self.refresh_planner_stats().await;
        let housekeeping = Housekeeping {
            pool: self.pool.clone(),
            name: self.config.name.clone(),
            retention: self.config.retention,
        };
        let name = self.config.name.clone();
        tokio::join!(
            housekeeping.run(shutdown.clone()),
            self.publish_until(shutdown)
        );
        info!(relay = %name, "outbox relay stopped");
        Ok(())
    }

    /// The passes of [`Relay::run`], until `shutdown`.
    async fn publish_until(mut self, shutdown: CancellationToken) {
        let mut listener = self.listen().await;
        let mut failures = 0u32;
        let mut asleep = false;
        // Look before claiming (see `anything_pending`): after a pass that was not full,
        // unless a writer's notification says a row is there.
        let mut look_first = false;
        let mut busy_passes = 0u32;
        while !shutdown.is_cancelled() {
            // Whatever a writer committed before this point, the pass below sees: the
            // notifications already received would only cause empty passes after it (46 % of
            // one relay's claims found nothing at 60 sagas/s, docs/benchmarks.md).
            discard_received(&mut listener).await;
            let pass = if look_first {
                self.publish_if_pending().await
            } else {
                self.publish_once().await
            };
            let wait = match pass {
                Ok(n) => {
                    failures = 0;
                    look_first = (n as i64) < self.config.batch_size;
                    if n > 0 {
                        // A short pass may have freed new heads of the same keys: claim again
                        // at once. Busy for a while: writers need not wake us any more.
                        busy_passes += 1;
                        if busy_passes >= DEREGISTER_AFTER_BUSY_PASSES {
                            self.wake_up(&mut asleep).await;
                        }
                        continue;
                    }
                    busy_passes = 0;
                    if asleep {
                        self.config.poll_interval
                    } else {
                        // Register, then look once more: a row committed before the
                        // registration was visible did not notify.
                        self.fall_asleep(&mut asleep).await;
                        ASLEEP_RECHECK
                    }
                }
                Err(error) => {
                    look_first = false;
                    busy_passes = 0;
                    failures += 1;
                    warn!(relay = %self.config.name, %error, failures, "relay pass failed; backing off");
                    if failures >= RENEW_PRODUCER_AFTER {
                        // Seen in CI: after the broker was frozen for 20 s, the producer's
                        // every send timed out for 90 s while a fresh client read from the
                        // same broker at once (its metadata held leader -1 and was never
                        // refreshed). A new producer (new connections, metadata and producer
                        // id) resends the unmarked rows; duplicates are deduplicated by the
                        // consumers' inbox, as after any republish.
                        self.producer_poisoned
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.renew_producer_if_fatal();
                    Duration::from_millis(100 * 2u64.pow(failures.min(5)))
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                notified = recv(&mut listener) => {
                    // A writer committed a row: claim without looking first.
                    look_first = false;
                    if !notified {
                        tokio::time::sleep(wait).await;
                        listener = self.listen().await;
                    }
                }
            }
        }
        self.wake_up(&mut asleep).await;
    }

    /// From now on writers notify. Best effort: without the registration this relay still
    /// polls every `poll_interval`.
    async fn fall_asleep(&self, asleep: &mut bool) {
        let registered = sqlx::query(
            "INSERT INTO outbox_relay_sleepers (relay_id) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(self.id)
        .execute(&self.pool)
        .await;
        match registered {
            Ok(_) => *asleep = true,
            Err(e) => debug!(relay = %self.config.name, error = %e, "could not register as asleep"),
        }
    }

    /// Writers may stop notifying (for this relay). A failed deregistration only leaves them
    /// notifying; it is tried again after the next pass.
    async fn wake_up(&self, asleep: &mut bool) {
        if !*asleep {
            return;
        }
        let deregistered = sqlx::query("DELETE FROM outbox_relay_sleepers WHERE relay_id = $1")
            .bind(self.id)
            .execute(&self.pool)
            .await;
        match deregistered {
            Ok(_) => *asleep = false,
            Err(e) => debug!(relay = %self.config.name, error = %e, "could not deregister"),
        }
    }

    /// An idempotent producer whose in-flight sends timed out (broker unreachable longer than
    /// `message.timeout.ms`) can be fenced or enter a fatal state in which every send fails.
    /// Nothing was marked published, so a fresh producer (new producer id) simply resends the
    /// pending rows.
    fn renew_producer_if_fatal(&mut self) {
        use rdkafka::producer::Producer;
        let fatal = self.producer.client().fatal_error();
        let poisoned = self
            .producer_poisoned
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if fatal.is_some() || poisoned {
            warn!(relay = %self.config.name, ?fatal, "producer fenced or fatal; creating a new one");
            match kafka::producer(&self.kafka) {
                Ok(producer) => self.producer = producer,
                Err(error) => {
                    warn!(relay = %self.config.name, %error, "could not create a producer")
                }
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen("sagaflow_outbox").await.ok()?;
        Some(listener)
    }

    /// One retention round of this relay's outbox ([`delete_expired`]).
    pub async fn delete_expired(&self) -> Result<u64, sqlx::Error> {
        delete_expired(&self.pool, &self.config.name, self.config.retention).await
    }
}

/// A relay's housekeeping: the backlog gauges every [`BACKLOG_EVERY`], the planner statistics
/// every [`STATS_CHECK_EVERY`], retention every [`RETENTION_EVERY`] — each on its own period
/// and its own pooled connection, beside the relay's passes. Run between passes, they stalled
/// publishing for as long as they took: an `ANALYZE` of the outbox held every row committed
/// meanwhile for 160 ms in a `sagaflow bench` run (docs/benchmarks.md), and a retention round
/// deletes in batches of [`RETENTION_BATCH`] for as long as rows are past retention.
struct Housekeeping {
    pool: PgPool,
    name: String,
    retention: Duration,
}

impl Housekeeping {
    async fn run(self, shutdown: CancellationToken) {
        let Housekeeping {
            pool,
            name,
            retention,
        } = &self;
        let backlog =
            sagaflow_runtime::periodic::every(BACKLOG_EVERY, shutdown.clone(), || async {
                if let Err(e) = record_backlog(pool, name).await {
                    debug!(relay = %name, error = %e, "backlog query failed");
                }
            });
        let stats = sagaflow_runtime::periodic::every(STATS_CHECK_EVERY, shutdown.clone(), || {
            refresh_planner_stats(pool, name)
        });
        let expired = sagaflow_runtime::periodic::every(RETENTION_EVERY, shutdown, || async {
            if let Err(e) = delete_expired(pool, name, *retention).await {
                debug!(relay = %name, error = %e, "retention cleanup failed");
            }
        });
        tokio::join!(backlog, stats, expired);
    }
}

/// A backlog that built up faster than autovacuum analyzes the table (a broker outage, a
/// burst) leaves the planner believing the outbox is nearly empty; it then picks a nested
/// loop for the head query that is quadratic in the backlog (measured: 4 s instead of 4 ms
/// per 500-row claim at 50 000 pending rows) — the drain slows down exactly when it matters.
/// The refresh runs only when the table changed by more than its size since the last analyze
/// (autovacuum analyzes at a tenth, so this is the case where it fell behind), and it is
/// cheap: what the planner lacks is the table's size and how much of it is pending, so it
/// samples 3 000 rows (statistics target 10), not 30 000 — 35 ms on a 230 MB outbox, against
/// 518 ms at the default target (docs/benchmarks.md), CPU the rest of the platform shares.
/// Autovacuum's next analyze refines them. Errors are logged: the next check tries again.
async fn refresh_planner_stats(pool: &PgPool, relay: &str) {
    let stale: Result<bool, sqlx::Error> = sqlx::query_scalar(
        "SELECT s.n_mod_since_analyze > 1000 AND s.n_mod_since_analyze > greatest(c.reltuples, 0)
           FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
          WHERE c.oid = 'outbox'::regclass",
    )
    .fetch_one(pool)
    .await;
    if let Ok(true) = stale {
        match analyze_outbox(pool).await {
            Ok(()) => debug!(relay, "outbox statistics refreshed"),
            Err(e) => debug!(relay, error = %e, "ANALYZE outbox failed"),
        }
    }
}

/// Every column, not only those the relay's queries filter on: PostgreSQL resets a table's
/// count of changes since its last analyze (`n_mod_since_analyze`, which the check above
/// reads) only when an `ANALYZE` covered every column. A column list left it as it was, so
/// the check stayed true and the outbox was analyzed again every [`STATS_CHECK_EVERY`] — 11
/// to 19 times per outbox in a 42 s bench run — until autovacuum's own analyze.
async fn analyze_outbox(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL default_statistics_target = 10")
        .execute(&mut *tx)
        .await?;
    sqlx::query("ANALYZE outbox").execute(&mut *tx).await?;
    tx.commit().await
}

/// One retention round: delete every published row past `retention`, in batches of
/// [`RETENTION_BATCH`] until none is left (a round keeps up with any write rate the relay can
/// publish; one statement per batch keeps each delete's locks and WAL burst short). Returns
/// how many rows went.
pub async fn delete_expired(
    pool: &PgPool,
    relay: &str,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    let retention_secs = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                    SELECT id FROM outbox WHERE published_at < now() - make_interval(secs => $1)
                    LIMIT $2)",
        )
        .bind(retention_secs)
        .bind(RETENTION_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        metrics::counter!("outbox_rows_deleted_total", "database" => relay.to_string())
            .increment(deleted);
        if deleted < RETENTION_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Drop the notifications that have already arrived, without waiting for any. Only called
/// right before a pass: each was sent by a writer's commit, which happened before the pass's
/// claim takes its snapshot, so the pass publishes those rows (or a later pass does, after
/// their key's earlier rows). A lost connection is left for [`recv`] to report.
async fn discard_received(listener: &mut Option<PgListener>) {
    if let Some(listener) = listener {
        // `recv` is cancel-safe; a zero timeout polls it once: ready only for a notification
        // already on the connection.
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::ZERO, listener.recv()).await {}
    }
}

/// Wait for a notification; false when there is no (working) listener.
async fn recv(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(l) => l.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// What the broker said about one pass's rows, sorted by what becomes of each row.
#[derive(Debug, Default)]
struct PassOutcome {
    /// Acknowledged: marked published.
    published: Vec<i64>,
    /// Can never be published as they are: parked with the reason.
    parked: Vec<(i64, String)>,
    /// Refused for a configuration error: each tried again after a backoff of its own.
    deferred: Vec<(i64, String)>,
    /// Not acknowledged (broker unreachable, timeouts): they stay pending and the pass fails.
    failed: Vec<(i64, String)>,
    /// One of the failures leaves the producer unusable: only a new one recovers.
    poisons_producer: bool,
}

impl PassOutcome {
    /// Sort `(row id, send result)` pairs, in the order given.
    fn sort(results: impl IntoIterator<Item = (i64, Result<(), KafkaError>)>) -> Self {
        let mut outcome = PassOutcome::default();
        for (id, result) in results {
            let Err(error) = result else {
                outcome.published.push(id);
                continue;
            };
            let entry = (id, error.to_string());
            match classify(&error) {
                Failure::Unpublishable => outcome.parked.push(entry),
                Failure::Configuration => outcome.deferred.push(entry),
                Failure::Transient => {
                    outcome.poisons_producer |= poisons_producer(&error);
                    outcome.failed.push(entry);
                }
            }
        }
        outcome
    }
}

/// Where a pass's time went: `waited` from its oldest row's insert to the pass's start (its
/// writer's commit, the relay's wake-up, a pass still running); then, from the pass's start,
/// until the claim returned, the last ack came and the marks committed.
struct PassPhases {
    waited: Duration,
    claimed: Duration,
    sent: Duration,
    done: Duration,
}

impl PassPhases {
    fn seconds(&self) -> [(&'static str, f64); 4] {
        [
            ("wait", self.waited.as_secs_f64()),
            ("claim", self.claimed.as_secs_f64()),
            ("send", (self.sent - self.claimed).as_secs_f64()),
            ("mark", (self.done - self.sent).as_secs_f64()),
        ]
    }
}

/// Write a pass's outcome into its claim transaction: acknowledged rows published at
/// `acked_at`; unpublishable ones parked; refused ones given their next attempt's time; failed
/// ones an attempt more. Nothing here is marked before the broker acknowledged it.
async fn mark(
    tx: &mut sqlx::PgConnection,
    outcome: &PassOutcome,
    acked_at: DateTime<Utc>,
    config: &RelayConfig,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox SET published_at = $2 WHERE id = ANY($1)")
        .bind(&outcome.published)
        .bind(acked_at)
        .execute(&mut *tx)
        .await?;
    if !outcome.parked.is_empty() {
        let (ids, errors): (Vec<i64>, Vec<String>) = outcome.parked.iter().cloned().unzip();
        sqlx::query(
            "UPDATE outbox o SET parked_at = now(), parked_reason = f.error, last_error = f.error,
                    retry_at = NULL, attempts = o.attempts + 1
               FROM unnest($1::bigint[], $2::text[]) AS f(id, error) WHERE o.id = f.id",
        )
        .bind(&ids)
        .bind(&errors)
        .execute(&mut *tx)
        .await?;
    }
    // Not before retry_backoff * 2^(earlier attempts), at most retry_backoff_max, from now
    // (clock_timestamp: `now()` is when this pass began, before the sends).
    if !outcome.deferred.is_empty() {
        let (ids, errors): (Vec<i64>, Vec<String>) = outcome.deferred.iter().cloned().unzip();
        sqlx::query(
            "UPDATE outbox o SET last_error = f.error, attempts = o.attempts + 1,
                    retry_at = clock_timestamp() + make_interval(secs =>
                        least($4, $3 * power(2, least(o.attempts, 30)::float8)))
               FROM unnest($1::bigint[], $2::text[]) AS f(id, error) WHERE o.id = f.id",
        )
        .bind(&ids)
        .bind(&errors)
        .bind(config.retry_backoff.as_secs_f64())
        .bind(config.retry_backoff_max.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    }
    for (id, error) in &outcome.failed {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1")
            .bind(id)
            .bind(error)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

fn headers_of(value: &serde_json::Value) -> Vec<(String, String)> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Errors after which the producer itself is unusable (its id or epoch was fenced).
fn poisons_producer(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::Fatal
        )
    )
}

/// What a failed send means for its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The row can never be published as it is (larger than the broker accepts, refused by
    /// the broker's record validation): it is parked, and holds back its key until an
    /// operator hands it back (`sagaflow outbox retry`).
    Unpublishable,
    /// A mistake in the deployment's configuration that an operator fixes (no ACL for the
    /// topic, the topic not created, an invalid topic name, a topic setting): the row is
    /// tried again after a backoff of its own, and the pass goes on with the other keys.
    Configuration,
    /// Anything else (broker unreachable, timeouts, leader changes): the row stays pending,
    /// the pass fails and the relay backs off.
    Transient,
}

fn classify(error: &KafkaError) -> Failure {
    use RDKafkaErrorCode as E;
    match error.rdkafka_error_code() {
        Some(E::MessageSizeTooLarge | E::InvalidMessageSize | E::InvalidRecord) => {
            Failure::Unpublishable
        }
        Some(
            E::TopicAuthorizationFailed
            | E::ClusterAuthorizationFailed
            | E::TransactionalIdAuthorizationFailed
            | E::Authentication
            | E::SaslAuthenticationFailed
            | E::InvalidTopic
            | E::UnknownTopic
            | E::UnknownTopicOrPartition
            | E::UnknownTopicId
            | E::UnknownPartition
            | E::PolicyViolation
            | E::InvalidRequiredAcks
            | E::UnsupportedForMessageFormat
            | E::UnsupportedCompressionType
            // A batch larger than the topic's segment.bytes: a topic setting (a single row is
            // already capped by the producer's message.max.bytes, far below any sane segment).
            | E::MessageBatchTooLarge,
        ) => Failure::Configuration,
        _ => Failure::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: RDKafkaErrorCode) -> Failure {
        classify(&KafkaError::MessageProduction(code))
    }

    #[test]
    fn a_pass_outcome_sorts_each_row_by_what_becomes_of_it_in_id_order() {
        let error = |code| Err(KafkaError::MessageProduction(code));
        let outcome = PassOutcome::sort([
            (1, Ok(())),
            (2, error(RDKafkaErrorCode::MessageSizeTooLarge)),
            (3, Ok(())),
            (4, error(RDKafkaErrorCode::UnknownTopicOrPartition)),
            (5, error(RDKafkaErrorCode::MessageTimedOut)),
            (6, Ok(())),
        ]);
        assert_eq!(outcome.published, [1, 3, 6]);
        let ids = |rows: &[(i64, String)]| rows.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        assert_eq!(ids(&outcome.parked), [2]);
        assert_eq!(ids(&outcome.deferred), [4]);
        assert_eq!(ids(&outcome.failed), [5]);
        assert!(
            outcome.failed[0].1.contains("timed out"),
            "{:?}",
            outcome.failed
        );
        assert!(!outcome.poisons_producer);

        let fenced = PassOutcome::sort([(7, error(RDKafkaErrorCode::ProducerFenced))]);
        assert_eq!(ids(&fenced.failed), [7]);
        assert!(
            fenced.poisons_producer,
            "a fenced producer must be replaced"
        );
    }

    #[test]
    fn only_rows_the_broker_can_never_accept_are_parked() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidMessageSize,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            assert_eq!(failure(code), Failure::Unpublishable, "{code:?}");
        }
    }

    #[test]
    fn configuration_errors_are_retried_with_backoff_not_parked() {
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
            RDKafkaErrorCode::InvalidTopic,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownPartition,
            RDKafkaErrorCode::PolicyViolation,
            RDKafkaErrorCode::MessageBatchTooLarge,
        ] {
            assert_eq!(failure(code), Failure::Configuration, "{code:?}");
        }
    }

    #[test]
    fn other_errors_are_transient() {
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::InvalidMessage,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert_eq!(failure(code), Failure::Transient, "{code:?}");
        }
        assert_eq!(
            classify(&KafkaError::Canceled),
            Failure::Transient,
            "no error code"
        );
    }
}
