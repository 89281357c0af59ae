//! What the pitfall-4 benchmarks (`codecs`, `large-throughput`, `large-latency`, `large-rss`)
//! share: order JSON of a given size, built like order-service's `OrderPlaced`; topics whose
//! `max.message.bytes` is raised for the inline mode (the broker's default stays untouched);
//! a claim check under a prefix of its own, and the clean-up of what it uploaded; the three
//! producer modes; CPU time of librdkafka's threads; progress lines.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use eda_claim_check::{ClaimCheck, LargePayloads, Policy, S3Settings};
use eda_idempotent_consumer::{Consumer, ConsumerConfig, Handler};
use eda_outbox::{OutboxEvent, Relay, RelayConfig};
use eda_stack_admin::{Stack, unique};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use sqlx::PgPool;

use super::BoxError;

/// One KiB.
pub(super) const KIB: usize = 1024;
/// One MiB.
pub(super) const MIB: usize = 1024 * 1024;

/// `bytes` as `10 KiB`, `5 MiB`, `1.5 MiB`.
pub(super) fn size_label(bytes: usize) -> String {
    if bytes >= MIB {
        let mib = bytes as f64 / MIB as f64;
        if bytes.is_multiple_of(MIB) {
            format!("{mib:.0} MiB")
        } else {
            format!("{mib:.1} MiB")
        }
    } else if bytes >= KIB {
        format!("{:.0} KiB", bytes as f64 / KIB as f64)
    } else {
        format!("{bytes} B")
    }
}

/// Megabytes (MiB) of `bytes`.
pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// A progress line on stderr (results go to stdout), so a long run shows where it is.
pub(super) fn progress(line: &str) {
    eprintln!("  .. {line}");
}

/// A deterministic pseudo-random sequence (xorshift64*): realistic-looking, varied order lines
/// without a dependency, the same for every run and every mode.
struct Lines(u64);

impl Lines {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// An `OrderPlaced` body of about `bytes` bytes (at most a hundred bytes over), shaped like
/// order-service's: order id, user id, customer, currency, lines of
/// `{"sku","quantity","unit_price_cents"}` from a catalogue of 50,000 SKUs with varied
/// quantities and prices, and the total. Built as text: a `serde_json::Value` of 50 MB would
/// hold several times that in memory. `seed` varies the lines (and the ids).
pub(super) fn order_json(bytes: usize, seed: u64) -> String {
    let mut rng = Lines(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let order_id = uuid::Uuid::from_u64_pair(rng.next(), rng.next());
    let user = rng.next() % 100_000;
    let mut out = String::with_capacity(bytes + 256);
    let _ = write!(
        out,
        "{{\"order_id\":\"{order_id}\",\"user_id\":\"user-{user:05}\",\"customer\":{{\"name\":\"Customer {user}\",\
         \"email\":\"buyer{user}@example.com\"}},\"currency\":\"EUR\",\"lines\":["
    );
    let mut total: i64 = 0;
    let mut first = true;
    // The tail, `],"total_cents":<digits>}`, is more than 16 bytes: the result is at least
    // `bytes` long, and over by less than a line and the tail.
    while out.len() + 16 < bytes || first {
        let sku = rng.next() % 50_000;
        let quantity = (rng.next() % 20 + 1) as i64;
        let price = (rng.next() % 99_900 + 100) as i64;
        total += quantity * price;
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(
            out,
            "{{\"sku\":\"SKU-{sku:05}\",\"quantity\":{quantity},\"unit_price_cents\":{price}}}"
        );
    }
    let _ = write!(out, "],\"total_cents\":{total}}}");
    out
}

/// A fresh topic (`bench_<random>`, replication 1) with `partitions` partitions; with
/// `max_message_bytes` its `max.message.bytes` is raised to that (only this topic: the broker's
/// default stays as it is for everything else).
pub(super) async fn create_topic_with_limit(
    stack: &Stack,
    partitions: i32,
    max_message_bytes: Option<usize>,
) -> Result<String, BoxError> {
    let topic = unique("bench");
    let Some(limit) = max_message_bytes else {
        eda_stack_admin::create_topic(stack, &topic, partitions).await?;
        return Ok(topic);
    };
    let admin: AdminClient<DefaultClientContext> = stack.kafka_config().create()?;
    let limit = limit.to_string();
    let new = NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))
        .set("max.message.bytes", &limit);
    let results = admin
        .create_topics(
            &[new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for result in results {
        result.map_err(|(topic, code)| format!("Kafka refused to create {topic}: {code}"))?;
    }
    Ok(topic)
}

/// A topic for a consumer run and its `.dlq` companion (the consumer runtime needs it).
pub(super) async fn topic_and_dlq(
    stack: &Stack,
    partitions: i32,
    max_message_bytes: Option<usize>,
) -> Result<(String, String), BoxError> {
    let topic = create_topic_with_limit(stack, partitions, max_message_bytes).await?;
    let dlq = format!("{topic}.dlq");
    eda_stack_admin::create_topic(stack, &dlq, 1).await?;
    Ok((topic, dlq))
}

/// Deletes what one large-payload run created: its topic and dead-letter topic, the objects
/// under the bench prefix, its database.
pub(super) async fn tear_down(
    stack: &Stack,
    topics: [&str; 2],
    s3: &S3Settings,
    db: &str,
    pool: PgPool,
) -> Result<(), BoxError> {
    for topic in topics {
        super::common::delete_topic(stack, topic).await;
    }
    delete_prefix(s3).await?;
    super::common::drop_database(stack, db, pool).await
}

/// The object-store settings of the environment (`S3_ENDPOINT`, ...) with a prefix of this run's
/// own (`bench-<random>/`), so its objects can be deleted afterwards ([`delete_prefix`]).
pub(super) fn bench_s3() -> S3Settings {
    let mut s3 = S3Settings::from_env();
    s3.prefix = format!("{}/", unique("bench-payloads"));
    s3
}

/// A claim check (default policy: 256 KiB threshold, zstd, 64 MiB cap) on `s3`.
pub(super) fn claim_check(s3: &S3Settings) -> ClaimCheck {
    ClaimCheck::new(s3, Policy::default())
}

/// Deletes every object under `s3.prefix` (what a run uploaded); returns how many.
pub(super) async fn delete_prefix(s3: &S3Settings) -> Result<usize, BoxError> {
    let client = s3.client();
    let mut deleted = 0;
    loop {
        let listed = client
            .list_objects_v2()
            .bucket(&s3.bucket)
            .prefix(&s3.prefix)
            .max_keys(1000)
            .send()
            .await?;
        let keys: Vec<_> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(|k| {
                aws_sdk_s3::types::ObjectIdentifier::builder()
                    .key(k)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Ok(deleted);
        }
        deleted += keys.len();
        let delete = aws_sdk_s3::types::Delete::builder()
            .set_objects(Some(keys))
            .quiet(true)
            .build()?;
        client
            .delete_objects()
            .bucket(&s3.bucket)
            .delete(delete)
            .send()
            .await?;
    }
}

/// How a producer ships a payload over the claim-check threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// As it is, in one record (the topic's and the producer's limits raised for it).
    Inline,
    /// Stored in MinIO (zstd), a small reference in the record.
    ClaimCheck,
    /// Split into records of at most 512 KiB, reassembled by the consumer runtime.
    Chunk,
}

impl Mode {
    /// The label in the result tables.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Inline => "inline",
            Self::ClaimCheck => "claim check",
            Self::Chunk => "chunking",
        }
    }

    /// What the producer does with large payloads in this mode (as order-service's
    /// `CLAIM_CHECK=off|on|chunk`): claim check and chunks with the services' defaults.
    pub(super) fn large_payloads(self, s3: &S3Settings) -> LargePayloads {
        match self {
            Self::Inline => LargePayloads::Inline,
            Self::ClaimCheck => LargePayloads::ClaimCheck(claim_check(s3)),
            Self::Chunk => {
                let policy = Policy::default();
                LargePayloads::Chunk(eda_claim_check::Chunker::new(
                    policy.threshold,
                    eda_claim_check::Chunker::DEFAULT_CHUNK_BYTES,
                    policy.max_size,
                ))
            }
        }
    }

    /// The topic's `max.message.bytes` for payloads of `bytes`: raised only inline.
    pub(super) fn topic_limit(self, bytes: usize) -> Option<usize> {
        (self == Self::Inline).then(|| inline_limit(bytes))
    }
}

/// `max.message.bytes` (topic) and `message.max.bytes` (producer) for inline payloads of
/// `bytes`: room for the headers and the batch framing.
pub(super) fn inline_limit(bytes: usize) -> usize {
    bytes + MIB
}

/// An in-process relay on `pool` with the services' settings (`RelayConfig::default()`); its
/// producer's `message.max.bytes` raised to `max_message_bytes` when given (inline mode).
pub(super) fn relay(
    stack: &Stack,
    pool: &PgPool,
    max_message_bytes: Option<usize>,
) -> Result<Relay, BoxError> {
    let mut kafka = stack.kafka_config();
    if let Some(limit) = max_message_bytes {
        kafka.set("message.max.bytes", limit.to_string());
    }
    Ok(Relay::new(pool.clone(), kafka, RelayConfig::default())?)
}

/// A consumer runtime on `topic` with the services' defaults (dedupe by event id) and the
/// claim-check resolver, as inventory-service runs it. Chunks are reassembled by the runtime
/// whatever the mode.
pub(super) fn consumer<H: Handler>(
    stack: &Stack,
    pool: &PgPool,
    topic: &str,
    resolver: ClaimCheck,
    handler: H,
) -> Result<Consumer<H>, BoxError> {
    let config = ConsumerConfig::new(&stack.kafka_bootstrap_servers, &unique("bench"), &[topic]);
    Ok(Consumer::new(pool.clone(), config, handler)?.with_resolver(std::sync::Arc::new(resolver)))
}

/// An outbox event of aggregate `key` at `revision` (the consumer skips a revision of a key
/// it already applied) whose value is `payload` (already JSON).
pub(super) fn order_event(
    topic: &str,
    key: &str,
    event_type: &str,
    revision: i64,
    payload: String,
) -> Result<OutboxEvent, BoxError> {
    Ok(OutboxEvent::json(
        topic,
        "Order",
        key,
        event_type,
        revision,
        &serde_json::Value::Null,
    )?
    .with_payload(payload))
}

/// Prepares `event` for `large` (upload or split) and writes its rows in one transaction.
pub(super) async fn enqueue_large(
    pool: &PgPool,
    large: &LargePayloads,
    event: OutboxEvent,
) -> Result<usize, BoxError> {
    let prepared = large.prepare(event).await?;
    let mut tx = pool.begin().await?;
    prepared.enqueue(&mut tx).await?;
    tx.commit().await?;
    Ok(prepared.events().len())
}

/// CPU time (ns) of each of this process's librdkafka threads (`rdk:*`: the broker threads
/// compress produced batches and decompress fetched ones), by thread id, from
/// `/proc/self/task/*/schedstat`.
pub(super) fn librdkafka_cpu() -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !name.starts_with("rdk:") {
            continue;
        }
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()));
        let tid = task.file_name().to_string_lossy().parse().ok();
        if let (Some(tid), Some(ns)) = (tid, ns) {
            out.insert(tid, ns);
        }
    }
    out
}

/// Milliseconds of librdkafka CPU since `before` (threads started since count in full).
pub(super) fn librdkafka_cpu_ms_since(before: &HashMap<u64, u64>) -> f64 {
    librdkafka_cpu()
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_json_is_json_of_about_the_size_asked() {
        for bytes in [1024, 10 * KIB, MIB] {
            let json = order_json(bytes, 7);
            assert!(
                json.len() >= bytes && json.len() < bytes + 100,
                "{}",
                json.len()
            );
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            let lines = value["lines"].as_array().unwrap();
            assert!(lines[0]["sku"].as_str().unwrap().starts_with("SKU-"));
            let total: i64 = lines
                .iter()
                .map(|l| l["quantity"].as_i64().unwrap() * l["unit_price_cents"].as_i64().unwrap())
                .sum();
            assert_eq!(value["total_cents"].as_i64(), Some(total));
        }
        assert_ne!(order_json(1024, 1), order_json(1024, 2));
        assert_eq!(order_json(1024, 1), order_json(1024, 1));
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(10 * KIB), "10 KiB");
        assert_eq!(size_label(5 * MIB), "5 MiB");
        assert_eq!(size_label(MIB + MIB / 2), "1.5 MiB");
    }
}
