//! `/openapi.json` (`services/projection-service/openapi.json`).

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

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        for path in [
            "/orders",
            "/orders/{id}",
            "/customers",
            "/customers/{user_id}",
            "/skus",
            "/skus/{sku}",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(doc["paths"][path].is_object(), "openapi.json lacks {path}");
        }
        assert!(doc["paths"]["/orders/{id}"]["get"]["responses"]["409"].is_object());
    }
}
