//! Prometheus text: outbox relay and consumer counters.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use eda_http::ApiError;

use crate::startup::AppState;

/// `/metrics`.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut body = state.relay_metrics.render(&state.pool).await?;
    body.push_str(&state.consumer_metrics.render(&state.consumer_group));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}
