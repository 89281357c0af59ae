//! Check 5: the stock books.
//!
//! From the schema (`migrations/inventory-service`) and the contract:
//! - a reservation holds, per SKU, the units of its order (`lines` = the order's
//!   `order_items` summed by SKU), and only a RESERVED one holds them: for every SKU,
//!   `stock.reserved` = Σ the lines of the RESERVED reservations (both in inventory-service's
//!   database, changed in one transaction, so exact);
//! - `available + reserved` is what was put in: it changes only when an admin sets
//!   `available`, which leaves `reserved` alone; a reservation or a release moves units between
//!   the two (checked step by step on the stock table's change events, see `cdc`);
//! - the saga across the two services: an order's status and its reservation's status must be
//!   a pair the flow can produce (CONFIRMED ↔ RESERVED, REJECTED ↔ REJECTED, CANCELLED ↔
//!   released, rejected or none), unless the event that brings them together is still in flight:
//!   not consumed yet by the service that must act on it (its committed position, in Kafka or
//!   in its `consumer_offsets` table, is not past the event), or dead-lettered.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use super::cdc::{self, StockState};
use super::events::{AggregateEvents, DeadLetters, EventTopic, Logged};
use super::report::{Check, Findings};
use super::rows::{LineRow, ReservationRow, State, StockRow};

/// The units per SKU of a reservation's `lines` (`[{"sku": .., "quantity": ..}]`).
pub fn reservation_lines(lines: &serde_json::Value) -> Option<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for line in lines.as_array()? {
        let sku = line.get("sku")?.as_str()?;
        let quantity = line.get("quantity")?.as_i64()?;
        *out.entry(sku.to_owned()).or_default() += quantity;
    }
    Some(out)
}

/// The units per SKU of an order's lines.
pub fn order_lines(items: &[LineRow]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for item in items {
        *out.entry(item.sku.clone()).or_default() += i64::from(item.quantity);
    }
    out
}

fn show(lines: &BTreeMap<String, i64>) -> String {
    let parts: Vec<String> = lines
        .iter()
        .take(5)
        .map(|(sku, q)| format!("{sku}×{q}"))
        .collect();
    let more = lines.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", parts.join(", "))
    } else {
        parts.join(", ")
    }
}

/// What the RESERVED reservations hold, per SKU.
#[derive(Debug, Default)]
pub struct Books {
    held: HashMap<String, i64>,
}

impl Books {
    /// One reservation with its order's lines (`order_known`: the order exists, so an empty
    /// `items` means it really has no lines).
    pub fn reservation(
        &mut self,
        row: &ReservationRow,
        items: &[LineRow],
        order_known: bool,
        findings: &mut Findings,
    ) {
        let Some(lines) = reservation_lines(&row.lines) else {
            findings.violation(Check::Stock, "unreadable-lines", || {
                (
                    format!("reservation {}", row.order_id),
                    format!("lines {} are not [{{sku, quantity}}]", row.lines),
                )
            });
            return;
        };
        if row.status == "RESERVED" {
            for (sku, quantity) in &lines {
                *self.held.entry(sku.clone()).or_default() += quantity;
            }
        }
        if order_known {
            let ordered = order_lines(items);
            if ordered != lines {
                findings.violation(Check::Stock, "lines-differ", || {
                    (
                        format!("reservation {}", row.order_id),
                        format!(
                            "{} holds {} but the order's lines are {}",
                            row.status,
                            show(&lines),
                            show(&ordered)
                        ),
                    )
                });
            }
        }
    }

    /// Every SKU's `reserved` against what the RESERVED reservations hold.
    pub fn close(&self, stock: &HashMap<String, StockRow>, findings: &mut Findings) {
        let mut skus: Vec<&String> = stock.keys().chain(self.held.keys()).collect();
        skus.sort();
        skus.dedup();
        for sku in skus {
            let held = self.held.get(sku).copied().unwrap_or(0);
            match stock.get(sku) {
                Some(row) if row.reserved != held => {
                    findings.violation(Check::Stock, "reserved-mismatch", || {
                        (
                            format!("sku {sku}"),
                            format!(
                                "stock says reserved {} (available {}), the RESERVED reservations \
                                 hold {held}",
                                row.reserved, row.available
                            ),
                        )
                    });
                }
                Some(_) => {}
                None => findings.violation(Check::Stock, "no-stock-row", || {
                    (
                        format!("sku {sku}"),
                        format!(
                            "RESERVED reservations hold {held} units of a SKU without a stock row"
                        ),
                    )
                }),
            }
        }
    }
}

/// Each stock row against the last change event of it read: one revision later, the step
/// must balance too (an equal revision was compared as the events were read).
pub fn against_changes(
    stock: &HashMap<String, StockRow>,
    changes: &HashMap<String, StockState>,
    findings: &mut Findings,
) {
    for (sku, row) in stock {
        let now = StockState {
            revision: row.revision,
            available: row.available,
            reserved: row.reserved,
        };
        if let Some(last) = changes.get(sku)
            && now.revision == last.revision + 1
            && !last.balanced_step(now)
        {
            findings.violation(Check::Stock, "unbalanced-step", || {
                cdc::unbalanced(sku, *last, now)
            });
        }
    }
}

/// Where the consumers are, for telling an event in flight from one whose effect is missing.
#[derive(Debug, Default)]
pub struct Consumers {
    /// inventory-service's group.
    pub inventory_group: String,
    /// inventory-service's positions on the order topic: `(topic, partition)` → next offset.
    pub inventory: HashMap<(String, i32), i64>,
    /// order-service's group.
    pub order_group: String,
    /// order-service's positions on the inventory topic.
    pub orders: HashMap<(String, i32), i64>,
}

/// Whether the effect of `event` (of `topic`) must be visible: consumed, unless dead-lettered.
enum Fate {
    Pending,
    Applied,
    DeadLettered,
}

fn fate(
    event: &Logged,
    topic: &str,
    positions: &HashMap<(String, i32), i64>,
    group: &str,
    dead: &DeadLetters,
) -> Fate {
    if dead.refused_by(topic, event.id, group) {
        Fate::DeadLettered
    } else if positions
        .get(&(topic.to_owned(), event.partition))
        .is_some_and(|next| event.offset < *next)
    {
        Fate::Applied
    } else {
        Fate::Pending
    }
}

fn find<'a>(
    topic: &'a EventTopic,
    events: Option<&'a AggregateEvents>,
    types: &[&str],
) -> Option<&'a Logged> {
    events?
        .events
        .iter()
        .rev()
        .find(|e| types.contains(&topic.types.name(e.event_type)))
}

/// The saga's pairs of statuses (orders read after reservations, so an order may be ahead).
pub fn saga(
    orders: &HashMap<Uuid, State>,
    reservations: &HashMap<Uuid, State>,
    (order_topic, inventory_topic): (&EventTopic, &EventTopic),
    consumers: &Consumers,
    dead: &DeadLetters,
    findings: &mut Findings,
) {
    for (id, reservation) in reservations {
        if !orders.contains_key(id) {
            findings.violation(Check::Stock, "reservation-without-order", || {
                (
                    format!("reservation {id}"),
                    format!("{} for an order that does not exist", reservation.status),
                )
            });
        }
    }
    for (id, order) in orders {
        let key = id.to_string();
        let order_events = order_topic.aggregates.get(&key);
        let reservation_events = inventory_topic.aggregates.get(&key);
        let reservation = reservations.get(id).map(|r| r.status);
        // The event the other side must act on for the pair to be complete, and who acts.
        let (waits_for, acting) = match (reservation, order.status) {
            (None, _) => (
                find(order_topic, order_events, &["OrderPlaced"]).map(|e| (e, &order_topic.name)),
                "orders inventory-service has not handled yet",
            ),
            (Some("RESERVED" | "REJECTED"), "PLACED") => (
                find(
                    inventory_topic,
                    reservation_events,
                    &["InventoryReserved", "InventoryRejected"],
                )
                .map(|e| (e, &inventory_topic.name)),
                "orders waiting for order-service to apply inventory's answer",
            ),
            (Some("RESERVED"), "CANCELLED") => (
                find(order_topic, order_events, &["OrderCancelled"])
                    .map(|e| (e, &order_topic.name)),
                "reservations of cancelled orders not released yet",
            ),
            (Some("RESERVED"), "CONFIRMED")
            | (Some("REJECTED"), "REJECTED" | "CANCELLED")
            | (Some("RELEASED"), "CANCELLED") => continue,
            (Some(held), status) => {
                findings.violation(Check::Stock, "status-mismatch", || {
                    (
                        format!("order {id}"),
                        format!("the order is {status} but its reservation is {held}"),
                    )
                });
                continue;
            }
        };
        // Without the event, check 1 says what is missing.
        let Some((event, topic)) = waits_for else {
            continue;
        };
        let (positions, group) = if *topic == order_topic.name {
            (&consumers.inventory, consumers.inventory_group.as_str())
        } else {
            (&consumers.orders, consumers.order_group.as_str())
        };
        match fate(event, topic, positions, group, dead) {
            Fate::Pending => findings.in_flight(acting, 1),
            Fate::DeadLettered => {
                findings.stuck(&format!("events {group} dead-lettered ({topic})"), 1);
            }
            Fate::Applied => {
                let what = topic_type(
                    if *topic == order_topic.name {
                        order_topic
                    } else {
                        inventory_topic
                    },
                    event,
                );
                findings.violation(Check::Stock, "effect-missing", || {
                    (
                        format!("order {id}"),
                        format!(
                            "the order is {} and its reservation {}, although {group} consumed \
                             {what} {} ({topic} partition {} offset {})",
                            order.status,
                            reservation.unwrap_or("absent"),
                            event.id,
                            event.partition,
                            event.offset
                        ),
                    )
                });
            }
        }
    }
}

fn topic_type<'a>(topic: &'a EventTopic, event: &Logged) -> &'a str {
    topic.types.name(event.event_type)
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use serde_json::json;

    use super::*;
    use crate::audit::events::tests::{contract_headers, feed};

    fn item(sku: &str, quantity: i32) -> LineRow {
        LineRow {
            order_id: Uuid::nil(),
            line_no: 1,
            sku: sku.to_owned(),
            quantity,
            unit_price_cents: 1,
        }
    }

    fn reservation(status: &str, lines: serde_json::Value) -> ReservationRow {
        ReservationRow {
            order_id: Uuid::nil(),
            status: status.to_owned(),
            lines,
            reason: None,
            revision: 1,
            updated_at: DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    fn stock(sku: &str, available: i64, reserved: i64) -> (String, StockRow) {
        (
            sku.to_owned(),
            StockRow {
                sku: sku.to_owned(),
                available,
                reserved,
                revision: 3,
                updated_at: DateTime::from_timestamp(0, 0).unwrap(),
            },
        )
    }

    #[test]
    fn reserved_is_what_the_reserved_reservations_hold() {
        let mut books = Books::default();
        let mut findings = Findings::new(&[Check::Stock], 3);
        let lines = json!([{"sku": "A", "quantity": 3}, {"sku": "B", "quantity": 1}]);
        books.reservation(
            &reservation("RESERVED", lines.clone()),
            &[item("A", 1), item("A", 2), item("B", 1)],
            true,
            &mut findings,
        );
        books.reservation(
            &reservation("RELEASED", lines),
            &[item("A", 3), item("B", 1)],
            true,
            &mut findings,
        );
        assert_eq!(findings.violations(), 0);
        let rows: HashMap<_, _> = [stock("A", 7, 3), stock("B", 0, 1), stock("C", 5, 0)].into();
        books.close(&rows, &mut findings);
        assert_eq!(findings.violations(), 0);
        let doubled: HashMap<_, _> = [stock("A", 4, 6), stock("B", 0, 1)].into();
        books.close(&doubled, &mut findings);
        assert_eq!(findings.found[&Check::Stock].kinds["reserved-mismatch"], 1);
        books.reservation(
            &reservation("RESERVED", json!([{"sku": "Z", "quantity": 1}])),
            &[item("Z", 2)],
            true,
            &mut findings,
        );
        assert_eq!(findings.found[&Check::Stock].kinds["lines-differ"], 1);
        books.close(&HashMap::new(), &mut findings);
        assert!(findings.found[&Check::Stock].kinds["no-stock-row"] >= 1);
    }

    #[test]
    fn a_row_one_revision_past_its_last_change_must_balance() {
        let stock_rows: HashMap<_, _> = [stock("A", 8, 2)].into();
        let mut findings = Findings::new(&[Check::Stock], 3);
        let last = |available, reserved| {
            HashMap::from([(
                "A".to_owned(),
                StockState {
                    revision: 2,
                    available,
                    reserved,
                },
            )])
        };
        against_changes(&stock_rows, &last(10, 0), &mut findings);
        assert_eq!(findings.violations(), 0);
        against_changes(&stock_rows, &last(10, 1), &mut findings);
        assert_eq!(findings.count(Check::Stock), 1);
    }

    const O1: &str = "0190a1b2-0000-7000-8000-000000000001";

    fn topics(
        order_events: &[(&str, &str, &str)],
        inventory_events: &[(&str, &str, &str)],
    ) -> (EventTopic, EventTopic) {
        let mut findings = Findings::new(&[], 3);
        let mut orders = EventTopic::new("order.events");
        for (i, (id, revision, kind)) in order_events.iter().enumerate() {
            feed(
                &mut orders,
                &mut findings,
                (0, i as i64),
                O1,
                &contract_headers(id, O1, revision, kind),
                100,
            );
        }
        let mut inventory = EventTopic::new("inventory.events");
        for (i, (id, revision, kind)) in inventory_events.iter().enumerate() {
            feed(
                &mut inventory,
                &mut findings,
                (0, i as i64),
                O1,
                &contract_headers(id, O1, revision, kind),
                100,
            );
        }
        (orders, inventory)
    }

    const E1: &str = "0190a1b2-0000-7000-8000-0000000000e1";
    const E2: &str = "0190a1b2-0000-7000-8000-0000000000e2";
    const R1: &str = "0190a1b2-0000-7000-8000-0000000000f1";

    fn run(
        order: State,
        reservation: Option<State>,
        consumers: &Consumers,
        dead: &DeadLetters,
    ) -> Findings {
        let (orders_topic, inventory_topic) = topics(
            &[(E1, "1", "OrderPlaced"), (E2, "2", "OrderCancelled")],
            &[(R1, "1", "InventoryReserved")],
        );
        let id = Uuid::parse_str(O1).unwrap();
        let orders = HashMap::from([(id, order)]);
        let reservations: HashMap<_, _> = reservation.map(|r| (id, r)).into_iter().collect();
        let mut findings = Findings::new(&[Check::Stock], 3);
        saga(
            &orders,
            &reservations,
            (&orders_topic, &inventory_topic),
            consumers,
            dead,
            &mut findings,
        );
        findings
    }

    fn state(status: &'static str, revision: i64) -> State {
        State { status, revision }
    }

    #[test]
    fn the_saga_pairs_wait_for_their_events_then_must_hold() {
        let none = Consumers {
            inventory_group: "inv".to_owned(),
            order_group: "ord".to_owned(),
            ..Consumers::default()
        };
        let dead = DeadLetters::default();
        // Confirmed and reserved: fine.
        let f = run(
            state("CONFIRMED", 2),
            Some(state("RESERVED", 1)),
            &none,
            &dead,
        );
        assert_eq!((f.violations(), f.in_flight.len()), (0, 0));
        // Cancelled, still reserved, the cancel not consumed: in flight.
        let f = run(
            state("CANCELLED", 3),
            Some(state("RESERVED", 1)),
            &none,
            &dead,
        );
        assert_eq!((f.violations(), f.in_flight.len()), (0, 1));
        // ... consumed (offset 1 < 2): the release is missing.
        let mut past = Consumers {
            inventory_group: "inv".to_owned(),
            inventory: HashMap::from([(("order.events".to_owned(), 0), 2)]),
            order_group: "ord".to_owned(),
            orders: HashMap::new(),
        };
        past.orders.insert(("inventory.events".to_owned(), 0), 1);
        let f = run(
            state("CANCELLED", 3),
            Some(state("RESERVED", 1)),
            &past,
            &dead,
        );
        assert_eq!(f.found[&Check::Stock].kinds["effect-missing"], 1);
        // Placed, reserved, order-service consumed the answer: the confirmation is missing.
        let f = run(state("PLACED", 1), Some(state("RESERVED", 1)), &past, &dead);
        assert_eq!(f.count(Check::Stock), 1);
        // Placed, no reservation, inventory consumed OrderPlaced: missing; dead-lettered: stuck.
        let f = run(state("PLACED", 1), None, &past, &dead);
        assert_eq!(f.count(Check::Stock), 1);
        let mut letters = DeadLetters::default();
        letters.refused.insert(
            ("order.events".to_owned(), Uuid::parse_str(E1).unwrap()),
            vec!["inv".to_owned()],
        );
        let f = run(state("PLACED", 1), None, &past, &letters);
        assert_eq!((f.violations(), f.stuck.len()), (0, 1));
        // Impossible pairs.
        let f = run(
            state("CONFIRMED", 2),
            Some(state("RELEASED", 2)),
            &none,
            &dead,
        );
        assert_eq!(f.found[&Check::Stock].kinds["status-mismatch"], 1);
        let f = run(
            state("REJECTED", 2),
            Some(state("RESERVED", 1)),
            &none,
            &dead,
        );
        assert_eq!(f.count(Check::Stock), 1);
    }
}
