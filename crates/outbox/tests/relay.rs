//! The relay against the real PostgreSQL and Kafka: atomicity with the caller's transaction,
//! the message contract, gap safety, leadership and per-aggregate order.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{burst, event, pending, wait_drained};
use eda_outbox::{OutboxEvent, Relay, RelayConfig, enqueue, enqueue_all, migrate};
use eda_test_support::{Stack, TempDatabase, consume_all, create_topic, header, kafka_config};
use rdkafka::Message;
use rdkafka::message::Headers;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

mod common;

const WAIT: Duration = Duration::from_secs(60);

async fn setup() -> (Stack, TempDatabase, PgPool, String) {
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    migrate(&pool).await.expect("outbox migrations");
    let topic = create_topic(&stack, 3).await;
    (stack, db, pool, topic)
}

fn fast_config() -> RelayConfig {
    RelayConfig {
        poll_interval: Duration::from_millis(200),
        lock_retry_interval: Duration::from_millis(200),
        ..RelayConfig::default()
    }
}

struct Running {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    metrics: std::sync::Arc<eda_outbox::RelayMetrics>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("relay stops in bounded time")
            .unwrap();
    }
}

fn spawn_relay(stack: &Stack, pool: &PgPool, config: RelayConfig) -> Running {
    let shutdown = CancellationToken::new();
    let relay = Relay::new(pool.clone(), kafka_config(stack), config).expect("relay settings");
    let metrics = relay.metrics();
    let handle = tokio::spawn(relay.run(shutdown.clone()));
    Running {
        shutdown,
        handle,
        metrics,
    }
}

async fn wait_until_published(pool: &PgPool, event_id: uuid::Uuid) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let published: Option<bool> =
            sqlx::query_scalar("SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(pool)
                .await
                .unwrap();
        if published == Some(true) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "event {event_id} not published within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_event_exists_only_if_its_transaction_commits() {
    let (stack, _db, pool, topic) = setup().await;

    let mut tx = pool.begin().await.unwrap();
    enqueue(&mut tx, &event(&topic, "rolled-back", 1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let committed = event(&topic, "committed", 1)
        .with_header("request-id", "req-1")
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    enqueue(&mut tx, &committed).await.unwrap();
    tx.commit().await.unwrap();

    let relay = spawn_relay(&stack, &pool, fast_config());
    let messages = consume_all(&stack, &topic, 1, WAIT, Duration::from_secs(2)).await;
    relay.stop().await;

    assert_eq!(messages.len(), 1, "only the committed event is published");
    let message = &messages[0];
    assert_eq!(message.key(), Some("committed".as_bytes()));
    assert_eq!(
        message.payload_view::<str>().unwrap().unwrap(),
        committed.payload()
    );
    assert_eq!(
        header(message, "event-id"),
        Some(committed.event_id().to_string())
    );
    assert_eq!(
        header(message, "event-type").as_deref(),
        Some("OrderPlaced")
    );
    assert_eq!(header(message, "aggregate-type").as_deref(), Some("Order"));
    assert_eq!(
        header(message, "aggregate-id").as_deref(),
        Some("committed")
    );
    assert_eq!(header(message, "revision").as_deref(), Some("1"));
    assert_eq!(
        header(message, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(header(message, "schema-version").as_deref(), Some("1"));
    assert_eq!(header(message, "request-id").as_deref(), Some("req-1"));
    assert!(header(message, "occurred-at").is_some());
    assert_eq!(
        header(message, "traceparent"),
        None,
        "unset optional headers carry no value"
    );
    let traceparent = message
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "traceparent")
        .expect("every contract header is present");
    assert_eq!(traceparent.value, None, "null, never an empty string");
    assert_eq!(pending(&pool).await, 0);
}

#[tokio::test]
async fn enqueue_all_writes_the_rows_enqueue_writes_in_one_statement_and_in_order() {
    let (_stack, _db, pool, topic) = setup().await;
    let events: Vec<OutboxEvent> = (0..5)
        .map(|i| {
            let e = OutboxEvent::json(
                &topic,
                "Order",
                &format!("o-{i}"),
                "OrderPlaced",
                i,
                &serde_json::json!({"i": i}),
            )
            .unwrap();
            // Mixed optional columns: NULL where an event does not set one.
            if i % 2 == 0 {
                e.with_header("request-id", format!("req-{i}")).unwrap()
            } else {
                e
            }
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    enqueue_all(&mut tx, &events[..3]).await.unwrap();
    for e in &events[3..] {
        enqueue(&mut tx, e).await.unwrap();
    }
    enqueue_all(&mut tx, &[]).await.unwrap();
    tx.commit().await.unwrap();
    let rows: Vec<(uuid::Uuid, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT event_id, aggregate_id, revision, request_id, payload FROM outbox ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5);
    for (i, (row, e)) in rows.iter().zip(&events).enumerate() {
        assert_eq!(row.0, e.event_id(), "row {i} in order");
        assert_eq!(row.1, format!("o-{i}"));
        assert_eq!(row.2, i.to_string());
        assert_eq!(row.3, (i % 2 == 0).then(|| format!("req-{i}")));
        assert_eq!(row.4, format!("{{\"i\":{i}}}"));
    }
}

#[tokio::test]
async fn a_row_committed_late_with_a_lower_id_is_not_skipped() {
    let (stack, _db, pool, topic) = setup().await;
    let relay = spawn_relay(&stack, &pool, fast_config());

    // tx1 takes the lower id but commits last: the classic gap of cursor-based pollers.
    let early = event(&topic, "a", 1);
    let mut tx1 = pool.begin().await.unwrap();
    enqueue(&mut tx1, &early).await.unwrap();

    let late = event(&topic, "b", 1);
    let mut tx2 = pool.begin().await.unwrap();
    enqueue(&mut tx2, &late).await.unwrap();
    tx2.commit().await.unwrap();
    wait_until_published(&pool, late.event_id()).await;

    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        ids.len(),
        1,
        "tx1 is still open, so only tx2's row is visible"
    );

    tx1.commit().await.unwrap();
    wait_until_published(&pool, early.event_id()).await;

    let messages = consume_all(&stack, &topic, 2, WAIT, Duration::from_secs(1)).await;
    relay.stop().await;
    let got: HashSet<String> = messages
        .iter()
        .map(|m| header(m, "event-id").unwrap())
        .collect();
    assert_eq!(
        got,
        HashSet::from([early.event_id().to_string(), late.event_id().to_string()])
    );
    assert_eq!(messages.len(), 2, "no duplicates");
}

#[tokio::test]
async fn two_relays_publish_each_event_once_in_aggregate_order_and_fail_over() {
    let (stack, _db, pool, topic) = setup().await;
    let relay_a = spawn_relay(&stack, &pool, fast_config());
    let relay_b = spawn_relay(&stack, &pool, fast_config());

    // 20 aggregates x 15 revisions, written by concurrent writers, each aggregate in order.
    burst(&pool, &topic, 20, 15).await;
    wait_drained(&pool, WAIT).await;

    // Exactly one leads. Stop it: the other must take over.
    assert!(
        relay_a.metrics.is_leader() ^ relay_b.metrics.is_leader(),
        "exactly one relay leads"
    );
    let (leader, standby) = if relay_a.metrics.is_leader() {
        (relay_a, relay_b)
    } else {
        (relay_b, relay_a)
    };
    assert_eq!(
        standby.metrics.published_total(),
        0,
        "the standby published nothing"
    );
    leader.stop().await;
    let after = event(&topic, "agg-0", 16);
    let mut tx = pool.begin().await.unwrap();
    enqueue(&mut tx, &after).await.unwrap();
    tx.commit().await.unwrap();
    wait_until_published(&pool, after.event_id()).await;
    assert!(standby.metrics.is_leader(), "the standby took over");
    standby.stop().await;

    let messages = consume_all(&stack, &topic, 301, WAIT, Duration::from_secs(2)).await;
    assert_eq!(
        messages.len(),
        301,
        "every event exactly once (no steady-state duplicates with two relays)"
    );
    let mut revisions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in &messages {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        revisions
            .entry(key)
            .or_default()
            .push(header(m, "revision").unwrap().parse().unwrap());
    }
    for (key, revs) in &revisions {
        let expected: Vec<i64> = (1..=revs.len() as i64).collect();
        assert_eq!(revs, &expected, "revisions of {key} arrive in order");
    }
}

#[tokio::test]
async fn metrics_report_backlog_and_publications() {
    let (stack, _db, pool, topic) = setup().await;
    for i in 0..5 {
        let mut tx = pool.begin().await.unwrap();
        enqueue(&mut tx, &event(&topic, &format!("m-{i}"), 1))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let relay =
        Relay::new(pool.clone(), kafka_config(&stack), fast_config()).expect("relay settings");
    let metrics = relay.metrics();
    let before = metrics.render(&pool).await.unwrap();
    assert!(before.contains("outbox_pending_rows 5"), "{before}");
    assert!(before.contains("outbox_relay_leader 0"), "{before}");

    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(relay.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while metrics.published_total() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "not published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = metrics.render(&pool).await.unwrap();
    shutdown.cancel();
    handle.await.unwrap();
    assert!(after.contains("outbox_pending_rows 0"), "{after}");
    assert!(
        after.contains("outbox_oldest_pending_age_seconds 0"),
        "{after}"
    );
    assert!(after.contains("outbox_published_total 5"), "{after}");
    assert!(after.contains("outbox_relay_leader 1"), "{after}");
}

#[tokio::test]
async fn published_rows_are_cleaned_up_after_the_retention() {
    let (stack, _db, pool, topic) = setup().await;
    let config = RelayConfig {
        retention: Duration::ZERO,
        cleanup_interval: Duration::from_millis(100),
        ..fast_config()
    };
    let e = event(&topic, "c", 1);
    let mut tx = pool.begin().await.unwrap();
    enqueue(&mut tx, &e).await.unwrap();
    tx.commit().await.unwrap();
    let relay = spawn_relay(&stack, &pool, config);
    consume_all(&stack, &topic, 1, WAIT, Duration::ZERO).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
        if rows == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "published row not cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_table_of_the_services_choosing_is_migrated_filled_published_and_cleaned() {
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    let topic = create_topic(&stack, 3).await;
    let table = eda_outbox::OutboxTable::new("billing_outbox").unwrap();
    table.migrate(&pool).await.unwrap();
    table.migrate(&pool).await.unwrap(); // idempotent

    let e = event(&topic, "invoice-1", 1);
    let mut tx = pool.begin().await.unwrap();
    eda_outbox::enqueue_into(&mut tx, &table, &e).await.unwrap();
    tx.commit().await.unwrap();

    let relay = spawn_relay(
        &stack,
        &pool,
        RelayConfig {
            table: table.clone(),
            retention: Duration::ZERO,
            cleanup_interval: Duration::from_millis(100),
            ..fast_config()
        },
    );
    let messages = consume_all(&stack, &topic, 1, WAIT, Duration::from_millis(500)).await;
    assert_eq!(
        header(&messages[0], "event-id"),
        Some(e.event_id().to_string())
    );
    // Published, then cleaned up (retention zero): the table empties.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM billing_outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rows left: {left}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay.metrics.published_total(), 1);
    relay.stop().await;
    let default_exists: bool = sqlx::query_scalar("SELECT to_regclass('outbox') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!default_exists, "nothing named outbox was created");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM _eda_billing_outbox_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(recorded >= 1, "its migrations are recorded apart");
}

#[tokio::test]
async fn a_record_kafka_refuses_is_parked_its_key_waits_and_the_others_flow() {
    let (stack, _db, pool, topic) = setup().await;
    // 2 MB: over the producer's 1,048,576-byte message.max.bytes, refused before sending.
    let huge =
        eda_outbox::OutboxEvent::json(&topic, "Order", "B", "OrderPlaced", 1, &"x".repeat(2 << 20))
            .unwrap();
    let rows = [
        event(&topic, "A", 1),
        huge.clone(),
        event(&topic, "B", 2),
        event(&topic, "C", 1),
        event(&topic, "A", 2),
    ];
    for e in &rows {
        let mut tx = pool.begin().await.unwrap();
        enqueue(&mut tx, e).await.unwrap();
        tx.commit().await.unwrap();
    }
    let relay = spawn_relay(&stack, &pool, fast_config());
    let flowed = consume_all(&stack, &topic, 3, WAIT, Duration::from_secs(2)).await;
    let keys: Vec<&[u8]> = flowed.iter().filter_map(|m| m.key()).collect();
    assert_eq!(flowed.len(), 3, "A1, C1, A2 published; B1 parked, B2 waits");
    assert!(
        !keys.contains(&b"B".as_slice()),
        "nothing of key B overtook the parked row"
    );
    let mut conn = pool.acquire().await.unwrap();
    let table = eda_outbox::OutboxTable::default();
    let parked = eda_outbox::parked(&mut conn, &table).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event_id, huge.event_id());
    let reason = parked[0].parked_reason.clone().unwrap();
    assert!(reason.contains("too large"), "{reason}");
    assert_eq!(relay.metrics.parked_total(), 1);
    let text = relay.metrics.render(&pool).await.unwrap();
    assert!(text.contains("outbox_parked_rows 1"), "{text}");

    // The fix (here: the payload replaced by something Kafka takes), then a release: the
    // parked row goes first, then the row of its key that waited.
    sqlx::query("UPDATE outbox SET payload = '{\"claim_check\":{}}' WHERE event_id = $1")
        .bind(huge.event_id())
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        eda_outbox::release(&mut conn, &table, parked[0].id)
            .await
            .unwrap()
    );
    assert!(
        !eda_outbox::release(&mut conn, &table, parked[0].id)
            .await
            .unwrap(),
        "once"
    );
    let all = consume_all(&stack, &topic, 5, WAIT, Duration::from_secs(1)).await;
    let b: Vec<String> = all
        .iter()
        .filter(|m| m.key() == Some(b"B".as_slice()))
        .map(|m| header(m, "revision").unwrap())
        .collect();
    assert_eq!(b, ["1", "2"], "key B in order after the release");
    relay.stop().await;
}

#[tokio::test]
async fn clean_up_keeps_running_while_the_relay_is_never_idle() {
    // A backlog of 20,000 rows in batches of 20: a thousand rounds that all publish, none idle.
    // Clean-up used to run only after an idle round; under sustained load published rows
    // piled up without end.
    let (stack, _db, pool, topic) = setup().await;
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, aggregate_type, aggregate_id, event_type, revision, \
         occurred_at, content_type, schema_version, payload) \
         SELECT gen_random_uuid(), $1, 'Order', 'agg-' || (i % 100), 'OrderPlaced', (i / 100 + 1)::text, \
         now()::text, 'application/json', '1', '{}' FROM generate_series(0, 19999) AS i",
    )
    .bind(&topic)
    .execute(&pool)
    .await
    .unwrap();
    let relay = spawn_relay(
        &stack,
        &pool,
        RelayConfig {
            batch_size: 20,
            retention: Duration::ZERO,
            cleanup_interval: Duration::from_millis(50),
            ..fast_config()
        },
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.metrics.published_total() < 8_000 {
        assert!(tokio::time::Instant::now() < deadline, "relay too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        relay.metrics.published_total() < 20_000,
        "still draining: the relay has not been idle yet"
    );
    assert!(
        rows < 20_000 - 4_000,
        "published rows are cleaned up during the drain ({rows} rows left of 20,000)"
    );
    relay.stop().await;
}

/// Whether the relay holds the wake-up lock (it sleeps, writers notify): an exclusive advisory
/// lock keyed (the table's oid, "edaw").
async fn relay_sleeps(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND mode = 'ExclusiveLock' AND classid = 'outbox'::regclass::oid AND objid = 1701077367 \
         AND objsubid = 2)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn commit_one(pool: &PgPool, event: &OutboxEvent) {
    let mut tx = pool.begin().await.unwrap();
    enqueue(&mut tx, event).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn writers_notify_only_while_the_relay_sleeps_and_a_sleeping_relay_wakes_at_once() {
    let (stack, _db, pool, topic) = setup().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("eda_outbox").await.unwrap();

    // No relay: nobody listens for the outbox, so a commit sends no NOTIFY.
    commit_one(&pool, &event(&topic, "no-relay", 1)).await;
    let heard = tokio::time::timeout(Duration::from_millis(1500), listener.recv()).await;
    assert!(
        heard.is_err(),
        "no NOTIFY without a sleeping relay: {heard:?}"
    );

    // A relay that polls only every 60 s: it drains, then sleeps holding the lock.
    let relay = spawn_relay(
        &stack,
        &pool,
        RelayConfig {
            poll_interval: Duration::from_secs(60),
            ..fast_config()
        },
    );
    wait_drained(&pool, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !relay_sleeps(&pool).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle relay never slept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Asleep: the commit notifies, and the relay publishes long before its 60 s poll.
    let woken = event(&topic, "wakes-the-relay", 1);
    let committed = tokio::time::Instant::now();
    commit_one(&pool, &woken).await;
    tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a commit notifies while the relay sleeps")
        .unwrap();
    wait_until_published(&pool, woken.event_id()).await;
    let took = committed.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "published {took:?} after the commit"
    );

    // A burst with the relay awake between its events still drains completely, in order.
    burst(&pool, &topic, 8, 25).await;
    wait_drained(&pool, WAIT).await;
    relay.stop().await;
    assert!(!relay_sleeps(&pool).await, "a stopped relay holds no lock");
    let messages = consume_all(&stack, &topic, 202, WAIT, Duration::from_secs(2)).await;
    assert_eq!(messages.len(), 202);
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for m in &messages {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let revision: i64 = header(m, "revision").unwrap().parse().unwrap();
        let previous = last.insert(key.clone(), revision).unwrap_or(0);
        assert_eq!(revision, previous + 1, "{key}: revisions in order");
    }
}
