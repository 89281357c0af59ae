//! Event handlers run by `eda-idempotent-consumer`.

mod inventory;

pub use inventory::InventoryOutcomes;
