//! order-service: the orders HTTP API of the eda-pitfalls reference system.
//!
//! Every state change writes the order row (with its `revision`) and its event in ONE
//! transaction through [`eda_outbox`]; the relay (in this process, or Debezium) publishes to
//! `order.events` afterwards. `PUBLISH_MODE=direct` switches to the naive "commit, then
//! produce" code on purpose, to demonstrate pitfall 1.
//!
//! # Layout
//! - [`configuration`]: settings from environment variables (the shared ones are
//!   `eda_http::config::ServiceSettings`).
//! - [`state`]: [`state::AppState`], what handlers share.
//! - [`startup`]: builds the application (on `eda_http::startup::ServiceBase`: pool,
//!   migrations, readiness, listener; then its relay, consumer and router) and runs it until a
//!   shutdown signal.
//! - [`routes`]: one module per resource, each exporting `router()`.
//! - [`domain`]: validated types. Bearer tokens and problem+json errors come from `eda-http`
//!   ([`auth`] re-exports its token functions for tools and tests).
//! - [`publisher`]: the two ways an event leaves the service.
//! - [`consumers`]: reservation outcomes from inventory-service (the saga's second half).

pub mod configuration;
pub mod consumers;
pub mod domain;
pub mod publisher;
pub mod routes;
pub mod startup;
pub mod state;

/// Bearer tokens (from `eda-http`), re-exported for `pitfall-lab token` and the tests.
pub use eda_http::auth;
