//! The same outbox rows, published once by Debezium's Outbox Event Router (with the connector
//! config the project ships, `infra/debezium/outbox-connector.json`) and once by the in-process
//! relay, must give the same topic, key, headers, value and partition, field by field: plain
//! rows, claim-checked rows (small reference, `claim-check-*` headers) and chunked rows (one
//! payload in several consecutive rows of one key, `chunk-*` headers).
//!
//! And what each relay does with a row Kafka refuses (a payload over the 1 MB default limits):
//! the in-process relay parks it and every other key flows; Debezium's task fails and the whole
//! outbox stops, a restart fails again; with `errors.tolerance=all` Debezium drops the row for
//! good; raising the connector's `max.request.size` only moves the refusal to the broker.

use std::collections::BTreeMap;
use std::time::Duration;

use eda_outbox::{OutboxEvent, OutboxTable, Relay, RelayConfig, enqueue, migrate};
use eda_test_support::{
    OutboxConnector, Stack, TempDatabase, consume_all, create_topic, header, kafka_config,
};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(120);

fn all_headers(m: &OwnedMessage) -> Vec<(String, Option<String>)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `events` in one transaction, in order.
async fn write_all(pool: &PgPool, events: &[OutboxEvent]) {
    let mut tx = pool.begin().await.unwrap();
    for event in events {
        enqueue(&mut tx, event).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn write(pool: &PgPool, event: &OutboxEvent) {
    write_all(pool, std::slice::from_ref(event)).await;
}

/// An `OrderPlaced` of `key` with a small JSON body.
fn small(topic: &str, key: &str) -> OutboxEvent {
    OutboxEvent::json(
        topic,
        "Order",
        key,
        "OrderPlaced",
        1,
        &serde_json::json!({"k": key}),
    )
    .unwrap()
}

/// An event whose payload (a JSON string) is exactly `size` bytes.
fn of_size(topic: &str, key: &str, size: usize) -> OutboxEvent {
    let event =
        OutboxEvent::json(topic, "Order", key, "OrderPlaced", 1, &"x".repeat(size - 2)).unwrap();
    assert_eq!(event.payload().len(), size);
    event
}

/// Hex sha256 of `text`'s UTF-8 bytes, computed by PostgreSQL (this crate has no hash
/// dependency, and the database is at hand).
async fn sha256(pool: &PgPool, text: &str) -> String {
    sqlx::query_scalar("SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex')")
        .bind(text)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// What both relays published for the same rows, by event id, plus every message in order of
/// arrival.
struct Both {
    events: Vec<OutboxEvent>,
    from_debezium: Vec<OwnedMessage>,
    from_relay: Vec<OwnedMessage>,
    pool: PgPool,
    _db: TempDatabase,
}

impl Both {
    /// The messages of `key` on one path, in arrival order (per-partition order).
    fn of_key<'a>(messages: &'a [OwnedMessage], key: &str) -> Vec<&'a OwnedMessage> {
        messages
            .iter()
            .filter(|m| m.key() == Some(key.as_bytes()))
            .collect()
    }
}

/// Writes the transactions `build(topic)` returns (each inner list in one transaction, in
/// order), plus twelve one-row transactions of other keys so that two partitioners agreeing by
/// chance (1 in 3 per key) cannot pass; publishes them with Debezium, then the same rows with
/// the in-process relay (redirected to a topic of its own); and checks, for every event: key,
/// partition, value byte for byte, every contract header in order (null when unset), and the
/// same per-key order on both paths as written.
async fn parity(build: impl FnOnce(&str) -> Vec<Vec<OutboxEvent>>) -> Both {
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    migrate(&pool).await.unwrap();
    let debezium_topic = create_topic(&stack, 3).await;
    let relay_topic = create_topic(&stack, 3).await;
    let connector = OutboxConnector::register(&stack, &db.name).await;

    // Streaming starts when the slot exists; a first event proves it before the real ones.
    let warmup = OutboxEvent::json(&debezium_topic, "Order", "warmup", "Warmup", 1, &1).unwrap();
    write(&pool, &warmup).await;
    consume_all(&stack, &debezium_topic, 1, WAIT, Duration::ZERO).await;

    let mut transactions = build(&debezium_topic);
    for k in 3..=14 {
        transactions.push(vec![small(&debezium_topic, &format!("order-{k}"))]);
    }
    for tx in &transactions {
        write_all(&pool, tx).await;
    }
    let events: Vec<OutboxEvent> = transactions.into_iter().flatten().collect();
    let from_debezium = consume_all(
        &stack,
        &debezium_topic,
        events.len() + 1,
        WAIT,
        Duration::from_secs(2),
    )
    .await;
    connector.remove(&pool).await;

    // The same rows through the in-process relay, redirected to its own topic.
    sqlx::query("UPDATE outbox SET topic = $1 WHERE aggregate_id <> 'warmup'")
        .bind(&relay_topic)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM outbox WHERE aggregate_id = 'warmup'")
        .execute(&pool)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        pool.clone(),
        kafka_config(&stack),
        RelayConfig {
            poll_interval: Duration::from_millis(200),
            ..RelayConfig::default()
        },
    )
    .expect("relay settings");
    let handle = tokio::spawn(relay.run(shutdown.clone()));
    let from_relay = consume_all(
        &stack,
        &relay_topic,
        events.len(),
        WAIT,
        Duration::from_secs(1),
    )
    .await;
    shutdown.cancel();
    handle.await.unwrap();
    let from_debezium: Vec<OwnedMessage> = from_debezium
        .into_iter()
        .filter(|m| header(m, "aggregate-id").as_deref() != Some("warmup"))
        .collect();

    let by_id = |messages: &[OwnedMessage]| -> BTreeMap<String, OwnedMessage> {
        messages
            .iter()
            .map(|m| (header(m, "event-id").unwrap(), m.clone()))
            .collect()
    };
    let (debezium, relay) = (by_id(&from_debezium), by_id(&from_relay));
    assert_eq!(
        (from_debezium.len(), debezium.len()),
        (events.len(), events.len()),
        "Debezium published each event once"
    );
    assert_eq!(
        (from_relay.len(), relay.len()),
        (events.len(), events.len())
    );
    for e in &events {
        let id = e.event_id().to_string();
        let (d, r) = (&debezium[&id], &relay[&id]);
        assert_eq!(d.key(), r.key(), "key of {id}");
        // Kafka Connect's Java producer partitions by murmur2; the relay must agree, or a key
        // changes partition (and loses its order) when a deployment switches relays.
        assert_eq!(d.partition(), r.partition(), "partition of {id}");
        assert_eq!(d.key(), Some(e.key().as_bytes()));
        assert_eq!(d.payload(), r.payload(), "value of {id}");
        assert_eq!(
            d.payload(),
            Some(e.payload().as_bytes()),
            "value is the payload byte for byte"
        );
        assert_eq!(
            all_headers(d),
            all_headers(r),
            "headers of {id}, names, values and order"
        );
        let set: BTreeMap<&str, String> = e.headers().into_iter().collect();
        let expected: Vec<(String, Option<String>)> = eda_outbox::headers::CONTRACT_HEADERS
            .iter()
            .map(|(name, _, _)| ((*name).to_owned(), set.get(name).cloned()))
            .collect();
        assert_eq!(
            all_headers(r),
            expected,
            "every contract header, in order, null when unset"
        );
    }
    // Same per-key order on both paths, and the order they were written in.
    let keys: std::collections::BTreeSet<&str> = events.iter().map(OutboxEvent::key).collect();
    for key in keys {
        let written: Vec<String> = events
            .iter()
            .filter(|e| e.key() == key)
            .map(|e| e.event_id().to_string())
            .collect();
        for (path, messages) in [("debezium", &from_debezium), ("relay", &from_relay)] {
            let published: Vec<String> = Both::of_key(messages, key)
                .iter()
                .map(|m| header(m, "event-id").unwrap())
                .collect();
            assert_eq!(published, written, "order of key {key} via {path}");
        }
    }
    Both {
        events,
        from_debezium,
        from_relay,
        pool,
        _db: db,
    }
}

#[tokio::test]
async fn debezium_and_the_in_process_relay_produce_identical_messages() {
    parity(|topic| {
        vec![
            vec![
                OutboxEvent::json(
                    topic,
                    "Order",
                    "order-1",
                    "OrderPlaced",
                    1,
                    &serde_json::json!({"total_cents": 3000, "lines": [{"sku": "SKU-1"}]}),
                )
                .unwrap(),
            ],
            vec![
                OutboxEvent::json(
                    topic,
                    "Order",
                    "order-1",
                    "OrderCancelled",
                    2,
                    &serde_json::json!({"reason": "changed mind", "unicode": "größe ✓"}),
                )
                .unwrap()
                .with_header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .unwrap()
                .with_header("request-id", "req-42")
                .unwrap()
                .with_header("user-id", "alice")
                .unwrap(),
            ],
            vec![
                OutboxEvent::json(
                    topic,
                    "Order",
                    "order-2",
                    "OrderPlaced",
                    1,
                    &serde_json::json!({"claim": true}),
                )
                .unwrap()
                .with_header("claim-check-location", "s3://eda-claim-checks/x")
                .unwrap()
                .with_header("claim-check-size", "8388608")
                .unwrap(),
            ],
        ]
    })
    .await;
}

/// A claim-checked event as `eda_claim_check::ClaimCheck::offload` makes it: the payload
/// replaced by a small JSON reference, the four `claim-check-*` headers set.
fn claim_checked(topic: &str, key: &str, size: usize, codec: &str) -> OutboxEvent {
    let event = small(topic, key);
    let location = format!(
        "s3://eda-claim-checks/claim-checks/{topic}/{}",
        event.event_id()
    );
    let sha256 = format!("{:064x}", size as u128 * 0x9e37_79b9_7f4a_7c15);
    let reference = serde_json::json!({"claim_check": {
        "location": location, "sha256": sha256, "size": size, "codec": codec,
    }})
    .to_string();
    event
        .with_payload(reference)
        .with_headers([
            ("claim-check-location", location),
            ("claim-check-sha256", sha256),
            ("claim-check-size", size.to_string()),
            ("claim-check-codec", codec.to_owned()),
        ])
        .unwrap()
}

#[tokio::test]
async fn claim_checked_rows_are_published_identically_by_both_relays() {
    let both = parity(|topic| {
        vec![
            vec![claim_checked(topic, "bulk-1", 5 << 20, "zstd")],
            // With a small event of the same order in the same transaction, after it.
            vec![
                claim_checked(topic, "bulk-2", 50 << 20, "zstd"),
                small(topic, "bulk-2"),
            ],
            vec![
                claim_checked(topic, "bulk-3", 300_000, "none")
                    .with_header("request-id", "req-cc")
                    .unwrap(),
            ],
        ]
    })
    .await;
    for (path, messages) in [
        ("debezium", &both.from_debezium),
        ("relay", &both.from_relay),
    ] {
        let references: Vec<&OwnedMessage> = messages
            .iter()
            .filter(|m| header(m, "claim-check-location").is_some())
            .collect();
        assert_eq!(references.len(), 3, "{path}");
        for m in references {
            let value: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert!(
                m.payload().unwrap().len() < 512,
                "{path}: a small reference"
            );
            assert_eq!(
                value["claim_check"]["location"].as_str(),
                header(m, "claim-check-location").as_deref(),
                "{path}: the value and the headers name the same object"
            );
            assert_eq!(
                value["claim_check"]["size"].to_string(),
                header(m, "claim-check-size").unwrap()
            );
        }
    }
}

/// Byte ranges of at most `max` bytes, cut between UTF-8 characters (an outbox value is text).
fn boundaries(payload: &str, max: usize) -> Vec<std::ops::Range<usize>> {
    let (mut ranges, mut start) = (Vec::new(), 0);
    while start < payload.len() {
        let mut end = (start + max).min(payload.len());
        while !payload.is_char_boundary(end) {
            end -= 1;
        }
        ranges.push(start..end);
        start = end;
    }
    ranges
}

/// `event` in chunks of at most `max` bytes, as `eda_claim_check::Chunker::split` makes them:
/// one row per chunk with its own event id, same key, a slice of the payload as value, and the
/// `chunk-*` headers naming the whole message.
fn chunks(event: &OutboxEvent, max: usize, sha256: &str) -> Vec<OutboxEvent> {
    let payload = event.payload();
    let ranges = boundaries(payload, max);
    let count = ranges.len().to_string();
    ranges
        .into_iter()
        .enumerate()
        .map(|(index, range)| {
            event
                .clone()
                .with_event_id(uuid::Uuid::now_v7())
                .with_payload(payload[range].to_owned())
                .with_headers([
                    ("chunk-message-id", event.event_id().to_string()),
                    ("chunk-index", index.to_string()),
                    ("chunk-count", count.clone()),
                    ("chunk-size", payload.len().to_string()),
                    ("chunk-sha256", sha256.to_owned()),
                ])
                .unwrap()
        })
        .collect()
}

/// A bulk order's JSON with multi-byte characters, so that chunk boundaries fall next to them.
fn bulk_payload(lines: usize) -> String {
    let lines: Vec<Value> = (0..lines)
        .map(|i| serde_json::json!({"sku": format!("SKU-{i:05}"), "name": "Größe ✓ 😀", "quantity": i % 7 + 1}))
        .collect();
    serde_json::json!({ "lines": lines }).to_string()
}

#[tokio::test]
async fn chunked_rows_are_published_identically_by_both_relays_and_reassemble() {
    // Hashes need a database, and `parity` creates its own: compute them in a scratch one.
    let stack = Stack::from_env();
    let scratch = TempDatabase::create(&stack).await;
    let scratch_pool = scratch.pool().await;
    let mut sets = Vec::new();
    for (key, lines) in [("bulk-1", 400), ("bulk-2", 150), ("bulk-3", 900)] {
        let payload = bulk_payload(lines);
        let digest = sha256(&scratch_pool, &payload).await;
        sets.push((key, payload, digest));
    }
    let both = parity(|topic| {
        sets.iter()
            .map(|(key, payload, digest)| {
                let whole = small(topic, key).with_payload(payload.clone());
                let rows = chunks(&whole, 4_000, digest);
                assert!(rows.len() >= 2, "{} bytes", payload.len());
                rows
            })
            .collect()
    })
    .await;

    // Each set, on each path: consecutive on one partition, indices 0..count, and the values
    // joined are the payload (size and sha256 as announced).
    for (key, payload, digest) in &sets {
        let key = *key;
        let count = both.events.iter().filter(|e| e.key() == key).count();
        for (path, messages) in [
            ("debezium", &both.from_debezium),
            ("relay", &both.from_relay),
        ] {
            let set = Both::of_key(messages, key);
            assert_eq!(set.len(), count, "{path} {key}");
            let partitions: std::collections::BTreeSet<i32> =
                set.iter().map(|m| m.partition()).collect();
            assert_eq!(partitions.len(), 1, "{path} {key}: one partition");
            let mut joined = Vec::new();
            for (i, m) in set.iter().enumerate() {
                assert_eq!(header(m, "chunk-index"), Some(i.to_string()), "{path}");
                assert_eq!(header(m, "chunk-count"), Some(count.to_string()), "{path}");
                assert_eq!(header(m, "chunk-size"), Some(payload.len().to_string()));
                assert_eq!(header(m, "chunk-sha256").as_ref(), Some(digest));
                joined.extend_from_slice(m.payload().unwrap());
            }
            let joined = String::from_utf8(joined).expect("chunks cut between characters");
            assert_eq!(&joined, payload, "{path} {key}");
            assert_eq!(&sha256(&both.pool, &joined).await, digest, "{path} {key}");
            let ids: std::collections::BTreeSet<String> = set
                .iter()
                .map(|m| header(m, "chunk-message-id").unwrap())
                .collect();
            assert_eq!(ids.len(), 1, "{path} {key}: one message id per set");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Oversized rows.

/// Kafka Connect's REST API for the connector test-support registered for one database.
struct Connect {
    client: reqwest::Client,
    url: String,
}

impl Connect {
    /// Finds the connector whose `database.dbname` is `database`.
    async fn of_database(stack: &Stack, database: &str) -> Self {
        let client = reqwest::Client::new();
        let all: Value = client
            .get(format!(
                "{}/connectors?expand=info",
                stack.kafka_connect_url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let name = all
            .as_object()
            .unwrap()
            .iter()
            .find(|(_, c)| c["info"]["config"]["database.dbname"] == database)
            .map(|(name, _)| name.clone())
            .expect("the connector of the test database");
        Self {
            client,
            url: format!("{}/connectors/{name}", stack.kafka_connect_url),
        }
    }

    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `(connector state, task 0 state, task 0 trace)`.
    async fn state(&self) -> (String, String, String) {
        let status = self.get("/status").await;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        (
            text(&status["connector"]["state"]),
            text(&status["tasks"][0]["state"]),
            text(&status["tasks"][0]["trace"]),
        )
    }

    /// Waits until task 0 is in `state`; returns its trace.
    async fn wait_task(&self, state: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (_, task, trace) = self.state().await;
            if task == state {
                return trace;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task not {state} within {within:?}: {task} {trace}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The shipped config with `changes`, applied (the task restarts with it), waited for.
    async fn reconfigure(&self, changes: &[(&str, &str)]) {
        let mut config = self.get("/config").await;
        for (k, v) in changes {
            config[*k] = Value::from(*v);
        }
        let response = self
            .client
            .put(format!("{}/config", self.url))
            .json(&config)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "reconfigure: {}",
            response.text().await.unwrap_or_default()
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let tasks = self.get("/tasks").await;
            let applied = changes.iter().all(|(k, v)| tasks[0]["config"][*k] == *v);
            if applied && self.state().await.1 == "RUNNING" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not reconfigured");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The old task is stopped and the new one started by a rebalance: let it settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    /// The connector's replication slot.
    async fn slot(&self) -> String {
        self.get("/config").await["slot.name"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn restart_all(&self) {
        let response = self
            .client
            .post(format!("{}/restart?includeTasks=true", self.url))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    async fn restart_failed_task(&self) {
        let response = self
            .client
            .post(format!(
                "{}/restart?includeTasks=true&onlyFailed=true",
                self.url
            ))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
}

/// A database with the outbox, a topic, the shipped connector as `infra/debezium/register.sh`
/// registers it for the stack (`slot.drop.on.stop=false`: the slot outlives a stopped task)
/// with `changes`, streaming proven by a warm-up row, and its REST handle.
struct Oversized {
    stack: Stack,
    // Dropped before the database: a failed test leaves no connector and no slot behind.
    _cleanup: Cleanup,
    _db: TempDatabase,
    pool: PgPool,
    topic: String,
    connector: OutboxConnector,
    connect: Connect,
}

async fn oversized_setup(changes: &[(&str, &str)]) -> Oversized {
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    migrate(&pool).await.unwrap();
    let topic = create_topic(&stack, 3).await;
    let connector = OutboxConnector::register(&stack, &db.name).await;
    let connect = Connect::of_database(&stack, &db.name).await;
    let mut all = vec![("slot.drop.on.stop", "false")];
    all.extend_from_slice(changes);
    let cleanup = Cleanup {
        stack: stack.clone(),
        connector: connect.url.clone(),
        slot: connect.slot().await,
    };
    connect.reconfigure(&all).await;
    write(&pool, &small(&topic, "warmup")).await;
    consume_all(&stack, &topic, 1, WAIT, Duration::ZERO).await;
    Oversized {
        stack,
        _cleanup: cleanup,
        _db: db,
        pool,
        topic,
        connector,
        connect,
    }
}

/// When a test fails before `OutboxConnector::remove`: deletes the connector and drops its slot
/// (a slot, even inactive, keeps WAL and forbids dropping its database). After a clean
/// `remove` there is nothing left to do.
struct Cleanup {
    stack: Stack,
    connector: String,
    slot: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (admin, connector, slot) = (
            self.stack.database_admin_url.clone(),
            self.connector.clone(),
            self.slot.clone(),
        );
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let _ = reqwest::Client::new().delete(&connector).send().await;
                let Ok(pool) = PgPool::connect(&admin).await else {
                    return;
                };
                for _ in 0..200 {
                    let active: Option<bool> = sqlx::query_scalar(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    )
                    .bind(&slot)
                    .fetch_optional(&pool)
                    .await
                    .unwrap_or(None);
                    match active {
                        None => return,
                        Some(false) => {
                            let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
                                .bind(&slot)
                                .execute(&pool)
                                .await;
                        }
                        Some(true) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
        })
        .join();
    }
}

/// Everything on `topic` within `settle` (for "nothing more arrives").
async fn read_for(stack: &Stack, topic: &str, settle: Duration) -> Vec<OwnedMessage> {
    consume_all(stack, topic, 0, WAIT, settle).await
}

fn keys(messages: &[OwnedMessage]) -> Vec<String> {
    let mut keys: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned())
        .collect();
    keys.sort();
    keys
}

/// The exception lines of a Java stack trace (the message and every cause), without frames.
fn causes(trace: &str) -> String {
    trace
        .lines()
        .filter(|l| !l.trim_start().starts_with("at ") && !l.trim_start().starts_with("..."))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The server's current WAL position, in bytes.
async fn wal_position(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// 1,500,000 bytes: over the Java producer's `max.request.size` (1,048,576) and the broker's
/// `message.max.bytes` (1,048,588), both at Kafka's defaults.
const OVER: usize = 1_500_000;
/// 1,020,000 bytes: over librdkafka's own default `message.max.bytes` (1,000,000) but under the
/// Java producer's and the broker's; the in-process relay sets librdkafka's limit to the Java
/// producer's (`PRODUCER_DEFAULTS`), so both relays publish it.
const BETWEEN: usize = 1_020_000;

#[tokio::test]
async fn debezium_fails_on_an_oversized_row_and_stops_the_whole_outbox_where_the_relay_parks_it() {
    let o = oversized_setup(&[]).await;

    // Between the limits: Debezium publishes it (the in-process relay will not, see below).
    let between = of_size(&o.topic, "between", BETWEEN);
    write(&o.pool, &between).await;
    let published = consume_all(&o.stack, &o.topic, 2, WAIT, Duration::ZERO).await;
    let on_topic = published
        .iter()
        .find(|m| m.key() == Some(b"between".as_slice()))
        .expect("Debezium published the 1,020,000-byte row");
    assert_eq!(on_topic.payload(), Some(between.payload().as_bytes()));

    // Over the limits. The producer refuses it in its send callback; the task notices before
    // its next poll, which waits for the next row: with nothing after it, it reports RUNNING.
    let big = of_size(&o.topic, "big", OVER);
    write(&o.pool, &big).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (connector, task, _) = o.connect.state().await;
    assert_eq!(
        (connector.as_str(), task.as_str()),
        ("RUNNING", "RUNNING"),
        "the failure is not visible until another row comes"
    );
    // Small rows of other keys, each its own transaction: the first one fails the task.
    for k in ["a", "b", "c"] {
        write(&o.pool, &small(&o.topic, k)).await;
    }
    let trace = o.connect.wait_task("FAILED", Duration::from_secs(60)).await;
    eprintln!("task FAILED: {}", causes(&trace));
    assert!(
        trace.contains("Unrecoverable exception from producer send callback"),
        "{trace}"
    );
    assert!(trace.contains("RecordTooLargeException"), "{trace}");
    assert!(trace.contains("max.request.size"), "{trace}");
    let (connector, _, _) = o.connect.state().await;
    assert_eq!(
        connector, "RUNNING",
        "the connector runs; its only task failed"
    );
    let seen = read_for(&o.stack, &o.topic, Duration::from_secs(5)).await;
    assert_eq!(
        keys(&seen),
        ["between", "warmup"],
        "nothing after the oversized row was published, whatever its key"
    );
    // The slot stays, inactive: the server keeps every WAL segment from here on.
    let slot = o.connect.slot().await;
    let active: Option<bool> =
        sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&slot)
            .fetch_optional(&o.pool)
            .await
            .unwrap();
    assert_eq!(active, Some(false), "slot {slot} kept, nobody reading it");

    // A restart resumes from the last committed offset: the same row, the same failure.
    o.connect.restart_failed_task().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, task, trace) = o.connect.state().await;
    eprintln!("after a restart: task {task}: {}", causes(&trace));
    assert_eq!(task, "FAILED", "a poison row: the restart fails again");
    assert!(trace.contains("RecordTooLargeException"), "{trace}");
    let seen = read_for(&o.stack, &o.topic, Duration::from_secs(3)).await;
    assert!(
        !keys(&seen)
            .iter()
            .any(|k| ["big", "a", "b", "c"].contains(&k.as_str())),
        "{:?}",
        keys(&seen)
    );
    o.connector.remove(&o.pool).await;

    // The in-process relay over the same rows: both large rows parked, every other key flows.
    let relay_topic = create_topic(&o.stack, 3).await;
    sqlx::query("UPDATE outbox SET topic = $1 WHERE aggregate_id <> 'warmup'")
        .bind(&relay_topic)
        .execute(&o.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM outbox WHERE aggregate_id = 'warmup'")
        .execute(&o.pool)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        o.pool.clone(),
        kafka_config(&o.stack),
        RelayConfig {
            poll_interval: Duration::from_millis(200),
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let handle = tokio::spawn(relay.run(shutdown.clone()));
    let flowed = consume_all(&o.stack, &relay_topic, 4, WAIT, Duration::from_secs(2)).await;
    assert_eq!(keys(&flowed), ["a", "b", "between", "c"]);
    shutdown.cancel();
    handle.await.unwrap();
    let mut conn = o.pool.acquire().await.unwrap();
    let parked = eda_outbox::parked(&mut conn, &OutboxTable::default())
        .await
        .unwrap();
    let parked_ids: Vec<uuid::Uuid> = parked.iter().map(|p| p.event_id).collect();
    assert_eq!(
        parked_ids,
        [big.event_id()],
        "the relay refuses what Debezium's producer refuses, and publishes what it publishes"
    );
}

#[tokio::test]
async fn with_errors_tolerance_all_debezium_drops_an_oversized_row_for_good() {
    let o = oversized_setup(&[("errors.tolerance", "all"), ("errors.log.enable", "true")]).await;
    let big = of_size(&o.topic, "big", OVER);
    write(&o.pool, &big).await;
    let after_big = wal_position(&o.pool).await;
    for k in ["a", "b", "c"] {
        write(&o.pool, &small(&o.topic, k)).await;
    }
    // The rows after it flow; the oversized one is skipped.
    let seen = consume_all(&o.stack, &o.topic, 4, WAIT, Duration::from_secs(3)).await;
    assert_eq!(keys(&seen), ["a", "b", "c", "warmup"]);
    let (connector, task, _) = o.connect.state().await;
    assert_eq!((connector.as_str(), task.as_str()), ("RUNNING", "RUNNING"));

    // Not deferred: lost. The committed offset is past it (as if it had been sent), so a
    // restart does not bring it back, and nothing in the outbox table says so.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let offsets = o.connect.get("/offsets").await;
        let lsn = offsets["offsets"][0]["offset"]["lsn"].as_i64().unwrap_or(0);
        if lsn > after_big {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "offset not committed past the dropped row: {offsets}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    o.connect.restart_all().await;
    o.connect.wait_task("RUNNING", WAIT).await;
    write(&o.pool, &small(&o.topic, "d")).await;
    let seen = consume_all(&o.stack, &o.topic, 5, WAIT, Duration::from_secs(3)).await;
    assert_eq!(
        keys(&seen),
        ["a", "b", "c", "d", "warmup"],
        "after the restart: the next row, and not the oversized one"
    );
    let parked: Option<String> =
        sqlx::query_scalar("SELECT parked_reason FROM outbox WHERE event_id = $1")
            .bind(big.event_id())
            .fetch_one(&o.pool)
            .await
            .unwrap();
    assert_eq!(parked, None);
    o.connector.remove(&o.pool).await;
}

#[tokio::test]
async fn raising_the_connectors_max_request_size_moves_the_refusal_to_the_broker() {
    let o = oversized_setup(&[("producer.override.max.request.size", "10485760")]).await;
    write(&o.pool, &of_size(&o.topic, "big", OVER)).await;
    write(&o.pool, &small(&o.topic, "a")).await;
    let trace = o.connect.wait_task("FAILED", Duration::from_secs(60)).await;
    eprintln!("task FAILED: {}", causes(&trace));
    assert!(trace.contains("RecordTooLargeException"), "{trace}");
    assert!(
        !trace.contains("max.request.size"),
        "refused by the broker this time, not by the producer: {trace}"
    );
    // The refusal comes back from the broker asynchronously: a row sent meanwhile to another
    // partition may get through (then again after a restart), so only the big one is checked.
    let seen = read_for(&o.stack, &o.topic, Duration::from_secs(3)).await;
    eprintln!("published: {:?}", keys(&seen));
    assert!(!keys(&seen).contains(&"big".to_owned()));
    o.connector.remove(&o.pool).await;
}
