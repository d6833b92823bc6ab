//! The library side of the `sagaflow` binary: the whole platform in one process (used by
//! `sagaflow dev` and by the integration tests), dead-letter inspection and redrive, replay.

pub mod dlq;
pub mod invariants;
pub mod platform;
pub mod replay;
