//! The figures of the saga benchmark: each step's ([`StepReport`], from its samples and
//! completions), the run's report ([`Report`]) and how it is shown (one JSON object with
//! `--json`, else a table).
//!
//! The JSON of `sagaflow bench --json` is a public contract: [`Report`] and [`StepJson`] are
//! that contract, field for field (names, nesting, types, nulls); the tests below pin every
//! key path. The table shows the very numbers of the JSON.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::baseline::{Baselines, CommitBaseline};
use super::load::{Drive, RelayFigures, Settled};
use super::{SagaBenchArgs, Search};
use crate::bench::stats::{
    Limits, Percentiles, StepOutcome, Verdict, backlog_tolerance, judge, ms, ratio, summary,
};

/// The figures of one step, unrounded.
#[derive(Debug, Clone)]
pub(super) struct StepReport {
    pub phase: &'static str,
    pub rate: f64,
    pub secs: f64,
    pub outcome: StepOutcome,
    pub verdict: Verdict,
    pub accept: Percentiles,
    pub saga: Percentiles,
    pub accepted_per_s: f64,
    pub sagas_per_s: f64,
    pub approved: u64,
    pub rejected: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// Seconds the step waited for the work of earlier load to finish before it began.
    pub quiet_wait_secs: Option<f64>,
}

/// What the answers of a step say: accept latencies, when each accepted order was due, the
/// failures by kind, and the last answer.
#[derive(Default)]
struct Answers {
    accept_ms: Vec<f64>,
    due_of: HashMap<uuid::Uuid, Duration>,
    error_kinds: BTreeMap<String, u64>,
    last: Duration,
}

impl Answers {
    /// The answers to the requests due in the steady window (from `from` on).
    fn of(drove: &Drive, from: Duration) -> Self {
        let mut answers = Answers::default();
        for sample in drove.samples.iter().filter(|s| s.due >= from) {
            match &sample.outcome {
                Ok(id) => {
                    let latency = sample.answered.saturating_sub(sample.due);
                    answers.accept_ms.push(latency.as_secs_f64() * 1000.0);
                    answers.due_of.insert(*id, sample.due);
                    answers.last = answers.last.max(sample.answered);
                }
                Err(kind) => *answers.error_kinds.entry(kind.clone()).or_insert(0) += 1,
            }
        }
        answers
    }
}

/// What the completions of a step say: saga latencies from the due time (a saga not
/// complete when the wait ended counts as taking until then), the verdicts, and the last
/// completion (wall clock).
struct Sagas {
    saga_ms: Vec<f64>,
    completed: u64,
    approved: u64,
    rejected: u64,
    last: chrono::DateTime<chrono::Utc>,
}

impl Sagas {
    fn of(drove: &Drive, settled: &Settled, due_of: &HashMap<uuid::Uuid, Duration>) -> Self {
        let mut sagas = Sagas {
            saga_ms: Vec::new(),
            completed: 0,
            approved: 0,
            rejected: 0,
            last: drove.start_wall,
        };
        let intended = |due: &Duration| {
            drove.start_wall + chrono::Duration::from_std(*due).unwrap_or(chrono::Duration::zero())
        };
        let millis = |d: chrono::Duration| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
        let mut unfinished: HashMap<_, _> = due_of.iter().collect();
        for c in &settled.completions {
            // Completions of orders of other steps (or of the warm-up) are not this window's.
            let Some(due) = unfinished.remove(&c.id) else {
                continue;
            };
            sagas.saga_ms.push(millis(c.at - intended(due)).max(0.0));
            sagas.completed += 1;
            sagas.last = sagas.last.max(c.at);
            if c.status == "APPROVED" {
                sagas.approved += 1;
            } else {
                sagas.rejected += 1;
            }
        }
        // Not dropped: an unfinished saga is at least as slow as the wait for it.
        if let Some(gave_up_at) = settled.gave_up_at {
            for due in unfinished.values() {
                sagas
                    .saga_ms
                    .push(millis(gave_up_at - intended(due)).max(0.0));
            }
        }
        sagas
    }
}

/// The steady window of a step: the requests due from `from` on count (the ones before are
/// the warm-up at the new rate), how much the sagas in flight and the read side's backlog
/// grew over it, and how long the
/// step waited for the platform to go quiet before it began ([`super::load::quiesce`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Window {
    pub from: Duration,
    pub backlog_growth: i64,
    pub read_side_growth: i64,
    pub quiet_wait: Option<Duration>,
}

impl StepReport {
    pub(super) fn new(
        phase: &'static str,
        drove: &Drive,
        settled: &Settled,
        window: Window,
        limits: &Limits,
    ) -> Self {
        let mut answers = Answers::of(drove, window.from);
        let mut sagas = Sagas::of(drove, settled, &answers.due_of);
        let accepted = answers.accept_ms.len() as u64;
        let completed = sagas.completed;
        let offered = drove
            .samples
            .iter()
            .filter(|s| s.due >= window.from)
            .count() as u64;
        let accept = summary(&mut answers.accept_ms);
        let saga = summary(&mut sagas.saga_ms);
        // No accepted (completed) order at all is as bad as the slowest: never sustainable.
        let outcome = StepOutcome {
            offered,
            accepted,
            errors: answers.error_kinds.values().sum(),
            accept_p99_ms: if accepted == 0 {
                f64::INFINITY
            } else {
                accept.p99
            },
            completed,
            saga_p99_ms: if completed == 0 {
                f64::INFINITY
            } else {
                saga.p99
            },
            backlog_growth: window.backlog_growth,
            read_side_growth: window.read_side_growth,
        };
        let secs = (drove.secs - window.from.as_secs_f64()).max(1e-3);
        let window_start = drove.start_wall
            + chrono::Duration::from_std(window.from).unwrap_or(chrono::Duration::zero());
        let completing = (sagas.last - window_start)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        StepReport {
            phase,
            rate: drove.rate,
            secs: drove.secs,
            verdict: judge(&outcome, limits),
            outcome,
            accept,
            saga,
            accepted_per_s: accepted as f64
                / (answers.last.saturating_sub(window.from).as_secs_f64()).max(secs),
            sagas_per_s: if completing > 0.0 {
                completed as f64 / completing.max(secs)
            } else {
                0.0
            },
            approved: sagas.approved,
            rejected: sagas.rejected,
            error_kinds: answers.error_kinds,
            quiet_wait_secs: window.quiet_wait.map(|d| d.as_secs_f64()),
        }
    }
}

/// Every step of the run in order, and the failures of all of them by kind.
#[derive(Debug, Default)]
pub(super) struct Steps {
    pub steps: Vec<StepReport>,
    pub errors: BTreeMap<String, u64>,
}

impl Steps {
    pub(super) fn push(&mut self, step: StepReport) {
        for (kind, n) in &step.error_kinds {
            *self.errors.entry(kind.clone()).or_insert(0) += n;
        }
        self.steps.push(step);
    }
}

/// `sagaflow bench --json`, the public contract. Field order is the key order of the JSON
/// (serialised through `serde_json::Value`, which orders keys as `json!` did).
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub machine: Machine,
    pub settings: Settings,
    /// The physical ceiling: POST /orders rows with no trigger and no NOTIFY, the best of 1,
    /// 4 and 8 connections. Every `*_vs_commit_baseline` ratio is to this.
    pub baseline_commit_per_s: f64,
    /// The connection count of that best.
    pub baseline_commit_connections: u32,
    /// The POST /orders transaction as implemented (trigger and NOTIFY included).
    pub baseline_app_commit_per_s: f64,
    pub baseline_produce_per_s: f64,
    /// None with --rate (no ramp).
    pub max_sustainable_rate: Option<f64>,
    pub accepted_per_s: f64,
    pub accepted_vs_commit_baseline: f64,
    pub sagas_per_s: f64,
    pub sagas_vs_commit_baseline: f64,
    pub drain_sagas_per_s: Option<f64>,
    pub drain_sagas_vs_commit_baseline: Option<f64>,
    pub run_rate: f64,
    pub run_secs: f64,
    pub run_accepted_per_s: f64,
    pub run_sagas_per_s: f64,
    pub accept_p50_ms: Option<f64>,
    pub accept_p95_ms: Option<f64>,
    pub accept_p99_ms: Option<f64>,
    pub saga_p50_ms: Option<f64>,
    pub saga_p95_ms: Option<f64>,
    pub saga_p99_ms: Option<f64>,
    pub relay_commit_to_ack_p50_ms: Option<f64>,
    pub relay_commit_to_ack_p99_ms: Option<f64>,
    pub relay_msgs_per_s: f64,
    pub relay_vs_produce_baseline: f64,
    pub approved: u64,
    pub rejected: u64,
    pub pending_at_end: i64,
    /// `pg_stat_database.deadlocks` of the platform's databases over the whole run.
    pub deadlocks: i64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub steps: Vec<StepJson>,
}

#[derive(Debug, Serialize)]
pub(super) struct Machine {
    pub cpus: usize,
}

#[derive(Debug, Serialize)]
pub(super) struct Settings {
    pub duration_s: u64,
    pub connections: u32,
    pub step_secs: f64,
    pub ramp_factor: f64,
    pub max_accept_p99_ms: f64,
    pub max_saga_p99_ms: f64,
    pub synchronous_commit: String,
    pub fsync: String,
    /// What ran the commit ceiling's transactions: `pgbench` or `in-process`.
    pub ceiling_client: String,
}

impl Settings {
    pub(super) fn new(args: &SagaBenchArgs, commit: &CommitBaseline) -> Self {
        Settings {
            duration_s: args.duration,
            connections: args.connections,
            step_secs: args.step_secs,
            ramp_factor: args.ramp_factor,
            max_accept_p99_ms: args.max_accept_p99_ms,
            max_saga_p99_ms: args.max_saga_p99_ms,
            synchronous_commit: commit.synchronous_commit.clone(),
            fsync: commit.fsync.clone(),
            ceiling_client: commit.ceiling_client.to_string(),
        }
    }
}

/// One step in the JSON (rates rounded to whole numbers, latencies to 0.01 ms).
#[derive(Debug, Serialize)]
pub(super) struct StepJson {
    pub phase: &'static str,
    pub rate: f64,
    pub secs: f64,
    pub offered: u64,
    pub accepted: u64,
    pub completed: u64,
    pub errors: u64,
    pub accepted_per_s: f64,
    pub sagas_per_s: f64,
    pub accept_p50_ms: Option<f64>,
    pub accept_p99_ms: Option<f64>,
    pub saga_p50_ms: Option<f64>,
    pub saga_p99_ms: Option<f64>,
    pub accept_ok: bool,
    pub saga_ok: bool,
    /// How much the sagas in flight grew over the steady window, by their trend (0 for
    /// burst steps): the third reason a step can be unsustainable, beside completions and p99.
    pub backlog_growth: i64,
    /// How much the read side's backlog (verdicts not yet in the read model or not yet
    /// notified) grew over the steady window, by its trend (0 for burst steps): the fourth
    /// reason.
    pub read_side_growth: i64,
    /// Seconds the step waited, before it began, for the platform to finish the work of
    /// earlier load (no saga in flight, no outbox row unpublished, every verdict in the read
    /// model and notified); null for burst steps, which do not wait, and for a step that gave
    /// up waiting after 60 s and began anyway.
    pub quiet_wait_secs: Option<f64>,
}

impl From<&StepReport> for StepJson {
    fn from(s: &StepReport) -> Self {
        StepJson {
            phase: s.phase,
            rate: s.rate,
            secs: s.secs,
            offered: s.outcome.offered,
            accepted: s.outcome.accepted,
            completed: s.outcome.completed,
            errors: s.outcome.errors,
            accepted_per_s: s.accepted_per_s.round(),
            sagas_per_s: s.sagas_per_s.round(),
            accept_p50_ms: ms(s.accept.p50),
            accept_p99_ms: ms(s.accept.p99),
            saga_p50_ms: ms(s.saga.p50),
            saga_p99_ms: ms(s.saga.p99),
            accept_ok: s.verdict.accept_ok,
            saga_ok: s.verdict.saga_ok,
            backlog_growth: s.outcome.backlog_growth,
            read_side_growth: s.outcome.read_side_growth,
            quiet_wait_secs: s.quiet_wait_secs.map(|w| (w * 100.0).round() / 100.0),
        }
    }
}

/// The ceilings reached over the steps: HTTP accepts/s of the steps HTTP kept up with, and
/// sagas/s of the steps the sagas kept up with (burst steps are not waited for).
struct Ceilings {
    max_sustainable_rate: Option<f64>,
    accepted_per_s: f64,
    sagas_per_s: f64,
}

impl Ceilings {
    fn of(steps: &[StepReport], ramped: bool) -> Self {
        let sustainable = steps
            .iter()
            .filter(|s| s.phase == "ramp" && s.verdict.saga_ok)
            .map(|s| s.rate);
        Ceilings {
            max_sustainable_rate: if ramped {
                sustainable.reduce(f64::max)
            } else {
                None
            },
            accepted_per_s: steps
                .iter()
                .filter(|s| s.verdict.accept_ok)
                .map(|s| s.accepted_per_s)
                .fold(0.0, f64::max),
            sagas_per_s: steps
                .iter()
                .filter(|s| s.verdict.saga_ok && s.phase != "burst")
                .map(|s| s.sagas_per_s)
                .fold(0.0, f64::max),
        }
    }
}

/// What the databases say once the run is over.
pub(super) struct AtEnd {
    /// Sagas accepted and not ended.
    pub pending: i64,
    /// `pg_stat_database.deadlocks` of the platform's databases.
    pub deadlocks: i64,
}

impl Report {
    /// The report of a run: `steps` (the measured `run` among them), against `baselines`.
    pub(super) fn new(
        settings: Settings,
        baselines: &Baselines,
        steps: &Steps,
        run: &StepReport,
        search: &Search,
        relay: &RelayFigures,
        at_end: AtEnd,
    ) -> Self {
        let commit = baselines.commit.per_s;
        let produce = baselines.produce_per_s;
        let ceilings = Ceilings::of(&steps.steps, search.ramped);
        let drain = search.drain_sagas_per_s;
        Report {
            machine: Machine {
                cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            },
            settings,
            baseline_commit_per_s: commit.round(),
            baseline_commit_connections: baselines.commit.connections,
            baseline_app_commit_per_s: baselines.commit.app_per_s.round(),
            baseline_produce_per_s: produce.round(),
            max_sustainable_rate: ceilings.max_sustainable_rate,
            accepted_per_s: ceilings.accepted_per_s.round(),
            accepted_vs_commit_baseline: ratio(ceilings.accepted_per_s, commit),
            sagas_per_s: ceilings.sagas_per_s.round(),
            sagas_vs_commit_baseline: ratio(ceilings.sagas_per_s, commit),
            drain_sagas_per_s: drain.map(f64::round),
            drain_sagas_vs_commit_baseline: drain.map(|d| ratio(d, commit)),
            run_rate: search.run_rate,
            run_secs: search.run_secs,
            run_accepted_per_s: run.accepted_per_s.round(),
            run_sagas_per_s: run.sagas_per_s.round(),
            accept_p50_ms: ms(run.accept.p50),
            accept_p95_ms: ms(run.accept.p95),
            accept_p99_ms: ms(run.accept.p99),
            saga_p50_ms: ms(run.saga.p50),
            saga_p95_ms: ms(run.saga.p95),
            saga_p99_ms: ms(run.saga.p99),
            relay_commit_to_ack_p50_ms: ms(relay.commit_to_ack.p50),
            relay_commit_to_ack_p99_ms: ms(relay.commit_to_ack.p99),
            relay_msgs_per_s: relay.msgs_per_s.round(),
            relay_vs_produce_baseline: ratio(relay.msgs_per_s, produce),
            approved: run.approved,
            rejected: run.rejected,
            pending_at_end: at_end.pending,
            deadlocks: at_end.deadlocks,
            errors: steps.errors.values().sum(),
            error_kinds: steps.errors.clone(),
            steps: steps.steps.iter().map(StepJson::from).collect(),
        }
    }

    /// The report as JSON. Through `Value`, so that keys come out in `Value`'s order, as they
    /// did when the report was built with `json!`.
    pub(super) fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// One JSON object on stdout, or the table.
    pub(super) fn print(&self, json: bool, steps: &[StepReport]) {
        if json {
            println!("{}", self.to_json());
        } else {
            print_steps(steps);
            self.print_figures();
        }
    }

    fn print_figures(&self) {
        println!();
        println!(
            "  baseline: PostgreSQL commits      {:>8} tx/s  (POST /orders rows, no trigger, {}, best at {} connections, synchronous_commit={})",
            show(&self.baseline_commit_per_s),
            self.settings.ceiling_client,
            self.baseline_commit_connections,
            self.settings.synchronous_commit,
        );
        println!(
            "  as implemented (trigger + NOTIFY) {:>8} tx/s  ({} connections)",
            show(&self.baseline_app_commit_per_s),
            self.settings.connections,
        );
        println!(
            "  baseline: raw produce             {:>8} msg/s",
            show(&self.baseline_produce_per_s)
        );
        println!(
            "  max sustainable rate              {:>8} orders/s",
            show(&self.max_sustainable_rate)
        );
        println!(
            "  accepted orders/s (HTTP ceiling)  {:>8}       {} × commit baseline",
            show(&self.accepted_per_s),
            show(&self.accepted_vs_commit_baseline)
        );
        println!(
            "  completed sagas/s (sustained)     {:>8}       {} × commit baseline",
            show(&self.sagas_per_s),
            show(&self.sagas_vs_commit_baseline)
        );
        println!(
            "  completed sagas/s (backlog drain) {:>8}       {} × commit baseline",
            show(&self.drain_sagas_per_s),
            show(&self.drain_sagas_vs_commit_baseline)
        );
        self.print_run();
    }

    fn print_run(&self) {
        println!(
            "  at {} orders/s for {} s:",
            show(&self.run_rate),
            show(&self.run_secs)
        );
        println!(
            "    HTTP accept p50/p95/p99         {} / {} / {} ms",
            show(&self.accept_p50_ms),
            show(&self.accept_p95_ms),
            show(&self.accept_p99_ms)
        );
        println!(
            "    saga POST→APPROVED p50/p95/p99  {} / {} / {} ms",
            show(&self.saga_p50_ms),
            show(&self.saga_p95_ms),
            show(&self.saga_p99_ms)
        );
        println!(
            "    relay commit→ack p50/p99        {} / {} ms",
            show(&self.relay_commit_to_ack_p50_ms),
            show(&self.relay_commit_to_ack_p99_ms)
        );
        println!(
            "    relay messages/s                {}   {} × produce baseline",
            show(&self.relay_msgs_per_s),
            show(&self.relay_vs_produce_baseline)
        );
        println!(
            "    approved / rejected             {} / {}",
            show(&self.approved),
            show(&self.rejected)
        );
        println!(
            "  errors                            {}  {}",
            show(&self.errors),
            show(&self.error_kinds)
        );
    }
}

/// A figure of the table as it is in the JSON (`1234.0`, `{"timeout":3}`); null as "—".
fn show<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::Null) | Err(_) => "—".to_string(),
        Ok(v) => v.to_string(),
    }
}

/// The table of steps, from their unrounded figures.
fn print_steps(steps: &[StepReport]) {
    println!("\nsaga benchmark (same database server, same broker, same run)");
    println!("  steps:");
    println!(
        "    {:<6} {:>7} {:>10} {:>9} {:>10} {:>9} {:>7} {:>8} {:>9} {:>6}  verdict",
        "phase",
        "rate",
        "accepted/s",
        "accept99",
        "sagas/s",
        "saga99",
        "errors",
        "backlog",
        "read side",
        "quiet"
    );
    for s in steps {
        let verdict = match (s.verdict.accept_ok, s.verdict.saga_ok, s.phase) {
            (_, _, "run") => "",
            (true, true, _) => "sustainable",
            (true, false, "burst") => "accept ok",
            (true, false, _)
                if s.outcome.read_side_growth > backlog_tolerance(s.outcome.accepted) =>
            {
                "read side behind"
            }
            (true, false, _) => "sagas behind",
            _ => "HTTP behind",
        };
        println!(
            "    {:<6} {:>7.0} {:>10.0} {:>9} {:>10.0} {:>9} {:>7} {:>+8} {:>+9} {:>6}  {verdict}",
            s.phase,
            s.rate,
            s.accepted_per_s,
            ms(s.accept.p99).map_or("—".into(), |v| format!("{v:.1}")),
            s.sagas_per_s,
            ms(s.saga.p99).map_or("—".into(), |v| format!("{v:.1}")),
            s.outcome.errors,
            s.outcome.backlog_growth,
            s.outcome.read_side_growth,
            s.quiet_wait_secs.map_or("—".into(), |w| format!("{w:.1}s")),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every key path of `sagaflow bench --json` and the JSON type of its value, as the
    /// report was built with `json!` before it was typed. A renamed, moved, retyped, added or
    /// dropped key fails the test: the JSON is a public contract.
    const CONTRACT: &[&str] = &[
        "machine: object",
        "machine.cpus: int",
        "settings: object",
        "settings.duration_s: int",
        "settings.connections: int",
        "settings.step_secs: float",
        "settings.ramp_factor: float",
        "settings.max_accept_p99_ms: float",
        "settings.max_saga_p99_ms: float",
        "settings.synchronous_commit: string",
        "settings.fsync: string",
        "settings.ceiling_client: string",
        "baseline_commit_per_s: float",
        "baseline_commit_connections: int",
        "baseline_app_commit_per_s: float",
        "baseline_produce_per_s: float",
        "max_sustainable_rate: float",
        "accepted_per_s: float",
        "accepted_vs_commit_baseline: float",
        "sagas_per_s: float",
        "sagas_vs_commit_baseline: float",
        "drain_sagas_per_s: float",
        "drain_sagas_vs_commit_baseline: float",
        "run_rate: float",
        "run_secs: float",
        "run_accepted_per_s: float",
        "run_sagas_per_s: float",
        "accept_p50_ms: float",
        "accept_p95_ms: float",
        "accept_p99_ms: float",
        "saga_p50_ms: float",
        "saga_p95_ms: float",
        "saga_p99_ms: float",
        "relay_commit_to_ack_p50_ms: float",
        "relay_commit_to_ack_p99_ms: float",
        "relay_msgs_per_s: float",
        "relay_vs_produce_baseline: float",
        "approved: int",
        "rejected: int",
        "pending_at_end: int",
        "deadlocks: int",
        "errors: int",
        "error_kinds: object",
        "error_kinds.*: int",
        "steps: array",
        "steps[].phase: string",
        "steps[].rate: float",
        "steps[].secs: float",
        "steps[].offered: int",
        "steps[].accepted: int",
        "steps[].completed: int",
        "steps[].errors: int",
        "steps[].accepted_per_s: float",
        "steps[].sagas_per_s: float",
        "steps[].accept_p50_ms: float",
        "steps[].accept_p99_ms: float",
        "steps[].saga_p50_ms: float",
        "steps[].saga_p99_ms: float",
        "steps[].accept_ok: bool",
        "steps[].saga_ok: bool",
        "steps[].backlog_growth: int",
        "steps[].read_side_growth: int",
        "steps[].quiet_wait_secs: float",
    ];

    /// The keys that may be null (no samples, no ramp, no burst); present all the same.
    const NULLABLE: &[&str] = &[
        "max_sustainable_rate",
        "drain_sagas_per_s",
        "drain_sagas_vs_commit_baseline",
        "accept_p50_ms",
        "accept_p95_ms",
        "accept_p99_ms",
        "saga_p50_ms",
        "saga_p95_ms",
        "saga_p99_ms",
        "relay_commit_to_ack_p50_ms",
        "relay_commit_to_ack_p99_ms",
        "steps[].accept_p50_ms",
        "steps[].accept_p99_ms",
        "steps[].saga_p50_ms",
        "steps[].saga_p99_ms",
        "steps[].quiet_wait_secs",
    ];

    fn kind(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_f64() => "float",
            Value::Number(_) => "int",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// "path: type" of every key under `value` (array items as `[]`, the keys of the
    /// error-kind map, which are data, as `*`).
    fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let key = if prefix == "error_kinds" { "*" } else { key };
                    let path = if prefix.is_empty() {
                        key.to_string()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    out.insert(format!("{path}: {}", kind(child)));
                    key_paths(child, &path, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    key_paths(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }

    fn percentiles(base: f64) -> Percentiles {
        Percentiles {
            p50: base,
            p95: base * 2.0,
            p99: base * 3.0,
        }
    }

    fn step(phase: &'static str, rate: f64, saga_ok: bool, latency: f64) -> StepReport {
        StepReport {
            phase,
            rate,
            secs: 2.0,
            outcome: StepOutcome {
                offered: 200,
                accepted: 198,
                errors: 2,
                accept_p99_ms: latency * 3.0,
                completed: 190,
                saga_p99_ms: latency * 30.0,
                backlog_growth: 0,
                read_side_growth: 0,
            },
            verdict: Verdict {
                accept_ok: true,
                saga_ok,
            },
            accept: percentiles(latency),
            saga: percentiles(latency * 10.0),
            accepted_per_s: rate - 0.4,
            sagas_per_s: rate - 5.6,
            approved: 150,
            rejected: 40,
            error_kinds: BTreeMap::from([("timeout".to_string(), 2)]),
            quiet_wait_secs: latency.is_finite().then_some(1.25),
        }
    }

    fn settings() -> Settings {
        Settings {
            duration_s: 30,
            connections: 8,
            step_secs: 2.0,
            ramp_factor: 1.5,
            max_accept_p99_ms: 100.0,
            max_saga_p99_ms: 1000.0,
            synchronous_commit: "on".into(),
            fsync: "on".into(),
            ceiling_client: "pgbench".into(),
        }
    }

    fn baselines() -> Baselines {
        Baselines {
            commit: CommitBaseline {
                per_s: 4321.7,
                connections: 4,
                ceiling_client: "pgbench",
                app_per_s: 2100.2,
                synchronous_commit: "on".into(),
                fsync: "on".into(),
            },
            produce_per_s: 98765.4,
        }
    }

    /// A ramped run from fixed numbers: two ramp steps, a burst step, the run.
    fn fixture(latency: f64, drain: Option<f64>, ramped: bool) -> (Report, Steps) {
        let mut steps = Steps::default();
        steps.push(step("ramp", 50.0, true, latency));
        steps.push(step("ramp", 75.0, false, latency));
        steps.push(step("burst", 113.0, false, latency));
        let run = step("run", 25.0, true, latency);
        steps.push(run.clone());
        let search = Search {
            run_rate: 25.0,
            run_secs: 20.0,
            drain_sagas_per_s: drain,
            ramped,
        };
        let relay = RelayFigures {
            commit_to_ack: percentiles(latency * 4.0),
            msgs_per_s: 301.2,
        };
        let at_end = AtEnd {
            pending: 3,
            deadlocks: 0,
        };
        let report = Report::new(
            settings(),
            &baselines(),
            &steps,
            &run,
            &search,
            &relay,
            at_end,
        );
        (report, steps)
    }

    fn paths_of(report: &Report) -> BTreeSet<String> {
        let mut paths = BTreeSet::new();
        key_paths(&report.to_json(), "", &mut paths);
        paths
    }

    /// A step whose first second is warm-up: orders `w` (warm-up), `b`, `c` and `d` (window),
    /// `d`'s saga not complete when the wait gave up at 10 s.
    #[test]
    fn only_the_window_counts_and_an_unfinished_saga_counts_at_the_grace_period() {
        use super::super::load::{Completion, Sample};
        let start = chrono::DateTime::parse_from_rfc3339("2026-12-03T00:00:00Z")
            .unwrap()
            .to_utc();
        let at = |ms: i64| start + chrono::Duration::milliseconds(ms);
        let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::new_v4()).collect();
        let (w, b, c, d) = (ids[0], ids[1], ids[2], ids[3]);
        let sample = |due_ms: u64, id| Sample {
            due: Duration::from_millis(due_ms),
            answered: Duration::from_millis(due_ms + 5),
            outcome: Ok(id),
        };
        let drove = Drive {
            rate: 2.0,
            secs: 2.0,
            start_wall: start,
            samples: vec![
                sample(0, w),
                sample(1000, b),
                sample(1500, c),
                sample(2000, d),
            ],
        };
        let done = |id, ms| Completion {
            id,
            status: "APPROVED".into(),
            at: at(ms),
        };
        let settled = Settled {
            completions: vec![done(w, 50), done(b, 1100), done(c, 1700)],
            gave_up_at: Some(at(10_000)),
        };
        let window = Window {
            from: Duration::from_secs(1),
            backlog_growth: 0,
            read_side_growth: 0,
            quiet_wait: None,
        };
        let limits = Limits {
            max_accept_p99_ms: 100.0,
            max_saga_p99_ms: 1000.0,
            max_loss: 0.01,
        };
        let step = StepReport::new("ramp", &drove, &settled, window, &limits);
        assert_eq!(
            step.outcome.offered, 3,
            "the warm-up order is not the window's"
        );
        assert_eq!(step.outcome.accepted, 3);
        assert_eq!(step.outcome.completed, 2);
        // 100 ms (b), 200 ms (c), and d at 10 s − 2 s = 8 s, not dropped.
        assert_eq!(step.saga.p50, 200.0);
        assert_eq!(step.saga.p99, 8000.0);
        assert!(!step.verdict.saga_ok);
    }

    #[test]
    fn the_json_keys_are_the_contract() {
        let (report, _) = fixture(1.5, Some(80.4), true);
        let expected: BTreeSet<String> = CONTRACT.iter().map(|s| s.to_string()).collect();
        assert_eq!(paths_of(&report), expected);
    }

    #[test]
    fn absent_figures_are_null_not_missing() {
        // No samples at all (NaN percentiles), no ramp (--rate), no burst.
        let (report, _) = fixture(f64::NAN, None, false);
        let expected: BTreeSet<String> = CONTRACT
            .iter()
            .map(|line| {
                let (path, kind) = line.split_once(": ").unwrap();
                if NULLABLE.contains(&path) {
                    format!("{path}: null")
                } else {
                    format!("{path}: {kind}")
                }
            })
            .collect();
        assert_eq!(paths_of(&report), expected);
    }

    #[test]
    fn the_report_holds_the_rounded_figures() {
        let (report, _) = fixture(1.5, Some(80.4), true);
        let json = report.to_json();
        assert_eq!(json["baseline_commit_per_s"], 4322.0);
        assert_eq!(json["baseline_commit_connections"], 4);
        assert_eq!(json["baseline_app_commit_per_s"], 2100.0);
        assert_eq!(json["max_sustainable_rate"], 50.0);
        // The HTTP ceiling over every step HTTP kept up with (burst included).
        assert_eq!(json["accepted_per_s"], 113.0);
        // The saga ceiling over the sustainable steps, burst excluded.
        assert_eq!(json["sagas_per_s"], 44.0);
        assert_eq!(json["accepted_vs_commit_baseline"], 0.026);
        assert_eq!(json["drain_sagas_per_s"], 80.0);
        assert_eq!(json["accept_p99_ms"], 4.5);
        assert_eq!(json["errors"], 8);
        assert_eq!(json["error_kinds"]["timeout"], 8);
        assert_eq!(json["pending_at_end"], 3);
        assert_eq!(json["steps"].as_array().map(Vec::len), Some(4));
        assert_eq!(json["steps"][3]["phase"], "run");
        assert_eq!(json["steps"][1]["saga_ok"], false);
    }
}
