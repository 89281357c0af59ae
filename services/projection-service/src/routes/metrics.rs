//! `/metrics`: the change consumer's counters and the views' freshness per source, in one
//! `prometheus_client` registry (OpenMetrics text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use eda_http::ApiError;
use eda_http::openapi::ServerErrors;
use eda_idempotent_consumer::ConsumerCollector;
use prometheus_client::registry::Registry;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// `/metrics`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// OpenMetrics text: the change consumer's counters and the views' freshness per source.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    responses(
        (status = 200, description = "The metrics", body = String,
            content_type = "application/openmetrics-text"),
        ServerErrors,
    )
)]
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ConsumerCollector::new([(
        state.consumer_group.to_string(),
        Arc::clone(&state.consumer_metrics),
    )])));
    state.projection_metrics.register(&mut registry);
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
