//! Faults on the real stack: the broker stopped during a burst, and the relay process killed
//! with SIGKILL mid-burst. Both stop shared infrastructure or processes, so the tests in this
//! binary run one at a time (a shared lock); cargo runs test binaries one after another.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use common::{burst, pending, wait_drained};
use eda_outbox::{Relay, RelayConfig, migrate};
use eda_test_support::{
    Stack, TempDatabase, consume_all, create_topic, header, kafka_config, stack_sh,
};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

mod common;

static SERIAL: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(120);

/// Every event at least once; after dropping repeats, each aggregate's revisions are 1..=n in
/// order. Returns how many deliveries were repeats (allowed by at-least-once).
fn assert_complete_and_ordered(
    messages: &[OwnedMessage],
    aggregates: usize,
    revisions: i64,
) -> usize {
    let mut seen = HashSet::new();
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in messages {
        if seen.insert(header(m, "event-id").unwrap()) {
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            per_key
                .entry(key)
                .or_default()
                .push(header(m, "revision").unwrap().parse().unwrap());
        }
    }
    assert_eq!(
        seen.len(),
        aggregates * revisions as usize,
        "every committed event was published"
    );
    let expected: Vec<i64> = (1..=revisions).collect();
    for (key, revs) in per_key {
        assert_eq!(revs, expected, "{key}: first deliveries in revision order");
    }
    messages.len() - seen.len()
}

#[tokio::test]
async fn kafka_stopped_during_a_burst_loses_nothing_and_keeps_order() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    migrate(&pool).await.unwrap();
    let topic = create_topic(&stack, 6).await;

    let config = RelayConfig {
        poll_interval: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        ..RelayConfig::default()
    };
    let mut kafka = kafka_config(&stack);
    // Fail fast while the broker is away, so the test exercises many retry rounds.
    kafka.set("message.timeout.ms", "3000");
    let relay = Relay::new(pool.clone(), kafka, config).expect("relay settings");
    let metrics = relay.metrics();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(relay.run(shutdown.clone()));

    stack_sh(&["down", "kafka"]);
    burst(&pool, &topic, 20, 10).await; // 200 events, committed while Kafka is down
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        pending(&pool).await,
        200,
        "nothing can be published while the broker is down"
    );
    stack_sh(&["up", "kafka"]);

    wait_drained(&pool, WAIT).await;
    shutdown.cancel();
    handle.await.unwrap();
    assert!(
        metrics.publish_errors_total() > 0,
        "the outage was seen and retried"
    );

    let messages = consume_all(&stack, &topic, 200, WAIT, Duration::from_secs(3)).await;
    let repeats = assert_complete_and_ordered(&messages, 20, 10);
    eprintln!(
        "kafka outage: 200 events, {} deliveries, {repeats} repeats",
        messages.len()
    );
}

/// The relay example binary, built by `cargo test` next to this test binary.
fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("relay");
    assert!(
        path.exists(),
        "{} missing: cargo test builds examples",
        path.display()
    );
    path
}

fn start_relay_process(stack: &Stack, db: &TempDatabase) -> Child {
    Command::new(relay_binary())
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP_SERVERS", &stack.kafka_bootstrap_servers)
        .spawn()
        .expect("start the relay process")
}

#[tokio::test]
async fn relay_killed_mid_burst_loses_nothing_after_restart() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    migrate(&pool).await.unwrap();
    let topic = create_topic(&stack, 6).await;

    let mut relay = start_relay_process(&stack, &db);
    let writer = tokio::spawn({
        let (pool, topic) = (pool.clone(), topic.clone());
        async move { burst(&pool, &topic, 40, 50).await } // 2,000 events
    });
    // Kill it once it has published something and while work remains.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let published: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        if published > 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay published nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.kill().expect("SIGKILL the relay"); // std's kill() is SIGKILL on Unix
    relay.wait().unwrap();
    let left = pending(&pool).await;
    writer.await.unwrap();

    let mut relay = start_relay_process(&stack, &db);
    wait_drained(&pool, WAIT).await;
    relay.kill().unwrap();
    relay.wait().unwrap();

    let messages = consume_all(&stack, &topic, 2000, WAIT, Duration::from_secs(3)).await;
    let repeats = assert_complete_and_ordered(&messages, 40, 50);
    eprintln!(
        "relay SIGKILL: {left} pending at the kill, {} deliveries, {repeats} repeats",
        messages.len()
    );
}
