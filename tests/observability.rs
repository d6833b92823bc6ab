//! The operators' observability pack (deploy/prometheus, deploy/grafana, docs/runbook.md)
//! against the real thing. It proves that:
//!
//! - every metric the alert rules and the Grafana dashboard query is one a running platform
//!   exports (names taken out of the PromQL by a PromQL parser, not by a regex), so no alert
//!   or panel silently watches nothing;
//! - a real Prometheus (Debian's `/usr/bin/prometheus`, a child process) scrapes a spawned
//!   platform with the real rule files loaded: it sees the orders counter rise and the lag and
//!   backlog gauges; and when the relay stops while orders keep coming, the backlog-age alert
//!   goes pending (the real rule) and firing (the same rule with a test-only short `for:`) —
//!   the outbox is measured by the services that write it, not only by the relay;
//! - every alert carries a summary, a description and a runbook section, and has promtool
//!   unit tests that fire it and keep it quiet (`scripts/promtool-check.sh` runs them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use sagaflow_tests::broker_lock;
use sagaflow_tests::platform::{Options, TestApp, order_body, spawn_platform};
use sagaflow_tests::prometheus::{Prometheus, scrape_config};
use sagaflow_tests::wait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

const RULES: &str = "deploy/prometheus/rules/sagaflow-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests/sagaflow-alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/sagaflow.json";
const RUNBOOK: &str = "docs/runbook.md";
const BACKLOG_AGE_ALERT: &str = "OutboxOldestUnpublishedTooOld";
/// Series Prometheus makes itself, not the platform.
const PROMETHEUS_OWN: [&str; 3] = ["up", "ALERTS", "ALERTS_FOR_STATE"];

/// The platform tests share the process-wide metrics registry, whose series carry no
/// per-platform label: one at a time, so one platform's gauges never overwrite the other's.
static ONE_PLATFORM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn workspace_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[derive(Debug, Deserialize, Serialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize, Serialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn alert_rules() -> Vec<Rule> {
    let file: RuleFile = serde_norway::from_str(&read(RULES)).expect("rules parse");
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

/// Every PromQL expression of the dashboard's panels (rows' nested panels included), with
/// Grafana's interval variables made concrete so the parser accepts them.
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard parses");
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            queries.push(
                expr.replace("$__rate_interval", "5m")
                    .replace("$__interval", "1m")
                    .replace("$__range", "1h"),
            );
        }
    }
    queries
}

/// The metric names a PromQL expression selects.
fn metric_names(promql: &str) -> BTreeSet<String> {
    struct Names(BTreeSet<String>);
    impl Names {
        fn add(&mut self, selector: &VectorSelector) -> Result<bool, String> {
            let name = selector.name.clone().or_else(|| {
                let by_label = selector.matchers.find_matchers("__name__");
                by_label.first().map(|m| m.value.clone())
            });
            self.0
                .insert(name.ok_or("a selector without a metric name")?);
            Ok(true)
        }
    }
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            match expr {
                Expr::VectorSelector(selector) => self.add(selector),
                Expr::MatrixSelector(matrix) => self.add(&matrix.vs),
                _ => Ok(true),
            }
        }
    }
    let expr = parser::parse(promql).unwrap_or_else(|e| panic!("PromQL {promql:?}: {e}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &expr).unwrap_or_else(|e| panic!("PromQL {promql:?}: {e}"));
    names.0
}

/// What the rules and the dashboard need the platform to export.
fn names_the_pack_uses() -> BTreeSet<String> {
    let expressions = alert_rules()
        .into_iter()
        .map(|r| r.expr)
        .chain(dashboard_queries());
    expressions
        .flat_map(|e| metric_names(&e))
        .filter(|name| !PROMETHEUS_OWN.contains(&name.as_str()))
        .collect()
}

/// Metric names in a Prometheus text exposition (histograms as `_bucket`, `_sum`, `_count`).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_extractor_finds_every_selector_and_only_selectors() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(a_bucket{route="/orders"}[5m])))
           / on() group_left max(b) > 0.1 and absent(c) or {__name__="d"}"#,
    );
    let expected: BTreeSet<String> = ["a_bucket", "b", "c", "d"].map(String::from).into();
    assert_eq!(names, expected);
    // The rules and the dashboard give it plenty to check: the platform's whole surface.
    let used = names_the_pack_uses();
    assert!(used.len() >= 15, "only {used:?}");
    assert!(used.contains("saga_duration_seconds_bucket"), "{used:?}");
}

#[test]
fn every_alert_has_summary_description_and_a_runbook_section() {
    let runbook = read(RUNBOOK);
    let headings: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    for rule in alert_rules() {
        let name = &rule.alert;
        for key in ["summary", "description"] {
            let text = rule.annotations.get(key).map_or("", |s| s.trim());
            assert!(!text.is_empty(), "{name}: no {key}");
        }
        assert_eq!(
            rule.annotations.get("runbook").map(String::as_str),
            Some(format!("{RUNBOOK}#{}", name.to_lowercase()).as_str()),
            "{name}: runbook annotation"
        );
        assert!(
            headings.contains(name.as_str()),
            "{RUNBOOK}: no '## {name}'"
        );
        assert!(rule.labels.contains_key("severity"), "{name}: no severity");
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_promtool_case() {
    let tests: serde_norway::Value = serde_norway::from_str(&read(RULE_TESTS)).unwrap();
    // alert name -> (a case where it fires, a case where it must not)
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for case in tests["tests"].as_sequence().unwrap() {
        let checks = case["alert_rule_test"].as_sequence().into_iter().flatten();
        for check in checks {
            let name = check["alertname"].as_str().unwrap().to_string();
            let fires = !check["exp_alerts"].as_sequence().unwrap().is_empty();
            let entry = cases.entry(name).or_default();
            *entry = (entry.0 || fires, entry.1 || !fires);
        }
    }
    for rule in alert_rules() {
        let (fires, quiet) = cases.get(&rule.alert).copied().unwrap_or_default();
        assert!(fires, "{RULE_TESTS}: no case where {} fires", rule.alert);
        assert!(
            quiet,
            "{RULE_TESTS}: no case where {} stays quiet",
            rule.alert
        );
    }
}

#[test]
fn the_dashboard_queries_through_the_templated_datasource() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "no datasource variable"
    );
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        assert!(
            !panel["targets"].as_array().unwrap().is_empty(),
            "{}",
            panel["title"]
        );
    }
}

/// Place one order and wait for its saga to end, so the end-of-saga metrics exist.
async fn one_finished_saga(app: &TestApp) {
    app.set_stock("SKU-1", 1_000).await;
    let order = app.place(&[("SKU-1", 1, 1250)], "pm_card_visa").await;
    app.saga_terminal(order, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let _broker = broker_lock().read().await;
    let _alone = ONE_PLATFORM.lock().await;
    let app = spawn_platform(Options::default()).await;
    one_finished_saga(&app).await;
    let needed = names_the_pack_uses();
    let missing = || async {
        let exported = exported_names(&app.metrics().await);
        needed
            .difference(&exported)
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    // Gauges appear with their first sample (lag: sampled every second by query-service).
    wait::until_explained(
        "every metric of the rules and the dashboard on /metrics",
        Duration::from_secs(30),
        || async { missing().await.is_empty().then_some(()) },
        || async { format!("not exported: {:?}", missing().await) },
    )
    .await;
    // The runbook's first look at a slow relay: the commit→ack latency of the rows published.
    let text = app.metrics().await;
    let published: f64 = text
        .lines()
        .find(|l| l.starts_with("outbox_publish_latency_seconds_count{database=\"order\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no outbox_publish_latency_seconds of the order relay:\n{text}"));
    assert!(published >= 1.0, "order relay latency samples: {published}");
    app.stop().await;
}

/// The real rule file plus a test-only copy of the backlog-age alert, same expression, with a
/// `for:` short enough for a test; labelled `test="shortened"` to tell the two apart.
fn shortened_backlog_age_rule() -> String {
    let mut rule = alert_rules()
        .into_iter()
        .find(|r| r.alert == BACKLOG_AGE_ALERT)
        .expect("the backlog-age alert exists");
    rule.for_ = Some("2s".into());
    rule.labels.insert("test".into(), "shortened".into());
    let file = RuleFile {
        groups: vec![RuleGroup {
            name: "test-shortened".into(),
            rules: vec![rule],
        }],
    };
    serde_norway::to_string(&file).unwrap()
}

async fn start_prometheus(app: &TestApp) -> Prometheus {
    let target = app.base_url.trim_start_matches("http://");
    let rule_files = [workspace_file(RULES), PathBuf::from("shortened.yml")];
    let config = scrape_config("sagaflow", target, &rule_files);
    let started = Instant::now();
    let prometheus =
        Prometheus::start(&config, &[("shortened.yml", shortened_backlog_age_rule())]).await;
    // CI checks this line.
    stderr(&format!(
        "[sagaflow-tests] prometheus {} up in {:.1?} on {}, scraping {target}",
        prometheus.dir().display(),
        started.elapsed(),
        prometheus.url
    ));
    prometheus
}

/// `orders_placed_total` as Prometheus last scraped it (0 before the first order).
async fn scraped_orders(prometheus: &Prometheus) -> f64 {
    let result = prometheus.query("sum(orders_placed_total)").await;
    result.first().map_or(0.0, |(_, v)| *v)
}

/// Place an order every 200 ms until dropped (HTTP only: accepted orders, outbox rows).
fn keep_placing_orders(app: &TestApp) -> AbortOnDropHandle<()> {
    let (http, url) = (app.http.clone(), format!("{}/orders", app.base_url));
    AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            let body = order_body(&[("SKU-1", 1, 1250)], "pm_card_visa");
            let sent = http
                .post(&url)
                .header("Idempotency-Key", Uuid::new_v4().to_string());
            let _ = sent.json(&body).send().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}

/// The backlog-age alert for the order database in `state`, the shortened copy or the real one.
fn backlog_age_alert(alerts: &[(Value, String)], shortened: bool, states: &[&str]) -> bool {
    alerts.iter().any(|(labels, state)| {
        labels["alertname"] == BACKLOG_AGE_ALERT
            && labels["database"] == "order"
            && (labels["test"] == "shortened") == shortened
            && states.contains(&state.as_str())
    })
}

#[tokio::test]
async fn prometheus_sees_the_platform_and_the_backlog_age_alert_fires_when_the_relay_stops() {
    let _broker = broker_lock().read().await;
    let _alone = ONE_PLATFORM.lock().await;
    let mut app = spawn_platform(Options::default()).await;
    let prometheus = start_prometheus(&app).await;
    let wait_for = Duration::from_secs(20);
    prometheus
        .until(
            "the platform scraped",
            wait_for,
            r#"up{job="sagaflow"}"#,
            |v| v == 1.0,
        )
        .await;

    let before = scraped_orders(&prometheus).await;
    one_finished_saga(&app).await;
    for _ in 0..4 {
        app.place(&[("SKU-1", 1, 1250)], "pm_card_visa").await;
    }
    wait::until("Prometheus to see 5 more orders", wait_for, || async {
        (scraped_orders(&prometheus).await >= before + 5.0).then_some(())
    })
    .await;
    let lag = r#"consumer_group_lag{group="saga-orchestrator"}"#;
    prometheus
        .until("the lag gauge", wait_for, lag, f64::is_finite)
        .await;
    let backlog = r#"outbox_backlog{database="order"}"#;
    prometheus
        .until("the backlog gauge", wait_for, backlog, f64::is_finite)
        .await;
    let healthy = prometheus.alerts().await;
    assert!(
        !backlog_age_alert(&healthy, false, &["pending", "firing"]),
        "{healthy:?}"
    );

    app.stop_component("outbox-relay").await;
    let stopped = Instant::now();
    let orders = keep_placing_orders(&app);
    // Threshold (20 s) + scrape and evaluation (1 s each) + the shortened `for:` (2 s).
    let alerts = wait::until_explained(
        "the backlog-age alert: shortened copy firing, real rule pending",
        Duration::from_secs(60),
        || async {
            let alerts = prometheus.alerts().await;
            let firing = backlog_age_alert(&alerts, true, &["firing"]);
            (firing && backlog_age_alert(&alerts, false, &["pending"])).then_some(alerts)
        },
        || async {
            let age = prometheus.query("outbox_oldest_unpublished_seconds").await;
            format!("age: {age:?}\nalerts: {:?}", prometheus.alerts().await)
        },
    )
    .await;
    stderr(&format!(
        "[sagaflow-tests] backlog-age alert firing {:.1?} after the relay stopped: {alerts:?}",
        stopped.elapsed()
    ));
    let grown = prometheus.query(backlog).await;
    assert!(grown.iter().any(|(_, v)| *v > 0.0), "backlog: {grown:?}");
    drop(orders);
    app.stop().await;
}

/// Straight to the stderr handle, past libtest's capture.
fn stderr(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
