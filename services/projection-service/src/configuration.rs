//! Settings from environment variables, defaulting to the native stack (`infra/env.sh`). What
//! every service reads is in [`ServiceSettings`]; this file holds what is projection-service's
//! own.

use std::time::Duration;

pub use eda_http::config::{ConfigError, DEV_JWT_SECRET, ServiceSettings};
use eda_http::config::{ServiceDefaults, parse, var};

/// The CDC topics of the stack's connectors (`infra/debezium/cdc-connector.json`, topic prefix
/// `cdc.<database>`): `<prefix>.<schema>.<table>`.
pub const DEFAULT_CDC_TOPICS: &[&str] = &[
    "cdc.orders.public.orders",
    "cdc.orders.public.order_items",
    "cdc.inventory.public.stock",
    "cdc.inventory.public.reservations",
];

/// Everything the service reads at start. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What every service reads: HTTP address (port default 8082), `DATABASE_URL` (default the
    /// native stack's `projection` database), Kafka, `JWT_SECRET`, `MAX_BODY_BYTES` (default
    /// 16 KiB), shutdown timeout, `PROPAGATION`.
    pub service: ServiceSettings,
    /// `CDC_TOPICS`, comma-separated: the change-event topics consumed (each needs its `.dlq`).
    /// Default [`DEFAULT_CDC_TOPICS`].
    pub cdc_topics: Vec<String>,
    /// `CONSUMER_GROUP`, default `projection-service`.
    pub consumer_group: String,
    /// `MIN_REVISION_MAX_WAIT_MS`: the longest a read with `min_revision` may wait for the
    /// view to catch up (default 10,000; a request asks for less with `wait_ms`).
    pub max_wait: Duration,
}

/// projection-service's defaults for the settings every service has.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    http_port: 8082,
    database_url: "postgres://eda:eda@127.0.0.1:5432/projection",
    max_body_bytes: 16 * 1024,
};

impl Settings {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let cdc_topics = match var("CDC_TOPICS") {
            Some(list) => parse_topics(&list)?,
            None => DEFAULT_CDC_TOPICS.iter().map(|t| (*t).to_owned()).collect(),
        };
        Ok(Self {
            service: ServiceSettings::from_env(DEFAULTS)?,
            cdc_topics,
            consumer_group: var("CONSUMER_GROUP")
                .unwrap_or_else(|| "projection-service".to_owned()),
            max_wait: Duration::from_millis(parse("MIN_REVISION_MAX_WAIT_MS", 10_000u64)?),
        })
    }
}

/// `a, b,c` → `[a, b, c]`; an empty list or entry is an error naming the variable.
fn parse_topics(list: &str) -> Result<Vec<String>, ConfigError> {
    let topics: Vec<String> = list.split(',').map(|t| t.trim().to_owned()).collect();
    if topics.iter().any(String::is_empty) {
        return Err(ConfigError(format!(
            "CDC_TOPICS={list:?}: a comma-separated list of topic names, none empty"
        )));
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_lists() {
        assert_eq!(parse_topics("a, b,c").unwrap(), ["a", "b", "c"]);
        assert!(parse_topics("a,,b").unwrap_err().0.contains("CDC_TOPICS"));
        assert!(parse_topics("").is_err());
    }
}
