//! Read models: replay equals live, duplicates and reordering change nothing, poison events
//! are dead-lettered and redriven exactly once, a replay never silently drops history (a
//! truncated topic is refused, a differing view is not switched in without force).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use query_service::lag::Group;
use query_service::replay::{self, ReplayError, Start};
use query_service::{Projection, Rules};
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sagaflow_runtime::KafkaConfig;
use sagaflow_runtime::kafka as clients;
use sagaflow_schemas::{
    Envelope, Message, NotificationSent, OrderApproved, OrderItem, OrderPlaced, OrderRejected,
    PaymentAuthorized, PaymentDeclined, StockLine, StockReleased, StockReserved, header_names,
    topics,
};
use sagaflow_tests::platform::{Options, order_body, spawn_platform};
use sagaflow_tests::{broker_lock, database, kafka, wait};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(120);

async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn checksums(pool: &PgPool) -> (String, String) {
    (
        replay::checksum(pool, Projection::Orders).await.unwrap(),
        replay::checksum(pool, Projection::Stock).await.unwrap(),
    )
}

#[tokio::test]
async fn a_full_replay_rebuilds_the_same_views_while_the_live_ones_keep_answering() {
    let _broker = broker_lock().read().await;
    // Generous step deadlines: this is about the views, not about timeouts under load.
    let app = spawn_platform(Options {
        step_timeout: Duration::from_secs(60),
        ..Options::default()
    })
    .await;
    for sku in ["SKU-R1", "SKU-R2", "SKU-R3"] {
        app.set_stock(sku, 100_000).await;
    }
    app.set_stock("SKU-SCARCE", 0).await;
    let regular = Uuid::now_v7();

    // 300 mixed orders: approved, declined (stock released), out of stock; five for one
    // customer, to page through.
    let bodies: Vec<Value> = (0..300)
        .map(|i| {
            let (lines, method): (Vec<(&str, i64, i64)>, &str) = match i % 10 {
                0 => (vec![("SKU-R1", 2, 500)], "pm_card_chargeDeclined"),
                1 => (vec![("SKU-SCARCE", 1, 900)], "pm_card_visa"),
                2 => (vec![("SKU-R2", 1, 250), ("SKU-R3", 3, 100)], "pm_card_visa"),
                _ => (vec![("SKU-R1", 1 + i % 3, 1250)], "pm_card_visa"),
            };
            let mut body = order_body(&lines, method);
            if i % 60 == 5 {
                body["customer_id"] = Value::String(regular.to_string());
            }
            body
        })
        .collect();
    let orders: Vec<Uuid> = futures::stream::iter(bodies)
        .map(|body| {
            let app = &app;
            async move {
                let (status, body) = app.post_order(&body, &Uuid::new_v4().to_string()).await;
                assert_eq!(status, 202, "{body}");
                Uuid::parse_str(body["order_id"].as_str().unwrap()).unwrap()
            }
        })
        .buffered(16)
        .collect()
        .await;

    // The live view sees every order finish and notified.
    let query = app.pools.query.clone();
    wait::until(
        "300 terminal orders in the view",
        Duration::from_secs(300),
        || async {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM orders_view
             WHERE status IN ('APPROVED', 'REJECTED') AND order_id = ANY($1)
               AND (SELECT count(*) FROM order_timeline t
                    WHERE t.order_id = orders_view.order_id AND t.step = 'NotificationSent') = 1",
            )
            .bind(&orders)
            .fetch_one(&query)
            .await
            .unwrap();
            (done == 300).then_some(())
        },
    )
    .await;

    // Freshness: a lag sample taken after everything was applied says 0.
    let settled_at = Utc::now();
    // An approved two-line order (which one depends on timing under load).
    let approved: Uuid = sqlx::query_scalar(
        "SELECT order_id FROM orders_view
         WHERE status = 'APPROVED' AND jsonb_array_length(items) = 2 AND order_id = ANY($1)
         ORDER BY order_id LIMIT 1",
    )
    .bind(&orders)
    .fetch_one(&query)
    .await
    .expect("an approved two-line order");
    let order_url = format!("{}/views/orders/{approved}", app.base_url);
    wait::until("lag 0 in a fresh sample", SETTLE, || async {
        let (_, view) = get_json(&app.http, &order_url).await;
        let (_, stock) = get_json(&app.http, &format!("{}/views/stock/SKU-R1", app.base_url)).await;
        let fresh = |f: &Value| {
            f["lag_messages"] == 0
                && f["lag_sampled_at"]
                    .as_str()
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                    .is_some_and(|t| t > settled_at)
        };
        (fresh(&view["freshness"]) && fresh(&stock["freshness"])).then_some(())
    })
    .await;

    // The order view: an approved two-line order with every step, in time order.
    let (status, view) = get_json(&app.http, &order_url).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "APPROVED", "{view}");
    assert_eq!(view["total_cents"], 550);
    assert_eq!(view["total"], "5.50 EUR");
    assert_eq!(view["items"].as_array().unwrap().len(), 2);
    let steps: Vec<&str> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "OrderPlaced",
            "StockReserved",
            "PaymentAuthorized",
            "OrderApproved",
            "NotificationSent"
        ],
        "{view}"
    );
    let (_, declined) = get_json(
        &app.http,
        &format!("{}/views/orders/{}", app.base_url, orders[0]),
    )
    .await;
    assert_eq!(declined["status"], "REJECTED", "{declined}");
    assert!(
        declined["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "StockReleased"),
        "{declined}"
    );

    // Customer history: newest first, in pages of two.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/views/customers/{regular}/orders?limit=2", app.base_url);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get_json(&app.http, &url).await;
        assert_eq!(status, 200, "{page}");
        for order in page["orders"].as_array().unwrap() {
            seen.push((
                order["placed_at"]
                    .as_str()
                    .unwrap()
                    .parse::<DateTime<Utc>>()
                    .unwrap(),
                order["order_id"].as_str().unwrap().to_string(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    let (status, bad) = get_json(
        &app.http,
        &format!("{}/views/customers/{regular}/orders?limit=0", app.base_url),
    )
    .await;
    assert_eq!((status, bad["field"].as_str()), (422, Some("limit")));

    // Stock view: what inventory holds reserved, derived from events alone.
    for sku in ["SKU-R1", "SKU-R2", "SKU-R3"] {
        let (_, stock) = get_json(&app.http, &format!("{}/views/stock/{sku}", app.base_url)).await;
        assert_eq!(stock["reserved"], app.stock(sku).await.1, "{sku}: {stock}");
    }

    // Replay everything while a reader keeps asking.
    let (live_orders, live_stock) = checksums(&query).await;
    let reading = CancellationToken::new();
    let reader = {
        let (http, url, stop) = (app.http.clone(), order_url.clone(), reading.clone());
        tokio::spawn(async move {
            let mut answers = 0u32;
            while !stop.is_cancelled() {
                let (status, view) = get_json(&http, &url).await;
                assert_eq!(
                    status, 200,
                    "the live view answers during the replay: {view}"
                );
                assert_eq!(view["status"], "APPROVED");
                answers += 1;
            }
            answers
        })
    };
    let mut reports = Vec::new();
    let mut progress_calls = 0;
    for projection in Projection::ALL {
        let report = replay::replay(
            &query,
            &app.kafka,
            projection,
            Start::Beginning,
            &Rules::default(),
            |_| progress_calls += 1,
            &CancellationToken::new(),
        )
        .await
        .expect("replay");
        reports.push(report);
    }
    reading.cancel();
    let answers = reader.await.expect("reader saw the view at every request");
    assert!(answers > 0);
    assert!(progress_calls >= 2);

    let (orders_report, stock_report) = (&reports[0], &reports[1]);
    assert!(orders_report.messages >= 300 * 4, "{orders_report:?}");
    assert_eq!(orders_report.rejected, 0);
    assert_eq!(orders_report.checksum, live_orders, "{orders_report:?}");
    assert_eq!(orders_report.previous_checksum, live_orders);
    assert_eq!(stock_report.checksum, live_stock, "{stock_report:?}");
    // The rebuilt tables are the live ones now, and still fed.
    assert_eq!(checksums(&query).await, (live_orders, live_stock));
    let (status, view) = get_json(&app.http, &order_url).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("APPROVED")));
    let after = app.place(&[("SKU-R2", 1, 100)], "pm_card_visa").await;
    wait::until("a new order in the rebuilt view", SETTLE, || async {
        let (_, v) = get_json(&app.http, &format!("{}/views/orders/{after}", app.base_url)).await;
        matches!(v["status"].as_str(), Some("APPROVED" | "REJECTED")).then_some(())
    })
    .await;
    app.stop().await;
}

/// A query-service consumer on its own database and topic prefix.
struct Standalone {
    pool: PgPool,
    kafka: KafkaConfig,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Standalone {
    async fn new() -> Self {
        let db = database("query").await;
        Standalone {
            pool: db.pool,
            kafka: kafka(),
            shutdown: CancellationToken::new(),
            task: None,
        }
    }

    fn start(&mut self, rules: Rules) {
        self.shutdown = CancellationToken::new();
        self.task = Some(tokio::spawn(query_service::run_with(
            self.pool.clone(),
            self.kafka.clone(),
            rules,
            vec![Group::new(query_service::NAME, &query_service::topics())],
            self.shutdown.clone(),
        )));
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().expect("consumer stops cleanly");
        }
    }

    /// Events applied: the live consumer keeps no inbox (its projections are idempotent), and
    /// every event of these histories leaves one timeline row, keyed by its message id.
    async fn applied(&self) -> i64 {
        applied_events(&self.pool).await
    }

    /// The consumer group's committed offset of a partition (None before any commit).
    async fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        let (kafka, topic) = (self.kafka.clone(), self.kafka.topic(topic));
        tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &kafka.brokers)
                .set("broker.address.family", "v4")
                .set("group.id", kafka.group(query_service::NAME))
                .set("log_level", "3")
                .create()
                .unwrap();
            let mut query = TopicPartitionList::new();
            query.add_partition(&topic, partition);
            let found = client
                .committed_offsets(query, Duration::from_secs(5))
                .ok()?;
            match found.find_partition(&topic, partition)?.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }
        })
        .await
        .unwrap()
    }
}

/// One event, ready to publish anywhere.
#[derive(Clone)]
struct Event {
    envelope: Envelope,
    message: Message,
}

fn event(message: Message, at: DateTime<Utc>) -> Event {
    let encoded = message.encode().unwrap();
    let mut envelope = Envelope::new(
        message.message_type(),
        "replay-test",
        message.order_id(),
        None,
        encoded.schema_ref,
    );
    envelope.time = at;
    Event { envelope, message }
}

/// Publish and return (partition, offset).
async fn publish(producer: &FutureProducer, kafka: &KafkaConfig, e: &Event) -> (i32, i64) {
    let encoded = e.message.encode().unwrap();
    let headers = e.envelope.to_headers();
    let topic = kafka.topic(e.message.topic());
    let key = e.message.order_id().to_string();
    let record = FutureRecord::to(&topic)
        .key(&key)
        .payload(&encoded.bytes)
        .headers(clients::to_headers(
            headers.iter().map(|(k, v)| (*k, v.as_str())),
        ));
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("publish");
    (delivery.partition, delivery.offset)
}

/// A realistic event history of `n` orders: approved ones, and declined ones with their stock
/// released, each order's events a few milliseconds apart.
fn history(n: usize) -> Vec<Vec<Event>> {
    let base = Utc::now() - chrono::Duration::hours(1);
    let customers = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    (0..n)
        .map(|i| {
            let order_id = Uuid::now_v7();
            let customer_id = customers[i % 3];
            let at = |step: i64| base + chrono::Duration::milliseconds(i as i64 * 1000 + step * 10);
            let sku = format!("SKU-{}", i % 4);
            let lines = vec![StockLine {
                sku: sku.clone(),
                quantity: 1 + (i % 3) as i32,
            }];
            let total = 1000 * (1 + (i % 3) as i64);
            let mut events = vec![
                event(
                    OrderPlaced {
                        order_id,
                        customer_id,
                        items: vec![OrderItem {
                            sku,
                            quantity: 1 + (i % 3) as i32,
                            unit_price_cents: 1000,
                        }],
                        total_cents: total,
                        currency: "EUR".into(),
                        payment_method: "pm".into(),
                        placed_at: at(0).timestamp_millis(),
                    }
                    .into(),
                    at(0),
                ),
                event(
                    StockReserved {
                        order_id,
                        lines: lines.clone(),
                        reserved_at: 0,
                    }
                    .into(),
                    at(1),
                ),
            ];
            if i % 3 == 0 {
                events.push(event(
                    PaymentDeclined {
                        order_id,
                        reason: "card_declined".into(),
                        declined_at: 0,
                    }
                    .into(),
                    at(2),
                ));
                events.push(event(
                    StockReleased {
                        order_id,
                        lines,
                        released_at: 0,
                    }
                    .into(),
                    at(3),
                ));
                events.push(event(
                    OrderRejected {
                        order_id,
                        customer_id,
                        reason: "payment declined".into(),
                        rejected_at: 0,
                    }
                    .into(),
                    at(4),
                ));
            } else {
                events.push(event(
                    PaymentAuthorized {
                        order_id,
                        payment_id: format!("ch_{i}"),
                        amount_cents: total,
                        currency: "EUR".into(),
                        authorized_at: 0,
                    }
                    .into(),
                    at(2),
                ));
                events.push(event(
                    OrderApproved {
                        order_id,
                        customer_id,
                        total_cents: total,
                        currency: "EUR".into(),
                        approved_at: 0,
                    }
                    .into(),
                    at(4),
                ));
            }
            events.push(event(
                NotificationSent {
                    order_id,
                    customer_id,
                    template: "t".into(),
                    subject: "s".into(),
                    sent_at: 0,
                }
                .into(),
                at(5),
            ));
            events
        })
        .collect()
}

#[tokio::test]
async fn duplicated_and_reordered_events_build_the_same_views_as_an_in_order_run() {
    let _broker = broker_lock().read().await;
    let orders = history(40);
    let unique: i64 = orders.iter().map(|o| o.len() as i64).sum();
    let (mut in_order, mut shuffled) = (Standalone::new().await, Standalone::new().await);
    in_order.start(Rules::default());
    shuffled.start(Rules::default());
    let producer = clients::producer(&in_order.kafka).unwrap();

    for events in &orders {
        for e in events {
            publish(&producer, &in_order.kafka, e).await;
        }
    }
    // Every event twice; within a partition the terminal event comes before OrderPlaced and
    // the release before the reservation, then everything again in reverse.
    let mut messy: Vec<Event> = Vec::new();
    for events in &orders {
        let mut events = events.clone();
        let last_order_event = events
            .iter()
            .rposition(|e| e.message.topic() == topics::ORDERS_EVENTS)
            .unwrap();
        events.swap(0, last_order_event);
        if let Some(released) = events
            .iter()
            .position(|e| e.message.message_type() == "StockReleased")
        {
            let reserved = events
                .iter()
                .position(|e| e.message.message_type() == "StockReserved")
                .unwrap();
            events.swap(reserved, released);
        }
        messy.extend(events);
    }
    let again: Vec<Event> = messy.iter().rev().cloned().collect();
    messy.extend(again);
    for e in &messy {
        publish(&producer, &shuffled.kafka, e).await;
    }

    for consumer in [&in_order, &shuffled] {
        wait::until("every event applied", SETTLE, || async {
            (consumer.applied().await == unique).then_some(())
        })
        .await;
    }
    let expected = checksums(&in_order.pool).await;
    assert_eq!(checksums(&shuffled.pool).await, expected);
    // The views absorbed the duplicates themselves: the live consumer wrote no inbox row.
    for consumer in [&in_order, &shuffled] {
        let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(&consumer.pool)
            .await
            .unwrap();
        assert_eq!(inbox, 0, "the query consumer keeps no inbox");
    }

    // The order-safety is visible: an order whose terminal event came first is not PENDING.
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders_view GROUP BY status ORDER BY status")
            .fetch_all(&shuffled.pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        [("APPROVED".to_string(), 26), ("REJECTED".to_string(), 14)]
    );
    let reserved: i64 = sqlx::query_scalar("SELECT sum(reserved)::BIGINT FROM stock_view")
        .fetch_one(&shuffled.pool)
        .await
        .unwrap();
    let approved_quantity: i64 = (0..40)
        .filter(|i| i % 3 != 0)
        .map(|i| 1 + (i % 3) as i64)
        .sum();
    assert_eq!(reserved, approved_quantity, "released stock is not held");

    // A replay has no inbox: the projection itself absorbs the duplicates and reordering.
    shuffled.stop().await;
    let report = replay::replay(
        &shuffled.pool,
        &shuffled.kafka,
        Projection::Orders,
        Start::Beginning,
        &Rules::default(),
        |_| {},
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        report.messages,
        unique as u64 * 2,
        "every copy read: {report:?}"
    );
    assert_eq!(report.checksum, expected.0);
    let stock = replay::replay(
        &shuffled.pool,
        &shuffled.kafka,
        Projection::Stock,
        Start::Beginning,
        &Rules::default(),
        |_| {},
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(stock.checksum, expected.1);
    in_order.stop().await;
}

#[tokio::test]
async fn a_poison_event_is_parked_with_its_reason_and_redriven_once_after_the_fix() {
    let _broker = broker_lock().read().await;
    let mut query = Standalone::new().await;
    query.start(Rules::default());
    let producer = clients::producer(&query.kafka).unwrap();
    let now = Utc::now();
    let order_id = Uuid::now_v7();
    let poison = placed_in_xts(order_id, now);
    let next = event(
        StockReserved {
            order_id,
            lines: vec![StockLine {
                sku: "SKU-X".into(),
                quantity: 1,
            }],
            reserved_at: 0,
        }
        .into(),
        now + chrono::Duration::milliseconds(5),
    );
    let (partition, poison_offset) = publish(&producer, &query.kafka, &poison).await;
    // Same key: the next event of this partition.
    let followup = event(
        OrderApproved {
            order_id,
            customer_id: Uuid::now_v7(),
            total_cents: 1234,
            currency: "XTS".into(),
            approved_at: 0,
        }
        .into(),
        now + chrono::Duration::milliseconds(10),
    );
    let (followup_partition, followup_offset) = publish(&producer, &query.kafka, &followup).await;
    assert_eq!(followup_partition, partition);
    publish(&producer, &query.kafka, &next).await;

    // Parked with its reason...
    let parked = wait::until("the poison in the DLQ", SETTLE, || async {
        let parked = sagaflow_messaging::dead_letters::read(&query.kafka, topics::ORDERS_EVENTS)
            .await
            .unwrap();
        (!parked.is_empty()).then_some(parked)
    })
    .await;
    assert_eq!(parked.len(), 1);
    let letter = &parked[0];
    let id = poison.envelope.message_id.to_string();
    assert_eq!(letter.message_id().as_deref(), Some(id.as_str()));
    assert!(
        letter.reason().unwrap().contains("currency XTS"),
        "{:?}",
        letter.reason()
    );
    assert_eq!(
        letter.header(header_names::DLQ_ERROR_KIND).as_deref(),
        Some("rejected")
    );
    assert_eq!(
        letter.header(header_names::DLQ_SOURCE_OFFSET),
        Some(poison_offset.to_string())
    );
    assert_eq!(
        letter.header(header_names::DLQ_CONSUMER).as_deref(),
        Some(query_service::NAME)
    );
    // ...and the partition moved on: the next event of the same order is applied.
    let view = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, Option<String>, i64)>(
            "SELECT v.status, v.currency,
                    (SELECT count(*) FROM order_timeline t WHERE t.order_id = v.order_id AND t.step = 'OrderPlaced')
             FROM orders_view v WHERE v.order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    wait::until("the follow-up applied", SETTLE, || async {
        (view(query.pool.clone()).await == Some(("APPROVED".into(), None, 0))).then_some(())
    })
    .await;
    wait::until("the offsets committed past the poison", SETTLE, || async {
        (query.committed(topics::ORDERS_EVENTS, partition).await > Some(followup_offset))
            .then_some(())
    })
    .await;

    // The fix: the currency is configured. Then redrive it, twice: applied once.
    query.stop().await;
    let mut fixed = Rules::default();
    fixed.add_currencies("XTS=2").unwrap();
    query.start(fixed);
    let sent = sagaflow_messaging::dead_letters::redrive(
        &query.kafka,
        topics::ORDERS_EVENTS,
        std::slice::from_ref(&id),
    )
    .await
    .unwrap();
    assert_eq!(sent.len(), 1);
    wait::until("the redriven event applied", SETTLE, || async {
        (view(query.pool.clone()).await == Some(("APPROVED".into(), Some("XTS".into()), 1)))
            .then_some(())
    })
    .await;
    // The last offset the view has read on that partition: the redriven copy's.
    let applied_at: i64 = sqlx::query_scalar(
        "SELECT next_offset - 1 FROM projection_positions WHERE topic = $1 AND kafka_partition = $2",
    )
    .bind(topics::ORDERS_EVENTS)
    .bind(partition)
    .fetch_one(&query.pool)
    .await
    .unwrap();
    assert!(
        applied_at > followup_offset,
        "applied from the redriven copy"
    );
    sagaflow_messaging::dead_letters::redrive(&query.kafka, topics::ORDERS_EVENTS, &[])
        .await
        .unwrap();
    let end = wait::until("the second copy consumed", SETTLE, || async {
        let committed = query.committed(topics::ORDERS_EVENTS, partition).await?;
        (committed > applied_at + 1).then_some(committed)
    })
    .await;
    assert!(end > applied_at + 1);
    // The second copy changed nothing: one OrderPlaced step in the timeline, the same view.
    assert_eq!(
        view(query.pool.clone()).await,
        Some(("APPROVED".into(), Some("XTS".into()), 1))
    );
    let total: (i64, Option<String>) =
        sqlx::query_as("SELECT total_cents, currency FROM orders_view WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(&query.pool)
            .await
            .unwrap();
    assert_eq!(total, (1234, Some("XTS".into())));
    query.stop().await;
}

/// A partition's low watermark (`topic` as named in Kafka).
async fn low_watermark(kafka: &KafkaConfig, topic: &str, partition: i32) -> i64 {
    let (kafka, topic) = (kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("broker.address.family", "v4")
            .set("log_level", "3")
            .create()
            .unwrap();
        clients::watermarks(&client, &topic, partition, Duration::from_secs(10))
            .unwrap()
            .0
    })
    .await
    .unwrap()
}

/// Delete the records of a partition before `offset`, as retention deletes old segments
/// (Kafka's DeleteRecords), and wait until the broker reports the new low watermark.
async fn delete_before(kafka: &KafkaConfig, topic: &str, partition: i32, offset: i64) {
    let admin = clients::admin(kafka).unwrap();
    let topic = kafka.topic(topic);
    let mut records = TopicPartitionList::new();
    records
        .add_partition_offset(&topic, partition, Offset::Offset(offset))
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deleted = admin
        .delete_records(&records, &options)
        .await
        .expect("DeleteRecords");
    let result = deleted
        .find_partition(&topic, partition)
        .expect("a result for the partition");
    result.error().expect("records deleted");
    assert_eq!(result.offset(), Offset::Offset(offset));
    wait::until("the new low watermark", SETTLE, || async {
        (low_watermark(kafka, &topic, partition).await == offset).then_some(())
    })
    .await;
}

/// What a replay left in the database: (shadow tables, replay positions).
async fn leftovers(pool: &PgPool) -> (i64, i64) {
    let shadows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables
         WHERE schemaname = current_schema() AND tablename LIKE '%\\_rebuild'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let positions: i64 = sqlx::query_scalar("SELECT count(*) FROM replay_positions")
        .fetch_one(pool)
        .await
        .unwrap();
    (shadows, positions)
}

#[tokio::test]
async fn a_replay_of_a_topic_whose_start_was_deleted_is_refused() {
    let _broker = broker_lock().read().await;
    let mut query = Standalone::new().await;
    query.start(Rules::default());
    let producer = clients::producer(&query.kafka).unwrap();
    // A history, then every event again (a producer redelivering): the second copies alone
    // build the same views, so deleting first copies loses nothing — yet the replay cannot
    // know that, and must not guess.
    let orders = history(12);
    let unique: i64 = orders.iter().map(|o| o.len() as i64).sum();
    // orders.events partition → offset of its last first copy.
    let mut first_copies: BTreeMap<i32, i64> = BTreeMap::new();
    for e in orders.iter().flatten() {
        let (partition, offset) = publish(&producer, &query.kafka, e).await;
        if e.message.topic() == topics::ORDERS_EVENTS {
            first_copies.insert(partition, offset);
        }
    }
    for e in orders.iter().flatten() {
        publish(&producer, &query.kafka, e).await;
    }
    wait::until("every event applied", SETTLE, || async {
        (query.applied().await == unique).then_some(())
    })
    .await;
    let live = checksums(&query.pool).await;

    // Retention deleted the start of one partition of orders.events.
    let (&partition, &last) = first_copies.iter().max_by_key(|(_, o)| **o).unwrap();
    let low = last + 1;
    delete_before(&query.kafka, topics::ORDERS_EVENTS, partition, low).await;

    let refused = replay::replay(
        &query.pool,
        &query.kafka,
        Projection::Orders,
        Start::Beginning,
        &Rules::default(),
        |_| {},
        &CancellationToken::new(),
    )
    .await
    .expect_err("a replay of a truncated topic is refused");
    assert!(
        matches!(&refused, ReplayError::TruncatedHistory(t) if t.len() == 1),
        "{refused:?}"
    );
    let text = refused.to_string();
    for named in [
        format!(
            "{} partition {partition}",
            query.kafka.topic(topics::ORDERS_EVENTS)
        ),
        format!("low watermark {low}"),
        "truncated".to_string(),
        "--allow-truncated-history".to_string(),
    ] {
        assert!(text.contains(&named), "{named:?} in: {text}");
    }
    // Refused before any work: no shadows, no positions, the live views as they were.
    assert_eq!(leftovers(&query.pool).await, (0, 0));
    assert_eq!(checksums(&query.pool).await, live);

    // The stock view reads only inventory.events, which is whole.
    let stock = replay::replay(
        &query.pool,
        &query.kafka,
        Projection::Stock,
        Start::Beginning,
        &Rules::default(),
        |_| {},
        &CancellationToken::new(),
    )
    .await
    .expect("a replay of whole topics");
    assert_eq!(stock.checksum, live.1);

    // Accepting the truncation: the rebuild starts at the low watermark.
    let report = replay::replay(
        &query.pool,
        &query.kafka,
        Projection::Orders,
        replay::Options {
            allow_truncated_history: true,
            ..replay::Options::default()
        },
        &Rules::default(),
        |_| {},
        &CancellationToken::new(),
    )
    .await
    .expect("a replay that accepts the truncated history");
    assert_eq!(report.messages, (2 * unique - low) as u64, "{report:?}");
    assert_eq!(report.checksum, live.0, "{report:?}");
    assert_eq!(report.previous_checksum, live.0);
    assert_eq!(checksums(&query.pool).await, live);
    assert_eq!(leftovers(&query.pool).await, (0, 0));
    query.stop().await;
}

#[tokio::test]
async fn a_rebuilt_view_that_differs_from_the_live_one_is_switched_in_only_with_force() {
    let _broker = broker_lock().read().await;
    let mut query = Standalone::new().await;
    query.start(Rules::default());
    let producer = clients::producer(&query.kafka).unwrap();
    let now = Utc::now();
    let (declined, held) = (Uuid::now_v7(), Uuid::now_v7());
    let lines = |sku: &str, quantity| {
        vec![StockLine {
            sku: sku.into(),
            quantity,
        }]
    };
    // A declined order reserved and released two; another order holds one.
    let (partition, reserved_at) = publish(
        &producer,
        &query.kafka,
        &event(
            StockReserved {
                order_id: declined,
                lines: lines("SKU-GONE", 2),
                reserved_at: 0,
            }
            .into(),
            now,
        ),
    )
    .await;
    publish(
        &producer,
        &query.kafka,
        &event(
            StockReleased {
                order_id: declined,
                lines: lines("SKU-GONE", 2),
                released_at: 0,
            }
            .into(),
            now + chrono::Duration::milliseconds(10),
        ),
    )
    .await;
    publish(
        &producer,
        &query.kafka,
        &event(
            StockReserved {
                order_id: held,
                lines: lines("SKU-KEPT", 1),
                reserved_at: 0,
            }
            .into(),
            now + chrono::Duration::milliseconds(20),
        ),
    )
    .await;
    let reserved = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, i64)>("SELECT sku, reserved FROM stock_view ORDER BY sku")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let kept = vec![("SKU-GONE".to_string(), 0), ("SKU-KEPT".to_string(), 1)];
    wait::until("the three events applied", SETTLE, || async {
        (reserved(query.pool.clone()).await == kept).then_some(())
    })
    .await;
    let live = replay::checksum(&query.pool, Projection::Stock)
        .await
        .unwrap();

    // Retention deleted the reservation but not the release: a rebuild holds -2.
    delete_before(
        &query.kafka,
        topics::INVENTORY_EVENTS,
        partition,
        reserved_at + 1,
    )
    .await;
    let accept_truncation = replay::Options {
        allow_truncated_history: true,
        ..replay::Options::default()
    };
    let refused = replay::replay(
        &query.pool,
        &query.kafka,
        Projection::Stock,
        accept_truncation,
        &Rules::default(),
        |_| {},
        &CancellationToken::new(),
    )
    .await
    .expect_err("a differing view is not switched in without force");
    match &refused {
        ReplayError::ViewsDiffer {
            projection,
            rebuilt,
            live: compared,
            ..
        } => {
            assert_eq!(*projection, "stock");
            assert_eq!(compared, &live);
            assert_ne!(rebuilt, &live);
        }
        other => panic!("expected ViewsDiffer, got {other:?}"),
    }
    let text = refused.to_string();
    for named in ["differs", "live view was kept", "--force"] {
        assert!(text.contains(named), "{named:?} in: {text}");
    }
    // The live view stays; the rebuild is gone.
    assert_eq!(reserved(query.pool.clone()).await, kept);
    assert_eq!(
        replay::checksum(&query.pool, Projection::Stock)
            .await
            .unwrap(),
        live
    );
    assert_eq!(leftovers(&query.pool).await, (0, 0));

    // With force, the rebuilt view is switched in, loss and all.
    let report = replay::replay(
        &query.pool,
        &query.kafka,
        Projection::Stock,
        replay::Options {
            force: true,
            ..accept_truncation
        },
        &Rules::default(),
        |_| {},
        &CancellationToken::new(),
    )
    .await
    .expect("a forced replay switches");
    assert_eq!(report.previous_checksum, live);
    assert_ne!(report.checksum, live);
    assert_eq!(
        replay::checksum(&query.pool, Projection::Stock)
            .await
            .unwrap(),
        report.checksum
    );
    assert_eq!(
        reserved(query.pool.clone()).await,
        [("SKU-GONE".to_string(), -2), ("SKU-KEPT".to_string(), 1)]
    );
    assert_eq!(leftovers(&query.pool).await, (0, 0));
    query.stop().await;
}

/// Events applied to the order views: one timeline row per message id.
async fn applied_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM order_timeline")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Apply `log` (already published under `kafka`'s prefix) with the live consumer at most
/// `max_batch` messages per transaction, on a database of its own, until `expected` events are
/// applied. Returns the database and how many transactions wrote their timeline rows.
async fn apply_in_batches(kafka: &KafkaConfig, max_batch: usize, expected: i64) -> (PgPool, i64) {
    let db = database("query").await;
    let name = format!("query-b{max_batch}");
    let mut settings =
        sagaflow_messaging::consumer::ConsumerSettings::new(&name, &query_service::topics(), kafka);
    settings.max_batch = max_batch;
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(sagaflow_messaging::consumer::run(
        db.pool.clone(),
        kafka.clone(),
        settings,
        query_service::QueryHandler::new(Rules::default(), &kafka.topic_prefix),
        shutdown.clone(),
    ));
    wait::until(
        &format!("every event applied in batches of up to {max_batch}"),
        SETTLE,
        || async { (applied_events(&db.pool).await == expected).then_some(()) },
    )
    .await;
    shutdown.cancel();
    consumer.await.unwrap().expect("consumer stops cleanly");
    // Each timeline row carries the id of the transaction that wrote it (a duplicate writes
    // none: its row is there already).
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM order_timeline")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    (db.pool, transactions)
}

/// Issue 15, "one transaction per lane batch": the same input log — duplicates (the same
/// message id twice in a row), several events of one order queued together, a message that
/// cannot be decoded and one the projection rejects, both in the middle of the log — applied
/// with batches of at most 1, 7 and 64 messages gives identical views and positions. The
/// two poison messages are dead-lettered by every run, and none of their neighbours is lost.
#[tokio::test]
async fn the_same_log_applied_in_batches_of_1_7_and_64_builds_identical_views() {
    let _broker = broker_lock().read().await;
    let kafka = kafka();
    clients::ensure_all_topics(&kafka).await.unwrap();
    let producer = clients::producer(&kafka).unwrap();
    let orders = history(60);
    let mut unique = 0i64;
    for (i, events) in orders.iter().enumerate() {
        for e in events {
            publish(&producer, &kafka, e).await;
            unique += 1;
            if i % 4 == 0 {
                publish(&producer, &kafka, e).await; // the same message id, right behind
            }
        }
        if i == 30 {
            publish_poison(&producer, &kafka).await;
        }
    }

    let mut runs = Vec::new();
    for max_batch in [1, 7, 64] {
        let (pool, transactions) = apply_in_batches(&kafka, max_batch, unique).await;
        let positions: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT topic, kafka_partition, next_offset FROM projection_positions ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        eprintln!(
            "batches of up to {max_batch}: {transactions} transactions for {unique} messages"
        );
        runs.push((max_batch, checksums(&pool).await, positions, transactions));
    }
    let (_, views, positions, one_by_one) = &runs[0];
    assert_eq!(
        *one_by_one, unique,
        "batches of 1: one transaction per message"
    );
    for (max_batch, other_views, other_positions, transactions) in &runs[1..] {
        assert_eq!(
            other_views, views,
            "batches of up to {max_batch}: the same views"
        );
        assert_eq!(
            other_positions, positions,
            "batches of up to {max_batch}: the same positions"
        );
        assert!(
            *transactions < unique / 2,
            "batches of up to {max_batch} were formed: {transactions} transactions for {unique} messages"
        );
    }

    // Every run dead-lettered both poison messages, with its reason, and nothing else.
    let dead =
        sagaflow_tests::kafka_probe::read_all(&kafka, &topics::dlq(topics::ORDERS_EVENTS)).await;
    let mut by_consumer: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in &dead {
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        by_consumer
            .entry(header(header_names::DLQ_CONSUMER))
            .or_default()
            .push(header(header_names::DLQ_ERROR_KIND));
    }
    for max_batch in [1, 7, 64] {
        let mut kinds = by_consumer
            .remove(&format!("query-b{max_batch}"))
            .unwrap_or_default();
        kinds.sort();
        assert_eq!(
            kinds,
            ["rejected", "undecodable"],
            "batches of up to {max_batch}"
        );
    }
    assert!(
        by_consumer.is_empty(),
        "no other dead letters: {by_consumer:?}"
    );
}

/// An OrderPlaced of one SKU-X at 12.34 in XTS: a real ISO code the view has no minor units
/// for, so it cannot render the total and rejects the event.
fn placed_in_xts(order_id: Uuid, at: DateTime<Utc>) -> Event {
    event(
        OrderPlaced {
            order_id,
            customer_id: Uuid::now_v7(),
            items: vec![OrderItem {
                sku: "SKU-X".into(),
                quantity: 1,
                unit_price_cents: 1234,
            }],
            total_cents: 1234,
            currency: "XTS".into(),
            payment_method: "pm".into(),
            placed_at: at.timestamp_millis(),
        }
        .into(),
        at,
    )
}

/// Two poison messages on orders.events: an OrderPlaced whose payload is not Avro, and one in
/// XTS, a currency the orders view cannot total.
async fn publish_poison(producer: &FutureProducer, kafka: &KafkaConfig) {
    let now = Utc::now();
    let order_id = Uuid::now_v7();
    let rejected = placed_in_xts(order_id, now);
    let mut garbage = rejected.envelope.clone();
    garbage.message_id = Uuid::now_v7();
    let headers = garbage.to_headers();
    let topic = kafka.topic(topics::ORDERS_EVENTS);
    let key = Uuid::now_v7().to_string();
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&key)
                .payload(&[0xffu8, 0xfe, 0x00][..])
                .headers(clients::to_headers(
                    headers.iter().map(|(k, v)| (*k, v.as_str())),
                )),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("publish");
    publish(producer, kafka, &rejected).await;
}

/// The lag sampler keeps its Kafka clients from one sample to the next (it used to make seven
/// every second); each sample must still read the partitions as they are now: messages
/// published after the first samples show up in `topic_watermarks` (which the read
/// responses' `freshness` is computed from).
#[tokio::test]
async fn the_lag_sampler_reads_fresh_watermarks_on_every_sample() {
    let _broker = broker_lock().read().await;
    let kafka = kafka();
    clients::ensure_topics(&kafka, &query_service::topics())
        .await
        .unwrap();
    let db = database("query").await;
    let shutdown = CancellationToken::new();
    let sampler = tokio::spawn(query_service::lag::run(
        db.pool.clone(),
        kafka.clone(),
        vec![Group::new("lag-test-idle-group", &[topics::ORDERS_EVENTS])],
        Duration::from_millis(200),
        shutdown.clone(),
    ));
    let producer = clients::producer(&kafka).unwrap();
    let topic = kafka.topic(topics::ORDERS_EVENTS);
    let high_watermark = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT high_watermark FROM topic_watermarks WHERE topic = $1 AND kafka_partition = 0",
        )
        .bind(topics::ORDERS_EVENTS)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
    };
    for (round, range) in [(1, 0..3), (2, 3..7)] {
        let published = range.end;
        for i in range {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(0)
                        .key("lag-test")
                        .payload(&format!("not an event {i}")),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
        wait::until(
            &format!("round {round}: the sampled high watermark reaches {published}"),
            Duration::from_secs(30),
            || async { (high_watermark().await? >= published).then_some(()) },
        )
        .await;
    }
    shutdown.cancel();
    sampler.await.unwrap().unwrap();
}
