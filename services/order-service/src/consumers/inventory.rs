//! The order saga's second half: `inventory.events` → the order becomes CONFIRMED or REJECTED
//! (revision + 1) and says so with `OrderConfirmed` / `OrderRejected`, in the same transaction
//! as the consumer's dedupe record.

use eda_idempotent_consumer::{Event, Handler, HandlerError, Propagation};
use eda_outbox::{OutboxEvent, enqueue};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

/// Applies reservation outcomes to orders.
#[derive(Debug, Clone)]
pub struct InventoryOutcomes {
    /// Where `OrderConfirmed` / `OrderRejected` go.
    pub order_topic: String,
    /// Whether the emitted events carry the incoming event's context.
    pub propagation: Propagation,
}

#[derive(Debug, Deserialize)]
struct Outcome {
    order_id: Uuid,
    #[serde(default)]
    reason: Option<String>,
}

impl InventoryOutcomes {
    async fn decide(
        &self,
        event: &Event,
        tx: &mut PgConnection,
        status: &str,
        event_type: &str,
    ) -> Result<(), HandlerError> {
        let outcome: Outcome = event.json()?;
        // Only a PLACED order moves: a cancelled one stays cancelled (inventory releases its
        // stock when it sees the cancel), and a decided one is not decided twice.
        let row: Option<(i64, String)> = sqlx::query_as(
            "UPDATE orders SET status = $2, revision = revision + 1, updated_at = now(), traceparent = $3 \
             WHERE id = $1 AND status = 'PLACED' RETURNING revision, user_id",
        )
        .bind(outcome.order_id)
        .bind(status)
        // The event's trace goes on in the row, for CDC readers.
        .bind(
            self.propagation
                .is_on()
                .then(eda_context::trace::current_traceparent)
                .flatten(),
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((revision, user_id)) = row else {
            tracing::info!(order.id = %outcome.order_id, outcome = event_type, "order not PLACED (cancelled, decided or unknown); nothing to do");
            return Ok(());
        };
        let body =
            json!({"order_id": outcome.order_id, "user_id": user_id, "reason": outcome.reason});
        // Context travels on (sanitised by the runtime); the order's owner from our own row is
        // the user: a user id read from a header is context, not a credential.
        let context = event
            .context
            .caused_by(&event.event_id.to_string())
            .with_user(&user_id);
        let out = OutboxEvent::json(
            &self.order_topic,
            "Order",
            &outcome.order_id.to_string(),
            event_type,
            revision,
            &body,
        )
        .and_then(|e| e.with_headers(self.propagation.outgoing(&context)))
        .map_err(|e| HandlerError::Permanent(format!("building {event_type}: {e}")))?;
        enqueue(tx, &out)
            .await
            .map_err(|e| HandlerError::Transient(Box::new(e)))?;
        tracing::info!(order.id = %outcome.order_id, status, "order decided");
        Ok(())
    }
}

impl Handler for InventoryOutcomes {
    async fn handle(&self, event: &Event, tx: &mut PgConnection) -> Result<(), HandlerError> {
        match event.event_type.as_str() {
            "InventoryReserved" => self.decide(event, tx, "CONFIRMED", "OrderConfirmed").await,
            "InventoryRejected" => self.decide(event, tx, "REJECTED", "OrderRejected").await,
            "InventoryReleased" => Ok(()),
            other => Err(HandlerError::Permanent(format!(
                "unknown event type {other} on the inventory topic"
            ))),
        }
    }
}
