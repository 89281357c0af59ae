//! Reading settings from environment variables: empty means unset, and a value that does not
//! parse is an error naming the variable (never its value when it is a secret: callers choose).
//!
//! [`ServiceSettings`] holds what every service reads (HTTP address, database, Kafka, JWT key,
//! body limit, shutdown timeout, propagation), so a service's own settings hold only its own.
//! Credentials are [`SecretString`]s: `Debug` prints `[REDACTED]`, so a settings struct can be
//! logged or end up in a panic message without leaking them.

use std::env;
use std::net::IpAddr;
use std::time::Duration;

use eda_context::{BaggagePolicy, Propagation};
use secrecy::{ExposeSecret as _, SecretString};

/// A variable holds something unusable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// The trimmed value of `name`, `None` when unset or empty.
pub fn var(name: &str) -> Option<String> {
    env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `name` parsed as `T`, or `default` when unset.
pub fn parse<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|err| ConfigError(format!("{name}={v:?}: {err}"))),
    }
}

/// The development signing key of `infra/env.sh` and `docker-compose.yml`. It is published in
/// this repository, so anyone can mint tokens with it: services accept it only in development
/// mode (`EDA_DEV_MODE=1`, see [`check_jwt_secret`]).
pub const DEV_JWT_SECRET: &str = "eda-pitfalls-dev-secret-change-me";

/// The variable that allows the development key: `1` (or `true`) on a laptop, unset elsewhere.
pub const DEV_MODE_VAR: &str = "EDA_DEV_MODE";

/// Refuses a JWT key that anyone could sign with: shorter than 16 bytes, or the published
/// [`DEV_JWT_SECRET`] unless `dev_mode`. Pure, so that tests need not touch the environment.
pub fn check_jwt_secret(secret: &SecretString, dev_mode: bool) -> Result<(), ConfigError> {
    let secret = secret.expose_secret();
    if secret.len() < 16 {
        return Err(ConfigError(
            "JWT_SECRET must be at least 16 bytes".to_owned(),
        ));
    }
    if secret == DEV_JWT_SECRET && !dev_mode {
        return Err(ConfigError(format!(
            "JWT_SECRET is the published development key; set your own, or {DEV_MODE_VAR}=1 for local development"
        )));
    }
    Ok(())
}

/// `EDA_DEV_MODE`: `1`/`true` on, unset, `0` or `false` off; anything else is an error rather
/// than a guess.
pub fn dev_mode() -> Result<bool, ConfigError> {
    match var(DEV_MODE_VAR).as_deref() {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(ConfigError(format!(
            "{DEV_MODE_VAR}={other:?}: expected 1 or 0"
        ))),
    }
}

/// `JWT_SECRET` (the development key when unset), checked by [`check_jwt_secret`] against
/// `EDA_DEV_MODE`.
pub fn jwt_secret() -> Result<SecretString, ConfigError> {
    let secret = SecretString::from(var("JWT_SECRET").unwrap_or_else(|| DEV_JWT_SECRET.to_owned()));
    let dev_mode = dev_mode()?;
    check_jwt_secret(&secret, dev_mode)?;
    if dev_mode && secret.expose_secret() == DEV_JWT_SECRET {
        tracing::warn!("{DEV_MODE_VAR}=1: accepting the published development JWT key");
    }
    Ok(secret)
}

/// The defaults that differ between services; every other default is the same for all.
#[derive(Debug, Clone, Copy)]
pub struct ServiceDefaults {
    /// `HTTP_PORT` when unset (order-service 8080, inventory-service 8081, ...).
    pub http_port: u16,
    /// `DATABASE_URL` when unset: the service's database on the native stack.
    pub database_url: &'static str,
    /// `MAX_BODY_BYTES` when unset: what the service's largest valid request needs.
    pub max_body_bytes: usize,
}

/// What every service reads at start. Defaults match the native stack (`infra/env.sh`).
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Address to bind (`HTTP_HOST`, default `127.0.0.1`; `0.0.0.0` in containers).
    pub http_host: IpAddr,
    /// Port (`HTTP_PORT`; 0 picks a free one, for tests).
    pub http_port: u16,
    /// `DATABASE_URL`. A secret: it holds the database password.
    pub database_url: SecretString,
    /// `KAFKA_BOOTSTRAP_SERVERS`, default `127.0.0.1:9092`.
    pub kafka_bootstrap_servers: String,
    /// `JWT_SECRET`: HS256 key for bearer tokens.
    pub jwt_secret: SecretString,
    /// `MAX_BODY_BYTES`: larger requests get 413.
    pub max_body_bytes: usize,
    /// `SHUTDOWN_TIMEOUT_SECS`, default 20: bounded wait for in-flight requests, then again for
    /// the background workers.
    pub shutdown_timeout: Duration,
    /// `PROPAGATION`: `on` (default) carries request ids and trace context through HTTP, the
    /// outbox and Kafka; `off` reproduces pitfall 3 (every hop starts a new trace).
    pub propagation: Propagation,
    /// `BAGGAGE_KEYS`: the W3C baggage entries that travel with requests and events
    /// (comma-separated, default `tenant,region,demo`; empty keeps none); others are dropped.
    pub baggage: BaggagePolicy,
    /// `CONSUMER_STUCK_AFTER_SECS`, default 60: a consumer partition retrying one event for
    /// longer is reported (ERROR log, `consumer_stuck` metric, `/readyz` unhealthy).
    pub consumer_stuck_after: Duration,
}

impl ServiceSettings {
    /// Reads the environment; refuses the development JWT key outside `EDA_DEV_MODE=1`.
    pub fn from_env(defaults: ServiceDefaults) -> Result<Self, ConfigError> {
        Ok(Self {
            http_host: parse("HTTP_HOST", IpAddr::from([127, 0, 0, 1]))?,
            http_port: parse("HTTP_PORT", defaults.http_port)?,
            database_url: var("DATABASE_URL")
                .unwrap_or_else(|| defaults.database_url.to_owned())
                .into(),
            kafka_bootstrap_servers: var("KAFKA_BOOTSTRAP_SERVERS")
                .unwrap_or_else(|| "127.0.0.1:9092".to_owned()),
            jwt_secret: jwt_secret()?,
            max_body_bytes: parse("MAX_BODY_BYTES", defaults.max_body_bytes)?,
            shutdown_timeout: Duration::from_secs(parse("SHUTDOWN_TIMEOUT_SECS", 20)?),
            propagation: parse("PROPAGATION", Propagation::On)?,
            baggage: match std::env::var("BAGGAGE_KEYS") {
                // Set but empty: no baggage at all (`var` would read it as unset).
                Ok(keys) if keys.trim().is_empty() => BaggagePolicy::none(),
                _ => parse("BAGGAGE_KEYS", BaggagePolicy::default())?,
            },
            consumer_stuck_after: Duration::from_secs(parse("CONSUMER_STUCK_AFTER_SECS", 60)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s)
    }

    #[test]
    fn the_development_key_needs_development_mode() {
        let refused = check_jwt_secret(&secret(DEV_JWT_SECRET), false).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "invalid configuration: JWT_SECRET is the published development key; set your own, \
             or EDA_DEV_MODE=1 for local development"
        );
        check_jwt_secret(&secret(DEV_JWT_SECRET), true).unwrap();
    }

    #[test]
    fn an_own_key_is_accepted_and_a_short_one_refused_in_any_mode() {
        for dev_mode in [false, true] {
            check_jwt_secret(&secret("my-own-key-of-enough-length"), dev_mode).unwrap();
            assert!(check_jwt_secret(&secret("short"), dev_mode).is_err());
        }
    }

    #[test]
    fn debug_shows_neither_the_jwt_key_nor_the_database_password() {
        let settings = ServiceSettings {
            http_host: IpAddr::from([127, 0, 0, 1]),
            http_port: 8080,
            database_url: secret("postgres://eda:hunter2-password@db:5432/orders"),
            kafka_bootstrap_servers: "kafka:9092".to_owned(),
            jwt_secret: secret("jwt-key-that-must-stay-hidden"),
            max_body_bytes: 1024,
            shutdown_timeout: Duration::from_secs(20),
            propagation: Propagation::On,
            baggage: BaggagePolicy::default(),
            consumer_stuck_after: Duration::from_secs(60),
        };
        let printed = format!("{settings:?} {settings:#?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("jwt-key"), "{printed}");
        assert!(
            printed.contains("kafka:9092"),
            "the rest is still shown: {printed}"
        );
    }
}
