use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use std::fmt::Write as _;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric as _, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use uuid::Uuid;

/// One event a partition has been retrying for longer than `ConsumerConfig::stuck_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// Topic of the event.
    pub topic: String,
    /// Its partition: nothing behind it moves until it is applied or dead-lettered.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its `event-id`.
    pub event_id: Uuid,
    /// How long it has been failing, at the last retry.
    pub stuck_for: Duration,
    /// The last transient error.
    pub error: String,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}[{}] stuck at offset {} (event {}) for {} s: {}",
            self.topic,
            self.partition,
            self.offset,
            self.event_id,
            self.stuck_for.as_secs(),
            self.error
        )
    }
}

/// Counters of one consumer. Expose them with [`ConsumerCollector`] (or [`render`](Self::render)).
#[derive(Debug, Default)]
pub struct ConsumerMetrics {
    pub(crate) processed: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) lag: AtomicU64,
    pub(crate) chunks_stored: AtomicU64,
    pub(crate) chunk_sets_expired: AtomicU64,
    pub(crate) batches: AtomicU64,
    stuck: Mutex<Option<Stuck>>,
    /// Since when the consumer has not been a member of its group (`None`: it is one, or it
    /// has not started).
    outside_since: Mutex<Option<Instant>>,
    /// How long it may stay outside before [`ConsumerMetrics::health`] fails, in ms.
    outside_limit_ms: AtomicU64,
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
    /// Events skipped because their aggregate already had a newer (or the same) revision
    /// applied: late, reordered or redriven events that must not undo a newer change.
    pub fn stale(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }
    /// Transient failures retried.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Records sent to a dead-letter topic.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
    /// Chunks of large messages stored until their set is complete.
    pub fn chunks_stored(&self) -> u64 {
        self.chunks_stored.load(Ordering::Relaxed)
    }
    /// Incomplete chunk sets dead-lettered after the chunk timeout.
    pub fn chunk_sets_expired(&self) -> u64 {
        self.chunk_sets_expired.load(Ordering::Relaxed)
    }
    /// Transactions that applied a batch of two or more events (the rest went one by one).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// Messages behind the partitions' ends at the last check (sum over assigned partitions).
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }
    /// The event a partition is stuck on, if one has been retried for longer than
    /// `stuck_after`. A readiness check should fail while this is `Some`.
    pub fn stuck(&self) -> Option<Stuck> {
        self.stuck.lock().ok().and_then(|s| s.clone())
    }

    /// Whether the consumer is a member of its group now: it has joined and has an assignment
    /// (possibly empty, when the group has more members than partitions). `false` before the
    /// first join, and from a rebalance, a lost session or a stop until the next assignment.
    pub fn in_group(&self) -> bool {
        self.outside().is_none()
    }

    /// How long the consumer has been outside its group, if it is.
    pub fn outside(&self) -> Option<Duration> {
        self.outside_since
            .lock()
            .ok()
            .and_then(|s| s.map(|since| since.elapsed()))
    }

    /// `Ok` unless a partition is stuck, or the consumer has been outside its group for longer
    /// than `stuck_after` (nothing is consumed meanwhile, whatever the lag says): a readiness
    /// check (`/readyz`) in one call.
    pub fn health(&self) -> Result<(), String> {
        if let Some(stuck) = self.stuck() {
            return Err(stuck.to_string());
        }
        let limit = Duration::from_millis(self.outside_limit_ms.load(Ordering::Relaxed));
        match self.outside() {
            Some(outside) if outside >= limit => Err(format!(
                "not a member of its consumer group for {} s, consuming nothing (Kafka unreachable, or the group still rebalancing; the log says which)",
                outside.as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// Starts the clock: the consumer is outside its group until its first assignment, and
    /// unhealthy once it stays outside for `limit`.
    pub(crate) fn starting(&self, limit: Duration) {
        self.outside_limit_ms.store(
            u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.left_group();
    }

    /// Joined (an assignment arrived).
    pub(crate) fn joined_group(&self) {
        if let Ok(mut since) = self.outside_since.lock() {
            *since = None;
        }
    }

    /// Left the group (revoked, lost or failed rebalance); the first moment counts.
    pub(crate) fn left_group(&self) {
        if let Ok(mut since) = self.outside_since.lock() {
            since.get_or_insert_with(Instant::now);
        }
    }

    /// Records `stuck`; returns whether it is newly stuck (not the same event as before).
    pub(crate) fn set_stuck(&self, stuck: Stuck) -> bool {
        let Ok(mut slot) = self.stuck.lock() else {
            return false;
        };
        let first = slot.as_ref().is_none_or(|s| s.event_id != stuck.event_id);
        *slot = Some(stuck);
        first
    }

    /// The partition moved on (applied, skipped, dead-lettered, or given up at shutdown).
    pub(crate) fn clear_stuck(&self, topic: &str, partition: i32) {
        if let Ok(mut slot) = self.stuck.lock()
            && slot
                .as_ref()
                .is_some_and(|s| s.topic == topic && s.partition == partition)
        {
            *slot = None;
        }
    }

    /// Prometheus text for this consumer alone, labelled with its group. A service with
    /// other metrics (or several consumers) registers a [`ConsumerCollector`] instead, so that
    /// each family is described once.
    pub fn render(&self, group: &str) -> String {
        let collector = Snapshots(vec![(group.to_owned(), self.snapshot())]);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(collector));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        out
    }

    fn snapshot(&self) -> [u64; 11] {
        [
            self.processed(),
            self.duplicates(),
            self.stale(),
            self.retries(),
            self.dead_lettered(),
            self.chunks_stored(),
            self.chunk_sets_expired(),
            self.lag(),
            u64::from(self.stuck().is_some()),
            u64::from(self.in_group()),
            self.batches(),
        ]
    }
}

/// Names, help and kinds of the consumer families, in [`ConsumerMetrics::snapshot`] order.
/// Counter names get their `_total` suffix from the encoder.
const FAMILIES: [(&str, &str, bool); 11] = [
    ("consumer_processed", "Events applied.", true),
    (
        "consumer_duplicates",
        "Redelivered or republished events skipped.",
        true,
    ),
    (
        "consumer_stale",
        "Events skipped because a newer revision of their aggregate was applied.",
        true,
    ),
    ("consumer_retries", "Transient failures retried.", true),
    (
        "consumer_dead_lettered",
        "Records sent to the dead-letter topic.",
        true,
    ),
    (
        "consumer_chunks_stored",
        "Chunks of large messages stored until their set is complete.",
        true,
    ),
    (
        "consumer_chunk_sets_expired",
        "Incomplete chunk sets dead-lettered after the chunk timeout.",
        true,
    ),
    (
        "consumer_lag",
        "Messages not yet consumed on the assigned partitions.",
        false,
    ),
    (
        "consumer_stuck",
        "1 while a partition retries one event for longer than stuck_after.",
        false,
    ),
    (
        "consumer_in_group",
        "1 while the consumer is a member of its group (joined, with an assignment).",
        false,
    ),
    (
        "consumer_batches",
        "Transactions that applied a batch of two or more events.",
        true,
    ),
];

/// A `prometheus_client` collector for every consumer of a service: each family is described
/// once, with one sample per consumer group (`group` label, escaped by the encoder).
///
/// ```
/// use std::sync::Arc;
/// use eda_idempotent_consumer::{ConsumerCollector, ConsumerMetrics};
///
/// let (orders, stock) = (Arc::new(ConsumerMetrics::default()), Arc::new(ConsumerMetrics::default()));
/// let mut registry = prometheus_client::registry::Registry::default();
/// registry.register_collector(Box::new(ConsumerCollector::new([
///     ("orders", orders),
///     ("stock", stock),
/// ])));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert_eq!(text.matches("# TYPE consumer_processed counter").count(), 1);
/// assert!(text.contains("consumer_processed_total{group=\"stock\"} 0"));
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerCollector {
    consumers: Vec<(String, Arc<ConsumerMetrics>)>,
}

impl ConsumerCollector {
    /// A collector over `(group, metrics)` pairs.
    pub fn new<G: Into<String>>(
        consumers: impl IntoIterator<Item = (G, Arc<ConsumerMetrics>)>,
    ) -> Self {
        Self {
            consumers: consumers.into_iter().map(|(g, m)| (g.into(), m)).collect(),
        }
    }
}

impl Collector for ConsumerCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshots = self
            .consumers
            .iter()
            .map(|(group, metrics)| (group.clone(), metrics.snapshot()))
            .collect();
        Snapshots(snapshots).encode(encoder)
    }
}

/// A label value escaped as the exposition formats require (`\\`, `\"`, `\n`).
/// prometheus-client 0.24 writes `&str` label values verbatim, so a group name with a quote
/// would otherwise break the whole scrape.
#[derive(Debug)]
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Values read once per scrape, per group.
#[derive(Debug)]
struct Snapshots(Vec<(String, [u64; 11])>);

impl Collector for Snapshots {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (i, (name, help, counter)) in FAMILIES.iter().enumerate() {
            let kind = if *counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (group, values) in &self.0 {
                let labels = [("group", Escaped(group))];
                let sample = family.encode_family(&labels)?;
                if *counter {
                    ConstCounter::new(values[i]).encode(sample)?;
                } else {
                    ConstGauge::new(values[i] as i64).encode(sample)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_consumers_share_one_description_per_family_and_labels_are_escaped() {
        let a = Arc::new(ConsumerMetrics::default());
        a.processed.store(3, Ordering::Relaxed);
        let collector = ConsumerCollector::new([
            ("orders", a),
            ("we\"ird\ngroup", Arc::new(ConsumerMetrics::default())),
        ]);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (name, _, _) in FAMILIES {
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{text}"
            );
        }
        assert!(
            text.contains("consumer_processed_total{group=\"orders\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(r#"group="we\"ird\ngroup""#),
            "escaped: {text}"
        );
    }

    #[test]
    fn outside_the_group_for_longer_than_the_limit_is_unhealthy() {
        let m = ConsumerMetrics::default();
        assert!(m.in_group(), "not started: nothing to report");
        m.starting(Duration::ZERO);
        assert!(!m.in_group());
        let err = m.health().unwrap_err();
        assert!(err.contains("not a member of its consumer group"), "{err}");
        m.joined_group();
        assert_eq!(m.health(), Ok(()));
        m.starting(Duration::from_secs(3600));
        assert!(!m.in_group());
        assert_eq!(m.health(), Ok(()), "outside, but not for long");
        m.joined_group();
        m.left_group();
        let first = m.outside().unwrap();
        m.left_group();
        assert!(m.outside().unwrap() >= first, "the first moment counts");
    }
}
