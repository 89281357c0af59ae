//! What the handlers share. Its own module, so that `routes` and `startup` both depend on it
//! and not on each other.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use eda_http::JwtSecret;
use eda_http::health::Readiness;
use eda_idempotent_consumer::ConsumerMetrics;
use sqlx::PgPool;

use crate::consumers::ProjectionMetrics;
use crate::rebuild::Rebuilds;

/// The application state every handler receives. `Debug` shows no secret: the JWT key prints
/// as `[REDACTED]`.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Database pool (the views).
    pub pool: PgPool,
    /// HS256 key for bearer tokens.
    pub jwt_secret: JwtSecret,
    /// The change consumer's runtime counters.
    pub consumer_metrics: Arc<ConsumerMetrics>,
    /// The views' counters and per-source freshness.
    pub projection_metrics: Arc<ProjectionMetrics>,
    /// Consumer group (metrics label).
    pub consumer_group: Arc<str>,
    /// What `/readyz` checks.
    pub readiness: Readiness,
    /// The longest `min_revision` wait.
    pub max_wait: Duration,
    /// Rebuilds of the views (`/admin/rebuild`).
    pub rebuilds: Rebuilds,
    /// The topics the live consumer reads (a rebuild reads them too).
    pub live_topics: Arc<[String]>,
}

impl FromRef<AppState> for Readiness {
    fn from_ref(state: &AppState) -> Self {
        state.readiness.clone()
    }
}

impl FromRef<AppState> for JwtSecret {
    fn from_ref(state: &AppState) -> Self {
        state.jwt_secret.clone()
    }
}
