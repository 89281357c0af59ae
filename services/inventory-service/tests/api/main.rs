//! inventory-service against the real stack: its HTTP API, and the whole saga with order-service
//! running beside it (each test with its own databases and topics).

mod bulk;
mod helpers;
mod liveness;
mod openapi;
mod redelivery;
mod saga;
mod stale;
mod stock;
