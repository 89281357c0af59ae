//! Settings from environment variables. Defaults match the native stack (`infra/env.sh`), so
//! `cargo run -p order-service` works next to `make infra-up` with nothing set.

use std::net::IpAddr;

use eda_context::Propagation;
pub use eda_http::config::ConfigError;
use eda_http::config::{parse, var};
use eda_idempotent_consumer::Dedupe;
use std::time::Duration;

/// How an order change reaches Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    /// The fix: the event is written to the outbox in the order's transaction.
    Outbox,
    /// The pitfall, on purpose: commit, then produce straight to Kafka, as naive code does.
    Direct,
}

/// Who publishes outbox rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// The eda-outbox relay inside this process.
    InProcess,
    /// Debezium's Outbox Event Router (`make debezium-register`); this process only writes rows.
    Debezium,
}

/// Everything the service reads at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to bind (`HTTP_HOST`, default `127.0.0.1`; `0.0.0.0` in containers).
    pub http_host: IpAddr,
    /// Port (`HTTP_PORT`, default 8080; 0 picks a free one, for tests).
    pub http_port: u16,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `KAFKA_BOOTSTRAP_SERVERS`.
    pub kafka_bootstrap_servers: String,
    /// `ORDER_EVENTS_TOPIC`, default `order.events`.
    pub order_events_topic: String,
    /// `INVENTORY_EVENTS_TOPIC` (consumed: reservation outcomes), default `inventory.events`.
    pub inventory_events_topic: String,
    /// `CONSUMER_GROUP`, default `order-service`.
    pub consumer_group: String,
    /// `IDEMPOTENCY`: `on` (default), `offsets`, or `off` (pitfall 5).
    pub dedupe: Dedupe,
    /// `JWT_SECRET`: HS256 key for bearer tokens. Never logged.
    pub jwt_secret: String,
    /// `PUBLISH_MODE`: `outbox` (default) or `direct`.
    pub publish_mode: PublishMode,
    /// `RELAY_MODE`: `inprocess` (default) or `debezium`.
    pub relay_mode: RelayMode,
    /// `MAX_BODY_BYTES`, default 64 KiB: an order is small.
    pub max_body_bytes: usize,
    /// `RELAY_POLL_INTERVAL_MS`, default 1000: fallback when no NOTIFY arrives.
    pub relay_poll_interval: Duration,
    /// `SHUTDOWN_TIMEOUT_SECS`, default 20: bounded wait for in-flight work at shutdown.
    pub shutdown_timeout: Duration,
    /// `PROPAGATION`: `on` (default) carries request ids and trace context through HTTP, the
    /// outbox and Kafka; `off` reproduces pitfall 3 (every hop starts a new trace).
    pub propagation: Propagation,
    /// `OUTBOX_RETENTION_SECS`, default 3600: how long outbox rows are kept (after publication
    /// in-process; after insertion with Debezium, which must have streamed them by then).
    pub outbox_retention: Duration,
}

pub use eda_http::config::DEV_JWT_SECRET;

impl Settings {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let publish_mode = match var("PUBLISH_MODE").as_deref() {
            None | Some("outbox") => PublishMode::Outbox,
            Some("direct") => PublishMode::Direct,
            Some(other) => {
                return Err(ConfigError(format!(
                    "PUBLISH_MODE={other:?}: expected outbox or direct"
                )));
            }
        };
        let relay_mode = match var("RELAY_MODE").as_deref() {
            None | Some("inprocess") => RelayMode::InProcess,
            Some("debezium") => RelayMode::Debezium,
            Some(other) => {
                return Err(ConfigError(format!(
                    "RELAY_MODE={other:?}: expected inprocess or debezium"
                )));
            }
        };
        let dedupe = parse("IDEMPOTENCY", Dedupe::EventId)?;
        let jwt_secret = eda_http::config::jwt_secret(DEV_JWT_SECRET)?;
        Ok(Self {
            http_host: parse("HTTP_HOST", IpAddr::from([127, 0, 0, 1]))?,
            http_port: parse("HTTP_PORT", 8080)?,
            database_url: var("DATABASE_URL")
                .unwrap_or_else(|| "postgres://eda:eda@127.0.0.1:5432/orders".to_owned()),
            kafka_bootstrap_servers: var("KAFKA_BOOTSTRAP_SERVERS")
                .unwrap_or_else(|| "127.0.0.1:9092".to_owned()),
            order_events_topic: var("ORDER_EVENTS_TOPIC")
                .unwrap_or_else(|| "order.events".to_owned()),
            inventory_events_topic: var("INVENTORY_EVENTS_TOPIC")
                .unwrap_or_else(|| "inventory.events".to_owned()),
            consumer_group: var("CONSUMER_GROUP").unwrap_or_else(|| "order-service".to_owned()),
            dedupe,
            jwt_secret,
            publish_mode,
            relay_mode,
            max_body_bytes: parse("MAX_BODY_BYTES", 64 * 1024)?,
            relay_poll_interval: Duration::from_millis(parse("RELAY_POLL_INTERVAL_MS", 1000)?),
            shutdown_timeout: Duration::from_secs(parse("SHUTDOWN_TIMEOUT_SECS", 20)?),
            outbox_retention: Duration::from_secs(parse("OUTBOX_RETENTION_SECS", 3600)?),
            propagation: parse("PROPAGATION", Propagation::On)?,
        })
    }
}
