//! What the auditor knows about the system: the published contract (topics, headers, tables,
//! statuses), written down here from the READMEs and migrations, never taken from the services'
//! code. If a service changes its contract, this table changes with it, on purpose.

/// Headers of the message contract the audit reads (`crates/outbox/src/headers.rs` lists all).
pub mod headers {
    /// UUIDv7 of the event; redeliveries and republished copies keep it.
    pub const EVENT_ID: &str = "event-id";
    /// `OrderPlaced`, `InventoryReserved`, ...
    pub const EVENT_TYPE: &str = "event-type";
    /// `Order`, `Reservation`.
    pub const AGGREGATE_TYPE: &str = "aggregate-type";
    /// The aggregate's id; also the record's key.
    pub const AGGREGATE_ID: &str = "aggregate-id";
    /// The aggregate's revision after the change.
    pub const REVISION: &str = "revision";
    /// Event id of a whole chunked message: every chunk has its own `event-id`, and the chunks
    /// of one message are one event.
    pub const CHUNK_MESSAGE_ID: &str = "chunk-message-id";
    /// Set by the consumer runtime on a dead letter: the topic the record was read from.
    pub const DLQ_ORIGINAL_TOPIC: &str = "dlq-original-topic";
    /// Set on a dead letter: the group that refused it.
    pub const DLQ_CONSUMER_GROUP: &str = "dlq-consumer-group";
}

/// One kind of aggregate: the table that holds it, the topic its events go to, and which event
/// each of its statuses is announced by.
#[derive(Debug)]
pub struct Aggregate {
    /// The `aggregate-type` header.
    pub aggregate_type: &'static str,
    /// How a report names one (`order`, `reservation`).
    pub noun: &'static str,
    /// `(status, event type announcing it, lowest revision, highest revision)`: the revision
    /// a row in that status has when every change was applied once (a revision is the number of
    /// changes the row went through).
    pub statuses: &'static [(&'static str, &'static str, i64, i64)],
    /// Event types that create the aggregate (its revision 1).
    pub creations: &'static [&'static str],
}

impl Aggregate {
    /// The event type that announces `status`.
    pub fn event_for(&self, status: &str) -> Option<&'static str> {
        self.statuses.iter().find(|s| s.0 == status).map(|s| s.1)
    }

    /// The revisions a row in `status` may have.
    pub fn revisions_for(&self, status: &str) -> Option<(i64, i64)> {
        self.statuses
            .iter()
            .find(|s| s.0 == status)
            .map(|s| (s.2, s.3))
    }

    /// Whether `event_type` is one of this aggregate's events.
    pub fn knows(&self, event_type: &str) -> bool {
        self.statuses.iter().any(|s| s.1 == event_type)
    }
}

/// order-service's orders (`orders` table, `order.events`). PLACED is revision 1; CONFIRMED,
/// REJECTED or CANCELLED revision 2; CANCELLED after CONFIRMED revision 3.
pub const ORDER: Aggregate = Aggregate {
    aggregate_type: "Order",
    noun: "order",
    statuses: &[
        ("PLACED", "OrderPlaced", 1, 1),
        ("CONFIRMED", "OrderConfirmed", 2, 2),
        ("REJECTED", "OrderRejected", 2, 2),
        ("CANCELLED", "OrderCancelled", 2, 3),
    ],
    creations: &["OrderPlaced"],
};

/// inventory-service's reservations (`reservations` table, `inventory.events`): one per order,
/// RESERVED or REJECTED at revision 1, RELEASED (after a cancel) at revision 2.
pub const RESERVATION: Aggregate = Aggregate {
    aggregate_type: "Reservation",
    noun: "reservation",
    statuses: &[
        ("RESERVED", "InventoryReserved", 1, 1),
        ("REJECTED", "InventoryRejected", 1, 1),
        ("RELEASED", "InventoryReleased", 2, 2),
    ],
    creations: &["InventoryReserved", "InventoryRejected"],
};

/// The source tables Debezium's table connectors capture (`infra/debezium/register.sh --cdc`)
/// and projection-service's views of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// order-service's `orders` → `order_view` (+ `customer_summary`).
    Orders,
    /// order-service's `order_items` → `order_line_view` (+ `sku_orders`). No revision: lines
    /// never change after their insert.
    OrderItems,
    /// inventory-service's `stock` → `stock_view`.
    Stock,
    /// inventory-service's `reservations` → `reservation_view`.
    Reservations,
}

impl Table {
    /// Every captured table.
    pub const ALL: [Table; 4] = [
        Table::Orders,
        Table::OrderItems,
        Table::Stock,
        Table::Reservations,
    ];

    /// The table's name, as Debezium's `source.table` and `view_tombstones.source` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Table::Orders => "orders",
            Table::OrderItems => "order_items",
            Table::Stock => "stock",
            Table::Reservations => "reservations",
        }
    }

    /// The table named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The view projection-service keeps of it.
    pub fn view(self) -> &'static str {
        match self {
            Table::Orders => "order_view",
            Table::OrderItems => "order_line_view",
            Table::Stock => "stock_view",
            Table::Reservations => "reservation_view",
        }
    }

    /// Whether its rows carry a `revision` column.
    pub fn has_revision(self) -> bool {
        self != Table::OrderItems
    }

    /// The primary key of a row as one string (the form `view_tombstones.key` uses: the key
    /// columns joined by `/`), from the row's columns in a change event.
    pub fn key_of(self, row: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        let text = |column: &str| match row.get(column)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match self {
            Table::Orders => text("id"),
            Table::OrderItems => Some(format!("{}/{}", text("order_id")?, text("line_no")?)),
            Table::Stock => text("sku"),
            Table::Reservations => text("order_id"),
        }
    }
}

/// The default topics: what `infra/env.sh` creates and the services' settings default to.
pub mod defaults {
    /// order-service's events (`ORDER_EVENTS_TOPIC`).
    pub const ORDER_TOPIC: &str = "order.events";
    /// inventory-service's events (`INVENTORY_EVENTS_TOPIC`).
    pub const INVENTORY_TOPIC: &str = "inventory.events";
    /// The CDC topics projection-service reads (`CDC_TOPICS`).
    pub const CDC_TOPICS: &str = "cdc.orders.public.orders,cdc.orders.public.order_items,cdc.inventory.public.stock,cdc.inventory.public.reservations";
    /// Consumer groups (each service's `CONSUMER_GROUP` default).
    pub const ORDER_GROUP: &str = "order-service";
    /// inventory-service's group.
    pub const INVENTORY_GROUP: &str = "inventory-service";
    /// projection-service's group.
    pub const PROJECTION_GROUP: &str = "projection-service";
    /// Every service's outbox table (eda-outbox's default).
    pub const OUTBOX_TABLE: &str = "outbox";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_one_event_and_a_revision_range() {
        assert_eq!(ORDER.event_for("CONFIRMED"), Some("OrderConfirmed"));
        assert_eq!(ORDER.revisions_for("CANCELLED"), Some((2, 3)));
        assert_eq!(RESERVATION.event_for("RELEASED"), Some("InventoryReleased"));
        assert_eq!(RESERVATION.revisions_for("NOPE"), None);
        assert!(ORDER.knows("OrderPlaced") && !ORDER.knows("InventoryReserved"));
    }

    #[test]
    fn table_keys_match_the_tombstone_spelling() {
        let row = serde_json::json!({"order_id": "a", "line_no": 3, "sku": "S"});
        let row = row.as_object().unwrap();
        assert_eq!(Table::OrderItems.key_of(row).as_deref(), Some("a/3"));
        assert_eq!(Table::Stock.key_of(row).as_deref(), Some("S"));
        assert_eq!(Table::Orders.key_of(row), None);
        assert_eq!(Table::parse("stock"), Some(Table::Stock));
    }
}
