//! `POST /orders`, `GET /orders/{id}`.
//!
//! With authentication on, the token's `sub` is the customer: a caller places orders only
//! for itself and reads only its own (another customer's order answers 404, so ids cannot be
//! probed); admins do both for everyone. Idempotency-Keys are scoped to the caller.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sagaflow_runtime::auth::Caller;
use sagaflow_runtime::http::{Problem, ProblemJson};
use sagaflow_runtime::openapi::Protected;
use sagaflow_runtime::trace;
use serde::Serialize;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{NewOrder, OrderLine, OrderStatus, request_hash, validate};
use crate::intake::{Intake, IntakeError, Placed, Placement};
use crate::store::OrderRow;
use crate::{OrderConfig, store};

/// The OpenAPI description of [`router`]'s routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(place_order, get_order),
    components(schemas(NewOrder, OrderLine, Accepted, OrderRow, OrderStatus)),
    tags((name = "orders", description = "Place orders and read them (order-service)."))
)]
struct ApiDoc;

/// The OpenAPI description of the order API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Errors of the order API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the Idempotency-Key header is missing, empty or too long.
    #[error("{0}")]
    IdempotencyKey(&'static str),
    /// 422: the key was used before with a different body.
    #[error("Idempotency-Key was already used with a different request body")]
    KeyReused,
    /// 422: the body breaks a rule; names the field.
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// 403: a caller that is not an admin placed an order for another customer.
    #[error("an order can only be placed for the caller's own customer id (the token's sub)")]
    NotYourCustomer,
    /// 422: the order id in the path is not a UUID; names `id`, as every service's path ids do
    /// (`sagaflow_runtime::http::uuid_in_path`).
    #[error("id must be a UUID")]
    BadId,
    /// 404
    #[error("no order {0}")]
    NotFound(Uuid),
    /// 503 when the database is unreachable, 500 otherwise (details logged, not returned).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// 503 when the database is unreachable, 500 otherwise (logged by the order writer).
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// 500
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match self {
            ApiError::IdempotencyKey(detail) => {
                Problem::new(StatusCode::BAD_REQUEST, "idempotency-key", detail)
                    .with_field("Idempotency-Key")
            }
            ApiError::KeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                self.to_string(),
            )
            .with_field("Idempotency-Key"),
            ApiError::Invalid { field, message } => Problem::invalid(&field, message),
            ApiError::NotYourCustomer => {
                Problem::new(StatusCode::FORBIDDEN, "forbidden", self.to_string())
                    .with_field("customer_id")
            }
            ApiError::BadId => Problem::invalid("id", self.to_string()),
            ApiError::NotFound(_) => Problem::not_found(self.to_string()),
            ApiError::Database(e) => Problem::from(e),
            ApiError::Intake(IntakeError::Unavailable) => Problem::unavailable(),
            ApiError::Intake(e) => Problem::internal(&e),
            ApiError::Internal(e) => Problem::internal(&e),
        };
        problem.into_response()
    }
}

/// What the order handlers share.
#[derive(Clone)]
struct Orders {
    pool: PgPool,
    intake: Intake,
}

/// Public routes: any authenticated caller (see `sagaflow_runtime::auth`). Starts the order
/// writers (`intake`), which stop when the router is dropped; needs a Tokio runtime.
pub fn router(pool: PgPool, config: OrderConfig) -> Router {
    let intake = Intake::start(pool.clone(), config);
    Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .layer(axum::extract::DefaultBodyLimit::max(
            sagaflow_runtime::http::MAX_BODY_BYTES,
        ))
        .with_state(Orders { pool, intake })
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers
        .get("idempotency-key")
        .ok_or(ApiError::IdempotencyKey(
            "the Idempotency-Key header is required",
        ))?;
    let key = value
        .to_str()
        .map_err(|_| ApiError::IdempotencyKey("Idempotency-Key must be visible ASCII"))?
        .trim();
    if key.is_empty() {
        return Err(ApiError::IdempotencyKey(
            "Idempotency-Key must not be empty",
        ));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::IdempotencyKey(
            "Idempotency-Key must be at most 255 characters",
        ));
    }
    Ok(key.to_string())
}

/// The answer to `POST /orders`: the order was accepted and its saga will decide it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Accepted {
    order_id: Uuid,
    /// Always PENDING: the saga decides later (`GET /orders/{id}`).
    status: OrderStatus,
}

fn accepted(order_id: Uuid, traceparent: &str) -> Response {
    let location = format!("/orders/{order_id}");
    let body = Accepted {
        order_id,
        status: OrderStatus::Pending,
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(traceparent) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}

/// Place an order: stored PENDING with its OrderPlaced in one transaction; the saga decides.
///
/// The same Idempotency-Key and body (per caller) answer the same order again.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, description = "1-255 visible ASCII characters, unique per order and caller."),
        ("traceparent" = Option<String>, Header, description = "W3C trace context; the order's trace continues it."),
    ),
    request_body(content = NewOrder, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted (or the same key and body again).", body = Accepted,
            headers(
                ("Location" = String, description = "/orders/{order_id}"),
                ("traceparent" = String, description = "The trace of the order"),
            )),
        (status = 400, description = "Idempotency-Key missing, empty or too long, or a body that is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "customer_id is not the caller's (the token's sub) and the caller is no admin.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body breaks a rule (field names it), or the key was used with another body.", body = Problem, content_type = "application/problem+json"),
        Protected,
    )
)]
async fn place_order(
    State(orders): State<Orders>,
    caller: Caller,
    headers: HeaderMap,
    ProblemJson(order): ProblemJson<NewOrder>,
) -> Result<Response, ApiError> {
    // The server span of the order's trace: a child of the caller's `traceparent` if it sent
    // one; the OrderPlaced row carries this span to every later hop. The transaction that
    // stores it is shared with the orders queued beside it (`intake`): one commit for many.
    let span = tracing::info_span!(
        "POST /orders",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/orders",
        trace_id = tracing::field::Empty,
    );
    trace::continue_from(
        &span,
        headers.get("traceparent").and_then(|v| v.to_str().ok()),
    );
    place_order_in_span(orders, caller, headers, order)
        .instrument(span)
        .await
}

async fn place_order_in_span(
    orders: Orders,
    caller: Caller,
    headers: HeaderMap,
    order: NewOrder,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    if !caller.may_act_for(&order.customer_id) {
        return Err(ApiError::NotYourCustomer);
    }
    let total_cents = validate(&order).map_err(|e| ApiError::Invalid {
        field: e.field,
        message: e.message,
    })?;
    let traceparent = trace::current().unwrap_or_else(|| {
        trace::child_of(headers.get("traceparent").and_then(|v| v.to_str().ok()))
    });
    let request_hash = request_hash(&order).map_err(anyhow::Error::from)?;
    let placement = Placement {
        principal: caller.principal().to_string(),
        key,
        request_hash,
        order,
        total_cents,
        traceparent: traceparent.clone(),
        span: tracing::Span::current(),
    };
    match orders.intake.place(placement).await? {
        Placed::Accepted(order_id) => Ok(accepted(order_id, &traceparent)),
        Placed::KeyReused => Err(ApiError::KeyReused),
    }
}

/// An order as stored: PENDING until the saga (or the order deadline) decides it.
///
/// Another customer's order answers 404, like an unknown one.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order.", body = OrderRow),
        (status = 404, description = "No such order (or not the caller's).", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        Protected,
    )
)]
async fn get_order(
    State(orders): State<Orders>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = sagaflow_runtime::http::uuid_in_path(id, "id").map_err(|_| ApiError::BadId)?;
    // Another customer's order is as absent as one that does not exist.
    let order = store::find(&orders.pool, id)
        .await?
        .filter(|order| caller.may_act_for(&order.customer_id))
        .ok_or(ApiError::NotFound(id))?;
    Ok(Json(order).into_response())
}
