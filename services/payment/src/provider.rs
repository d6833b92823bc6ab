//! A simulated payment provider, shaped like Stripe's charges and refunds API, with faults
//! that can be injected at start and at runtime. It is the provider in development and tests;
//! production points `PAYMENT_PROVIDER_URL` at a real one.
//!
//! Behaviour the payment service relies on, as a real provider guarantees it:
//! - **Idempotency**: a request repeated with the same `idempotency_key` gets the first
//!   answer again (a charge, a refund or a decline) and moves no money; reusing a key with
//!   different parameters is refused (400 `idempotency_error`).
//! - **Declines** are final answers: 402 `{"error":{"code":"card_declined"}}`.
//! - **Injected faults** (503) happen before anything is recorded, so a 503 never moved money.
//!   Latency is added before the request is processed.
//!
//! Routes: `POST /v1/charges`, `GET /v1/charges?idempotency_key=…`, `GET /v1/charges/{id}`,
//! `POST /v1/refunds`; control: `GET|POST /_control` (faults), `GET /_stats` (counts).
//!
//! Test payment methods: `pm_card_chargeDeclined` (card_declined),
//! `pm_card_chargeDeclinedInsufficientFunds` (insufficient_funds); anything else succeeds.
//!
//! Its OpenAPI document ([`provider_openapi`]) is its own — it stands for a third party, on
//! a listener of its own, and answers errors in a provider's shape, not Problem JSON — served
//! at its `GET /openapi.json` and committed as `docs/openapi-provider.json`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use rand::distr::Alphanumeric;
use sagaflow_runtime::http::{Problem, ProblemJson};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The decline code of each test payment method that is declined.
const DECLINING_METHODS: &[(&str, &str)] = &[
    ("pm_card_chargeDeclined", "card_declined"),
    (
        "pm_card_chargeDeclinedInsufficientFunds",
        "insufficient_funds",
    ),
];

/// Faults injected into every `/v1` call.
#[derive(
    Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, clap::Args, utoipa::ToSchema,
)]
pub struct ProviderFaults {
    /// Delay added to every provider call, in milliseconds.
    #[arg(
        long = "simulated-provider-latency-ms",
        env = "SIMULATED_PROVIDER_LATENCY_MS",
        default_value_t = 0
    )]
    pub latency_ms: u64,
    /// Share of provider calls answered 503 (0 to 1).
    #[arg(
        long = "simulated-provider-error-rate",
        env = "SIMULATED_PROVIDER_ERROR_RATE",
        default_value_t = 0.0
    )]
    pub error_rate: f64,
    /// Answer every provider call 503.
    #[arg(
        long = "simulated-provider-down",
        env = "SIMULATED_PROVIDER_DOWN",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub down: bool,
    /// Process charges as a real provider does: the key is taken when the request arrives,
    /// the latency is the processing time, and the charge completes even if the client gave
    /// up meanwhile; a request with the same key while it runs gets 409
    /// `idempotency_key_in_use` (Stripe's answer). Off: the latency precedes the request and
    /// a client that gave up cancels it.
    #[arg(
        long = "simulated-provider-in-flight-conflict",
        env = "SIMULATED_PROVIDER_IN_FLIGHT_CONFLICT",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub in_flight_conflict: bool,
}

/// A change of faults (`POST /_control`): absent fields keep their value.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    pub latency_ms: Option<u64>,
    pub error_rate: Option<f64>,
    pub down: Option<bool>,
    pub in_flight_conflict: Option<bool>,
}

/// What the provider did (`GET /_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderStats {
    /// Charges made: money taken. Replays of an idempotency key do not count.
    pub charges: u64,
    /// Refunds made.
    pub refunds: u64,
    /// Charges declined.
    pub declines: u64,
    /// Calls answered 503 by an injected fault.
    pub injected_failures: u64,
    /// Every `/v1` call received.
    pub requests: u64,
}

#[derive(Debug, Clone)]
struct ChargeRecord {
    id: String,
    amount: i64,
    currency: String,
    refund: Option<String>,
    idempotency_key: String,
}

/// A charge as the provider answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Charge {
    /// `ch_…`
    id: String,
    /// Always `charge`.
    object: &'static str,
    /// Always `succeeded` (a decline is an error answer).
    status: &'static str,
    /// In minor units.
    amount: i64,
    /// Lower case, e.g. `eur`.
    currency: String,
    refunded: bool,
}

/// `GET /v1/charges`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ChargeList {
    /// Always `list`.
    object: &'static str,
    data: Vec<Charge>,
}

/// A refund as the provider answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Refund {
    /// `re_…`
    id: String,
    /// Always `refund`.
    object: &'static str,
    /// Always `succeeded`.
    status: &'static str,
    /// The refunded charge's id.
    charge: String,
    amount: i64,
    currency: String,
}

/// An error, in a provider's shape: `{"error": {"code": "card_declined", "type": "card_error"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ProviderError {
    error: ErrorCode,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ErrorCode {
    /// e.g. `parameter_invalid`, `resource_missing`, `card_declined`, `idempotency_error`.
    code: String,
    /// `card_error` for declines.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

fn error_body(code: &str, kind: Option<&str>) -> Value {
    json!(ProviderError {
        error: ErrorCode {
            code: code.to_string(),
            kind: kind.map(str::to_string),
        },
    })
}

impl ChargeRecord {
    fn view(&self) -> Charge {
        Charge {
            id: self.id.clone(),
            object: "charge",
            status: "succeeded",
            amount: self.amount,
            currency: self.currency.clone(),
            refunded: self.refund.is_some(),
        }
    }

    fn to_json(&self) -> Value {
        json!(self.view())
    }
}

/// A stored answer to an idempotency key, and the parameters it was given for.
#[derive(Debug, Clone)]
struct Stored {
    fingerprint: String,
    status: StatusCode,
    body: Value,
}

#[derive(Debug, Default)]
struct Ledger {
    charges: HashMap<String, ChargeRecord>,
    charge_keys: HashMap<String, Stored>,
    /// Charge keys being processed (in-flight mode).
    charges_in_flight: std::collections::HashSet<String>,
    refund_keys: HashMap<String, Stored>,
    stats: ProviderStats,
}

#[derive(Debug)]
struct Shared {
    faults: Mutex<ProviderFaults>,
    ledger: Mutex<Ledger>,
}

/// A handle on a simulated provider: change its faults in-process, read its counts.
#[derive(Debug, Clone)]
pub struct ProviderControl {
    shared: Arc<Shared>,
}

impl ProviderControl {
    pub fn new(faults: ProviderFaults) -> Self {
        ProviderControl {
            shared: Arc::new(Shared {
                faults: Mutex::new(sanitized(faults)),
                ledger: Mutex::new(Ledger::default()),
            }),
        }
    }

    pub fn faults(&self) -> ProviderFaults {
        *lock(&self.shared.faults)
    }

    pub fn set_faults(&self, faults: ProviderFaults) {
        *lock(&self.shared.faults) = sanitized(faults);
    }

    pub fn update(&self, update: FaultsUpdate) -> ProviderFaults {
        let mut faults = lock(&self.shared.faults);
        if let Some(latency_ms) = update.latency_ms {
            faults.latency_ms = latency_ms;
        }
        if let Some(error_rate) = update.error_rate {
            faults.error_rate = error_rate;
        }
        if let Some(down) = update.down {
            faults.down = down;
        }
        if let Some(in_flight_conflict) = update.in_flight_conflict {
            faults.in_flight_conflict = in_flight_conflict;
        }
        *faults = sanitized(*faults);
        *faults
    }

    pub fn set_down(&self, down: bool) {
        lock(&self.shared.faults).down = down;
    }

    /// Clamped to 0..=1.
    pub fn set_error_rate(&self, error_rate: f64) {
        lock(&self.shared.faults).error_rate = clamp_rate(error_rate);
    }

    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.faults).latency_ms =
            u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
    }

    pub fn stats(&self) -> ProviderStats {
        lock(&self.shared.ledger).stats
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.shared.ledger)
    }

    /// Apply the faults to one call: `Some(503)` when it fails.
    async fn inject(&self) -> Option<Response> {
        let faults = self.faults();
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        self.inject_failure()
    }

    /// The failure part of [`ProviderControl::inject`], without the latency.
    fn inject_failure(&self) -> Option<Response> {
        let faults = self.faults();
        self.ledger().stats.requests += 1;
        let fails = faults.down
            || (faults.error_rate > 0.0 && rand::rng().random::<f64>() < faults.error_rate);
        if !fails {
            return None;
        }
        self.ledger().stats.injected_failures += 1;
        Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        ))
    }
}

/// A poisoned lock only means a panic elsewhere mid-update of plain counters and maps; the
/// simulator keeps serving rather than failing every later call.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

fn sanitized(mut faults: ProviderFaults) -> ProviderFaults {
    faults.error_rate = clamp_rate(faults.error_rate);
    faults
}

/// The provider's routes, state in `control`.
pub fn provider_router(control: ProviderControl) -> Router {
    // Fault injection and statistics answer only on loopback (404 to anyone else).
    let controls = sagaflow_runtime::http::loopback_only(
        Router::new()
            .route("/_control", get(get_control).post(post_control))
            .route("/_stats", get(get_stats)),
    );
    let openapi = sagaflow_runtime::openapi::render(&provider_openapi());
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    openapi,
                )
            }),
        )
        .route("/v1/charges", post(create_charge).get(list_charges))
        .route("/v1/charges/{id}", get(get_charge))
        .route("/v1/refunds", post(create_refund))
        .merge(controls)
        .with_state(control)
}

/// Serve a simulated provider on `listener` until `shutdown`; returns its control handle.
pub async fn spawn_provider(
    listener: TcpListener,
    faults: ProviderFaults,
    shutdown: CancellationToken,
) -> ProviderControl {
    let control = ProviderControl::new(faults);
    let router = provider_router(control.clone());
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%address, ?faults, "simulated payment provider listening");
    tokio::spawn(async move {
        if let Err(e) = sagaflow_runtime::http::serve(listener, router, shutdown).await {
            tracing::error!(error = %e, "simulated payment provider stopped");
        }
    });
    control
}

fn error(status: StatusCode, code: &str) -> Response {
    (status, Json(error_body(code, None))).into_response()
}

fn stored(stored: &Stored) -> Response {
    (stored.status, Json(stored.body.clone())).into_response()
}

/// A body that does not parse, answered the way a provider does.
fn malformed() -> Response {
    error(StatusCode::BAD_REQUEST, "parameter_invalid")
}

fn new_id(prefix: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}_{suffix}")
}

/// `POST /v1/charges`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ChargeBody {
    amount: i64,
    currency: String,
    payment_method: String,
    idempotency_key: String,
}

/// Charge a payment method, once per idempotency key.
#[utoipa::path(
    post,
    path = "/v1/charges",
    tag = "provider",
    request_body(content = ChargeBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Charged (or the same key and parameters again).", body = Charge),
        (status = 400, description = "A malformed body, a missing key, an amount below 1, a bad currency, or a key reused with other parameters.", body = ProviderError),
        (status = 402, description = "Declined by the card (a final answer, stored under the key).", body = ProviderError),
        (status = 409, description = "The same key is being processed (in-flight mode).", body = ProviderError),
        (status = 503, description = "An injected fault: nothing was recorded.", body = ProviderError),
    )
)]
async fn create_charge(State(control): State<ProviderControl>, body: Bytes) -> Response {
    let in_flight_mode = control.faults().in_flight_conflict;
    let failure = if in_flight_mode {
        control.inject_failure()
    } else {
        control.inject().await
    };
    if let Some(failure) = failure {
        return failure;
    }
    let Ok(request) = serde_json::from_slice::<ChargeBody>(&body) else {
        return malformed();
    };
    if request.idempotency_key.is_empty() {
        return error(StatusCode::BAD_REQUEST, "parameter_missing");
    }
    if request.amount <= 0 {
        return error(StatusCode::BAD_REQUEST, "amount_too_small");
    }
    if request.currency.len() != 3 || !request.currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return error(StatusCode::BAD_REQUEST, "invalid_currency");
    }
    let fingerprint = format!(
        "{}|{}|{}",
        request.amount, request.currency, request.payment_method
    );
    {
        let mut ledger = control.ledger();
        if let Some(previous) = ledger.charge_keys.get(&request.idempotency_key) {
            return if previous.fingerprint == fingerprint {
                stored(previous)
            } else {
                error(StatusCode::BAD_REQUEST, "idempotency_error")
            };
        }
        if !in_flight_mode {
            let answer = settle_charge(&mut ledger, &request, fingerprint);
            return stored(&answer);
        }
        if !ledger
            .charges_in_flight
            .insert(request.idempotency_key.clone())
        {
            return error(StatusCode::CONFLICT, "idempotency_key_in_use");
        }
    }
    // In-flight mode: the charge is processed to the end whatever the client does.
    let latency = Duration::from_millis(control.faults().latency_ms);
    let processing = tokio::spawn(async move {
        tokio::time::sleep(latency).await;
        let mut ledger = control.ledger();
        ledger.charges_in_flight.remove(&request.idempotency_key);
        let answer = settle_charge(&mut ledger, &request, fingerprint);
        stored(&answer)
    });
    processing
        .await
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "api_error"))
}

/// Decide a new charge (declined by its payment method, or made), record it under its key.
fn settle_charge(ledger: &mut Ledger, request: &ChargeBody, fingerprint: String) -> Stored {
    let decline = DECLINING_METHODS
        .iter()
        .find(|(method, _)| *method == request.payment_method)
        .map(|(_, code)| *code);
    let answer = match decline {
        Some(code) => {
            ledger.stats.declines += 1;
            Stored {
                fingerprint,
                status: StatusCode::PAYMENT_REQUIRED,
                body: error_body(code, Some("card_error")),
            }
        }
        None => {
            let charge = ChargeRecord {
                id: new_id("ch"),
                amount: request.amount,
                currency: request.currency.to_ascii_lowercase(),
                refund: None,
                idempotency_key: request.idempotency_key.clone(),
            };
            ledger.stats.charges += 1;
            let body = charge.to_json();
            ledger.charges.insert(charge.id.clone(), charge);
            Stored {
                fingerprint,
                status: StatusCode::OK,
                body,
            }
        }
    };
    ledger
        .charge_keys
        .insert(request.idempotency_key.clone(), answer.clone());
    answer
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only the charge made with this key.
    idempotency_key: Option<String>,
}

/// Charges made with an idempotency key (or all): lets a client find out whether a call whose
/// answer it lost took money.
#[utoipa::path(
    get,
    path = "/v1/charges",
    tag = "provider",
    params(ListQuery),
    responses(
        (status = 200, description = "The charges.", body = ChargeList),
        (status = 503, description = "An injected fault.", body = ProviderError),
    )
)]
async fn list_charges(
    State(control): State<ProviderControl>,
    Query(query): Query<ListQuery>,
) -> Response {
    if let Some(failure) = control.inject().await {
        return failure;
    }
    let ledger = control.ledger();
    let data: Vec<Value> = ledger
        .charges
        .values()
        .filter(|c| {
            query
                .idempotency_key
                .as_ref()
                .is_none_or(|k| *k == c.idempotency_key)
        })
        .map(ChargeRecord::to_json)
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// One charge.
#[utoipa::path(
    get,
    path = "/v1/charges/{id}",
    tag = "provider",
    params(("id" = String, Path, description = "The charge id (ch_…)")),
    responses(
        (status = 200, description = "The charge.", body = Charge),
        (status = 404, description = "No such charge (resource_missing).", body = ProviderError),
        (status = 503, description = "An injected fault.", body = ProviderError),
    )
)]
async fn get_charge(State(control): State<ProviderControl>, Path(id): Path<String>) -> Response {
    if let Some(failure) = control.inject().await {
        return failure;
    }
    match control.ledger().charges.get(&id) {
        Some(charge) => Json(charge.to_json()).into_response(),
        None => error(StatusCode::NOT_FOUND, "resource_missing"),
    }
}

/// `POST /v1/refunds`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct RefundBody {
    charge: String,
    idempotency_key: String,
}

/// Refund a charge in full, once per idempotency key.
#[utoipa::path(
    post,
    path = "/v1/refunds",
    tag = "provider",
    request_body(content = RefundBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Refunded (or the same key and charge again).", body = Refund),
        (status = 400, description = "A malformed body, a missing key, a key reused for another charge, or a charge already refunded.", body = ProviderError),
        (status = 404, description = "No such charge (resource_missing).", body = ProviderError),
        (status = 503, description = "An injected fault: nothing was recorded.", body = ProviderError),
    )
)]
async fn create_refund(State(control): State<ProviderControl>, body: Bytes) -> Response {
    if let Some(failure) = control.inject().await {
        return failure;
    }
    let Ok(request) = serde_json::from_slice::<RefundBody>(&body) else {
        return malformed();
    };
    if request.idempotency_key.is_empty() {
        return error(StatusCode::BAD_REQUEST, "parameter_missing");
    }
    let mut ledger = control.ledger();
    if let Some(previous) = ledger.refund_keys.get(&request.idempotency_key) {
        return if previous.fingerprint == request.charge {
            stored(previous)
        } else {
            error(StatusCode::BAD_REQUEST, "idempotency_error")
        };
    }
    let Some(charge) = ledger.charges.get_mut(&request.charge) else {
        return error(StatusCode::NOT_FOUND, "resource_missing");
    };
    // Not stored under the key: a later retry after a refund by another key must also fail.
    if charge.refund.is_some() {
        return error(StatusCode::BAD_REQUEST, "charge_already_refunded");
    }
    let id = new_id("re");
    charge.refund = Some(id.clone());
    let body = json!(Refund {
        id,
        object: "refund",
        status: "succeeded",
        charge: charge.id.clone(),
        amount: charge.amount,
        currency: charge.currency.clone(),
    });
    ledger.stats.refunds += 1;
    let answer = Stored {
        fingerprint: request.charge,
        status: StatusCode::OK,
        body,
    };
    let response = stored(&answer);
    ledger.refund_keys.insert(request.idempotency_key, answer);
    response
}

/// The injected faults. Loopback only (404 to anyone else).
#[utoipa::path(
    get,
    path = "/_control",
    tag = "provider-control",
    responses((status = 200, description = "The faults.", body = ProviderFaults))
)]
async fn get_control(State(control): State<ProviderControl>) -> Json<ProviderFaults> {
    Json(control.faults())
}

/// Change the injected faults: absent fields keep their value. Loopback only.
#[utoipa::path(
    post,
    path = "/_control",
    tag = "provider-control",
    request_body(content = FaultsUpdate, content_type = "application/json"),
    responses(
        (status = 200, description = "The faults after the change.", body = ProviderFaults),
        (status = 400, description = "A body that is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field of the wrong type or out of range.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn post_control(
    State(control): State<ProviderControl>,
    ProblemJson(update): ProblemJson<FaultsUpdate>,
) -> Result<Json<ProviderFaults>, Problem> {
    if let Some(rate) = update.error_rate
        && !(0.0..=1.0).contains(&rate)
    {
        return Err(Problem::invalid(
            "error_rate",
            "error_rate must be between 0 and 1",
        ));
    }
    let faults = control.update(update);
    tracing::info!(?faults, "simulated payment provider faults changed");
    Ok(Json(faults))
}

/// What the provider did: charges, refunds, declines, injected failures, requests.
#[utoipa::path(
    get,
    path = "/_stats",
    tag = "provider-control",
    responses((status = 200, description = "The counts.", body = ProviderStats))
)]
async fn get_stats(State(control): State<ProviderControl>) -> Json<ProviderStats> {
    Json(control.stats())
}

/// The simulated provider's routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Sagaflow simulated payment provider",
        description = "The payment provider `sagaflow dev` and the tests run (a Stripe-like charges and refunds API with injectable faults), on a listener of its own (SIMULATED_PROVIDER_ADDR, 127.0.0.1:8090). Not part of Sagaflow's API: errors are in a provider's shape, not Problem JSON. No authentication; the control routes answer only to callers on the same machine.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(create_charge, list_charges, get_charge, create_refund, get_control, post_control, get_stats),
    components(schemas(Charge, ChargeList, Refund, ProviderError, ErrorCode, ChargeBody, RefundBody, ProviderFaults, FaultsUpdate, ProviderStats, Problem)),
    tags(
        (name = "provider", description = "Charges and refunds."),
        (name = "provider-control", description = "Fault injection and counts (loopback only)."),
    )
)]
struct ProviderDoc;

/// The OpenAPI document of the simulated provider (`docs/openapi-provider.json`).
pub fn provider_openapi() -> utoipa::openapi::OpenApi {
    <ProviderDoc as utoipa::OpenApi>::openapi()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        faults: ProviderFaults,
    }

    fn parse(args: &[&str]) -> ProviderFaults {
        Cli::try_parse_from(std::iter::once("provider").chain(args.iter().copied()))
            .unwrap()
            .faults
    }

    #[test]
    fn faults_parse_from_flags() {
        assert_eq!(parse(&[]), ProviderFaults::default());
        assert!(parse(&["--simulated-provider-down"]).down);
        assert!(!parse(&["--simulated-provider-down", "false"]).down);
        let faults = parse(&[
            "--simulated-provider-latency-ms",
            "250",
            "--simulated-provider-error-rate",
            "0.5",
        ]);
        assert_eq!((faults.latency_ms, faults.error_rate), (250, 0.5));
    }

    #[test]
    fn an_update_changes_only_the_given_faults_and_clamps_the_rate() {
        let control = ProviderControl::new(ProviderFaults {
            latency_ms: 10,
            error_rate: 7.0,
            down: false,
            in_flight_conflict: false,
        });
        assert_eq!(control.faults().error_rate, 1.0);
        let faults = control.update(FaultsUpdate {
            down: Some(true),
            error_rate: Some(0.25),
            ..FaultsUpdate::default()
        });
        assert_eq!(
            faults,
            ProviderFaults {
                latency_ms: 10,
                error_rate: 0.25,
                down: true,
                in_flight_conflict: false,
            }
        );
        control.set_error_rate(f64::NAN);
        control.set_latency(Duration::from_millis(3));
        control.set_down(false);
        assert_eq!(
            control.faults(),
            ProviderFaults {
                latency_ms: 3,
                error_rate: 0.0,
                down: false,
                in_flight_conflict: false,
            }
        );
    }
}
