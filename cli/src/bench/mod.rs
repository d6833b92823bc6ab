//! `sagaflow bench`: benchmarks, each against a baseline measured in the same run.
//!
//! - `sagaflow bench [--duration N] [--json] [--rate R] …`: the order saga end to end
//!   ([`saga`]), against the raw PostgreSQL commit rate and the raw produce rate.
//! - `sagaflow bench relay …`: the outbox relay alone ([`relay`]), against raw produce.

mod relay;
mod saga;
pub mod stats;

use clap::Subcommand;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Option<BenchCommand>,
    #[command(flatten)]
    pub saga: saga::SagaBenchArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// The outbox relay: commit→ack latency at a steady rate, backlog drain rate, vs raw produce.
    Relay(relay::RelayBenchArgs),
}

pub async fn run(args: BenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    match args.which {
        Some(BenchCommand::Relay(relay)) => relay::run(relay, shutdown).await,
        None => saga::run(args.saga, shutdown).await,
    }
}
