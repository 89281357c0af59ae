//! HTTP plumbing the services share, so that every service answers the same way: RFC 9457
//! problem details for every error ([`ApiError`]), a JSON extractor whose rejections are
//! problem details too ([`JsonBody`]), HS256 bearer-token authentication ([`AuthUser`]),
//! `/healthz` + `/readyz` ([`health`]), environment settings ([`config`]), and shutdown
//! ([`shutdown_signal`], [`join_worker`]).

pub mod auth;
pub mod config;
mod error;
pub mod health;
mod json;
pub mod startup;

pub use auth::{AuthUser, Claims, JwtSecret, issue_token, verify};
pub use error::{ApiError, FieldError, anyhow_like};
pub use json::JsonBody;

/// Waits for a background worker (consumer, relay) after shutdown was signalled, at most
/// `timeout`, and logs how it ended: a worker that does not stop in time is left behind, and
/// what it did not finish is redelivered or republished later.
pub async fn join_worker<E: std::fmt::Display>(
    name: &str,
    task: tokio::task::JoinHandle<Result<(), E>>,
    timeout: std::time::Duration,
) {
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::error!(worker = name, error = %err, "worker failed"),
        Ok(Err(err)) => tracing::error!(worker = name, error = %err, "worker panicked"),
        Err(_) => tracing::warn!(
            worker = name,
            "worker did not stop in time; its unfinished work will be redone"
        ),
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
