//! The component processes of a chaos run: how each is started (program, arguments,
//! environment, log file), started again after a fault, killed, frozen, and waited for.
//!
//! Every child is spawned with `kill_on_drop`, so dropping the [`Fleet`] stops them all, on
//! success, on failure and on Ctrl-C alike.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{RunInfo, Service, Urls};

/// The broker's name among the components.
pub(super) const BROKER: &str = "broker";
/// The relay's name (and binary).
pub(super) const RELAY: &str = "outbox-relay";

/// One child process and how to start it again.
struct Proc {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        // The components configure themselves from the environment: none of the caller's
        // settings may leak in (an API secret would lock the load out, a database URL would
        // point them all at one database).
        let child = Command::new(&self.program)
            .args(&self.args)
            .env_remove("SAGAFLOW_JWT_SECRET")
            .env_remove("SAGAFLOW_RATE_LIMIT_PER_SECOND")
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The exit status when the process exited (without being killed by us).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

/// The free local ports of a run: the broker's, each component's HTTP address, the payment
/// provider's.
pub(super) struct Ports {
    pub broker: String,
    http: BTreeMap<&'static str, String>,
    provider: String,
}

impl Ports {
    pub(super) fn pick() -> anyhow::Result<Self> {
        let port = || -> anyhow::Result<String> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            Ok(format!("127.0.0.1:{port}"))
        };
        let mut http = BTreeMap::new();
        for name in Service::ALL.map(Service::binary).into_iter().chain([RELAY]) {
            http.insert(name, port()?);
        }
        Ok(Ports {
            broker: port()?,
            http,
            provider: port()?,
        })
    }

    /// The HTTP address (host:port) of a component.
    pub(super) fn http_of(&self, name: &str) -> &str {
        &self.http[name]
    }
}

/// Every component process, shared by the fault injector, the watchdog and the run.
#[derive(Clone)]
pub(super) struct Fleet(Arc<Mutex<Vec<Proc>>>);

/// What the process definitions need from the run.
struct Setup<'a> {
    run: &'a RunInfo,
    urls: &'a Urls,
    ports: &'a Ports,
    bin_dir: PathBuf,
}

impl Setup<'_> {
    /// The environment every component shares, with its own HTTP address.
    fn common(&self, name: &str) -> Vec<(String, String)> {
        vec![
            ("KAFKA_BROKERS".into(), self.ports.broker.clone()),
            (
                "SAGAFLOW_TOPIC_PREFIX".into(),
                format!("chaos{}-", self.run.id),
            ),
            ("SAGAFLOW_TOPIC_PARTITIONS".into(), "4".into()),
            ("HTTP_ADDR".into(), self.ports.http_of(name).to_string()),
        ]
    }

    fn program(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.bin_dir.join(name);
        if !path.exists() {
            bail!(
                "{} not found: build every binary first (cargo build --workspace --bins)",
                path.display()
            );
        }
        Ok(path)
    }

    fn proc(&self, name: &'static str, env: Vec<(String, String)>) -> anyhow::Result<Proc> {
        Ok(Proc {
            name,
            program: self.program(name)?,
            args: vec![],
            env,
            log: self.run.dir().join(format!("{name}.log")),
            child: None,
        })
    }

    /// `sagaflow broker` (this executable), its log on disk in the run folder.
    fn broker(&self) -> anyhow::Result<Proc> {
        let storage = self.run.dir().join("broker-data");
        Ok(Proc {
            name: BROKER,
            program: std::env::current_exe()?,
            args: vec![
                "broker".into(),
                "--listen".into(),
                self.ports.broker.clone(),
                "--storage".into(),
                format!("file://{}", storage.display()),
            ],
            // At info the broker logs every request: gigabytes in minutes.
            env: vec![("RUST_LOG".into(), "warn".into())],
            log: self.run.dir().join("broker.log"),
            child: None,
        })
    }

    fn service(&self, service: Service) -> anyhow::Result<Proc> {
        let name = service.binary();
        let mut env = self.common(name);
        env.push(("DATABASE_URL".into(), self.urls[&service].clone()));
        if service == Service::Payment {
            let provider = &self.ports.provider;
            env.push(("SIMULATED_PROVIDER_ADDR".into(), provider.clone()));
            env.push(("PAYMENT_PROVIDER_URL".into(), format!("http://{provider}")));
        }
        self.proc(name, env)
    }

    /// The relay publishes the outbox of every service's database.
    fn relay(&self) -> anyhow::Result<Proc> {
        let mut env = self.common(RELAY);
        let urls = Service::ALL
            .iter()
            .map(|s| format!("{}={}", s.database(), self.urls[s]))
            .collect::<Vec<_>>()
            .join(",");
        env.push(("OUTBOX_DATABASE_URLS".into(), urls));
        self.proc(RELAY, env)
    }
}

impl Fleet {
    /// Start the broker, then every other component once it listens, and wait until each
    /// answers ready (or the run is interrupted).
    pub(super) async fn launch(
        run: &RunInfo,
        urls: &Urls,
        ports: &Ports,
        client: &reqwest::Client,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let bin_dir = std::env::current_exe()?
            .parent()
            .context("the folder of this executable")?
            .to_path_buf();
        let setup = Setup {
            run,
            urls,
            ports,
            bin_dir,
        };
        let mut procs = vec![setup.broker()?];
        for service in Service::ALL {
            procs.push(setup.service(service)?);
        }
        procs.push(setup.relay()?);
        procs[0].start()?;
        wait_for_port(&ports.broker, Duration::from_secs(20)).await?;
        for proc in procs.iter_mut().skip(1) {
            proc.start()?;
        }
        let ready = async {
            for (name, addr) in &ports.http {
                wait_ready(client, name, addr, Duration::from_secs(90)).await?;
            }
            anyhow::Ok(())
        };
        tokio::select! {
            r = ready => r?,
            _ = shutdown.cancelled() => bail!("interrupted"),
        }
        Ok(Fleet(Arc::new(Mutex::new(procs))))
    }

    /// Start every component that is not running.
    pub(super) async fn restart_exited(&self) -> anyhow::Result<()> {
        let mut fleet = self.0.lock().await;
        for proc in fleet.iter_mut() {
            let exited = match proc.child.as_mut() {
                None => true,
                Some(child) => child.try_wait()?.is_some(),
            };
            if exited {
                proc.start()?;
            }
        }
        Ok(())
    }

    /// Call `exited` with each component that exited on its own, then start it again.
    pub(super) async fn restart_crashed(&self, mut exited: impl FnMut(&'static str, ExitStatus)) {
        let mut fleet = self.0.lock().await;
        for proc in fleet.iter_mut() {
            if let Some(status) = proc.exited() {
                exited(proc.name, status);
                if let Err(e) = proc.start() {
                    eprintln!("could not restart {}: {e:#}", proc.name);
                }
            }
        }
    }

    /// The broker's process id (None while it is down).
    pub(super) async fn broker_pid(&self) -> Option<u32> {
        self.0.lock().await[0].pid()
    }

    /// SIGKILL a component and wait for it to be gone; false when there is no such
    /// component.
    pub(super) async fn kill(&self, name: &str) -> bool {
        let mut fleet = self.0.lock().await;
        let Some(proc) = fleet.iter_mut().find(|p| p.name == name) else {
            return false;
        };
        if let Some(mut child) = proc.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        true
    }

    /// Start a component again (after [`Fleet::kill`]).
    pub(super) async fn restart(&self, name: &str) {
        let mut fleet = self.0.lock().await;
        if let Some(proc) = fleet.iter_mut().find(|p| p.name == name)
            && let Err(e) = proc.start()
        {
            eprintln!("could not restart {name}: {e:#}");
        }
    }
}

/// Send a signal with kill(1): `-STOP` / `-CONT` freeze and resume a process.
pub(super) async fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .await;
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("kill {which} {pid} failed");
    }
}

async fn wait_for_port(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the broker did not listen on {addr} within {timeout:?}")
}

async fn wait_ready(
    client: &reqwest::Client,
    name: &str,
    addr: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let url = format!("http://{addr}/health/ready");
    while Instant::now() < deadline {
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("{name} was not ready at {url} within {timeout:?} (see its log in the run folder)")
}
