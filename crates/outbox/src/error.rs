/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event's payload could not be serialized to JSON.
    #[error("cannot serialize the payload of {event_type} to JSON: {source}")]
    Payload {
        /// The event type whose payload failed.
        event_type: String,
        /// Why.
        source: serde_json::Error,
    },
    /// An event field or header is empty, too long, or not part of the contract.
    #[error("invalid outbox event: {0}")]
    InvalidEvent(String),
    /// A setting contradicts a guarantee (for example a producer override turning off
    /// idempotence).
    #[error("invalid outbox configuration: {0}")]
    Config(String),
    /// The database refused a statement.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The outbox schema could not be migrated.
    #[error("outbox migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The Kafka client could not be created or refused a message.
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
