//! `/customers/{user_id}` and `/customers`: the per-customer summary (orders by status, amount
//! spent on confirmed orders), kept in the same transaction as the order view. A customer
//! reads their own; the admin role reads and lists all.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use eda_http::openapi::{Forbidden, ServerErrors, Unauthorized};
use eda_http::{ApiError, AuthUser, ProblemDetails};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::paging::{Page, next_cursor, text_key};
use super::{db_text, may_read};
use crate::state::AppState;

/// The routes of this view.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_customers))
        .routes(routes!(get_customer))
}

/// One customer's summary.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
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

/// One customer's summary: that user, or the admin role.
#[utoipa::path(
    get,
    path = "/customers/{user_id}",
    tag = "views",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The customer (JWT subject)")),
    responses(
        (status = 200, description = "The summary", body = CustomerSummary),
        (status = 400, description = "A user id with a NUL character", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        (status = 404, description = "No orders in the view, or not the caller (without the admin role)", body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
async fn get_customer(
    State(state): State<AppState>,
    user: AuthUser,
    Path(user_id): Path<String>,
) -> Result<Json<CustomerSummary>, ApiError> {
    let user_id = db_text("user_id", &user_id)?;
    if !may_read(&user, user_id) {
        return Err(ApiError::NotFound("customer"));
    }
    sqlx::query_as::<_, CustomerSummary>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM customer_summary WHERE user_id = $1 AND orders > 0"
    )))
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("customer"))
}

/// A page of summaries by user id; pass `next_cursor` back as `cursor`.
#[derive(Debug, Serialize, ToSchema)]
struct CustomerPage {
    /// The summaries of this page.
    items: Vec<CustomerSummary>,
    /// The cursor of the next page; null on the last one.
    next_cursor: Option<String>,
}

/// Customer summaries by user id (admin role).
#[utoipa::path(
    get,
    path = "/customers",
    tag = "views",
    security(("bearer" = [])),
    params(Page),
    responses(
        (status = 200, description = "A page of summaries", body = CustomerPage),
        (status = 400, description = "A limit out of range, a cursor this API did not return, or a malformed query", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        Forbidden,
        ServerErrors,
    )
)]
async fn list_customers(
    State(state): State<AppState>,
    user: AuthUser,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CustomerPage>, ApiError> {
    user.require_role("admin")?;
    let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = page.limit()?;
    let cursor = page.cursor(text_key)?;
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
