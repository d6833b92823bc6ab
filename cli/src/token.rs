//! `sagaflow token`: sign a bearer token for the API with the deployment's HS256 secret —
//! for the walkthrough, scripts and operators (production tokens come from your identity
//! provider, signed with the same secret).

use std::time::Duration;

use anyhow::Context;
use sagaflow_runtime::auth::{ADMIN_ROLE, Claims, mint};

#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The client the token names (`sub`); rate limits count per `sub`.
    #[arg(long, default_value = "dev")]
    pub sub: String,
    /// Add the admin role (replay, DLQ, sagas, restocking).
    #[arg(long)]
    pub admin: bool,
    /// Further roles, repeatable.
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// The HS256 secret the API checks tokens with.
    #[arg(
        long = "jwt-secret",
        env = "SAGAFLOW_JWT_SECRET",
        hide_env_values = true
    )]
    pub secret: String,
    /// `iss` to put in the token (needed when the API sets SAGAFLOW_JWT_ISSUER).
    #[arg(long = "jwt-issuer", env = "SAGAFLOW_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// `aud` to put in the token (needed when the API sets SAGAFLOW_JWT_AUDIENCE).
    #[arg(long = "jwt-audience", env = "SAGAFLOW_JWT_AUDIENCE")]
    pub audience: Option<String>,
}

/// Print the token on stdout.
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.secret.is_empty(), "SAGAFLOW_JWT_SECRET is empty");
    let mut roles: Vec<&str> = args.roles.iter().map(String::as_str).collect();
    if args.admin {
        roles.push(ADMIN_ROLE);
    }
    let claims = Claims::new(args.sub.clone(), Duration::from_secs(args.ttl), &roles);
    let token = mint(
        &args.secret,
        &claims,
        args.issuer.as_deref(),
        args.audience.as_deref(),
    )
    .context("signing the token")?;
    println!("{token}");
    Ok(())
}
