//! Contracts on the wire: a message written through the outbox and relay is readable by
//! `sagaflow tail` as one JSON line with every envelope header and the decoded value; a value
//! that cannot be decoded is shown as such instead of crashing the tool.

use std::time::Duration;

use rdkafka::producer::FutureRecord;
use sagaflow_messaging::{Origin, Relay, RelayConfig, enqueue};
use sagaflow_runtime::kafka as clients;
use sagaflow_schemas::{OrderItem, OrderPlaced, header_names as h, registry, topics};
use sagaflow_tests::{broker_lock, database, kafka, sagaflow_binary};
use serde_json::Value;
use uuid::Uuid;

#[tokio::test]
async fn tail_prints_each_message_as_json_with_every_header_and_the_decoded_value() {
    let _broker = broker_lock().read().await;
    let db = database("order").await;
    let config = kafka();
    clients::ensure_topics(&config, &[topics::ORDERS_EVENTS])
        .await
        .unwrap();

    let order_id = Uuid::now_v7();
    let placed = OrderPlaced {
        order_id,
        customer_id: Uuid::now_v7(),
        items: vec![OrderItem {
            sku: "SKU-1".into(),
            quantity: 2,
            unit_price_cents: 1250,
        }],
        total_cents: 2500,
        currency: "EUR".into(),
        payment_method: "pm_card_visa".into(),
        placed_at: 1_763_000_000_000,
    };
    let cause = Uuid::now_v7();
    let origin = Origin {
        source: "contract-test",
        correlation_id: order_id,
        causation_id: Some(cause),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    };
    let mut tx = db.pool.begin().await.unwrap();
    let message_id = enqueue(&mut tx, &placed.clone().into(), &origin)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    Relay::new(
        db.pool.clone(),
        clients::producer(&config).unwrap(),
        config.clone(),
        RelayConfig::new("t"),
    )
    .drain()
    .await
    .unwrap();
    // And a value no schema can read, with a valid-looking schema header.
    let garbage_headers = clients::to_headers([(
        h::SCHEMA,
        registry::current("OrderPlaced").unwrap().reference.as_str(),
    )]);
    let topic = config.topic(topics::ORDERS_EVENTS);
    clients::producer(&config)
        .unwrap()
        .send(
            FutureRecord::to(&topic)
                .key("garbage")
                .payload(&[0xffu8, 0xff, 0xff, 0x01][..])
                .headers(garbage_headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let output = tokio::process::Command::new(sagaflow_binary())
        .args(["tail", topics::ORDERS_EVENTS, "--from-beginning"])
        .env("KAFKA_BROKERS", &config.brokers)
        .env("SAGAFLOW_TOPIC_PREFIX", &config.topic_prefix)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "tail failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let line = lines
        .iter()
        .find(|l| l["key"] == order_id.to_string())
        .expect("the order's message");
    let headers = &line["headers"];
    assert_eq!(headers[h::ID], message_id.to_string());
    assert_eq!(headers[h::TYPE], "OrderPlaced");
    assert_eq!(headers[h::SOURCE], "contract-test");
    assert_eq!(headers[h::CORRELATION_ID], order_id.to_string());
    assert_eq!(headers[h::CAUSATION_ID], cause.to_string());
    assert!(headers[h::TIME].as_str().unwrap().ends_with('Z'));
    assert!(
        headers[h::TRACEPARENT]
            .as_str()
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "same trace"
    );
    assert_eq!(
        headers[h::SCHEMA],
        registry::current("OrderPlaced").unwrap().reference
    );
    assert_eq!(line["value"]["order_id"], order_id.to_string());
    assert_eq!(line["value"]["total_cents"], 2500);
    assert_eq!(line["value"]["items"][0]["sku"], "SKU-1");
    assert!(line["partition"].as_i64().unwrap() >= 0 && line["offset"].as_i64().unwrap() >= 0);

    let garbage = lines.iter().find(|l| l["key"] == "garbage").unwrap();
    assert!(garbage["value"]["undecodable"].is_string(), "{garbage}");
}
