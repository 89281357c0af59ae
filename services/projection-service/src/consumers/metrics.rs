//! What the projection counts, and how fresh each source is: `/metrics` shows it.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cdc::{CdcError, Row};

/// A source table the views are built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// order-service's `orders`.
    Orders,
    /// order-service's `order_items`.
    OrderItems,
    /// inventory-service's `stock`.
    Stock,
    /// inventory-service's `reservations`.
    Reservations,
}

impl Source {
    /// Every source, in a fixed order.
    pub const ALL: [Source; 4] = [
        Source::Orders,
        Source::OrderItems,
        Source::Stock,
        Source::Reservations,
    ];

    /// The source of a change of `table` (`source.table`), if the views use it.
    pub fn of(table: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.table() == table)
    }

    /// The table's name.
    pub fn table(self) -> &'static str {
        match self {
            Self::Orders => "orders",
            Self::OrderItems => "order_items",
            Self::Stock => "stock",
            Self::Reservations => "reservations",
        }
    }

    /// The source row's primary key as text (the tombstones' key).
    pub fn key(self, row: &Row) -> Result<String, CdcError> {
        Ok(match self {
            Self::Orders => row.uuid("id")?.to_string(),
            Self::OrderItems => format!("{}/{}", row.uuid("order_id")?, row.int("line_no")?),
            Self::Stock => row.text("sku")?,
            Self::Reservations => row.uuid("order_id")?.to_string(),
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What became of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The view changed.
    Applied,
    /// The view already holds this revision or a newer one (or the row was deleted).
    Stale,
}

impl Outcome {
    /// `Applied` when a statement changed a row.
    pub fn applied_if(rows: u64) -> Self {
        if rows > 0 { Self::Applied } else { Self::Stale }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Stale => "stale",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    table: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: &'static str,
}

/// The projection's counters and per-source freshness.
#[derive(Debug, Default)]
pub struct ProjectionMetrics {
    changes: Family<ChangeLabels, Counter>,
    skipped: Family<SkipLabels, Counter>,
    /// Per source: commit time (ms) of the last change applied or found stale.
    last_commit_ms: [AtomicI64; 4],
    /// Per source: milliseconds from that change's commit to its apply.
    last_delay_ms: [AtomicI64; 4],
}

impl ProjectionMetrics {
    /// A change of `source`, committed at `committed_at`, was handled with `outcome`.
    pub fn applied(&self, source: Source, outcome: Outcome, committed_at: DateTime<Utc>) {
        self.changes
            .get_or_create(&ChangeLabels {
                table: source.table(),
                outcome: outcome.label(),
            })
            .inc();
        let ms = committed_at.timestamp_millis();
        let i = source.index();
        self.last_commit_ms[i].fetch_max(ms, Ordering::Relaxed);
        let delay = (Utc::now() - committed_at).num_milliseconds().max(0);
        self.last_delay_ms[i].store(delay, Ordering::Relaxed);
    }

    /// A record skipped for `reason` (`tombstone`, `unknown-table`, `other-op`).
    pub fn skipped(&self, reason: &'static str) {
        self.skipped.get_or_create(&SkipLabels { reason }).inc();
    }

    /// Changes of `source` counted with `outcome` so far.
    pub fn count(&self, source: Source, outcome: Outcome) -> u64 {
        self.changes
            .get_or_create(&ChangeLabels {
                table: source.table(),
                outcome: outcome.label(),
            })
            .get()
    }

    /// Records skipped for `reason` so far.
    pub fn skipped_count(&self, reason: &'static str) -> u64 {
        self.skipped.get_or_create(&SkipLabels { reason }).get()
    }

    /// The freshness of `source`: the commit time of the newest change the views hold, and
    /// how long the last one took from commit to view.
    pub fn freshness(&self, source: Source) -> Option<(DateTime<Utc>, i64)> {
        let i = source.index();
        let ms = self.last_commit_ms[i].load(Ordering::Relaxed);
        (ms > 0).then(|| {
            (
                DateTime::from_timestamp_millis(ms).unwrap_or_default(),
                self.last_delay_ms[i].load(Ordering::Relaxed),
            )
        })
    }

    /// Adds the families to `registry`: `projection_changes_total{table,outcome}`,
    /// `projection_records_skipped_total{reason}`, and per source
    /// `projection_source_last_commit_seconds` (commit time of the newest change held),
    /// `projection_source_age_seconds` (now minus that: how far behind the view is, if the
    /// source kept writing) and `projection_source_delay_seconds` (commit to apply, last
    /// change).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "projection_changes",
            "Change events handled, by source table and outcome (applied, stale)",
            self.changes.clone(),
        );
        registry.register(
            "projection_records_skipped",
            "CDC records not applied: tombstones, tables the views do not use, other ops",
            self.skipped.clone(),
        );
        let last: Family<TableLabels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        let age: Family<TableLabels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        let delay: Family<TableLabels, Gauge<f64, std::sync::atomic::AtomicU64>> =
            Family::default();
        let now = Utc::now();
        for source in Source::ALL {
            if let Some((committed, delay_ms)) = self.freshness(source) {
                let labels = TableLabels {
                    table: source.table(),
                };
                last.get_or_create(&labels)
                    .set(committed.timestamp_millis() as f64 / 1000.0);
                age.get_or_create(&labels)
                    .set((now - committed).num_milliseconds().max(0) as f64 / 1000.0);
                delay.get_or_create(&labels).set(delay_ms as f64 / 1000.0);
            }
        }
        registry.register(
            "projection_source_last_commit_seconds",
            "Commit time (Unix seconds) of the newest change of the source table the views hold",
            last,
        );
        registry.register(
            "projection_source_age_seconds",
            "Seconds since the commit of the newest change the views hold, per source table",
            age,
        );
        registry.register(
            "projection_source_delay_seconds",
            "Seconds from commit to view of the last change applied, per source table",
            delay,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_by_table_name() {
        assert_eq!(Source::of("orders"), Some(Source::Orders));
        assert_eq!(Source::of("order_items"), Some(Source::OrderItems));
        assert_eq!(Source::of("idempotency_keys"), None);
        for s in Source::ALL {
            assert_eq!(Source::ALL[s.index()], s);
        }
    }

    #[test]
    fn counts_and_freshness_show_in_the_registry() {
        let metrics = ProjectionMetrics::default();
        let committed = Utc::now() - chrono::Duration::seconds(2);
        metrics.applied(Source::Orders, Outcome::Applied, committed);
        metrics.applied(Source::Orders, Outcome::Stale, committed);
        metrics.skipped("tombstone");
        assert_eq!(metrics.count(Source::Orders, Outcome::Applied), 1);
        assert_eq!(metrics.skipped_count("tombstone"), 1);
        let (at, delay) = metrics.freshness(Source::Orders).unwrap();
        assert_eq!(at.timestamp_millis(), committed.timestamp_millis());
        assert!(delay >= 2000, "{delay}");
        assert!(metrics.freshness(Source::Stock).is_none());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"projection_changes_total{table="orders",outcome="stale"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"projection_source_age_seconds{table="orders"} "#),
            "{text}"
        );
        assert!(!text.contains(r#"table="stock""#), "{text}");
    }
}
