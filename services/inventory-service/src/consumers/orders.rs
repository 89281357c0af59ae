//! `order.events` → reservations. Each handler call runs inside the consumer runtime's
//! transaction, so the stock change, the reservation row, the outgoing event (outbox), the
//! dedupe record and the order's last applied revision commit together or not at all.

use std::collections::BTreeMap;

use eda_idempotent_consumer::{Event, Handler, HandlerError, Propagation, expect_one_row};
use eda_outbox::{OutboxEvent, enqueue};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use tracing::Instrument as _;
use uuid::Uuid;

/// Handles the order events inventory cares about.
#[derive(Debug, Clone)]
pub struct OrderEvents {
    /// Where `Inventory*` events go.
    pub inventory_topic: String,
    /// Whether emitted events carry the incoming event's context (`PROPAGATION`).
    pub propagation: Propagation,
}

#[derive(Debug, Deserialize)]
struct Line {
    sku: String,
    quantity: i64,
}

#[derive(Debug, Deserialize)]
struct OrderPlaced {
    order_id: Uuid,
    lines: Vec<Line>,
}

#[derive(Debug, Deserialize)]
struct OrderCancelled {
    order_id: Uuid,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
struct Reserved {
    sku: String,
    quantity: i64,
}

fn permanent(what: &str) -> impl FnOnce(eda_outbox::Error) -> HandlerError + '_ {
    move |err| HandlerError::Permanent(format!("{what}: {err}"))
}

impl OrderEvents {
    async fn emit(
        &self,
        tx: &mut PgConnection,
        source: &Event,
        order_id: Uuid,
        event_type: &str,
        revision: i64,
        body: serde_json::Value,
    ) -> Result<(), HandlerError> {
        // Context travels on (sanitised by the runtime): same request, correlation and user,
        // caused by `source`, and the current span as the trace parent of the next hop.
        let context = source.outgoing_context(self.propagation);
        let event = OutboxEvent::json(
            &self.inventory_topic,
            "Reservation",
            &order_id.to_string(),
            event_type,
            revision,
            &body,
        )
        .and_then(|e| e.with_headers(context))
        .map_err(permanent("building the outgoing event"))?;
        enqueue(tx, &event)
            .await
            .map_err(|e| HandlerError::Transient(Box::new(e)))
    }

    async fn place(&self, event: &Event, tx: &mut PgConnection) -> Result<(), HandlerError> {
        // No "already decided?" check here: the runtime hands this handler each order's
        // events once and newest-last (dedupe by event id, plus the revision guard: a
        // republished, redelivered or redriven OrderPlaced after a newer event of the order is
        // skipped before it gets here). The handler does not know, or need to know, which
        // dedupe mode runs.
        let order: OrderPlaced = event.json()?;
        let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
        for line in &order.lines {
            if line.quantity <= 0 {
                return Err(HandlerError::Permanent(format!(
                    "line {} has quantity {}",
                    line.sku, line.quantity
                )));
            }
            *wanted.entry(line.sku.clone()).or_default() += line.quantity;
        }
        let skus: Vec<String> = wanted.keys().cloned().collect();
        // Lock in SKU order: two orders touching the same SKUs never deadlock.
        let rows: Vec<(String, i64, i64)> = sqlx::query_as("SELECT sku, available, revision FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE")
            .bind(&skus)
            .fetch_all(&mut *tx)
            .await?;
        let short: Vec<String> = wanted
            .iter()
            .filter_map(|(sku, qty)| match rows.iter().find(|r| &r.0 == sku) {
                None => Some(format!("{sku}: unknown SKU")),
                Some((_, available, _)) if available < qty => {
                    Some(format!("{sku}: {qty} wanted, {available} available"))
                }
                Some(_) => None,
            })
            .collect();
        let lines: Vec<Reserved> = wanted
            .iter()
            .map(|(sku, quantity)| Reserved {
                sku: sku.clone(),
                quantity: *quantity,
            })
            .collect();
        if !short.is_empty() {
            let reason = short.join("; ");
            sqlx::query(
                "INSERT INTO reservations (order_id, status, lines, reason) VALUES ($1, 'REJECTED', $2, $3) \
                 ON CONFLICT (order_id) DO UPDATE SET status = 'REJECTED', reason = EXCLUDED.reason, updated_at = now()",
            )
            .bind(order.order_id)
            .bind(json!(lines))
            .bind(&reason)
            .execute(&mut *tx)
            .await?;
            tracing::info!(order.id = %order.order_id, reason = %reason, "reservation rejected");
            return self
                .emit(
                    tx,
                    event,
                    order.order_id,
                    "InventoryRejected",
                    1,
                    json!({"order_id": order.order_id, "reason": reason}),
                )
                .await;
        }
        for (sku, available, revision) in &rows {
            let qty = wanted[sku];
            let updated = sqlx::query(
                "UPDATE stock SET available = $2, reserved = reserved + $3, revision = revision + 1, updated_at = now() \
                 WHERE sku = $1 AND revision = $4",
            )
            .bind(sku)
            .bind(available - qty)
            .bind(qty)
            .bind(revision)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            expect_one_row(updated, &format!("stock {sku}"))?;
        }
        sqlx::query(
            "INSERT INTO reservations (order_id, status, lines) VALUES ($1, 'RESERVED', $2) \
             ON CONFLICT (order_id) DO UPDATE SET status = 'RESERVED', revision = reservations.revision + 1, updated_at = now()",
        )
        .bind(order.order_id)
        .bind(json!(lines))
        .execute(&mut *tx)
        .await?;
        tracing::info!(order.id = %order.order_id, skus = lines.len(), "stock reserved");
        self.emit(
            tx,
            event,
            order.order_id,
            "InventoryReserved",
            1,
            json!({"order_id": order.order_id, "lines": lines}),
        )
        .await
    }

    async fn cancel(&self, event: &Event, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let order: OrderCancelled = event.json()?;
        let row: Option<(String, serde_json::Value, i64)> = sqlx::query_as(
            "SELECT status, lines, revision FROM reservations WHERE order_id = $1 FOR UPDATE",
        )
        .bind(order.order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, lines, revision)) = row else {
            return Ok(()); // nothing was reserved for this order
        };
        if status != "RESERVED" {
            return Ok(()); // rejected, or released already: releasing twice would create stock
        }
        let lines: Vec<Reserved> = serde_json::from_value(lines)
            .map_err(|e| HandlerError::Permanent(format!("stored reservation unreadable: {e}")))?;
        for line in &lines {
            sqlx::query(
                "UPDATE stock SET available = available + $2, reserved = reserved - $2, revision = revision + 1, updated_at = now() WHERE sku = $1",
            )
            .bind(&line.sku)
            .bind(line.quantity)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE reservations SET status = 'RELEASED', revision = revision + 1, updated_at = now() WHERE order_id = $1")
            .bind(order.order_id)
            .execute(&mut *tx)
            .await?;
        tracing::info!(order.id = %order.order_id, "reservation released");
        self.emit(
            tx,
            event,
            order.order_id,
            "InventoryReleased",
            revision + 1,
            json!({"order_id": order.order_id}),
        )
        .await
    }
}

/// The record's key (the order id) when it is safe to show in a span.
fn order_key(event: &Event) -> Option<&str> {
    event
        .key
        .as_deref()
        .and_then(|k| eda_context::sanitize::printable(k, 64))
}

impl Handler for OrderEvents {
    async fn handle(&self, event: &Event, tx: &mut PgConnection) -> Result<(), HandlerError> {
        match event.event_type.as_str() {
            "OrderPlaced" => {
                let span = tracing::info_span!("reserve stock", order.id = order_key(event));
                self.place(event, tx).instrument(span).await
            }
            "OrderCancelled" => {
                let span = tracing::info_span!("release stock", order.id = order_key(event));
                self.cancel(event, tx).instrument(span).await
            }
            // order-service's own outcomes travel on the same topic; nothing to do here.
            "OrderConfirmed" | "OrderRejected" => Ok(()),
            other => Err(HandlerError::Permanent(format!(
                "unknown event type {other} on the order topic"
            ))),
        }
    }
}
