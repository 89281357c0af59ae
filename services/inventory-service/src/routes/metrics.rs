//! `/metrics`: the outbox relay's counters and backlog and the consumer's counters, in one
//! `prometheus_client` registry (OpenMetrics text: escaped labels, one description per family).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use eda_http::ApiError;
use eda_idempotent_consumer::ConsumerCollector;
use prometheus_client::registry::Registry;

use crate::state::AppState;

/// `/metrics`.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.relay_metrics.refresh_backlog(&state.pool).await?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Arc::clone(&state.relay_metrics)));
    registry.register_collector(Box::new(ConsumerCollector::new([(
        state.consumer_group.to_string(),
        Arc::clone(&state.consumer_metrics),
    )])));
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry).map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}
