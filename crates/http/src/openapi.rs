//! The OpenAPI document each service serves at `/openapi.json`, generated from its handlers
//! and types rather than written by hand, so that it cannot drift from the code.
//!
//! A service registers its routes with `utoipa_axum`'s [`OpenApiRouter`] and
//! [`utoipa_axum::routes!`]: each handler carries a `#[utoipa::path(...)]` attribute (method,
//! path, parameters, body, every status it can answer), and the route is registered from that
//! same attribute, so a route cannot exist without its documentation nor the other way round.
//! [`service_router`](crate::service_router) then adds what every service shares: `/healthz`,
//! `/readyz`, `/openapi.json` itself, the bearer scheme and the problem-details schemas
//! ([`finish`]).
//!
//! Responses every service documents the same way are the types here, used in a handler's
//! `responses(...)` list: [`Unauthorized`] for an [`AuthUser`](crate::AuthUser) argument,
//! [`JsonBodyRejections`] for a [`JsonBody`](crate::JsonBody) argument, [`ServerErrors`] for a
//! handler that reaches the database, and so on. Every one is `application/problem+json` with
//! the [`ProblemDetails`](crate::ProblemDetails) schema.
//!
//! ```
//! use axum::Json;
//! use eda_http::{ApiError, AuthUser, openapi};
//! use utoipa_axum::{router::OpenApiRouter, routes};
//!
//! /// Who is calling.
//! #[utoipa::path(get, path = "/me", security(("bearer" = [])),
//!     responses((status = 200, description = "The caller's user id", body = String),
//!               openapi::Unauthorized))]
//! async fn me(user: AuthUser) -> Result<Json<String>, ApiError> {
//!     Ok(Json(user.user_id))
//! }
//!
//! let (_router, mut doc) = OpenApiRouter::<eda_http::JwtSecret>::default()
//!     .routes(routes!(me))
//!     .split_for_parts();
//! openapi::finish(&mut doc);
//! assert!(doc.paths.paths["/me"].get.is_some());
//! assert!(doc.components.unwrap().security_schemes.contains_key("bearer"));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response as HttpResponse};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{
    Components, Content, Header, OpenApi, Ref, RefOr, Response, ResponseBuilder, Schema,
};
use utoipa::{IntoResponses, PartialSchema, ToSchema};

pub use utoipa_axum::router::OpenApiRouter;

use crate::{FieldError, ProblemDetails};

/// The media type of every error body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The name of the bearer security scheme: `security(("bearer" = []))` on a handler that takes
/// an [`AuthUser`](crate::AuthUser).
pub const BEARER: &str = "bearer";

/// A problem-details response with `description`.
pub fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            Content::new(Some(Ref::from_schema_name(ProblemDetails::name()))),
        )
        .build()
}

fn string_header(description: &str) -> Header {
    let mut header = Header::new(String::schema());
    header.description = Some(description.to_owned());
    header
}

/// Declares a type whose [`IntoResponses`] is a fixed list of problem responses.
macro_rules! problem_responses {
    ($($(#[$doc:meta])* $name:ident { $($status:literal => $description:literal),+ $(,)? })+) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                BTreeMap::from([$((
                    $status.to_string(),
                    RefOr::T(decorate($status, problem($description))),
                )),+])
            }
        }
    )+};
}

/// The headers [`ApiError`](crate::ApiError) adds to some statuses.
fn decorate(status: u16, mut response: Response) -> Response {
    match status {
        401 => {
            response.headers.insert(
                header::WWW_AUTHENTICATE.as_str().to_owned(),
                string_header("`Bearer`: send `Authorization: Bearer <JWT>`"),
            );
        }
        503 => {
            response.headers.insert(
                header::RETRY_AFTER.as_str().to_owned(),
                string_header("Seconds to wait before retrying"),
            );
        }
        _ => {}
    }
    response
}

problem_responses! {
    /// 400: a path, query or header value is malformed.
    BadRequest { 400 => "Malformed path, query or header value" }
    /// 401: what an [`AuthUser`](crate::AuthUser) argument refuses.
    Unauthorized { 401 => "Missing, malformed, expired or wrongly signed bearer token" }
    /// 403: what [`AuthUser::require_role`](crate::AuthUser::require_role) refuses.
    Forbidden { 403 => "The token lacks the role this operation needs" }
    /// 404: the resource does not exist, or is not the caller's (the two look alike).
    NotFound { 404 => "Not found, or not the caller's" }
    /// 409: the resource's state does not allow the operation.
    Conflict { 409 => "The resource's state does not allow this" }
    /// What a [`JsonBody`](crate::JsonBody) argument refuses, before the handler runs.
    JsonBodyRejections {
        400 => "Malformed JSON",
        413 => "Body over the size limit",
        415 => "Content-Type is not application/json",
        422 => "Well-formed JSON with missing, unknown or invalid fields",
    }
    /// 500 and 503: what a handler that reaches the database (or another dependency) can
    /// answer however good the request: a bug or a failure (500, details only in the log), or
    /// an overloaded or stopping dependency (503 with `Retry-After`, nothing was written).
    ServerErrors {
        500 => "The server failed; quote the x-request-id when reporting it",
        503 => "A dependency is busy, down or stopping; nothing was written, retry after Retry-After seconds",
    }
}

/// Adds what every service's document shares: the `bearer` security scheme and the
/// problem-details schemas the responses above refer to.
pub fn finish(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Components::new);
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.bearer_format = Some("JWT".to_owned());
    bearer.description = Some(
        "An HS256 JWT whose `sub` is the user id and whose optional `roles` (e.g. `admin`) \
         grant more; `pitfall-lab token --user alice` mints development tokens."
            .to_owned(),
    );
    components
        .security_schemes
        .insert(BEARER.to_owned(), SecurityScheme::Http(bearer));
    let mut schemas: Vec<(String, RefOr<Schema>)> = Vec::new();
    ProblemDetails::schemas(&mut schemas);
    schemas.push((
        ProblemDetails::name().into_owned(),
        ProblemDetails::schema(),
    ));
    schemas.push((FieldError::name().into_owned(), FieldError::schema()));
    components.schemas.extend(schemas);
}

/// What is wrong with a finished document by this crate's rules; empty when nothing is. A
/// service's unit test asserts it is empty, so a handler cannot document an error body that is
/// not problem details, or forget the 401 its token check answers:
/// - every 4xx and 5xx response has an `application/problem+json` body;
/// - an operation with the bearer scheme documents 401, and one without documents no 401;
/// - every `{param}` of a path is a documented path parameter;
/// - every operation has a unique `operationId`.
pub fn lint(doc: &OpenApi) -> Vec<String> {
    use utoipa::openapi::path::ParameterIn;
    let mut findings = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let operations = [
            ("get", &item.get),
            ("put", &item.put),
            ("post", &item.post),
            ("delete", &item.delete),
            ("patch", &item.patch),
            ("head", &item.head),
            ("options", &item.options),
            ("trace", &item.trace),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let at = format!("{} {path}", method.to_uppercase());
            match &operation.operation_id {
                Some(id) if !ids.insert(id.clone()) => {
                    findings.push(format!("{at}: operationId {id} is used twice"));
                }
                Some(_) => {}
                None => findings.push(format!("{at}: no operationId")),
            }
            for (status, response) in &operation.responses.responses {
                let is_error = status.starts_with('4') || status.starts_with('5');
                let RefOr::T(response) = response else {
                    continue;
                };
                if is_error && !response.content.contains_key(PROBLEM_JSON) {
                    findings.push(format!("{at}: {status} is not {PROBLEM_JSON}"));
                }
            }
            let bearer = operation
                .security
                .iter()
                .flatten()
                .any(|requirement| requirement_names(requirement).contains(&BEARER.to_owned()));
            let has_401 = operation.responses.responses.contains_key("401");
            if bearer && !has_401 {
                findings.push(format!("{at}: takes a bearer token but documents no 401"));
            }
            if !bearer && has_401 {
                findings.push(format!("{at}: documents 401 but no bearer security"));
            }
            let declared: Vec<&str> = operation
                .parameters
                .iter()
                .flatten()
                .filter(|p| p.parameter_in == ParameterIn::Path)
                .map(|p| p.name.as_str())
                .collect();
            for segment in path.split('/') {
                if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                    && !declared.contains(&name)
                {
                    findings.push(format!("{at}: path parameter {name} is not documented"));
                }
            }
        }
    }
    findings
}

/// The scheme names of a security requirement (its fields are private; its JSON is a map).
fn requirement_names(requirement: &utoipa::openapi::security::SecurityRequirement) -> Vec<String> {
    match serde_json::to_value(requirement) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// The `detail` of the router's own 404, for a path no route has (a handler's 404 names what
/// it did not find, e.g. `order not found`).
pub const NO_ROUTE_DETAIL: &str = "route not found";

/// Every documented operation as `"METHOD /path"`, sorted: what a service's route test
/// compares with the routes it expects.
pub fn operations(doc: &OpenApi) -> Vec<String> {
    let mut ops = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, operation) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if operation.is_some() {
                ops.push(format!("{method} {path}"));
            }
        }
    }
    ops.sort();
    ops
}

/// One request of a route check ([`probes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The method to send.
    pub method: axum::http::Method,
    /// A documented path with each `{param}` replaced by `probe`.
    pub path: String,
    /// Whether the document lists this method for this path.
    pub documented: bool,
}

/// The requests that check a running service's router against its document, for tests that
/// send them (with a valid token) to the real service: each documented operation must reach
/// a handler (any answer but 405, or the router's own 404 whose detail is
/// [`NO_ROUTE_DETAIL`]); each other method of a documented path must be 405. Together with the
/// routes being registered from the handlers' own `#[utoipa::path]` (`utoipa_axum::routes!`),
/// this pins the document to the router: a route cannot lose its handler, nor a path gain a
/// method the document does not list.
pub fn probes(doc: &OpenApi) -> Vec<Probe> {
    use axum::http::Method;
    let mut probes = Vec::new();
    for (path, item) in &doc.paths.paths {
        let concrete: Vec<String> = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') && segment.ends_with('}') {
                    "probe".to_owned()
                } else {
                    segment.to_owned()
                }
            })
            .collect();
        let concrete = concrete.join("/");
        for (method, operation) in [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
        ] {
            probes.push(Probe {
                method,
                path: concrete.clone(),
                documented: operation.is_some(),
            });
        }
    }
    probes
}

/// The finished document, shared by the `/openapi.json` handler.
#[derive(Clone)]
pub(crate) struct Served(pub(crate) Arc<OpenApi>);

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("paths", &self.0.paths.paths.len())
            .finish()
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json(Extension(Served(doc)): Extension<Served>) -> HttpResponse {
    match doc.to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(err) => crate::ApiError::internal(err).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_responses_carry_the_problem_schema_and_their_headers() {
        let responses = Unauthorized::responses();
        let RefOr::T(response) = &responses["401"] else {
            panic!("inline response expected");
        };
        assert!(response.content.contains_key(PROBLEM_JSON));
        assert!(response.headers.contains_key("www-authenticate"));
        let codes: Vec<String> = JsonBodyRejections::responses().into_keys().collect();
        assert_eq!(codes, ["400", "413", "415", "422"]);
        let RefOr::T(busy) = &ServerErrors::responses()["503"] else {
            panic!("inline response expected");
        };
        assert!(busy.headers.contains_key("retry-after"));
    }

    /// A handler breaking every rule of [`lint`].
    #[utoipa::path(get, path = "/things/{id}", security(("bearer" = [])),
        responses((status = 200, description = "ok"), (status = 404, description = "plain")))]
    #[allow(dead_code)]
    async fn sloppy() {}

    /// A handler keeping them.
    #[utoipa::path(get, path = "/things", security(("bearer" = [])),
        responses((status = 200, description = "ok"), Unauthorized, NotFound))]
    #[allow(dead_code)]
    async fn tidy() {}

    #[test]
    fn lint_names_what_breaks_the_rules() {
        let (_, mut doc) = OpenApiRouter::<()>::default()
            .routes(utoipa_axum::routes!(sloppy))
            .routes(utoipa_axum::routes!(tidy))
            .split_for_parts();
        finish(&mut doc);
        assert_eq!(
            lint(&doc),
            [
                "GET /things/{id}: 404 is not application/problem+json",
                "GET /things/{id}: takes a bearer token but documents no 401",
                "GET /things/{id}: path parameter id is not documented",
            ]
        );
    }

    #[test]
    fn probes_cover_every_documented_path_with_each_method() {
        let (_, doc) = OpenApiRouter::<()>::default()
            .routes(utoipa_axum::routes!(sloppy))
            .split_for_parts();
        let probes = probes(&doc);
        assert_eq!(probes.len(), 5);
        assert!(probes.iter().all(|p| p.path == "/things/probe"));
        let documented: Vec<&str> = probes
            .iter()
            .filter(|p| p.documented)
            .map(|p| p.method.as_str())
            .collect();
        assert_eq!(documented, ["GET"]);
    }

    #[test]
    fn finish_adds_the_bearer_scheme_and_the_problem_schemas() {
        let mut doc = OpenApi::default();
        finish(&mut doc);
        let components = doc.components.unwrap();
        assert!(components.security_schemes.contains_key(BEARER));
        assert!(components.schemas.contains_key("ProblemDetails"));
        assert!(components.schemas.contains_key("FieldError"));
    }
}
