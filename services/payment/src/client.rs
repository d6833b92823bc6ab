//! The HTTP client of the payment provider: every call goes through one circuit breaker and
//! is retried with exponential backoff and jitter.
//!
//! Guarantees:
//! - **No double charge.** Every charge and refund carries an idempotency key derived from
//!   the order id ([`charge_key`], [`refund_key`]), so retries here, redeliveries of the
//!   command and replays after a crash all get the provider's first answer back.
//! - **Only transient failures are retried**: timeouts (each attempt is bounded, 2 s by
//!   default), connection errors, 408, 429 and 5xx. A decline (402) is an answer, never
//!   retried; other 4xx are refusals, never retried.
//! - **The circuit breaker** (consecutive failures) counts only transient failures: after
//!   `circuit_failures` of them in a row it opens and calls fail at once without reaching the
//!   provider; it half-opens after `circuit_open` (growing, with jitter, while the provider
//!   stays down) and closes on the first success. Declines and refusals prove the provider
//!   is up. A call refused by the open circuit says when the circuit half-opens
//!   ([`ProviderError::retry_after`]), so a caller retrying later asks no sooner than a probe
//!   can be made. The state is the gauge `payment_provider_circuit_open{provider="host:port"}`
//!   (1 open or half-open, 0 closed; one series per provider, so two clients in one process
//!   never overwrite each other's state), calls it refused are counted in
//!   `payment_provider_calls_rejected_total{provider}`; transitions are logged.
//! - **Unknown outcomes are reported**: [`ProviderError::outcome_unknown`] tells whether a
//!   failed call may still have moved money (a timeout after the request was sent, a lost
//!   answer), as opposed to a call the provider certainly did not process (503, connection
//!   refused, circuit open).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use failsafe::failure_policy::{ConsecutiveFailures, consecutive_failures};
use failsafe::{Instrument, StateMachine};
use rand::Rng;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use uuid::Uuid;

/// The provider's idempotency key of an order's charge.
pub fn charge_key(order_id: Uuid) -> String {
    format!("sagaflow-charge-{order_id}")
}

/// The provider's idempotency key of an order's refund.
pub fn refund_key(order_id: Uuid) -> String {
    format!("sagaflow-refund-{order_id}")
}

/// How to reach the provider and how hard to try.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Base URL, e.g. `http://127.0.0.1:8090`.
    pub base_url: String,
    /// Bound of one attempt (connect + request + response).
    pub timeout: Duration,
    /// Attempts per call, the first included.
    pub max_attempts: usize,
    /// First retry delay; doubles (with jitter) up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Consecutive transient failures that open the circuit.
    pub circuit_failures: u32,
    /// First open period; doubles (with jitter) while half-open probes fail, up to
    /// `circuit_open_max`.
    pub circuit_open: Duration,
    pub circuit_open_max: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            base_url: "http://127.0.0.1:8090".into(),
            timeout: Duration::from_secs(2),
            max_attempts: 3,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            circuit_failures: 5,
            circuit_open: Duration::from_secs(1),
            circuit_open_max: Duration::from_secs(30),
        }
    }
}

/// A charge request (Stripe-style, amounts in minor units).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChargeRequest {
    pub amount: i64,
    pub currency: String,
    pub payment_method: String,
    pub idempotency_key: String,
}

/// A charge as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Charge {
    pub id: String,
    pub status: String,
    pub amount: i64,
    pub currency: String,
    #[serde(default)]
    pub refunded: bool,
}

/// A refund as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Refund {
    pub id: String,
    pub status: String,
}

/// The provider's answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Charged(Charge),
    /// 402 with the provider's decline code.
    Declined {
        code: String,
    },
}

/// A call that did not get an answer the caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Transient failures until the attempts ran out, or the circuit is open.
    #[error("payment provider unavailable: {detail}")]
    Unavailable {
        detail: String,
        outcome_unknown: bool,
        /// The circuit refused the call: how long until it lets a probe through.
        retry_after: Option<Duration>,
    },
    /// A final refusal other than a decline (a 4xx): retrying the same request cannot help.
    #[error("payment provider refused the request: HTTP {status} {code}")]
    Refused { status: u16, code: String },
    /// A success status with a body that is not what the API promises.
    #[error("unexpected payment provider response: {0}")]
    Protocol(String),
}

impl ProviderError {
    /// When the open circuit refused the call: how long until a call may reach the provider
    /// again. Asking sooner is refused without reaching it.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the provider may have processed the call (money may have moved).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ProviderError::Unavailable {
                outcome_unknown, ..
            } => *outcome_unknown,
            ProviderError::Refused { .. } => false,
            ProviderError::Protocol(_) => true,
        }
    }
}

/// The breaker's state, as the metric and [`ProviderClient::circuit_state`] show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CircuitState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl CircuitState {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }
}

/// Open periods: `first`, doubling up to `max`, each stretched by up to 50 % at random so
/// replicas that opened together do not probe the provider together. The breaker draws one
/// as it opens; the moment it ends is kept in `reopens_at` (shared with the client: the
/// breaker does not tell it) so a refused call can say when to come back.
#[derive(Debug, Clone)]
struct OpenPeriods {
    next: Duration,
    max: Duration,
    reopens_at: Arc<Mutex<Option<Instant>>>,
}

impl Iterator for OpenPeriods {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let period = base.mul_f64(1.0 + rand::rng().random_range(0.0..0.5));
        // The breaker adds the period to its own clock right after this returns: a probe
        // is let through from a moment a little later than this one.
        *self.reopens_at.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + period + REOPEN_MARGIN);
        Some(period)
    }
}

/// Slack on [`OpenPeriods::reopens_at`]: the breaker's own deadline is computed a moment
/// after it, and a caller coming back exactly then would be refused once more.
const REOPEN_MARGIN: Duration = Duration::from_millis(5);

/// Publishes the breaker's transitions (failsafe calls it under its own lock).
#[derive(Debug, Clone)]
struct CircuitObserver {
    state: Arc<AtomicU8>,
    /// The gauge's `provider` label: the provider's `host:port`.
    provider: Arc<str>,
}

impl CircuitObserver {
    fn new(base_url: &str) -> Self {
        CircuitObserver {
            state: Arc::default(),
            provider: provider_label(base_url).into(),
        }
    }

    fn gauge(&self) -> metrics::Gauge {
        metrics::gauge!("payment_provider_circuit_open", "provider" => self.provider.to_string())
    }

    fn rejected(&self) -> metrics::Counter {
        metrics::counter!("payment_provider_calls_rejected_total", "provider" => self.provider.to_string())
    }

    fn transition(&self, to: CircuitState) {
        let from = CircuitState::from_u8(self.state.swap(to as u8, Ordering::SeqCst));
        self.gauge()
            .set(if to == CircuitState::Closed { 0.0 } else { 1.0 });
        if from == to {
            return;
        }
        match to {
            CircuitState::Open => warn!(
                ?from,
                provider = %self.provider,
                "payment provider circuit opened: calls fail fast until it half-opens"
            ),
            CircuitState::HalfOpen => info!(
                ?from,
                provider = %self.provider,
                "payment provider circuit half-open: probing the provider"
            ),
            CircuitState::Closed => info!(
                ?from,
                provider = %self.provider,
                "payment provider circuit closed: the provider answers again"
            ),
        }
    }
}

impl Instrument for CircuitObserver {
    fn on_call_rejected(&self) {
        self.rejected().increment(1);
    }

    fn on_open(&self) {
        self.transition(CircuitState::Open);
    }

    fn on_half_open(&self) {
        self.transition(CircuitState::HalfOpen);
    }

    fn on_closed(&self) {
        self.transition(CircuitState::Closed);
    }
}

type Breaker = StateMachine<ConsecutiveFailures<OpenPeriods>, CircuitObserver>;

/// The `provider` label of a base URL: `host:port`, never the scheme, path or credentials.
pub fn provider_label(base_url: &str) -> String {
    match reqwest::Url::parse(base_url) {
        Ok(url) => match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => "unknown".to_string(),
        },
        Err(_) => "unknown".to_string(),
    }
}

/// One attempt's failure.
#[derive(Debug)]
enum AttemptError {
    /// The circuit is open: nothing was sent. A probe is let through after `retry_after`.
    Rejected { retry_after: Duration },
    /// No usable answer; worth retrying.
    Transient {
        detail: String,
        maybe_processed: bool,
        /// The provider answered that it is processing this very request (409): it is up
        /// and working, so the breaker counts the call as a success.
        in_flight: bool,
    },
}

/// A final answer: a status the caller interprets, and its body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    /// An earlier attempt of the same call may have been processed (it timed out, or met
    /// the request still in flight): a refusal now does not say the money did not move.
    after_uncertain_attempt: bool,
}

/// The provider client. Cheap to clone; clones share the connection pool and the breaker.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
    base_url: String,
    settings: ClientSettings,
    breaker: Breaker,
    observer: CircuitObserver,
    /// The end of the current open period (see [`OpenPeriods`]).
    reopens_at: Arc<Mutex<Option<Instant>>>,
}

impl ProviderClient {
    pub fn new(settings: ClientSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(1)))
            .build()?;
        let observer = CircuitObserver::new(&settings.base_url);
        // Closed until it opens, and registered at zero: an alert on the breaker (or on
        // rejected calls) needs the series to exist before the first trip.
        observer.gauge().set(0.0);
        observer.rejected().increment(0);
        let reopens_at = Arc::new(Mutex::new(None));
        let periods = OpenPeriods {
            next: settings.circuit_open,
            max: settings.circuit_open_max.max(settings.circuit_open),
            reopens_at: reopens_at.clone(),
        };
        let breaker = failsafe::Config::new()
            .failure_policy(consecutive_failures(
                settings.circuit_failures.max(1),
                periods,
            ))
            .instrument(observer.clone())
            .build();
        Ok(ProviderClient {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            settings,
            breaker,
            observer,
            reopens_at,
        })
    }

    /// The breaker's state (as of the last call; an open circuit half-opens on the next call
    /// after its period).
    pub fn circuit_state(&self) -> CircuitState {
        CircuitState::from_u8(self.observer.state.load(Ordering::SeqCst))
    }

    /// How long the open circuit goes on refusing calls.
    fn until_reopen(&self) -> Duration {
        let reopens_at = *self.reopens_at.lock().unwrap_or_else(|e| e.into_inner());
        reopens_at.map_or(REOPEN_MARGIN, |at| {
            at.saturating_duration_since(Instant::now())
                .max(REOPEN_MARGIN)
        })
    }

    /// Charge, idempotently by `request.idempotency_key`.
    pub async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        let url = format!("{}/v1/charges", self.base_url);
        let answer = self
            .call("charge", || self.http.post(&url).json(request))
            .await?;
        match answer.status {
            status if status.is_success() => {
                let charge: Charge = parse(&answer)?;
                if charge.status != "succeeded" {
                    return Err(ProviderError::Protocol(format!(
                        "charge status {:?}",
                        charge.status
                    )));
                }
                Ok(ChargeOutcome::Charged(charge))
            }
            StatusCode::PAYMENT_REQUIRED => Ok(ChargeOutcome::Declined {
                code: error_code(&answer).unwrap_or_else(|| "card_declined".to_string()),
            }),
            _ => Err(refused(&answer)),
        }
    }

    /// Refund a whole charge, idempotently by `idempotency_key`.
    pub async fn refund(
        &self,
        charge_id: &str,
        idempotency_key: &str,
    ) -> Result<Refund, ProviderError> {
        let url = format!("{}/v1/refunds", self.base_url);
        let body = serde_json::json!({"charge": charge_id, "idempotency_key": idempotency_key});
        let answer = self
            .call("refund", || self.http.post(&url).json(&body))
            .await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        let refund: Refund = parse(&answer)?;
        if refund.status != "succeeded" {
            return Err(ProviderError::Protocol(format!(
                "refund status {:?}",
                refund.status
            )));
        }
        Ok(refund)
    }

    /// The charge made with `idempotency_key`, if any: how to learn whether a call whose
    /// answer was lost took money. Moves no money.
    pub async fn find_charge(
        &self,
        idempotency_key: &str,
    ) -> Result<Option<Charge>, ProviderError> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<Charge>,
        }
        let url = format!("{}/v1/charges", self.base_url);
        let answer = self
            .call("find_charge", || {
                self.http
                    .get(&url)
                    .query(&[("idempotency_key", idempotency_key)])
            })
            .await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        let list: List = parse(&answer)?;
        Ok(list.data.into_iter().find(|c| c.status == "succeeded"))
    }

    /// One call: attempts through the breaker, transient failures retried with backoff.
    async fn call(
        &self,
        operation: &'static str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Answer, ProviderError> {
        let maybe_processed = AtomicBool::new(false);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.first_backoff)
            .with_max_delay(self.settings.max_backoff)
            .with_max_times(self.settings.max_attempts.saturating_sub(1))
            .with_jitter();
        let result = (|| async {
            let result = self.attempt(operation, &request).await;
            if let Err(AttemptError::Transient { maybe_processed: true, .. }) = &result {
                maybe_processed.store(true, Ordering::Relaxed);
            }
            result
        })
        .retry(backoff)
        // An open circuit stays open longer than any backoff here: retrying is pointless.
        .when(|e| matches!(e, AttemptError::Transient { .. }))
        .notify(|e, delay| debug!(operation, error = ?e, ?delay, "payment provider call failed; retrying"))
        .await;
        let after_uncertain_attempt = maybe_processed.load(Ordering::Relaxed);
        result
            .map(|answer| Answer {
                after_uncertain_attempt,
                ..answer
            })
            .map_err(|e| {
                let (detail, retry_after) = match e {
                    AttemptError::Rejected { retry_after } => {
                        ("circuit open".to_string(), Some(retry_after))
                    }
                    AttemptError::Transient { detail, .. } => (detail, None),
                };
                warn!(operation, %detail, ?retry_after, "payment provider unavailable");
                ProviderError::Unavailable {
                    detail,
                    outcome_unknown: maybe_processed.load(Ordering::Relaxed),
                    retry_after,
                }
            })
    }

    async fn attempt(
        &self,
        operation: &'static str,
        request: &impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Answer, AttemptError> {
        if !self.breaker.is_call_permitted() {
            return Err(AttemptError::Rejected {
                retry_after: self.until_reopen(),
            });
        }
        let started = Instant::now();
        let result = match request().send().await {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(_) if transient_status(status) => Err(AttemptError::Transient {
                        detail: format!("HTTP {status}"),
                        maybe_processed: may_have_been_processed(status),
                        in_flight: status == StatusCode::CONFLICT,
                    }),
                    Ok(body) => Ok(Answer {
                        status,
                        body: body.to_vec(),
                        after_uncertain_attempt: false,
                    }),
                    Err(e) => Err(AttemptError::Transient {
                        detail: describe(&e),
                        maybe_processed: true,
                        in_flight: false,
                    }),
                }
            }
            Err(e) => Err(AttemptError::Transient {
                detail: describe(&e),
                maybe_processed: !e.is_connect(),
                in_flight: false,
            }),
        };
        let outcome = match &result {
            Ok(answer) => {
                self.breaker.on_success();
                if answer.status.is_success() {
                    "ok"
                } else {
                    "refused"
                }
            }
            // Not a failure of the provider: tripping the breaker on it would fail fast every
            // later call — the one that would collect the charge's result included.
            Err(AttemptError::Transient {
                in_flight: true, ..
            }) => {
                self.breaker.on_success();
                "in_flight"
            }
            Err(_) => {
                self.breaker.on_error();
                "transient"
            }
        };
        metrics::counter!("payment_provider_requests_total", "operation" => operation, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("payment_provider_request_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

/// Statuses worth another attempt. 409 is a Stripe-like provider saying a request with this
/// idempotency key is still being processed (e.g. the attempt that timed out): its answer is
/// coming, not refused.
fn transient_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::CONFLICT
}

/// Whether a transient `status` leaves open that the work was done: 503 and 429 are the
/// provider refusing to work, not work half done; a 409 means it is being done right now.
fn may_have_been_processed(status: StatusCode) -> bool {
    !matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    )
}

/// The error kind without the URL (which names internal hosts).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn parse<T: DeserializeOwned>(answer: &Answer) -> Result<T, ProviderError> {
    serde_json::from_slice(&answer.body)
        .map_err(|e| ProviderError::Protocol(format!("HTTP {}: {e}", answer.status)))
}

fn error_code(answer: &Answer) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    value.pointer("/error/code")?.as_str().map(str::to_string)
}

/// A final non-success answer. It is a refusal whose outcome is known — nothing happened —
/// only if no earlier attempt may have been processed; otherwise the money may have moved
/// and the caller must treat the outcome as unknown (note it, reconcile later).
fn refused(answer: &Answer) -> ProviderError {
    let status = answer.status.as_u16();
    let code = error_code(answer).unwrap_or_default();
    if answer.after_uncertain_attempt {
        ProviderError::Unavailable {
            detail: format!("HTTP {status} {code} after an attempt whose outcome is unknown"),
            outcome_unknown: true,
            retry_after: None,
        }
    } else {
        ProviderError::Refused { status, code }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: StatusCode, after_uncertain_attempt: bool) -> Answer {
        Answer {
            status,
            body: br#"{"error":{"code":"idempotency_error"}}"#.to_vec(),
            after_uncertain_attempt,
        }
    }

    #[test]
    fn a_key_in_use_is_retried_and_may_have_been_processed() {
        assert!(transient_status(StatusCode::CONFLICT));
        assert!(may_have_been_processed(StatusCode::CONFLICT));
        assert!(may_have_been_processed(StatusCode::GATEWAY_TIMEOUT));
        assert!(!may_have_been_processed(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!may_have_been_processed(StatusCode::TOO_MANY_REQUESTS));
    }

    #[test]
    fn a_refusal_after_an_uncertain_attempt_leaves_the_outcome_unknown() {
        let first = refused(&answer(StatusCode::BAD_REQUEST, false));
        assert!(matches!(first, ProviderError::Refused { status: 400, .. }));
        assert!(!first.outcome_unknown());
        let after_timeout = refused(&answer(StatusCode::BAD_REQUEST, true));
        assert!(after_timeout.outcome_unknown(), "{after_timeout}");
    }

    #[test]
    fn idempotency_keys_depend_only_on_the_order() {
        let order = Uuid::from_u128(1);
        assert_eq!(charge_key(order), charge_key(order));
        assert_ne!(charge_key(order), charge_key(Uuid::from_u128(2)));
        assert_ne!(charge_key(order), refund_key(order));
    }

    #[test]
    fn open_periods_grow_with_bounded_jitter() {
        let reopens_at = Arc::new(Mutex::new(None));
        let mut periods = OpenPeriods {
            next: Duration::from_secs(1),
            max: Duration::from_secs(4),
            reopens_at: reopens_at.clone(),
        };
        for base in [1, 2, 4, 4, 4] {
            let before = Instant::now();
            let period = periods.next().unwrap();
            let after = Instant::now();
            let base = Duration::from_secs(base);
            assert!(
                period >= base && period < base.mul_f64(1.5),
                "{period:?} for {base:?}"
            );
            let at = reopens_at.lock().unwrap().unwrap();
            assert!(
                at >= before + period + REOPEN_MARGIN && at <= after + period + REOPEN_MARGIN,
                "the end of the drawn period is kept"
            );
        }
    }

    #[test]
    fn the_circuit_gauge_names_the_provider_by_host_and_port_only() {
        assert_eq!(provider_label("http://127.0.0.1:8090"), "127.0.0.1:8090");
        assert_eq!(
            provider_label("https://user:secret@pay.example/v2/"),
            "pay.example:443"
        );
        assert_eq!(provider_label("not a url"), "unknown");
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for status in [500, 502, 503, 504, 408, 429, 409] {
            assert!(
                transient_status(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [200, 400, 401, 402, 404] {
            assert!(
                !transient_status(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }
}
