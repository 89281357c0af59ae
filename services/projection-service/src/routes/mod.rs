//! HTTP routes, one module per view.

pub mod admin;
pub mod customers;
pub mod metrics;
pub mod openapi;
pub mod orders;
mod paging;
pub mod skus;

use axum::Router;

use crate::state::AppState;

/// The whole API, with the health probes and the layers every service has
/// ([`eda_http::service_router`]).
pub fn router(state: AppState, settings: &eda_http::config::ServiceSettings) -> Router {
    let api = Router::new()
        .merge(orders::router())
        .merge(admin::router())
        .merge(customers::router())
        .merge(skus::router())
        .merge(metrics::router())
        .merge(openapi::router());
    eda_http::service_router(api, settings).with_state(state)
}

/// Whether `user` may read what belongs to `owner`: the owner, or the admin role.
fn may_read(user: &eda_http::AuthUser, owner: &str) -> bool {
    user.user_id == owner || user.roles.iter().any(|r| r == "admin")
}

/// Whether `user` has the admin role.
fn is_admin(user: &eda_http::AuthUser) -> bool {
    user.roles.iter().any(|r| r == "admin")
}
