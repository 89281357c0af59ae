//! Change events of the CRUD tables → the views. Each call runs inside the consumer runtime's
//! transaction (`Dedupe::Offsets`: the record's topic-partition-offset is stored in the same
//! transaction), so a view change and the position it was read at commit together.
//!
//! A change is applied only when it is newer than what the view holds, judged by the source
//! row's own `revision` column, never by arrival order: redeliveries, replays and a rebuild
//! converge to the same rows. Deleted rows leave a tombstone, so a late change of one never
//! brings it back. Order lines have no revision (they never change after their insert): a
//! line is inserted once and deleted once.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use eda_idempotent_consumer::{Event, Handler, HandlerError};
use sqlx::PgConnection;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::metrics::{Outcome, ProjectionMetrics, Source};
use crate::cdc::{self, Change, Column, Op, Record, Row};

/// Applies change events of `orders`, `order_items` (order-service), `stock` and
/// `reservations` (inventory-service) to the views.
#[derive(Debug, Clone)]
pub struct ChangeEvents {
    /// Counters and freshness per source table.
    pub metrics: Arc<ProjectionMetrics>,
}

fn bad(err: cdc::CdcError) -> HandlerError {
    HandlerError::Permanent(err.0)
}

impl Handler for ChangeEvents {
    async fn handle(&self, event: &Event, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let change = match cdc::decode(&event.payload).map_err(bad)? {
            Record::Change(change) => change,
            Record::Tombstone => {
                self.metrics.skipped("tombstone");
                return Ok(());
            }
            Record::Other(op) => {
                tracing::info!(op, topic = %event.topic, "change event of an op the views do not apply; skipped");
                self.metrics.skipped("other-op");
                return Ok(());
            }
        };
        let Some(source) = Source::of(&change.table) else {
            tracing::warn!(table = %change.table, topic = %event.topic, "change of a table the projection does not know; skipped");
            self.metrics.skipped("unknown-table");
            return Ok(());
        };
        // The writer's trace context, from the source row: the span joins the request's trace.
        let span = tracing::info_span!(
            "project",
            otel.name = %format!("project {}", change.table),
            source.table = %change.table,
            op = ?change.op,
            outcome = tracing::field::Empty,
        );
        if let Some(traceparent) = change
            .after
            .as_ref()
            .and_then(|row| row.optional_text("traceparent").ok())
            .and_then(Column::value)
            .flatten()
        {
            let parent = eda_context::trace::extract(|name| {
                (name == "traceparent").then_some(traceparent.as_str())
            });
            let _ = span.set_parent(parent);
        }
        let outcome = apply(tx, source, &change).instrument(span.clone()).await?;
        span.record("outcome", outcome.label());
        self.metrics.applied(source, outcome, change.committed_at);
        Ok(())
    }
}

/// Applies one change of `source`.
async fn apply(
    tx: &mut PgConnection,
    source: Source,
    change: &Change,
) -> Result<Outcome, HandlerError> {
    let row = change.row().map_err(bad)?;
    let key = source.key(row).map_err(bad)?;
    if change.op == Op::Delete {
        return delete(tx, source, &key, row).await;
    }
    let tombstoned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM view_tombstones WHERE source = $1 AND key = $2)",
    )
    .bind(source.table())
    .bind(&key)
    .fetch_one(&mut *tx)
    .await?;
    if tombstoned {
        return Ok(Outcome::Stale);
    }
    let at = change.committed_at;
    match source {
        Source::Orders => upsert_order(tx, row, at).await,
        Source::OrderItems => insert_line(tx, row, at).await,
        Source::Stock => upsert_stock(tx, row, at).await,
        Source::Reservations => upsert_reservation(tx, row, at).await,
    }
}

/// An order's columns in the view before a change (what the customer summary subtracts).
#[derive(sqlx::FromRow)]
struct Held {
    user_id: String,
    status: String,
    total_cents: i64,
    revision: i64,
    customer_name: String,
    customer_email: String,
}

async fn upsert_order(
    tx: &mut PgConnection,
    row: &Row,
    at: DateTime<Utc>,
) -> Result<Outcome, HandlerError> {
    let id = row.uuid("id").map_err(bad)?;
    let revision = row.int("revision").map_err(bad)?;
    let held: Option<Held> = sqlx::query_as(
        "SELECT user_id, status, total_cents, revision, customer_name, customer_email \
         FROM order_view WHERE order_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if held.as_ref().is_some_and(|h| h.revision >= revision) {
        return Ok(Outcome::Stale);
    }
    // TOASTed text the update left unchanged: keep the view's value.
    let keep = |column: &str, held: Option<&String>| -> Result<String, HandlerError> {
        match row.large_text(column).map_err(bad)? {
            Column::Value(v) => Ok(v),
            Column::Unchanged => held.cloned().ok_or_else(|| {
                HandlerError::Permanent(format!(
                    "column {column} of order {id} is unchanged (TOAST) but the view holds no \
                     earlier revision of the order to keep it from: rebuild the projection"
                ))
            }),
        }
    };
    let customer_name = keep("customer_name", held.as_ref().map(|h| &h.customer_name))?;
    let customer_email = keep("customer_email", held.as_ref().map(|h| &h.customer_email))?;
    let user_id = row.text("user_id").map_err(bad)?;
    let status = row.text("status").map_err(bad)?;
    let total_cents = row.int("total_cents").map_err(bad)?;
    let traceparent = row
        .optional_text("traceparent")
        .map_err(bad)?
        .value()
        .flatten();
    sqlx::query(
        "INSERT INTO order_view (order_id, user_id, customer_name, customer_email, currency, status, \
           total_cents, revision, created_at, updated_at, traceparent, source_committed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (order_id) DO UPDATE SET user_id = EXCLUDED.user_id, \
           customer_name = EXCLUDED.customer_name, customer_email = EXCLUDED.customer_email, \
           currency = EXCLUDED.currency, status = EXCLUDED.status, total_cents = EXCLUDED.total_cents, \
           revision = EXCLUDED.revision, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
           traceparent = EXCLUDED.traceparent, source_committed_at = EXCLUDED.source_committed_at, \
           applied_at = clock_timestamp() \
         WHERE order_view.revision < EXCLUDED.revision",
    )
    .bind(id)
    .bind(&user_id)
    .bind(&customer_name)
    .bind(&customer_email)
    .bind(row.text("currency").map_err(bad)?)
    .bind(&status)
    .bind(total_cents)
    .bind(revision)
    .bind(row.time("created_at").map_err(bad)?)
    .bind(row.time("updated_at").map_err(bad)?)
    .bind(traceparent)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    if let Some(held) = &held {
        summarise(tx, &held.user_id, &held.status, held.total_cents, -1).await?;
    }
    summarise(tx, &user_id, &status, total_cents, 1).await?;
    Ok(Outcome::Applied)
}

/// Adds (`sign` 1) or removes (-1) one order of `status` and `total_cents` to its customer's
/// summary. Confirmed orders count as spent.
async fn summarise(
    tx: &mut PgConnection,
    user_id: &str,
    status: &str,
    total_cents: i64,
    sign: i64,
) -> Result<(), HandlerError> {
    let is = |s: &str| i64::from(status == s) * sign;
    sqlx::query(
        "INSERT INTO customer_summary AS s (user_id, orders, placed, confirmed, rejected, cancelled, spent_cents) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (user_id) DO UPDATE SET orders = s.orders + EXCLUDED.orders, \
           placed = s.placed + EXCLUDED.placed, confirmed = s.confirmed + EXCLUDED.confirmed, \
           rejected = s.rejected + EXCLUDED.rejected, cancelled = s.cancelled + EXCLUDED.cancelled, \
           spent_cents = s.spent_cents + EXCLUDED.spent_cents, updated_at = clock_timestamp()",
    )
    .bind(user_id)
    .bind(sign)
    .bind(is("PLACED"))
    .bind(is("CONFIRMED"))
    .bind(is("REJECTED"))
    .bind(is("CANCELLED"))
    .bind(is("CONFIRMED") * total_cents)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_line(
    tx: &mut PgConnection,
    row: &Row,
    at: DateTime<Utc>,
) -> Result<Outcome, HandlerError> {
    let sku = row.text("sku").map_err(bad)?;
    let quantity = row.int("quantity").map_err(bad)?;
    let inserted = sqlx::query(
        "INSERT INTO order_line_view (order_id, line_no, sku, quantity, unit_price_cents, source_committed_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id, line_no) DO NOTHING",
    )
    .bind(row.uuid("order_id").map_err(bad)?)
    .bind(i32::try_from(row.int("line_no").map_err(bad)?).map_err(|_| {
        HandlerError::Permanent("column line_no is out of the int range".to_owned())
    })?)
    .bind(&sku)
    .bind(i32::try_from(quantity).map_err(|_| {
        HandlerError::Permanent("column quantity is out of the int range".to_owned())
    })?)
    .bind(row.int("unit_price_cents").map_err(bad)?)
    .bind(at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        // Lines never change: the view has it already.
        return Ok(Outcome::Stale);
    }
    count_line(tx, &sku, quantity, 1).await?;
    Ok(Outcome::Applied)
}

/// Adds (`sign` 1) or removes (-1) one line of `quantity` units of `sku`.
async fn count_line(
    tx: &mut PgConnection,
    sku: &str,
    quantity: i64,
    sign: i64,
) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO sku_orders AS s (sku, order_lines, units_ordered) VALUES ($1, $2, $3) \
         ON CONFLICT (sku) DO UPDATE SET order_lines = s.order_lines + EXCLUDED.order_lines, \
           units_ordered = s.units_ordered + EXCLUDED.units_ordered, updated_at = clock_timestamp()",
    )
    .bind(sku)
    .bind(sign)
    .bind(quantity * sign)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn upsert_stock(
    tx: &mut PgConnection,
    row: &Row,
    at: DateTime<Utc>,
) -> Result<Outcome, HandlerError> {
    let applied = sqlx::query(
        "INSERT INTO stock_view (sku, available, reserved, revision, updated_at, source_committed_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, reserved = EXCLUDED.reserved, \
           revision = EXCLUDED.revision, updated_at = EXCLUDED.updated_at, \
           source_committed_at = EXCLUDED.source_committed_at, applied_at = clock_timestamp() \
         WHERE stock_view.revision < EXCLUDED.revision",
    )
    .bind(row.text("sku").map_err(bad)?)
    .bind(row.int("available").map_err(bad)?)
    .bind(row.int("reserved").map_err(bad)?)
    .bind(row.int("revision").map_err(bad)?)
    .bind(row.time("updated_at").map_err(bad)?)
    .bind(at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(Outcome::applied_if(applied))
}

async fn upsert_reservation(
    tx: &mut PgConnection,
    row: &Row,
    at: DateTime<Utc>,
) -> Result<Outcome, HandlerError> {
    let reason = row.optional_text("reason").map_err(bad)?.value().flatten();
    let applied = sqlx::query(
        "INSERT INTO reservation_view (order_id, status, reason, revision, updated_at, source_committed_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, \
           reason = COALESCE(EXCLUDED.reason, reservation_view.reason), revision = EXCLUDED.revision, \
           updated_at = EXCLUDED.updated_at, source_committed_at = EXCLUDED.source_committed_at, \
           applied_at = clock_timestamp() \
         WHERE reservation_view.revision < EXCLUDED.revision",
    )
    .bind(row.uuid("order_id").map_err(bad)?)
    .bind(row.text("status").map_err(bad)?)
    .bind(reason)
    .bind(row.int("revision").map_err(bad)?)
    .bind(row.time("updated_at").map_err(bad)?)
    .bind(at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(Outcome::applied_if(applied))
}

/// A source row was deleted: its view row goes (with what it added to the summaries), and a
/// tombstone stays.
async fn delete(
    tx: &mut PgConnection,
    source: Source,
    key: &str,
    row: &Row,
) -> Result<Outcome, HandlerError> {
    let tombstoned = sqlx::query(
        "INSERT INTO view_tombstones (source, key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(source.table())
    .bind(key)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    match source {
        Source::Orders => {
            let gone: Option<(String, String, i64)> = sqlx::query_as(
                "DELETE FROM order_view WHERE order_id = $1 RETURNING user_id, status, total_cents",
            )
            .bind(row.uuid("id").map_err(bad)?)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((user_id, status, total_cents)) = gone {
                summarise(tx, &user_id, &status, total_cents, -1).await?;
            }
        }
        Source::OrderItems => {
            let gone: Option<(String, i32)> = sqlx::query_as(
                "DELETE FROM order_line_view WHERE order_id = $1 AND line_no = $2 RETURNING sku, quantity",
            )
            .bind(row.uuid("order_id").map_err(bad)?)
            .bind(row.int("line_no").map_err(bad)? as i32)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((sku, quantity)) = gone {
                count_line(tx, &sku, i64::from(quantity), -1).await?;
            }
        }
        Source::Stock => {
            sqlx::query("DELETE FROM stock_view WHERE sku = $1")
                .bind(row.text("sku").map_err(bad)?)
                .execute(&mut *tx)
                .await?;
        }
        Source::Reservations => {
            sqlx::query("DELETE FROM reservation_view WHERE order_id = $1")
                .bind(row.uuid("order_id").map_err(bad)?)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(Outcome::applied_if(tombstoned))
}
