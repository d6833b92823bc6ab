//! The inventory HTTP API: read a SKU's stock and set its available quantity (restocking).
//!
//! Errors are Problem JSON (RFC 9457): 422 with the offending field for invalid input, 404
//! for an unknown SKU, 503 while the database is unreachable. Database details never leave
//! the service.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use sagaflow_common::auth;
use sagaflow_common::http::{Problem, ProblemJson};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::domain::{self, StockRow};
use crate::store;

/// `GET` (public) and `PUT /inventory/{sku}` (admin: restocking changes what can be sold).
pub fn router(pool: PgPool) -> Router {
    let public = Router::new().route("/inventory/{sku}", get(get_stock));
    let admin = auth::admin_only(Router::new().route("/inventory/{sku}", put(set_stock)));
    public.merge(admin).with_state(pool)
}

/// Body of `PUT /inventory/{sku}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStock {
    /// Optional and wider than the column so that a missing or out-of-range value gets a
    /// Problem naming the field, not serde's message.
    available: Option<i64>,
}

/// A SKU's stock as served.
#[derive(Debug, Serialize)]
struct StockView {
    sku: String,
    available: i32,
    reserved: i32,
}

impl From<StockRow> for StockView {
    fn from(row: StockRow) -> Self {
        StockView {
            sku: row.sku,
            available: row.available,
            reserved: row.reserved,
        }
    }
}

async fn get_stock(
    State(pool): State<PgPool>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Json<StockView>, Problem> {
    let sku = valid_sku(sku)?;
    match store::get(&pool, &sku).await? {
        Some(row) => Ok(Json(row.into())),
        None => Err(Problem::not_found(format!(
            "no stock is recorded for SKU {sku}"
        ))),
    }
}

async fn set_stock(
    State(pool): State<PgPool>,
    sku: Result<Path<String>, PathRejection>,
    ProblemJson(body): ProblemJson<SetStock>,
) -> Result<Json<StockView>, Problem> {
    let sku = valid_sku(sku)?;
    let available = body
        .available
        .ok_or_else(|| Problem::invalid("available", "available is required"))?;
    let available = i32::try_from(available)
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            Problem::invalid(
                "available",
                format!("available must be between 0 and {}", i32::MAX),
            )
        })?;
    let row = store::set_available(&pool, &sku, available).await?;
    Ok(Json(row.into()))
}

fn valid_sku(sku: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let Path(sku) = sku.map_err(|_| Problem::invalid("sku", "sku must be valid UTF-8"))?;
    domain::validate_sku(&sku).map_err(|reason| Problem::invalid("sku", reason))?;
    Ok(sku)
}
