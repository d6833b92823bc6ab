//! What finished test runs left on shared servers, and its removal.
//!
//! Every test creates databases and topics of its own and never drops them: the harness's
//! containers take them away when the process ends. Against servers that are already running
//! (`SAGAFLOW_TEST_DATABASE_URL`, `SAGAFLOW_TEST_KAFKA`: the fast local loop) nothing would,
//! and a full run leaves about a thousand databases of some 7 MB each and as many topics.
//!
//! So each name carries the run that made it — this machine's boot and the test process's pid
//! ([`RunTag`]) — and a test binary starting against running servers removes what runs of
//! this same boot left whose process has ended. A name of another machine or boot, of a
//! process still alive, or of the older form without a tag is never touched: it may be in use.

use std::time::Duration;

use rdkafka::admin::AdminOptions;
use sagaflow_runtime::KafkaConfig;
use sqlx::{Connection, Executor, PgConnection};

/// The run that made a database or topic: this boot (the first 8 hex digits of the kernel's
/// boot id, since a pid means something only within one boot) and the process id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTag {
    pub boot: String,
    pub pid: u32,
}

impl RunTag {
    /// This process's tag; `None` where the boot id cannot be read (not Linux): names then
    /// carry no tag and are never removed.
    pub fn current() -> Option<RunTag> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let boot: String = boot
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(8)
            .collect();
        (boot.len() == 8).then(|| RunTag {
            boot,
            pid: std::process::id(),
        })
    }

    /// How the tag is written into names: `<boot>p<pid>`.
    pub fn render(&self) -> String {
        format!("{}p{}", self.boot, self.pid)
    }

    fn parse(text: &str) -> Option<RunTag> {
        let (boot, pid) = text.split_once('p')?;
        let hex = boot.len() == 8 && boot.chars().all(|c| c.is_ascii_hexdigit());
        Some(RunTag {
            boot: hex.then(|| boot.to_string())?,
            pid: pid.parse().ok()?,
        })
    }

    /// The run of a test database, `t_<tag>_<component>_<random>`.
    pub fn of_database(name: &str) -> Option<RunTag> {
        let (tag, _) = name.strip_prefix("t_")?.split_once('_')?;
        RunTag::parse(tag)
    }

    /// The run of a test topic, `t<tag>_<random>.<name>`.
    pub fn of_topic(topic: &str) -> Option<RunTag> {
        let (tag, _) = topic.strip_prefix('t')?.split_once('_')?;
        RunTag::parse(tag)
    }

    /// Made by a run of `current`'s boot whose process has ended.
    pub fn finished(&self, current: &RunTag) -> bool {
        self.boot == current.boot
            && self.pid != current.pid
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// The tag to write into this process's names (empty where there is none).
pub fn current_tag() -> String {
    RunTag::current().map(|t| t.render()).unwrap_or_default()
}

/// What [`remove_finished_runs`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub databases: Vec<String>,
    pub topics: Vec<String>,
}

/// Drop the databases and delete the topics of finished runs of this boot.
pub async fn remove_finished_runs(
    postgres_admin_url: &str,
    kafka_brokers: &str,
) -> anyhow::Result<Removed> {
    let Some(current) = RunTag::current() else {
        return Ok(Removed::default());
    };
    let finished = |run: Option<RunTag>| run.is_some_and(|run| run.finished(&current));
    let mut admin = PgConnection::connect(postgres_admin_url).await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")
            .fetch_all(&mut admin)
            .await?;
    let mut removed = Removed::default();
    for name in names
        .into_iter()
        .filter(|n| finished(RunTag::of_database(n)))
    {
        // FORCE: a run killed mid-test may have left a server process behind on it.
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        admin
            .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(drop)))
            .await?;
        removed.databases.push(name);
    }
    removed.topics = delete_finished_topics(kafka_brokers, &finished).await?;
    Ok(removed)
}

async fn delete_finished_topics(
    brokers: &str,
    finished: &impl Fn(Option<RunTag>) -> bool,
) -> anyhow::Result<Vec<String>> {
    let config = KafkaConfig::new(brokers.to_string(), String::new());
    let admin = sagaflow_runtime::kafka::admin(&config)?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let topics: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|t| finished(RunTag::of_topic(t)))
        .collect();
    if topics.is_empty() {
        return Ok(topics);
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for result in admin.delete_topics(&names, &AdminOptions::new()).await? {
        if let Err((topic, code)) = result {
            anyhow::bail!("delete topic {topic}: {code}");
        }
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(boot: &str, pid: u32) -> RunTag {
        RunTag {
            boot: boot.into(),
            pid,
        }
    }

    #[test]
    fn database_and_topic_names_give_back_the_run_that_made_them() {
        let run = tag("0a1b2c3d", 4242);
        let database = format!("t_{}_notification_1f2e3d4c", run.render());
        let topic = format!("t{}_9a8b7c6d.orders.events", run.render());
        assert_eq!(RunTag::of_database(&database), Some(run.clone()));
        assert_eq!(RunTag::of_topic(&topic), Some(run));
    }

    #[test]
    fn names_of_the_older_form_or_of_no_run_carry_no_tag() {
        for name in [
            "t_order_0123456789ab",
            "t_p12_order_x",
            "t_0a1b2c3dp_order_x",
            "t_0a1b2c3gp12_order_x",
            "postgres",
        ] {
            assert_eq!(RunTag::of_database(name), None, "{name}");
        }
        for topic in ["t0123456789.orders.events", "orders.events", "tpx_1.x"] {
            assert_eq!(RunTag::of_topic(topic), None, "{topic}");
        }
    }

    #[test]
    fn only_an_ended_process_of_this_boot_has_finished() {
        let Some(current) = RunTag::current() else {
            return; // not Linux: nothing is ever removed
        };
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        let pid = ended.id();
        ended.wait().unwrap();
        assert!(tag(&current.boot, pid).finished(&current), "ended process");
        assert!(!current.finished(&current), "this process");
        assert!(
            !tag(&current.boot, 1).finished(&current),
            "a live process (init)"
        );
        let other_boot = if current.boot == "00000000" {
            "11111111"
        } else {
            "00000000"
        };
        assert!(!tag(other_boot, pid).finished(&current), "another boot");
    }
}
