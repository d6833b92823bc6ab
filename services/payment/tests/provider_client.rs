//! The provider client against the simulated provider on loopback: declines, idempotent
//! charges and refunds, retries, the circuit breaker, unknown outcomes, the control API.

use std::time::Duration;

use payment_service::client::{
    ChargeOutcome, ChargeRequest, CircuitState, ClientSettings, ProviderClient, ProviderError,
    charge_key, refund_key,
};
use payment_service::provider::{ProviderControl, ProviderFaults, ProviderStats, spawn_provider};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Simulator {
    control: ProviderControl,
    url: String,
    shutdown: CancellationToken,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn simulator(faults: ProviderFaults) -> Simulator {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let control = spawn_provider(listener, faults, shutdown.clone()).await;
    Simulator {
        control,
        url,
        shutdown,
    }
}

/// Fast retries; a circuit that stays open for the whole test unless told otherwise.
fn settings(url: &str) -> ClientSettings {
    ClientSettings {
        base_url: url.to_string(),
        timeout: Duration::from_secs(2),
        max_attempts: 3,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        circuit_failures: 5,
        circuit_open: Duration::from_secs(600),
        circuit_open_max: Duration::from_secs(600),
    }
}

fn request(order_id: Uuid, payment_method: &str) -> ChargeRequest {
    ChargeRequest {
        amount: 4_200,
        currency: "EUR".into(),
        payment_method: payment_method.into(),
        idempotency_key: charge_key(order_id),
    }
}

#[tokio::test]
async fn a_repeated_charge_returns_the_first_charge_and_moves_money_once() {
    let sim = simulator(ProviderFaults::default()).await;
    let client = ProviderClient::new(settings(&sim.url)).unwrap();
    let order = Uuid::now_v7();

    let ChargeOutcome::Charged(first) = client
        .charge(&request(order, "pm_card_visa"))
        .await
        .unwrap()
    else {
        panic!("expected a charge");
    };
    let ChargeOutcome::Charged(again) = client
        .charge(&request(order, "pm_card_visa"))
        .await
        .unwrap()
    else {
        panic!("expected the same charge");
    };
    assert!(first.id.starts_with("ch_"), "{first:?}");
    assert_eq!(first, again);
    assert_eq!(first.amount, 4_200);
    assert_eq!(sim.control.stats().charges, 1);

    // The same key with other parameters is refused, not charged.
    let mut changed = request(order, "pm_card_visa");
    changed.amount = 1;
    match client.charge(&changed).await {
        Err(ProviderError::Refused { status: 400, code }) => assert_eq!(code, "idempotency_error"),
        other => panic!("expected an idempotency error, got {other:?}"),
    }
    assert_eq!(sim.control.stats().charges, 1);
}

#[tokio::test]
async fn a_decline_is_an_answer_and_is_not_retried() {
    let sim = simulator(ProviderFaults::default()).await;
    let client = ProviderClient::new(settings(&sim.url)).unwrap();

    let outcome = client
        .charge(&request(Uuid::now_v7(), "pm_card_chargeDeclined"))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ChargeOutcome::Declined {
            code: "card_declined".into()
        }
    );
    let stats = sim.control.stats();
    assert_eq!((stats.requests, stats.declines, stats.charges), (1, 1, 0));
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn refunds_are_idempotent_and_charges_can_be_found_by_key() {
    let sim = simulator(ProviderFaults::default()).await;
    let client = ProviderClient::new(settings(&sim.url)).unwrap();
    let order = Uuid::now_v7();
    let ChargeOutcome::Charged(charge) = client
        .charge(&request(order, "pm_card_visa"))
        .await
        .unwrap()
    else {
        panic!("expected a charge");
    };

    let found = client.find_charge(&charge_key(order)).await.unwrap();
    assert_eq!(found.map(|c| c.id), Some(charge.id.clone()));
    assert_eq!(
        client
            .find_charge(&charge_key(Uuid::now_v7()))
            .await
            .unwrap(),
        None
    );

    let refund = client.refund(&charge.id, &refund_key(order)).await.unwrap();
    let again = client.refund(&charge.id, &refund_key(order)).await.unwrap();
    assert!(refund.id.starts_with("re_"), "{refund:?}");
    assert_eq!(refund, again);
    assert_eq!(
        sim.control.stats(),
        ProviderStats {
            charges: 1,
            refunds: 1,
            declines: 0,
            injected_failures: 0,
            requests: 5,
        }
    );
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let sim = simulator(ProviderFaults {
        error_rate: 1.0,
        ..ProviderFaults::default()
    })
    .await;
    let client = ProviderClient::new(settings(&sim.url)).unwrap();

    let error = client
        .charge(&request(Uuid::now_v7(), "pm_card_visa"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ProviderError::Unavailable { .. }),
        "{error:?}"
    );
    // 503 means "not processed": no money can have moved.
    assert!(!error.outcome_unknown());
    assert_eq!(sim.control.stats().requests, 3, "three attempts");
    assert_eq!(sim.control.stats().charges, 0);

    // Once the provider recovers, the same call succeeds.
    sim.control.set_error_rate(0.0);
    let outcome = client
        .charge(&request(Uuid::now_v7(), "pm_card_visa"))
        .await
        .unwrap();
    assert!(matches!(outcome, ChargeOutcome::Charged(_)));
}

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures_and_then_fails_fast() {
    let sim = simulator(ProviderFaults {
        down: true,
        ..ProviderFaults::default()
    })
    .await;
    let client = ProviderClient::new(settings(&sim.url)).unwrap();

    // 3 attempts, then 2 more: the fifth consecutive failure opens the circuit.
    for _ in 0..2 {
        let error = client
            .charge(&request(Uuid::now_v7(), "pm_card_visa"))
            .await
            .unwrap_err();
        assert!(!error.outcome_unknown(), "{error:?}");
    }
    assert_eq!(client.circuit_state(), CircuitState::Open);
    assert_eq!(sim.control.stats().requests, 5);

    // Open: calls fail at once without reaching the provider, even once it is back.
    sim.control.set_down(false);
    let error = client
        .charge(&request(Uuid::now_v7(), "pm_card_visa"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("circuit open"), "{error}");
    assert!(!error.outcome_unknown());
    assert_eq!(sim.control.stats().requests, 5);
}

#[tokio::test]
async fn a_half_open_circuit_closes_on_the_first_success() {
    let sim = simulator(ProviderFaults {
        down: true,
        ..ProviderFaults::default()
    })
    .await;
    // A zero open period: the call after the circuit opened is the half-open probe.
    let client = ProviderClient::new(ClientSettings {
        circuit_failures: 2,
        circuit_open: Duration::ZERO,
        circuit_open_max: Duration::ZERO,
        ..settings(&sim.url)
    })
    .unwrap();

    client
        .charge(&request(Uuid::now_v7(), "pm_card_visa"))
        .await
        .unwrap_err();
    assert_eq!(client.circuit_state(), CircuitState::Open);

    sim.control.set_down(false);
    let outcome = client
        .charge(&request(Uuid::now_v7(), "pm_card_visa"))
        .await
        .unwrap();
    assert!(matches!(outcome, ChargeOutcome::Charged(_)));
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn a_timeout_leaves_the_outcome_unknown() {
    let sim = simulator(ProviderFaults {
        latency_ms: 5_000,
        ..ProviderFaults::default()
    })
    .await;
    let client = ProviderClient::new(ClientSettings {
        timeout: Duration::from_millis(50),
        max_attempts: 1,
        ..settings(&sim.url)
    })
    .unwrap();

    let error = client
        .charge(&request(Uuid::now_v7(), "pm_card_visa"))
        .await
        .unwrap_err();
    assert!(error.outcome_unknown(), "{error:?}");
    assert!(error.to_string().contains("timeout"), "{error}");
}

#[tokio::test]
async fn faults_can_be_changed_and_stats_read_over_http() {
    let sim = simulator(ProviderFaults::default()).await;
    let http = reqwest::Client::new();

    let response = http
        .post(format!("{}/_control", sim.url))
        .json(&serde_json::json!({"down": true, "latency_ms": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let faults: ProviderFaults = response.json().await.unwrap();
    assert_eq!(
        faults,
        ProviderFaults {
            latency_ms: 5,
            error_rate: 0.0,
            down: true,
            in_flight_conflict: false,
        }
    );
    assert_eq!(sim.control.faults(), faults);

    let charge = http
        .post(format!("{}/v1/charges", sim.url))
        .json(&serde_json::json!({"amount": 100, "currency": "EUR", "payment_method": "pm_card_visa", "idempotency_key": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(charge.status(), 503);

    let invalid = http
        .post(format!("{}/_control", sim.url))
        .json(&serde_json::json!({"error_rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422);

    let stats: serde_json::Value = http
        .get(format!("{}/_stats", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["charges"], 0);
    assert_eq!(stats["refunds"], 0);
    assert_eq!(stats["injected_failures"], 1);
}
