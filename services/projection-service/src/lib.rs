//! projection-service: read models built from Debezium change events of the other services'
//! CRUD tables (the seed's "CRUD + CDC" instead of event sourcing, pitfall 2).
//!
//! Debezium table connectors capture order-service's `orders` and `order_items` and
//! inventory-service's `stock` and `reservations`; this service consumes their change events
//! with `eda-idempotent-consumer` in `Dedupe::Offsets` mode (the topic-partition-offset is the
//! transaction id) and keeps an order view, a per-customer summary and a per-SKU view, each
//! change applied only when it is newer by the source row's `revision`.
//!
//! # Layout
//! `configuration` (its own settings; the shared ones are `eda_http::config::ServiceSettings`),
//! `state` (what handlers share), `startup` (on `eda_http::startup::ServiceBase`),
//! `migrations` (the views' schema), `cdc` (Debezium's change events, decoded),
//! `consumers/` (the change handler and the freshness metrics), `rebuild` (new views built
//! beside the live ones, then switched in),
//! `routes/` (the views over HTTP, the rebuild's admin calls, health, metrics, OpenAPI).

pub mod cdc;
pub mod configuration;
pub mod consumers;
pub mod migrations;
pub mod rebuild;
pub mod routes;
pub mod startup;
pub mod state;
