//! `sagaflow replay --projection <orders|stock|all> [--from-beginning | --from-time T]
//! [--allow-truncated-history] [--force]`: rebuild read models from the topics while the live
//! views keep answering (see `query_service::replay`), with a progress bar, resumable after an
//! interruption, ending with the checksum of each rebuilt view. Refused when retention deleted
//! the start of a topic it needs (unless `--allow-truncated-history`); a rebuilt view that
//! differs from the live one is dropped and the live one kept (unless `--force`).

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use query_service::replay::{self, Options, Start};
use query_service::{Projection, QueryConfig};
use sagaflow_runtime::{KafkaConfig, db};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// orders, stock, or all.
    #[arg(long)]
    pub projection: String,
    /// Rebuild from the start of every partition (the default).
    #[arg(long, conflicts_with = "from_time")]
    pub from_beginning: bool,
    /// Start from a copy of the live view and re-apply events since this RFC 3339 time.
    #[arg(long)]
    pub from_time: Option<DateTime<Utc>>,
    /// Replay even though retention (or DeleteRecords) deleted the start of a partition: the
    /// rebuilt view then lacks those events. Without it such a replay is refused.
    #[arg(long)]
    pub allow_truncated_history: bool,
    /// Switch to the rebuilt view even when its checksum differs from the live view's.
    /// Without it the live view is kept and the rebuild dropped.
    #[arg(long)]
    pub force: bool,
    /// PostgreSQL URL of the query database.
    #[arg(long, env = "QUERY_DATABASE_URL")]
    pub database_url: String,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub query: QueryConfig,
}

pub async fn run(args: ReplayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let projections = Projection::parse_selection(&args.projection).map_err(anyhow::Error::msg)?;
    let options = Options {
        start: match args.from_time {
            Some(at) => Start::Time(at),
            None => Start::Beginning,
        },
        allow_truncated_history: args.allow_truncated_history,
        force: args.force,
    };
    let rules = args.query.rules().map_err(anyhow::Error::msg)?;
    let pool = db::connect(&args.database_url, 4).await?;
    query_service::MIGRATOR.run(&pool).await?;
    for projection in projections {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>7} [{bar:30}] {pos}/{len} msgs  {msg}  {elapsed_precise}",
            )?
            .progress_chars("=> "),
        );
        bar.set_prefix(projection.name());
        let report = replay::replay(
            &pool,
            &args.kafka,
            projection,
            options,
            &rules,
            |p| {
                bar.set_length(p.total);
                bar.set_position(p.messages.min(p.total));
                bar.set_message(format!("{:.0} msg/s  lag {}", p.rate, p.lag));
            },
            &shutdown,
        )
        .await;
        bar.finish();
        let report = report?;
        println!(
            "{}: {} messages{}, {} refused; checksum {} (previous view {}{})",
            projection.name(),
            report.messages,
            if report.resumed { " (resumed)" } else { "" },
            report.rejected,
            report.checksum,
            report.previous_checksum,
            if report.checksum == report.previous_checksum {
                ", identical"
            } else {
                ", differs; switched (--force)"
            }
        );
    }
    Ok(())
}
