//! `GET /sagas/{id}` (state and history) and `GET /sagas/overdue`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sagaflow_runtime::auth;
use sagaflow_runtime::http::Problem;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::store;

/// Admin routes only: saga state and the overdue list are for operators.
pub fn router(pool: PgPool) -> Router {
    let admin = auth::admin_only(
        Router::new()
            .route("/sagas/overdue", get(overdue))
            .route("/sagas/{id}", get(saga)),
    );
    admin.with_state(pool)
}

async fn saga(State(pool): State<PgPool>, Path(id): Path<String>) -> Result<Response, Problem> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "bad-id", "saga id must be a UUID"))?;
    let (saga, history) = store::view(&pool, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no saga {id}")))?;
    Ok(Json(json!({"saga": saga, "history": history})).into_response())
}

async fn overdue(State(pool): State<PgPool>) -> Result<Response, Problem> {
    let sagas = store::overdue(&pool, 500).await?;
    Ok(Json(json!({"count": sagas.len(), "sagas": sagas})).into_response())
}
