//! inventory-service: stock per SKU and reservations per order.
//!
//! It consumes `order.events` with `eda-idempotent-consumer` (each event applied once, however
//! often Kafka delivers it): `OrderPlaced` reserves every line or none, `OrderCancelled` releases
//! the reservation once. The outcome (`InventoryReserved`, `InventoryRejected`,
//! `InventoryReleased`) is written to its outbox in the same transaction and published to
//! `inventory.events`, key = order id. `IDEMPOTENCY=off` applies every delivery (pitfall 5).
//!
//! # Layout
//! `configuration` (its own settings; the shared ones are `eda_http::config::ServiceSettings`),
//! `state` (what handlers share), `startup` (on `eda_http::startup::ServiceBase`),
//! `routes/` (stock over HTTP, health, metrics, OpenAPI),
//! `domain/` (validated SKUs and quantities), `consumers/` (the order-event handler).

pub mod configuration;
pub mod consumers;
pub mod domain;
pub mod routes;
pub mod startup;
pub mod state;
