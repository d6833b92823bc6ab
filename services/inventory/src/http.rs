//! The inventory HTTP API: read a SKU's stock, set its available quantity (restocking) and add
//! to or take from it (adjustments).
//!
//! Lost updates: every stock row has a version, bumped by every write to it (reservations and
//! releases included) and served as a strong `ETag` (`"v7"`). A `PUT` with `If-Match` applies
//! only if nothing changed since the client's read; an adjustment is relative, so it composes
//! with concurrent writes and needs no precondition. Both apply under the row lock
//! reservations take, in one transaction.
//!
//! Errors are Problem JSON (RFC 9457): 422 with the offending field for invalid input, 400 for
//! a malformed `If-Match`, 404 for an unknown SKU, 412 when `If-Match` fails, 503 while the
//! database is unreachable. Database details never leave the service.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use sagaflow_runtime::auth;
use sagaflow_runtime::http::{Problem, ProblemJson};
use sagaflow_runtime::openapi::{AdminOnly, Protected};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::domain::{self, StockRow};
use crate::store::{self, VersionedStock};

/// The OpenAPI description of [`router`]'s routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_stock, set_stock, adjust_stock),
    components(schemas(StockView, SetStock, Adjustment)),
    tags((name = "inventory", description = "Stock levels (inventory-service); writes are admin only."))
)]
struct ApiDoc;

/// The OpenAPI description of the inventory API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// `GET /inventory/{sku}` (public); `PUT /inventory/{sku}` and
/// `POST /inventory/{sku}/adjustments` (admin: they change what can be sold).
pub fn router(pool: PgPool) -> Router {
    let public = Router::new().route("/inventory/{sku}", get(get_stock));
    let admin = auth::admin_only(
        Router::new()
            .route("/inventory/{sku}", put(set_stock))
            .route("/inventory/{sku}/adjustments", post(adjust_stock)),
    );
    public.merge(admin).with_state(pool)
}

/// Errors of the inventory API, each answered as Problem JSON.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    /// 422: a path or body value breaks a rule; names the field.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// 400: the If-Match header is neither `*` nor a list of quoted entity tags.
    #[error(r#"If-Match must be * or a list of quoted entity tags such as "v7""#)]
    BadIfMatch,
    /// 404: no stock row for this SKU.
    #[error("no stock is recorded for SKU {0}")]
    NotFound(String),
    /// 412: If-Match matches no current version of the SKU (`current`; `None`: no such SKU).
    /// Nothing was written.
    #[error("{}", precondition_detail(.sku, *.current))]
    PreconditionFailed { sku: String, current: Option<i64> },
    /// 503 when the database is unreachable, 500 otherwise (details logged, not returned).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn precondition_detail(sku: &str, current: Option<i64>) -> String {
    match current {
        Some(version) => format!(
            "the stock of SKU {sku} changed since it was read (its ETag is now {}); \
             read it again and retry with the new ETag",
            etag(version)
        ),
        None => format!(
            "no stock is recorded for SKU {sku}, so If-Match cannot match; \
             PUT without If-Match to create it"
        ),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match self {
            ApiError::Invalid { field, message } => Problem::invalid(field, message),
            ApiError::BadIfMatch => {
                Problem::new(StatusCode::BAD_REQUEST, "bad-if-match", self.to_string())
                    .with_field("If-Match")
            }
            ApiError::NotFound(_) => Problem::not_found(self.to_string()),
            ApiError::PreconditionFailed { .. } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                self.to_string(),
            )
            .with_field("If-Match"),
            ApiError::Database(e) => Problem::from(e),
        };
        problem.into_response()
    }
}

/// Body of `PUT /inventory/{sku}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetStock {
    /// Required: the available quantity, 0 to 2147483647. (Optional and wider than the
    /// column in Rust so that a missing or out-of-range value gets a Problem naming the
    /// field, not serde's message.)
    #[schema(required = true, minimum = 0, maximum = 2147483647)]
    available: Option<i64>,
}

/// Body of `POST /inventory/{sku}/adjustments`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Adjustment {
    /// Required, non-zero: added to `available` (negative: taken away). Optional and wider
    /// than the column in Rust for the same reason as [`SetStock::available`].
    #[schema(required = true, minimum = -2147483648, maximum = 2147483647)]
    delta: Option<i64>,
}

/// A SKU's stock as served.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

/// `GET /inventory/{sku}`: the stock, with its version as a strong `ETag`.
#[utoipa::path(
    get,
    path = "/inventory/{sku}",
    tag = "inventory",
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "1-64 characters of [A-Za-z0-9._-]")),
    responses(
        (status = 200, description = "The stock.", body = StockView, headers(("ETag" = String, description = "The row version, e.g. \"v7\"; send it as If-Match"))),
        (status = 404, description = "No stock is recorded for this SKU.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The SKU breaks the rules (field sku).", body = Problem, content_type = "application/problem+json"),
        Protected,
    )
)]
async fn get_stock(
    State(pool): State<PgPool>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let sku = valid_sku(sku)?;
    let stock = store::get(&pool, &sku)
        .await?
        .ok_or(ApiError::NotFound(sku))?;
    Ok(tagged(stock))
}

/// `PUT /inventory/{sku}` `{"available": n}`: set the available quantity, creating the SKU if
/// it does not exist; what is reserved is untouched. Answers the stock and its new `ETag`.
///
/// - With `If-Match`, the set applies only if the SKU's current ETag is one of those listed
///   (strong comparison: `W/` tags never match) or the header is `*` and the SKU exists;
///   otherwise 412 and nothing is written. A SKU that does not exist fails every `If-Match`
///   (RFC 9110 §13.1.1), so a conditional PUT never creates one.
/// - Without `If-Match` the set is unconditional, as before ETags existed, so existing clients
///   (seeding scripts, the chaos tool) keep working; the last writer wins, and a reservation
///   made since the client's read is overwritten. Send `If-Match` to be safe.
///
/// The check and the write run in one transaction under the row lock reservations take, so
/// nothing can slip in between.
#[utoipa::path(
    put,
    path = "/inventory/{sku}",
    tag = "inventory",
    security(("bearer" = [])),
    params(
        ("sku" = String, Path, description = "1-64 characters of [A-Za-z0-9._-]"),
        ("If-Match" = Option<String>, Header, description = "`*` or entity tags from ETag: apply only if unchanged"),
    ),
    request_body(content = SetStock, content_type = "application/json"),
    responses(
        (status = 200, description = "The stock as set.", body = StockView, headers(("ETag" = String, description = "The row version, e.g. \"v7\"; send it as If-Match"))),
        (status = 400, description = "A malformed If-Match, or a body that is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag (or the SKU does not exist); nothing was written.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks a rule (field names it).", body = Problem, content_type = "application/problem+json"),
        AdminOnly,
    )
)]
async fn set_stock(
    State(pool): State<PgPool>,
    sku: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    ProblemJson(body): ProblemJson<SetStock>,
) -> Result<Response, ApiError> {
    let sku = valid_sku(sku)?;
    let if_match = IfMatch::from_headers(&headers)?;
    let available = valid_available(body.available)?;
    let mut tx = pool.begin().await?;
    let current = store::stock_for_update(&mut tx, &sku)
        .await?
        .map(|s| s.version);
    if !precondition_holds(if_match.as_ref(), current) {
        return Err(ApiError::PreconditionFailed { sku, current });
    }
    let stock = store::set_available(&mut tx, &sku, available).await?;
    tx.commit().await?;
    Ok(tagged(stock))
}

/// `POST /inventory/{sku}/adjustments` `{"delta": n}`: add `n` (non-zero, may be negative) to
/// the available quantity of an existing SKU, atomically, and answer the stock and its new
/// `ETag`. Being relative, concurrent adjustments and reservations all count: none is lost.
/// 422 when the result would be negative (or overflow), 404 for an unknown SKU.
#[utoipa::path(
    post,
    path = "/inventory/{sku}/adjustments",
    tag = "inventory",
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "1-64 characters of [A-Za-z0-9._-]")),
    request_body(content = Adjustment, content_type = "application/json"),
    responses(
        (status = 200, description = "The stock after the adjustment.", body = StockView, headers(("ETag" = String, description = "The row version, e.g. \"v7\"; send it as If-Match"))),
        (status = 400, description = "A body that is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No stock is recorded for this SKU.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks a rule, or the result would be negative (field names it).", body = Problem, content_type = "application/problem+json"),
        AdminOnly,
    )
)]
async fn adjust_stock(
    State(pool): State<PgPool>,
    sku: Result<Path<String>, PathRejection>,
    ProblemJson(body): ProblemJson<Adjustment>,
) -> Result<Response, ApiError> {
    let sku = valid_sku(sku)?;
    let delta = valid_delta(body.delta)?;
    let mut tx = pool.begin().await?;
    // Locked so that the check below still holds when the update applies (the CHECK
    // constraint would refuse a negative result anyway, but without a reason to give).
    let current = store::stock_for_update(&mut tx, &sku)
        .await?
        .ok_or_else(|| ApiError::NotFound(sku.clone()))?;
    adjusted(current.stock.available, delta)?;
    let stock = store::add_available(&mut tx, &sku, delta)
        .await?
        .ok_or_else(|| ApiError::NotFound(sku.clone()))?;
    tx.commit().await?;
    Ok(tagged(stock))
}

/// 200 with the stock as JSON and its version as a strong `ETag`.
fn tagged(stock: VersionedStock) -> Response {
    let etag = etag(stock.version);
    let mut response = Json(StockView::from(stock.stock)).into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The entity tag of a row version, quoted as RFC 9110 wants: `"v7"`.
fn etag(version: i64) -> String {
    format!("\"v{version}\"")
}

/// Whether a write may apply: always without `If-Match`; with it, only if it matches the
/// current row (`None`: the SKU does not exist).
fn precondition_holds(if_match: Option<&IfMatch>, current: Option<i64>) -> bool {
    if_match.is_none_or(|m| m.matches(current))
}

/// A parsed `If-Match` header (RFC 9110 §13.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
enum IfMatch {
    /// `*`: any current representation, i.e. the SKU exists.
    Any,
    /// One or more entity tags.
    Tags(Vec<EntityTag>),
}

/// One entity tag: `"v7"` or `W/"v7"`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EntityTag {
    weak: bool,
    /// With its quotes, comparable to [`etag`].
    tag: String,
}

impl IfMatch {
    /// `None` without the header. Several header lines form one list (RFC 9110 §5.3).
    fn from_headers(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
        let values = headers
            .get_all(header::IF_MATCH)
            .iter()
            .map(|v| v.to_str().map_err(|_| ApiError::BadIfMatch))
            .collect::<Result<Vec<_>, _>>()?;
        if values.is_empty() {
            return Ok(None);
        }
        IfMatch::parse(&values.join(","))
            .map(Some)
            .ok_or(ApiError::BadIfMatch)
    }

    /// `*`, or a comma-separated list of at least one entity tag (empty elements allowed, as
    /// for every list header). `None` when malformed: refusing beats guessing what a broken
    /// precondition meant, since ignoring it would write unconditionally.
    fn parse(value: &str) -> Option<IfMatch> {
        if value.trim() == "*" {
            return Some(IfMatch::Any);
        }
        let mut tags = Vec::new();
        let mut rest = value;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            let (tag, after) = EntityTag::parse_prefix(rest)?;
            tags.push(tag);
            rest = after.trim_start_matches([' ', '\t']);
            if !(rest.is_empty() || rest.starts_with(',')) {
                return None;
            }
        }
        (!tags.is_empty()).then_some(IfMatch::Tags(tags))
    }

    /// Strong comparison, as If-Match requires: a weak tag never matches. Nothing matches a
    /// SKU that does not exist (`current` `None`), not even `*`.
    fn matches(&self, current: Option<i64>) -> bool {
        let Some(version) = current else {
            return false;
        };
        match self {
            IfMatch::Any => true,
            IfMatch::Tags(tags) => {
                let current = etag(version);
                tags.iter().any(|t| !t.weak && t.tag == current)
            }
        }
    }
}

impl EntityTag {
    /// The entity tag at the start of `text`, and what follows it.
    fn parse_prefix(text: &str) -> Option<(EntityTag, &str)> {
        let (weak, text) = match text.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let inner = text.strip_prefix('"')?;
        let end = inner.find('"')?;
        let opaque = &inner[..end];
        // etagc: visible characters but DQUOTE, or obs-text.
        if !opaque
            .bytes()
            .all(|b| b == 0x21 || (b >= 0x23 && b != 0x7F))
        {
            return None;
        }
        let tag = EntityTag {
            weak,
            tag: format!("\"{opaque}\""),
        };
        Some((tag, &inner[end + 1..]))
    }
}

fn valid_sku(sku: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(sku) = sku.map_err(|_| invalid("sku", "sku must be valid UTF-8"))?;
    domain::validate_sku(&sku).map_err(|reason| invalid("sku", reason))?;
    Ok(sku)
}

fn valid_available(available: Option<i64>) -> Result<i32, ApiError> {
    let available = available.ok_or_else(|| invalid("available", "available is required"))?;
    i32::try_from(available)
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            invalid(
                "available",
                format!("available must be between 0 and {}", i32::MAX),
            )
        })
}

/// A delta must change something and fit the column.
fn valid_delta(delta: Option<i64>) -> Result<i32, ApiError> {
    let delta = delta.ok_or_else(|| invalid("delta", "delta is required"))?;
    i32::try_from(delta)
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| {
            invalid(
                "delta",
                format!(
                    "delta must be non-zero and between {} and {}",
                    i32::MIN,
                    i32::MAX
                ),
            )
        })
}

/// The available quantity after adding `delta`: never negative, never past the column.
fn adjusted(available: i32, delta: i32) -> Result<i32, ApiError> {
    match available.checked_add(delta) {
        Some(n) if n >= 0 => Ok(n),
        Some(_) => Err(invalid(
            "delta",
            format!("delta {delta} would make available negative (available is {available})"),
        )),
        None => Err(invalid(
            "delta",
            format!("delta {delta} would take available past {}", i32::MAX),
        )),
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strong(tag: &str) -> EntityTag {
        EntityTag {
            weak: false,
            tag: tag.into(),
        }
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::IF_MATCH, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn etags_are_quoted_versions() {
        assert_eq!(etag(7), r#""v7""#);
        assert_eq!(etag(1), r#""v1""#);
    }

    #[test]
    fn if_match_parses_star_and_lists_of_tags() {
        assert_eq!(IfMatch::parse("*"), Some(IfMatch::Any));
        assert_eq!(IfMatch::parse(" * "), Some(IfMatch::Any));
        assert_eq!(
            IfMatch::parse(r#""v7""#),
            Some(IfMatch::Tags(vec![strong(r#""v7""#)]))
        );
        assert_eq!(
            IfMatch::parse(r#" "v1",W/"v2" , "v3",, "#),
            Some(IfMatch::Tags(vec![
                strong(r#""v1""#),
                EntityTag {
                    weak: true,
                    tag: r#""v2""#.into()
                },
                strong(r#""v3""#),
            ]))
        );
        // The empty tag is a valid entity tag (it matches nothing we serve).
        assert_eq!(
            IfMatch::parse(r#""""#),
            Some(IfMatch::Tags(vec![strong(r#""""#)]))
        );
    }

    #[test]
    fn malformed_if_match_is_refused() {
        for value in [
            "",
            " , ",
            "v7",
            r#""v7"#,
            r#""v7" x"#,
            r#""v7""v8""#,
            r#"*, "v7""#,
            r#"w/"v7""#,
            "\"v 7\"",
        ] {
            assert_eq!(IfMatch::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn if_match_compares_strongly_and_needs_an_existing_row() {
        let tags = IfMatch::parse(r#""v3", W/"v7""#).unwrap();
        assert!(tags.matches(Some(3)));
        assert!(!tags.matches(Some(7)), "a weak tag never matches");
        assert!(!tags.matches(Some(4)));
        assert!(!tags.matches(None));
        assert!(IfMatch::Any.matches(Some(1)));
        assert!(!IfMatch::Any.matches(None), "* needs the SKU to exist");
    }

    #[test]
    fn without_if_match_every_write_applies() {
        assert!(precondition_holds(None, None));
        assert!(precondition_holds(None, Some(9)));
        let stale = IfMatch::parse(r#""v8""#).unwrap();
        assert!(!precondition_holds(Some(&stale), Some(9)));
        assert!(precondition_holds(Some(&stale), Some(8)));
    }

    #[test]
    fn if_match_header_lines_form_one_list() {
        assert_eq!(IfMatch::from_headers(&HeaderMap::new()).unwrap(), None);
        let parsed = IfMatch::from_headers(&headers(&[br#""v1""#, br#""v2""#]))
            .unwrap()
            .unwrap();
        assert!(parsed.matches(Some(1)) && parsed.matches(Some(2)));
        assert!(matches!(
            IfMatch::from_headers(&headers(&[b"\"v\xff\""])),
            Err(ApiError::BadIfMatch)
        ));
        assert!(matches!(
            IfMatch::from_headers(&headers(&[b"v1"])),
            Err(ApiError::BadIfMatch)
        ));
    }

    #[test]
    fn deltas_must_be_non_zero_and_fit_the_column() {
        assert_eq!(valid_delta(Some(5)).unwrap(), 5);
        assert_eq!(valid_delta(Some(-3)).unwrap(), -3);
        for delta in [None, Some(0), Some(i64::from(i32::MAX) + 1), Some(i64::MIN)] {
            assert!(
                matches!(
                    valid_delta(delta),
                    Err(ApiError::Invalid { field: "delta", .. })
                ),
                "{delta:?}"
            );
        }
    }

    #[test]
    fn adjustments_never_go_negative_or_overflow() {
        assert_eq!(adjusted(5, 3).unwrap(), 8);
        assert_eq!(adjusted(5, -5).unwrap(), 0);
        assert!(matches!(
            adjusted(5, -6),
            Err(ApiError::Invalid { field: "delta", .. })
        ));
        assert!(matches!(
            adjusted(i32::MAX, 1),
            Err(ApiError::Invalid { field: "delta", .. })
        ));
    }

    #[test]
    fn available_must_fit_the_column() {
        assert_eq!(valid_available(Some(0)).unwrap(), 0);
        for available in [None, Some(-1), Some(i64::from(i32::MAX) + 1)] {
            assert!(
                matches!(
                    valid_available(available),
                    Err(ApiError::Invalid {
                        field: "available",
                        ..
                    })
                ),
                "{available:?}"
            );
        }
    }

    #[test]
    fn errors_answer_their_status_as_problem_json() {
        let cases = [
            (invalid("delta", "x"), 422),
            (ApiError::BadIfMatch, 400),
            (ApiError::NotFound("A".into()), 404),
            (
                ApiError::PreconditionFailed {
                    sku: "A".into(),
                    current: Some(8),
                },
                412,
            ),
            (
                ApiError::PreconditionFailed {
                    sku: "A".into(),
                    current: None,
                },
                412,
            ),
        ];
        for (error, status) in cases {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
        }
    }

    #[test]
    fn a_failed_precondition_names_the_current_etag() {
        let error = ApiError::PreconditionFailed {
            sku: "SKU-1".into(),
            current: Some(8),
        };
        assert!(error.to_string().contains(r#""v8""#), "{error}");
    }
}
