//! HTTP routes, one module per resource. Each handler's `#[utoipa::path]` registers its route
//! and documents it, so `/openapi.json` ([`openapi`]) is generated from the code and lists
//! exactly the routes the router has.

pub mod metrics;
pub mod orders;

use axum::Router;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// The document's title, version (from Cargo) and description.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(description = "Orders of the eda-pitfalls reference system. Every change writes the \
        order and its event (`order.events`) in one transaction. Errors are RFC 9457 problem \
        details (`application/problem+json`)."),
    tags(
        (name = "orders", description = "The caller's orders (bearer token; `sub` = user id)"),
        (name = "probes", description = "Health, readiness and metrics (no token)"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// The service's own routes with their documentation (without the probes and
/// `/openapi.json`, which [`eda_http::service_api`] adds).
pub fn api(max_order_body_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(orders::router(max_order_body_bytes))
        .merge(metrics::router())
}

/// The OpenAPI document `/openapi.json` serves, for tests and tools that need it without a
/// running service.
pub fn openapi() -> utoipa::openapi::OpenApi {
    eda_http::service_api(api(0)).1
}

/// The whole API, with the health probes, `/openapi.json` and the layers every service has
/// ([`eda_http::service_router`]).
pub fn router(
    state: AppState,
    settings: &eda_http::config::ServiceSettings,
    max_order_body_bytes: usize,
) -> Router {
    eda_http::service_router(api(max_order_body_bytes), settings).with_state(state)
}

#[cfg(test)]
mod tests {
    use crate::domain::{MAX_LINES, MAX_QUANTITY, MAX_UNIT_PRICE_CENTS};

    #[test]
    fn the_document_lists_every_route_and_follows_the_house_rules() {
        let doc = super::openapi();
        assert_eq!(eda_http::openapi::lint(&doc), Vec::<String>::new());
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["info"]["title"], "order-service");
        assert_eq!(
            eda_http::openapi::operations(&doc),
            [
                "GET /healthz",
                "GET /metrics",
                "GET /openapi.json",
                "GET /orders",
                "GET /orders/{id}",
                "GET /readyz",
                "POST /orders",
                "POST /orders/{id}/cancel",
            ]
        );
    }

    #[test]
    fn the_documented_bounds_are_the_ones_parse_enforces() {
        let json = serde_json::to_value(super::openapi()).unwrap();
        let schemas = &json["components"]["schemas"];
        let line = &schemas["LineRequest"]["properties"];
        assert_eq!(line["quantity"]["maximum"], MAX_QUANTITY);
        assert_eq!(line["unit_price_cents"]["maximum"], MAX_UNIT_PRICE_CENTS);
        assert_eq!(
            schemas["NewOrderRequest"]["properties"]["lines"]["maxItems"],
            MAX_LINES
        );
    }
}
