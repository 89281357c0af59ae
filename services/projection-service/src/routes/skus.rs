//! `/skus/{sku}` and `/skus`: the per-SKU view, inventory-service's stock (available,
//! reserved) joined with what orders asked for (lines and units ordered). Any authenticated
//! caller, like inventory-service's own stock reads.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use eda_http::{ApiError, AuthUser};
use serde::{Deserialize, Serialize};

use super::paging::{Page, next_cursor};
use crate::state::AppState;

/// The routes of this view.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/skus", get(list_skus))
        .route("/skus/{sku}", get(get_sku))
}

/// One SKU.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
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

async fn get_sku(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(sku): Path<String>,
) -> Result<Json<SkuView>, ApiError> {
    sqlx::query_as::<_, SkuView>(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE COALESCE(s.sku, o.sku) = $1"
    )))
    .bind(&sku)
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("sku"))
}

/// A page of SKUs in order; pass `next_cursor` back as `cursor`.
#[derive(Debug, Serialize)]
struct SkuPage {
    items: Vec<SkuView>,
    next_cursor: Option<String>,
}

async fn list_skus(
    State(state): State<AppState>,
    _user: AuthUser,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SkuPage>, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = page.limit()?;
    let cursor = page.cursor(|c| Some(c.to_owned()))?;
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
