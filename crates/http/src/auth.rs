//! Bearer tokens: HS256 JWTs whose `sub` is the user id. `pitfall-lab token --user alice`
//! (or [`issue_token`]) mints development tokens for curl. Handlers take an [`AuthUser`]
//! argument; the state provides the key through `FromRef<State> for JwtSecret`.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The HS256 key, extracted from the application state with `FromRef`. `Debug` prints
/// `[REDACTED]`, so a state struct that derives `Debug` cannot leak it; clones share one copy.
#[derive(Debug, Clone)]
pub struct JwtSecret(std::sync::Arc<SecretString>);

impl JwtSecret {
    /// Wraps the key (e.g. [`ServiceSettings::jwt_secret`](crate::config::ServiceSettings)).
    pub fn new(secret: SecretString) -> Self {
        Self(std::sync::Arc::new(secret))
    }
}

/// The claims this system reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Roles, e.g. `admin` for inventory writes.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The authenticated caller, extracted from `Authorization: Bearer <jwt>`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The token's subject.
    pub user_id: String,
    /// The token's roles.
    pub roles: Vec<String>,
}

/// Signs a token for `user_id` valid for `ttl`.
pub fn issue_token(
    secret: &str,
    user_id: &str,
    roles: &[String],
    ttl: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let exp = (std::time::SystemTime::now() + ttl)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: user_id.to_owned(),
        exp,
        roles: roles.to_vec(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Verifies `token` and returns its caller.
pub fn verify(secret: &str, token: &str) -> Result<AuthUser, ApiError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|err| ApiError::Unauthorized(format!("invalid bearer token: {err}")))?;
    let sub = data.claims.sub.trim();
    if sub.is_empty() || sub.len() > 128 || sub.chars().any(char::is_control) {
        return Err(ApiError::Unauthorized(
            "the token's subject is not a valid user id".to_owned(),
        ));
    }
    Ok(AuthUser {
        user_id: sub.to_owned(),
        roles: data.claims.roles,
    })
}

impl AuthUser {
    /// Refuses callers without `role` (403).
    pub fn require_role(&self, role: &str) -> Result<(), ApiError> {
        if self.roles.iter().any(|r| r == role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this operation needs the {role} role"
            )))
        }
    }
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    JwtSecret: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let value = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthorized("missing Authorization: Bearer <token> header".to_owned())
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "the Authorization header must be: Bearer <token>".to_owned(),
                )
            })?;
        let user = verify(JwtSecret::from_ref(state).0.expose_secret(), token)?;
        // The request span's `user_id` field: every later log line of this request carries it.
        eda_context::http::record_user(&user.user_id);
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: &str = "a-test-secret-of-enough-length";

    #[test]
    fn issued_tokens_verify() {
        let token = issue_token(
            SECRET,
            "alice",
            &["admin".to_owned()],
            Duration::from_secs(60),
        )
        .unwrap();
        let user = verify(SECRET, &token).unwrap();
        assert_eq!(user.user_id, "alice");
        assert_eq!(user.roles, ["admin"]);
    }

    #[test]
    fn the_key_does_not_show_in_debug() {
        let printed = format!("{:?}", JwtSecret::new(SECRET.into()));
        assert!(!printed.contains(SECRET), "{printed}");
    }

    #[test]
    fn wrong_key_and_garbage_are_refused() {
        let token = issue_token(
            "another-secret-of-enough-length",
            "alice",
            &[],
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(
            verify(SECRET, &token),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            verify(SECRET, "not.a.jwt"),
            Err(ApiError::Unauthorized(_))
        ));
    }
}
