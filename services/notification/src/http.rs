//! The notification HTTP API: `GET /notifications?order_id=<uuid>` lists what an order's
//! customer was sent, oldest first (an empty list when nothing was sent yet).
//!
//! Only the order's customer (the token's `sub`) and admins see an order's notifications:
//! anyone else gets the empty list, as for an order nothing was sent for, so the answer does
//! not tell whether the order exists.
//!
//! Errors are Problem JSON: 422 naming `order_id` when it is missing or not a UUID, 503
//! while the database is unreachable. Database details never leave the service.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use sagaflow_runtime::auth::Caller;
use sagaflow_runtime::http::Problem;
use sagaflow_runtime::openapi::Protected;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::{self, Recorded};

/// The OpenAPI description of [`router`]'s routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list),
    components(schemas(Recorded)),
    tags((name = "notifications", description = "What customers were sent (notification-service)."))
)]
struct ApiDoc;

/// The OpenAPI description of the notification API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// `GET /notifications`: any authenticated caller, who sees only their own orders'
/// notifications (see `sagaflow_runtime::auth`).
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/notifications", get(list))
        .with_state(pool)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    // A string, parsed by hand, so a malformed id gets a Problem naming the field.
    order_id: Option<String>,
}

/// What an order's customer was sent, oldest first (empty until something was sent, and for
/// a caller who is neither the order's customer nor an admin).
#[utoipa::path(
    get,
    path = "/notifications",
    tag = "notifications",
    security(("bearer" = [])),
    params(("order_id" = Uuid, Query, description = "The order id")),
    responses(
        (status = 200, description = "The notifications of the order: empty until something was sent, and for callers other than its customer and admins.", body = Vec<Recorded>),
        (status = 422, description = "order_id is missing or not a UUID.", body = Problem, content_type = "application/problem+json"),
        Protected,
    )
)]
async fn list(
    State(pool): State<PgPool>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<Recorded>>, Problem> {
    let Query(query) = query.map_err(|e| Problem::invalid("order_id", e.body_text()))?;
    let order_id = query
        .order_id
        .ok_or_else(|| Problem::invalid("order_id", "the order_id query parameter is required"))?;
    let order_id = Uuid::parse_str(&order_id)
        .map_err(|_| Problem::invalid("order_id", "order_id must be a UUID"))?;
    let mut sent = store::for_order(&pool, order_id).await?;
    // Every row of an order names its one customer: the list is whole or empty.
    sent.retain(|notification| caller.may_act_for(&notification.customer_id));
    Ok(Json(sent))
}
