//! Transactional outbox: the fix for pitfall 1 (a database write and a Kafka publish are two
//! systems; a crash between them leaves one without the other).
//!
//! The service writes its business change and an [`OutboxEvent`] in **one** database
//! transaction ([`enqueue`]); a [`Relay`] publishes committed rows to Kafka afterwards and marks
//! them published. Either both the change and its event exist, or neither does. The same rows
//! can instead be published by Debezium's Outbox Event Router (`infra/debezium/`), producing the
//! same messages.
//!
//! # Layout
//! - [`event`](OutboxEvent): what a service enqueues, validated against the message contract.
//! - [`headers`]: the contract's headers and the columns carrying them (shared with Debezium).
//! - [`Relay`]: leader election, gap-safe reads, batched idempotent produce, retries, clean-up.
//! - [`RelayMetrics`]: Prometheus text for `/metrics`.
//! - [`migrate`]: the outbox table, its indexes and the notify trigger.
//!
//! # Guarantees
//! At least once: an event is published after its transaction commits, possibly more than once
//! (a relay that crashes after producing and before marking republishes). Consumers must
//! deduplicate by `event-id`. Per-aggregate order is kept when the writer updates the aggregate
//! row before enqueueing (the row lock serialises writers, so ids follow commit order per key).

mod error;
mod event;
pub mod headers;
mod metrics;
mod relay;
mod table;

pub use error::{Error, Result};
pub use event::{OutboxEvent, enqueue, enqueue_all, enqueue_all_into, enqueue_into};
pub use metrics::RelayMetrics;
pub use relay::{
    Expiry, PRODUCER_DEFAULTS, PRODUCER_GUARANTEES, ParkedRow, Relay, RelayConfig, delete_expired,
    delete_expired_from, parked, producer_config, release,
};
pub use table::{DEFAULT_TABLE, OutboxTable};

/// Table in which the default outbox's own migrations are recorded: separate from the
/// service's `_sqlx_migrations`, so the two migrators never see each other's versions.
pub const MIGRATIONS_TABLE: &str = "_eda_outbox_migrations";

/// Creates or upgrades the default `outbox` table, its indexes and its notify trigger. Safe to
/// call at every start, from every replica (migrations take a lock). For another name:
/// [`OutboxTable::migrate`].
pub async fn migrate(pool: &sqlx::PgPool) -> Result<()> {
    OutboxTable::default().migrate(pool).await
}

/// Compiles the README's example, so the copy-paste snippet cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
