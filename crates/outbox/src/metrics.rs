use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use sqlx::PgPool;

use crate::OutboxTable;

/// The relay's counters and the outbox backlog. It is a `prometheus_client` [`Collector`]:
/// register it in the service's `Registry` (`registry.register_collector(Box::new(metrics))`),
/// and call [`refresh_backlog`](Self::refresh_backlog) before each scrape, or use
/// [`render`](Self::render) for the text on its own.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    published: AtomicU64,
    errors: AtomicU64,
    parked_total: AtomicU64,
    parked_now: AtomicU64,
    leader: AtomicBool,
    pending: AtomicU64,
    /// Age of the oldest pending row in milliseconds, at the last refresh.
    oldest_pending_ms: AtomicU64,
    /// Where the backlog is read.
    table: OutboxTable,
}

impl RelayMetrics {
    pub(crate) fn for_table(table: OutboxTable) -> Self {
        Self {
            table,
            ..Self::default()
        }
    }

    pub(crate) fn add_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_parked(&self, n: u64) {
        self.parked_total.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_errors(&self, n: u64) {
        self.errors.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Events published by this process since it started.
    pub fn published_total(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Failed deliveries (each is retried) since start.
    pub fn publish_errors_total(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Rows this process parked (Kafka refused them for good) since it started.
    pub fn parked_total(&self) -> u64 {
        self.parked_total.load(Ordering::Relaxed)
    }

    /// Whether this process's relay currently holds the leadership lock.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Reads the backlog (pending rows, age of the oldest) from the database: the numbers to
    /// alert on. Collectors are synchronous, so a scrape handler awaits this first.
    pub async fn refresh_backlog(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let sql = format!(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 \
             FROM {} WHERE published_at IS NULL",
            self.table
        );
        let (pending, oldest_age): (i64, Option<f64>) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await?;
        self.pending
            .store(u64::try_from(pending).unwrap_or(0), Ordering::Relaxed);
        let oldest_ms = (oldest_age.unwrap_or(0.0).max(0.0) * 1000.0) as u64;
        self.oldest_pending_ms.store(oldest_ms, Ordering::Relaxed);
        let parked_sql = format!(
            "SELECT count(*) FROM {} WHERE parked_at IS NOT NULL AND published_at IS NULL",
            self.table
        );
        let parked: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(parked_sql))
            .fetch_one(pool)
            .await?;
        self.parked_now
            .store(u64::try_from(parked).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// The backlog read from the database plus the counters, as Prometheus text on its own
    /// (a service with other metrics registers this as a collector instead).
    pub async fn render(self: &std::sync::Arc<Self>, pool: &PgPool) -> Result<String, sqlx::Error> {
        self.refresh_backlog(pool).await?;
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(std::sync::Arc::clone(self)));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        Ok(out)
    }
}

impl Collector for RelayMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let gauges = [
            (
                "outbox_pending_rows",
                "Outbox rows not yet published.",
                self.pending.load(Ordering::Relaxed) as f64,
            ),
            (
                "outbox_oldest_pending_age_seconds",
                "Age of the oldest unpublished outbox row (0 when none).",
                self.oldest_pending_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
            (
                "outbox_parked_rows",
                "Rows Kafka refused for good (too large, invalid), waiting to be released.",
                self.parked_now.load(Ordering::Relaxed) as f64,
            ),
            (
                "outbox_relay_leader",
                "1 when this process's relay holds the leadership lock.",
                f64::from(u8::from(self.is_leader())),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        // Counter names get their `_total` suffix from the encoder.
        let counters = [
            (
                "outbox_published",
                "Events published by this process.",
                self.published_total(),
            ),
            (
                "outbox_parked",
                "Rows this process parked.",
                self.parked_total.load(Ordering::Relaxed),
            ),
            (
                "outbox_publish_errors",
                "Failed deliveries (retried) by this process.",
                self.publish_errors_total(),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
