//! `sagaflow`: the platform's command line — run the embedded broker, watch topics, and
//! (as the platform grows) run everything in one process, replay, manage dead letters, bench.

mod api_docs;
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

use clap::{Parser, Subcommand};
use sagaflow_runtime::runner;
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
    /// Run the embedded Kafka-compatible broker (tansu) on its own: in memory by default, or
    /// with its log on disk (`--storage file:///dir`) so it keeps its topics across restarts.
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
    /// Print the OpenAPI 3.1 document of every HTTP route of `sagaflow dev` (`--out
    /// docs/openapi.json` regenerates the committed copy; `--provider`: the simulated payment
    /// provider's, docs/openapi-provider.json).
    Openapi(api_docs::OpenapiArgs),
    /// Print the AsyncAPI 3.0 document of the topics (`--out docs/asyncapi.json` regenerates
    /// the committed copy).
    Asyncapi(api_docs::DocArgs),
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
    runner::stop_on_signal(shutdown.clone())?;
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
        Command::Openapi(args) => api_docs::openapi(args),
        Command::Asyncapi(args) => api_docs::asyncapi(args),
    };
    sagaflow_runtime::telemetry::shutdown();
    result
}
