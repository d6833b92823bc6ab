//! What every Sagaflow component needs: configuration, the database pool, Kafka clients,
//! the at-least-once consumer with inbox and dead-letter topic, and the HTTP plumbing
//! (health, readiness, metrics, Problem JSON errors).

mod allocator;
pub mod auth;
pub mod config;
pub mod db;
pub mod exposure;
pub mod http;
pub mod inspect;
pub mod kafka;
pub mod openapi;
pub mod periodic;
pub mod proxy;
pub mod runner;
pub mod telemetry;
pub mod topic_policy;
pub mod trace;

pub use config::KafkaConfig;
