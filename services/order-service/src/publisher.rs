//! How an event leaves the service: through the outbox (the fix) or produced right after the
//! commit (the pitfall, kept on purpose as `PUBLISH_MODE=direct`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eda_outbox::OutboxEvent;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// The naive publisher: produce after commit, fire and forget, give up after the client's
/// timeout. This is what much real code does, and why it loses events when Kafka is away.
#[derive(Clone)]
pub struct DirectPublisher {
    producer: FutureProducer,
    failures: Arc<AtomicU64>,
}

impl std::fmt::Debug for DirectPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectPublisher").finish_non_exhaustive()
    }
}

impl DirectPublisher {
    /// A producer with ordinary settings and a 5 s delivery timeout.
    pub fn new(bootstrap_servers: &str) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .set("message.timeout.ms", "5000")
            .set("linger.ms", "5")
            // Java's partitioner, like every producer of the project: the naive mode is naive
            // about atomicity only, its keys land where the relay's and Debezium's do.
            .set("partitioner", "murmur2_random")
            .create()?;
        Ok(Self {
            producer,
            failures: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Sends `event` after the transaction committed. Failures are logged and counted, and the
    /// event is gone: the order stays committed without it. That is the pitfall.
    pub fn publish_after_commit(&self, event: &OutboxEvent) {
        let mut headers = OwnedHeaders::new();
        for (name, value) in event.headers() {
            headers = headers.insert(Header {
                key: name,
                value: Some(&value),
            });
        }
        let record = FutureRecord::to(event.topic())
            .key(event.key())
            .payload(event.payload())
            .headers(headers);
        let event_id = event.event_id();
        let failures = Arc::clone(&self.failures);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    if let Ok(Err((err, _))) | Err(err) = delivery
                        .await
                        .map_err(|_| rdkafka::error::KafkaError::Canceled)
                    {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(event.id = %event_id, error = %err, "direct publish failed; the event is lost");
                    }
                });
            }
            Err((err, _)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(event.id = %event_id, error = %err, "direct publish failed; the event is lost");
            }
        }
    }

    /// Events lost so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Waits for queued messages at shutdown.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
