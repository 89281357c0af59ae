//! What the handlers share. Its own module, so that `routes` and `startup` both depend on it
//! and not on each other.

use std::sync::Arc;

use axum::extract::FromRef;
use eda_claim_check::LargePayloads;
use eda_context::Propagation;
use eda_http::JwtSecret;
use eda_http::health::Readiness;
use eda_idempotent_consumer::ConsumerMetrics;
use eda_outbox::RelayMetrics;
use sqlx::PgPool;

use crate::publisher::DirectPublisher;

/// The application state every handler receives. `Debug` shows no secret: the JWT key prints
/// as `[REDACTED]`.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Database pool.
    pub pool: PgPool,
    /// HS256 key for bearer tokens.
    pub jwt_secret: JwtSecret,
    /// Topic of order events.
    pub topic: Arc<str>,
    /// `Some` in `PUBLISH_MODE=direct`.
    pub direct: Option<DirectPublisher>,
    /// `Some` when the in-process relay runs.
    pub relay_metrics: Option<Arc<RelayMetrics>>,
    /// Consumer counters (reservation outcomes).
    pub consumer_metrics: Arc<ConsumerMetrics>,
    /// Consumer group (metrics label).
    pub consumer_group: Arc<str>,
    /// What `/readyz` checks.
    pub readiness: Readiness,
    /// `PROPAGATION`: whether context goes into events and comes out of requests.
    pub propagation: Propagation,
    /// `CLAIM_CHECK`: what happens to large events before they are enqueued (offloaded to
    /// the object store, chunked, or left inline).
    pub large_payloads: LargePayloads,
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
