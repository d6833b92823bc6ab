//! The machine-readable API documents every component serves, next to health and metrics:
//!
//! - `GET /openapi.json`: the OpenAPI 3.1 document of the component's HTTP routes, generated
//!   by utoipa from the handlers' `#[utoipa::path]` annotations and their types (each API
//!   crate exports `openapi()`; [`document`] adds the operational routes, the `bearer`
//!   security scheme and the shared Problem JSON schema). `sagaflow dev` serves the merge of
//!   every component's document; `sagaflow openapi` writes it to `docs/openapi.json`.
//! - `GET /asyncapi.json`: the AsyncAPI 3.0 document of the topics
//!   ([`sagaflow_schemas::asyncapi`]), the same in every component.
//!
//! Both are open (no token), like `/health/*` and `/metrics`: they describe the contract, not
//! data, and clients and fuzzers need them before they hold a token.
//!
//! Error responses: the handlers answer Problem JSON ([`Problem`]); [`Protected`] and
//! [`AdminOnly`] add the answers of the authentication layer ([`crate::auth`]) and of the
//! runtime (request timeout, database down) to an operation's own responses, so each
//! `#[utoipa::path]` lists only what its handler decides.

use std::collections::BTreeMap;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder, Type,
    response::Response,
};
use utoipa::{IntoResponses, OpenApi};

use crate::http::Problem;

/// The name of the bearer security scheme operations refer to (`security(("bearer" = []))`).
pub const BEARER: &str = "bearer";

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A Problem JSON response with `description`, referring to the `Problem` schema.
pub fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

fn with_header(response: Response, name: &str, description: &str) -> Response {
    let mut response = response;
    response.headers.insert(
        name.to_string(),
        HeaderBuilder::new()
            .schema(utoipa::openapi::ObjectBuilder::new().schema_type(Type::String))
            .description(Some(description))
            .build(),
    );
    response
}

fn responses(entries: Vec<(u16, Response)>) -> BTreeMap<String, RefOr<Response>> {
    entries
        .into_iter()
        .map(|(status, response)| (status.to_string(), RefOr::T(response)))
        .collect()
}

/// What any route behind [`crate::auth::protect`] may answer besides its own responses: 401
/// (no or a bad token), 408 (request slower than the bound), 429 (rate limit), 503 (database
/// unreachable) and 500 (a bug; details logged, never returned).
pub struct Protected;

impl Protected {
    fn entries() -> Vec<(u16, Response)> {
        vec![
            (
                401,
                with_header(
                    problem_response(
                        "No bearer token, or one that is not valid or has expired \
                         (only when SAGAFLOW_JWT_SECRET is set).",
                    ),
                    "WWW-Authenticate",
                    "The RFC 6750 challenge: Bearer realm=\"sagaflow\"",
                ),
            ),
            (
                408,
                problem_response("The request (reading its body included) took too long."),
            ),
            (
                429,
                with_header(
                    problem_response(
                        "Over the client's rate limit (SAGAFLOW_RATE_LIMIT_PER_SECOND).",
                    ),
                    "Retry-After",
                    "Seconds to wait, at least 1",
                ),
            ),
            (
                500,
                problem_response("An internal error; its cause is logged, never returned."),
            ),
            (
                503,
                with_header(
                    problem_response("The database is unreachable; retry later."),
                    "Retry-After",
                    "Seconds to wait",
                ),
            ),
        ]
    }
}

impl IntoResponses for Protected {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(Protected::entries())
    }
}

/// [`Protected`], plus 403 for a token without the `admin` role ([`crate::auth::admin_only`]).
pub struct AdminOnly;

impl IntoResponses for AdminOnly {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut entries = Protected::entries();
        entries.push((
            403,
            with_header(
                problem_response("The token lacks the admin role (roles: [\"admin\"])."),
                "WWW-Authenticate",
                "Bearer realm=\"sagaflow\", error=\"insufficient_scope\"",
            ),
        ));
        responses(entries)
    }
}

/// `GET /health/live`: the process is up.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    responses((status = 200, description = "The process is up.", body = Liveness))
)]
#[allow(dead_code)] // documents the route ops_router serves with a closure
fn live() {}

/// `{"status": "live"}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Liveness {
    #[schema(example = "live")]
    status: String,
}

/// `GET /health/ready`: every database answers and the broker is reachable.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Every dependency is up.", body = ReadinessReport),
        (status = 503, description = "A dependency is down, or a consumer died (see checks).", body = ReadinessReport),
    )
)]
#[allow(dead_code)]
fn ready() {}

/// Readiness and what was checked.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ReadinessReport {
    /// `ready` or `not ready`.
    #[schema(example = "ready")]
    status: String,
    /// `database:<name>` and `kafka` → `up` / `down`; `consumers`: why consumers died.
    #[schema(value_type = Object)]
    checks: serde_json::Value,
}

/// `GET /metrics`: Prometheus text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus metrics.", content_type = "text/plain", body = String))
)]
#[allow(dead_code)]
fn metrics() {}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this server.", body = Object))
)]
#[allow(dead_code)]
fn openapi_json() {}

/// `GET /asyncapi.json`: the topics, their messages and headers.
#[utoipa::path(
    get,
    path = "/asyncapi.json",
    tag = "operations",
    responses((status = 200, description = "The AsyncAPI 3.0 document of the topics.", body = Object))
)]
#[allow(dead_code)]
fn asyncapi_json() {}

/// The operational routes every component serves, and the shared components.
#[derive(OpenApi)]
#[openapi(
    paths(live, ready, metrics, openapi_json, asyncapi_json),
    components(schemas(Problem, Liveness, ReadinessReport)),
    tags(
        (name = "operations", description = "Health, readiness, metrics and these documents: open, no token."),
    )
)]
struct Operations;

/// The document `title` serves: the operational routes, `api` (a component's routes, or the
/// merge of all), the bearer scheme and the Problem schema.
pub fn document(title: &str, api: Option<Document>) -> Document {
    let mut doc = Operations::openapi();
    doc.info = InfoBuilder::new()
        .title(title)
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Sagaflow's HTTP API. Errors are RFC 9457 Problem JSON (application/problem+json) \
             and never carry internal details. With SAGAFLOW_JWT_SECRET set, every route but \
             the operational ones needs an HS256 bearer token; admin routes need \
             roles [\"admin\"].",
        ))
        .license(Some(
            utoipa::openapi::LicenseBuilder::new()
                .name("Apache-2.0")
                .identifier(Some("Apache-2.0"))
                .build(),
        ))
        .build();
    if let Some(api) = api {
        doc.merge(api);
    }
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT signed with SAGAFLOW_JWT_SECRET: sub (the customer id for \
                         customers), exp required; roles [\"admin\"] for admin routes. \
                         `sagaflow token` mints one.",
                    ))
                    .build(),
            ),
        );
    doc
}

/// The document as served and committed: pretty JSON with a final newline.
pub fn render(doc: &Document) -> String {
    let mut text = doc
        .to_pretty_json()
        .expect("an OpenAPI document always serialises");
    text.push('\n');
    text
}

/// `GET /openapi.json` (`doc`) and `GET /asyncapi.json`, both rendered once.
pub fn docs_router(doc: &Document) -> Router {
    let openapi = render(doc);
    let asyncapi = sagaflow_schemas::asyncapi::render();
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], openapi) }),
        )
        .route(
            "/asyncapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], asyncapi) }),
        )
}
