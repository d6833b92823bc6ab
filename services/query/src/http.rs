//! The read API. Every response carries `freshness`: the time of the newest event applied,
//! and how many messages of the projection's topics are not applied yet (`lag_messages`, from
//! the last watermark sample, `lag_sampled_at`), so a client can tell fresh from stale.
//!
//! - `GET /views/orders/{id}`: status, items, totals and the timeline of every saga step.
//! - `GET /views/customers/{id}/orders?limit=&cursor=`: a customer's orders, newest first;
//!   `next_cursor` is opaque and stable under inserts (keyset pagination).
//! - `GET /views/stock/{sku}`: reserved stock per SKU.
//!
//! Errors are Problem JSON: 422 naming the field for a malformed id, limit or cursor, 404 for
//! what the projection has not seen, 503 while the database is unreachable.
//!
//! With authentication on, a caller reads only its own customer's orders (the token's `sub`
//! is the customer id): another customer's order or list answers 404, exactly as an unknown
//! one, so the views cannot be used to probe which ids exist. Admins read everything.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sagaflow_runtime::auth::Caller;
use sagaflow_runtime::http::{Problem, uuid_in_path};
use sagaflow_runtime::openapi::Protected;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::projection::Projection;

/// The OpenAPI description of [`router`]'s routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(order, customer_orders, stock),
    components(schemas(Freshness, OrderView, OrderSummary, Step, CustomerOrders, StockView)),
    tags((name = "views", description = "Read models built from the events topics (query service); every answer says how fresh it is."))
)]
struct ApiDoc;

/// The OpenAPI description of the read API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// Public routes: any authenticated caller (see `sagaflow_runtime::auth`).
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/views/orders/{id}", get(order))
        .route("/views/customers/{id}/orders", get(customer_orders))
        .route("/views/stock/{sku}", get(stock))
        .with_state(pool)
}

/// How far a projection has read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Freshness {
    pub projection: String,
    /// Envelope time of the newest event applied.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Messages on its topics not applied yet; `None` before the first watermark sample.
    pub lag_messages: Option<i64>,
    pub lag_sampled_at: Option<DateTime<Utc>>,
}

/// The freshness of `projection` as of now.
pub async fn freshness(pool: &PgPool, projection: Projection) -> Result<Freshness, sqlx::Error> {
    let topics: Vec<String> = projection.topics().iter().map(|t| t.to_string()).collect();
    let row: (Option<DateTime<Utc>>, Option<i64>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT (SELECT max(last_event_at) FROM projection_positions WHERE topic = ANY($1)),
                (SELECT sum(GREATEST(0, w.high_watermark
                                        - GREATEST(COALESCE(p.next_offset, 0),
                                                   COALESCE(w.committed_offset, 0),
                                                   w.low_watermark)))::BIGINT
                   FROM topic_watermarks w
                   LEFT JOIN projection_positions p USING (topic, kafka_partition)
                  WHERE w.topic = ANY($1)),
                (SELECT min(sampled_at) FROM topic_watermarks WHERE topic = ANY($1))",
    )
    .bind(&topics)
    .fetch_one(pool)
    .await?;
    Ok(Freshness {
        projection: projection.name().to_string(),
        last_event_at: row.0,
        lag_messages: row.1,
        lag_sampled_at: row.2,
    })
}

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    order_id: Uuid,
    customer_id: Option<Uuid>,
    status: String,
    reason: Option<String>,
    items: Option<Value>,
    total_cents: Option<i64>,
    currency: Option<String>,
    minor_units: Option<i32>,
    placed_at: Option<DateTime<Utc>>,
    last_event_at: DateTime<Utc>,
}

/// One step of an order's timeline: an event the projection applied.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct Step {
    step: String,
    source: String,
    at: DateTime<Utc>,
    message_id: Uuid,
    detail: Value,
}

/// An order as the read model knows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct OrderSummary {
    order_id: Uuid,
    customer_id: Option<Uuid>,
    /// UNKNOWN until OrderPlaced is seen, then PENDING, APPROVED or REJECTED.
    status: String,
    reason: Option<String>,
    items: Value,
    total_cents: Option<i64>,
    currency: Option<String>,
    /// The total in major units, e.g. "25.00 EUR".
    total: Option<String>,
    placed_at: Option<DateTime<Utc>>,
    last_event_at: DateTime<Utc>,
}

impl From<OrderRow> for OrderSummary {
    fn from(row: OrderRow) -> Self {
        let total = match (row.total_cents, &row.currency, row.minor_units) {
            (Some(cents), Some(currency), Some(units)) => {
                Some(format_amount(cents, units.unsigned_abs(), currency))
            }
            _ => None,
        };
        OrderSummary {
            order_id: row.order_id,
            customer_id: row.customer_id,
            status: row.status,
            reason: row.reason,
            items: row.items.unwrap_or(Value::Array(vec![])),
            total_cents: row.total_cents,
            currency: row.currency,
            total,
            placed_at: row.placed_at,
            last_event_at: row.last_event_at,
        }
    }
}

/// An order, its timeline and the freshness of the view.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct OrderView {
    #[serde(flatten)]
    order: OrderSummary,
    timeline: Vec<Step>,
    freshness: Freshness,
}

const ORDER_COLUMNS: &str = "order_id, customer_id, status, reason, items, total_cents, currency, \
                             minor_units, placed_at, last_event_at";

/// An order's status, items, total and timeline, from the events.
#[utoipa::path(
    get,
    path = "/views/orders/{id}",
    tag = "views",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order view.", body = OrderView),
        (status = 404, description = "The view has not seen this order (yet), or it is not the caller's.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        Protected,
    )
)]
async fn order(
    State(pool): State<PgPool>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderView>, Problem> {
    let id = uuid_in_path(id, "id")?;
    let freshness = freshness(&pool, Projection::Orders).await?;
    let row: Option<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders_view WHERE order_id = $1"
    )))
    .bind(id)
    .fetch_optional(&pool)
    .await?;
    // Until its OrderPlaced is seen an order has no known owner: only admins see it then.
    let row = row.filter(|row| caller.may_read(row.customer_id.as_ref()));
    let Some(row) = row else {
        return Err(Problem::not_found(format!(
            "the order view has no order {id} (yet: see freshness of GET on a known order)"
        )));
    };
    let timeline: Vec<Step> = sqlx::query_as(
        "SELECT step, source, at, message_id, detail FROM order_timeline
         WHERE order_id = $1 ORDER BY at, message_id",
    )
    .bind(id)
    .fetch_all(&pool)
    .await?;
    Ok(Json(OrderView {
        order: row.into(),
        timeline,
        freshness,
    }))
}

#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<String>,
    cursor: Option<String>,
}

/// A page of a customer's orders, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CustomerOrders {
    customer_id: Uuid,
    orders: Vec<OrderSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    next_cursor: Option<String>,
    freshness: Freshness,
}

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

/// A customer's orders, newest first, a page at a time (keyset pagination).
#[utoipa::path(
    get,
    path = "/views/customers/{id}/orders",
    tag = "views",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The customer id"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Orders per page, 1-100 (20)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of orders.", body = CustomerOrders),
        (status = 404, description = "Not the caller's customer.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed id, limit or cursor (field names it).", body = Problem, content_type = "application/problem+json"),
        Protected,
    )
)]
async fn customer_orders(
    State(pool): State<PgPool>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<CustomerOrders>, Problem> {
    let customer_id = uuid_in_path(id, "id")?;
    if !caller.may_act_for(&customer_id) {
        return Err(Problem::not_found(format!(
            "the order view has no customer {customer_id}"
        )));
    }
    let Query(page) = page.map_err(|e| Problem::invalid("query", e.body_text()))?;
    let limit = match page.limit {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                Problem::invalid("limit", format!("limit must be between 1 and {MAX_LIMIT}"))
            })?,
    };
    let cursor = page.cursor.as_deref().map(parse_cursor).transpose()?;
    let freshness = freshness(&pool, Projection::Orders).await?;
    // Orders appear once their OrderPlaced is seen (placed_at is the sort key).
    let (before_at, before_id) = cursor.unwrap_or((DateTime::<Utc>::MAX_UTC, Uuid::max()));
    let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders_view
         WHERE customer_id = $1 AND placed_at IS NOT NULL AND (placed_at, order_id) < ($2, $3)
         ORDER BY placed_at DESC, order_id DESC LIMIT $4"
    )))
    .bind(customer_id)
    .bind(before_at)
    .bind(before_id)
    .bind(limit + 1)
    .fetch_all(&pool)
    .await?;
    let more = rows.len() as i64 > limit;
    let orders: Vec<OrderSummary> = rows
        .into_iter()
        .take(limit as usize)
        .map(Into::into)
        .collect();
    let next_cursor = more
        .then(|| orders.last())
        .flatten()
        .and_then(|last| Some(format_cursor(last.placed_at?, last.order_id)));
    Ok(Json(CustomerOrders {
        customer_id,
        orders,
        next_cursor,
        freshness,
    }))
}

fn format_cursor(placed_at: DateTime<Utc>, order_id: Uuid) -> String {
    format!("{}.{}", placed_at.timestamp_micros(), order_id.simple())
}

fn parse_cursor(text: &str) -> Result<(DateTime<Utc>, Uuid), Problem> {
    let invalid = || Problem::invalid("cursor", "cursor must be a next_cursor returned earlier");
    let (micros, id) = text.split_once('.').ok_or_else(invalid)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok((at, id))
}

/// Reservations of a SKU as the inventory events tell them.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = ReservedStock)]
struct StockRow {
    sku: String,
    /// Held by reservations not released (sold stock stays held: approved orders keep it).
    reserved: i64,
    reserved_total: i64,
    released_total: i64,
    last_event_at: DateTime<Utc>,
}

/// Reserved stock of a SKU, as the events tell it (inventory's own view is `StockView`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ReservedStockView)]
struct StockView {
    #[serde(flatten)]
    stock: StockRow,
    /// Not derivable from events: stock levels are set through inventory's HTTP API, which
    /// publishes no event. Always null; inventory's `GET /inventory/{sku}` has the level.
    available: Option<i64>,
    freshness: Freshness,
}

/// Reserved stock of a SKU, from the inventory events.
#[utoipa::path(
    get,
    path = "/views/stock/{sku}",
    tag = "views",
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "1-64 characters of [A-Za-z0-9._-]")),
    responses(
        (status = 200, description = "The stock view.", body = StockView),
        (status = 404, description = "The view has seen no reservation of this SKU.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The SKU breaks the rule (1-64 characters of [A-Za-z0-9._-]).", body = Problem, content_type = "application/problem+json"),
        Protected,
    )
)]
async fn stock(
    State(pool): State<PgPool>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Json<StockView>, Problem> {
    let Path(sku) = sku.map_err(|_| Problem::invalid("sku", "sku must be valid UTF-8"))?;
    // The SKU rule of orders (and inventory): anything else was never reserved, and text
    // PostgreSQL refuses (a NUL byte) must not reach it.
    let valid = (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        return Err(Problem::invalid(
            "sku",
            "sku must be 1 to 64 characters of [A-Za-z0-9._-]",
        ));
    }
    let freshness = freshness(&pool, Projection::Stock).await?;
    let row: Option<StockRow> = sqlx::query_as(
        "SELECT sku, reserved, reserved_total, released_total, last_event_at
         FROM stock_view WHERE sku = $1",
    )
    .bind(&sku)
    .fetch_optional(&pool)
    .await?;
    match row {
        Some(stock) => Ok(Json(StockView {
            stock,
            available: None,
            freshness,
        })),
        None => Err(Problem::not_found(format!(
            "the stock view has seen no reservation of SKU {sku}"
        ))),
    }
}

/// `cents` in major units with the currency's minor units, e.g. 2500, 2, EUR → "25.00 EUR".
pub fn format_amount(cents: i64, minor_units: u32, currency: &str) -> String {
    if minor_units == 0 {
        return format!("{cents} {currency}");
    }
    let scale = 10i128.pow(minor_units);
    let value = i128::from(cents);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.abs();
    format!(
        "{sign}{}.{:0width$} {currency}",
        abs / scale,
        abs % scale,
        width = minor_units as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_render_with_minor_units() {
        assert_eq!(format_amount(2500, 2, "EUR"), "25.00 EUR");
        assert_eq!(format_amount(5, 2, "USD"), "0.05 USD");
        assert_eq!(format_amount(1500, 0, "JPY"), "1500 JPY");
        assert_eq!(format_amount(-1234, 3, "KWD"), "-1.234 KWD");
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_a_422() {
        let at = DateTime::from_timestamp_micros(1_763_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        assert_eq!(parse_cursor(&format_cursor(at, id)).unwrap(), (at, id));
        for bad in ["", "x", "1.nope", "nope.0195f0c2"] {
            let problem = parse_cursor(bad).unwrap_err();
            assert_eq!(problem.status_code, 422);
            assert_eq!(problem.field.as_deref(), Some("cursor"));
        }
    }
}
