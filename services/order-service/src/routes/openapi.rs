//! `/openapi.json`: the API description (`services/order-service/openapi.json`).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

/// The document, embedded at build time; a test checks it lists every route.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// `/openapi.json`.
pub fn router() -> Router<AppState> {
    Router::new().route(
        "/openapi.json",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response() }),
    )
}
