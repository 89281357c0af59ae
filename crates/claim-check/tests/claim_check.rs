//! The claim check against the real MinIO, Kafka and PostgreSQL: the default threshold's
//! boundaries, and 5 MB and 50 MB payloads, through the outbox relay and the consumer runtime;
//! hostile references dead-lettered with their reasons; an unreachable store is an error for
//! the writer and a retry for the consumer.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use eda_claim_check::{ClaimCheck, Codec, Error, Policy, S3Settings, headers};
use eda_idempotent_consumer::{Consumer, ConsumerConfig, Event, Handler, HandlerError};
use eda_outbox::{OutboxEvent, Relay, RelayConfig, enqueue};
use eda_test_support::{
    Stack, TempDatabase, consume_all, create_topic, create_topic_named, header, kafka_config,
    produce, unique,
};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

#[path = "claim_check/janitor.rs"]
mod janitor;

const WAIT: Duration = Duration::from_secs(60);
const THRESHOLD: usize = 4096;

fn settings(stack: &Stack, prefix: &str) -> S3Settings {
    S3Settings {
        endpoint: Some(stack.s3_endpoint.clone()),
        region: stack.aws_region.clone(),
        bucket: stack.s3_bucket.clone(),
        access_key_id: stack.s3_access_key.clone(),
        secret_access_key: stack.s3_secret_key.clone(),
        prefix: prefix.to_owned(),
    }
}

fn policy() -> Policy {
    // The default codec: zstd.
    Policy {
        threshold: THRESHOLD,
        max_size: 8 * 1024 * 1024,
        ..Policy::default()
    }
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Records what the handler saw: the payload's size and sha256.
struct Record;

impl Handler for Record {
    async fn handle(&self, event: &Event, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO seen (event_id, size, sha256) VALUES ($1, $2, $3)")
            .bind(event.event_id)
            .bind(event.payload.len() as i64)
            .bind(sha(&event.payload))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

struct Setup {
    stack: Stack,
    _db: TempDatabase,
    pool: PgPool,
    topic: String,
    claim_check: ClaimCheck,
    settings: S3Settings,
}

async fn setup() -> Setup {
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    eda_outbox::migrate(&pool).await.unwrap();
    eda_idempotent_consumer::migrate(&pool).await.unwrap();
    sqlx::query("CREATE TABLE seen (event_id uuid PRIMARY KEY, size bigint, sha256 text)")
        .execute(&pool)
        .await
        .unwrap();
    let topic = create_topic(&stack, 3).await;
    create_topic_named(&stack, &format!("{topic}.dlq"), 1).await;
    let settings = settings(&stack, &format!("{}/", unique("claims")));
    let claim_check = ClaimCheck::new(&settings, policy());
    Setup {
        stack,
        _db: db,
        pool,
        topic,
        claim_check,
        settings,
    }
}

/// Runs a consumer with the claim check as resolver until `done(processed, dead)`.
async fn consume(s: &Setup, resolver: ClaimCheck, done: impl Fn(u64, u64) -> bool) -> u64 {
    let mut config =
        ConsumerConfig::new(&s.stack.kafka_bootstrap_servers, &unique("g"), &[&s.topic]);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    let consumer = Consumer::new(s.pool.clone(), config, Record)
        .unwrap()
        .with_resolver(Arc::new(resolver));
    let metrics = consumer.metrics();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(consumer.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(metrics.processed(), metrics.dead_lettered()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer stuck: processed {} dead {} retries {}",
            metrics.processed(),
            metrics.dead_lettered(),
            metrics.retries()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    handle.await.unwrap().unwrap();
    metrics.retries()
}

/// An event whose serialized payload is exactly `size` bytes.
fn event_of_size(topic: &str, key: &str, size: usize) -> OutboxEvent {
    let skeleton = serde_json::json!({"pad": ""}).to_string().len();
    let body = serde_json::json!({"pad": "x".repeat(size - skeleton)});
    let event = OutboxEvent::json(topic, "Order", key, "OrderPlaced", 1, &body).unwrap();
    assert_eq!(event.payload().len(), size);
    event
}

/// Offloads `events` with `claim_check`, enqueues them (one transaction each), publishes them
/// with the in-process relay and returns what reached the topic, in the same order as
/// `events`, with the offloaded events as enqueued.
async fn offload_and_relay(
    s: &Setup,
    claim_check: &ClaimCheck,
    events: &[OutboxEvent],
) -> (Vec<OutboxEvent>, Vec<OwnedMessage>) {
    let mut offloaded = Vec::new();
    for e in events {
        let out = claim_check.offload(e.clone()).await.unwrap();
        let mut tx = s.pool.begin().await.unwrap();
        enqueue(&mut tx, &out).await.unwrap();
        tx.commit().await.unwrap();
        offloaded.push(out);
    }
    let (stop, relay) = start_relay(s);
    let records = consume_all(&s.stack, &s.topic, events.len(), WAIT, Duration::ZERO).await;
    stop.cancel();
    relay.await.unwrap();
    let ordered = events
        .iter()
        .map(|e| {
            records
                .iter()
                .find(|m| header(m, "event-id") == Some(e.event_id().to_string()))
                .expect("published")
                .clone()
        })
        .collect();
    (offloaded, ordered)
}

/// The in-process relay over the setup's outbox, until the token is cancelled.
fn start_relay(s: &Setup) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let relay = Relay::new(
        s.pool.clone(),
        kafka_config(&s.stack),
        RelayConfig {
            poll_interval: Duration::from_millis(200),
            ..RelayConfig::default()
        },
    )
    .unwrap();
    (stop.clone(), tokio::spawn(relay.run(stop)))
}

/// What the consumer's handler recorded for `event`: `(size, sha256)` of the payload it saw.
async fn seen(s: &Setup, event: &OutboxEvent) -> (usize, String) {
    let (size, digest): (i64, String) =
        sqlx::query_as("SELECT size, sha256 FROM seen WHERE event_id = $1")
            .bind(event.event_id())
            .fetch_one(&s.pool)
            .await
            .unwrap();
    (size as usize, digest)
}

/// Checks that `record` is a claim check for `original`, stored with `codec` under the
/// setup's prefix, and returns the object's key.
fn assert_reference(
    s: &Setup,
    original: &OutboxEvent,
    record: &OwnedMessage,
    codec: &str,
) -> String {
    let value = record.payload().unwrap();
    assert!(
        value.len() < 512,
        "a small reference ({} bytes)",
        value.len()
    );
    assert_eq!(
        header(record, headers::SIZE),
        Some(original.payload().len().to_string())
    );
    assert_eq!(
        header(record, headers::SHA256),
        Some(sha(original.payload().as_bytes()))
    );
    assert_eq!(header(record, headers::CODEC).as_deref(), Some(codec));
    let location = header(record, headers::LOCATION).unwrap();
    let prefix = format!("s3://{}/", s.settings.bucket);
    let key = location.strip_prefix(&prefix).expect("in the bucket");
    assert!(key.starts_with(&s.settings.prefix), "{location}");
    key.to_owned()
}

#[tokio::test]
async fn at_the_default_threshold_one_byte_more_is_offloaded_and_all_arrive_whole() {
    let s = setup().await;
    // The policy services run with: 256 KiB.
    let claim_check = ClaimCheck::new(&s.settings, Policy::default());
    let threshold = claim_check.policy().threshold;
    assert_eq!(threshold, 256 * 1024);
    let events = [
        event_of_size(&s.topic, "under", threshold - 1),
        event_of_size(&s.topic, "at", threshold),
        event_of_size(&s.topic, "over", threshold + 1),
    ];
    let (offloaded, records) = offload_and_relay(&s, &claim_check, &events).await;
    for ((e, out), record) in events.iter().zip(&offloaded).zip(&records).take(2) {
        assert_eq!(
            out.payload(),
            e.payload(),
            "{}: offload left it alone",
            e.key()
        );
        assert_eq!(
            record.payload(),
            Some(e.payload().as_bytes()),
            "{}: inline, byte for byte",
            e.key()
        );
        for name in [
            headers::LOCATION,
            headers::SHA256,
            headers::SIZE,
            headers::CODEC,
        ] {
            assert_eq!(header(record, name), None, "{}: no {name}", e.key());
        }
    }
    let key = assert_reference(&s, &events[2], &records[2], "zstd");
    assert_eq!(
        records[2].payload(),
        Some(offloaded[2].payload().as_bytes())
    );
    assert!(key.ends_with(&events[2].event_id().to_string()), "{key}");

    consume(&s, claim_check, |processed, _| processed == 3).await;
    for e in &events {
        assert_eq!(
            seen(&s, e).await,
            (e.payload().len(), sha(e.payload().as_bytes())),
            "{}: the handler saw it whole",
            e.key()
        );
    }
}

/// A bulk order's JSON of at least `bytes` bytes, built as text (a `serde_json::Value` of
/// 50 MB would hold several times that in memory); every line differs.
fn bulk_payload(bytes: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes + 128);
    out.push_str("{\"lines\":[");
    let mut i = 0u64;
    while out.len() < bytes {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"line\":{i},\"sku\":\"SKU-{:06}\",\"quantity\":{},\"unit_price_cents\":{}}}",
            i % 50_000,
            i % 7 + 1,
            1000 + i % 997
        );
        i += 1;
    }
    out.push_str("]}");
    out
}

#[tokio::test]
async fn five_and_fifty_megabyte_payloads_cross_the_relay_and_the_consumer_byte_identical() {
    let s = setup().await;
    // 5 MB compressed (zstd, the default); 50 MB stored as it is, so that the full 50 MB go
    // to MinIO and back. Both under the consumer's default cap (64 MiB).
    let zstd = ClaimCheck::new(&s.settings, Policy::default());
    let plain = ClaimCheck::new(
        &s.settings,
        Policy {
            codec: Codec::None,
            ..Policy::default()
        },
    );
    let event = |key: &str, bytes: usize| {
        OutboxEvent::json(&s.topic, "Order", key, "OrderPlaced", 1, &0)
            .unwrap()
            .with_payload(bulk_payload(bytes))
    };
    let five = event("five", 5_000_000);
    let fifty = event("fifty", 50_000_000);
    let started = std::time::Instant::now();
    let (_, five_record) = offload_and_relay(&s, &zstd, std::slice::from_ref(&five)).await;
    let (_, fifty_record) = offload_and_relay(&s, &plain, std::slice::from_ref(&fifty)).await;
    let keys = [
        assert_reference(&s, &five, &five_record[0], "zstd"),
        assert_reference(&s, &fifty, &fifty_record[0], "none"),
    ];
    let client = s.settings.client();
    let mut sizes = Vec::new();
    for key in &keys {
        let head = client
            .head_object()
            .bucket(&s.settings.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        sizes.push(head.content_length().unwrap());
    }
    let (five_stored, fifty_stored) = (sizes[0], sizes[1]);
    assert!(
        five_stored < 5_000_000 / 4,
        "zstd: {five_stored} bytes stored"
    );
    assert_eq!(
        fifty_stored as usize,
        fifty.payload().len(),
        "none: as it is"
    );
    let published = started.elapsed();

    // Either claim check resolves both: the codec travels in the headers.
    consume(&s, zstd, |processed, _| processed == 2).await;
    for e in [&five, &fifty] {
        let (size, digest) = seen(&s, e).await;
        assert_eq!(size, e.payload().len(), "{}", e.key());
        assert_eq!(
            digest,
            sha(e.payload().as_bytes()),
            "{}: byte-identical",
            e.key()
        );
    }
    eprintln!(
        "5 MB ({five_stored} bytes stored) and 50 MB ({fifty_stored} bytes stored): offloaded and \
         relayed in {published:?}, consumed in {:?} more",
        started.elapsed() - published
    );
    for key in keys {
        client
            .delete_object()
            .bucket(&s.settings.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    }
}

/// Produces a claim-checked record with the given headers (an attacker, or a bug).
async fn produce_reference(s: &Setup, location: &str, size: usize, digest: &str) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let size = size.to_string();
    produce(
        &s.stack,
        &s.topic,
        "k",
        &[
            ("event-id", &id),
            ("event-type", "OrderPlaced"),
            (headers::LOCATION, location),
            (headers::SIZE, &size),
            (headers::SHA256, digest),
            (headers::CODEC, "zstd"),
        ],
        b"{}",
    )
    .await;
    id
}

#[tokio::test]
async fn tampered_missing_outside_and_exploding_objects_are_dead_lettered_with_the_reason() {
    let s = setup().await;
    let client = s.settings.client();
    let bucket = &s.settings.bucket;
    let put = |key: String, body: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(body))
                .send()
                .await
                .unwrap();
        }
    };
    // Tampered: stored honestly, then overwritten with other bytes of the same size.
    let payload = b"{\"lines\":[1,2,3]}".repeat(400);
    let honest = s.claim_check.store("t/tampered", &payload).await.unwrap();
    let mut other = payload.clone();
    other[10] = b'9';
    put(
        honest.key.clone(),
        zstd::stream::encode_all(other.as_slice(), 3).unwrap(),
    )
    .await;
    produce_reference(&s, &honest.location(), honest.size, &honest.sha256).await;
    // Missing.
    let missing = format!("s3://{bucket}/{}t/never-written", s.settings.prefix);
    produce_reference(&s, &missing, 10, &sha(b"0123456789")).await;
    // Outside the bucket, and outside the prefix.
    produce_reference(&s, "s3://somebody-else/x", 10, &sha(b"0123456789")).await;
    produce_reference(&s, &format!("s3://{bucket}/elsewhere/x"), 10, &sha(b"x")).await;
    // A bomb: 8 MB of zeros compress to a few hundred bytes; it claims 1,000.
    let bomb_key = format!("{}t/bomb", s.settings.prefix);
    put(
        bomb_key.clone(),
        zstd::stream::encode_all(vec![0u8; 8 << 20].as_slice(), 19).unwrap(),
    )
    .await;
    produce_reference(
        &s,
        &format!("s3://{bucket}/{bomb_key}"),
        1000,
        &sha(&[0; 1000]),
    )
    .await;
    // And a good one behind them, which must still be applied.
    let good = s
        .claim_check
        .offload(event_of_size(&s.topic, "k", THRESHOLD * 2))
        .await
        .unwrap();
    let mut headers_of_good: Vec<(String, String)> = good
        .headers()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    headers_of_good.retain(|(k, _)| k != "traceparent");
    let pairs: Vec<(&str, &str)> = headers_of_good
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    produce(&s.stack, &s.topic, "k", &pairs, good.payload().as_bytes()).await;

    consume(&s, s.claim_check.clone(), |processed, dead| {
        processed == 1 && dead == 5
    })
    .await;
    let dead = consume_all(
        &s.stack,
        &format!("{}.dlq", s.topic),
        5,
        WAIT,
        Duration::ZERO,
    )
    .await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| header(m, "dlq-reason").unwrap())
        .collect();
    for (i, expected) in [
        "checksum mismatch",
        "is missing",
        "outside the bucket",
        "not a plain key under",
        "expands past its announced 1000 bytes",
    ]
    .iter()
    .enumerate()
    {
        assert!(reasons[i].contains(expected), "{i}: {reasons:?}");
    }
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM seen")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(seen, 1, "only the good record reached the handler");
}

#[tokio::test]
async fn an_unreachable_store_fails_the_writer_and_is_retried_by_the_consumer() {
    let s = setup().await;
    let down = S3Settings {
        endpoint: Some("http://127.0.0.1:9".to_owned()), // discard port: nothing listens
        ..s.settings.clone()
    };
    let unreachable = ClaimCheck::new(&down, policy());
    let big = event_of_size(&s.topic, "k", THRESHOLD * 4);
    let err = tokio::time::timeout(Duration::from_secs(60), unreachable.offload(big.clone()))
        .await
        .expect("gives up in bounded time")
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    // Small events need no store at all.
    let small = event_of_size(&s.topic, "k", 100);
    assert_eq!(
        unreachable.offload(small.clone()).await.unwrap().payload(),
        small.payload()
    );

    // A consumer whose store is down retries in order instead of dead-lettering.
    let stored = s.claim_check.offload(big).await.unwrap();
    let pairs: Vec<(&str, String)> = stored.headers();
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    produce(&s.stack, &s.topic, "k", &pairs, stored.payload().as_bytes()).await;
    let mut config =
        ConsumerConfig::new(&s.stack.kafka_bootstrap_servers, &unique("g"), &[&s.topic]);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    let consumer = Consumer::new(s.pool.clone(), config, Record)
        .unwrap()
        .with_resolver(Arc::new(unreachable));
    let metrics = consumer.metrics();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(consumer.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while metrics.retries() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metrics.dead_lettered(),
        0,
        "an outage is not a poison record"
    );
    assert_eq!(metrics.processed(), 0);
    stop.cancel();
    handle.await.unwrap().unwrap();
    // The store is back: the same event is applied whole.
    consume(&s, s.claim_check.clone(), |processed, _| processed == 1).await;
}

#[tokio::test]
async fn chunked_payloads_of_5_and_50_megabytes_and_at_the_threshold_arrive_whole() {
    let s = setup().await;
    let policy = Policy::default();
    let large = eda_claim_check::LargePayloads::Chunk(eda_claim_check::Chunker::new(
        policy.threshold,
        eda_claim_check::Chunker::DEFAULT_CHUNK_BYTES,
        policy.max_size,
    ));
    let event = |key: &str, bytes: usize| {
        OutboxEvent::json(&s.topic, "Order", key, "OrderPlaced", 1, &0)
            .unwrap()
            .with_payload(bulk_payload(bytes))
    };
    let t = policy.threshold;
    let events = [
        event_of_size(&s.topic, "under", t - 1),
        event_of_size(&s.topic, "at", t),
        event_of_size(&s.topic, "over", t + 1),
        event("five", 5_000_000),
        event("fifty", 50_000_000),
    ];
    let mut rows = Vec::new();
    for e in &events {
        let prepared = large.prepare(e.clone()).await.unwrap();
        let chunked = prepared.events()[0]
            .headers()
            .iter()
            .any(|(k, _)| *k == eda_claim_check::chunk_headers::MESSAGE_ID);
        assert_eq!(
            chunked,
            e.payload().len() > t,
            "{}: chunked only over the threshold",
            e.key()
        );
        let mut tx = s.pool.begin().await.unwrap();
        prepared.enqueue(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        rows.push(prepared.events().len());
    }
    // 512 KiB chunks: one byte over the threshold is a set of one chunk.
    assert_eq!(rows, [1, 1, 1, 10, 96], "rows per event");
    let (stop, relay) = start_relay(&s);
    let started = std::time::Instant::now();
    consume(&s, s.claim_check.clone(), |processed, _| processed == 5).await;
    stop.cancel();
    relay.await.unwrap();
    for e in &events {
        let (size, digest) = seen(&s, e).await;
        assert_eq!(size, e.payload().len(), "{}", e.key());
        assert_eq!(
            digest,
            sha(e.payload().as_bytes()),
            "{}: byte-identical",
            e.key()
        );
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM chunk_parts")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "complete sets are deleted");
    eprintln!(
        "chunks: 55 MB in {} rows relayed and reassembled in {:?}",
        rows.iter().sum::<usize>(),
        started.elapsed()
    );
}
