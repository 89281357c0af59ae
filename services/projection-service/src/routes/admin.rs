//! `/admin/rebuild`: rebuilding the views without downtime (admin role; see
//! [`crate::rebuild`]). `make projection-rebuild` drives these three calls.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use eda_http::openapi::{Forbidden, JsonBodyRejections, ServerErrors, Unauthorized};
use eda_http::{ApiError, AuthUser, JsonBody, ProblemDetails};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::rebuild::{Progress, RebuildError};
use crate::state::AppState;

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(progress, start))
        .routes(routes!(switch))
}

/// Body of `POST /admin/rebuild`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Start {
    /// The new connectors' topics (each with its `.dlq`), which snapshot the source tables.
    #[schema(min_items = 1)]
    topics: Vec<String>,
}

/// Answer of `POST /admin/rebuild`.
#[derive(Debug, Serialize, ToSchema)]
struct Started {
    /// The new generation's schema.
    generation: String,
}

/// Answer of `POST /admin/rebuild/switch`.
#[derive(Debug, Serialize, ToSchema)]
struct Switched {
    /// Always true: the new generation serves the views.
    switched: bool,
    /// The schema the old generation was moved to.
    retired: String,
}

fn api(err: RebuildError) -> ApiError {
    match err {
        RebuildError::State(message) => ApiError::Conflict(message),
        RebuildError::Failed(err) => ApiError::Internal(eda_http::anyhow_like::Internal(err)),
    }
}

/// Start filling a new generation of the views from the new connectors' topics and the live
/// ones (admin role; `make projection-rebuild`).
#[utoipa::path(
    post,
    path = "/admin/rebuild",
    tag = "admin",
    security(("bearer" = [])),
    request_body = Start,
    responses(
        (status = 202, description = "Started", body = Started),
        JsonBodyRejections,
        (status = 400, description = "Malformed JSON, or no topics or an empty one", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        Forbidden,
        (status = 409, description = "A rebuild is running already", body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
async fn start(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<Start>,
) -> Result<(StatusCode, Json<Started>), ApiError> {
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
    Ok((StatusCode::ACCEPTED, Json(Started { generation })))
}

/// The running rebuild's generation and its rows per view table (admin role).
#[utoipa::path(
    get,
    path = "/admin/rebuild",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Progress", body = Progress),
        Unauthorized,
        Forbidden,
        (status = 409, description = "No rebuild is running", body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
async fn progress(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Progress>, ApiError> {
    user.require_role("admin")?;
    state.rebuilds.progress().await.map(Json).map_err(api)
}

/// Switch the new generation in, atomically (admin role).
#[utoipa::path(
    post,
    path = "/admin/rebuild/switch",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Switched", body = Switched),
        Unauthorized,
        Forbidden,
        (status = 409, description = "No rebuild is running, or the generation is still behind the live views", body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
async fn switch(State(state): State<AppState>, user: AuthUser) -> Result<Json<Switched>, ApiError> {
    user.require_role("admin")?;
    let retired = state.rebuilds.switch().await.map_err(api)?;
    Ok(Json(Switched {
        switched: true,
        retired,
    }))
}
