//! A real Prometheus server in the loop: Debian's `prometheus` package (`/usr/bin/prometheus`,
//! or `SAGAFLOW_TEST_PROMETHEUS`) as a child process with its own temporary TSDB, on a free
//! loopback port, killed on drop; and the bits of its HTTP API the tests read.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::wait;

pub struct Prometheus {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    http: reqwest::Client,
    child: Child,
    log: PathBuf,
    // Config, rules and TSDB; removed on drop.
    dir: tempfile::TempDir,
}

/// The server binary: `SAGAFLOW_TEST_PROMETHEUS`, else Debian's.
fn binary() -> PathBuf {
    std::env::var_os("SAGAFLOW_TEST_PROMETHEUS")
        .map_or_else(|| PathBuf::from("/usr/bin/prometheus"), PathBuf::from)
}

/// A port nothing listens on now (Debian's package may run a Prometheus of its own on 9090).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

/// A scrape configuration for one target, evaluated every second, loading `rule_files`.
pub fn scrape_config(job: &str, target: &str, rule_files: &[PathBuf]) -> String {
    let rules: Vec<String> = rule_files
        .iter()
        .map(|f| format!("  - {:?}", f.display().to_string()))
        .collect();
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n{}\n\
         scrape_configs:\n  - job_name: {job:?}\n    static_configs:\n      - targets: [{target:?}]\n",
        rules.join("\n")
    )
}

impl Prometheus {
    /// Start the server with `config` (a prometheus.yml) and `files` (name, content) written
    /// next to it; returns once `/-/ready` answers.
    pub async fn start(config: &str, files: &[(&str, String)]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write a Prometheus file");
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let child = spawn(&config_file, dir.path(), port, &log);
        let mut prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            child,
            log,
            dir,
        };
        prometheus.wait_ready().await;
        prometheus
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log_tail());
            }
            let ready = self.http.get(format!("{}/-/ready", self.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 30 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `GET /api/v1/<path>` → its `data`.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("prometheus answers JSON");
        assert_eq!(
            body["status"], "success",
            "/api/v1/{path} {query:?}: {body}"
        );
        body["data"].clone()
    }

    /// An instant query's result vector: (labels, value) per series.
    pub async fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let data = self.api("query", &[("query", promql)]).await;
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|series| {
                let value = series["value"][1].as_str().and_then(|v| v.parse().ok());
                (series["metric"].clone(), value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// Every alert pending or firing: (labels, state).
    pub async fn alerts(&self) -> Vec<(Value, String)> {
        let data = self.api("alerts", &[]).await;
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"].clone(),
                    a["state"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    }

    /// Wait until the instant query returns a series satisfying `check`.
    pub async fn until(&self, what: &str, timeout: Duration, promql: &str, check: fn(f64) -> bool) {
        wait::until_explained(
            what,
            timeout,
            || async {
                self.query(promql)
                    .await
                    .iter()
                    .any(|(_, v)| check(*v))
                    .then_some(())
            },
            || async {
                format!(
                    "{promql} = {:?}\n{}",
                    self.query(promql).await,
                    self.log_tail()
                )
            },
        )
        .await
    }

    /// The temporary directory holding config, rules and TSDB.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn spawn(config: &Path, dir: &Path, port: u16, log: &Path) -> Child {
    let log_file = std::fs::File::create(log).expect("prometheus log file");
    Command::new(binary())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (apt-get install prometheus, or scripts/test-infra.sh prereqs)",
                binary().display()
            )
        })
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
