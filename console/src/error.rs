//! The console's one error type, rendered as an HTML page that names what went wrong for the
//! operator and never shows internal details (those go to the log).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use crate::layout;

/// Why a console page could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A parameter the operator gave does not parse.
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The page needs a database that is not configured.
    #[error("{0}")]
    NotConfigured(&'static str),
    /// The request came from another site (CSRF defence).
    #[error("cross-site request refused")]
    CrossSite,
    /// A database or the broker failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ConsoleError {
    fn from(error: sqlx::Error) -> Self {
        ConsoleError::Internal(error.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, detail) = match &self {
            ConsoleError::BadRequest(d) => (StatusCode::BAD_REQUEST, d.clone()),
            ConsoleError::NotFound(d) => (StatusCode::NOT_FOUND, d.clone()),
            ConsoleError::NotConfigured(d) => (StatusCode::SERVICE_UNAVAILABLE, d.to_string()),
            ConsoleError::CrossSite => (StatusCode::FORBIDDEN, self.to_string()),
            ConsoleError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page could not be built; the cause is in the service's log".to_string(),
                )
            }
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let body = html! { h1 { (status.as_u16()) " " (title) } p.error { (detail) } };
        (status, layout::page(title, body)).into_response()
    }
}
