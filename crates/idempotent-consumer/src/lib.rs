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
//! - [`chunk`]: large messages split into chunks by their producer, reassembled durably
//!   ([`Chunking`]); claim-checked payloads are fetched by a [`PayloadResolver`].
//! - [`revision`]: optimistic-locking helpers for aggregate revisions.
//! - [`migrate`], [`prune_processed`]: schema and retention.
//! - [`redrive`]: dead letters back to their topic, once fixed.

pub mod chunk;
mod event;
mod metrics;
mod redrive;
mod resolve;
pub mod revision;
mod runtime;
mod tables;

pub use chunk::Chunking;
/// Context types, re-exported so a handler needs no second import.
pub use eda_context::{EventContext, Propagation};
pub use event::{DecodeError, Event, Records};
pub use metrics::{ConsumerCollector, ConsumerMetrics, Stuck};
pub use redrive::{RedriveReport, redrive};
pub use resolve::{CLAIM_CHECK_HEADER, PayloadResolver, Resolved};
pub use revision::{RevisionCheck, check_revision, expect_one_row};
pub use runtime::{
    CONSUMER_GUARANTEES, Consumer, ConsumerConfig, Dedupe, Handler, SESSION_DEFAULTS,
};
pub use tables::{ConsumerTables, MIGRATIONS_TABLE};

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
    /// Database errors are sorted by what a retry can change (see [`is_permanent`]): the
    /// event's data breaking a constraint or a type is permanent (dead letter); everything
    /// else, from a dropped connection to a deadlock or a missing table, is transient.
    fn from(err: sqlx::Error) -> Self {
        if is_permanent(&err) {
            Self::Permanent(format!("the database refused the event's data: {err}"))
        } else {
            Self::Transient(Box::new(err))
        }
    }
}

/// Whether a database error will fail the same way however often the event is retried: the
/// SQLSTATE classes *data exception* (`22`: wrong type, out of range, invalid text) and
/// *integrity constraint violation* (`23`: check, not-null, foreign key, unique). Connection
/// loss, serialization failures (`40001`), deadlocks (`40P01`), lock timeouts, shutdowns and
/// schema errors (`42`: a deploy in progress, fixed by the next one) are transient: retried,
/// and reported as a stuck partition if they last.
pub fn is_permanent(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| is_permanent_sqlstate(code.as_ref())),
        _ => false,
    }
}

fn is_permanent_sqlstate(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23")
}

/// Errors of the runtime itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting contradicts a guarantee, or cannot work.
    #[error("invalid consumer configuration: {0}")]
    Config(String),
    /// Topics (consumed ones or their `<topic>.dlq`) that do not exist on the broker.
    #[error("missing Kafka topics (create them; auto-creation is off): {}", .0.join(", "))]
    MissingTopics(Vec<String>),
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

/// Creates the default `processed_events`, `consumer_offsets` and `aggregate_revisions`
/// tables. Safe at every start. For other names: [`ConsumerTables::migrate`].
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), Error> {
    ConsumerTables::default().migrate(pool).await
}

/// Deletes processed-event records and remembered aggregate revisions (default tables) older
/// than `older_than`. Keep it longer than the topic's retention (Kafka's default is 7 days): a
/// record pruned while its event can still be redelivered or replayed lets that event apply
/// twice. A running consumer does this hourly ([`ConsumerConfig::retention`]).
pub async fn prune_processed(
    pool: &sqlx::PgPool,
    older_than: std::time::Duration,
) -> Result<u64, Error> {
    ConsumerTables::default().prune(pool, older_than).await
}

#[cfg(test)]
mod tests {
    use super::is_permanent_sqlstate;

    #[test]
    fn data_and_constraint_errors_are_permanent_the_rest_transient() {
        for code in ["22P02", "22003", "23514", "23502", "23503", "23505"] {
            assert!(is_permanent_sqlstate(code), "{code}");
        }
        for code in [
            "40001", "40P01", "08006", "57P01", "55P03", "42P01", "53300",
        ] {
            assert!(!is_permanent_sqlstate(code), "{code}");
        }
    }
}

/// Compiles the README's example, so the copy-paste snippet cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
