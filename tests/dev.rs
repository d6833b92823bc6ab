//! Running it like a user: `sagaflow dev` as a subprocess, and one trace per order.

use std::process::Stdio;
use std::time::Duration;

use sagaflow_schemas::{header_names, topics};
use sagaflow_tests::kafka_probe::read_all;
use sagaflow_tests::platform::{Options, order_body, spawn_platform};
use sagaflow_tests::{broker_lock, infra, sagaflow_binary, wait};
use serde_json::Value;
use uuid::Uuid;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, however it ends.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test]
async fn sagaflow_dev_runs_the_platform_in_one_process() {
    let infra = infra();
    let server = infra
        .postgres_admin_url
        .rsplit_once('/')
        .unwrap()
        .0
        .to_string();
    let base = format!("dev_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let (http_port, broker_port, provider_port) = (free_port(), free_port(), free_port());
    let child = tokio::process::Command::new(sagaflow_binary())
        .arg("dev")
        .env("DATABASE_URL", format!("{server}/{base}"))
        .env_remove("KAFKA_BROKERS")
        .env("SAGAFLOW_BROKER_PORT", broker_port.to_string())
        .env("SAGAFLOW_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env(
            "SIMULATED_PROVIDER_ADDR",
            format!("127.0.0.1:{provider_port}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start sagaflow dev");
    let _child = Child(child);
    let base_url = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::new();
    wait::until(
        "sagaflow dev to be ready",
        Duration::from_secs(60),
        || async {
            let response = http
                .get(format!("{base_url}/health/ready"))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        },
    )
    .await;

    let mut ids = Vec::new();
    for method in ["pm_card_visa", "pm_card_chargeDeclined"] {
        let response = http
            .post(format!("{base_url}/orders"))
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&order_body(&[("SKU-1", 1, 999)], method))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().to_string());
    }
    for (id, expected) in ids.iter().zip(["APPROVED", "REJECTED"]) {
        let status = wait::until(
            &format!("order {id} to finish"),
            Duration::from_secs(10),
            || async {
                let order: Value = http
                    .get(format!("{base_url}/orders/{id}"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let status = order["status"].as_str()?.to_string();
                (status != "PENDING").then_some(status)
            },
        )
        .await;
        assert_eq!(status, expected, "order {id}");
    }
    let metrics = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "outbox_published_total",
        "outbox_backlog",
        "consumer_messages_total",
        "sagas{",
        "http_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics exposes {name}");
    }
}

#[tokio::test]
async fn the_trace_id_of_the_post_is_on_every_message_of_the_saga() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    app.set_stock("SKU-T", 5).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .http
        .post(format!("{}/orders", app.base_url))
        .header("Idempotency-Key", "trace-1")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&order_body(&[("SKU-T", 1, 100)], "pm_card_visa"))
        .send()
        .await
        .unwrap();
    let order: Value = response.json().await.unwrap();
    let id = Uuid::parse_str(order["order_id"].as_str().unwrap()).unwrap();
    app.saga_terminal(id, Duration::from_secs(60)).await;
    wait::until("the notification", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE order_id = $1")
            .bind(id)
            .fetch_one(&app.pools.notification)
            .await
            .unwrap();
        (n == 1).then_some(())
    })
    .await;
    let mut types = Vec::new();
    for topic in topics::ALL {
        for record in read_all(&app.kafka, topic).await {
            if record.key.as_deref() != Some(&id.to_string()) {
                continue;
            }
            let traceparent = record
                .header(header_names::TRACEPARENT)
                .expect("traceparent header");
            assert!(
                traceparent.contains(trace),
                "{topic}: {traceparent} continues the POST's trace"
            );
            types.push(record.header(header_names::TYPE).unwrap());
        }
    }
    types.sort();
    assert_eq!(
        types,
        [
            "ApproveOrder",
            "AuthorizePayment",
            "NotificationSent",
            "OrderApproved",
            "OrderPlaced",
            "PaymentAuthorized",
            "ReserveStock",
            "StockReserved"
        ],
        "every message of the saga"
    );
    app.stop().await;
}
