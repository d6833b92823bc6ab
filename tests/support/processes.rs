//! Components as real processes: a workspace binary started against a test platform's
//! databases and broker, SIGKILLed and started again — no polite group leave, no producer
//! purge, connections cut by the kernel, exactly as in production.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::platform::TestApp;
use crate::workspace_binary;

/// One component binary running as a child process.
pub struct ComponentProcess {
    pub binary: &'static str,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// How often it was started.
    pub starts: u32,
}

impl ComponentProcess {
    /// Start it (its output goes to a log file, named in failures).
    pub fn start(binary: &'static str, env: Vec<(String, String)>) -> Self {
        let log = std::env::temp_dir().join(format!(
            "sagaflow-test-{binary}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let mut process = ComponentProcess {
            binary,
            env,
            log,
            child: None,
            starts: 0,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the component's log");
        let child = Command::new(workspace_binary(self.binary))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("SAGAFLOW_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary));
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL it, wait for it to be gone, and start it again.
    pub async fn kill_and_restart(&mut self) {
        self.assert_running();
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL");
            child.wait().await.expect("reaped");
        }
        self.spawn();
    }

    /// Panics (with its log) if the process exited on its own.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!("{} exited by itself ({status}):\n{tail}", self.binary);
        }
    }

    /// SIGTERM it, as a container stop does, and wait (at most `within`) for its exit status.
    pub async fn terminate(mut self, within: std::time::Duration) -> std::process::ExitStatus {
        self.assert_running();
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("a running child has a pid");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.expect("reaped"),
            Err(_) => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!(
                    "{} did not stop within {within:?} of SIGTERM:\n{log}",
                    self.binary
                )
            }
        };
        let _ = std::fs::remove_file(&self.log);
        status
    }

    /// Stop it for good (SIGKILL: nothing of the test depends on a graceful stop).
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

impl TestApp {
    /// Take `component` out of the in-process platform and run its binary as a process on the
    /// same databases, topics and groups. Components: `saga-orchestrator`, `outbox-relay`,
    /// `inventory-service`, `payment-service`, `notification-service`, `order-service`,
    /// `query-service`.
    pub async fn run_as_process(&mut self, component: &'static str) -> ComponentProcess {
        self.platform
            .as_mut()
            .expect("platform running")
            .remove_component(component)
            .await;
        let urls = &self.config.databases;
        let saga = &self.config.saga;
        let mut env: Vec<(String, String)> = vec![
            ("KAFKA_BROKERS".into(), self.kafka.brokers.clone()),
            (
                "SAGAFLOW_TOPIC_PREFIX".into(),
                self.kafka.topic_prefix.clone(),
            ),
            (
                "SAGAFLOW_TOPIC_PARTITIONS".into(),
                self.kafka.partitions.to_string(),
            ),
            // Loopback and a free port: open without a secret, as the exposure check allows.
            ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("LOG_FORMAT".into(), "text".into()),
            ("NO_COLOR".into(), "1".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        let database = match component {
            "saga-orchestrator" => {
                env.extend([
                    (
                        "SAGA_STEP_TIMEOUT_MS".into(),
                        saga.step_timeout_ms.to_string(),
                    ),
                    ("SAGA_MAX_ATTEMPTS".into(), saga.max_attempts.to_string()),
                    (
                        "SAGA_SWEEP_INTERVAL_MS".into(),
                        saga.sweep_interval_ms.to_string(),
                    ),
                ]);
                Some(&urls.saga)
            }
            "inventory-service" => Some(&urls.inventory),
            "notification-service" => Some(&urls.notification),
            "order-service" => Some(&urls.order),
            "query-service" => Some(&urls.query),
            "payment-service" => {
                env.push((
                    "PAYMENT_PROVIDER_URL".into(),
                    self.config.payment.provider_url.clone(),
                ));
                Some(&urls.payment)
            }
            "outbox-relay" => {
                let all = [
                    ("order", &urls.order),
                    ("inventory", &urls.inventory),
                    ("payment", &urls.payment),
                    ("notification", &urls.notification),
                    ("saga", &urls.saga),
                ];
                let list: Vec<String> = all.iter().map(|(n, u)| format!("{n}={u}")).collect();
                env.push(("OUTBOX_DATABASE_URLS".into(), list.join(",")));
                None
            }
            other => panic!("no component binary {other}"),
        };
        if let Some(url) = database {
            env.push(("DATABASE_URL".into(), url.clone()));
        }
        ComponentProcess::start(component, env)
    }
}
