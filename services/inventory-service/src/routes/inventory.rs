//! `/inventory/{sku}`: read stock (any authenticated caller), set it (admin role).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use eda_http::{ApiError, AuthUser, JsonBody};
use serde::{Deserialize, Serialize};

use crate::domain::{parse_available, parse_sku};
use crate::state::AppState;

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/inventory/{sku}", get(get_stock).put(set_stock))
}

/// Stock of one SKU.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct StockView {
    sku: String,
    available: i64,
    reserved: i64,
    revision: i64,
}

/// Body of `PUT /inventory/{sku}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStock {
    available: i64,
}

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
