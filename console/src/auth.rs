//! Who may use the console, and the defence of its state-changing forms.
//!
//! - **Authentication on** (`SAGAFLOW_JWT_SECRET` set): every page needs a token of the API's
//!   secret with the admin role. A browser cannot easily send a bearer header, so the token is
//!   also taken from the `sagaflow_console` cookie, which the form at `/console/login` sets
//!   after checking the token (HttpOnly, `SameSite=Strict`, path `/console`, expiring with the
//!   token). Never from the URL (it would end up in logs and histories). Without a valid token
//!   a page redirects to the login form (303); a valid token without the admin role gets 403.
//!   `POST /console/logout` clears the cookie.
//! - **Authentication off**: the console is open like the API (which the exposure check
//!   allows only on loopback or on purpose); its operator is `anonymous` in the audit log.
//! - **CSRF**: the cookie is `SameSite=Strict`, so a form posted from another site arrives
//!   without it; in addition every POST whose `Origin` (or `Sec-Fetch-Site`) shows another
//!   site is refused, which also covers an open console.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use sagaflow_runtime::auth::{Claims, bearer_token};
use serde::Deserialize;

use crate::{Console, ConsoleError, layout};

/// The cookie that carries the token.
pub const COOKIE: &str = "sagaflow_console";

/// Who acts: the token's `sub`, or `anonymous` when authentication is off (a request
/// extension set by [`protect`]).
#[derive(Debug, Clone)]
pub struct Operator(pub String);

/// Put authentication and the CSRF check in front of every route of `pages`.
pub(crate) fn protect(pages: Router<Arc<Console>>, console: Arc<Console>) -> Router<Arc<Console>> {
    pages.route_layer(axum::middleware::from_fn_with_state(console, guard))
}

async fn guard(State(console): State<Arc<Console>>, mut request: Request, next: Next) -> Response {
    if request.method() == Method::POST && cross_site(request.headers()) {
        return ConsoleError::CrossSite.into_response();
    }
    let operator = match &console.authenticator {
        None => Operator(sagaflow_runtime::auth::ANONYMOUS.to_string()),
        Some(authenticator) => {
            let claims = token(request.headers()).and_then(|t| authenticator.verify_token(t).ok());
            match claims {
                Some(claims) if claims.is_admin() => Operator(claims.sub),
                Some(_) => return forbidden(),
                None if request.method() == Method::GET => {
                    return Redirect::to("/console/login").into_response();
                }
                None => return unauthorized(),
            }
        }
    };
    request.extensions_mut().insert(operator);
    next.run(request).await
}

/// The token of the request: the bearer header, else the console cookie.
fn token(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers)
        .ok()
        .or_else(|| cookie(headers, COOKIE))
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Whether a request was sent by a page of another site (`Origin` of another host, or the
/// browser's own `Sec-Fetch-Site`).
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => {
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            origin_host != Some(host)
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn unauthorized() -> Response {
    let body = html! {
        h1 { "401 Unauthorized" }
        p { "The console needs an admin token. " a href="/console/login" { "Log in" } "." }
    };
    (StatusCode::UNAUTHORIZED, layout::page("Unauthorized", body)).into_response()
}

fn forbidden() -> Response {
    let body = html! {
        h1 { "403 Forbidden" }
        p { "The console needs a token with the admin role. " a href="/console/login" { "Log in with another token" } "." }
    };
    (StatusCode::FORBIDDEN, layout::page("Forbidden", body)).into_response()
}

/// `/console/login` and `/console/logout`: open routes.
pub(crate) fn login_router() -> Router<Arc<Console>> {
    Router::new()
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let body = html! {
        h1 { "Log in to the Sagaflow console" }
        @if let Some(message) = message { p.error { (message) } }
        p.note { "Paste an admin token (" code { "sagaflow token --sub you --admin" } "). It is kept in an HttpOnly, SameSite=Strict cookie until it expires." }
        form method="post" action="/console/login" {
            textarea name="token" id="token" rows="4" cols="80" required {}
            br;
            button type="submit" id="login" { "Log in" }
        }
    };
    (status, layout::page("Log in", body)).into_response()
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if cross_site(&headers) {
        return ConsoleError::CrossSite.into_response();
    }
    let Some(authenticator) = &console.authenticator else {
        return Redirect::to("/console/sagas").into_response();
    };
    let token = form.token.trim();
    match authenticator.verify_token(token) {
        Ok(claims) if claims.is_admin() => signed_in(token, &claims),
        Ok(_) => login_page(StatusCode::FORBIDDEN, Some("This token has no admin role.")),
        Err(_) => login_page(StatusCode::UNAUTHORIZED, Some("This token is not valid.")),
    }
}

/// Set the cookie (until the token expires) and go to the sagas.
fn signed_in(token: &str, claims: &Claims) -> Response {
    let max_age = claims.exp.saturating_sub(now_secs());
    let cookie =
        format!("{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    let mut response = Redirect::to("/console/sagas").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn logout(headers: HeaderMap) -> Response {
    if cross_site(&headers) {
        return ConsoleError::CrossSite.into_response();
    }
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "sagaflow_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_cookie() {
        assert_eq!(
            token(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            token(&headers(&[("cookie", "a=1; sagaflow_console=xyz; b=2")])),
            Some("xyz")
        );
        assert_eq!(token(&headers(&[("cookie", "sagaflow_console=")])), None);
        assert_eq!(token(&HeaderMap::new()), None);
    }

    #[test]
    fn posts_from_other_sites_are_recognised() {
        assert!(!cross_site(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(cross_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(
            !cross_site(&HeaderMap::new()),
            "a non-browser client sends no Origin"
        );
    }
}
