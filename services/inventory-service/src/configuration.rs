//! Settings from environment variables, defaulting to the native stack (`infra/env.sh`).

use std::net::IpAddr;

use eda_context::Propagation;
pub use eda_http::config::ConfigError;
use eda_http::config::{parse, var};
use eda_idempotent_consumer::Dedupe;
use std::time::Duration;

/// Everything the service reads at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HTTP_HOST`, default `127.0.0.1`.
    pub http_host: IpAddr,
    /// `HTTP_PORT`, default 8081.
    pub http_port: u16,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `KAFKA_BOOTSTRAP_SERVERS`.
    pub kafka_bootstrap_servers: String,
    /// `ORDER_EVENTS_TOPIC` (consumed), default `order.events`.
    pub order_events_topic: String,
    /// `INVENTORY_EVENTS_TOPIC` (produced), default `inventory.events`.
    pub inventory_events_topic: String,
    /// `CONSUMER_GROUP`, default `inventory-service`.
    pub consumer_group: String,
    /// `IDEMPOTENCY`: `on` (dedupe by event id, default), `offsets` (offsets in the database),
    /// or `off` (apply every delivery: pitfall 5).
    pub dedupe: Dedupe,
    /// `JWT_SECRET`.
    pub jwt_secret: String,
    /// `MAX_BODY_BYTES`, default 16 KiB.
    pub max_body_bytes: usize,
    /// `SHUTDOWN_TIMEOUT_SECS`, default 20.
    pub shutdown_timeout: Duration,
    /// `PROPAGATION`: `on` (default) or `off` (pitfall 3: every hop starts a new trace).
    pub propagation: Propagation,
}

pub use eda_http::config::DEV_JWT_SECRET;

impl Settings {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let dedupe = parse("IDEMPOTENCY", Dedupe::EventId)?;
        let jwt_secret = eda_http::config::jwt_secret(DEV_JWT_SECRET)?;
        Ok(Self {
            http_host: parse("HTTP_HOST", IpAddr::from([127, 0, 0, 1]))?,
            http_port: parse("HTTP_PORT", 8081)?,
            database_url: var("DATABASE_URL")
                .unwrap_or_else(|| "postgres://eda:eda@127.0.0.1:5432/inventory".to_owned()),
            kafka_bootstrap_servers: var("KAFKA_BOOTSTRAP_SERVERS")
                .unwrap_or_else(|| "127.0.0.1:9092".to_owned()),
            order_events_topic: var("ORDER_EVENTS_TOPIC")
                .unwrap_or_else(|| "order.events".to_owned()),
            inventory_events_topic: var("INVENTORY_EVENTS_TOPIC")
                .unwrap_or_else(|| "inventory.events".to_owned()),
            consumer_group: var("CONSUMER_GROUP").unwrap_or_else(|| "inventory-service".to_owned()),
            dedupe,
            jwt_secret,
            max_body_bytes: parse("MAX_BODY_BYTES", 16 * 1024)?,
            shutdown_timeout: Duration::from_secs(parse("SHUTDOWN_TIMEOUT_SECS", 20)?),
            propagation: parse("PROPAGATION", Propagation::On)?,
        })
    }
}
