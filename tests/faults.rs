//! The fault catalogue: components killed, the database restarted, the broker frozen,
//! poison messages — each ends with the shared invariant check (tests/support/invariants.rs).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use sagaflow_common::kafka as clients;
use sagaflow_schemas::{header_names, topics};
use sagaflow_tests::kafka_probe::read_until;
use sagaflow_tests::platform::{Options, TestApp, order_body, spawn_platform};
use sagaflow_tests::{broker_lock, docker, infra, invariants};
use uuid::Uuid;

const SKUS: [&str; 3] = ["SKU-F1", "SKU-F2", "SKU-F3"];

async fn stocked(app: &TestApp, units: i64) -> HashMap<String, i64> {
    let mut initial = HashMap::new();
    for sku in SKUS {
        app.set_stock(sku, units).await;
        initial.insert(sku.to_string(), units);
    }
    initial
}

/// Place `n` mixed orders (some declined, some too large); returns the acknowledged ids.
async fn place_mixed(app: &TestApp, n: usize) -> Vec<Uuid> {
    let requests = (0..n).map(|i| {
        let method = if i % 6 == 0 {
            "pm_card_chargeDeclined"
        } else {
            "pm_card_visa"
        };
        let quantity = if i % 17 == 0 { 500 } else { (i % 3 + 1) as i64 };
        let body = order_body(&[(SKUS[i % 3], quantity, 100 + i as i64)], method);
        async move { app.post_order(&body, &Uuid::new_v4().to_string()).await }
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 202, "{body}");
            Uuid::parse_str(body["order_id"].as_str().unwrap()).unwrap()
        })
        .collect()
}

/// No saga state ever went backwards: once terminal, every later history row stays there.
async fn assert_no_state_went_backwards(app: &TestApp) {
    let regressions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM saga_history
          WHERE from_state IN ('APPROVED', 'REJECTED', 'FAILED') AND to_state <> from_state",
    )
    .fetch_one(&app.pools.saga)
    .await
    .unwrap();
    assert_eq!(regressions, 0, "a terminal saga moved");
}

#[tokio::test]
async fn every_component_killed_repeatedly_during_sagas_loses_and_duplicates_nothing() {
    let _broker = broker_lock().read().await;
    let mut app = spawn_platform(Options::default()).await;
    let initial = stocked(&app, 150).await;
    let orders = place_mixed(&app, 150).await;
    for kill in 0..4 {
        // Let some work happen, then crash everything mid-flight.
        tokio::time::sleep(Duration::from_millis(300 + 200 * kill)).await;
        app.crash_and_restart().await;
    }
    let last_kill = Instant::now();
    let report = invariants::check(&app, &initial, Duration::from_secs(30)).await;
    assert!(
        last_kill.elapsed() < Duration::from_secs(30),
        "all terminal within 30 s of the last kill"
    );
    assert_eq!(report.orders as usize, orders.len());
    assert!(report.approved > 0 && report.rejected > 0, "{report:?}");
    assert_no_state_went_backwards(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn poison_unknown_and_envelope_less_messages_are_dead_lettered_and_the_partitions_move_on() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    let initial = stocked(&app, 50).await;
    let producer = clients::producer(&app.kafka).unwrap();
    let topic = app.kafka.topic(topics::INVENTORY_COMMANDS);
    let envelope = |ce_type: &str| {
        let id = Uuid::now_v7().to_string();
        let correlation = Uuid::now_v7().to_string();
        vec![
            (header_names::ID.to_string(), id),
            (header_names::TYPE.to_string(), ce_type.to_string()),
            (header_names::SOURCE.to_string(), "fault-test".to_string()),
            (
                header_names::TIME.to_string(),
                chrono::Utc::now().to_rfc3339(),
            ),
            (
                header_names::SCHEMA.to_string(),
                sagaflow_schemas::registry::current("ReserveStock")
                    .unwrap()
                    .reference
                    .clone(),
            ),
            (header_names::CORRELATION_ID.to_string(), correlation),
        ]
    };
    /// (expected dlq_error_kind, headers, payload)
    type Poison<'a> = (&'a str, Vec<(String, String)>, Vec<u8>);
    let poison: Vec<Poison> = vec![
        (
            "undecodable",
            envelope("ReserveStock"),
            vec![0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        ("unknown_type", envelope("FrobnicateStock"), vec![0x00]),
        ("malformed_envelope", vec![], b"{\"not\":\"avro\"}".to_vec()),
    ];
    // Spread over every partition (keys hash differently), ahead of real orders.
    for (i, (_, headers, payload)) in poison.iter().cycle().take(12).enumerate() {
        let key = format!("poison-{i}");
        let headers = clients::to_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let orders = place_mixed(&app, 20).await;
    for order in &orders {
        app.terminal(*order, Duration::from_secs(60)).await;
    }
    let dead = read_until(
        &app.kafka,
        &topics::dlq(topics::INVENTORY_COMMANDS),
        Duration::from_secs(60),
        |r| r.len() >= 12,
    )
    .await;
    assert_eq!(dead.len(), 12);
    for (kind, _, _) in &poison {
        let of_kind: Vec<_> = dead
            .iter()
            .filter(|r| r.header(header_names::DLQ_ERROR_KIND).as_deref() == Some(*kind))
            .collect();
        assert_eq!(of_kind.len(), 4, "{kind}");
        for record in of_kind {
            assert!(!record.header(header_names::DLQ_REASON).unwrap().is_empty());
            assert_eq!(
                record.header(header_names::DLQ_SOURCE_TOPIC).as_deref(),
                Some(topics::INVENTORY_COMMANDS)
            );
            assert_eq!(
                record.header(header_names::DLQ_CONSUMER).as_deref(),
                Some("inventory-service")
            );
            assert!(record.key.as_deref().unwrap().starts_with("poison-"));
        }
    }
    invariants::check(&app, &initial, Duration::from_secs(60)).await;
    app.stop().await;
}

#[tokio::test]
async fn postgres_restarted_under_load_loses_no_acknowledged_order() {
    let Some(postgres) = infra().postgres_container.clone() else {
        eprintln!("skipped: needs the harness's PostgreSQL container");
        return;
    };
    let _alone = broker_lock().write().await;
    let app = spawn_platform(Options::default()).await;
    let initial = stocked(&app, 400).await;
    let mut acknowledged = Vec::new();
    let mut unavailable = 0;
    let started = Instant::now();
    let mut restarted = false;
    let mut i = 0usize;
    while started.elapsed() < Duration::from_secs(25) {
        if !restarted && started.elapsed() > Duration::from_secs(3) {
            restarted = true;
            let pg = postgres.clone();
            tokio::task::spawn_blocking(move || docker(&["restart", "-t", "2", &pg]));
        }
        let body = order_body(&[(SKUS[i % 3], 1, 100)], "pm_card_visa");
        let sent = Instant::now();
        let response = app
            .http
            .post(format!("{}/orders", app.base_url))
            .header("Idempotency-Key", format!("pg-{i}"))
            .json(&body)
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        let elapsed = sent.elapsed();
        match response {
            Ok(r) if r.status() == 202 => {
                let body: serde_json::Value = r.json().await.unwrap();
                acknowledged.push(Uuid::parse_str(body["order_id"].as_str().unwrap()).unwrap());
            }
            Ok(r) if r.status() == 503 => unavailable += 1,
            Ok(r) => panic!("unexpected {} while PostgreSQL restarts", r.status()),
            Err(e) => panic!("request hung or failed instead of answering 503: {e}"),
        }
        assert!(
            elapsed < Duration::from_secs(10),
            "a request took {elapsed:?}: handlers must answer, not hang"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(restarted);
    eprintln!(
        "{} acknowledged, {unavailable} answered 503 while PostgreSQL restarted",
        acknowledged.len()
    );
    let report = invariants::check(&app, &initial, Duration::from_secs(60)).await;
    assert_eq!(
        report.orders as usize,
        acknowledged.len(),
        "every acknowledged order exists, no other"
    );
    for id in &acknowledged {
        assert_ne!(app.order(*id).await["status"], "PENDING");
    }
    app.stop().await;
}

#[tokio::test]
#[ignore = "known issue of the embedded tansu broker (vendor/README.md): after it is frozen past \
            the session timeout, groups re-form but ghost members from queued JoinGroups keep \
            part of the partitions; run with --ignored"]
async fn broker_frozen_longer_than_the_delivery_timeout_recovers_without_loss_or_duplicates() {
    let Some(broker) = infra().kafka_container.clone() else {
        eprintln!("skipped: needs the harness's broker container");
        return;
    };
    let _alone = broker_lock().write().await;
    let app = spawn_platform(Options {
        step_timeout: Duration::from_secs(60),
        ..Options::default()
    })
    .await;
    let initial = stocked(&app, 200).await;
    let first = place_mixed(&app, 40).await;
    docker(&["pause", &broker]);
    // Orders keep being accepted while the broker is frozen (the outbox holds them).
    let during = place_mixed(&app, 40).await;
    tokio::time::sleep(Duration::from_secs(20)).await; // longer than message.timeout.ms (15 s)
    docker(&["unpause", &broker]);
    let report = invariants::check(&app, &initial, Duration::from_secs(120)).await;
    assert_eq!(report.orders as usize, first.len() + during.len());
    app.stop().await;
}
