//! Settings from environment variables. Defaults match the native stack (`infra/env.sh`), so
//! `cargo run -p order-service` works next to `make infra-up` with nothing set.

use std::env;
use std::net::IpAddr;
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
    pub dedupe: eda_idempotent_consumer::Dedupe,
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
    /// `OUTBOX_RETENTION_SECS`, default 3600: how long outbox rows are kept (after publication
    /// in-process; after insertion with Debezium, which must have streamed them by then).
    pub outbox_retention: Duration,
}

/// A variable holds something unusable. The message names the variable and the value's problem
/// (never the value of a secret).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

fn var(name: &str) -> Option<String> {
    env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ConfigError(format!("{name}={v:?} is not valid"))),
    }
}

/// The development key `infra/env.sh` uses; refused nowhere, but warned about.
pub const DEV_JWT_SECRET: &str = "eda-pitfalls-dev-secret-change-me";

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
        let dedupe = match var("IDEMPOTENCY").as_deref() {
            None | Some("on") => eda_idempotent_consumer::Dedupe::EventId,
            Some("offsets") => eda_idempotent_consumer::Dedupe::Offsets,
            Some("off") => eda_idempotent_consumer::Dedupe::Off,
            Some(other) => {
                return Err(ConfigError(format!(
                    "IDEMPOTENCY={other:?}: expected on, offsets or off"
                )));
            }
        };
        let jwt_secret = var("JWT_SECRET").unwrap_or_else(|| DEV_JWT_SECRET.to_owned());
        if jwt_secret.len() < 16 {
            return Err(ConfigError(
                "JWT_SECRET must be at least 16 bytes".to_owned(),
            ));
        }
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
        })
    }
}
