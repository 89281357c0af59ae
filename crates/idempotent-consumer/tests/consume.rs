//! The runtime against the real PostgreSQL and Kafka. The handler reserves stock with a
//! non-idempotent `reserved = reserved + qty`: exactly the effect that must not apply twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use eda_idempotent_consumer::{
    Consumer, ConsumerConfig, ConsumerMetrics, Dedupe, Event, Handler, HandlerError, migrate,
    prune_processed,
};
use eda_test_support::{
    Stack, TempDatabase, consume_all, create_topic, create_topic_named, header, kafka_config,
    produce, unique,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[path = "consume/chunks.rs"]
mod chunks;

const WAIT: Duration = Duration::from_secs(60);

/// Reserves `qty` of SKU-1 per `Reserve` event; fails transiently `fail_first` times first.
#[derive(Default)]
struct Reserve {
    fail_first: AtomicU32,
    /// The "fix" of the redrive test: Teleport events become acceptable.
    teleport_ok: std::sync::atomic::AtomicBool,
}

impl Handler for Reserve {
    async fn handle(&self, event: &Event, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let teleport = event.event_type == "Teleport" && self.teleport_ok.load(Ordering::SeqCst);
        if event.event_type != "Reserve" && !teleport {
            return Err(HandlerError::Permanent(format!(
                "unknown event type {}",
                event.event_type
            )));
        }
        let body: Value = event.json()?;
        let qty = body["qty"]
            .as_i64()
            .ok_or_else(|| HandlerError::Permanent("qty missing".to_owned()))?;
        if self.fail_first.load(Ordering::SeqCst) > 0 {
            self.fail_first.fetch_sub(1, Ordering::SeqCst);
            // A real serialization failure from PostgreSQL (SQLSTATE 40001): transient.
            sqlx::query(
                "DO $$ BEGIN RAISE EXCEPTION 'simulated conflict' USING ERRCODE = '40001'; END $$",
            )
            .execute(&mut *tx)
            .await?;
        }
        if body["bad_data"].as_bool() == Some(true) {
            // The event's data does not fit the schema (SQLSTATE 22P02): permanent.
            sqlx::query("SELECT $1::int")
                .bind("not a number")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE stock SET reserved = reserved + $1 WHERE sku = 'SKU-1'")
            .bind(qty)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO applied_log (event_id) VALUES ($1)")
            .bind(event.event_id)
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
}

async fn setup() -> Setup {
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    migrate(&pool).await.unwrap();
    sqlx::query("CREATE TABLE stock (sku text PRIMARY KEY, reserved bigint NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE applied_log (seq bigserial PRIMARY KEY, event_id uuid NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO stock VALUES ('SKU-1', 0)")
        .execute(&pool)
        .await
        .unwrap();
    let topic = create_topic(&stack, 3).await;
    create_topic_named(&stack, &format!("{topic}.dlq"), 1).await;
    Setup {
        stack,
        _db: db,
        pool,
        topic,
    }
}

async fn produce_reserve(stack: &Stack, topic: &str, event_id: Uuid, qty: i64) {
    produce_revision(stack, topic, event_id, 1, json!({ "qty": qty })).await;
}

/// A `Reserve` event of aggregate `order-1` at `revision`.
async fn produce_revision(stack: &Stack, topic: &str, event_id: Uuid, revision: i64, body: Value) {
    let (id, revision) = (event_id.to_string(), revision.to_string());
    produce(
        stack,
        topic,
        "order-1",
        &[
            ("event-id", &id),
            ("event-type", "Reserve"),
            ("aggregate-type", "Order"),
            ("aggregate-id", "order-1"),
            ("revision", &revision),
        ],
        body.to_string().as_bytes(),
    )
    .await;
}

struct Running {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    metrics: Arc<ConsumerMetrics>,
}

impl Running {
    async fn until(self, done: impl Fn(&ConsumerMetrics) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.metrics) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "consumer did not get there: processed {} duplicates {} dead {} retries {} chunks {}",
                self.metrics.processed(),
                self.metrics.duplicates(),
                self.metrics.dead_lettered(),
                self.metrics.retries(),
                self.metrics.chunks_stored()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("stops in bounded time")
            .unwrap();
    }
}

fn start(s: &Setup, group: &str, dedupe: Dedupe, handler: Reserve) -> Running {
    start_with(s, group, handler, |c| c.dedupe = dedupe)
}

fn config(s: &Setup, group: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(&s.stack.kafka_bootstrap_servers, group, &[&s.topic]);
    config.backoff_initial = Duration::from_millis(20);
    config
}

fn start_with(
    s: &Setup,
    group: &str,
    handler: Reserve,
    tweak: impl FnOnce(&mut ConsumerConfig),
) -> Running {
    let mut config = config(s, group);
    tweak(&mut config);
    let consumer = Consumer::new(s.pool.clone(), config, handler).unwrap();
    let metrics = consumer.metrics();
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move { consumer.run(stop).await.unwrap() }
    });
    Running {
        stop,
        handle,
        metrics,
    }
}

async fn reserved(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT reserved FROM stock WHERE sku = 'SKU-1'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Moves the group's committed offsets back to the start: the next consumer re-reads everything.
fn rewind(stack: &Stack, group: &str, topic: &str) {
    let consumer: BaseConsumer = kafka_config(stack).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))
            .unwrap();
    }
    // The previous member may still be leaving the group; the commit succeeds once it is empty.
    let deadline = std::time::Instant::now() + WAIT;
    while let Err(err) = consumer.commit(&tpl, CommitMode::Sync) {
        assert!(
            std::time::Instant::now() < deadline,
            "cannot rewind {group}: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn a_republished_event_is_applied_once_with_event_id_dedupe() {
    let s = setup().await;
    let event_id = Uuid::now_v7();
    for _ in 0..3 {
        produce_reserve(&s.stack, &s.topic, event_id, 5).await; // same event id, three offsets
    }
    start(&s, &unique("g"), Dedupe::EventId, Reserve::default())
        .until(|m| m.processed() + m.duplicates() == 3)
        .await;
    assert_eq!(reserved(&s.pool).await, 5, "stock reserved once");
}

#[tokio::test]
async fn group_membership_is_reported_from_the_first_assignment_until_the_stop() {
    let s = setup().await;
    produce_reserve(&s.stack, &s.topic, Uuid::now_v7(), 1).await;
    let running = start_with(&s, &unique("g"), Reserve::default(), |c| {
        c.stuck_after = Duration::ZERO;
    });
    let metrics = Arc::clone(&running.metrics);
    running
        .until(|m| {
            // An applied event proves the assignment; readiness follows it.
            m.processed() == 1 && m.in_group() && m.health().is_ok()
        })
        .await;
    assert!(!metrics.in_group(), "a stopped consumer has left its group");
    let err = metrics.health().unwrap_err();
    assert!(err.contains("not a member of its consumer group"), "{err}");
}

#[tokio::test]
async fn without_dedupe_a_republished_event_is_applied_three_times() {
    let s = setup().await;
    let event_id = Uuid::now_v7();
    for _ in 0..3 {
        produce_reserve(&s.stack, &s.topic, event_id, 5).await;
    }
    start(&s, &unique("g"), Dedupe::Off, Reserve::default())
        .until(|m| m.processed() == 3)
        .await;
    assert_eq!(
        reserved(&s.pool).await,
        15,
        "the pitfall: reserved three times"
    );
}

#[tokio::test]
async fn offsets_in_the_database_alone_do_not_catch_republished_duplicates_revisions_do() {
    // Documented limitation of Dedupe::Offsets, measured: a republish has a new offset.
    let s = setup().await;
    let event_id = Uuid::now_v7();
    for _ in 0..3 {
        produce_reserve(&s.stack, &s.topic, event_id, 5).await;
    }
    start_with(&s, &unique("g"), Reserve::default(), |c| {
        c.dedupe = Dedupe::Offsets;
        c.skip_stale = false;
    })
    .until(|m| m.processed() == 3)
    .await;
    assert_eq!(
        reserved(&s.pool).await,
        15,
        "offsets alone: applied 3 times"
    );

    // With the revision guard (the default), the republished copies carry a revision already
    // applied: skipped as stale.
    sqlx::query("UPDATE stock SET reserved = 0")
        .execute(&s.pool)
        .await
        .unwrap();
    start(&s, &unique("g"), Dedupe::Offsets, Reserve::default())
        .until(|m| m.processed() == 1 && m.stale() == 2)
        .await;
    assert_eq!(
        reserved(&s.pool).await,
        5,
        "offsets + revisions: applied once"
    );
}

#[tokio::test]
async fn a_late_older_revision_never_undoes_a_newer_one() {
    // rev 2 arrives first (reordered, or rev 1 was dead-lettered and is redriven later).
    let s = setup().await;
    produce_revision(&s.stack, &s.topic, Uuid::now_v7(), 2, json!({"qty": 4})).await;
    produce_revision(&s.stack, &s.topic, Uuid::now_v7(), 1, json!({"qty": 100})).await;
    produce_revision(&s.stack, &s.topic, Uuid::now_v7(), 3, json!({"qty": 1})).await;
    let running = start(&s, &unique("g"), Dedupe::EventId, Reserve::default());
    let metrics = Arc::clone(&running.metrics);
    running.until(|m| m.processed() + m.stale() == 3).await;
    assert_eq!(metrics.stale(), 1, "rev 1 after rev 2 is stale");
    assert_eq!(
        reserved(&s.pool).await,
        5,
        "rev 2 and rev 3 applied, rev 1 skipped"
    );
    let remembered: i64 = sqlx::query_scalar(
        "SELECT revision FROM aggregate_revisions WHERE aggregate_type = 'Order' AND aggregate_id = 'order-1'",
    )
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(remembered, 3);
}

#[tokio::test]
async fn database_errors_about_the_data_dead_letter_the_event_others_are_retried() {
    let s = setup().await;
    produce_revision(
        &s.stack,
        &s.topic,
        Uuid::now_v7(),
        1,
        json!({"qty": 1, "bad_data": true}),
    )
    .await;
    produce_revision(&s.stack, &s.topic, Uuid::now_v7(), 2, json!({"qty": 2})).await;
    let handler = Reserve {
        fail_first: AtomicU32::new(2), // two real serialization failures first
        ..Reserve::default()
    };
    let running = start(&s, &unique("g"), Dedupe::EventId, handler);
    let metrics = Arc::clone(&running.metrics);
    running
        .until(|m| m.dead_lettered() == 1 && m.processed() == 1)
        .await;
    assert_eq!(metrics.retries(), 2, "40001 is retried");
    assert_eq!(reserved(&s.pool).await, 2);
    let dead = consume_all(
        &s.stack,
        &format!("{}.dlq", s.topic),
        1,
        WAIT,
        Duration::ZERO,
    )
    .await;
    let reason = header(&dead[0], "dlq-reason").unwrap();
    assert!(
        reason.contains("refused the event's data") && reason.contains("integer"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_partition_retrying_past_stuck_after_is_reported_until_it_moves() {
    let s = setup().await;
    produce_reserve(&s.stack, &s.topic, Uuid::now_v7(), 1).await;
    let handler = Arc::new(Reserve {
        fail_first: AtomicU32::new(u32::MAX),
        ..Reserve::default()
    });
    let mut config = config(&s, &unique("g"));
    config.stuck_after = Duration::from_millis(300);
    config.backoff_max = Duration::from_millis(100);
    let consumer = Consumer::new(s.pool.clone(), config, Arc::clone(&handler)).unwrap();
    let metrics = consumer.metrics();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(consumer.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    let stuck = loop {
        if let Some(stuck) = metrics.stuck() {
            break stuck;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reported stuck"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stuck.topic, s.topic);
    assert!(stuck.error.contains("simulated conflict"), "{stuck}");
    assert!(
        metrics
            .render("g")
            .contains("consumer_stuck{group=\"g\"} 1")
    );

    handler.fail_first.store(0, Ordering::SeqCst); // the database recovers
    while metrics.processed() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metrics.stuck(), None, "no longer stuck once it moved");
    assert!(
        metrics
            .render("g")
            .contains("consumer_stuck{group=\"g\"} 0")
    );
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_missing_dead_letter_topic_is_an_error_at_start() {
    let s = setup().await;
    let lonely = create_topic(&s.stack, 1).await; // no .dlq beside it
    let config = ConsumerConfig::new(&s.stack.kafka_bootstrap_servers, &unique("g"), &[&lonely]);
    let consumer = Consumer::new(s.pool.clone(), config, Reserve::default()).unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        consumer.run(CancellationToken::new()),
    )
    .await
    .expect("fails fast, does not retry forever")
    .unwrap_err();
    assert!(err.to_string().contains(&format!("{lonely}.dlq")), "{err}");
}

#[tokio::test]
async fn overrides_that_break_a_guarantee_are_refused_at_construction() {
    let pool = sqlx::PgPool::connect_lazy("postgres://unused@127.0.0.1/unused").unwrap();
    for (key, value) in [
        ("enable.auto.offset.store", "true"),
        ("isolation.level", "read_uncommitted"),
        ("group.id", "other"),
    ] {
        let mut config = ConsumerConfig::new("127.0.0.1:9092", "g", &["t"]);
        config.kafka_overrides = vec![(key.to_owned(), value.to_owned())];
        let err = Consumer::new(pool.clone(), config, Reserve::default()).unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    let mut fine = ConsumerConfig::new("127.0.0.1:9092", "g", &["t"]);
    fine.kafka_overrides = vec![("session.timeout.ms".to_owned(), "10000".to_owned())];
    assert!(Consumer::new(pool, fine, Reserve::default()).is_ok());
}

#[tokio::test]
async fn redelivery_by_rewinding_the_group_is_applied_once_in_both_dedupe_modes() {
    for dedupe in [Dedupe::EventId, Dedupe::Offsets] {
        let s = setup().await;
        produce_reserve(&s.stack, &s.topic, Uuid::now_v7(), 7).await;
        let group = unique("g");
        start(&s, &group, dedupe, Reserve::default())
            .until(|m| m.processed() == 1)
            .await;
        for _ in 0..2 {
            rewind(&s.stack, &group, &s.topic);
            start(&s, &group, dedupe, Reserve::default())
                .until(|m| m.duplicates() == 1)
                .await;
        }
        assert_eq!(
            reserved(&s.pool).await,
            7,
            "{dedupe:?}: delivered three times, reserved once"
        );
    }
}

#[tokio::test]
async fn transient_failures_are_retried_without_reordering_the_partition() {
    let s = setup().await;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for (revision, id) in (1..).zip(&ids) {
        // same key: same partition, in order
        produce_revision(&s.stack, &s.topic, *id, revision, json!({"qty": 1})).await;
    }
    let handler = Reserve {
        fail_first: AtomicU32::new(3),
        ..Reserve::default()
    };
    let running = start(&s, &unique("g"), Dedupe::EventId, handler);
    let metrics = Arc::clone(&running.metrics);
    running.until(|m| m.processed() == 3).await;
    assert_eq!(metrics.retries(), 3);
    let applied: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM applied_log ORDER BY seq")
        .fetch_all(&s.pool)
        .await
        .unwrap();
    assert_eq!(applied, ids, "applied once each, in partition order");
    assert_eq!(reserved(&s.pool).await, 3);
}

/// The ids `applied_log` holds, in the order they were applied.
async fn applied_ids(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM applied_log ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_backlog_is_applied_in_batches_once_each_in_order_with_the_poison_event_alone() {
    let s = setup().await;
    let ids: Vec<Uuid> = (0..60).map(|_| Uuid::now_v7()).collect();
    let poison = 30;
    for (i, id) in ids.iter().enumerate() {
        let body = if i == poison {
            json!({"qty": 1, "bad_data": true})
        } else {
            json!({"qty": 1})
        };
        // One key, so one partition; revisions increase.
        produce_revision(&s.stack, &s.topic, *id, i as i64 + 1, body).await;
        if i == 10 {
            // republished right behind itself: the same batch holds it twice
            produce_revision(&s.stack, &s.topic, *id, i as i64 + 1, json!({"qty": 1})).await;
        }
    }
    let running = start_with(&s, &unique("g"), Reserve::default(), |c| {
        c.batch_max_events = 16;
    });
    let metrics = Arc::clone(&running.metrics);
    running
        .until(|m| m.processed() == 59 && m.dead_lettered() == 1)
        .await;
    assert!(metrics.batches() >= 2, "batches: {}", metrics.batches());
    assert_eq!(
        metrics.duplicates() + metrics.stale(),
        1,
        "the republished one"
    );
    assert_eq!(reserved(&s.pool).await, 59);
    let expected: Vec<Uuid> = (0..60).filter(|i| *i != poison).map(|i| ids[i]).collect();
    assert_eq!(
        applied_ids(&s.pool).await,
        expected,
        "once each, in partition order"
    );
    let dead = consume_all(
        &s.stack,
        &format!("{}.dlq", s.topic),
        1,
        WAIT,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(dead.len(), 1, "the poison event alone");
    assert_eq!(
        header(&dead[0], "event-id").as_deref(),
        Some(ids[poison].to_string().as_str())
    );
    assert!(
        header(&dead[0], "dlq-reason")
            .unwrap()
            .contains("refused the event's data")
    );
}

#[tokio::test]
async fn a_full_queue_or_buffer_pauses_the_partition_and_loses_nothing() {
    let s = setup().await;
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    for (i, id) in ids.iter().enumerate() {
        produce_revision(&s.stack, &s.topic, *id, i as i64 + 1, json!({"qty": 1})).await;
    }
    // A buffer of one byte: the partition is paused after every record and resumed once its
    // worker has applied it (each resume fetches again what librdkafka dropped at the pause,
    // about half a second: twenty records, not more).
    let running = start_with(&s, &unique("g"), Reserve::default(), |c| {
        c.batch_max_events = 2;
        c.buffer_max_bytes = 1;
    });
    running.until(|m| m.processed() == 20).await;
    assert_eq!(
        applied_ids(&s.pool).await,
        ids,
        "every event once, in order"
    );
}

#[tokio::test]
async fn batches_of_one_are_one_transaction_per_event() {
    let s = setup().await;
    for revision in 1..=10 {
        produce_revision(
            &s.stack,
            &s.topic,
            Uuid::now_v7(),
            revision,
            json!({"qty": 1}),
        )
        .await;
    }
    let running = start_with(&s, &unique("g"), Reserve::default(), |c| {
        c.batch_max_events = 1;
    });
    let metrics = Arc::clone(&running.metrics);
    running.until(|m| m.processed() == 10).await;
    assert_eq!(metrics.batches(), 0);
    assert_eq!(reserved(&s.pool).await, 10);
    let zero = Consumer::new(
        s.pool.clone(),
        {
            let mut c = config(&s, "g");
            c.batch_max_events = 0;
            c
        },
        Reserve::default(),
    );
    assert!(zero.unwrap_err().to_string().contains("batch_max_events"));
}

#[tokio::test]
async fn poison_records_go_to_the_dead_letter_topic_and_the_partition_moves_on() {
    let s = setup().await;
    let (a, b, good) = (
        Uuid::now_v7().to_string(),
        Uuid::now_v7().to_string(),
        Uuid::now_v7(),
    );
    produce(
        &s.stack,
        &s.topic,
        "order-1",
        &[("event-type", "Reserve")],
        b"{\"qty\":1}",
    )
    .await; // no event-id
    produce(
        &s.stack,
        &s.topic,
        "order-1",
        &[("event-id", &a), ("event-type", "Reserve")],
        b"not json",
    )
    .await;
    produce(
        &s.stack,
        &s.topic,
        "order-1",
        &[("event-id", &b), ("event-type", "Teleport")],
        b"{}",
    )
    .await;
    produce(
        &s.stack,
        &s.topic,
        "order-1",
        &[("event-id", "42"), ("event-type", "Reserve")],
        b"{\"qty\":1}",
    )
    .await;
    let c = Uuid::now_v7().to_string();
    let hostile_type = format!("Reserve\n\u{1b}[31m{}", "x".repeat(300));
    produce(
        &s.stack,
        &s.topic,
        "order-1",
        &[("event-id", &c), ("event-type", &hostile_type)],
        b"{\"qty\":1}",
    )
    .await;
    produce_reserve(&s.stack, &s.topic, good, 2).await;

    start(&s, &unique("g"), Dedupe::EventId, Reserve::default())
        .until(|m| m.dead_lettered() == 5 && m.processed() == 1)
        .await;
    assert_eq!(
        reserved(&s.pool).await,
        2,
        "the good record after the poison ones was applied"
    );

    let dead = consume_all(
        &s.stack,
        &format!("{}.dlq", s.topic),
        5,
        WAIT,
        Duration::from_millis(500),
    )
    .await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| header(m, "dlq-reason").unwrap())
        .collect();
    assert!(
        reasons[0].contains("missing required header event-id"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("not the expected JSON"), "{reasons:?}");
    assert!(
        reasons[2].contains("unknown event type Teleport"),
        "{reasons:?}"
    );
    assert!(reasons[3].contains("is not a UUID"), "{reasons:?}");
    assert!(reasons[4].contains("is not a name"), "{reasons:?}");
    assert!(
        !reasons[4].contains('\n') && !reasons[4].contains('\u{1b}') && reasons[4].len() < 200,
        "the reason quotes the value escaped and cut: {reasons:?}"
    );
    for m in &dead {
        assert_eq!(m.key(), Some(b"order-1".as_slice()), "original key kept");
        assert_eq!(
            header(m, "dlq-original-topic").as_deref(),
            Some(s.topic.as_str())
        );
        assert!(header(m, "dlq-original-offset").is_some());
    }
    assert_eq!(
        dead[1].payload(),
        Some(b"not json".as_slice()),
        "original value kept"
    );
    assert_eq!(
        header(&dead[2], "event-id").as_deref(),
        Some(b.as_str()),
        "original headers kept"
    );
}

#[tokio::test]
async fn processed_records_are_pruned_by_age() {
    let s = setup().await;
    sqlx::query("INSERT INTO processed_events (consumer_group, event_id, topic, \"partition\", \"offset\", processed_at) VALUES ('g', $1, 't', 0, 0, now() - interval '8 days'), ('g', $2, 't', 0, 1, now())")
        .bind(Uuid::now_v7())
        .bind(Uuid::now_v7())
        .execute(&s.pool)
        .await
        .unwrap();
    let pruned = prune_processed(&s.pool, Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(left, 1);
}

#[tokio::test]
async fn dead_letters_redriven_after_a_fix_are_applied_once() {
    let s = setup().await;
    let id = Uuid::now_v7().to_string();
    produce(
        &s.stack,
        &s.topic,
        "order-9",
        &[("event-id", &id), ("event-type", "Teleport")],
        b"{\"qty\":3}",
    )
    .await;
    let group = unique("g");
    start(&s, &group, Dedupe::EventId, Reserve::default())
        .until(|m| m.dead_lettered() == 1)
        .await;
    assert_eq!(reserved(&s.pool).await, 0);

    // The fix ships; the dead letter goes back and is applied.
    let dlq = format!("{}.dlq", s.topic);
    let first = eda_idempotent_consumer::redrive(
        &s.stack.kafka_bootstrap_servers,
        &dlq,
        &unique("redrive"),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(first.redriven, 1);
    let fixed = || Reserve {
        teleport_ok: true.into(),
        ..Reserve::default()
    };
    start(&s, &group, Dedupe::EventId, fixed())
        .until(|m| m.processed() == 1)
        .await;
    assert_eq!(reserved(&s.pool).await, 3);

    // Redriving again (another operator, another redrive group) is harmless: deduplicated.
    let again = eda_idempotent_consumer::redrive(
        &s.stack.kafka_bootstrap_servers,
        &dlq,
        &unique("redrive"),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(again.redriven, 1);
    start(&s, &group, Dedupe::EventId, fixed())
        .until(|m| m.duplicates() == 1)
        .await;
    assert_eq!(
        reserved(&s.pool).await,
        3,
        "applied once however often it is redriven"
    );
}

#[tokio::test]
async fn without_dedupe_a_rewound_group_applies_the_event_again_each_time() {
    // The pitfall on redelivery (crash before the offset commit, rebalance, rewind), measured.
    let s = setup().await;
    produce_reserve(&s.stack, &s.topic, Uuid::now_v7(), 7).await;
    let group = unique("g");
    start(&s, &group, Dedupe::Off, Reserve::default())
        .until(|m| m.processed() == 1)
        .await;
    for _ in 0..2 {
        rewind(&s.stack, &group, &s.topic);
        start(&s, &group, Dedupe::Off, Reserve::default())
            .until(|m| m.processed() == 1)
            .await;
    }
    assert_eq!(
        reserved(&s.pool).await,
        21,
        "delivered three times, reserved three times"
    );
}

#[tokio::test]
async fn tables_of_the_services_choosing_hold_the_dedupe_and_revision_records() {
    let s = setup().await;
    let tables = eda_idempotent_consumer::ConsumerTables::prefixed("billing_").unwrap();
    tables.migrate(&s.pool).await.unwrap();
    let event_id = Uuid::now_v7();
    for _ in 0..2 {
        produce_reserve(&s.stack, &s.topic, event_id, 5).await;
    }
    start_with(&s, &unique("g"), Reserve::default(), |c| {
        c.tables = tables.clone();
    })
    .until(|m| m.processed() == 1 && m.duplicates() == 1)
    .await;
    assert_eq!(reserved(&s.pool).await, 5);
    let count = |table: &'static str| {
        let pool = s.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(count("billing_processed_events").await, 1);
    assert_eq!(count("billing_aggregate_revisions").await, 1);
    assert_eq!(
        count("processed_events").await,
        0,
        "the default table is untouched"
    );
}

/// Records of a producer that knows nothing of the contract (Debezium change events): no
/// `event-id`, maybe no `event-type`, tombstones without a value. `Records::Foreign` applies
/// them under ids derived from their offsets, once each even when the group is rewound;
/// `Records::Contract` dead-letters them.
#[tokio::test]
async fn foreign_records_get_offset_ids_and_tombstones_reach_the_handler() {
    use eda_idempotent_consumer::Records;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let s = setup().await;
    let producer: FutureProducer = s.stack.producer_config().create().unwrap();
    let headers = || {
        rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "event-type",
            value: Some("Reserve"),
        })
    };
    for _ in 0..2 {
        produce(
            &s.stack,
            &s.topic,
            "k",
            &[("event-type", "Reserve")],
            br#"{"qty": 1}"#,
        )
        .await;
    }
    // A tombstone: the handler sees it (an empty payload), and refuses it as not JSON.
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&s.topic)
                .key("k")
                .headers(headers()),
            Duration::from_secs(30),
        )
        .await
        .unwrap();

    let group = unique("g");
    let foreign = |c: &mut ConsumerConfig| {
        c.dedupe = Dedupe::EventId;
        c.records = Records::Foreign;
    };
    start_with(&s, &group, Reserve::default(), foreign)
        .until(|m| m.processed() == 2 && m.dead_lettered() == 1)
        .await;
    assert_eq!(reserved(&s.pool).await, 2);
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM applied_log ORDER BY seq")
        .fetch_all(&s.pool)
        .await
        .unwrap();
    let letters = consume_all(
        &s.stack,
        &format!("{}.dlq", s.topic),
        1,
        WAIT,
        Duration::from_millis(500),
    )
    .await;
    // The ids are those of the records' own topic, partition and offset.
    let records = consume_all(&s.stack, &s.topic, 3, WAIT, Duration::from_millis(500)).await;
    let expected: Vec<Uuid> = records
        .iter()
        .filter(|r| r.payload().is_some())
        .map(|r| Event::offset_id(&s.topic, r.partition(), r.offset()))
        .collect();
    assert_eq!(ids, expected);
    let reason = header(&letters[0], "dlq-reason").unwrap();
    assert!(!reason.contains("no value"), "{reason}");
    assert_ne!(ids[0], ids[1]);

    // Rewound: a redelivered record has the same id, nothing is applied twice.
    rewind(&s.stack, &group, &s.topic);
    start_with(&s, &group, Reserve::default(), foreign)
        .until(|m| m.duplicates() == 2)
        .await;
    assert_eq!(reserved(&s.pool).await, 2);

    // The contract's default: the same records are poison.
    start(&s, &unique("g"), Dedupe::Offsets, Reserve::default())
        .until(|m| m.dead_lettered() == 3)
        .await;
    let letters = consume_all(
        &s.stack,
        &format!("{}.dlq", s.topic),
        4,
        WAIT,
        Duration::from_secs(1),
    )
    .await;
    let refused = letters
        .iter()
        .filter(|l| {
            header(l, "dlq-reason").is_some_and(|r| r.contains("missing required header event-id"))
        })
        .count();
    assert_eq!(
        refused,
        3,
        "{:?}",
        letters
            .iter()
            .map(|l| header(l, "dlq-reason"))
            .collect::<Vec<_>>()
    );
    assert_eq!(reserved(&s.pool).await, 2);
}
