//! `sagaflow broker`: the embedded Kafka-compatible broker (tansu).
//!
//! Storage: in memory by default (fast; a restart starts empty), or `--storage
//! file:///some/dir` to keep topics, records and committed offsets across restarts (what a
//! broker that may be killed and restarted needs: `sagaflow chaos`, the broker image).
//!
//! The same code serves `sagaflow dev` in-process and the local broker image of the test
//! harness (so the broker is compiled once, as part of this binary). It reads the listener
//! from flags or the Apache Kafka image's variables (`KAFKA_LISTENERS`,
//! `KAFKA_ADVERTISED_LISTENERS`), so the harness starts either image the same way.

use anyhow::Context;
use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::StorageContainer;
use tokio_util::sync::CancellationToken;
use tracing::info;
use url::Url;
use uuid::Uuid;

#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Address to listen on (host:port).
    #[arg(long, env = "SAGAFLOW_BROKER_LISTEN")]
    pub listen: Option<String>,
    /// Address clients are told to connect to (host:port).
    #[arg(long, env = "SAGAFLOW_BROKER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where the log lives: `memory://` (lost on exit) or `file:///dir` (kept across restarts).
    #[arg(long, env = "SAGAFLOW_BROKER_STORAGE", default_value = IN_MEMORY)]
    pub storage: Url,
}

/// The default storage: in memory, gone when the process exits.
pub const IN_MEMORY: &str = "memory://tansu/";

/// The PLAINTEXT entry of a Kafka listener list like `PLAINTEXT://0.0.0.0:9092,CONTROLLER://…`.
fn plaintext_entry(list: &str) -> Option<String> {
    list.split(',')
        .find_map(|entry| entry.trim().strip_prefix("PLAINTEXT://"))
        .map(str::to_string)
}

impl BrokerArgs {
    pub fn resolve(&self) -> (String, String) {
        let listen = self
            .listen
            .clone()
            .or_else(|| {
                std::env::var("KAFKA_LISTENERS")
                    .ok()
                    .and_then(|l| plaintext_entry(&l))
            })
            .unwrap_or_else(|| "127.0.0.1:9092".to_string());
        let advertise = self
            .advertise
            .clone()
            .or_else(|| {
                std::env::var("KAFKA_ADVERTISED_LISTENERS")
                    .ok()
                    .and_then(|l| plaintext_entry(&l))
            })
            .unwrap_or_else(|| listen.replace("0.0.0.0", "127.0.0.1"));
        (listen, advertise)
    }
}

/// Serve a broker until `shutdown` is cancelled.
pub async fn serve(
    listen: &str,
    advertise: &str,
    storage: &Url,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match storage.scheme() {
        "memory" | "file" => {}
        other => {
            anyhow::bail!("broker storage {storage}: use memory:// or file:///dir, not {other}://")
        }
    }
    let listener: Url = format!("tcp://{listen}")
        .parse()
        .context("listen address")?;
    let advertised: Url = format!("tcp://{advertise}")
        .parse()
        .context("advertised address")?;
    let mut broker = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
        .node_id(111)
        .cluster_id("sagaflow")
        .incarnation_id(Uuid::now_v7())
        .advertised_listener(advertised)
        .storage(storage.clone())
        .listener(listener)
        // No banner or spinners on stdout: `--json` output and scripts read stdout.
        .silent(true)
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("starting the embedded broker: {e:?}"))?;
    info!(%listen, %advertise, %storage, "kafka-compatible broker (tansu) listening");
    tokio::select! {
        result = broker.serve(tokio::time::Instant::now()) => {
            result.map_err(|e| anyhow::anyhow!("embedded broker stopped: {e:?}"))
        }
        _ = shutdown.cancelled() => Ok(()),
    }
}

/// Serve a broker on its own thread and Tokio runtime until `shutdown` is cancelled.
///
/// Not on the caller's runtime: librdkafka clients block the thread they are dropped on while
/// they leave their groups, and a broker sharing those (few) worker threads could then never
/// answer them — the process hangs on shutdown.
pub fn spawn_in_own_runtime(
    listen: String,
    advertise: String,
    storage: Url,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .thread_name("broker-worker")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "embedded broker: no runtime");
                    return;
                }
            };
            if let Err(e) = runtime.block_on(serve(&listen, &advertise, &storage, shutdown)) {
                tracing::error!(error = %e, "embedded broker failed");
            }
        })?;
    Ok(())
}

/// Start an embedded in-memory broker on a free loopback port; returns its address once it
/// accepts connections.
pub async fn spawn_on_free_port(shutdown: CancellationToken) -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let address = format!("127.0.0.1:{port}");
    spawn_in_own_runtime(
        address.clone(),
        address.clone(),
        IN_MEMORY.parse()?,
        shutdown,
    )?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&address).await.is_ok() {
            return Ok(address);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("embedded broker did not listen on {address}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_plaintext_listener_of_a_kafka_list() {
        assert_eq!(
            plaintext_entry("CONTROLLER://0.0.0.0:9093,PLAINTEXT://localhost:39092"),
            Some("localhost:39092".into())
        );
        assert_eq!(plaintext_entry("SSL://x:1"), None);
    }
}
