//! `/admin/rebuild`: rebuilding the views without downtime (admin role; see
//! [`crate::rebuild`]). `make projection-rebuild` drives these three calls.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use eda_http::{ApiError, AuthUser, JsonBody};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::rebuild::{Progress, RebuildError};
use crate::state::AppState;

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/rebuild", get(progress).post(start))
        .route("/admin/rebuild/switch", post(switch))
}

/// Body of `POST /admin/rebuild`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    /// The new connectors' topics (each with its `.dlq`), which snapshot the source tables.
    topics: Vec<String>,
}

fn api(err: RebuildError) -> ApiError {
    match err {
        RebuildError::State(message) => ApiError::Conflict(message),
        RebuildError::Failed(err) => ApiError::Internal(eda_http::anyhow_like::Internal(err)),
    }
}

async fn start(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<Start>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    user.require_role("admin")?;
    if body.topics.is_empty() || body.topics.iter().any(|t| t.trim().is_empty()) {
        return Err(ApiError::BadRequest(
            "topics: the new connectors' topics, none empty".to_owned(),
        ));
    }
    let generation = state
        .rebuilds
        .start(&body.topics, &state.live_topics)
        .await
        .map_err(api)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"generation": generation})),
    ))
}

async fn progress(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Progress>, ApiError> {
    user.require_role("admin")?;
    state.rebuilds.progress().await.map(Json).map_err(api)
}

async fn switch(State(state): State<AppState>, user: AuthUser) -> Result<Json<Value>, ApiError> {
    user.require_role("admin")?;
    let retired = state.rebuilds.switch().await.map_err(api)?;
    Ok(Json(json!({"switched": true, "retired": retired})))
}
