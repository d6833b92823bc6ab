//! Who may call the public API, and how often.
//!
//! - **Authentication**: HS256 JWT bearer tokens signed with `SAGAFLOW_JWT_SECRET`. Without a
//!   secret the API is open, which [`crate::exposure`] allows only on loopback or when chosen
//!   (`SAGAFLOW_AUTH=off`, `--insecure-no-auth`). `exp` and `sub` are required, `nbf` is
//!   checked when present, `iss` / `aud` only when `SAGAFLOW_JWT_ISSUER` /
//!   `SAGAFLOW_JWT_AUDIENCE` are set (then they are required too). Missing, invalid or
//!   expired tokens get 401 Problem JSON with `WWW-Authenticate: Bearer`.
//! - **Authorisation**: routers mark their admin routes with [`admin_only`]; those need the
//!   claim `"roles": ["admin"]` (403 Problem JSON otherwise). Handlers take the [`Caller`]
//!   for ownership: the token's `sub` is the customer, and idempotency keys are scoped to it.
//! - **Rate limiting** (governor, GCRA): per client, keyed by the token's `sub` when the caller
//!   is authenticated, else by the peer IP address ([`crate::proxy`] behind trusted proxies).
//!   Off unless `SAGAFLOW_RATE_LIMIT_PER_SECOND` is set; over the limit → 429 Problem JSON with
//!   `Retry-After` (whole seconds, at least 1) and `http_rate_limited_total` counted.
//!
//! [`protect`] puts both in front of a router's routes; the operational routes (health,
//! metrics) are merged after it and stay open.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::http::Problem;

/// The role an admin route needs, in the token's `roles` array.
pub const ADMIN_ROLE: &str = "admin";

/// Tolerated clock skew when checking `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

/// Whether the API requires tokens (`SAGAFLOW_AUTH`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Bearer JWTs signed with `SAGAFLOW_JWT_SECRET`; without a secret the API may be served
    /// on loopback only ([`crate::exposure`]).
    #[default]
    Jwt,
    /// No authentication, on any address: an explicit choice, logged loudly.
    Off,
}

/// How the API is protected. Closed by default: with no secret a component serves only on
/// loopback ([`crate::exposure`]); no rate limit unless set.
#[derive(Clone, Default, clap::Args)]
pub struct ApiSecurity {
    /// `jwt` (default) or `off`: serve the API without authentication, even beyond loopback.
    #[arg(long = "auth", env = "SAGAFLOW_AUTH", value_enum, default_value_t = AuthMode::Jwt)]
    pub auth: AuthMode,
    /// The same as SAGAFLOW_AUTH=off.
    #[arg(long = "insecure-no-auth")]
    pub insecure_no_auth: bool,
    /// HS256 secret of the bearer tokens; unset (or empty) = the API is open (development).
    #[arg(
        long = "jwt-secret",
        env = "SAGAFLOW_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// Required `iss` of the tokens (not checked when unset).
    #[arg(long = "jwt-issuer", env = "SAGAFLOW_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of the tokens (not checked when unset).
    #[arg(long = "jwt-audience", env = "SAGAFLOW_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Sustained requests per second per client; 0 = no rate limit.
    #[arg(
        long = "rate-limit-per-second",
        env = "SAGAFLOW_RATE_LIMIT_PER_SECOND",
        default_value_t = 0
    )]
    pub rate_limit_per_second: u32,
    /// Reverse proxies (addresses or CIDR blocks, comma-separated) whose X-Forwarded-For names
    /// the client for the rate limit; empty (default) = the header is ignored.
    #[arg(
        long = "trusted-proxies",
        env = "SAGAFLOW_TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: crate::proxy::TrustedProxies,
    /// Requests a client may send at once (the bucket size); 0 = the per-second rate.
    #[arg(
        long = "rate-limit-burst",
        env = "SAGAFLOW_RATE_LIMIT_BURST",
        default_value_t = 0
    )]
    pub rate_limit_burst: u32,
}

impl std::fmt::Debug for ApiSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSecurity")
            .field("auth", &self.auth)
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("jwt_secret", &self.secret().map(|_| "<redacted>"))
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("trusted_proxies", &self.trusted_proxies.to_string())
            .finish()
    }
}

impl ApiSecurity {
    /// Tokens signed with `secret` are required.
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.jwt_secret = Some(secret.into());
        self
    }

    /// At most `per_second` requests per second per client, `burst` at once.
    pub fn with_rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.rate_limit_per_second = per_second;
        self.rate_limit_burst = burst;
        self
    }

    /// The secret tokens are checked against; none when authentication is off.
    fn secret(&self) -> Option<&str> {
        if self.opened_on_purpose() {
            return None;
        }
        self.jwt_secret.as_deref().filter(|s| !s.is_empty())
    }

    /// The token checker of this configuration; `None` when authentication is off. For
    /// routes that take their token from elsewhere than the header (the console's cookie).
    pub fn authenticator(&self) -> Option<Authenticator> {
        self.secret().map(|secret| {
            Authenticator::new(
                secret,
                self.jwt_issuer.as_deref(),
                self.jwt_audience.as_deref(),
            )
        })
    }

    /// Whether callers must present a token.
    pub fn authentication_enabled(&self) -> bool {
        self.secret().is_some()
    }

    /// Whether the operator switched authentication off explicitly.
    pub fn opened_on_purpose(&self) -> bool {
        self.auth == AuthMode::Off || self.insecure_no_auth
    }

    /// The rate limit quota, if one is configured.
    pub fn quota(&self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.rate_limit_per_second)?;
        let burst = NonZeroU32::new(self.rate_limit_burst).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }

    /// One line for banners and logs.
    pub fn describe(&self) -> String {
        let auth = if self.authentication_enabled() {
            "bearer JWT (HS256) required; admin routes need roles [\"admin\"]".to_string()
        } else {
            "OPEN — no authentication (set SAGAFLOW_JWT_SECRET to require tokens; without it only loopback is served unless SAGAFLOW_AUTH=off)".to_string()
        };
        let limit = match self.quota() {
            Some(q) => format!(
                "{}/s per client, burst {}",
                self.rate_limit_per_second,
                q.burst_size()
            ),
            None => "off".to_string(),
        };
        format!("auth: {auth}; rate limit: {limit}")
    }
}

/// The claims Sagaflow reads from a token (others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The client: rate limits are per `sub`.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Roles; `"admin"` opens the admin routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl Claims {
    /// Claims for `sub` valid for `ttl` from now.
    pub fn new(sub: impl Into<String>, ttl: Duration, roles: &[&str]) -> Self {
        Claims {
            sub: sub.into(),
            exp: jsonwebtoken::get_current_timestamp() + ttl.as_secs(),
            nbf: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ADMIN_ROLE)
    }
}

/// Sign `claims` (HS256), adding `iss` / `aud` when given: for `sagaflow token` and tests.
pub fn mint(
    secret: &str,
    claims: &Claims,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut body = serde_json::to_value(claims)?;
    if let Some(map) = body.as_object_mut() {
        if let Some(iss) = issuer {
            map.insert("iss".into(), iss.into());
        }
        if let Some(aud) = audience {
            map.insert("aud".into(), aud.into());
        }
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &body,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Malformed, wrongly signed, wrong algorithm, missing claims, wrong issuer or audience,
    /// not yet valid.
    Invalid,
    /// `exp` has passed.
    Expired,
}

impl AuthError {
    fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
            AuthError::Expired => "expired",
        }
    }

    /// 401 Problem JSON with the RFC 6750 challenge; no detail of what exactly failed.
    pub fn into_problem_response(self) -> Response {
        let (detail, challenge) = match self {
            AuthError::Missing => (
                "this route needs an Authorization: Bearer token",
                r#"Bearer realm="sagaflow""#,
            ),
            AuthError::Invalid => (
                "the bearer token is not valid",
                r#"Bearer realm="sagaflow", error="invalid_token", error_description="the token is not valid""#,
            ),
            AuthError::Expired => (
                "the bearer token has expired",
                r#"Bearer realm="sagaflow", error="invalid_token", error_description="the token has expired""#,
            ),
        };
        let mut response =
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }
}

/// Checks bearer tokens against one HS256 secret.
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &str, issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // Without a configured audience, a token's `aud` is not ours to judge.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Authenticator {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// The claims of the request's bearer token.
    pub fn verify(&self, headers: &HeaderMap) -> Result<Claims, AuthError> {
        self.verify_token(bearer_token(headers)?)
    }

    /// The claims of `token`, however it was carried.
    pub fn verify_token(&self, token: &str) -> Result<Claims, AuthError> {
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) if data.claims.sub.trim().is_empty() => Err(AuthError::Invalid),
            Ok(data) => Ok(data.claims),
            Err(e) => {
                tracing::debug!(error = %e, "bearer token rejected");
                Err(match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid,
                })
            }
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Invalid)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Invalid)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Invalid);
    }
    Ok(token)
}

/// Who is calling, as [`protect`] established it (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: everyone may do everything.
    Open,
    /// A caller with a valid token.
    Authenticated(Claims),
}

/// The principal of every request when authentication is off: idempotency keys are then
/// shared by all callers, who are indistinguishable.
pub const ANONYMOUS: &str = "anonymous";

impl Caller {
    /// Whom the request acts for: the token's `sub`, or [`ANONYMOUS`] when the API is open.
    /// Idempotency keys are scoped to it.
    pub fn principal(&self) -> &str {
        match self {
            Caller::Open => ANONYMOUS,
            Caller::Authenticated(claims) => &claims.sub,
        }
    }

    /// Whether the caller sees and acts on every customer's data: an admin, or anyone when
    /// the API is open.
    pub fn sees_everything(&self) -> bool {
        match self {
            Caller::Open => true,
            Caller::Authenticated(claims) => claims.is_admin(),
        }
    }

    /// Whether the caller may act for, and read the data of, `customer_id`: with
    /// authentication on, the token's `sub` is the customer id.
    pub fn may_act_for(&self, customer_id: &uuid::Uuid) -> bool {
        match self {
            Caller::Open => true,
            Caller::Authenticated(claims) => {
                claims.is_admin()
                    || uuid::Uuid::parse_str(&claims.sub).is_ok_and(|sub| sub == *customer_id)
            }
        }
    }

    /// Whether the caller may read a record owned by `owner`: a record that names no customer
    /// (not known yet, or never recorded) is only for callers who see everything.
    pub fn may_read(&self, owner: Option<&uuid::Uuid>) -> bool {
        owner.map_or_else(|| self.sees_everything(), |owner| self.may_act_for(owner))
    }
}

/// Handlers take the [`Caller`] as an argument. A request that did not pass [`protect`] has
/// none, and is refused (403): ownership checks fail closed.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this route is not available without authentication configured",
            )
        })
    }
}

/// Whether `caller` may use an admin route. No caller at all (a router served without
/// [`protect`]) is refused: admin routes fail closed.
pub fn authorize_admin(caller: Option<&Caller>) -> Result<(), Problem> {
    match caller {
        Some(Caller::Open) => Ok(()),
        Some(Caller::Authenticated(claims)) if claims.is_admin() => Ok(()),
        Some(Caller::Authenticated(_)) => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs the admin role",
        )),
        None => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is not available without authentication configured",
        )),
    }
}

/// Mark every route of `router` (so far) as admin-only. Use where routers are built.
pub fn admin_only<S: Clone + Send + Sync + 'static>(router: axum::Router<S>) -> axum::Router<S> {
    router.route_layer(axum::middleware::from_fn(require_admin))
}

async fn require_admin(request: Request, next: Next) -> Response {
    match authorize_admin(request.extensions().get::<Caller>()) {
        Ok(()) => next.run(request).await,
        Err(problem) => {
            metrics::counter!("http_auth_failures_total", "reason" => "forbidden").increment(1);
            let mut response = problem.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="sagaflow", error="insufficient_scope""#),
            );
            response
        }
    }
}

/// Whom a rate limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Subject(String),
    Ip(IpAddr),
    /// Served without connection info (not through [`crate::http::serve`]).
    Unknown,
}

/// Seconds a `Retry-After` header should say for a wait of `wait`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Forget idle clients every this many checks (bounded memory).
const SWEEP_EVERY: u64 = 1024;

/// A per-client GCRA limiter whose memory stays bounded.
pub struct ClientLimiter {
    limiter: DefaultKeyedRateLimiter<ClientKey>,
    checks: AtomicU64,
}

impl ClientLimiter {
    pub fn new(quota: Quota) -> Self {
        ClientLimiter {
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        }
    }

    /// `Err(wait)` when `key` is over its limit.
    pub fn check(&self, key: &ClientKey) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // Clients whose bucket has refilled are indistinguishable from new ones: drop them.
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Clients currently remembered.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

struct Guard {
    authenticator: Option<Authenticator>,
    limiter: Option<ClientLimiter>,
    trusted_proxies: crate::proxy::TrustedProxies,
}

/// Put authentication and the per-client rate limit in front of every route of `router`
/// (merge the operational routes after this, so they stay open). Logs how the API is
/// protected, and warns loudly when it is open.
pub fn protect(router: Router, security: &ApiSecurity) -> Router {
    if security.secret().is_some_and(|secret| secret.len() < 32) {
        tracing::warn!(
            "SAGAFLOW_JWT_SECRET is shorter than 32 bytes; use a long random secret for HS256"
        );
    }
    let authenticator = security.authenticator();
    if authenticator.is_none() {
        tracing::warn!(
            "no authentication: the API is open to whoever reaches it (see the exposure check at start-up)"
        );
    }
    tracing::info!(security = %security.describe(), "API security");
    let guard = Arc::new(Guard {
        authenticator,
        limiter: security.quota().map(ClientLimiter::new),
        trusted_proxies: security.trusted_proxies.clone(),
    });
    router.route_layer(axum::middleware::from_fn_with_state(guard, guard_request))
}

async fn guard_request(
    State(guard): State<Arc<Guard>>,
    mut request: Request,
    next: Next,
) -> Response {
    let verdict = guard
        .authenticator
        .as_ref()
        .map(|a| a.verify(request.headers()));
    if let Some(limiter) = &guard.limiter {
        // Only a verified `sub` names a client; anything else counts against its address, so
        // failed attempts are limited too.
        let key = match &verdict {
            Some(Ok(claims)) => ClientKey::Subject(claims.sub.clone()),
            _ => request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(ClientKey::Unknown, |ConnectInfo(peer)| {
                    let forwarded_for = request
                        .headers()
                        .get_all("x-forwarded-for")
                        .iter()
                        .filter_map(|v| v.to_str().ok());
                    ClientKey::Ip(guard.trusted_proxies.client_ip(peer.ip(), forwarded_for))
                }),
        };
        if let Err(wait) = limiter.check(&key) {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
            metrics::counter!("http_rate_limited_total", "route" => route).increment(1);
            return too_many_requests(wait);
        }
    }
    let caller = match verdict {
        None => Caller::Open,
        Some(Ok(claims)) => Caller::Authenticated(claims),
        Some(Err(error)) => {
            metrics::counter!("http_auth_failures_total", "reason" => error.reason()).increment(1);
            return error.into_problem_response();
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn too_many_requests(wait: Duration) -> Response {
    let secs = retry_after_secs(wait);
    let mut response = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!("too many requests from this client; retry after {secs} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    fn headers(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims(exp: u64, nbf: Option<u64>, roles: &[&str]) -> Claims {
        Claims {
            sub: "client-1".into(),
            exp,
            nbf,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn open() -> Authenticator {
        Authenticator::new(SECRET, None, None)
    }

    #[test]
    fn a_record_without_an_owner_is_only_for_those_who_see_everything() {
        let customer = uuid::Uuid::new_v4();
        let mut user = claims(now() + 60, None, &[]);
        user.sub = customer.to_string();
        let user = Caller::Authenticated(user);
        let admin = Caller::Authenticated(claims(now() + 60, None, &["admin"]));
        assert!(user.may_read(Some(&customer)));
        assert!(!user.may_read(Some(&uuid::Uuid::new_v4())));
        assert!(!user.may_read(None));
        assert!(admin.may_read(None) && admin.may_read(Some(&customer)));
        assert!(Caller::Open.may_read(None));
    }

    #[test]
    fn a_valid_token_yields_its_claims() {
        let c = claims(now() + 60, Some(now() - 10), &["admin"]);
        let token = mint(SECRET, &c, None, None).unwrap();
        assert_eq!(open().verify(&headers(&token)), Ok(c));
    }

    #[test]
    fn missing_malformed_and_wrong_scheme_are_told_apart() {
        assert_eq!(open().verify(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(
            open().verify(&headers("not.a.jwt")),
            Err(AuthError::Invalid)
        );
        let token = mint(SECRET, &claims(now() + 60, None, &[]), None, None).unwrap();
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {token}")).unwrap(),
        );
        assert_eq!(open().verify(&basic), Err(AuthError::Invalid));
        let mut lower = HeaderMap::new();
        lower.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("bearer {token}")).unwrap(),
        );
        assert!(open().verify(&lower).is_ok());
    }

    #[test]
    fn expired_not_yet_valid_and_wrongly_signed_tokens_are_refused() {
        let expired = mint(SECRET, &claims(now() - 60, None, &[]), None, None).unwrap();
        assert_eq!(open().verify(&headers(&expired)), Err(AuthError::Expired));
        let early = mint(
            SECRET,
            &claims(now() + 600, Some(now() + 300), &[]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(open().verify(&headers(&early)), Err(AuthError::Invalid));
        let forged = mint("another-secret", &claims(now() + 60, None, &[]), None, None).unwrap();
        assert_eq!(open().verify(&headers(&forged)), Err(AuthError::Invalid));
    }

    #[test]
    fn other_algorithms_and_unsigned_tokens_are_refused() {
        let body = claims(now() + 60, None, &["admin"]);
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &body,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(open().verify(&headers(&hs512)), Err(AuthError::Invalid));
        // alg "none": header.payload. with an empty signature.
        let signed = mint(SECRET, &body, None, None).unwrap();
        let payload = signed.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(open().verify(&headers(&none)), Err(AuthError::Invalid));
    }

    #[test]
    fn exp_and_sub_are_required() {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let header = Header::new(Algorithm::HS256);
        let no_exp = jsonwebtoken::encode(&header, &serde_json::json!({"sub": "a"}), &key).unwrap();
        assert_eq!(open().verify(&headers(&no_exp)), Err(AuthError::Invalid));
        let empty_sub = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": " ", "exp": now() + 60}),
            &key,
        )
        .unwrap();
        assert_eq!(open().verify(&headers(&empty_sub)), Err(AuthError::Invalid));
    }

    #[test]
    fn issuer_and_audience_are_checked_only_when_configured() {
        let c = claims(now() + 60, None, &[]);
        let strict = Authenticator::new(SECRET, Some("sagaflow-idp"), Some("sagaflow-api"));
        let right = mint(SECRET, &c, Some("sagaflow-idp"), Some("sagaflow-api")).unwrap();
        assert!(strict.verify(&headers(&right)).is_ok());
        let wrong_iss = mint(SECRET, &c, Some("evil"), Some("sagaflow-api")).unwrap();
        assert_eq!(strict.verify(&headers(&wrong_iss)), Err(AuthError::Invalid));
        let wrong_aud = mint(SECRET, &c, Some("sagaflow-idp"), Some("other-api")).unwrap();
        assert_eq!(strict.verify(&headers(&wrong_aud)), Err(AuthError::Invalid));
        let bare = mint(SECRET, &c, None, None).unwrap();
        assert_eq!(strict.verify(&headers(&bare)), Err(AuthError::Invalid));
        // Not configured: whatever iss / aud a token carries is accepted.
        assert!(open().verify(&headers(&wrong_aud)).is_ok());
    }

    #[test]
    fn admin_routes_need_the_admin_role_and_fail_closed() {
        let user = Caller::Authenticated(claims(0, None, &["viewer"]));
        let admin = Caller::Authenticated(claims(0, None, &["viewer", "admin"]));
        assert_eq!(
            authorize_admin(Some(&user)).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert!(authorize_admin(Some(&admin)).is_ok());
        assert!(authorize_admin(Some(&Caller::Open)).is_ok());
        assert_eq!(
            authorize_admin(None).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
    }

    #[test]
    fn rate_limit_config_defaults_to_off_and_burst_to_the_rate() {
        assert!(ApiSecurity::default().quota().is_none());
        let q = ApiSecurity::default()
            .with_rate_limit(5, 0)
            .quota()
            .unwrap();
        assert_eq!(q.burst_size().get(), 5);
        let q = ApiSecurity::default()
            .with_rate_limit(5, 20)
            .quota()
            .unwrap();
        assert_eq!(q.burst_size().get(), 20);
        assert!(
            !ApiSecurity::default()
                .with_secret("")
                .authentication_enabled()
        );
        assert!(
            !format!("{:?}", ApiSecurity::default().with_secret("hunter2")).contains("hunter2")
        );
    }

    #[test]
    fn the_limiter_is_per_client() {
        let limiter = ClientLimiter::new(
            Quota::per_hour(NonZeroU32::new(1).unwrap()).allow_burst(NonZeroU32::new(3).unwrap()),
        );
        let a = ClientKey::Subject("a".into());
        let b = ClientKey::Subject("b".into());
        for _ in 0..3 {
            assert!(limiter.check(&a).is_ok());
        }
        let wait = limiter.check(&a).unwrap_err();
        assert!(wait > Duration::from_secs(60), "{wait:?}");
        assert!(limiter.check(&b).is_ok());
        assert_eq!(limiter.len(), 2);
    }
}
