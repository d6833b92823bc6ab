//! The load of a chaos run: orders placed open-loop at a fixed rate, each retried with its
//! Idempotency-Key until acknowledged (faults make requests fail; the key makes a retry
//! safe), and the stock seeded before it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the load did, counted as it goes (read by the progress lines and the report).
#[derive(Default)]
pub(super) struct Load {
    pub sent: AtomicU64,
    pub acknowledged: AtomicU64,
    pub retried: AtomicU64,
    pub rejected_by_api: AtomicU64,
    pub unacknowledged: AtomicU64,
    /// The orders acknowledged (202): each must exist and end APPROVED or REJECTED.
    pub acked_ids: std::sync::Mutex<Vec<Uuid>>,
}

pub(super) async fn seed_stock(
    client: &reqwest::Client,
    inventory: &str,
    sku: &str,
    available: i64,
) -> anyhow::Result<()> {
    for _ in 0..40 {
        if let Ok(r) = client
            .put(format!("{inventory}/inventory/{sku}"))
            .json(&json!({ "available": available }))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("could not seed the stock of {sku}")
}

/// Place orders at `rate` per second until `stop`; each one is retried with its key until
/// acknowledged or `give_up`. Returns when every order task has ended.
pub(super) async fn generate(
    client: reqwest::Client,
    url: String,
    rate: f64,
    seed: u64,
    load: Arc<Load>,
    stop: CancellationToken,
    give_up: CancellationToken,
) {
    // Seeded apart from the fault schedule (seed + 1), so that both replay with the seed.
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Open loop: ticks missed while the runtime was busy are made up at once.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let body = random_order(&mut rng);
        let key = Uuid::from_u128(rng.random()).to_string();
        load.sent.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(place_order(
            client.clone(),
            url.clone(),
            key,
            body,
            load.clone(),
            give_up.clone(),
        ));
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// One or two lines, a tenth of them of the scarce SKU (stock rejections); a fifth of the
/// orders paid with a declined card (payment rejections).
fn random_order(rng: &mut StdRng) -> Value {
    let lines = rng.random_range(1..=2);
    let items: Vec<_> = (0..lines)
        .map(|_| {
            let sku = if rng.random_bool(0.1) {
                "CHAOS-SCARCE"
            } else {
                ["CHAOS-1", "CHAOS-2", "CHAOS-3"][rng.random_range(0..3)]
            };
            json!({"sku": sku, "quantity": rng.random_range(1..=3), "unit_price_cents": rng.random_range(100..=5000)})
        })
        .collect();
    let method = if rng.random_bool(0.2) {
        "pm_card_chargeDeclined"
    } else {
        "pm_card_visa"
    };
    json!({
        "customer_id": Uuid::from_u128(rng.random()),
        "items": items,
        "currency": "EUR",
        "payment_method": method,
    })
}

/// POST one order until it is acknowledged, refused for good (4xx other than 408 / 429), or
/// `give_up`; backing off from 200 ms to 3 s.
async fn place_order(
    client: reqwest::Client,
    url: String,
    key: String,
    body: Value,
    load: Arc<Load>,
    give_up: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = client
            .post(&url)
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        match attempt {
            Ok(r) if r.status().is_success() => {
                let order_id = r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["order_id"].as_str().and_then(|s| s.parse().ok()));
                load.acknowledged.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = order_id {
                    load.acked_ids.lock().unwrap().push(id);
                }
                return;
            }
            Ok(r)
                if r.status().is_client_error()
                    && r.status() != reqwest::StatusCode::REQUEST_TIMEOUT
                    && r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                load.rejected_by_api.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(status = %r.status(), "order refused");
                return;
            }
            _ => {}
        }
        load.retried.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = give_up.cancelled() => {
                load.unacknowledged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
}
