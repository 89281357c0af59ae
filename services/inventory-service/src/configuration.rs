//! Settings from environment variables, defaulting to the native stack (`infra/env.sh`).

use std::env;
use std::net::IpAddr;
use std::time::Duration;

use eda_idempotent_consumer::Dedupe;

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
}

/// A variable holds something unusable.
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

/// The development key `infra/env.sh` uses.
pub const DEV_JWT_SECRET: &str = "eda-pitfalls-dev-secret-change-me";

impl Settings {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let dedupe = match var("IDEMPOTENCY").as_deref() {
            None | Some("on") => Dedupe::EventId,
            Some("offsets") => Dedupe::Offsets,
            Some("off") => Dedupe::Off,
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
        })
    }
}
