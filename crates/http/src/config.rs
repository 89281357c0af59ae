//! Reading settings from environment variables: empty means unset, and a value that does not
//! parse is an error naming the variable (never its value when it is a secret: callers choose).

use std::env;

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

/// The development signing key of `infra/env.sh`: accepted, but services warn about it.
pub const DEV_JWT_SECRET: &str = "eda-pitfalls-dev-secret-change-me";

/// `JWT_SECRET`, or the development key with a warning; shorter than 16 bytes is refused.
pub fn jwt_secret(dev_default: &str) -> Result<String, ConfigError> {
    let secret = var("JWT_SECRET").unwrap_or_else(|| dev_default.to_owned());
    if secret.len() < 16 {
        return Err(ConfigError(
            "JWT_SECRET must be at least 16 bytes".to_owned(),
        ));
    }
    Ok(secret)
}
