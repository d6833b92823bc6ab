//! The order saga end to end: every service, the orchestrator and the relays in-process
//! against the real PostgreSQL and broker, driven over HTTP like a user would.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use sagaflow_runtime::kafka as clients;
use sagaflow_schemas::{Message, header_names, topics};
use sagaflow_tests::broker_lock;
use sagaflow_tests::kafka_probe::{self, read_all};
use sagaflow_tests::platform::{Options, TestApp, counter_sum, order_body, spawn_platform};
use sagaflow_tests::wait;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const FINISH: Duration = Duration::from_secs(60);

async fn count(pool: &PgPool, sql: &str, order: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(order)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn charges(app: &TestApp, order: Uuid) -> i64 {
    count(
        &app.pools.payment,
        "SELECT count(*) FROM payments WHERE order_id = $1 AND charge_id IS NOT NULL",
        order,
    )
    .await
}

async fn notifications(app: &TestApp, order: Uuid) -> i64 {
    count(
        &app.pools.notification,
        "SELECT count(*) FROM notifications WHERE order_id = $1",
        order,
    )
    .await
}

#[tokio::test]
async fn happy_path_approves_decrements_stock_charges_once_and_notifies_once() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    app.set_stock("SKU-H", 10).await;
    let order = app.place(&[("SKU-H", 3, 1250)], "pm_card_visa").await;

    let done = app.terminal(order, FINISH).await;
    assert_eq!(done["status"], "APPROVED", "{done}");
    assert_eq!(
        app.stock("SKU-H").await,
        (7, 3),
        "3 units sold (held as reserved for the approved order)"
    );
    assert_eq!(charges(&app, order).await, 1);
    assert_eq!(app.provider.stats().charges, 1);
    wait::until("one notification", FINISH, || async {
        (notifications(&app, order).await == 1).then_some(())
    })
    .await;
    let saga = app.saga_terminal(order, FINISH).await;
    assert_eq!(saga["saga"]["state"], "APPROVED");
    let steps: Vec<&str> = saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to_state"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "RESERVING_STOCK",
            "AUTHORIZING_PAYMENT",
            "APPROVING",
            "APPROVED"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn out_of_stock_rejects_without_charging_or_touching_stock() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    app.set_stock("SKU-O", 2).await;
    let order = app.place(&[("SKU-O", 5, 100)], "pm_card_visa").await;
    let done = app.terminal(order, FINISH).await;
    assert_eq!(done["status"], "REJECTED");
    assert!(
        done["reason"].as_str().unwrap().contains("out of stock"),
        "{done}"
    );
    assert_eq!(app.stock("SKU-O").await, (2, 0));
    assert_eq!(charges(&app, order).await, 0);
    assert_eq!(app.provider.stats().charges, 0);
    wait::until("one rejection notice", FINISH, || async {
        (notifications(&app, order).await == 1).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_declined_card_releases_the_reserved_stock_and_rejects() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    app.set_stock("SKU-D", 10).await;
    let order = app
        .place(&[("SKU-D", 4, 999)], "pm_card_chargeDeclined")
        .await;
    let done = app.terminal(order, FINISH).await;
    assert_eq!(done["status"], "REJECTED");
    assert!(
        done["reason"].as_str().unwrap().contains("declined"),
        "{done}"
    );
    let saga = app.saga_terminal(order, FINISH).await;
    let steps: Vec<&str> = saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to_state"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"AUTHORIZING_PAYMENT") && steps.contains(&"COMPENSATING"),
        "reserved, then compensated: {steps:?}"
    );
    assert_eq!(app.stock("SKU-D").await, (10, 0), "stock released");
    assert_eq!(charges(&app, order).await, 0);
    assert_eq!(app.provider.stats().charges, 0);
    app.stop().await;
}

/// The provider goes down: the circuit opens, the payment step's deadline compensates the
/// order. Then another order comes while the circuit is open (3 to 4.5 s at a time), and the
/// provider recovers once the circuit has refused that order's payment: the payment waits for
/// the circuit's probe instead of burning its attempts on refusals in a second and being
/// dead-lettered, and the order is approved.
#[tokio::test]
async fn provider_down_opens_the_circuit_hits_the_deadline_compensates_then_recovers() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options {
        step_timeout: Duration::from_secs(8),
        circuit_open: (Duration::from_secs(3), Duration::from_secs(3)),
        ..Options::default()
    })
    .await;
    app.set_stock("SKU-P", 10).await;
    app.provider.set_down(true);
    let order = app.place(&[("SKU-P", 2, 500)], "pm_card_visa").await;

    wait::until("the circuit to open", FINISH, || async {
        (app.circuit_open().await == Some(true)).then_some(())
    })
    .await;
    let saga = app.saga_terminal(order, Duration::from_secs(90)).await;
    assert_eq!(saga["saga"]["state"], "REJECTED", "{saga}");
    let history = saga["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|h| h["trigger"] == "DEADLINE" && h["from_state"] == "AUTHORIZING_PAYMENT"),
        "the payment step timed out: {history:?}"
    );
    assert_eq!(app.order(order).await["status"], "REJECTED");
    wait::until("stock released", FINISH, || async {
        (app.stock("SKU-P").await == (10, 0)).then_some(())
    })
    .await;
    assert_eq!(
        app.provider.stats().charges,
        0,
        "nothing charged while the provider was down"
    );

    // The first order is over (its payment command dead-lettered before its compensation
    // ran): refusals from now on are the next order's.
    let refusals = || async {
        app.provider_metric("payment_provider_calls_rejected_total")
            .await
            .unwrap_or(0.0)
    };
    let refused_before = refusals().await;
    let next = app.place(&[("SKU-P", 1, 500)], "pm_card_visa").await;
    wait::until(
        "the open circuit to refuse the next payment",
        FINISH,
        || async { (refusals().await > refused_before).then_some(()) },
    )
    .await;
    app.provider.set_down(false);
    let done = app.terminal(next, Duration::from_secs(90)).await;
    assert_eq!(
        done["status"],
        "APPROVED",
        "the payment waited for the circuit's probe: {}",
        app.saga(next).await
    );
    assert_eq!(app.stock("SKU-P").await, (9, 1));
    assert_eq!(app.provider.stats().charges, 1);
    assert_eq!(app.circuit_open().await, Some(false), "the probe closed it");
    app.stop().await;
}

/// A payment command that waited out a provider outage on its partition past the step's
/// deadline is declined "expired" when the provider is back: never charged only for the
/// compensation queued behind it to refund the charge.
#[tokio::test]
async fn a_payment_that_outlived_its_step_deadline_in_an_outage_is_never_charged() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options {
        step_timeout: Duration::from_secs(4),
        // Its attempts wait 3-4.5 s for each probe: the command outlives the deadline.
        circuit_open: (Duration::from_secs(3), Duration::from_secs(3)),
        ..Options::default()
    })
    .await;
    app.set_stock("SKU-EXP", 10).await;
    app.provider.set_down(true);
    let order = app.place(&[("SKU-EXP", 1, 500)], "pm_card_visa").await;
    wait::until("the payment step's deadline to fire", FINISH, || async {
        let saga = app.saga(order).await;
        saga["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["trigger"] == "DEADLINE"))
            .then_some(())
    })
    .await;
    // The provider is back before the command's attempts run out.
    app.provider.set_down(false);
    let saga = app.saga_terminal(order, Duration::from_secs(90)).await;
    assert_eq!(saga["saga"]["state"], "REJECTED", "{saga}");
    let stats = app.provider.stats();
    assert_eq!(
        (stats.charges, stats.refunds),
        (0, 0),
        "no money moved for an order rejected by its deadline: {stats:?}"
    );
    let reason: Option<String> =
        sqlx::query_scalar("SELECT decline_reason FROM payments WHERE order_id = $1")
            .bind(order)
            .fetch_one(&app.pools.payment)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("expired"));
    assert_eq!(app.stock("SKU-EXP").await, (10, 0), "stock released");
    app.stop().await;
}

/// A saga whose deadline cannot fire — a state this version does not know, data that does not
/// decode — must not stop every other deadline (issue 16): it is skipped and reported
/// (`saga_deadline_failures_total`), its row left as it is but its deadline pushed back, and
/// a normal saga whose step times out next to it still compensates.
#[tokio::test]
async fn a_saga_whose_deadline_cannot_fire_does_not_hold_up_the_others() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options {
        step_timeout: Duration::from_secs(4),
        // Short open periods: the payment is dead-lettered (and the compensation behind it
        // on its partition runs) within seconds while the provider stays down.
        circuit_open: (Duration::from_millis(250), Duration::from_secs(1)),
        ..Options::default()
    })
    .await;
    // Two broken sagas stuck for an hour: the most overdue rows, so the sweeper meets them
    // first. (No CHECK constraint on `state`: 'BOGUS' goes in as it is.)
    let unknown_state = Uuid::new_v4();
    let corrupt_data = Uuid::new_v4();
    let valid_data = serde_json::json!({
        "customer_id": Uuid::new_v4(),
        "items": [],
        "total_cents": 0,
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "reason": null,
        "awaiting_release": false,
        "awaiting_refund": false,
    });
    for (order_id, state, data) in [
        (unknown_state, "BOGUS", valid_data),
        (
            corrupt_data,
            "COMPENSATING",
            serde_json::json!({"not": "saga data"}),
        ),
    ] {
        sqlx::query(
            "INSERT INTO sagas (order_id, state, data, deadline, attempts, created_at, updated_at)
             VALUES ($1, $2, $3, now() - interval '1 hour', 0,
                     now() - interval '1 hour', now() - interval '1 hour')",
        )
        .bind(order_id)
        .bind(state)
        .bind(data)
        .execute(&app.pools.saga)
        .await
        .unwrap();
    }

    // A normal order whose payment step times out (the provider is down).
    app.set_stock("SKU-BAD", 10).await;
    app.provider.set_down(true);
    let order = app.place(&[("SKU-BAD", 2, 500)], "pm_card_visa").await;
    let saga = app.saga_terminal(order, Duration::from_secs(90)).await;
    assert_eq!(saga["saga"]["state"], "REJECTED", "{saga}");
    let history = saga["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|h| h["trigger"] == "DEADLINE" && h["from_state"] == "AUTHORIZING_PAYMENT"),
        "the payment step's deadline fired: {history:?}"
    );

    // Both broken sagas are left as they were, but for a deadline pushed back (no longer
    // overdue)...
    for (order_id, state) in [(unknown_state, "BOGUS"), (corrupt_data, "COMPENSATING")] {
        let (now_state, attempts) = wait::until(
            &format!("the deadline of {order_id} pushed back"),
            FINISH,
            || async {
                let (state, attempts, pushed_back): (String, i32, bool) = sqlx::query_as(
                    "SELECT state, attempts, deadline > now() FROM sagas WHERE order_id = $1",
                )
                .bind(order_id)
                .fetch_one(&app.pools.saga)
                .await
                .unwrap();
                pushed_back.then_some((state, attempts))
            },
        )
        .await;
        assert_eq!((now_state.as_str(), attempts), (state, 0), "{order_id}");
        assert_eq!(
            count(
                &app.pools.saga,
                "SELECT count(*) FROM saga_history WHERE order_id = $1",
                order_id
            )
            .await,
            0,
            "{order_id}: no transition recorded"
        );
    }
    // ...and reported (counted before their deadline is pushed back).
    let failures = app.counter("saga_deadline_failures_total").await;
    assert!(failures >= 2.0, "{failures}");
    app.provider.set_down(false);
    app.stop().await;
}

/// Group counters of `consumer_messages_total` by (group, outcome), from this process's
/// metrics.
fn consumer_outcomes(metrics: &str, prefix: &str) -> HashMap<(String, String), f64> {
    let mut out = HashMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("consumer_messages_total{"))
    {
        let (labels, value) = line.rsplit_once(' ').unwrap();
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let group = label("group");
        if let Some(group) = group.strip_prefix(prefix) {
            out.insert(
                (group.to_string(), label("outcome")),
                value.parse().unwrap(),
            );
        }
    }
    out
}

#[tokio::test]
async fn every_message_delivered_twice_has_exactly_one_effect() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    app.set_stock("SKU-2X", 10).await;
    let approved = app.place(&[("SKU-2X", 2, 700)], "pm_card_visa").await;
    let declined = app
        .place(&[("SKU-2X", 1, 300)], "pm_card_chargeDeclined")
        .await;
    let rejected = app.place(&[("SKU-2X", 50, 300)], "pm_card_visa").await;
    for order in [approved, declined, rejected] {
        app.saga_terminal(order, FINISH).await;
        wait::until("notification", FINISH, || async {
            (notifications(&app, order).await == 1).then_some(())
        })
        .await;
    }
    let before = snapshot(&app, &[approved, declined, rejected]).await;

    // Deliver every message of every topic a second time, byte for byte.
    let producer = clients::producer(&app.kafka).unwrap();
    let mut redelivered = 0;
    for topic in topics::ALL {
        let records = read_all(&app.kafka, topic).await;
        for record in &records {
            let headers = clients::to_headers(
                record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap())),
            );
            let name = app.kafka.topic(topic);
            let mut send = FutureRecord::to(&name)
                .headers(headers)
                .payload(record.payload.as_deref().unwrap());
            if let Some(key) = &record.key {
                send = send.key(key.as_str());
            }
            producer
                .send(send, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            redelivered += 1;
        }
    }
    assert!(redelivered >= 20, "redelivered {redelivered} messages");

    // Wait until each consumer has seen its duplicates (the inbox skips them) ...
    let prefix = app.kafka.topic_prefix.clone();
    // The groups whose every message has an effect (query-service's views are checked by
    // the replay tests).
    let groups = [
        "order-service",
        "inventory-service",
        "payment-service",
        "notification-service",
        "saga-orchestrator",
    ];
    let explain = || async { kafka_probe::positions(&app.kafka, topics::ALL, &groups).await };
    wait::until_explained(
        "every duplicate to be skipped",
        FINISH,
        || async {
            let metrics = app.metrics().await;
            let outcomes = consumer_outcomes(&metrics, &prefix);
            let of = |group: &str, outcome: &str| {
                outcomes
                    .get(&(group.to_string(), outcome.to_string()))
                    .copied()
                    .unwrap_or(0.0)
            };
            let settled = groups
                .iter()
                .all(|g| of(g, "applied") > 0.0 && of(g, "duplicate") >= of(g, "applied"));
            if !settled {
                eprintln!("not yet: {outcomes:?}");
            }
            settled.then_some(())
        },
        explain,
    )
    .await;
    // ... and nothing changed.
    let after = snapshot(&app, &[approved, declined, rejected]).await;
    assert_eq!(
        before, after,
        "a second delivery of every message changed nothing"
    );
    app.stop().await;
}

/// The same verdict announced again under a new message id (the order service re-announces
/// when the saga retries ApproveOrder after a lost reply) passes the inbox, and the
/// notification service's one statement — notification row plus NotificationSent — must then
/// record nothing and enqueue nothing: still one notification and one NotificationSent.
#[tokio::test]
async fn a_verdict_announced_again_under_a_new_message_id_notifies_once() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    app.set_stock("SKU-AGAIN", 10).await;
    let order = app.place(&[("SKU-AGAIN", 1, 500)], "pm_card_visa").await;
    app.saga_terminal(order, FINISH).await;
    wait::until("one notification", FINISH, || async {
        (notifications(&app, order).await == 1).then_some(())
    })
    .await;
    let sent = || async {
        count(
            &app.pools.notification,
            "SELECT count(*) FROM outbox WHERE msg_key = $1::uuid::text AND message_type = 'NotificationSent'",
            order,
        )
        .await
    };
    assert_eq!(sent().await, 1);
    let prefix = app.kafka.topic_prefix.clone();
    let applied = |metrics: String| {
        consumer_outcomes(&metrics, &prefix)
            .get(&("notification-service".to_string(), "applied".to_string()))
            .copied()
            .unwrap_or(0.0)
    };
    let applied_before = applied(app.metrics().await);

    // OrderApproved again, byte for byte but for a new message id.
    let approved = read_all(&app.kafka, topics::ORDERS_EVENTS)
        .await
        .into_iter()
        .find(|r| {
            r.key.as_deref() == Some(order.to_string().as_str())
                && r.headers
                    .iter()
                    .any(|(k, v)| k == header_names::TYPE && v.as_slice() == b"OrderApproved")
        })
        .expect("the order's OrderApproved on orders.events");
    let new_id = Uuid::now_v7().to_string();
    let headers = clients::to_headers(approved.headers.iter().map(|(k, v)| {
        if k == header_names::ID {
            (k.as_str(), new_id.as_str())
        } else {
            (k.as_str(), std::str::from_utf8(v).unwrap())
        }
    }));
    let name = app.kafka.topic(topics::ORDERS_EVENTS);
    let order_key = order.to_string();
    clients::producer(&app.kafka)
        .unwrap()
        .send(
            FutureRecord::to(&name)
                .headers(headers)
                .key(order_key.as_str())
                .payload(approved.payload.as_deref().unwrap()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    // Applied (a new message id), and it changed nothing.
    wait::until("the re-announcement to be applied", FINISH, || async {
        (applied(app.metrics().await) > applied_before).then_some(())
    })
    .await;
    assert_eq!(notifications(&app, order).await, 1);
    assert_eq!(sent().await, 1, "a second NotificationSent was enqueued");
    app.stop().await;
}

/// Every effect a message can have, for some orders.
async fn snapshot(app: &TestApp, orders: &[Uuid]) -> Vec<Value> {
    let mut out = vec![
        serde_json::json!({"stock": app.stock("SKU-2X").await, "provider": format!("{:?}", app.provider.stats())}),
    ];
    for order in orders {
        let saga = app.saga(*order).await;
        let transitions = saga["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["from_state"] != h["to_state"])
            .count();
        out.push(serde_json::json!({
            "order": app.order(*order).await["status"],
            "saga": saga["saga"]["state"],
            "transitions": transitions,
            "charges": charges(app, *order).await,
            "notifications": notifications(app, *order).await,
            "outbox_order": count(&app.pools.order, "SELECT count(*) FROM outbox WHERE msg_key = $1::text", *order).await,
            "outbox_inventory": count(&app.pools.inventory, "SELECT count(*) FROM outbox WHERE msg_key = $1::text", *order).await,
            "outbox_payment": count(&app.pools.payment, "SELECT count(*) FROM outbox WHERE msg_key = $1::text", *order).await,
            "outbox_saga": count(&app.pools.saga, "SELECT count(*) FROM outbox WHERE msg_key = $1::text", *order).await,
        }));
    }
    out
}

#[tokio::test]
async fn two_hundred_concurrent_orders_all_finish_and_conserve_stock_and_money() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    let skus = ["SKU-C1", "SKU-C2", "SKU-C3"];
    let initial = 120;
    for sku in skus {
        app.set_stock(sku, initial).await;
    }
    let app = std::sync::Arc::new(app);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200usize {
        let app = app.clone();
        tasks.spawn(async move {
            let sku = skus[i % 3];
            let method = if i % 5 == 0 {
                "pm_card_chargeDeclined"
            } else {
                "pm_card_visa"
            };
            let body = order_body(&[(sku, (i % 4 + 1) as i64, 100 + i as i64)], method);
            let (status, body) = app.post_order(&body, &format!("load-{i}")).await;
            assert_eq!(status, 202, "{body}");
            Uuid::parse_str(body["order_id"].as_str().unwrap()).unwrap()
        });
    }
    let orders: Vec<Uuid> = tasks.join_all().await;
    let mut approved_total = 0i64;
    let mut sold: HashMap<String, i64> = HashMap::new();
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for order in &orders {
        let done = app.terminal(*order, Duration::from_secs(180)).await;
        let status = done["status"].as_str().unwrap().to_string();
        if status == "APPROVED" {
            approved_total += done["total_cents"].as_i64().unwrap();
            for item in done["items"].as_array().unwrap() {
                *sold
                    .entry(item["sku"].as_str().unwrap().to_string())
                    .or_default() += item["quantity"].as_i64().unwrap();
            }
        }
        *outcomes.entry(status).or_default() += 1;
    }
    assert!(
        outcomes.get("APPROVED").copied().unwrap_or(0) > 50,
        "{outcomes:?}"
    );
    assert!(
        outcomes.get("REJECTED").copied().unwrap_or(0) >= 40,
        "declined cards and short stock: {outcomes:?}"
    );
    // Every saga terminal; compensations settle shortly after the order's verdict.
    for order in &orders {
        let saga = app.saga_terminal(*order, FINISH).await;
        assert_ne!(saga["saga"]["state"], "FAILED");
    }
    let overdue: Value = app
        .http
        .get(format!("{}/sagas/overdue", app.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overdue["count"], 0);
    for sku in skus {
        let (available, reserved) = app.stock(sku).await;
        let sold = sold.get(sku).copied().unwrap_or(0);
        assert_eq!(available + reserved, initial, "{sku}: stock conserved");
        assert_eq!(
            reserved, sold,
            "{sku}: what is held is exactly what approved orders bought"
        );
    }
    let (charged, refunded): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(amount_cents) FILTER (WHERE charge_id IS NOT NULL), 0)::bigint,
                COALESCE(sum(amount_cents) FILTER (WHERE refund_id IS NOT NULL), 0)::bigint FROM payments",
    )
    .fetch_one(&app.pools.payment)
    .await
    .unwrap();
    assert_eq!(
        charged - refunded,
        approved_total,
        "charges - refunds = sum of approved orders"
    );
    let stats = app.provider.stats();
    assert_eq!(
        stats.charges as usize,
        outcomes["APPROVED"] + stats.refunds as usize,
        "{stats:?}"
    );
    if let Ok(app) = std::sync::Arc::try_unwrap(app) {
        app.stop().await;
    }
}

/// The order service's options of the order-deadline tests: a fast sweep, and `deadline`.
fn order_deadline(deadline: Duration) -> order_service::OrderConfig {
    order_service::OrderConfig {
        order_deadline_secs: deadline.as_secs(),
        order_sweep_interval_ms: 200,
        ..order_service::OrderConfig::default()
    }
}

/// Issue 16 item 1: an OrderPlaced the orchestrator cannot read — a schema reference it does
/// not know, as from a newer writer during a rolling upgrade — is dead-lettered and starts no
/// saga, yet its order does not stay PENDING: the order deadline rejects it and announces
/// OrderRejected. An overdue order whose expiry fails (its row does not decode) is reported
/// (`order_deadline_failures_total`) and postponed, and holds up no other.
#[tokio::test]
async fn an_order_placed_with_an_unknown_schema_ends_rejected_within_the_order_deadline() {
    let _broker = broker_lock().read().await;
    let deadline = Duration::from_secs(3);
    let app = spawn_platform(Options {
        orders: order_deadline(deadline),
        ..Options::default()
    })
    .await;
    // A PENDING order an hour overdue whose items do not decode: the first row of every sweep.
    let broken = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO orders (id, customer_id, status, items, total_cents, currency, payment_method,
                             created_at, updated_at)
         VALUES ($1, $2, 'PENDING', '{\"not\": \"lines\"}', 0, 'EUR', 'pm_card_visa',
                 now() - interval '1 hour', now() - interval '1 hour')",
    )
    .bind(broken)
    .bind(Uuid::new_v4())
    .execute(&app.pools.order)
    .await
    .unwrap();
    // The OrderPlaced written next names a schema version no reader knows.
    sqlx::raw_sql(
        "CREATE FUNCTION unknown_schema() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.message_type = 'OrderPlaced' THEN
                 NEW.headers := jsonb_set(NEW.headers, '{ce_dataschema}',
                     to_jsonb(split_part(NEW.headers->>'ce_dataschema', '@', 1) || '@0'));
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER unknown_schema BEFORE INSERT ON outbox
             FOR EACH ROW EXECUTE FUNCTION unknown_schema();",
    )
    .execute(&app.pools.order)
    .await
    .unwrap();
    let placed = std::time::Instant::now();
    let order = app.place(&[("SKU-UNKNOWN", 1, 100)], "pm_card_visa").await;
    sqlx::raw_sql("DROP TRIGGER unknown_schema ON outbox")
        .execute(&app.pools.order)
        .await
        .unwrap();

    // The orchestrator dead-letters the OrderPlaced for its schema...
    let key = order.to_string();
    let dead = kafka_probe::read_until(
        &app.kafka,
        &topics::dlq(topics::ORDERS_EVENTS),
        FINISH,
        |records| {
            records.iter().any(|r| {
                r.key.as_deref() == Some(key.as_str())
                    && r.header(header_names::DLQ_CONSUMER).as_deref()
                        == Some(saga_orchestrator::NAME)
            })
        },
    )
    .await;
    let dead = dead
        .iter()
        .find(|r| {
            r.key.as_deref() == Some(key.as_str())
                && r.header(header_names::DLQ_CONSUMER).as_deref() == Some(saga_orchestrator::NAME)
        })
        .unwrap();
    assert_eq!(
        dead.header(header_names::DLQ_ERROR_KIND).as_deref(),
        Some("unknown_schema"),
        "{:?}",
        dead.header(header_names::DLQ_REASON)
    );

    // ...yet the order ends REJECTED for its deadline, well within a bound...
    let done = app.terminal(order, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "REJECTED", "{done}");
    let reason = order_service::deadline_reason(deadline);
    assert_eq!(done["reason"], reason.as_str(), "{done}");
    assert!(
        placed.elapsed() < Duration::from_secs(30),
        "{:?}",
        placed.elapsed()
    );
    // ...announced on orders.events...
    let events = kafka_probe::read_until(&app.kafka, topics::ORDERS_EVENTS, FINISH, |records| {
        records.iter().any(|r| {
            r.key.as_deref() == Some(key.as_str())
                && r.header(header_names::TYPE).as_deref() == Some("OrderRejected")
        })
    })
    .await;
    let rejected = events
        .iter()
        .find(|r| {
            r.key.as_deref() == Some(key.as_str())
                && r.header(header_names::TYPE).as_deref() == Some("OrderRejected")
        })
        .unwrap();
    let envelope = rejected.envelope();
    match Message::decode(
        &envelope.message_type,
        Some(&envelope.schema_ref),
        rejected.payload.as_deref().unwrap(),
    )
    .unwrap()
    {
        Message::OrderRejected(m) => {
            assert_eq!((m.order_id, m.reason.as_str()), (order, reason.as_str()))
        }
        other => panic!("{other:?}"),
    }
    // ...and no saga was ever started for it.
    assert_eq!(
        count(
            &app.pools.saga,
            "SELECT count(*) FROM sagas WHERE order_id = $1",
            order
        )
        .await,
        0
    );

    // The broken order was skipped and reported: still PENDING, tried again later.
    wait::until("the broken order postponed", FINISH, || async {
        let (status, postponed): (String, bool) = sqlx::query_as(
            "SELECT status, COALESCE(deadline_retry_at > now(), false) FROM orders WHERE id = $1",
        )
        .bind(broken)
        .fetch_one(&app.pools.order)
        .await
        .unwrap();
        assert_eq!(status, "PENDING");
        postponed.then_some(())
    })
    .await;
    let metrics = app.metrics().await;
    assert!(
        counter_sum(&metrics, "order_deadline_failures_total") >= 1.0,
        "{metrics}"
    );
    assert!(counter_sum(&metrics, "order_deadline_expired_total") >= 1.0);
    app.stop().await;
}

/// Issue 16 item 1, the saga's side: a saga still running when its order's deadline passed must
/// not approve it later. The order service keeps the order REJECTED and answers the late
/// ApproveOrder with OrderRejected (not a dead letter); the saga, told the order is rejected,
/// refunds the charge and releases the stock, and ends REJECTED.
#[tokio::test]
async fn a_late_approval_for_an_order_rejected_by_its_deadline_leaves_it_rejected_and_gives_back_stock_and_money()
 {
    let _broker = broker_lock().read().await;
    let deadline = Duration::from_secs(order_service::DEFAULT_ORDER_DEADLINE_SECS);
    let app = spawn_platform(Options {
        orders: order_deadline(deadline),
        ..Options::default()
    })
    .await;
    app.set_stock("SKU-LATE", 10).await;
    // Hold the order service's consumer back: it cannot write its inbox row, so the saga's
    // ApproveOrder waits (the API and the deadline sweeper do not touch the inbox).
    let mut hold = app.pools.order.begin().await.unwrap();
    sqlx::query("LOCK TABLE inbox IN SHARE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let order = app.place(&[("SKU-LATE", 3, 1000)], "pm_card_visa").await;
    wait::until("the saga approving", FINISH, || async {
        (app.saga(order).await["saga"]["state"] == "APPROVING").then_some(())
    })
    .await;
    assert_eq!(app.stock("SKU-LATE").await, (7, 3), "stock held");
    assert_eq!(charges(&app, order).await, 1, "charged");

    // The order's deadline passes before the approval is applied (placed "3 hours ago").
    sqlx::query("UPDATE orders SET created_at = now() - interval '3 hours' WHERE id = $1")
        .bind(order)
        .execute(&app.pools.order)
        .await
        .unwrap();
    let done = app.terminal(order, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "REJECTED", "{done}");
    let reason = order_service::deadline_reason(deadline);
    assert_eq!(done["reason"], reason.as_str(), "{done}");
    // The saga hears of it and starts giving back.
    wait::until("the saga compensating", FINISH, || async {
        let state = app.saga(order).await["saga"]["state"].clone();
        matches!(state.as_str(), Some("COMPENSATING" | "REJECTING")).then_some(())
    })
    .await;

    // Now the late ApproveOrder is applied: answered with OrderRejected, the order unchanged.
    hold.rollback().await.unwrap();
    let approve: Uuid = sqlx::query_scalar(
        "SELECT message_id FROM outbox WHERE msg_key = $1::text AND message_type = 'ApproveOrder'
          ORDER BY id LIMIT 1",
    )
    .bind(order)
    .fetch_one(&app.pools.saga)
    .await
    .unwrap();
    wait::until(
        "the ApproveOrder answered with OrderRejected",
        FINISH,
        || async {
            let answered: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox
              WHERE msg_key = $1::text AND message_type = 'OrderRejected'
                AND headers->>'causation_id' = $2::text",
            )
            .bind(order)
            .bind(approve)
            .fetch_one(&app.pools.order)
            .await
            .unwrap();
            (answered == 1).then_some(())
        },
    )
    .await;
    let saga = app.saga_terminal(order, FINISH).await;
    assert_eq!(saga["saga"]["state"], "REJECTED", "{saga}");
    let history = saga["history"].as_array().unwrap();
    assert!(
        history.iter().any(|h| h["from_state"] == "APPROVING"
            && h["to_state"] == "COMPENSATING"
            && h["trigger"] == "OrderRejected"),
        "{history:?}"
    );
    let after = app.order(order).await;
    assert_eq!(
        (after["status"].as_str(), after["reason"].as_str()),
        (Some("REJECTED"), Some(reason.as_str())),
        "{after}"
    );
    assert_eq!(app.stock("SKU-LATE").await, (10, 0), "stock given back");
    let refunded = count(
        &app.pools.payment,
        "SELECT count(*) FROM payments WHERE order_id = $1 AND refund_id IS NOT NULL",
        order,
    )
    .await;
    assert_eq!(refunded, 1, "the charge refunded");
    let stats = app.provider.stats();
    assert_eq!((stats.charges, stats.refunds), (1, 1), "{stats:?}");
    app.stop().await;
}

/// Saga retention: APPROVED and REJECTED sagas that ended more than the retention ago are
/// deleted with their history, in batches (more rows than one batch here); a FAILED saga (held
/// for an operator), a saga in flight and a recently ended one stay, with their history.
#[tokio::test]
async fn ended_sagas_past_the_retention_are_deleted_with_their_history_failed_ones_stay() {
    let db = sagaflow_tests::database("saga").await;
    let retention = Duration::from_secs(30 * 24 * 3600);
    let batch = saga_orchestrator::RETENTION_BATCH;
    // `age` in days since the saga last changed; a deadline exactly while in flight.
    let insert = |state: &'static str, age_days: i32, n: i64| {
        let pool = db.pool.clone();
        async move {
            let ids: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO sagas (order_id, state, data, deadline, updated_at)
                 SELECT gen_random_uuid(), $1, '{}',
                        CASE WHEN $1 IN ('APPROVED', 'REJECTED', 'FAILED') THEN NULL ELSE now() END,
                        now() - make_interval(days => $2)
                   FROM generate_series(1, $3)
                 RETURNING order_id",
            )
            .bind(state)
            .bind(age_days)
            .bind(n)
            .fetch_all(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO saga_history (order_id, to_state, trigger, note)
                 SELECT id, $2, 'OrderPlaced', 'test' FROM unnest($1::uuid[]) AS id",
            )
            .bind(&ids)
            .bind(state)
            .execute(&pool)
            .await
            .unwrap();
            ids
        }
    };
    insert("APPROVED", 31, batch + 1).await;
    insert("REJECTED", 31, 2).await;
    let kept = [
        insert("APPROVED", 29, 1).await,
        insert("FAILED", 90, 1).await,
        insert("APPROVING", 31, 1).await,
    ]
    .concat();

    let deleted = saga_orchestrator::delete_ended(&db.pool, retention)
        .await
        .unwrap();

    assert_eq!(deleted, batch as u64 + 3);
    let mut left: Vec<Uuid> = sqlx::query_scalar("SELECT order_id FROM sagas")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut with_history: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT order_id FROM saga_history")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut kept = kept.to_vec();
    for ids in [&mut left, &mut with_history, &mut kept] {
        ids.sort();
    }
    assert_eq!(
        left, kept,
        "only the recent, FAILED and in-flight sagas stay"
    );
    assert_eq!(with_history, kept, "the history goes with its saga");
}
