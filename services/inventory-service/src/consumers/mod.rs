//! Event handlers run by `eda-idempotent-consumer`.

mod orders;

pub use orders::OrderEvents;
