//! The faults of a chaos run: a seeded schedule of SIGKILLs (restarted after a while) and
//! broker freezes, and a watchdog restarting components that exit on their own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::Service;
use super::fleet::{BROKER, Fleet, RELAY, signal};

/// The faults injected so far, and the exits nobody asked for.
#[derive(Default)]
pub(super) struct Faults {
    /// SIGKILLs by component.
    pub kills: BTreeMap<&'static str, u32>,
    pub broker_pauses: u32,
    pub exited_on_their_own: BTreeMap<&'static str, u32>,
}

impl Faults {
    pub(super) fn total(&self) -> u32 {
        self.kills.values().sum::<u32>() + self.broker_pauses
    }
}

/// The faults, shared by the injector, the watchdog and the progress lines.
pub(super) type Shared = Arc<std::sync::Mutex<Faults>>;

/// One fault of the schedule.
enum Fault {
    /// SIGKILL the component, restart it after a while.
    Kill(&'static str),
    /// SIGSTOP the broker, SIGCONT it after a while.
    FreezeBroker,
}

/// The next fault: relay, orchestrator, a domain service, the broker, or a broker freeze, one
/// in five each. The draws (and their order) are the schedule: the seed replays it.
fn pick(rng: &mut StdRng) -> Fault {
    match rng.random_range(0..5) {
        0 => Fault::Kill(RELAY),
        1 => Fault::Kill(Service::Saga.binary()),
        2 => Fault::Kill(Service::DOMAIN[rng.random_range(0..Service::DOMAIN.len())].binary()),
        3 => Fault::Kill(BROKER),
        _ => Fault::FreezeBroker,
    }
}

/// Every 5–15 s (seeded), one fault: SIGKILL a component (the broker included) and restart
/// it 0.5–3 s later (the broker 1–5 s), or freeze the broker for 2–4 s. A fault under way is
/// always completed (restarted, resumed) before this returns.
pub(super) async fn inject(
    fleet: Fleet,
    seed: u64,
    faults: Shared,
    stop: CancellationToken,
    started: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let wait = Duration::from_secs_f64(rng.random_range(5.0..15.0));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let fault = pick(&mut rng);
        let at = started.elapsed().as_secs_f64();
        match fault {
            Fault::FreezeBroker => freeze_broker(&fleet, &mut rng, &faults, at).await,
            Fault::Kill(target) => kill_and_restart(&fleet, &mut rng, &faults, target, at).await,
        }
    }
}

async fn freeze_broker(fleet: &Fleet, rng: &mut StdRng, faults: &Shared, at: f64) {
    let pause = Duration::from_secs_f64(rng.random_range(2.0..4.0));
    let Some(pid) = fleet.broker_pid().await else {
        return;
    };
    eprintln!("[{at:>6.1}s] fault: broker frozen (SIGSTOP) for {pause:.1?}");
    signal("-STOP", pid).await;
    tokio::time::sleep(pause).await;
    signal("-CONT", pid).await;
    faults.lock().unwrap().broker_pauses += 1;
}

async fn kill_and_restart(
    fleet: &Fleet,
    rng: &mut StdRng,
    faults: &Shared,
    target: &'static str,
    at: f64,
) {
    // The broker takes longer to come back: it reloads its log.
    let down = if target == BROKER {
        Duration::from_secs_f64(rng.random_range(1.0..5.0))
    } else {
        Duration::from_secs_f64(rng.random_range(0.5..3.0))
    };
    if !fleet.kill(target).await {
        return;
    }
    eprintln!("[{at:>6.1}s] fault: {target} killed (SIGKILL), restart in {down:.1?}");
    *faults.lock().unwrap().kills.entry(target).or_default() += 1;
    tokio::time::sleep(down).await;
    fleet.restart(target).await;
}

/// Restart a component that exited without being killed (and count it).
pub(super) async fn watchdog(
    fleet: Fleet,
    faults: Shared,
    stop: CancellationToken,
    started: Instant,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        fleet
            .restart_crashed(|name, status| {
                eprintln!(
                    "[{:>6.1}s] {name} exited on its own ({status}); restarting",
                    started.elapsed().as_secs_f64(),
                );
                *faults
                    .lock()
                    .unwrap()
                    .exited_on_their_own
                    .entry(name)
                    .or_default() += 1;
            })
            .await;
    }
}
