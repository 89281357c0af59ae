//! HTTP plumbing the services share, so that every service answers the same way: RFC 9457
//! problem details for every error ([`ApiError`]), a JSON extractor whose rejections are
//! problem details too ([`JsonBody`]), HS256 bearer-token authentication ([`AuthUser`]),
//! `/healthz` + `/readyz` with the service's own checks ([`health`]), environment settings
//! ([`config`]), the layers every router gets ([`service_router`]), and shutdown
//! ([`shutdown_signal`], [`serve`] with a bounded drain, [`Workers`] stopped in stages), and
//! the OpenAPI document generated from the handlers and served at `/openapi.json`
//! ([`openapi`]).
//!
//! # Features
//! Without features the crate needs neither sqlx nor librdkafka. `postgres` adds the database
//! readiness check, `startup::connect_database` and `?` on `sqlx::Error` in handlers;
//! `kafka` adds the Kafka readiness check; both together add `startup::ServiceBase`, the
//! start-up and stop every service shares.

pub mod auth;
pub mod config;
mod error;
pub mod health;
mod json;
pub mod openapi;
pub mod startup;
mod workers;

pub use auth::{AuthUser, Claims, JwtSecret, issue_token, verify};
pub use error::{ApiError, FieldError, ProblemDetails, anyhow_like};
pub use json::JsonBody;
pub use workers::{WorkerOutcome, Workers};

use axum::extract::{DefaultBodyLimit, FromRef};
use axum::{Extension, Router};
use eda_context::http::ContextLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// A service's routes plus what every service has (`/healthz`, `/readyz`, `/openapi.json`),
/// and the finished OpenAPI document of all of them ([`openapi::finish`]). Both come from the
/// same registrations, so the document lists exactly the routes the router has. Tests and tools
/// use the document; [`service_router`] serves it.
pub fn service_api<S>(api: OpenApiRouter<S>) -> (Router<S>, utoipa::openapi::OpenApi)
where
    S: Clone + Send + Sync + 'static,
    health::Readiness: FromRef<S>,
{
    let (router, mut doc) = api
        .merge(health::router())
        .routes(routes!(openapi::openapi_json))
        .split_for_parts();
    openapi::finish(&mut doc);
    (router, doc)
}

/// A service's whole router: its own `api` routes plus `/healthz` and `/readyz` (running the
/// state's [`health::Readiness`] checks) and `/openapi.json` (the document generated from all
/// of them, [`service_api`]), a body limit of `max_body_bytes` (413 problem beyond it), problem
/// details for an unknown route (404) or method (405), and [`ContextLayer`] outermost (request
/// id, server span as child of an incoming `traceparent`, [`eda_context::EventContext`] for
/// handlers; the probe routes log their "request finished" lines at DEBUG).
///
/// `settings` gives the body limit (`MAX_BODY_BYTES`), `PROPAGATION` and the baggage keys that
/// may come in (`BAGGAGE_KEYS`).
pub fn service_router<S>(api: OpenApiRouter<S>, settings: &config::ServiceSettings) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    health::Readiness: FromRef<S>,
{
    // MAX_IN_FLIGHT for the API routes, shared by all of them; the excess is shed as a 503.
    let in_flight_limit = tower::ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(
            |_: tower::BoxError| async {
                ApiError::Unavailable(format!(
                    "more than {MAX_IN_FLIGHT} requests in flight; retry shortly"
                ))
            },
        ))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_IN_FLIGHT,
        ));
    let (router, doc) = service_api(api.route_layer(in_flight_limit));
    let context = ContextLayer::new(settings.propagation)
        .with_baggage(settings.baggage.clone())
        .with_quiet_routes(health::PROBE_ROUTES);
    router
        // `NotFound("route")` renders `openapi::NO_ROUTE_DETAIL`, which route checks look for.
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(Extension(openapi::Served(std::sync::Arc::new(doc))))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(context)
}

/// How many API requests a service handles at once (the probes and `/openapi.json` are not
/// counted). Beyond it a request is answered 503 with `Retry-After` at once, instead of
/// queueing for one of the pool's 20 database connections: after an outage, a deep queue of
/// retrying clients left every waiter too little of its 5 s to open a new connection, and the
/// service answered nothing but 503 for minutes (`make chaos` found it).
pub const MAX_IN_FLIGHT: usize = 128;

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish for
/// at most `drain`, and returns: a stop is bounded however long a client keeps a request open.
/// Requests still running then are logged, and end when the runtime does (when `main` returns).
/// Returns the server's own I/O error, if any.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    drain: std::time::Duration,
) -> std::io::Result<()> {
    let signalled = std::sync::Arc::new(tokio::sync::Notify::new());
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let signalled = std::sync::Arc::clone(&signalled);
        async move {
            shutdown.await;
            signalled.notify_one();
        }
    });
    let deadline = async {
        signalled.notified().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        served = server => served,
        () = deadline => {
            tracing::warn!(?drain, "requests still in flight after the drain timeout are cut off");
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM: pass it to `axum::serve(..).with_graceful_shutdown`.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}

/// Compiles the README's example, so the copy-paste snippet cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
