//! `sagaflow`: the platform's command line — run the embedded broker, watch topics, and
//! (as the platform grows) run everything in one process, replay, manage dead letters, bench.

mod bench;
mod broker;
mod chaos;
mod dev;
mod tail;
mod token;
mod topics;

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
    /// Benchmarks, each against a baseline measured in the same run: the order saga end to
    /// end (`sagaflow bench`), or the relay alone (`sagaflow bench relay`).
    Bench(Box<bench::BenchArgs>),
    /// Soak under faults: every component as a child process, constant order load while
    /// relay, orchestrator and services are SIGKILLed and restarted at random and the broker
    /// is frozen (SIGSTOP 2-4 s: the in-memory broker cannot be killed without losing its
    /// log); then the invariant checker and a report. Non-zero exit if an invariant fails.
    Chaos(Box<chaos::ChaosArgs>),
    /// Print each message of a topic as one JSON line (key, headers, decoded value).
    Tail(tail::TailArgs),
    /// Create every domain topic and its dead-letter topic if missing (`--partitions`,
    /// `--replication-factor`, `--min-insync-replicas`; dead-letter topics kept for ever),
    /// then list them with their partitions and replication factor.
    Topics(topics::TopicsArgs),
    /// Rebuild read models from the topics while the live views keep answering.
    Replay(Box<sagaflow_cli::replay::ReplayArgs>),
    /// Print a signed bearer token for the API (HS256 with SAGAFLOW_JWT_SECRET).
    Token(token::TokenArgs),
    /// Dead-lettered messages: show them with their reasons, send them back.
    Dlq {
        #[command(subcommand)]
        action: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Show the messages parked in `<topic>.dlq` with their reasons.
    List(sagaflow_cli::dlq::ListArgs),
    /// Send parked messages back to their source topic (all, or `--id` ones).
    Redrive(sagaflow_cli::dlq::RedriveArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sagaflow_common::telemetry::init();
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let result = match cli.command {
        Command::Broker(args) => {
            let (listen, advertise) = args.resolve();
            broker::serve(&listen, &advertise, &args.storage, shutdown).await
        }
        Command::Tail(args) => tail::run(args).await,
        Command::Token(args) => token::run(args),
        Command::Topics(args) => topics::run(args).await,
        Command::Replay(args) => sagaflow_cli::replay::run(*args, shutdown).await,
        Command::Dlq {
            action: DlqCommand::List(args),
        } => sagaflow_cli::dlq::list(args).await,
        Command::Dlq {
            action: DlqCommand::Redrive(args),
        } => sagaflow_cli::dlq::redrive_command(args).await,
        Command::Dev(args) => dev::run(*args, shutdown).await,
        Command::Bench(args) => bench::run(*args, shutdown).await,
        Command::Chaos(args) => chaos::run(*args, shutdown).await,
    };
    sagaflow_common::telemetry::shutdown();
    result
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
