//! A steady order load: orders posted at a fixed rate, open loop, until stopped — what a
//! fault test runs its fault under.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::platform::{TestApp, order_body};

/// What the load did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Orders the API acknowledged (202), in the order they were sent.
    pub accepted: Vec<Uuid>,
    /// Requests that got anything else, with what they got.
    pub refused: Vec<String>,
}

pub struct SteadyLoad {
    stop: CancellationToken,
    handle: JoinHandle<LoadReport>,
}

impl SteadyLoad {
    /// Post mixed orders for `skus` at `per_second`: every sixth is declined by the
    /// provider, every seventeenth asks for more than any stock. Requests are sent on
    /// schedule whether or not earlier ones answered (open loop).
    pub fn start(app: &TestApp, skus: &[&str], per_second: u32) -> SteadyLoad {
        let stop = CancellationToken::new();
        let http = app.http.clone();
        let url = format!("{}/orders", app.base_url);
        let skus: Vec<String> = skus.iter().map(|s| s.to_string()).collect();
        let stopped = stop.clone();
        let handle = tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
            let mut requests = tokio::task::JoinSet::new();
            for i in 0usize.. {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let method = if i % 6 == 0 {
                    "pm_card_chargeDeclined"
                } else {
                    "pm_card_visa"
                };
                let quantity = if i % 17 == 0 {
                    10_000
                } else {
                    (i % 3 + 1) as i64
                };
                let body = order_body(&[(&skus[i % skus.len()], quantity, 100 + i as i64)], method);
                let request = http
                    .post(&url)
                    .header("Idempotency-Key", Uuid::new_v4().to_string())
                    .json(&body)
                    .timeout(Duration::from_secs(30));
                requests.spawn(async move {
                    let response = request.send().await.map_err(|e| e.to_string())?;
                    let status = response.status().as_u16();
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    match (status, body["order_id"].as_str().map(Uuid::parse_str)) {
                        (202, Some(Ok(id))) => Ok((i, id)),
                        _ => Err(format!("{status} {body}")),
                    }
                });
            }
            let mut accepted = Vec::new();
            let mut report = LoadReport::default();
            while let Some(done) = requests.join_next().await {
                match done.expect("request task") {
                    Ok(order) => accepted.push(order),
                    Err(e) => report.refused.push(e),
                }
            }
            accepted.sort();
            report.accepted = accepted.into_iter().map(|(_, id)| id).collect();
            report
        });
        SteadyLoad { stop, handle }
    }

    /// Stop sending and wait for the answers still due.
    pub async fn stop(self) -> LoadReport {
        self.stop.cancel();
        self.handle.await.expect("load task")
    }
}
