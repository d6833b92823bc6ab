//! Outbox tests (to come).
