//! `GET /sagas/{id}` (state and history) and `GET /sagas/overdue`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sagaflow_runtime::auth;
use sagaflow_runtime::http::Problem;
use sagaflow_runtime::openapi::AdminOnly;
use serde::Serialize;
use sqlx::PgPool;

use crate::store::{self, HistoryView, SagaView};

/// The OpenAPI description of [`router`]'s routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(saga, overdue),
    components(schemas(SagaDetail, OverdueSagas, SagaView, HistoryView)),
    tags((name = "sagas", description = "The order saga's state and history (saga-orchestrator); admin only."))
)]
struct ApiDoc;

/// The OpenAPI description of the saga API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// A saga and every transition it made.
#[derive(Serialize, utoipa::ToSchema)]
struct SagaDetail {
    saga: SagaView,
    /// Oldest first.
    history: Vec<HistoryView>,
}

/// Sagas past their step's deadline (at most 500).
#[derive(Serialize, utoipa::ToSchema)]
struct OverdueSagas {
    count: usize,
    sagas: Vec<SagaView>,
}

/// Admin routes only: saga state and the overdue list are for operators.
pub fn router(pool: PgPool) -> Router {
    let admin = auth::admin_only(
        Router::new()
            .route("/sagas/overdue", get(overdue))
            .route("/sagas/{id}", get(saga)),
    );
    admin.with_state(pool)
}

/// A saga's state, deadline and history.
#[utoipa::path(
    get,
    path = "/sagas/{id}",
    tag = "sagas",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order (saga) id")),
    responses(
        (status = 200, description = "The saga and its history.", body = SagaDetail),
        (status = 404, description = "No saga for this order (yet).", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        AdminOnly,
    )
)]
async fn saga(
    State(pool): State<PgPool>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = sagaflow_runtime::http::uuid_in_path(id, "id")?;
    let (saga, history) = store::view(&pool, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no saga {id}")))?;
    Ok(Json(SagaDetail { saga, history }).into_response())
}

/// Sagas whose current step is past its deadline (should be empty but for a moment).
#[utoipa::path(
    get,
    path = "/sagas/overdue",
    tag = "sagas",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The overdue sagas.", body = OverdueSagas),
        AdminOnly,
    )
)]
async fn overdue(State(pool): State<PgPool>) -> Result<Response, Problem> {
    let sagas = store::overdue(&pool, 500).await?;
    Ok(Json(OverdueSagas {
        count: sagas.len(),
        sagas,
    })
    .into_response())
}
