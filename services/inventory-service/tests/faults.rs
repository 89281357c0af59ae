//! inventory-service as real processes under faults: SIGKILL mid-stream, and a group member
//! leaving mid-stream (rebalance). The stock arithmetic must add up exactly: every order
//! decided once, every reserved unit accounted for.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eda_test_support::{
    Stack, TempDatabase, create_topic, create_topic_named, kafka_config, unique,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const ORDERS: usize = 500;
const INITIAL: i64 = 1_000_000;
const WAIT: Duration = Duration::from_secs(120);

struct Fixture {
    stack: Stack,
    db: TempDatabase,
    pool: PgPool,
    orders_topic: String,
    inventory_topic: String,
    group: String,
}

async fn fixture() -> Fixture {
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    let orders_topic = create_topic(&stack, 6).await;
    let inventory_topic = create_topic(&stack, 6).await;
    create_topic_named(&stack, &format!("{orders_topic}.dlq"), 1).await;
    create_topic_named(&stack, &format!("{inventory_topic}.dlq"), 1).await;
    Fixture {
        stack,
        db,
        pool,
        orders_topic,
        inventory_topic,
        group: unique("inventory"),
    }
}

fn start(f: &Fixture) -> Child {
    Command::new(env!("CARGO_BIN_EXE_inventory-service"))
        .env("HTTP_PORT", "0")
        .env("DATABASE_URL", &f.db.url)
        // Its own key: the development key needs EDA_DEV_MODE, which a test must not rely on.
        .env("JWT_SECRET", "faults-test-secret-0123456789")
        .env("KAFKA_BOOTSTRAP_SERVERS", &f.stack.kafka_bootstrap_servers)
        .env("ORDER_EVENTS_TOPIC", &f.orders_topic)
        .env("INVENTORY_EVENTS_TOPIC", &f.inventory_topic)
        .env("CONSUMER_GROUP", &f.group)
        .env("OTEL_SDK_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start inventory-service")
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(0)
}

/// Waits until the service has migrated its database, then stocks SKU-1.
async fn stock_up(f: &Fixture) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready: Option<String> = sqlx::query_scalar("SELECT to_regclass('reservations')::text")
            .fetch_one(&f.pool)
            .await
            .unwrap();
        if ready.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "inventory-service did not migrate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query("INSERT INTO stock (sku, available) VALUES ('SKU-1', $1)")
        .bind(INITIAL)
        .execute(&f.pool)
        .await
        .unwrap();
}

/// 500 `OrderPlaced` events for SKU-1, quantities 1..=3, keyed by order id (all partitions).
async fn burst(f: &Fixture) -> i64 {
    let producer: FutureProducer = kafka_config(&f.stack)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut sends = Vec::new();
    let mut total = 0;
    for i in 0..ORDERS {
        let (order_id, event_id, qty) = (
            Uuid::now_v7(),
            Uuid::now_v7().to_string(),
            (i % 3 + 1) as i64,
        );
        total += qty;
        let payload =
            json!({"order_id": order_id, "lines": [{"sku": "SKU-1", "quantity": qty}]}).to_string();
        let key = order_id.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event-id",
                value: Some(event_id.as_str()),
            })
            .insert(Header {
                key: "event-type",
                value: Some("OrderPlaced"),
            })
            .insert(Header {
                key: "revision",
                value: Some("1"),
            });
        let producer = producer.clone();
        let topic = f.orders_topic.clone();
        sends.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&payload)
                        .headers(headers),
                    Timeout::After(WAIT),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    total
}

async fn wait_decided(f: &Fixture, at_least: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while count(&f.pool, "SELECT count(*) FROM reservations").await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} orders decided",
            count(&f.pool, "SELECT count(*) FROM reservations").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every order decided once, and the units add up.
async fn assert_exact(f: &Fixture, total_qty: i64) {
    assert_eq!(
        count(
            &f.pool,
            "SELECT count(*) FROM reservations WHERE status = 'RESERVED'"
        )
        .await,
        ORDERS as i64
    );
    assert_eq!(
        count(&f.pool, "SELECT count(*) FROM processed_events").await,
        ORDERS as i64,
        "one dedupe record per event"
    );
    assert_eq!(
        count(
            &f.pool,
            "SELECT count(*) FROM outbox WHERE event_type = 'InventoryReserved'"
        )
        .await,
        ORDERS as i64,
        "one outcome per order"
    );
    let (available, reserved): (i64, i64) =
        sqlx::query_as("SELECT available, reserved FROM stock WHERE sku = 'SKU-1'")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(
        reserved, total_qty,
        "reserved = the sum of all orders, once"
    );
    assert_eq!(
        available,
        INITIAL - total_qty,
        "available + reserved = initial stock"
    );
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn consumer_killed_mid_stream_applies_every_order_exactly_once_after_restart() {
    let f = fixture().await;
    let mut first = start(&f);
    stock_up(&f).await;
    let total = burst(&f).await;
    wait_decided(&f, 50).await;
    signal(&first, "-KILL");
    first.wait().unwrap();
    let at_kill = count(&f.pool, "SELECT count(*) FROM reservations").await;

    let mut second = start(&f);
    wait_decided(&f, ORDERS as i64).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // redeliveries after the restart settle
    assert_exact(&f, total).await;
    eprintln!(
        "SIGKILL after {at_kill} of {ORDERS} orders; all {ORDERS} decided exactly once after restart"
    );
    signal(&second, "-TERM");
    second.wait().unwrap();
}

#[tokio::test]
async fn a_member_leaving_mid_stream_hands_over_without_double_application_or_stall() {
    let f = fixture().await;
    let mut a = start(&f);
    stock_up(&f).await;
    let mut b = start(&f);
    tokio::time::sleep(Duration::from_secs(3)).await; // both members in the group
    let total = burst(&f).await;
    wait_decided(&f, 100).await;
    signal(&a, "-TERM"); // graceful leave: commit on revoke, partitions move to b
    a.wait().unwrap();
    wait_decided(&f, ORDERS as i64).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exact(&f, total).await;
    signal(&b, "-TERM");
    b.wait().unwrap();
}
