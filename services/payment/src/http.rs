//! The service's HTTP API: `GET /payments/{order_id}`, the payment of an order as recorded,
//! for the order's customer (the token's `sub`) and admins; anyone else gets 404.
//! Errors are Problem JSON and never carry internals (database errors are logged, answered
//! 503 or 500).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use sagaflow_runtime::auth::Caller;
use sagaflow_runtime::http::{Problem, uuid_in_path};
use sagaflow_runtime::openapi::Protected;
use sqlx::PgPool;

use crate::store::{self, PaymentRow, PaymentStatus};

/// The OpenAPI description of [`router`]'s routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_payment),
    components(schemas(PaymentRow, PaymentStatus)),
    tags((name = "payments", description = "Payments as recorded (payment-service)."))
)]
struct ApiDoc;

/// The OpenAPI description of the payment API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// The payment API routes. Public: any authenticated caller (see `sagaflow_runtime::auth`).
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/payments/{order_id}", get(get_payment))
        .with_state(pool)
}

/// The payment of an order as recorded.
#[utoipa::path(
    get,
    path = "/payments/{order_id}",
    tag = "payments",
    security(("bearer" = [])),
    params(("order_id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The payment.", body = PaymentRow),
        (status = 404, description = "No payment for this order (yet), or it is not the caller's.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "order_id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        Protected,
    )
)]
async fn get_payment(
    State(pool): State<PgPool>,
    caller: Caller,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Json<PaymentRow>, Problem> {
    let order_id = uuid_in_path(order_id, "order_id")?;
    // Another customer's payment is as absent as one that does not exist.
    let payment = store::find(&pool, order_id).await?;
    match payment.filter(|row| caller.may_read(row.customer_id.as_ref())) {
        Some(row) => Ok(Json(row)),
        None => Err(Problem::not_found(format!(
            "no payment for order {order_id}"
        ))),
    }
}
