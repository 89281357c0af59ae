//! Settings from environment variables. Defaults match the native stack (`infra/env.sh`), so
//! `EDA_DEV_MODE=1 cargo run -p order-service` works next to `make infra-up`. What every service
//! reads is in [`ServiceSettings`]; this file holds what is order-service's own.

use std::time::Duration;

pub use eda_http::config::{ConfigError, DEV_JWT_SECRET, ServiceSettings};
use eda_http::config::{ServiceDefaults, parse, var};
use eda_idempotent_consumer::Dedupe;

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

/// Everything the service reads at start. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What every service reads: HTTP address (port default 8080), `DATABASE_URL` (default the
    /// native stack's `orders` database), Kafka, `JWT_SECRET`, `MAX_BODY_BYTES` (default 64 KiB:
    /// an order is small), shutdown timeout, `PROPAGATION`.
    pub service: ServiceSettings,
    /// `ORDER_EVENTS_TOPIC`, default `order.events`.
    pub order_events_topic: String,
    /// `INVENTORY_EVENTS_TOPIC` (consumed: reservation outcomes), default `inventory.events`.
    pub inventory_events_topic: String,
    /// `CONSUMER_GROUP`, default `order-service`.
    pub consumer_group: String,
    /// `IDEMPOTENCY`: `on` (default), `offsets`, or `off` (pitfall 5).
    pub dedupe: Dedupe,
    /// `PUBLISH_MODE`: `outbox` (default) or `direct`.
    pub publish_mode: PublishMode,
    /// `RELAY_MODE`: `inprocess` (default) or `debezium`.
    pub relay_mode: RelayMode,
    /// `RELAY_POLL_INTERVAL_MS`, default 1000: fallback when no NOTIFY arrives.
    pub relay_poll_interval: Duration,
    /// `OUTBOX_RETENTION_SECS`, default 3600: how long outbox rows are kept (after publication
    /// in-process; after insertion with Debezium, which must have streamed them by then).
    pub outbox_retention: Duration,
    /// `CLAIM_CHECK` (`on`/`off`), the S3 store and the threshold: large `OrderPlaced` events
    /// are offloaded (pitfall 4's fix); see `eda_claim_check::Settings`.
    pub claim_check: eda_claim_check::Settings,
    /// `MAX_ORDER_BODY_BYTES`, default 16 MiB: the body limit of `POST /orders` only, where a
    /// bulk order of up to 100,000 lines must fit; every other route keeps `MAX_BODY_BYTES`.
    pub max_order_body_bytes: usize,
}

/// order-service's defaults for the settings every service has.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    http_port: 8080,
    database_url: "postgres://eda:eda@127.0.0.1:5432/orders",
    max_body_bytes: 64 * 1024,
};

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
        Ok(Self {
            service: ServiceSettings::from_env(DEFAULTS)?,
            order_events_topic: var("ORDER_EVENTS_TOPIC")
                .unwrap_or_else(|| "order.events".to_owned()),
            inventory_events_topic: var("INVENTORY_EVENTS_TOPIC")
                .unwrap_or_else(|| "inventory.events".to_owned()),
            consumer_group: var("CONSUMER_GROUP").unwrap_or_else(|| "order-service".to_owned()),
            dedupe: parse("IDEMPOTENCY", Dedupe::EventId)?,
            publish_mode,
            relay_mode,
            relay_poll_interval: Duration::from_millis(parse("RELAY_POLL_INTERVAL_MS", 1000)?),
            outbox_retention: Duration::from_secs(parse("OUTBOX_RETENTION_SECS", 3600)?),
            claim_check: eda_claim_check::Settings::from_env().map_err(ConfigError)?,
            max_order_body_bytes: parse("MAX_ORDER_BODY_BYTES", 16 * 1024 * 1024)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_neither_the_jwt_key_nor_the_database_password() {
        let settings = Settings {
            service: ServiceSettings {
                http_host: [127, 0, 0, 1].into(),
                http_port: DEFAULTS.http_port,
                database_url: "postgres://eda:hunter2-password@db:5432/orders".into(),
                kafka_bootstrap_servers: "kafka:9092".to_owned(),
                jwt_secret: "jwt-key-that-must-stay-hidden".into(),
                max_body_bytes: DEFAULTS.max_body_bytes,
                shutdown_timeout: Duration::from_secs(20),
                propagation: eda_context::Propagation::On,
                baggage: Default::default(),
                consumer_stuck_after: Duration::from_secs(60),
            },
            order_events_topic: "order.events".to_owned(),
            inventory_events_topic: "inventory.events".to_owned(),
            consumer_group: "order-service".to_owned(),
            dedupe: Dedupe::EventId,
            publish_mode: PublishMode::Outbox,
            relay_mode: RelayMode::InProcess,
            relay_poll_interval: Duration::from_secs(1),
            outbox_retention: Duration::from_secs(3600),
            claim_check: eda_claim_check::Settings::from_env().unwrap(),
            max_order_body_bytes: 16 * 1024 * 1024,
        };
        let printed = format!("{settings:#?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("jwt-key"), "{printed}");
        assert!(printed.contains("[REDACTED]"), "{printed}");
    }
}
