//! Liveness and readiness.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use eda_http::ApiError;
use rdkafka::producer::Producer;
use serde_json::{Value, json};

use crate::startup::AppState;

/// `/healthz` and `/readyz` (PostgreSQL and Kafka answer).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    sqlx::query("SELECT 1")
        .execute(&state.pool)
        .await
        .map_err(|err| ApiError::Unavailable(format!("database: {err}")))?;
    let probe = state.kafka_probe.clone();
    tokio::task::spawn_blocking(move || {
        probe.client().fetch_metadata(None, Duration::from_secs(2))
    })
    .await
    .map_err(|err| ApiError::Unavailable(format!("kafka: {err}")))?
    .map_err(|err| ApiError::Unavailable(format!("kafka: {err}")))?;
    Ok(Json(
        json!({"status": "ready", "database": "ok", "kafka": "ok"}),
    ))
}
