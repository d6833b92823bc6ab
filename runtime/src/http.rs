//! HTTP plumbing: Problem JSON errors (RFC 9457), a JSON extractor whose rejections are
//! Problem JSON, the operational routes (`/health/live`, `/health/ready`, `/metrics`) and
//! serving with graceful shutdown.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::KafkaConfig;

/// A UUID path parameter, or a 422 Problem naming it: a segment that is not UTF-8 is as bad an
/// id as any (axum would answer its rejection in plain text, not Problem JSON).
pub fn uuid_in_path(
    value: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    field: &str,
) -> Result<uuid::Uuid, Problem> {
    value
        .ok()
        .and_then(|axum::extract::Path(text)| uuid::Uuid::parse_str(&text).ok())
        .ok_or_else(|| Problem::invalid(field, format!("{field} must be a UUID")))
}

/// An RFC 9457 problem. Never carries internal details (SQL, stack, hostnames).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "https://sagaflow.dev/problems/validation",
    "title": "Unprocessable Entity",
    "status": 422,
    "detail": "between 1 and 10000",
    "field": "items[0].quantity"
}))]
pub struct Problem {
    #[serde(skip)]
    pub status: StatusCode,
    /// A URI naming the kind of problem: `https://sagaflow.dev/problems/<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status code.
    #[serde(rename = "status")]
    pub status_code: u16,
    /// What went wrong, for a person; never internal details.
    pub detail: String,
    /// The offending field or header (a JSON path such as `items[0].sku`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            kind: format!("https://sagaflow.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status_code: status.as_u16(),
            detail: detail.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", detail).with_field(field)
    }

    /// The service cannot answer now (database down): retry later.
    pub fn unavailable() -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service is temporarily unavailable; retry later",
        )
    }

    /// An unexpected failure. The cause is logged, not returned.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred",
        )
    }
}

impl From<sqlx::Error> for Problem {
    fn from(error: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&error) {
            tracing::warn!(%error, "database unavailable");
            Problem::unavailable()
        } else {
            Problem::internal(&error)
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `Json<T>` whose rejections are Problem JSON: 400 malformed, 415 wrong content type,
/// 413 too large, 422 with the offending field for data that does not fit `T` — or that is
/// not a JSON object: every request body of the API is one, and serde would otherwise read
/// a struct from an array of its fields' values (`[null, 3]`), accepting a client's mistake.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ProblemJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // What `Json` does, with the object check between reading and deserialising.
        if !json_content_type(req.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| json_problem(JsonRejection::from(e)))?;
        let opens_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if !opens_object && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
            return Err(Problem::invalid("body", "the body must be a JSON object"));
        }
        Json::<T>::from_bytes(&bytes)
            .map(|Json(value)| ProblemJson(value))
            .map_err(json_problem)
    }
}

/// `application/json` or `application/<anything>+json`, parameters aside (axum's rule).
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.split_once('/').is_some_and(|(kind, subtype)| {
        kind == "application" && (subtype == "json" || subtype.ends_with("+json"))
    })
}

fn unsupported_media_type() -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "expected a body with Content-Type: application/json",
    )
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
        JsonRejection::JsonSyntaxError(e) => {
            Problem::new(StatusCode::BAD_REQUEST, "malformed-json", e.body_text())
        }
        JsonRejection::JsonDataError(e) => {
            // "Failed to deserialize the JSON body into the target type: items[0].quantity: ..."
            let text = e.body_text();
            let detail = text
                .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .unwrap_or(&text)
                .to_string();
            let field = detail
                .split(": ")
                .next()
                .filter(|f| !f.contains(' '))
                .unwrap_or("body")
                .to_string();
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", detail).with_field(field)
        }
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "the request body is larger than allowed",
            )
        }
        other => Problem::new(StatusCode::BAD_REQUEST, "bad-request", other.body_text()),
    }
}

/// The process-wide Prometheus recorder (several components may share one process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours just renders empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Consumer groups of this process that died, with why: `/health/ready` is red while one of
/// its deployment's groups (same topic prefix) is listed. Keyed by the prefixed group name, so
/// platforms sharing a process (tests) do not see each other's failures.
fn failed_groups() -> &'static std::sync::Mutex<Vec<(String, String)>> {
    static FAILED: OnceLock<std::sync::Mutex<Vec<(String, String)>>> = OnceLock::new();
    FAILED.get_or_init(Default::default)
}

/// Report consumer `group` (prefixed) as dead: readiness turns red (see [`ops_router`]).
pub fn mark_failed(group: &str, reason: String) {
    if let Ok(mut failed) = failed_groups().lock() {
        failed.push((group.to_string(), reason));
    }
}

/// Why consumers of the deployment with `topic_prefix` died, if any did.
pub fn failures(topic_prefix: &str) -> Vec<String> {
    failed_groups().lock().map_or_else(
        |_| vec!["the failure registry is poisoned".to_string()],
        |failed| {
            failed
                .iter()
                .filter(|(group, _)| group.starts_with(topic_prefix))
                .map(|(_, reason)| reason.clone())
                .collect()
        },
    )
}

/// What `/health/ready` checks.
#[derive(Clone)]
pub struct Readiness {
    pub databases: Vec<(String, PgPool)>,
    pub kafka: Option<KafkaConfig>,
}

/// `/health/live`, `/health/ready`, `/metrics`.
pub fn ops_router(readiness: Readiness) -> Router {
    let handle = metrics_handle();
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "live"})) }),
        )
        .route("/health/ready", get(move || ready(readiness.clone())))
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    handle.run_upkeep();
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        handle.render(),
                    )
                }
            }),
        )
}

async fn ready(readiness: Readiness) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    for (name, pool) in &readiness.databases {
        let up = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(pool),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        ok &= up;
        checks.insert(
            format!("database:{name}"),
            json!(if up { "up" } else { "down" }),
        );
    }
    if let Some(kafka) = readiness.kafka {
        let failed = failures(&kafka.topic_prefix);
        if !failed.is_empty() {
            ok = false;
            checks.insert("consumers".into(), json!(failed));
        }
        let up = tokio::task::spawn_blocking(move || broker_reachable(&kafka))
            .await
            .unwrap_or(false);
        ok &= up;
        checks.insert("kafka".into(), json!(if up { "up" } else { "down" }));
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if ok { "ready" } else { "not ready" }, "checks": checks})),
    )
        .into_response()
}

fn broker_reachable(kafka: &KafkaConfig) -> bool {
    let consumer: Result<BaseConsumer, _> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("broker.address.family", "v4")
        .set("log_level", "3")
        .create();
    consumer.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
}

/// Bound every request (reading a slow client's body included) to `limit` (408 Problem
/// JSON), and record `http_request_duration_seconds{method, route, status}`.
pub fn with_request_timeout(router: Router, limit: Duration) -> Router {
    // route_layer: runs after routing, so the matched route template is known (bounded labels).
    router.route_layer(axum::middleware::from_fn(
        move |request: Request, next: axum::middleware::Next| async move {
            let started = std::time::Instant::now();
            let method = request.method().to_string();
            let route = request
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
            let response = match tokio::time::timeout(limit, next.run(request)).await {
                Ok(response) => response,
                Err(_) => Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the request took too long (slow client?)",
                )
                .into_response(),
            };
            metrics::histogram!(
                "http_request_duration_seconds",
                "method" => method,
                "route" => route,
                "status" => response.status().as_u16().to_string()
            )
            .record(started.elapsed().as_secs_f64());
            response
        },
    ))
}

/// Serve `router`'s routes (so far) only to callers on this machine; anyone else gets 404, as
/// if the routes did not exist. For fault-injection controls, which belong to development
/// and tests: a caller whose address is unknown (served without [`serve`]) is refused too.
pub fn loopback_only<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.route_layer(axum::middleware::from_fn(require_loopback))
}

async fn require_loopback(request: Request, next: axum::middleware::Next) -> Response {
    let local = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|axum::extract::ConnectInfo(peer)| peer.ip().is_loopback());
    if local {
        next.run(request).await
    } else {
        Problem::not_found("no such route").into_response()
    }
}

/// The largest request body accepted (413 above it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Serve `router` on `listener` until `shutdown` is cancelled. Handlers see the peer address
/// (`ConnectInfo<SocketAddr>`): the rate limit keys anonymous clients by it.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        a: Option<i64>,
        b: Option<bool>,
    }

    async fn extract(content_type: &str, body: &'static str) -> Result<ProblemJson<Body>, Problem> {
        let request = Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, content_type)
            .body(axum::body::Body::from(body))
            .unwrap();
        ProblemJson::<Body>::from_request(request, &()).await
    }

    #[tokio::test]
    async fn a_body_must_be_a_json_object() {
        assert!(extract("application/json", r#" {"a": 1}"#).await.is_ok());
        assert!(
            extract("application/problem+json; charset=utf-8", "{}")
                .await
                .is_ok()
        );
        // serde reads a struct from an array of its fields' values: refused.
        for body in ["[null, null]", "[1, true]", "null", "3"] {
            let problem = extract("application/json", body).await.unwrap_err();
            assert_eq!(
                (problem.status_code, problem.field.as_deref()),
                (422, Some("body")),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_json_wrong_type_and_bad_fields_keep_their_statuses() {
        let status = |r: Result<ProblemJson<Body>, Problem>| r.unwrap_err().status_code;
        assert_eq!(status(extract("application/json", "[1,").await), 400);
        assert_eq!(status(extract("text/plain", "{}").await), 415);
        let problem = extract("application/json", r#"{"a": "x"}"#)
            .await
            .unwrap_err();
        assert_eq!(
            (problem.status_code, problem.field.as_deref()),
            (422, Some("a"))
        );
    }
}
