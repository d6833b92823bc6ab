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

pub const BROKERS: usize = 3;
const DEFAULT_KAFKA_IMAGE: &str = "apache/kafka:3.9.1";

/// One broker of the cluster.
#[derive(Debug, Clone)]
pub struct Broker {
    pub node_id: i32,
    pub container: String,
    /// `localhost:<port>` of its PLAINTEXT listener.
    pub address: String,
}

pub struct Cluster {
    pub brokers: Vec<Broker>,
    /// Bootstrap servers of the PLAINTEXT listeners.
    pub bootstrap: String,
    /// Bootstrap servers through the proxies (see [`Cluster::cut_proxied_clients`]).
    pub proxied_bootstrap: String,
    proxies: Vec<CuttableProxy>,
}

impl Cluster {
    /// Partition every client bootstrapped on [`Cluster::proxied_bootstrap`] from every broker.
    pub fn cut_proxied_clients(&self) {
        self.proxies.iter().for_each(CuttableProxy::cut);
    }

    pub fn heal_proxied_clients(&self) {
        self.proxies.iter().for_each(CuttableProxy::heal);
    }

    pub fn broker(&self, node_id: i32) -> &Broker {
        self.brokers
            .iter()
            .find(|b| b.node_id == node_id)
            .unwrap_or_else(|| panic!("no broker {node_id}"))
    }
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

    let mut requests = Vec::new();
    let mut brokers = Vec::new();
    let mut proxies = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let node_id = i as i32 + 1;
        let client_port = port_of(&bound_port());
        let proxied_port = port_of(&bound_port());
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
