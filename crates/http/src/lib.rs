//! HTTP plumbing the services share, so that every service answers the same way: RFC 9457
//! problem details for every error ([`ApiError`]), a JSON extractor whose rejections are
//! problem details too ([`JsonBody`]), HS256 bearer-token authentication ([`AuthUser`]),
//! `/healthz` + `/readyz` with the service's own checks ([`health`]), environment settings
//! ([`config`]), the layers every router gets ([`service_router`]), and shutdown
//! ([`shutdown_signal`], [`serve`] with a bounded drain, [`Workers`] stopped in stages).
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
pub mod startup;
mod workers;

pub use auth::{AuthUser, Claims, JwtSecret, issue_token, verify};
pub use error::{ApiError, FieldError, anyhow_like};
pub use json::JsonBody;
pub use workers::{WorkerOutcome, Workers};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use eda_context::http::ContextLayer;

/// A service's whole router: its own `api` routes plus `/healthz` and `/readyz` (running the
/// state's [`health::Readiness`] checks), a body limit of
/// `max_body_bytes` (413 problem beyond it), and [`ContextLayer`] outermost (request id, server
/// span as child of an incoming `traceparent`, [`eda_context::EventContext`] for handlers; the
/// probe routes log their "request finished" lines at DEBUG).
///
/// `settings` gives the body limit (`MAX_BODY_BYTES`), `PROPAGATION` and the baggage keys that
/// may come in (`BAGGAGE_KEYS`).
pub fn service_router<S>(api: Router<S>, settings: &config::ServiceSettings) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    health::Readiness: FromRef<S>,
{
    let context = ContextLayer::new(settings.propagation)
        .with_baggage(settings.baggage.clone())
        .with_quiet_routes(health::PROBE_ROUTES);
    api.merge(health::router())
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(context)
}

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
