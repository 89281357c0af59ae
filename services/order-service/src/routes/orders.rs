//! `/orders`: place, read, list and cancel the caller's orders.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use eda_context::EventContext;
use eda_outbox::{OutboxEvent, enqueue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};
use tracing::Instrument as _;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::{Customer, NewOrder, NewOrderRequest, OrderLine, OrderStatus};
use crate::state::AppState;
use eda_http::openapi::{JsonBodyRejections, ServerErrors, Unauthorized};
use eda_http::{ApiError, AuthUser, JsonBody, ProblemDetails};

/// The routes of this resource. `POST /orders` alone accepts bodies up to
/// `max_order_body_bytes` (a bulk order); every other route keeps the service's limit.
/// Each handler's `#[utoipa::path]` gives both its route and its part of `/openapi.json`.
pub fn router(max_order_body_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_order).layer(DefaultBodyLimit::max(max_order_body_bytes)))
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
}

/// An order as the API returns it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    /// Order id (UUIDv7: time-ordered).
    id: Uuid,
    /// Where the order is in its life.
    status: OrderStatus,
    /// 1 when placed, +1 on every change.
    revision: i64,
    /// Who the order is for.
    customer: Customer,
    /// ISO 4217 code of every price.
    currency: String,
    /// The lines, in the order sent.
    lines: Vec<OrderLine>,
    /// Sum of quantity x unit price.
    total_cents: i64,
    /// When the order was placed.
    created_at: DateTime<Utc>,
    /// When it last changed.
    updated_at: DateTime<Utc>,
}

/// `OrderPlaced` event body.
#[derive(Serialize)]
struct OrderPlaced<'a> {
    order_id: Uuid,
    user_id: &'a str,
    customer: &'a Customer,
    currency: &'a str,
    lines: &'a [OrderLine],
    total_cents: i64,
}

/// `OrderCancelled` event body.
#[derive(Serialize)]
struct OrderCancelled<'a> {
    order_id: Uuid,
    user_id: &'a str,
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().ok().map(str::trim).unwrap_or_default();
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 128 visible ASCII characters".to_owned(),
        ));
    }
    Ok(Some(key.to_owned()))
}

/// The current trace context's `traceparent`, stored in the order row for CDC readers (none
/// with `PROPAGATION=off`).
fn traceparent(state: &AppState) -> Option<String> {
    state
        .propagation
        .is_on()
        .then(eda_context::trace::current_traceparent)
        .flatten()
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("order id {id:?} is not a UUID")))
}

/// An order event with the request's context: request/correlation ids, the user, and the
/// current span's trace context (none of it with `PROPAGATION=off`).
fn event(
    state: &AppState,
    order_id: Uuid,
    event_type: &str,
    revision: i64,
    context: &EventContext,
    body: &impl Serialize,
) -> Result<OutboxEvent, ApiError> {
    OutboxEvent::json(
        &state.topic,
        "Order",
        &order_id.to_string(),
        event_type,
        revision,
        body,
    )
    .and_then(|e| e.with_headers(state.propagation.outgoing(context)))
    .map_err(ApiError::internal)
}

/// The span of one SQL statement (OpenTelemetry database conventions, kind client).
fn db_span(operation: &'static str, table: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db",
        otel.name = %format!("{operation} {table}"),
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.collection.name = table,
    )
}

/// Writes the event the way the configured mode says: into the outbox now (same
/// transaction), or returned to be produced after commit (direct mode).
async fn emit(
    state: &AppState,
    conn: &mut PgConnection,
    event: OutboxEvent,
) -> Result<Option<OutboxEvent>, ApiError> {
    if state.direct.is_some() {
        return Ok(Some(event));
    }
    enqueue(conn, &event).await.map_err(ApiError::internal)?;
    Ok(None)
}

fn after_commit(state: &AppState, pending: impl IntoIterator<Item = OutboxEvent>) {
    if let Some(direct) = &state.direct {
        for event in pending {
            direct.publish_after_commit(&event);
        }
    }
}

/// Place an order for the caller; emits `OrderPlaced` in the same transaction.
///
/// A retried request with the same `Idempotency-Key` and body returns the first order
/// (header `Idempotent-Replayed: true`) instead of placing another.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, nullable = false,
        description = "1 to 128 visible ASCII characters; a retry with the same key and body returns the first order",
        min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")),
    request_body = NewOrderRequest,
    responses(
        (status = 201, description = "Placed (or replayed)", body = OrderView,
            headers(("location" = String, description = "`/orders/{id}` of the order"),
                    ("idempotent-replayed" = String, description = "`true` when an earlier request with this Idempotency-Key placed it"))),
        JsonBodyRejections,
        (status = 400, description = "Malformed JSON, or an Idempotency-Key that is not 1 to 128 visible ASCII characters",
            body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        (status = 409, description = "A request with this Idempotency-Key is still in progress",
            body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (`errors` names each), or an Idempotency-Key already used for a different request",
            body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
#[tracing::instrument(skip_all, fields(user.id = %user.user_id, order.id))]
async fn create_order(
    State(state): State<AppState>,
    context: EventContext,
    user: AuthUser,
    headers: HeaderMap,
    JsonBody(request): JsonBody<NewOrderRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let order = NewOrder::parse(request).map_err(ApiError::Validation)?;
    let request_hash = format!(
        "{:x}",
        Sha256::digest(
            serde_json::to_vec(&(&order.customer, order.currency.as_str(), &order.lines))
                .unwrap_or_default()
        )
    );

    if let Some(key) = &key
        && let Some(existing) = find_by_idempotency_key(&state, &user, key, &request_hash).await?
    {
        return Ok(created(existing, true));
    }

    let order_id = Uuid::now_v7();
    tracing::Span::current().record("order.id", tracing::field::display(order_id));
    let total = order.total_cents();
    let placed = OrderPlaced {
        order_id,
        user_id: &user.user_id,
        customer: &order.customer,
        currency: order.currency.as_str(),
        lines: &order.lines,
        total_cents: total,
    };
    let placed = event(
        &state,
        order_id,
        "OrderPlaced",
        1,
        &context.with_user(&user.user_id),
        &placed,
    )?;
    // A large event goes to the object store (or into chunks) now, before any row is written:
    // if the store is down the request fails (503) and nothing exists. An object whose
    // transaction then fails is an orphan the janitor deletes.
    let placed = state
        .large_payloads
        .prepare(placed)
        .await
        .map_err(|err| match err {
            eda_claim_check::Error::Unavailable(_) => {
                tracing::warn!(error = %err, "claim-check store unavailable; order refused");
                ApiError::Unavailable("the object store for large events is unavailable".to_owned())
            }
            eda_claim_check::Error::Refused(_) => ApiError::internal(err),
        })?;
    let mut tx = state.pool.begin().await?;
    sqlx::query(
        "INSERT INTO orders (id, user_id, customer_name, customer_email, currency, status, total_cents, revision, traceparent) \
         VALUES ($1, $2, $3, $4, $5, 'PLACED', $6, 1, $7)",
    )
    .bind(order_id)
    .bind(&user.user_id)
    .bind(&order.customer.name)
    .bind(&order.customer.email)
    .bind(order.currency.as_str())
    .bind(total)
    .bind(traceparent(&state))
    .execute(&mut *tx)
    .instrument(db_span("INSERT", "orders"))
    .await?;
    let (skus, quantities, prices): (Vec<&str>, Vec<i32>, Vec<i64>) = order
        .lines
        .iter()
        .map(|l| (l.sku.as_str(), l.quantity, l.unit_price_cents))
        .fold((vec![], vec![], vec![]), |mut acc, (s, q, p)| {
            acc.0.push(s);
            acc.1.push(q);
            acc.2.push(p);
            acc
        });
    sqlx::query(
        "INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_cents) \
         SELECT $1, ord::int, sku, qty, price FROM unnest($2::text[], $3::int[], $4::bigint[]) WITH ORDINALITY AS t(sku, qty, price, ord)",
    )
    .bind(order_id)
    .bind(&skus)
    .bind(&quantities)
    .bind(&prices)
    .execute(&mut *tx)
    .instrument(db_span("INSERT", "order_items"))
    .await?;
    if let Some(key) = &key {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&user.user_id)
        .bind(key)
        .bind(&request_hash)
        .bind(order_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // A concurrent request with the same key won the race: ours never happened.
            tx.rollback().await?;
            return match find_by_idempotency_key(&state, &user, key, &request_hash).await? {
                Some(existing) => Ok(created(existing, true)),
                None => Err(ApiError::Conflict(
                    "a request with this Idempotency-Key is still in progress".to_owned(),
                )),
            };
        }
    }
    // The uploaded object (if any) is referenced once this transaction commits.
    placed.confirm(&mut tx).await.map_err(ApiError::internal)?;
    let mut pending = Vec::new();
    for event in placed.into_events() {
        pending.extend(emit(&state, &mut tx, event).await?);
    }
    tx.commit().await?;
    // Logged at once: the saga may run to its end before this handler returns.
    tracing::info!(
        total_cents = total,
        lines = order.lines.len(),
        "order placed"
    );
    after_commit(&state, pending);

    let view = load(&state, &user, order_id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    Ok(created(view, false))
}

fn created(view: OrderView, replayed: bool) -> Response {
    let location = HeaderValue::from_str(&format!("/orders/{}", view.id))
        .unwrap_or_else(|_| HeaderValue::from_static("/orders"));
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn find_by_idempotency_key(
    state: &AppState,
    user: &AuthUser,
    key: &str,
    request_hash: &str,
) -> Result<Option<OrderView>, ApiError> {
    let row = sqlx::query(
        "SELECT request_hash, order_id FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(&user.user_id)
    .bind(key)
    .fetch_optional(&state.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    if row.get::<String, _>("request_hash") != request_hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    load(state, user, row.get("order_id")).await
}

/// Reads one of `user`'s orders.
async fn load(state: &AppState, user: &AuthUser, id: Uuid) -> Result<Option<OrderView>, ApiError> {
    let row = sqlx::query(
        "SELECT id, status, revision, customer_name, customer_email, currency, total_cents, created_at, updated_at \
         FROM orders WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(&user.user_id)
    .fetch_optional(&state.pool)
    .await?;
    Ok(with_lines(state, row.into_iter().collect()).await?.pop())
}

/// Turns order rows into views, reading the lines of all of them in one query (a page of
/// orders costs two queries, not one per order).
async fn with_lines(
    state: &AppState,
    rows: Vec<sqlx::postgres::PgRow>,
) -> Result<Vec<OrderView>, ApiError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|row| row.get("id")).collect();
    let mut lines: HashMap<Uuid, Vec<OrderLine>> = HashMap::with_capacity(ids.len());
    let items = sqlx::query_as::<_, (Uuid, String, i32, i64)>(
        "SELECT order_id, sku, quantity, unit_price_cents FROM order_items \
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    for (order_id, sku, quantity, unit_price_cents) in items {
        lines.entry(order_id).or_default().push(OrderLine {
            sku,
            quantity,
            unit_price_cents,
        });
    }
    rows.iter()
        .map(|row| view_from_row(row, lines.remove(&row.get("id")).unwrap_or_default()))
        .collect()
}

fn view_from_row(
    row: &sqlx::postgres::PgRow,
    lines: Vec<OrderLine>,
) -> Result<OrderView, ApiError> {
    let status: String = row.get("status");
    Ok(OrderView {
        id: row.get("id"),
        status: OrderStatus::parse(&status).ok_or_else(|| {
            ApiError::Internal(eda_http::anyhow_like::Internal(
                format!("unknown status {status}").into(),
            ))
        })?,
        revision: row.get("revision"),
        customer: Customer {
            name: row.get("customer_name"),
            email: row.get("customer_email"),
        },
        currency: row.get("currency"),
        lines,
        total_cents: row.get("total_cents"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

/// One of the caller's orders (another user's is 404, like a missing one).
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "The id is not a UUID", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        (status = 404, description = "No such order of the caller's", body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
#[tracing::instrument(skip_all, fields(user.id = %user.user_id, order.id = %id))]
async fn get_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let id = parse_id(&id)?;
    load(&state, &user, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("order"))
}

/// Query of `GET /orders`. Unknown parameters are refused (400), like unknown body fields.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Orders per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of orders, newest first; pass `next_cursor` back as `cursor` for the next page.
#[derive(Debug, Serialize, ToSchema)]
struct OrderPage {
    /// The orders of this page.
    items: Vec<OrderView>,
    /// The cursor of the next page; null on the last one.
    next_cursor: Option<String>,
}

/// The caller's orders, newest first, keyset-paged (stable while orders are added).
#[utoipa::path(
    get,
    path = "/orders",
    tag = "orders",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "A limit out of range, a cursor this API did not return, or an unknown parameter",
            body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        ServerErrors,
    )
)]
async fn list_orders(
    State(state): State<AppState>,
    user: AuthUser,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<OrderPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 100".to_owned(),
        ));
    }
    let cursor = params
        .cursor
        .as_deref()
        .map(|c| {
            Uuid::parse_str(c)
                .map_err(|_| ApiError::BadRequest("cursor is not one this API returned".to_owned()))
        })
        .transpose()?;
    // Keyset paging on the UUIDv7 id (time-ordered): stable under concurrent inserts.
    let mut rows = sqlx::query(
        "SELECT id, status, revision, customer_name, customer_email, currency, total_cents, created_at, updated_at \
         FROM orders WHERE user_id = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    )
    .bind(&user.user_id)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let items = with_lines(&state, rows).await?;
    let next_cursor = if has_more {
        items.last().map(|o| o.id.to_string())
    } else {
        None
    };
    Ok(Json(OrderPage { items, next_cursor }))
}

/// Cancel one of the caller's orders; emits `OrderCancelled`. Idempotent: cancelling a
/// cancelled order changes nothing and answers 200.
#[utoipa::path(
    post,
    path = "/orders/{id}/cancel",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The cancelled order", body = OrderView),
        (status = 400, description = "The id is not a UUID", body = ProblemDetails, content_type = "application/problem+json"),
        Unauthorized,
        (status = 404, description = "No such order of the caller's", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "A rejected order cannot be cancelled", body = ProblemDetails, content_type = "application/problem+json"),
        ServerErrors,
    )
)]
#[tracing::instrument(skip_all, fields(user.id = %user.user_id, order.id = %id))]
async fn cancel_order(
    State(state): State<AppState>,
    context: EventContext,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let id = parse_id(&id)?;
    let mut tx = state.pool.begin().await?;
    // The row lock serialises changes to one order, so outbox ids follow its revisions.
    let row = sqlx::query(
        "SELECT status, revision FROM orders WHERE id = $1 AND user_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(&user.user_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("order"))?;
    let status = OrderStatus::parse(row.get("status"));
    let revision: i64 = row.get("revision");
    let pending = match status {
        Some(OrderStatus::Cancelled) => None, // already done: cancelling twice changes nothing
        Some(OrderStatus::Rejected) => {
            return Err(ApiError::Conflict(
                "a rejected order cannot be cancelled".to_owned(),
            ));
        }
        _ => {
            let revision = revision + 1;
            sqlx::query("UPDATE orders SET status = 'CANCELLED', revision = $2, updated_at = now(), traceparent = $3 WHERE id = $1")
                .bind(id)
                .bind(revision)
                .bind(traceparent(&state))
                .execute(&mut *tx)
                .await?;
            let body = OrderCancelled {
                order_id: id,
                user_id: &user.user_id,
            };
            emit(
                &state,
                &mut tx,
                event(
                    &state,
                    id,
                    "OrderCancelled",
                    revision,
                    &context.with_user(&user.user_id),
                    &body,
                )?,
            )
            .await?
        }
    };
    tx.commit().await?;
    after_commit(&state, pending);
    load(&state, &user, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("order"))
}
