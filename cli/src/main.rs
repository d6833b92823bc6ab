//! `sagaflow`: the platform's command line — run the embedded broker, watch topics, and
//! (as the platform grows) run everything in one process, replay, manage dead letters, bench.

mod bench;
mod broker;
mod dev;
mod tail;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "sagaflow",
    version,
    about = "Saga and transactional-outbox platform on Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded Kafka-compatible broker (tansu, in-memory) on its own.
    Broker(broker::BrokerArgs),
    /// Run the whole platform in one process (embedded broker, local PostgreSQL if needed).
    Dev(Box<dev::DevArgs>),
    /// Benchmarks, each against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Print each message of a topic as one JSON line (key, headers, decoded value).
    Tail(tail::TailArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The outbox relay: commit→ack latency at a steady rate, backlog drain rate, vs raw produce.
    Relay(bench::RelayBenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sagaflow_common::telemetry::init();
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match cli.command {
        Command::Broker(args) => {
            let (listen, advertise) = args.resolve();
            broker::serve(&listen, &advertise, shutdown).await
        }
        Command::Tail(args) => tail::run(args).await,
        Command::Dev(args) => dev::run(*args, shutdown).await,
        Command::Bench { which: BenchCommand::Relay(args) } => bench::run(args, shutdown).await,
    }
}

/// Cancel on Ctrl-C or SIGTERM (containers are stopped with SIGTERM).
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
