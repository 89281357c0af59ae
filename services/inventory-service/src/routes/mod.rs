//! HTTP routes, one module per resource. Each handler's `#[utoipa::path]` registers its route
//! and documents it, so `/openapi.json` ([`openapi`]) is generated from the code and lists
//! exactly the routes the router has.

pub mod inventory;
pub mod metrics;

use axum::Router;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// The document's title, version (from Cargo) and description.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(description = "Stock of the eda-pitfalls reference system. Reservations are made by \
        consuming `order.events`, not over HTTP; here stock is read and set. Errors are RFC 9457 \
        problem details (`application/problem+json`)."),
    tags(
        (name = "inventory", description = "Stock per SKU (bearer token; writes need the admin role)"),
        (name = "probes", description = "Health, readiness and metrics (no token)"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// The service's own routes with their documentation (without the probes and
/// `/openapi.json`, which [`eda_http::service_api`] adds).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(inventory::router())
        .merge(metrics::router())
}

/// The OpenAPI document `/openapi.json` serves, for tests and tools that need it without a
/// running service.
pub fn openapi() -> utoipa::openapi::OpenApi {
    eda_http::service_api(api()).1
}

/// The whole API, with the health probes, `/openapi.json` and the layers every service has
/// ([`eda_http::service_router`]).
pub fn router(state: AppState, settings: &eda_http::config::ServiceSettings) -> Router {
    eda_http::service_router(api(), settings).with_state(state)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_lists_every_route_and_follows_the_house_rules() {
        let doc = super::openapi();
        assert_eq!(eda_http::openapi::lint(&doc), Vec::<String>::new());
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["info"]["title"], "inventory-service");
        assert_eq!(
            eda_http::openapi::operations(&doc),
            [
                "GET /healthz",
                "GET /inventory/{sku}",
                "GET /metrics",
                "GET /openapi.json",
                "GET /readyz",
                "PUT /inventory/{sku}",
            ]
        );
        let available = &json["components"]["schemas"]["SetStock"]["properties"]["available"];
        assert_eq!(available["maximum"], crate::domain::MAX_AVAILABLE);
    }
}
