//! A Kafka consumer runtime whose handlers apply each event **exactly once**, the fix for
//! pitfall 5 (at-least-once delivery applies effects twice).
//!
//! Kafka redelivers: after a crash before the offset commit, after a rebalance, and whenever a
//! producer or outbox relay republishes. The runtime gives the handler the decoded [`Event`]
//! and an open PostgreSQL transaction, records the event as processed **in that same
//! transaction**, commits, and only then stores the Kafka offset. A redelivered or republished
//! event finds its record and is skipped; a crash anywhere leaves either everything or nothing.
//!
//! # Layout
//! - [`Consumer`] / [`ConsumerConfig`]: the runtime (dedupe, retries, dead letters, shutdown).
//! - [`Handler`]: what a service implements; [`HandlerError`] says transient or permanent.
//! - [`Dedupe`]: by event id (default) or by offsets kept in the database, or off (the pitfall).
//! - [`revision`]: optimistic-locking helpers for aggregate revisions.
//! - [`migrate`], [`prune_processed`]: schema and retention.
//! - [`redrive`]: dead letters back to their topic, once fixed.

mod event;
mod metrics;
mod redrive;
pub mod revision;
mod runtime;

/// Context types, re-exported so a handler needs no second import.
pub use eda_context::{EventContext, Propagation};
pub use event::{DecodeError, Event};
pub use metrics::ConsumerMetrics;
pub use redrive::{RedriveReport, redrive};
pub use revision::{RevisionCheck, check_revision, expect_one_row};
pub use runtime::{Consumer, ConsumerConfig, Dedupe, Handler};

/// A boxed error for transient failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler returns when it cannot apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (database down, serialization conflict, lock conflict): the runtime
    /// rolls back and retries the same event with capped backoff, holding the partition's order.
    #[error("transient: {0}")]
    Transient(BoxError),
    /// Will never succeed (unknown type, invalid payload, business rule): the runtime rolls
    /// back, sends the record to `<topic>.dlq` with this reason, and moves on.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<sqlx::Error> for HandlerError {
    /// Database errors are transient: a bad statement would fail forever, but it is a bug that
    /// a fix plus a retry resolves, while a dropped connection or a conflict resolves itself.
    fn from(err: sqlx::Error) -> Self {
        Self::Transient(Box::new(err))
    }
}

/// Errors of the runtime itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka client creation or subscription failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The database refused the runtime's own statements.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

static EMBEDDED: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Table recording this crate's own migrations (separate from the service's).
pub const MIGRATIONS_TABLE: &str = "_eda_consumer_migrations";

/// Creates the `processed_events` and `consumer_offsets` tables. Safe at every start.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), Error> {
    let mut migrator = sqlx::migrate::Migrator::with_migrations(EMBEDDED.iter().cloned().collect());
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator.run(pool).await?;
    Ok(())
}

/// Deletes processed-event records older than `older_than`. Keep it longer than the topic's
/// retention (Kafka's default is 7 days): a record pruned while its event can still be
/// redelivered or replayed lets that event apply twice.
pub async fn prune_processed(
    pool: &sqlx::PgPool,
    older_than: std::time::Duration,
) -> Result<u64, Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM processed_events WHERE ctid IN (SELECT ctid FROM processed_events \
             WHERE processed_at < now() - make_interval(secs => $1) LIMIT 10000)",
        )
        .bind(older_than.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < 10_000 {
            return Ok(total);
        }
    }
}

/// Compiles the README's example, so the copy-paste snippet cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
