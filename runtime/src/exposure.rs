//! Closed unless opened on purpose: whether a component may serve its API on an address.
//!
//! - With a JWT secret (`SAGAFLOW_JWT_SECRET`) the API requires bearer tokens wherever it is
//!   bound.
//! - Without one, the API is open, and that is allowed only on a loopback address (nobody
//!   else can reach it: `sagaflow dev`, a developer's machine) or when openness is chosen
//!   explicitly with `SAGAFLOW_AUTH=off` or `--insecure-no-auth`.
//! - Anything else — a production binary bound to `0.0.0.0` without a secret — refuses to
//!   start, with a message that says how to fix it.

use std::net::SocketAddr;

use crate::auth::ApiSecurity;

/// How an API ends up exposed (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Bearer tokens are required.
    Authenticated,
    /// Open, but only reachable from this machine.
    OpenOnLoopback,
    /// Open beyond loopback because the operator said so.
    OpenOnPurpose,
}

/// An open API on a non-loopback address that nobody asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to serve the API on {addr} without authentication: set SAGAFLOW_JWT_SECRET (a random secret of at least 32 bytes, e.g. `openssl rand -hex 32`) to require bearer tokens, bind HTTP_ADDR to a loopback address such as 127.0.0.1, or open the API knowingly with SAGAFLOW_AUTH=off or --insecure-no-auth"
)]
pub struct RefusedOpen {
    pub addr: SocketAddr,
}

/// Decide how an API with `security` may be served on `addr`.
pub fn decide(security: &ApiSecurity, addr: SocketAddr) -> Result<Exposure, RefusedOpen> {
    if security.authentication_enabled() {
        Ok(Exposure::Authenticated)
    } else if security.opened_on_purpose() {
        Ok(Exposure::OpenOnPurpose)
    } else if addr.ip().is_loopback() {
        Ok(Exposure::OpenOnLoopback)
    } else {
        Err(RefusedOpen { addr })
    }
}

/// [`decide`], logging an open API loudly; the error is for `main` to return.
pub fn check(security: &ApiSecurity, addr: SocketAddr) -> Result<Exposure, RefusedOpen> {
    let exposure = decide(security, addr)?;
    match exposure {
        Exposure::Authenticated => {}
        Exposure::OpenOnLoopback => tracing::warn!(
            %addr,
            "the API is open (no SAGAFLOW_JWT_SECRET): served on loopback only, so only this machine can call it"
        ),
        Exposure::OpenOnPurpose => tracing::warn!(
            %addr,
            "the API is OPEN to anyone who reaches {addr} (SAGAFLOW_AUTH=off / --insecure-no-auth)"
        ),
    }
    Ok(exposure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMode;

    fn at(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn a_secret_protects_any_address() {
        let security = ApiSecurity::default().with_secret("s".repeat(32));
        assert_eq!(
            decide(&security, at("0.0.0.0:8080")),
            Ok(Exposure::Authenticated)
        );
        assert_eq!(
            decide(&security, at("127.0.0.1:8080")),
            Ok(Exposure::Authenticated)
        );
    }

    #[test]
    fn without_a_secret_only_loopback_is_served() {
        let security = ApiSecurity::default();
        assert_eq!(
            decide(&security, at("127.0.0.1:8080")),
            Ok(Exposure::OpenOnLoopback)
        );
        assert_eq!(
            decide(&security, at("[::1]:8080")),
            Ok(Exposure::OpenOnLoopback)
        );
        for refused in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080"] {
            let error = decide(&security, at(refused)).unwrap_err();
            assert_eq!(error.addr, at(refused));
            let message = error.to_string();
            assert!(message.contains("SAGAFLOW_JWT_SECRET"), "{message}");
            assert!(message.contains("SAGAFLOW_AUTH=off"), "{message}");
            assert!(message.contains("--insecure-no-auth"), "{message}");
        }
    }

    #[test]
    fn openness_beyond_loopback_must_be_chosen() {
        let by_env = ApiSecurity {
            auth: AuthMode::Off,
            ..ApiSecurity::default()
        };
        let by_flag = ApiSecurity {
            insecure_no_auth: true,
            ..ApiSecurity::default()
        };
        for security in [by_env, by_flag] {
            assert_eq!(
                decide(&security, at("0.0.0.0:8080")),
                Ok(Exposure::OpenOnPurpose)
            );
        }
    }

    #[test]
    fn switching_auth_off_wins_over_a_secret() {
        let security = ApiSecurity {
            auth: AuthMode::Off,
            ..ApiSecurity::default().with_secret("s".repeat(32))
        };
        assert!(!security.authentication_enabled());
        assert_eq!(
            decide(&security, at("0.0.0.0:8080")),
            Ok(Exposure::OpenOnPurpose)
        );
    }
}
