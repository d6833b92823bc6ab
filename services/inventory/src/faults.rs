//! A fault switch for the ReleaseStock compensation, for fault tests and `sagaflow dev`.
//!
//! Only the in-process platform (`sagaflow dev`, the integration tests) wires it in and serves
//! its control route; the `inventory-service` production binary runs with it disarmed and
//! has no route to arm it.
//!
//! - `fail_releases: N` — the next N ReleaseStock **commands** (distinct message ids) fail on
//!   **every** delivery attempt: the handler returns an error before touching anything, the
//!   transaction (inbox row included) rolls back, the consumer retries with backoff and then
//!   dead-letters the command. The saga's compensation step therefore completes only through
//!   its own deadline retry (a re-sent ReleaseStock is a new message), so `N` is the number of
//!   failed compensation attempts the saga sees, whatever the consumer's retry count.
//! - `fail_releases_forever: true` — every ReleaseStock fails until switched off.
//!
//! Control: `GET /_control/inventory` (the switch and what it injected) and
//! `POST /_control/inventory` with any of `{"fail_releases": 2, "fail_releases_forever": false}`
//! (absent fields keep their value), admin only; in process through [`InventoryFaults`].
//! Every failed attempt counts in `inventory_injected_faults_total{fault="release_stock"}`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use sagaflow_runtime::auth;
use sagaflow_runtime::http::{Problem, ProblemJson};
use sagaflow_runtime::openapi::AdminOnly;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The switch and what it did (`GET /_control/inventory`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FaultsView {
    /// ReleaseStock commands still to fail (each on every attempt).
    pub fail_releases: u64,
    /// Fail every ReleaseStock.
    pub fail_releases_forever: bool,
    /// Distinct ReleaseStock commands failed so far.
    pub failed_commands: u64,
    /// Handler attempts failed so far (a command fails once per delivery attempt).
    pub failed_attempts: u64,
}

/// A change of the switch (`POST /_control/inventory`): absent fields keep their value.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    pub fail_releases: Option<u64>,
    pub fail_releases_forever: Option<bool>,
}

#[derive(Debug, Default)]
struct Switch {
    view: FaultsView,
    /// Commands chosen to fail: every attempt of each fails.
    doomed: HashSet<Uuid>,
}

/// A handle on the switch, shared by the consumer and the control route. Disarmed by default.
#[derive(Debug, Clone, Default)]
pub struct InventoryFaults {
    switch: Arc<Mutex<Switch>>,
}

impl InventoryFaults {
    fn lock(&self) -> MutexGuard<'_, Switch> {
        // Plain counters and a set: a panic elsewhere mid-update leaves nothing inconsistent.
        self.switch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn view(&self) -> FaultsView {
        self.lock().view
    }

    pub fn update(&self, update: FaultsUpdate) -> FaultsView {
        let mut switch = self.lock();
        if let Some(n) = update.fail_releases {
            switch.view.fail_releases = n;
        }
        if let Some(forever) = update.fail_releases_forever {
            switch.view.fail_releases_forever = forever;
        }
        if switch.view.fail_releases == 0 && !switch.view.fail_releases_forever {
            // Disarmed: commands chosen earlier are let through on their next attempt.
            switch.doomed.clear();
        }
        switch.view
    }

    /// Called by the handler for each attempt at a ReleaseStock: `Err` with the reason when
    /// this attempt must fail.
    pub(crate) fn release_attempt(&self, message_id: Uuid) -> Result<(), String> {
        let mut switch = self.lock();
        let doomed = switch.doomed.contains(&message_id);
        if !doomed {
            if switch.view.fail_releases > 0 && !switch.view.fail_releases_forever {
                switch.view.fail_releases -= 1;
            } else if !switch.view.fail_releases_forever {
                return Ok(());
            }
            switch.doomed.insert(message_id);
            switch.view.failed_commands += 1;
        }
        switch.view.failed_attempts += 1;
        drop(switch);
        metrics::counter!("inventory_injected_faults_total", "fault" => "release_stock")
            .increment(1);
        Err(format!(
            "injected fault (/_control/inventory): ReleaseStock {message_id} fails"
        ))
    }
}

/// The OpenAPI description of [`control_router`]'s routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_control, post_control),
    components(schemas(FaultsView, FaultsUpdate)),
    tags((name = "fault-control", description = "Fault injection for development and tests (sagaflow dev only): admin, and only from this machine."))
)]
struct ControlDoc;

/// The OpenAPI description of the fault switch's routes.
pub fn control_openapi() -> utoipa::openapi::OpenApi {
    <ControlDoc as utoipa::OpenApi>::openapi()
}

/// `GET|POST /_control/inventory`, admin only.
pub fn control_router(faults: InventoryFaults) -> Router {
    // Admin only, and only from this machine (404 to anyone else): fault injection is for
    // development and tests, which is the only wiring that mounts this router.
    sagaflow_runtime::http::loopback_only(auth::admin_only(
        Router::new().route("/_control/inventory", get(get_control).post(post_control)),
    ))
    .with_state(faults)
}

/// The ReleaseStock fault switch and what it injected.
#[utoipa::path(
    get,
    path = "/_control/inventory",
    tag = "fault-control",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The switch.", body = FaultsView),
        (status = 404, description = "Called from another machine: the route does not exist for it.", body = Problem, content_type = "application/problem+json"),
        AdminOnly,
    )
)]
async fn get_control(State(faults): State<InventoryFaults>) -> Json<FaultsView> {
    Json(faults.view())
}

/// Change the switch: absent fields keep their value.
#[utoipa::path(
    post,
    path = "/_control/inventory",
    tag = "fault-control",
    security(("bearer" = [])),
    request_body(content = FaultsUpdate, content_type = "application/json"),
    responses(
        (status = 200, description = "The switch after the change.", body = FaultsView),
        (status = 400, description = "A body that is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Called from another machine: the route does not exist for it.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field of the wrong type, or an unknown field.", body = Problem, content_type = "application/problem+json"),
        AdminOnly,
    )
)]
async fn post_control(
    State(faults): State<InventoryFaults>,
    ProblemJson(update): ProblemJson<FaultsUpdate>,
) -> Json<FaultsView> {
    let view = faults.update(update);
    tracing::warn!(?view, "inventory fault switch changed");
    Json(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn disarmed_by_default() {
        let faults = InventoryFaults::default();
        assert_eq!(faults.release_attempt(id(1)), Ok(()));
        assert_eq!(faults.view(), FaultsView::default());
    }

    #[test]
    fn the_next_n_commands_fail_on_every_attempt_then_commands_pass() {
        let faults = InventoryFaults::default();
        faults.update(FaultsUpdate {
            fail_releases: Some(2),
            ..FaultsUpdate::default()
        });
        for _ in 0..3 {
            assert!(faults.release_attempt(id(1)).is_err());
        }
        assert!(faults.release_attempt(id(2)).is_err());
        assert!(faults.release_attempt(id(1)).is_err(), "still doomed");
        assert_eq!(faults.release_attempt(id(3)), Ok(()));
        assert_eq!(
            faults.view(),
            FaultsView {
                fail_releases: 0,
                fail_releases_forever: false,
                failed_commands: 2,
                failed_attempts: 5,
            }
        );
        faults.update(FaultsUpdate {
            fail_releases: Some(0),
            ..FaultsUpdate::default()
        });
        assert_eq!(
            faults.release_attempt(id(1)),
            Ok(()),
            "disarming frees them"
        );
    }

    #[test]
    fn forever_fails_everything_until_switched_off() {
        let faults = InventoryFaults::default();
        faults.update(FaultsUpdate {
            fail_releases_forever: Some(true),
            ..FaultsUpdate::default()
        });
        for n in 0..10 {
            assert!(faults.release_attempt(id(n % 4)).is_err());
        }
        assert_eq!(faults.view().failed_commands, 4);
        assert_eq!(faults.view().failed_attempts, 10);
        faults.update(FaultsUpdate {
            fail_releases_forever: Some(false),
            ..FaultsUpdate::default()
        });
        assert_eq!(faults.release_attempt(id(1)), Ok(()));
    }
}
