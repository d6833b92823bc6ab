//! The transactional messaging pattern, both halves in one place:
//!
//! - [`outbox`]: a component writes its messages inside the transaction that changes its
//!   state ([`outbox::enqueue`]); the [`relay`] publishes committed rows to Kafka, in order
//!   per key, at least once.
//! - [`consumer`]: the at-least-once consumer that applies each message exactly once per
//!   consumer (an inbox row in the handler's transaction), retries with backoff and sends what
//!   can never be applied to a dead-letter topic with the reason in its headers;
//!   [`dead_letters`] reads those topics and redrives their messages.
//! - [`migrations`]: the outbox and inbox tables, one source applied in every service
//!   database beside the service's own migrations.
//!
//! It sits on `sagaflow-runtime` (database, Kafka client configuration, tracing) and below
//! every service, the orchestrator and the relay binary.

pub mod consumer;
pub mod dead_letters;
pub mod migrations;
pub mod outbox;
pub mod relay;

pub use outbox::{Origin, OutboxBatch, OutboxError, enqueue, enqueue_all};
pub use relay::{ParkedRow, Relay, RelayConfig, RelayHooks, Unpark, parked_rows, retry_parked};
