//! `/inventory/{sku}`: read stock (any authenticated caller), set it (admin role).

use axum::Json;
use axum::extract::{Path, State};
use eda_http::openapi::{Forbidden, JsonBodyRejections, ServerErrors, Unauthorized};
use eda_http::{ApiError, AuthUser, JsonBody, ProblemDetails};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::{parse_available, parse_sku};
use crate::state::AppState;

/// The routes of this resource.
/// Each handler's `#[utoipa::path]` gives both its route and its part of `/openapi.json`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_stock, set_stock))
}

/// Stock of one SKU.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct StockView {
    /// The SKU.
    sku: String,
    /// Free to reserve.
    available: i64,
    /// Reserved for orders.
    reserved: i64,
    /// 1 when created, +1 on every change (the optimistic lock of reservations).
    revision: i64,
}

/// Body of `PUT /inventory/{sku}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetStock {
    /// The new stock level, 0 to 1,000,000,000 (reservations are kept).
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    available: i64,
}

/// Stock of one SKU (any authenticated caller).
#[utoipa::path(
    get,
    path = "/inventory/{sku}",
    tag = "inventory",
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "`A-Z`, `0-9`, `-`, 1 to 64 characters", pattern = "^[A-Z0-9-]{1,64}$")),
    responses(
        (status = 200, description = "The stock", body = StockView),
        (status = 400, description = "Not a valid SKU", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        (status = 404, description = "No stock row for this SKU", body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
async fn get_stock(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(sku): Path<String>,
) -> Result<Json<StockView>, ApiError> {
    let sku =
        parse_sku(&sku).map_err(|e| ApiError::BadRequest(format!("{}: {}", e.field, e.message)))?;
    sqlx::query_as::<_, StockView>(
        "SELECT sku, available, reserved, revision FROM stock WHERE sku = $1",
    )
    .bind(&sku)
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("sku"))
}

/// Set one SKU's available stock, creating its row if need be (admin role).
#[utoipa::path(
    put,
    path = "/inventory/{sku}",
    tag = "inventory",
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "`A-Z`, `0-9`, `-`, 1 to 64 characters", pattern = "^[A-Z0-9-]{1,64}$")),
    request_body = SetStock,
    responses(
        (status = 200, description = "The stock after the change", body = StockView),
        JsonBodyRejections,
        (status = 400, description = "Malformed JSON, or not a valid SKU", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        Forbidden,
        ServerErrors,
    )
)]
#[tracing::instrument(skip_all, fields(user.id = %user.user_id, sku = %sku))]
async fn set_stock(
    State(state): State<AppState>,
    user: AuthUser,
    Path(sku): Path<String>,
    JsonBody(body): JsonBody<SetStock>,
) -> Result<Json<StockView>, ApiError> {
    user.require_role("admin")?;
    let sku =
        parse_sku(&sku).map_err(|e| ApiError::BadRequest(format!("{}: {}", e.field, e.message)))?;
    let available = parse_available(body.available).map_err(|e| ApiError::Validation(vec![e]))?;
    let view = sqlx::query_as::<_, StockView>(
        "INSERT INTO stock (sku, available) VALUES ($1, $2) \
         ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, revision = stock.revision + 1, updated_at = now() \
         RETURNING sku, available, reserved, revision",
    )
    .bind(&sku)
    .bind(available)
    .fetch_one(&state.pool)
    .await?;
    tracing::info!(available, "stock set");
    Ok(Json(view))
}
