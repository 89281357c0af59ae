//! HTTP plumbing the services share, so that every service answers the same way: RFC 9457
//! problem details for every error ([`ApiError`]), a JSON extractor whose rejections are
//! problem details too ([`JsonBody`]), HS256 bearer-token authentication ([`AuthUser`]), and the
//! shutdown signal ([`shutdown_signal`]).

pub mod auth;
mod error;
mod json;

pub use auth::{AuthUser, Claims, JwtSecret, issue_token, verify};
pub use error::{ApiError, FieldError, anyhow_like};
pub use json::JsonBody;

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
