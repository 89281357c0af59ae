//! `/orders/{id}` and `/orders`: the order view (order, lines, totals, status, reservation
//! outcome, timestamps, freshness). Owners see their own orders, the admin role sees all.
//!
//! Read-your-writes on request: `GET /orders/{id}?min_revision=N` waits (at most `wait_ms`,
//! default and cap `MIN_REVISION_MAX_WAIT_MS`) until the view holds revision `N` of the order,
//! else answers 409 with the revision it holds: the client knows the view is behind, it is not
//! told an old state is the current one.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use eda_http::openapi::{ServerErrors, Unauthorized};
use eda_http::{ApiError, AuthUser, ProblemDetails};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::paging::{Page, next_cursor};
use super::{db_text, is_admin, may_read};
use crate::state::AppState;

/// The routes of this view.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
}

/// One line of an order.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct LineView {
    /// Position in the order.
    pub line_no: i32,
    /// Product.
    pub sku: String,
    /// Units.
    pub quantity: i32,
    /// Price of one unit.
    pub unit_price_cents: i64,
}

/// What inventory-service decided for the order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReservationView {
    /// `RESERVED`, `REJECTED` or `RELEASED`.
    pub status: String,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The reservation row's revision.
    pub revision: i64,
}

/// How fresh a view row is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Freshness {
    /// When the source transaction committed.
    pub source_committed_at: DateTime<Utc>,
    /// When the view applied it.
    pub applied_at: DateTime<Utc>,
}

/// The order view.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    /// Order id.
    pub id: Uuid,
    /// Owner (JWT subject).
    pub user_id: String,
    /// `PLACED`, `CONFIRMED`, `REJECTED`, `CANCELLED`.
    pub status: String,
    /// The source row's revision the view holds.
    pub revision: i64,
    /// Customer name.
    pub customer_name: String,
    /// Customer e-mail.
    pub customer_email: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Sum of the lines.
    pub total_cents: i64,
    /// Lines in the view (they arrive on their own topic: briefly fewer than `line_count`
    /// would say on a fresh order).
    pub lines: Vec<LineView>,
    /// Units over all lines in the view.
    pub units: i64,
    /// The reservation's outcome, once inventory-service decided.
    pub reservation: Option<ReservationView>,
    /// Source timestamps.
    pub created_at: DateTime<Utc>,
    /// Source timestamps.
    pub updated_at: DateTime<Utc>,
    /// Commit and apply times of the order row.
    pub freshness: Freshness,
}

const ORDER_COLUMNS: &str = "o.order_id, o.user_id, o.status, o.revision, o.customer_name, o.customer_email, \
     o.currency, o.total_cents, o.created_at, o.updated_at, o.source_committed_at, o.applied_at, \
     r.status AS reservation_status, r.reason AS reservation_reason, r.revision AS reservation_revision";

fn order_from(row: &sqlx::postgres::PgRow) -> Result<OrderView, sqlx::Error> {
    let reservation = row
        .try_get::<Option<String>, _>("reservation_status")?
        .map(|status| -> Result<_, sqlx::Error> {
            Ok(ReservationView {
                status,
                reason: row.try_get("reservation_reason")?,
                revision: row.try_get("reservation_revision")?,
            })
        })
        .transpose()?;
    Ok(OrderView {
        id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        status: row.try_get("status")?,
        revision: row.try_get("revision")?,
        customer_name: row.try_get("customer_name")?,
        customer_email: row.try_get("customer_email")?,
        currency: row.try_get("currency")?,
        total_cents: row.try_get("total_cents")?,
        lines: Vec::new(),
        units: 0,
        reservation,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        freshness: Freshness {
            source_committed_at: row.try_get("source_committed_at")?,
            applied_at: row.try_get("applied_at")?,
        },
    })
}

/// Fills in the lines of `orders` with one query.
async fn with_lines(
    state: &AppState,
    mut orders: Vec<OrderView>,
) -> Result<Vec<OrderView>, ApiError> {
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let rows = sqlx::query(
        "SELECT order_id, line_no, sku, quantity, unit_price_cents FROM order_line_view \
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    for row in rows {
        let id: Uuid = row.try_get("order_id")?;
        if let Some(order) = orders.iter_mut().find(|o| o.id == id) {
            let line = LineView {
                line_no: row.try_get("line_no")?,
                sku: row.try_get("sku")?,
                quantity: row.try_get("quantity")?,
                unit_price_cents: row.try_get("unit_price_cents")?,
            };
            order.units += i64::from(line.quantity);
            order.lines.push(line);
        }
    }
    Ok(orders)
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("order id {id:?} is not a UUID")))
}

/// `?min_revision=&wait_ms=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Wait {
    /// Wait until the view holds at least this revision of the order (1 or more).
    #[param(minimum = 1)]
    min_revision: Option<i64>,
    /// How long to wait for it, in ms: at most `MIN_REVISION_MAX_WAIT_MS` (10,000 unless the
    /// service is configured otherwise; more is a 400), which is also the default.
    #[param(maximum = 10_000)]
    wait_ms: Option<u64>,
}

async fn fetch_order(state: &AppState, id: Uuid) -> Result<Option<OrderView>, ApiError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM order_view o LEFT JOIN reservation_view r USING (order_id) \
         WHERE o.order_id = $1"
    )))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    Ok(row.as_ref().map(order_from).transpose()?)
}

/// One order's view (the owner's, or any with the admin role). With `min_revision`, waits
/// until the view holds that revision: read-your-writes on request.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "views",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id"), Wait),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "The id is not a UUID, or min_revision or wait_ms out of range", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        (status = 404, description = "Not in the view, or not the caller's", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "min_revision not reached within the wait: the detail says which revision the view holds", body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
#[tracing::instrument(skip_all, fields(user.id = %user.user_id, order.id = %id))]
async fn get_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    wait: Result<Query<Wait>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<OrderView>, ApiError> {
    let Query(wait) = wait.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let id = parse_id(&id)?;
    if wait.min_revision.is_some_and(|r| r < 1) {
        return Err(ApiError::BadRequest(
            "min_revision must be 1 or more".to_owned(),
        ));
    }
    let budget = match wait.wait_ms {
        Some(ms) if Duration::from_millis(ms) > state.max_wait => {
            return Err(ApiError::BadRequest(format!(
                "wait_ms must be at most {}",
                state.max_wait.as_millis()
            )));
        }
        Some(ms) => Duration::from_millis(ms),
        None => state.max_wait,
    };
    let deadline = Instant::now() + budget;
    let mut pause = Duration::from_millis(5);
    loop {
        let order = fetch_order(&state, id).await?;
        // Someone else's order is "not found", exactly like a missing one.
        let order = order.filter(|o| may_read(&user, &o.user_id));
        let held = order.as_ref().map(|o| o.revision);
        match (order, wait.min_revision) {
            (Some(order), None) => {
                return Ok(Json(with_lines(&state, vec![order]).await?.remove(0)));
            }
            (Some(order), Some(min)) if order.revision >= min => {
                return Ok(Json(with_lines(&state, vec![order]).await?.remove(0)));
            }
            (None, None) => return Err(ApiError::NotFound("order")),
            _ => {}
        }
        let now = Instant::now();
        if now >= deadline {
            let min = wait.min_revision.unwrap_or_default();
            return Err(ApiError::Conflict(match held {
                Some(held) => format!(
                    "the view holds revision {held} of this order, not yet {min}: it did not catch up within {} ms; retry later",
                    budget.as_millis()
                ),
                None => format!(
                    "the view does not hold this order (revision {min} asked) after {} ms: not projected yet, or not yours",
                    budget.as_millis()
                ),
            }));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// `?limit=&cursor=&status=&user_id=` (`user_id`: admin only).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Orders per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only orders in this status: `PLACED`, `CONFIRMED`, `REJECTED` or `CANCELLED`.
    status: Option<String>,
    /// Only this user's orders (admin role).
    user_id: Option<String>,
}

/// A page of orders, newest first; pass `next_cursor` back as `cursor` for the next page.
#[derive(Debug, Serialize, ToSchema)]
struct OrderPage {
    /// The orders of this page.
    items: Vec<OrderView>,
    /// The cursor of the next page; null on the last one.
    next_cursor: Option<String>,
}

const STATUSES: [&str; 4] = ["PLACED", "CONFIRMED", "REJECTED", "CANCELLED"];

/// The caller's orders in the view, newest first (admin role: everyone's, or one user's).
#[utoipa::path(
    get,
    path = "/orders",
    tag = "views",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "A limit out of range, a cursor this API did not return, an unknown status, a user_id with a NUL character, or a malformed query", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        (status = 403, description = "user_id without the admin role", body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
async fn list_orders(
    State(state): State<AppState>,
    user: AuthUser,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<OrderPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let page = Page {
        limit: params.limit,
        cursor: params.cursor.clone(),
    };
    let limit = page.limit()?;
    let cursor = page.cursor(|c| Uuid::parse_str(c).ok())?;
    if let Some(status) = &params.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    // Owners list their own orders; the admin role lists everyone's, or one user's.
    let owner = match (&params.user_id, is_admin(&user)) {
        (Some(_), false) => {
            return Err(ApiError::Forbidden(
                "listing another user's orders needs the admin role".to_owned(),
            ));
        }
        (Some(u), true) => Some(db_text("user_id", u)?.to_owned()),
        (None, true) => None,
        (None, false) => Some(user.user_id.clone()),
    };
    // Keyset paging on the UUIDv7 id (time-ordered): stable while changes arrive.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM order_view o LEFT JOIN reservation_view r USING (order_id) \
         WHERE ($1::text IS NULL OR o.user_id = $1) AND ($2::text IS NULL OR o.status = $2) \
           AND ($3::uuid IS NULL OR o.order_id < $3) \
         ORDER BY o.order_id DESC LIMIT $4"
    )))
    .bind(owner)
    .bind(&params.status)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let mut orders = rows.iter().map(order_from).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = next_cursor(&mut orders, limit, |o| o.id.to_string());
    let items = with_lines(&state, orders).await?;
    Ok(Json(OrderPage { items, next_cursor }))
}
