//! Settings from environment variables, defaulting to the native stack (`infra/env.sh`). What
//! every service reads is in [`ServiceSettings`]; this file holds what is inventory-service's
//! own.

pub use eda_http::config::{ConfigError, DEV_JWT_SECRET, ServiceSettings};
use eda_http::config::{ServiceDefaults, parse, var};
use eda_idempotent_consumer::Dedupe;

/// Everything the service reads at start. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What every service reads: HTTP address (port default 8081), `DATABASE_URL` (default the
    /// native stack's `inventory` database), Kafka, `JWT_SECRET`, `MAX_BODY_BYTES` (default
    /// 16 KiB), shutdown timeout, `PROPAGATION`.
    pub service: ServiceSettings,
    /// `ORDER_EVENTS_TOPIC` (consumed), default `order.events`.
    pub order_events_topic: String,
    /// `INVENTORY_EVENTS_TOPIC` (produced), default `inventory.events`.
    pub inventory_events_topic: String,
    /// `CONSUMER_GROUP`, default `inventory-service`.
    pub consumer_group: String,
    /// `IDEMPOTENCY`: `on` (dedupe by event id, default), `offsets` (offsets in the database),
    /// or `off` (apply every delivery: pitfall 5).
    pub dedupe: Dedupe,
    /// Where claim-checked payloads (large `OrderPlaced` events) are fetched from and what is
    /// accepted (`S3_*`, `CLAIM_CHECK_*`; see `eda_claim_check::Settings`).
    pub claim_check: eda_claim_check::Settings,
}

/// inventory-service's defaults for the settings every service has.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    http_port: 8081,
    database_url: "postgres://eda:eda@127.0.0.1:5432/inventory",
    max_body_bytes: 16 * 1024,
};

impl Settings {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceSettings::from_env(DEFAULTS)?,
            order_events_topic: var("ORDER_EVENTS_TOPIC")
                .unwrap_or_else(|| "order.events".to_owned()),
            inventory_events_topic: var("INVENTORY_EVENTS_TOPIC")
                .unwrap_or_else(|| "inventory.events".to_owned()),
            consumer_group: var("CONSUMER_GROUP").unwrap_or_else(|| "inventory-service".to_owned()),
            dedupe: parse("IDEMPOTENCY", Dedupe::EventId)?,
            claim_check: eda_claim_check::Settings::from_env().map_err(ConfigError)?,
        })
    }
}
