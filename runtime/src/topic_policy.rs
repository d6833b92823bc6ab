//! How durable the topics Sagaflow creates are: replication factor and `min.insync.replicas`,
//! decided from what the operator asked for and how many brokers the cluster has. Pure, so
//! the rules are tested without a broker; [`crate::kafka::ensure_topics`] applies them.
//!
//! The rules, with the production defaults of the design (RF 3, min ISR 2):
//! - nothing asked: replication factor 3, or the broker count on a smaller cluster; min ISR
//!   one less than the factor, at least 1. Producers use `acks=all`, so on three brokers a
//!   message is acknowledged only once two replicas have it, and one broker may be lost.
//! - a factor above the broker count is refused (Kafka would refuse it less clearly).
//! - on three or more brokers, a factor of 1 or a min ISR of 1 is refused unless forced
//!   (`--allow-unreplicated-topics`): one disk would then hold the only copy of an
//!   acknowledged message.
//! - a factor of 1 (a development broker) is allowed and reported, for the caller to log.

/// The settings topics are created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPolicy {
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
}

impl TopicPolicy {
    /// Whether acknowledged messages live on one broker only (logged loudly by callers).
    pub fn single_copy(&self) -> bool {
        self.replication_factor == 1
    }
}

/// Why the asked-for settings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "replication factor {replication_factor} is more than the {brokers} broker(s) of the cluster"
    )]
    TooFewBrokers {
        replication_factor: i32,
        brokers: usize,
    },
    #[error(
        "min.insync.replicas {min_insync_replicas} must be between 1 and the replication factor {replication_factor}"
    )]
    MinInsyncOutOfRange {
        min_insync_replicas: i32,
        replication_factor: i32,
    },
    #[error(
        "replication factor {replication_factor} with min.insync.replicas {min_insync_replicas} on a cluster of {brokers} brokers keeps acknowledged messages on a single broker; use the production settings (--replication-factor 3 --min-insync-replicas 2) or force it with --allow-unreplicated-topics (SAGAFLOW_TOPIC_ALLOW_UNREPLICATED=true)"
    )]
    Unreplicated {
        replication_factor: i32,
        min_insync_replicas: i32,
        brokers: usize,
    },
}

/// The production replication factor.
pub const PRODUCTION_REPLICATION_FACTOR: i32 = 3;

/// Decide the settings for a cluster of `brokers` brokers.
pub fn decide(
    replication_factor: Option<i32>,
    min_insync_replicas: Option<i32>,
    brokers: usize,
    allow_unreplicated: bool,
) -> Result<TopicPolicy, PolicyError> {
    let available = i32::try_from(brokers).unwrap_or(i32::MAX).max(1);
    let replication_factor =
        replication_factor.unwrap_or_else(|| PRODUCTION_REPLICATION_FACTOR.min(available));
    if replication_factor < 1 || replication_factor > available {
        return Err(PolicyError::TooFewBrokers {
            replication_factor,
            brokers,
        });
    }
    let min_insync_replicas = min_insync_replicas.unwrap_or((replication_factor - 1).max(1));
    if !(1..=replication_factor).contains(&min_insync_replicas) {
        return Err(PolicyError::MinInsyncOutOfRange {
            min_insync_replicas,
            replication_factor,
        });
    }
    if brokers >= 3 && min_insync_replicas < 2 && !allow_unreplicated {
        return Err(PolicyError::Unreplicated {
            replication_factor,
            min_insync_replicas,
            brokers,
        });
    }
    Ok(TopicPolicy {
        replication_factor,
        min_insync_replicas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rf: i32, min_isr: i32) -> TopicPolicy {
        TopicPolicy {
            replication_factor: rf,
            min_insync_replicas: min_isr,
        }
    }

    #[test]
    fn defaults_are_the_production_settings_on_a_cluster() {
        assert_eq!(decide(None, None, 3, false), Ok(policy(3, 2)));
        assert_eq!(decide(None, None, 5, false), Ok(policy(3, 2)));
    }

    #[test]
    fn defaults_shrink_to_a_smaller_cluster_and_a_single_broker_is_one_copy() {
        assert_eq!(decide(None, None, 2, false), Ok(policy(2, 1)));
        let single = decide(None, None, 1, false).unwrap();
        assert_eq!(single, policy(1, 1));
        assert!(single.single_copy());
    }

    #[test]
    fn one_copy_on_three_brokers_is_refused_unless_forced() {
        assert!(matches!(
            decide(Some(1), None, 3, false),
            Err(PolicyError::Unreplicated { .. })
        ));
        assert!(matches!(
            decide(Some(3), Some(1), 3, false),
            Err(PolicyError::Unreplicated { .. })
        ));
        assert_eq!(decide(Some(1), None, 3, true), Ok(policy(1, 1)));
    }

    #[test]
    fn impossible_settings_are_refused_with_the_reason() {
        assert_eq!(
            decide(Some(3), None, 1, false),
            Err(PolicyError::TooFewBrokers {
                replication_factor: 3,
                brokers: 1
            })
        );
        assert!(matches!(
            decide(Some(3), Some(4), 3, false),
            Err(PolicyError::MinInsyncOutOfRange { .. })
        ));
        assert!(matches!(
            decide(Some(0), None, 3, false),
            Err(PolicyError::TooFewBrokers { .. })
        ));
    }

    #[test]
    fn the_refusal_says_how_to_fix_it() {
        let message = decide(Some(1), None, 3, false).unwrap_err().to_string();
        assert!(message.contains("--replication-factor 3"), "{message}");
        assert!(message.contains("--allow-unreplicated-topics"), "{message}");
    }
}
