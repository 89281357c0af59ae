//! HTTP routes, one module per resource.

pub mod metrics;
pub mod openapi;
pub mod orders;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::trace::TraceLayer;

use crate::startup::AppState;

/// The whole API.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .merge(orders::router())
        .merge(eda_http::health::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
