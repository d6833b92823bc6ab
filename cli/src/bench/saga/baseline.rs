//! The ceilings the saga benchmark is compared with, measured in the same run before the
//! platform starts: the PostgreSQL commit rate of the POST /orders rows, and the raw produce
//! rate of the idempotent producer on the same broker.
//!
//! The commit baseline is the *physical* ceiling: the rows POST /orders writes (idempotency
//! key, order, outbox row) inserted in one transaction — three INSERTs sent as one
//! simple-protocol round trip, no BEGIN/COMMIT round trips, no prepared-statement overhead —
//! into copies of the tables with no trigger (so no NOTIFY, which serialises commits
//! cluster-wide), at 1, 4 and 8 connections, the best of the three. The rows are the real
//! ones (the bench order's request hash, its encoded OrderPlaced and envelope headers) with
//! fresh ids per transaction. The as-implemented figure (order-service's own POST /orders
//! statement, `order_service::store_batch` with one order per call, on our tables, trigger
//! included, `--connections`) is
//! reported beside it as `baseline_app_commit_per_s`: a ratio to our own implementation
//! would flatter whatever it costs.
//!
//! The ceiling's client is PostgreSQL's own `pgbench` (prepared statements, BEGIN … COMMIT,
//! C) when it is installed beside the server binaries: our in-process client shares the two
//! cores with the server and would lower the ceiling by its own overhead (measured: ~1.6–3.6
//! k tx/s in-process against ~4.1 k with pgbench on the same machine). Without pgbench the
//! in-process client measures it, and the report says which did (`settings.ceiling_client`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use order_service::{
    NewOrder, OrderConfig, OrderLine, Placed, Placement, order_placed, request_hash, store_batch,
    validate,
};
use rdkafka::producer::FutureRecord;
use sagaflow_runtime::auth::ANONYMOUS;
use sagaflow_runtime::{KafkaConfig, kafka, trace};
use sagaflow_schemas::Message;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use super::sku;

/// Connections the physical ceiling is measured at; the best counts.
const CEILING_CONNECTIONS: [u32; 3] = [1, 4, 8];
/// The schema of the trigger-less copies of the POST /orders tables.
const CEILING_SCHEMA: &str = "ceiling";
const CEILING_TABLES: [&str; 3] = ["idempotency_keys", "orders", "outbox"];

/// The commit baselines and the server settings they depend on.
pub(super) struct CommitBaseline {
    /// The physical ceiling: POST /orders rows committed per second, no trigger, no NOTIFY,
    /// the best of [`CEILING_CONNECTIONS`].
    pub per_s: f64,
    /// The connection count of the best ceiling run.
    pub connections: u32,
    /// What ran the ceiling's transactions: `pgbench` or `in-process`.
    pub ceiling_client: &'static str,
    /// The POST /orders transaction as implemented (outbox trigger and NOTIFY included), at
    /// the platform's connection count.
    pub app_per_s: f64,
    /// `synchronous_commit` of the server: `off` makes commits (and this baseline) far cheaper.
    pub synchronous_commit: String,
    pub fsync: String,
}

/// Both ceilings.
pub(super) struct Baselines {
    pub commit: CommitBaseline,
    /// Messages produced per second (acks=all) by one idempotent producer.
    pub produce_per_s: f64,
}

/// The order every benchmark request places (one line, the first SKU), for `customer_id`.
fn bench_order(customer_id: Uuid) -> NewOrder {
    NewOrder {
        customer_id,
        items: vec![OrderLine {
            sku: sku(0),
            quantity: 1,
            unit_price_cents: 1250,
        }],
        currency: "EUR".into(),
        payment_method: "pm_card_visa".into(),
    }
}

/// Both commit baselines on the scratch database at `url` (migrated here), `secs` each run:
/// the as-implemented transaction at `connections`, then the physical ceiling.
pub(super) async fn commit(
    url: &str,
    connections: u32,
    secs: f64,
) -> anyhow::Result<CommitBaseline> {
    let pool = sagaflow_runtime::db::connect(url, connections).await?;
    order_service::MIGRATOR.run(&pool).await?;
    let (synchronous_commit, fsync): (String, String) =
        sqlx::query_as("SELECT current_setting('synchronous_commit'), current_setting('fsync')")
            .fetch_one(&pool)
            .await?;
    let app_per_s = commit_loop(&pool, connections, secs).await?;
    create_ceiling_tables(&pool).await?;
    pool.close().await;

    let rows = CeilingRows::new()?;
    let ((per_s, best), ceiling_client) = match crate::dev::find_pg_bin()
        .map(|bin| bin.join("pgbench"))
        .filter(|pgbench| pgbench.exists())
    {
        Some(pgbench) => (
            pgbench_ceiling(&pgbench, url, &rows, secs).await?,
            "pgbench",
        ),
        None => (in_process_ceiling(url, rows, secs).await?, "in-process"),
    };
    empty_baseline_tables(url).await?;
    Ok(CommitBaseline {
        per_s,
        connections: best,
        ceiling_client,
        app_per_s,
        synchronous_commit,
        fsync,
    })
}

/// Empty the tables both baselines filled. Their hundreds of thousands of rows are no use
/// once counted, and left in place they are work for autovacuum minutes later — in the middle
/// of a step or of the measured run (seen: the ceiling's three tables vacuumed and analyzed
/// during a measured run, on the two cores the platform was being measured on). `TRUNCATE`
/// leaves no dead rows behind.
async fn empty_baseline_tables(url: &str) -> anyhow::Result<()> {
    use sqlx::Executor;
    let pool = sagaflow_runtime::db::connect(url, 1).await?;
    let tables: Vec<String> = CEILING_TABLES
        .iter()
        .flat_map(|table| {
            [
                format!("public.{table}"),
                format!("{CEILING_SCHEMA}.{table}"),
            ]
        })
        .collect();
    let truncate = format!("TRUNCATE {}", tables.join(", "));
    pool.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(truncate)))
        .await?;
    pool.close().await;
    Ok(())
}

/// Copies of the POST /orders tables with their columns, defaults, identities, constraints
/// and indexes, but no trigger (`LIKE` copies none) and no foreign key.
async fn create_ceiling_tables(pool: &PgPool) -> anyhow::Result<()> {
    use sqlx::Executor;
    let mut ddl = format!("CREATE SCHEMA IF NOT EXISTS {CEILING_SCHEMA};");
    for table in CEILING_TABLES {
        ddl.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {CEILING_SCHEMA}.{table} (LIKE public.{table} INCLUDING ALL);"
        ));
    }
    pool.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)))
        .await?;
    Ok(())
}

/// The ceiling with our client: the best of [`CEILING_CONNECTIONS`] (rate, connections).
async fn in_process_ceiling(url: &str, rows: CeilingRows, secs: f64) -> anyhow::Result<(f64, u32)> {
    let max = CEILING_CONNECTIONS.into_iter().max().unwrap_or(1);
    let ceiling = ceiling_pool(url, max).await?;
    let rows = Arc::new(rows);
    let mut best = (0.0, 1);
    for n in CEILING_CONNECTIONS {
        let rows = rows.clone();
        let rate = run_for(&ceiling, n, secs, move |pool| {
            let sql = rows.transaction();
            async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&pool)
                    .await?;
                anyhow::Ok(())
            }
        })
        .await?;
        if rate > best.0 {
            best = (rate, n);
        }
    }
    ceiling.close().await;
    Ok(best)
}

/// The ceiling with `pgbench`: the same three INSERTs as a custom script (fresh ids from
/// `gen_random_uuid()`), prepared, in BEGIN … COMMIT, at each of [`CEILING_CONNECTIONS`];
/// the best (rate, connections).
async fn pgbench_ceiling(
    pgbench: &std::path::Path,
    url: &str,
    rows: &CeilingRows,
    secs: f64,
) -> anyhow::Result<(f64, u32)> {
    let script = tempfile_with(&rows.pgbench_script())?;
    let mut best = (0.0, 1);
    for n in CEILING_CONNECTIONS {
        let output = tokio::process::Command::new(pgbench)
            .args(["-n", "-M", "prepared", "-j", "2"])
            .args([
                "-c",
                &n.to_string(),
                "-T",
                &(secs.ceil() as u64).max(1).to_string(),
            ])
            .arg("-f")
            .arg(script.path())
            .arg(url)
            .env("PGOPTIONS", format!("-c search_path={CEILING_SCHEMA}"))
            .kill_on_drop(true)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let tps = stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|tps| tps.parse::<f64>().ok());
        let Some(tps) = tps.filter(|_| output.status.success()) else {
            anyhow::bail!(
                "pgbench failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        };
        if tps > best.0 {
            best = (tps, n);
        }
    }
    Ok(best)
}

/// A named temporary file holding `text` (removed when dropped).
fn tempfile_with(text: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(text.as_bytes())?;
    file.flush()?;
    Ok(file)
}

/// A pool whose sessions resolve unqualified table names to the ceiling schema.
async fn ceiling_pool(url: &str, connections: u32) -> anyhow::Result<PgPool> {
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    let options = options.options([("search_path", CEILING_SCHEMA)]);
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await?)
}

/// The POST /orders rows of the ceiling, as one SQL text per transaction: the constant parts
/// (from the real request hash, encoded message and envelope) rendered once.
struct CeilingRows {
    request_hash: String,
    items: String,
    payload_hex: String,
    headers: String,
}

impl CeilingRows {
    fn new() -> anyhow::Result<Self> {
        let order = bench_order(Uuid::new_v4());
        let total_cents =
            validate(&order).map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
        let placed: Message = order_placed(
            Uuid::now_v7(),
            &order,
            total_cents,
            Utc::now().timestamp_millis(),
        )
        .into();
        let encoded = placed.encode()?;
        let envelope = sagaflow_schemas::Envelope::new(
            encoded.message_type,
            order_service::NAME,
            Uuid::now_v7(),
            None,
            encoded.schema_ref.clone(),
        );
        let headers: serde_json::Map<String, serde_json::Value> = envelope
            .to_headers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let literal = |text: String| text.replace('\'', "''");
        Ok(CeilingRows {
            request_hash: literal(request_hash(&order)?),
            items: literal(serde_json::to_string(&order.items)?),
            payload_hex: encoded.bytes.iter().map(|b| format!("{b:02x}")).collect(),
            headers: literal(serde_json::to_string(&headers)?),
        })
    }

    /// The pgbench script of one transaction: the same rows, ids from `gen_random_uuid()`.
    fn pgbench_script(&self) -> String {
        let id = "gen_random_uuid()";
        format!("BEGIN;\n{}\nCOMMIT;\n", self.inserts([id, id, id, id]))
    }

    /// One transaction's three INSERTs with fresh ids (one simple query: one implicit
    /// transaction, one commit).
    fn transaction(&self) -> String {
        let ids = [
            Uuid::now_v7(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::now_v7(),
        ]
        .map(|id| format!("'{id}'"));
        self.inserts(ids.each_ref().map(String::as_str))
    }

    /// The three INSERTs, the ids given as SQL expressions: order, idempotency key, customer,
    /// message.
    fn inserts(&self, [order_id, key, customer, message]: [&str; 4]) -> String {
        let CeilingRows {
            request_hash,
            items,
            payload_hex,
            headers,
        } = self;
        format!(
            "INSERT INTO idempotency_keys (principal, key, request_hash, order_id) VALUES ('{ANONYMOUS}', {key}::text, '{request_hash}', {order_id});
INSERT INTO orders (id, customer_id, status, items, total_cents, currency, payment_method) VALUES ({order_id}, {customer}, 'PENDING', '{items}', 1250, 'EUR', 'pm_card_visa');
INSERT INTO outbox (message_id, message_type, topic, msg_key, payload, headers) VALUES ({message}, 'OrderPlaced', 'orders.events', {order_id}::text, '\\x{payload_hex}', '{headers}');"
        )
    }
}

/// The POST /orders transaction as implemented, committed one after the other by
/// `connections` workers for `secs`; transactions per second.
async fn commit_loop(pool: &PgPool, connections: u32, secs: f64) -> anyhow::Result<f64> {
    run_for(pool, connections, secs, |pool| async move {
        order_transaction(&pool).await
    })
    .await
}

/// `transaction` run one after the other by each of `connections` workers for `secs`;
/// transactions per second.
async fn run_for<F, Fut>(
    pool: &PgPool,
    connections: u32,
    secs: f64,
    transaction: F,
) -> anyhow::Result<f64>
where
    F: Fn(PgPool) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut workers = JoinSet::new();
    for _ in 0..connections {
        let pool = pool.clone();
        let transaction = transaction.clone();
        workers.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                transaction(pool.clone()).await?;
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let mut total = 0;
    while let Some(joined) = workers.join_next().await {
        total += joined??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// One POST /orders transaction, as order-service's writers run it for a batch of one:
/// validate and hash the order, then claim a fresh Idempotency-Key (of the anonymous
/// principal: the benchmark's API is open), insert the order and its OrderPlaced, in one
/// statement that commits.
async fn order_transaction(pool: &PgPool) -> anyhow::Result<()> {
    let order = bench_order(Uuid::new_v4());
    let total_cents =
        validate(&order).map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
    let placement = Placement {
        principal: ANONYMOUS.to_string(),
        key: Uuid::new_v4().to_string(),
        request_hash: request_hash(&order)?,
        order,
        total_cents,
        traceparent: trace::child_of(None),
        span: tracing::Span::none(),
    };
    let placed = store_batch(
        pool,
        std::slice::from_ref(&placement),
        OrderConfig::default(),
    )
    .await?;
    anyhow::ensure!(
        matches!(placed[..], [Placed::Accepted(_)]),
        "a fresh Idempotency-Key was not accepted: {placed:?}"
    );
    Ok(())
}

/// The idempotent producer (acks=all) alone, sending `n` OrderPlaced-sized messages as fast
/// as it can; messages per second.
pub(super) async fn produce(config: &KafkaConfig, n: usize) -> anyhow::Result<f64> {
    let topic_name = "bench.produce-baseline";
    kafka::ensure_topics(config, &[topic_name]).await?;
    let producer = kafka::producer(config)?;
    let order = bench_order(Uuid::new_v4());
    let message: Message =
        order_placed(Uuid::now_v7(), &order, 1250, Utc::now().timestamp_millis()).into();
    let encoded = message.encode()?;
    let topic = config.topic(topic_name);
    let keys: Vec<String> = (0..n).map(|_| Uuid::now_v7().to_string()).collect();
    let started = Instant::now();
    let sends = keys.iter().map(|key| {
        let record = FutureRecord::to(&topic)
            .key(key.as_bytes())
            .payload(encoded.bytes.as_slice());
        producer.send(record, Duration::from_secs(30))
    });
    let results = futures::future::join_all(sends).await;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        results.iter().all(|r| r.is_ok()),
        "produce baseline sends failed"
    );
    Ok(n as f64 / secs)
}
