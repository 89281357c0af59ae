//! HTTP routes, one module per view. Each handler's `#[utoipa::path]` registers its route and
//! documents it, so `/openapi.json` ([`openapi`]) is generated from the code and lists exactly
//! the routes the router has.

pub mod admin;
pub mod customers;
pub mod metrics;
pub mod orders;
mod paging;
pub mod skus;

use axum::Router;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// The document's title, version (from Cargo) and description.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(description = "Read models fed by Debezium change events of order-service's and \
        inventory-service's CRUD tables (orders, order_items, stock, reservations): an order \
        view, per-customer summaries and a per-SKU view. A change is applied only when newer by \
        the source row's revision. Errors are RFC 9457 problem details \
        (`application/problem+json`)."),
    tags(
        (name = "views", description = "The read models (bearer token; owners see their own, the admin role sees all)"),
        (name = "admin", description = "Rebuilding the views without downtime (admin role)"),
        (name = "probes", description = "Health, readiness and metrics (no token)"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// The service's own routes with their documentation (without the probes and
/// `/openapi.json`, which [`eda_http::service_api`] adds).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(orders::router())
        .merge(admin::router())
        .merge(customers::router())
        .merge(skus::router())
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

/// A text value from the path or the query, refused (400) when PostgreSQL's `text` could not
/// hold it: binding a NUL character fails the whole query, which the caller would see as a 500
/// (schemathesis found `?cursor=%00` doing that). No row can have such a key, so nothing is lost.
fn db_text<'a>(what: &str, value: &'a str) -> Result<&'a str, eda_http::ApiError> {
    if value.contains('\0') {
        Err(eda_http::ApiError::BadRequest(format!(
            "{what} must not contain NUL characters"
        )))
    } else {
        Ok(value)
    }
}

/// Whether `user` may read what belongs to `owner`: the owner, or the admin role.
fn may_read(user: &eda_http::AuthUser, owner: &str) -> bool {
    user.user_id == owner || user.roles.iter().any(|r| r == "admin")
}

/// Whether `user` has the admin role.
fn is_admin(user: &eda_http::AuthUser) -> bool {
    user.roles.iter().any(|r| r == "admin")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_lists_every_route_and_follows_the_house_rules() {
        let doc = super::openapi();
        assert_eq!(eda_http::openapi::lint(&doc), Vec::<String>::new());
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["info"]["title"], "projection-service");
        assert_eq!(
            eda_http::openapi::operations(&doc),
            [
                "GET /admin/rebuild",
                "GET /customers",
                "GET /customers/{user_id}",
                "GET /healthz",
                "GET /metrics",
                "GET /openapi.json",
                "GET /orders",
                "GET /orders/{id}",
                "GET /readyz",
                "GET /skus",
                "GET /skus/{sku}",
                "POST /admin/rebuild",
                "POST /admin/rebuild/switch",
            ]
        );
        let get_order = &json["paths"]["/orders/{id}"]["get"];
        assert!(get_order["responses"]["409"].is_object());
    }
}
