//! Three Apache Kafka brokers (KRaft, each a combined broker and controller) on a Docker
//! network of their own, shared by the tests of one binary (the `cluster` target).
//!
//! Each broker has four listeners:
//! - `PLAINTEXT` on a host port published 1:1, advertised as `localhost:<port>`: what the
//!   platform under test uses;
//! - `PROXIED` on another published port, advertised as the port of a [`CuttableProxy`] in
//!   front of it: a client bootstrapped there reaches every broker only through the proxies,
//!   so cutting them partitions that client alone;
//! - `INTERNAL` (replication) and `CONTROLLER` (the KRaft quorum) on the Docker network,
//!   by container name.
//!
//! Topics are created with the production settings: replication factor 3 and
//! `min.insync.replicas` 2 (the platform's defaults on three brokers).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use testcontainers::core::{ContainerPort, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::infra::{LABEL, hold_for_the_process, image_from_env, remove_leftovers, wait_for_kafka};
use crate::proxy::CuttableProxy;
use crate::{docker, docker_output};

pub const BROKERS: usize = 3;
const DEFAULT_KAFKA_IMAGE: &str = "apache/kafka:3.9.1";

/// One broker of the cluster.
#[derive(Debug, Clone)]
pub struct Broker {
    pub node_id: i32,
    pub container: String,
    /// `localhost:<port>` of its PLAINTEXT listener.
    pub address: String,
    /// Its address on the cluster's network, kept across restarts (see [`Cluster::start_broker`]).
    ip: String,
}

pub struct Cluster {
    pub brokers: Vec<Broker>,
    /// Bootstrap servers of the PLAINTEXT listeners.
    pub bootstrap: String,
    /// Bootstrap servers through the proxies (see [`Cluster::cut_proxied_clients`]).
    pub proxied_bootstrap: String,
    proxies: Vec<CuttableProxy>,
    network: String,
}

impl Cluster {
    /// Kill a broker's container (SIGKILL: no controlled shutdown, the host vanishes).
    pub fn kill_broker(&self, node_id: i32) {
        docker(&["kill", &self.broker(node_id).container]);
    }

    /// Start a killed broker again at the address it had, as a restarted machine would.
    ///
    /// Docker gives a restarted container the lowest free address of its network: two brokers
    /// restarted in another order than they were killed swap addresses, and the survivors'
    /// cached name lookups and open connections then reach the wrong node (CI: a broker
    /// restarted after such a swap never caught up with the quorum and kept its listener
    /// closed for 120 s). The address is pinned before the start.
    pub fn start_broker(&self, node_id: i32) {
        let broker = self.broker(node_id);
        docker(&[
            "network",
            "disconnect",
            "-f",
            &self.network,
            &broker.container,
        ]);
        docker(&[
            "network",
            "connect",
            "--ip",
            &broker.ip,
            &self.network,
            &broker.container,
        ]);
        docker(&["start", &broker.container]);
    }

    /// Partition every client bootstrapped on [`Cluster::proxied_bootstrap`] from every broker.
    pub fn cut_proxied_clients(&self) {
        self.proxies.iter().for_each(CuttableProxy::cut);
    }

    pub fn heal_proxied_clients(&self) {
        self.proxies.iter().for_each(CuttableProxy::heal);
    }

    /// Each broker's container state, address on the network and last log lines: what a
    /// failed restart is diagnosed from (CI keeps no container logs).
    pub fn diagnose(&self) -> String {
        let mut report = String::new();
        for broker in &self.brokers {
            let state = docker_output(&[
                "inspect",
                "-f",
                "{{.State.Status}} exit={{.State.ExitCode}} started={{.State.StartedAt}} \
                 ip={{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &broker.container,
            ]);
            let logs = docker_output(&["logs", "--tail", "40", &broker.container]);
            report.push_str(&format!(
                "--- broker {} ({}, {}): {}\n{logs}\n",
                broker.node_id,
                broker.container,
                broker.address,
                state.trim()
            ));
        }
        report
    }

    pub fn broker(&self, node_id: i32) -> &Broker {
        self.brokers
            .iter()
            .find(|b| b.node_id == node_id)
            .unwrap_or_else(|| panic!("no broker {node_id}"))
    }
}

/// The cluster's network, with a subnet stated at creation: Docker refuses a fixed `--ip`
/// ([`Cluster::start_broker`]) on a network whose subnet it chose itself. The subnet is one
/// Docker picks as free (for a probe network removed at once), so it clashes with nothing.
fn create_network(name: &str, owner: &str) -> anyhow::Result<()> {
    let probe = format!("{name}-probe");
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new("docker").args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let label = format!("{LABEL}={owner}");
    run(&["network", "create", "--label", &label, &probe])?;
    let subnet = run(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        &probe,
    ]);
    run(&["network", "rm", &probe])?;
    let subnet = subnet?;
    run(&[
        "network", "create", "--label", &label, "--subnet", &subnet, name,
    ])?;
    Ok(())
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The shared cluster, started on first use (about 30 s); panics when it does not come up.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| hold_for_the_process("the Kafka cluster", start))
}

fn bound_port() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port")
}

fn port_of(listener: &std::net::TcpListener) -> u16 {
    listener.local_addr().expect("local address").port()
}

async fn start() -> anyhow::Result<(Cluster, Vec<ContainerAsync<GenericImage>>)> {
    remove_leftovers();
    let started = Instant::now();
    let (image, tag) = image_from_env("SAGAFLOW_TEST_KAFKA_IMAGE", DEFAULT_KAFKA_IMAGE);
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let network = format!("sagaflow-cluster-{run}");
    let owner = std::process::id().to_string();
    let names: Vec<String> = (1..=BROKERS)
        .map(|i| format!("sagaflow-kafka-{run}-{i}"))
        .collect();
    let voters = names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("{}@{name}:9093", i + 1))
        .collect::<Vec<_>>()
        .join(",");

    create_network(&network, &owner)?;
    let mut requests = Vec::new();
    let mut brokers = Vec::new();
    let mut proxies = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let node_id = i as i32 + 1;
        // Published 1:1 and taken again when a killed broker restarts.
        let client_port = crate::stable_port();
        let proxied_port = crate::stable_port();
        let proxy_listener = bound_port();
        let proxy_port = port_of(&proxy_listener);
        proxies.push(CuttableProxy::start(
            proxy_listener,
            ([127, 0, 0, 1], proxied_port).into(),
        ));
        brokers.push(Broker {
            node_id,
            container: name.clone(),
            address: format!("localhost:{client_port}"),
            ip: String::new(),
        });
        let request = GenericImage::new(&image, &tag)
            .with_exposed_port(client_port.tcp())
            .with_wait_for(WaitFor::Nothing)
            .with_network(&network)
            .with_container_name(name)
            .with_label(LABEL, &owner)
            .with_mapped_port(client_port, ContainerPort::Tcp(client_port))
            .with_mapped_port(proxied_port, ContainerPort::Tcp(proxied_port))
            .with_env_var("KAFKA_NODE_ID", node_id.to_string())
            .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
            .with_env_var(
                "KAFKA_LISTENERS",
                format!(
                    "PLAINTEXT://0.0.0.0:{client_port},PROXIED://0.0.0.0:{proxied_port},INTERNAL://0.0.0.0:19092,CONTROLLER://0.0.0.0:9093"
                ),
            )
            .with_env_var(
                "KAFKA_ADVERTISED_LISTENERS",
                format!(
                    "PLAINTEXT://localhost:{client_port},PROXIED://localhost:{proxy_port},INTERNAL://{name}:19092"
                ),
            )
            .with_env_var("KAFKA_INTER_BROKER_LISTENER_NAME", "INTERNAL")
            .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env_var(
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT,INTERNAL:PLAINTEXT",
            )
            .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", &voters)
            .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "3")
            .with_env_var("KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS", "12")
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "3")
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "2")
            .with_env_var("KAFKA_DEFAULT_REPLICATION_FACTOR", "3")
            .with_env_var("KAFKA_MIN_INSYNC_REPLICAS", "2")
            .with_env_var("KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE", "false")
            .with_env_var("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
            .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
            .with_env_var("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m")
            .start();
        requests.push(request);
    }
    let mut containers = Vec::new();
    for (result, name) in futures::future::join_all(requests)
        .await
        .into_iter()
        .zip(&names)
    {
        containers
            .push(result.map_err(|e| anyhow::anyhow!("starting {name} ({image}:{tag}): {e}"))?);
    }
    for broker in &mut brokers {
        broker.ip = docker_output(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            &broker.container,
        ])
        .trim()
        .to_string();
        anyhow::ensure!(
            broker.ip.parse::<std::net::Ipv4Addr>().is_ok(),
            "no address of {} on {network}: {}",
            broker.container,
            broker.ip
        );
    }
    let bootstrap = brokers
        .iter()
        .map(|b| b.address.clone())
        .collect::<Vec<_>>()
        .join(",");
    let proxied_bootstrap = proxies
        .iter()
        .map(|p| format!("localhost:{}", p.port))
        .collect::<Vec<_>>()
        .join(",");
    wait_for_brokers(&bootstrap, BROKERS, Duration::from_secs(120)).await?;
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "[sagaflow-tests] cluster of {BROKERS} {image}:{tag} brokers ({}) on network {network}, up in {:.1}s",
        names.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok((
        Cluster {
            brokers,
            bootstrap,
            proxied_bootstrap,
            proxies,
            network,
        },
        containers,
    ))
}

/// Wait until the metadata lists `count` brokers.
pub async fn wait_for_brokers(
    bootstrap: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for_kafka(bootstrap, timeout).await?;
    let config = sagaflow_runtime::KafkaConfig::new(bootstrap, "");
    let deadline = Instant::now() + timeout;
    loop {
        match sagaflow_runtime::kafka::broker_count(&config).await {
            Ok(n) if n >= count => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Ok(n) => anyhow::bail!("{n} of {count} brokers registered at {bootstrap}"),
            Err(e) => return Err(e),
        }
    }
}
