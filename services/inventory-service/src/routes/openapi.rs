//! `/openapi.json` (`services/inventory-service/openapi.json`).

use axum::Router;
use axum::http::header;
use axum::routing::get;

use crate::state::AppState;

/// The document, embedded at build time.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// `/openapi.json`.
pub fn router() -> Router<AppState> {
    Router::new().route(
        "/openapi.json",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
    )
}
