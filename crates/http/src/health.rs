//! `/healthz` (the process answers) and `/readyz` (PostgreSQL and Kafka answer), the same for
//! every service. The state provides [`HealthDeps`] through `FromRef`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::producer::{BaseProducer, Producer};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::ApiError;

/// Routes machines call all the time (probes and the metrics scrape): pass them to
/// `eda_context::http::ContextLayer::with_quiet_routes` so that their "request finished" lines
/// do not drown the log.
pub const PROBE_ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// What readiness checks.
#[derive(Clone)]
pub struct HealthDeps {
    /// The service's database.
    pub pool: PgPool,
    /// Any Kafka client of the service (a metadata request proves the broker answers).
    pub kafka: Arc<BaseProducer>,
}

impl std::fmt::Debug for HealthDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthDeps").finish_non_exhaustive()
    }
}

/// `/healthz` and `/readyz`.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    HealthDeps: FromRef<S>,
{
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz::<S>))
}

async fn readyz<S>(State(deps): State<HealthDeps>) -> Result<Json<Value>, ApiError>
where
    HealthDeps: FromRef<S>,
{
    sqlx::query("SELECT 1")
        .execute(&deps.pool)
        .await
        .map_err(|err| ApiError::Unavailable(format!("database: {err}")))?;
    let kafka = deps.kafka;
    tokio::task::spawn_blocking(move || {
        kafka.client().fetch_metadata(None, Duration::from_secs(2))
    })
    .await
    .map_err(|err| ApiError::Unavailable(format!("kafka: {err}")))?
    .map_err(|err| ApiError::Unavailable(format!("kafka: {err}")))?;
    Ok(Json(
        json!({"status": "ready", "database": "ok", "kafka": "ok"}),
    ))
}
