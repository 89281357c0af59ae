//! `/skus/{sku}` and `/skus`: the per-SKU view, inventory-service's stock (available,
//! reserved) joined with what orders asked for (lines and units ordered). Any authenticated
//! caller, like inventory-service's own stock reads.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use eda_http::openapi::{ServerErrors, Unauthorized};
use eda_http::{ApiError, AuthUser, ProblemDetails};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::db_text;
use super::paging::{Page, next_cursor, text_key};
use crate::state::AppState;

/// The routes of this view.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_skus))
        .routes(routes!(get_sku))
}

/// One SKU.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct SkuView {
    /// The SKU.
    pub sku: String,
    /// Free to reserve (null when inventory-service has no stock row for it).
    pub available: Option<i64>,
    /// Reserved for orders.
    pub reserved: Option<i64>,
    /// The stock row's revision the view holds.
    pub stock_revision: Option<i64>,
    /// Order lines of this SKU in the order view.
    pub order_lines: i64,
    /// Units over those lines.
    pub units_ordered: i64,
    /// When the stock row's change committed at the source.
    pub source_committed_at: Option<DateTime<Utc>>,
}

const SELECT: &str = "SELECT COALESCE(s.sku, o.sku) AS sku, s.available, s.reserved, s.revision AS stock_revision, \
       COALESCE(o.order_lines, 0) AS order_lines, COALESCE(o.units_ordered, 0) AS units_ordered, \
       s.source_committed_at \
     FROM stock_view s FULL JOIN sku_orders o USING (sku)";

/// One SKU: inventory-service's stock joined with the units ordered.
#[utoipa::path(
    get,
    path = "/skus/{sku}",
    tag = "views",
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "The SKU")),
    responses(
        (status = 200, description = "The SKU", body = SkuView),
        (status = 400, description = "A SKU with a NUL character", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        (status = 404, description = "Neither stock nor order lines for this SKU in the view", body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
async fn get_sku(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(sku): Path<String>,
) -> Result<Json<SkuView>, ApiError> {
    let sku = db_text("sku", &sku)?;
    sqlx::query_as::<_, SkuView>(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE COALESCE(s.sku, o.sku) = $1"
    )))
    .bind(sku)
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("sku"))
}

/// A page of SKUs in order; pass `next_cursor` back as `cursor`.
#[derive(Debug, Serialize, ToSchema)]
struct SkuPage {
    /// The SKUs of this page.
    items: Vec<SkuView>,
    /// The cursor of the next page; null on the last one.
    next_cursor: Option<String>,
}

/// SKUs in order, keyset-paged.
#[utoipa::path(
    get,
    path = "/skus",
    tag = "views",
    security(("bearer" = [])),
    params(Page),
    responses(
        (status = 200, description = "A page of SKUs", body = SkuPage),
        (status = 400, description = "A limit out of range, a cursor this API did not return, or a malformed query", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        ServerErrors,
    )
)]
async fn list_skus(
    State(state): State<AppState>,
    _user: AuthUser,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SkuPage>, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = page.limit()?;
    let cursor = page.cursor(text_key)?;
    let mut items = sqlx::query_as::<_, SkuView>(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE ($1::text IS NULL OR COALESCE(s.sku, o.sku) > $1) \
         ORDER BY COALESCE(s.sku, o.sku) LIMIT $2"
    )))
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = next_cursor(&mut items, limit, |s| s.sku.clone());
    Ok(Json(SkuPage { items, next_cursor }))
}
