//! order-service's HTTP API against the real PostgreSQL and Kafka: each test spawns the app on
//! a free port with its own database and topic.

mod debezium_mode;
mod health;
mod helpers;
mod openapi;
mod orders;
