//! Prometheus text: the outbox relay's counters and backlog, and direct-mode losses.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::startup::AppState;
use eda_http::ApiError;

/// `/metrics`.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut body = match &state.relay_metrics {
        Some(relay) => relay.render(&state.pool).await?,
        None => String::new(),
    };
    body.push_str(&state.consumer_metrics.render(&state.consumer_group));
    if let Some(direct) = &state.direct {
        body.push_str("# HELP direct_publish_failures_total Events lost by PUBLISH_MODE=direct.\n");
        body.push_str("# TYPE direct_publish_failures_total counter\n");
        body.push_str(&format!(
            "direct_publish_failures_total {}\n",
            direct.failures()
        ));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}
