use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sqlx::PgPool;

/// The relay's counters, rendered as Prometheus text by [`RelayMetrics::render`].
#[derive(Debug, Default)]
pub struct RelayMetrics {
    published: AtomicU64,
    errors: AtomicU64,
    leader: AtomicBool,
}

impl RelayMetrics {
    pub(crate) fn add_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
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

    /// Whether this process's relay currently holds the leadership lock.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition: the counters above plus the backlog read from the database
    /// (pending rows and the age of the oldest), which is the number to alert on.
    pub async fn render(&self, pool: &PgPool) -> Result<String, sqlx::Error> {
        let (pending, oldest_age): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 \
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(pool)
        .await?;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "outbox_pending_rows",
            "gauge",
            "Outbox rows not yet published.",
            pending.to_string(),
        );
        metric(
            "outbox_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest unpublished outbox row (0 when none).",
            oldest_age.unwrap_or(0.0).max(0.0).to_string(),
        );
        metric(
            "outbox_published_total",
            "counter",
            "Events published by this process.",
            self.published_total().to_string(),
        );
        metric(
            "outbox_publish_errors_total",
            "counter",
            "Failed deliveries (retried) by this process.",
            self.publish_errors_total().to_string(),
        );
        metric(
            "outbox_relay_leader",
            "gauge",
            "1 when this process's relay holds the leadership lock.",
            u8::from(self.is_leader()).to_string(),
        );
        Ok(out)
    }
}
