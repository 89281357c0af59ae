use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one consumer, rendered as Prometheus text.
#[derive(Debug, Default)]
pub struct ConsumerMetrics {
    pub(crate) processed: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) lag: AtomicU64,
}

impl ConsumerMetrics {
    /// Events applied (handler committed).
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }
    /// Deliveries recognised as already applied and skipped.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
    /// Transient failures retried.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Records sent to a dead-letter topic.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
    /// Messages behind the partitions' ends at the last check (sum over assigned partitions).
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Prometheus text, labelled with the consumer group.
    pub fn render(&self, group: &str) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "consumer_processed_total",
                "counter",
                "Events applied.",
                self.processed(),
            ),
            (
                "consumer_duplicates_total",
                "counter",
                "Redelivered or republished events skipped.",
                self.duplicates(),
            ),
            (
                "consumer_retries_total",
                "counter",
                "Transient failures retried.",
                self.retries(),
            ),
            (
                "consumer_dead_lettered_total",
                "counter",
                "Records sent to the dead-letter topic.",
                self.dead_lettered(),
            ),
            (
                "consumer_lag",
                "gauge",
                "Messages not yet consumed on the assigned partitions.",
                self.lag(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{group=\"{group}\"}} {value}"
            );
        }
        out
    }
}
