//! `/customers/{user_id}` and `/customers`: the per-customer summary (orders by status, amount
//! spent on confirmed orders), kept in the same transaction as the order view. A customer
//! reads their own; the admin role reads and lists all.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use eda_http::{ApiError, AuthUser};
use serde::{Deserialize, Serialize};

use super::may_read;
use super::paging::{Page, next_cursor};
use crate::state::AppState;

/// The routes of this view.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/customers", get(list_customers))
        .route("/customers/{user_id}", get(get_customer))
}

/// One customer's summary.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct CustomerSummary {
    /// The customer (JWT subject).
    pub user_id: String,
    /// Orders in the view.
    pub orders: i64,
    /// Orders still `PLACED`.
    pub placed: i64,
    /// `CONFIRMED` orders.
    pub confirmed: i64,
    /// `REJECTED` orders.
    pub rejected: i64,
    /// `CANCELLED` orders.
    pub cancelled: i64,
    /// Sum of the confirmed orders' totals.
    pub spent_cents: i64,
    /// When the summary last changed.
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "user_id, orders, placed, confirmed, rejected, cancelled, spent_cents, updated_at";

async fn get_customer(
    State(state): State<AppState>,
    user: AuthUser,
    Path(user_id): Path<String>,
) -> Result<Json<CustomerSummary>, ApiError> {
    if !may_read(&user, &user_id) {
        return Err(ApiError::NotFound("customer"));
    }
    sqlx::query_as::<_, CustomerSummary>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM customer_summary WHERE user_id = $1 AND orders > 0"
    )))
    .bind(&user_id)
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("customer"))
}

/// A page of summaries by user id; pass `next_cursor` back as `cursor`.
#[derive(Debug, Serialize)]
struct CustomerPage {
    items: Vec<CustomerSummary>,
    next_cursor: Option<String>,
}

async fn list_customers(
    State(state): State<AppState>,
    user: AuthUser,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CustomerPage>, ApiError> {
    user.require_role("admin")?;
    let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = page.limit()?;
    let cursor = page.cursor(|c| Some(c.to_owned()))?;
    let mut items = sqlx::query_as::<_, CustomerSummary>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM customer_summary WHERE orders > 0 AND ($1::text IS NULL OR user_id > $1) \
         ORDER BY user_id LIMIT $2"
    )))
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = next_cursor(&mut items, limit, |c| c.user_id.clone());
    Ok(Json(CustomerPage { items, next_cursor }))
}
