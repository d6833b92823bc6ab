//! `sagaflow`: the platform's command line — run the embedded broker, watch topics, and
//! (as the platform grows) run everything in one process, replay, manage dead letters, bench.

mod bench;
mod broker;
mod chaos;
mod dev;
mod dlq;
mod outbox;
mod replay;
mod tail;
mod token;
mod topics;

use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    /// Soak under faults: every component as a child process, constant order load while,
    /// at random, relay, orchestrator, a service or the broker is SIGKILLed and restarted
    /// (the broker keeps its log on disk, so it comes back with its topics, records and
    /// committed offsets) or the broker is frozen (SIGSTOP 2-4 s); then the invariant checker
    /// and a report. Non-zero exit if an invariant fails.
    Chaos(Box<chaos::ChaosArgs>),
    /// Print each message of a topic as one JSON line (key, headers, decoded value).
    Tail(tail::TailArgs),
    /// Create every domain topic and its dead-letter topic if missing (`--partitions`,
    /// `--replication-factor`, `--min-insync-replicas`; dead-letter topics kept for ever),
    /// then list them with their partitions and replication factor.
    Topics(topics::TopicsArgs),
    /// Rebuild read models from the topics while the live views keep answering.
    Replay(Box<crate::replay::ReplayArgs>),
    /// Print a signed bearer token for the API (HS256 with SAGAFLOW_JWT_SECRET).
    Token(token::TokenArgs),
    /// Dead-lettered messages: show them with their reasons, send them back.
    Dlq {
        #[command(subcommand)]
        action: DlqCommand,
    },
    /// Parked outbox rows (they hold back their key): list them, hand them back to the relay.
    Outbox(outbox::OutboxArgs),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Show the messages parked in `<topic>.dlq` with their reasons.
    List(crate::dlq::ListArgs),
    /// Send parked messages back to their source topic (all, or `--id` ones).
    Redrive(crate::dlq::RedriveArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sagaflow_runtime::telemetry::init();
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone())?;
    let result = match cli.command {
        Command::Broker(args) => {
            let (listen, advertise) = args.resolve();
            broker::serve(&listen, &advertise, &args.storage, shutdown).await
        }
        Command::Tail(args) => tail::run(args).await,
        Command::Token(args) => token::run(args),
        Command::Topics(args) => topics::run(args).await,
        Command::Replay(args) => crate::replay::run(*args, shutdown).await,
        Command::Dlq {
            action: DlqCommand::List(args),
        } => crate::dlq::list(args).await,
        Command::Dlq {
            action: DlqCommand::Redrive(args),
        } => crate::dlq::redrive_command(args).await,
        Command::Dev(args) => dev::run(*args, shutdown).await,
        Command::Bench(args) => bench::run(*args, shutdown).await,
        Command::Chaos(args) => chaos::run(*args, shutdown).await,
        Command::Outbox(args) => outbox::run(args).await,
    };
    sagaflow_runtime::telemetry::shutdown();
    result
}

/// How long a stop may take after the first SIGINT or SIGTERM before the process exits anyway
/// (container runtimes SIGKILL 10 s after their SIGTERM).
const STOP_DEADLINE: Duration = Duration::from_secs(9);

/// SIGINT (Ctrl-C) and SIGTERM (containers are stopped with it): the first cancels `shutdown`,
/// and the command stops gracefully; a second one, or a graceful stop longer than
/// [`STOP_DEADLINE`], exits the process at once (said in a warning), with status 128 + the
/// signal's number, as if the signal had killed it.
///
/// Watched on a thread and runtime of their own: however busy (or stuck) the command's runtime
/// is, a signal is seen and the deadline kept. Registered before the command starts, so a
/// signal during start-up is not lost either.
fn stop_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut signals = {
        let _in_runtime = runtime.enter();
        Signals::new()?
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                let (first, code) = signals.next().await;
                info!(
                    signal = first,
                    "shutdown requested (a second signal exits at once)"
                );
                shutdown.cancel();
                tokio::select! {
                    (second, _) = signals.next() => {
                        warn!(signal = second, "second signal while stopping: exiting now");
                    }
                    _ = tokio::time::sleep(STOP_DEADLINE) => {
                        warn!(
                            deadline_s = STOP_DEADLINE.as_secs(),
                            "the graceful stop did not finish in time: exiting now"
                        );
                    }
                }
                std::process::exit(code);
            })
        })?;
    Ok(())
}

struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal's name and the exit status it stands for (128 + its number).
    async fn next(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.interrupt.recv() => ("SIGINT", 130),
            _ = self.terminate.recv() => ("SIGTERM", 143),
        }
    }
}
