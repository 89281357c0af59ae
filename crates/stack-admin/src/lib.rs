//! Administration of the reference system's running stack, for the programs that work against
//! it: `pitfall-lab`'s benchmarks and the workspace's tests (through eda-test-support, which
//! turns these errors into panics with the same messages).
//!
//! What both need, in one place: the stack's settings from the environment ([`Stack`]), names no
//! other run uses ([`unique`]), scratch databases ([`create_database`], [`drop_database`]),
//! topics ([`create_topic`], [`delete_topic`]; the broker creates none on first use), and a
//! Debezium outbox connector per database ([`OutboxConnector`]) and table (CDC) connectors
//! ([`Connector::register_cdc`]).
//!
//! This is the project's own tooling, not one of the crates meant to be copied into a service:
//! its defaults are the native stack's, and the connector is `infra/debezium`'s.
//!
//! # Layout
//! - `settings`: [`Stack`].
//! - `postgres`: databases.
//! - `kafka`: topics.
//! - `connect`: Debezium connectors on Kafka Connect.

mod connect;
mod kafka;
mod postgres;
mod settings;

use std::time::Duration;

pub use connect::{CDC_CONNECTOR_TEMPLATE, Connector, OUTBOX_CONNECTOR_TEMPLATE, OutboxConnector};
pub use kafka::{create_topic, delete_topic};
pub use postgres::{create_database, drop_database};
pub use settings::Stack;

/// What administering the stack can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting from the environment has the wrong form.
    #[error("{name}={value:?} is not {expected}")]
    Setting {
        /// The variable.
        name: &'static str,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// PostgreSQL refused or did not answer.
    #[error("PostgreSQL: {what}")]
    Postgres {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Kafka did not answer, or a client could not be made.
    #[error("Kafka: {what}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// The broker refused to create or delete a topic.
    #[error("Kafka refused the change to topic {topic}: {code}")]
    TopicRefused {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// Kafka Connect's REST API did not answer.
    #[error("Kafka Connect at {url} did not answer (is the stack up?)")]
    Connect {
        /// What was asked.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// Kafka Connect refused the connector's config.
    #[error("Kafka Connect refused connector {name} ({status}): {body}")]
    ConnectorRefused {
        /// The connector.
        name: String,
        /// HTTP status.
        status: u16,
        /// Kafka Connect's explanation.
        body: String,
    },
    /// The connector's task failed (Debezium's stack trace attached).
    #[error("connector {name} failed: {trace}")]
    ConnectorFailed {
        /// The connector.
        name: String,
        /// The task's trace, as Kafka Connect reports it.
        trace: String,
    },
    /// The connector did not start in time.
    #[error("connector {name} not running after {waited:?}: {status}")]
    ConnectorNotRunning {
        /// The connector.
        name: String,
        /// How long it was given.
        waited: Duration,
        /// Its last status.
        status: String,
    },
    /// A deleted connector's replication slot stayed in use.
    #[error("replication slot {slot} still active after {waited:?}")]
    SlotStillActive {
        /// The slot.
        slot: String,
        /// How long it was given.
        waited: Duration,
    },
    /// The connector template has a placeholder this crate does not fill.
    #[error("connector template: placeholder left unfilled at {0:?}")]
    Placeholder(String),
    /// The filled connector template is not JSON.
    #[error("connector template: not JSON once filled")]
    TemplateJson(#[source] serde_json::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A name no other run uses (`<prefix>_<32 hex>`): runs isolate themselves by database, topic,
/// group and key, so they can share one stack and run in parallel.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_keep_the_prefix() {
        let (a, b) = (unique("smoke"), unique("smoke"));
        assert_ne!(a, b);
        assert!(a.starts_with("smoke_"));
    }
}

/// Compiles the README's example, so the copy-paste snippet cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
