//! The library side of the `sagaflow` binary: the whole platform in one process (used by
//! `sagaflow dev` and by the integration tests).

pub mod platform;
