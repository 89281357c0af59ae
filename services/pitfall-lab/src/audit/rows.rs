//! The rows the audit reads, as the migrations define them (`migrations/*/`): the services'
//! business tables and projection-service's views. Only the columns the checks compare.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::contract::Aggregate;

/// `orders` (order-service) or `order_view` (projection-service, `order_id` read as `id`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
    /// Primary key.
    pub id: Uuid,
    /// Owner.
    pub user_id: String,
    /// Customer name.
    pub customer_name: String,
    /// Customer e-mail.
    pub customer_email: String,
    /// ISO 4217 code.
    pub currency: String,
    /// PLACED, CONFIRMED, REJECTED, CANCELLED.
    pub status: String,
    /// Total in cents.
    pub total_cents: i64,
    /// Changes the row went through.
    pub revision: i64,
    /// Insert time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// `order_items` or `order_line_view`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LineRow {
    /// The order.
    pub order_id: Uuid,
    /// 1-based line number.
    pub line_no: i32,
    /// SKU.
    pub sku: String,
    /// Units.
    pub quantity: i32,
    /// Cents per unit.
    pub unit_price_cents: i64,
}

impl LineRow {
    /// The key `view_tombstones` and the CDC topics use: `<order id>/<line no>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.order_id, self.line_no)
    }
}

/// `reservations` (inventory-service).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReservationRow {
    /// The order reserved for.
    pub order_id: Uuid,
    /// RESERVED, REJECTED, RELEASED.
    pub status: String,
    /// `[{"sku": .., "quantity": ..}]`: what the order wanted, per SKU.
    pub lines: serde_json::Value,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// Changes the row went through.
    pub revision: i64,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// `reservation_view` (projection-service), or the same columns of `reservations`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReservationViewRow {
    /// The order.
    pub order_id: Uuid,
    /// Status.
    pub status: String,
    /// Reason.
    pub reason: Option<String>,
    /// Revision.
    pub revision: i64,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<&ReservationRow> for ReservationViewRow {
    fn from(row: &ReservationRow) -> Self {
        Self {
            order_id: row.order_id,
            status: row.status.clone(),
            reason: row.reason.clone(),
            revision: row.revision,
            updated_at: row.updated_at,
        }
    }
}

/// `stock` (inventory-service) or `stock_view` (projection-service).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StockRow {
    /// SKU.
    pub sku: String,
    /// Free to reserve.
    pub available: i64,
    /// Held by reservations.
    pub reserved: i64,
    /// Changes the row went through.
    pub revision: i64,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// `customer_summary` (projection-service), or what it should hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Summary {
    /// Orders.
    pub orders: i64,
    /// PLACED ones.
    pub placed: i64,
    /// CONFIRMED ones.
    pub confirmed: i64,
    /// REJECTED ones.
    pub rejected: i64,
    /// CANCELLED ones.
    pub cancelled: i64,
    /// Total of the CONFIRMED ones.
    pub spent_cents: i64,
}

impl Summary {
    /// Counts one order of `status` and `total_cents`.
    pub fn add(&mut self, status: &str, total_cents: i64) {
        self.orders += 1;
        match status {
            "PLACED" => self.placed += 1,
            "CONFIRMED" => {
                self.confirmed += 1;
                self.spent_cents += total_cents;
            }
            "REJECTED" => self.rejected += 1,
            "CANCELLED" => self.cancelled += 1,
            _ => {}
        }
    }
}

/// `sku_orders` (projection-service), or what it should hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct SkuOrders {
    /// Order lines of the SKU.
    pub order_lines: i64,
    /// Units over those lines.
    pub units_ordered: i64,
}

/// What checks 1, 2, 3 and 5 keep of an order or a reservation: little, since there is one
/// per aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// The status, as the contract spells it (`"?"` for one it does not know).
    pub status: &'static str,
    /// The revision.
    pub revision: i64,
}

impl State {
    /// The state of a row of `aggregate` in `status` at `revision`.
    pub fn of(aggregate: &Aggregate, status: &str, revision: i64) -> Self {
        let status = aggregate
            .statuses
            .iter()
            .find(|s| s.0 == status)
            .map_or("?", |s| s.0);
        Self { status, revision }
    }
}

/// An unpublished outbox row (`published_at IS NULL`): an event on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// `revision`.
    pub revision: i64,
    /// `event_id` (for a chunk, its message's id).
    pub id: Uuid,
    /// Kafka refused it for good; it waits for `pitfall-lab outbox release`.
    pub parked: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::contract::{ORDER, RESERVATION};

    #[test]
    fn a_summary_counts_statuses_and_spends_on_confirmation() {
        let mut s = Summary::default();
        s.add("CONFIRMED", 500);
        s.add("PLACED", 100);
        s.add("CANCELLED", 700);
        assert_eq!(
            s,
            Summary {
                orders: 3,
                placed: 1,
                confirmed: 1,
                rejected: 0,
                cancelled: 1,
                spent_cents: 500
            }
        );
    }

    #[test]
    fn states_use_the_contract_spelling() {
        assert_eq!(State::of(&ORDER, "CONFIRMED", 2).status, "CONFIRMED");
        assert_eq!(State::of(&RESERVATION, "CONFIRMED", 2).status, "?");
    }
}
