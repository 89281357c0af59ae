//! Sending dead letters back to their topic once the cause is fixed. Safe to repeat: the
//! consumer deduplicates, so a record redriven twice is applied once.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};

use crate::Error;

/// Reads `dlq_topic` from where consumer group `group` left off, produces each record back to
/// its `dlq-original-topic` with its original key, value and headers (the `dlq-*` headers
/// dropped), commits after each delivery, and returns how many were sent once the topic has
/// been idle for `idle`. Records without `dlq-original-topic` are skipped and counted apart.
pub async fn redrive(
    bootstrap_servers: &str,
    dlq_topic: &str,
    group: &str,
    idle: Duration,
) -> Result<RedriveReport, Error> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[dlq_topic])?;
    let producer: FutureProducer = crate::runtime::dlq_producer(bootstrap_servers).create()?;
    let mut report = RedriveReport::default();
    loop {
        let message = match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(err)) => return Err(err.into()),
            Ok(Ok(message)) => message,
        };
        let original = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "dlq-original-topic")
                .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
        });
        match original {
            None => report.skipped += 1,
            Some(topic) => {
                let mut headers = OwnedHeaders::new();
                if let Some(h) = message.headers() {
                    for h in h.iter().filter(|h| !h.key.starts_with("dlq-")) {
                        headers = headers.insert(Header {
                            key: h.key,
                            value: h.value,
                        });
                    }
                }
                let mut record = FutureRecord::to(&topic).headers(headers);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(payload) = message.payload() {
                    record = record.payload(payload);
                }
                producer
                    .send(record, Timeout::After(Duration::from_secs(30)))
                    .await
                    .map_err(|(err, _)| err)?;
                report.redriven += 1;
            }
        }
        consumer.commit_message(&message, CommitMode::Sync)?;
    }
    Ok(report)
}

/// What [`redrive`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedriveReport {
    /// Records sent back to their topic.
    pub redriven: usize,
    /// Records without `dlq-original-topic` (not written by this runtime), left alone.
    pub skipped: usize,
}
