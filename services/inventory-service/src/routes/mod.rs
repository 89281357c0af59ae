//! HTTP routes, one module per resource.

pub mod inventory;
pub mod metrics;
pub mod openapi;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use eda_context::http::ContextLayer;

use crate::startup::AppState;

/// The whole API.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .merge(inventory::router())
        .merge(eda_http::health::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Request id, server span (child of an incoming traceparent), context for handlers.
        .layer(
            ContextLayer::new(state.propagation).with_quiet_routes(eda_http::health::PROBE_ROUTES),
        )
        .with_state(state)
}
