//! HTTP routes, one module per resource.

pub mod metrics;
pub mod openapi;
pub mod orders;

use axum::Router;

use crate::state::AppState;

/// The whole API, with the health probes and the layers every service has
/// ([`eda_http::service_router`]).
pub fn router(
    state: AppState,
    settings: &eda_http::config::ServiceSettings,
    max_order_body_bytes: usize,
) -> Router {
    let api = Router::new()
        .merge(orders::router(max_order_body_bytes))
        .merge(metrics::router())
        .merge(openapi::router());
    eda_http::service_router(api, settings).with_state(state)
}
