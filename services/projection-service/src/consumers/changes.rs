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
    // Every write below checks the tombstone itself (`WHERE NOT EXISTS`): one round trip
    // less per change.
    let at = change.committed_at;
    match source {
        Source::Orders => upsert_order(tx, row, &key, at).await,
        Source::OrderItems => insert_line(tx, row, &key, at).await,
        Source::Stock => upsert_stock(tx, row, &key, at).await,
        Source::Reservations => upsert_reservation(tx, row, &key, at).await,
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
    key: &str,
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
    let applied = sqlx::query(
        "INSERT INTO order_view (order_id, user_id, customer_name, customer_email, currency, status, \
           total_cents, revision, created_at, updated_at, traceparent, source_committed_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 \
         WHERE NOT EXISTS (SELECT 1 FROM view_tombstones WHERE source = 'orders' AND key = $13) \
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
    .bind(key)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if applied == 0 {
        // Deleted at the source (tombstone).
        return Ok(Outcome::Stale);
    }
    let mut delta = Summary::default();
    delta.add(&status, total_cents, 1);
    match &held {
        Some(h) if h.user_id == user_id => delta.add(&h.status, h.total_cents, -1),
        Some(h) => {
            // The order changed hands: two customers' summaries change.
            let mut old = Summary::default();
            old.add(&h.status, h.total_cents, -1);
            summarise(tx, &h.user_id, &old).await?;
        }
        None => {}
    }
    summarise(tx, &user_id, &delta).await?;
    Ok(Outcome::Applied)
}

/// What one change does to a customer's summary.
#[derive(Debug, Default)]
struct Summary {
    orders: i64,
    placed: i64,
    confirmed: i64,
    rejected: i64,
    cancelled: i64,
    spent_cents: i64,
}

impl Summary {
    /// Adds (`sign` 1) or removes (-1) one order of `status` and `total_cents`. Confirmed
    /// orders count as spent.
    fn add(&mut self, status: &str, total_cents: i64, sign: i64) {
        self.orders += sign;
        match status {
            "PLACED" => self.placed += sign,
            "CONFIRMED" => {
                self.confirmed += sign;
                self.spent_cents += sign * total_cents;
            }
            "REJECTED" => self.rejected += sign,
            "CANCELLED" => self.cancelled += sign,
            _ => {}
        }
    }
}

/// Applies `delta` to `user_id`'s summary, in one statement.
async fn summarise(
    tx: &mut PgConnection,
    user_id: &str,
    delta: &Summary,
) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO customer_summary AS s (user_id, orders, placed, confirmed, rejected, cancelled, spent_cents) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (user_id) DO UPDATE SET orders = s.orders + EXCLUDED.orders, \
           placed = s.placed + EXCLUDED.placed, confirmed = s.confirmed + EXCLUDED.confirmed, \
           rejected = s.rejected + EXCLUDED.rejected, cancelled = s.cancelled + EXCLUDED.cancelled, \
           spent_cents = s.spent_cents + EXCLUDED.spent_cents, updated_at = clock_timestamp()",
    )
    .bind(user_id)
    .bind(delta.orders)
    .bind(delta.placed)
    .bind(delta.confirmed)
    .bind(delta.rejected)
    .bind(delta.cancelled)
    .bind(delta.spent_cents)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_line(
    tx: &mut PgConnection,
    row: &Row,
    key: &str,
    at: DateTime<Utc>,
) -> Result<Outcome, HandlerError> {
    let int = |column: &str| -> Result<i32, HandlerError> {
        i32::try_from(row.int(column).map_err(bad)?).map_err(|_| {
            HandlerError::Permanent(format!("column {column} is out of the int range"))
        })
    };
    // The line, unless the view has it (lines never change) or it was deleted, and its units
    // counted for the SKU only if it went in: one statement.
    let counted = sqlx::query(
        "WITH line AS ( \
           INSERT INTO order_line_view (order_id, line_no, sku, quantity, unit_price_cents, source_committed_at) \
           SELECT $1, $2, $3, $4, $5, $6 \
           WHERE NOT EXISTS (SELECT 1 FROM view_tombstones WHERE source = 'order_items' AND key = $7) \
           ON CONFLICT (order_id, line_no) DO NOTHING RETURNING sku, quantity) \
         INSERT INTO sku_orders AS s (sku, order_lines, units_ordered) \
         SELECT sku, 1, quantity FROM line \
         ON CONFLICT (sku) DO UPDATE SET order_lines = s.order_lines + 1, \
           units_ordered = s.units_ordered + EXCLUDED.units_ordered, updated_at = clock_timestamp()",
    )
    .bind(row.uuid("order_id").map_err(bad)?)
    .bind(int("line_no")?)
    .bind(row.text("sku").map_err(bad)?)
    .bind(int("quantity")?)
    .bind(row.int("unit_price_cents").map_err(bad)?)
    .bind(at)
    .bind(key)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(Outcome::applied_if(counted))
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
    key: &str,
    at: DateTime<Utc>,
) -> Result<Outcome, HandlerError> {
    let applied = sqlx::query(
        "INSERT INTO stock_view (sku, available, reserved, revision, updated_at, source_committed_at) \
         SELECT $1, $2, $3, $4, $5, $6 \
         WHERE NOT EXISTS (SELECT 1 FROM view_tombstones WHERE source = 'stock' AND key = $7) \
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
    .bind(key)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(Outcome::applied_if(applied))
}

async fn upsert_reservation(
    tx: &mut PgConnection,
    row: &Row,
    key: &str,
    at: DateTime<Utc>,
) -> Result<Outcome, HandlerError> {
    let reason = row.optional_text("reason").map_err(bad)?.value().flatten();
    let applied = sqlx::query(
        "INSERT INTO reservation_view (order_id, status, reason, revision, updated_at, source_committed_at) \
         SELECT $1, $2, $3, $4, $5, $6 \
         WHERE NOT EXISTS (SELECT 1 FROM view_tombstones WHERE source = 'reservations' AND key = $7) \
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
    .bind(key)
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
                let mut delta = Summary::default();
                delta.add(&status, total_cents, -1);
                summarise(tx, &user_id, &delta).await?;
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

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn a_status_change_moves_one_order_between_counts_and_spends_on_confirmation() {
        let mut delta = Summary::default();
        delta.add("CONFIRMED", 500, 1);
        delta.add("PLACED", 500, -1);
        assert_eq!(
            (
                delta.orders,
                delta.placed,
                delta.confirmed,
                delta.spent_cents
            ),
            (0, -1, 1, 500)
        );
        let mut cancel = Summary::default();
        cancel.add("CANCELLED", 500, 1);
        cancel.add("CONFIRMED", 500, -1);
        assert_eq!(
            (
                cancel.orders,
                cancel.confirmed,
                cancel.cancelled,
                cancel.spent_cents
            ),
            (0, -1, 1, -500)
        );
        let mut new = Summary::default();
        new.add("PLACED", 700, 1);
        assert_eq!((new.orders, new.placed, new.spent_cents), (1, 1, 0));
    }
}
