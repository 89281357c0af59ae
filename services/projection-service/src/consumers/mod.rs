//! Kafka consumers: the change events of the source tables.

pub mod changes;
pub mod metrics;

pub use changes::ChangeEvents;
pub use metrics::{Outcome, ProjectionMetrics, Source};
