//! The verdict of a chaos run: the invariants checked in the databases once the platform
//! settled, with what the load and the faults did, as a table or as JSON (`--json`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use sagaflow_platform::invariants::{self, Databases, Findings};
use serde::Serialize;
use uuid::Uuid;

use super::faults::Faults;
use super::fleet::BROKER;
use super::load::Load;
use super::{ChaosArgs, RunInfo, initial_stock};

#[derive(Debug, Serialize)]
pub(super) struct Report {
    seed: u64,
    pub run_folder: String,
    duration_s: f64,
    fault_minutes: f64,
    orders_sent: u64,
    orders_acknowledged: u64,
    orders_retried: u64,
    orders_refused_by_api: u64,
    orders_never_acknowledged: u64,
    approved: i64,
    rejected: i64,
    faults: BTreeMap<String, u32>,
    broker: String,
    exited_on_their_own: BTreeMap<String, u32>,
    lost: usize,
    acknowledged_not_terminal: usize,
    duplicate_effects: i64,
    sagas_non_terminal: i64,
    sagas_failed: usize,
    outbox_unpublished: i64,
    stock_conserved: bool,
    money_conserved: bool,
    settled_in_s: Option<f64>,
    /// Sagas still open, by state (empty when settled).
    open_sagas_by_state: BTreeMap<String, i64>,
    /// Partitions of each consumer's last assignment, from its log (0 = idle member).
    last_assignment: BTreeMap<String, u32>,
    not_checked: &'static str,
    violations: Vec<String>,
    pub passed: bool,
}

/// What the invariants say about the orders the load saw acknowledged.
struct Acknowledged {
    missing: Vec<Uuid>,
    not_terminal: Vec<Uuid>,
}

impl Report {
    /// Check the invariants in `db` and build the report of the run.
    pub(super) async fn check(
        run: &RunInfo,
        args: &ChaosArgs,
        db: Databases<'_>,
        load: &Load,
        faults: Faults,
        settled_in: Option<f64>,
    ) -> anyhow::Result<Self> {
        let findings: Findings = invariants::check(db, &initial_stock(), &[]).await?;
        let open_sagas_by_state: BTreeMap<String, i64> = sqlx::query_as(
            "SELECT state, count(*) FROM sagas WHERE deadline IS NOT NULL GROUP BY state",
        )
        .fetch_all(db.saga)
        .await?
        .into_iter()
        .collect();
        let last_assignment = last_assignments(run.dir());
        let acked: Vec<Uuid> = load.acked_ids.lock().unwrap().clone();
        let (missing, not_terminal) = invariants::acknowledged_orders(db.order, &acked).await?;
        let acknowledged = Acknowledged {
            missing,
            not_terminal,
        };
        let mut report = Report::new(run, args, load, &faults, &findings, &acknowledged);
        report.settled_in_s = settled_in;
        report.open_sagas_by_state = open_sagas_by_state;
        report.last_assignment = last_assignment;
        Ok(report)
    }

    fn new(
        run: &RunInfo,
        args: &ChaosArgs,
        load: &Load,
        faults: &Faults,
        findings: &Findings,
        acknowledged: &Acknowledged,
    ) -> Self {
        let violations = violations(findings, acknowledged);
        Report {
            seed: run.seed,
            run_folder: run.dir().display().to_string(),
            duration_s: run.elapsed(),
            fault_minutes: args.minutes,
            orders_sent: load.sent.load(Ordering::Relaxed),
            orders_acknowledged: load.acknowledged.load(Ordering::Relaxed),
            orders_retried: load.retried.load(Ordering::Relaxed),
            orders_refused_by_api: load.rejected_by_api.load(Ordering::Relaxed),
            orders_never_acknowledged: load.unacknowledged.load(Ordering::Relaxed),
            approved: findings.approved,
            rejected: findings.rejected,
            faults: by_component(faults),
            broker: format!(
                "killed {} times (log on disk, restarted), frozen {} times",
                faults.kills.get(BROKER).copied().unwrap_or(0),
                faults.broker_pauses
            ),
            exited_on_their_own: faults
                .exited_on_their_own
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            lost: acknowledged.missing.len(),
            acknowledged_not_terminal: acknowledged.not_terminal.len(),
            duplicate_effects: findings.duplicate_effects,
            sagas_non_terminal: findings.sagas_non_terminal,
            sagas_failed: findings.sagas_failed.len(),
            outbox_unpublished: findings.outbox_unpublished,
            stock_conserved: findings.stock_conserved,
            money_conserved: findings.money_conserved,
            settled_in_s: None,
            open_sagas_by_state: BTreeMap::new(),
            last_assignment: BTreeMap::new(),
            not_checked: "the simulated provider's own ledger (it lives in payment-service and restarts empty with it); topic contents",
            passed: violations.is_empty() && findings.orders > 0,
            violations,
        }
    }
}

/// The invariants' violations, and the acknowledged orders that are missing or not terminal.
fn violations(findings: &Findings, acknowledged: &Acknowledged) -> Vec<String> {
    let mut violations = findings.violations.clone();
    if let Some(first) = acknowledged.missing.first() {
        violations.push(format!(
            "{} acknowledged orders are missing, e.g. {}",
            acknowledged.missing.len(),
            first
        ));
    }
    if !acknowledged.not_terminal.is_empty() {
        violations.push(format!(
            "{} acknowledged orders are not terminal",
            acknowledged.not_terminal.len()
        ));
    }
    violations
}

/// The faults by kind and component: "<component> (SIGKILL)" and the broker freezes.
fn by_component(faults: &Faults) -> BTreeMap<String, u32> {
    let mut by_component: BTreeMap<String, u32> = faults
        .kills
        .iter()
        .map(|(k, v)| (format!("{k} (SIGKILL)"), *v))
        .collect();
    by_component.insert("broker (SIGSTOP 2-4 s)".into(), faults.broker_pauses);
    by_component
}

/// The partition count of each component's last "partitions assigned" log line.
fn last_assignments(run_dir: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if let Some(n) = last_assignment(&text) {
            out.insert(name.to_string(), n);
        }
    }
    out
}

/// The `partitions=N` of the last "partitions assigned" line of a log.
fn last_assignment(log: &str) -> Option<u32> {
    log.lines()
        .rev()
        .find(|l| l.contains("partitions assigned"))
        .map(strip_ansi)
        .and_then(|l| {
            l.rsplit_once("partitions=")
                .map(|(_, tail)| tail.to_string())
        })
        .map(|tail| {
            tail.chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|n| n.parse().ok())
}

/// A log line without its colour codes (ESC [ … m).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Report {
    pub(super) fn print(&self, as_json: bool) -> anyhow::Result<()> {
        if as_json {
            println!("{}", serde_json::to_string_pretty(self)?);
            return Ok(());
        }
        print_table(self);
        for v in &self.violations {
            println!("  violation: {v}");
        }
        Ok(())
    }
}

fn print_table(report: &Report) {
    let yes = |b: bool| if b { "yes" } else { "NO" };
    let faults = report
        .faults
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let own = if report.exited_on_their_own.is_empty() {
        "none".to_string()
    } else {
        format!("{:?}", report.exited_on_their_own)
    };
    println!(
        "
sagaflow chaos report (seed {seed})
  duration                  {duration:.1} s ({minutes} min of faults under load)
  orders sent               {sent}
  orders acknowledged       {acked}
  orders retried (attempts) {retried}
  refused by the API (4xx)  {refused}
  never acknowledged        {unacked}
  approved / rejected       {approved} / {rejected}
  faults                    {faults}
  broker                    {broker}
  exited on their own       {own}
  settled in                {settled}
  open sagas by state       {open_by_state:?}
  last assignment (parts.)  {assignment:?}
  lost                      {lost}
  acknowledged not terminal {not_terminal}
  duplicate effects         {dup}
  sagas non-terminal        {open} (FAILED: {failed})
  outbox rows unpublished   {outbox}
  stock conserved           {stock}
  money conserved           {money}
  not checked               {not_checked}
  logs                      {folder}
  result                    {result}",
        seed = report.seed,
        duration = report.duration_s,
        minutes = report.fault_minutes,
        sent = report.orders_sent,
        acked = report.orders_acknowledged,
        retried = report.orders_retried,
        refused = report.orders_refused_by_api,
        unacked = report.orders_never_acknowledged,
        approved = report.approved,
        rejected = report.rejected,
        broker = report.broker,
        settled = report
            .settled_in_s
            .map_or("NOT SETTLED".to_string(), |s| format!("{s:.1} s")),
        lost = report.lost,
        open_by_state = report.open_sagas_by_state,
        assignment = report.last_assignment,
        not_terminal = report.acknowledged_not_terminal,
        dup = report.duplicate_effects,
        open = report.sagas_non_terminal,
        failed = report.sagas_failed,
        outbox = report.outbox_unpublished,
        stock = yes(report.stock_conserved),
        money = yes(report.money_conserved),
        not_checked = report.not_checked,
        folder = report.run_folder,
        result = if report.passed { "PASS" } else { "FAIL" },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_assignment_is_read_through_colour_codes() {
        let log = "x partitions assigned partitions=4\n\
                   y \u{1b}[3mpartitions assigned\u{1b}[0m \u{1b}[3mpartitions\u{1b}[0m\u{1b}[2m=\u{1b}[0m2\n\
                   z something else";
        assert_eq!(last_assignment(log), Some(2));
        assert_eq!(last_assignment("nothing"), None);
    }
}
