//! inventory-service as real processes under faults: SIGKILL mid-stream, and a group member
//! leaving mid-stream (rebalance). The stock arithmetic must add up exactly: every order
//! decided once, every reserved unit accounted for.
//!
//! And the object store (MinIO) really stopped, with order-service beside inventory-service:
//! while an order is placed (503, nothing written), and while inventory-service consumes a
//! claim-checked order (retried, not dead-lettered, reserved once when MinIO is back). Only
//! those two tests need MinIO, and they take turns; the others here never touch it.

#[allow(dead_code)] // the API tests' helpers; this binary uses a few of them
#[path = "api/helpers.rs"]
mod helpers;

#[path = "faults/chunks.rs"]
mod chunks;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eda_test_support::{
    Stack, TempDatabase, consume_all, create_topic, create_topic_named, header, kafka_config,
    stack_sh, unique, workspace_root,
};
use rdkafka::Message;
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

// ---------------------------------------------------------------------------------------------
// MinIO stopped for real.

/// The two MinIO tests take turns: one must not start MinIO while the other needs it stopped.
static MINIO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// MinIO stopped (`infra/stack.sh down minio`) until dropped; dropping starts it again, also
/// when the test fails (without panicking: a panic while unwinding would abort the run).
struct MinioStopped;

impl MinioStopped {
    fn stop() -> Self {
        stack_sh(&["down", "minio"]);
        Self
    }

    fn start_again(self) {
        drop(self);
    }
}

impl Drop for MinioStopped {
    fn drop(&mut self) {
        let status = Command::new(workspace_root().join("infra/stack.sh"))
            .args(["up", "minio"])
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("infra/stack.sh up minio failed ({status:?}): start it by hand");
        }
    }
}

const BULK_SKUS: usize = 20;
const BULK_LINES: usize = 20_000;
const BULK_STOCK: i64 = 1500;

/// A B2B order of 20,000 lines over 20 SKUs (1,000 units of each): about 1 MB of JSON, over
/// the claim check's 256 KiB threshold.
fn bulk_order() -> serde_json::Value {
    helpers::bulk_order("MINIO", BULK_LINES, BULK_SKUS)
}

fn small_order() -> serde_json::Value {
    json!({"customer": {"name": "Ada", "email": "ada@example.com"}, "currency": "EUR",
        "lines": [{"sku": "MINIO-00", "quantity": 1, "unit_price_cents": 100}]})
}

/// `POST /orders` as alice: status, content type, body.
async fn place(
    c: &reqwest::Client,
    orders: &helpers::Running,
    body: &serde_json::Value,
) -> (u16, String, serde_json::Value) {
    let response = c
        .post(format!("{}/orders", orders.address))
        .bearer_auth(helpers::token("alice", &[]))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.json().await.unwrap())
}

#[tokio::test]
async fn with_minio_stopped_a_bulk_order_is_refused_with_503_and_nothing_is_written() {
    let _turn = MINIO.lock().await;
    let stack = Stack::from_env();
    let t = helpers::topics(&stack).await;
    let orders = helpers::spawn_orders(&stack, &t).await;
    let db = PgPool::connect(orders.database_url()).await.unwrap();
    let c = reqwest::Client::new();
    let body = bulk_order();
    assert!(body.to_string().len() > 256 * 1024);

    let minio = MinioStopped::stop();
    let started = std::time::Instant::now();
    let (status, content_type, problem) = place(&c, &orders, &body).await;
    let refused_in = started.elapsed();
    assert_eq!(status, 503, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(problem["status"], 503, "{problem}");
    let written: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items), \
         (SELECT count(*) FROM outbox)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(written, (0, 0, 0), "no order, no lines, no outbox row");
    // A small order needs no object store.
    let (status, _, small) = place(&c, &orders, &small_order()).await;
    assert_eq!(status, 201, "{small}");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(outbox, 1, "the small order's OrderPlaced only");

    // MinIO back: the same bulk order is taken, no restart needed.
    minio.start_again();
    let (status, _, placed) = place(&c, &orders, &body).await;
    assert_eq!(status, 201, "{placed}");
    eprintln!("MinIO stopped: the bulk order was refused in {refused_in:?}");
    orders.stop().await;
}

#[tokio::test]
async fn with_minio_stopped_while_inventory_consumes_a_bulk_order_it_retries_then_reserves_it_once()
{
    let _turn = MINIO.lock().await;
    let stack = Stack::from_env();
    let t = helpers::topics(&stack).await;
    let orders = helpers::spawn_orders(&stack, &t).await;
    let c = reqwest::Client::new();

    // Placed and published while MinIO is up: on the topic, a claim check.
    let (status, _, placed) = place(&c, &orders, &bulk_order()).await;
    assert_eq!(status, 201, "{placed}");
    let id = placed["id"].as_str().unwrap().to_owned();
    let records = consume_all(&stack, &t.orders, 1, WAIT, Duration::ZERO).await;
    assert!(header(&records[0], "claim-check-location").is_some());
    assert!(records[0].payload().unwrap().len() < 1024);

    // MinIO stopped before inventory-service (not running yet) consumes it.
    let minio = MinioStopped::stop();
    let inv = helpers::spawn_inventory(&stack, &t, eda_idempotent_consumer::Dedupe::EventId).await;
    for i in 0..BULK_SKUS {
        let response = helpers::set_stock(&c, &inv, &format!("MINIO-{i:02}"), BULK_STOCK).await;
        assert!(response.status().is_success(), "{}", response.status());
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while helpers::metric(&c, &inv, "consumer_retries").await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retries: {}",
            helpers::metrics_text(&c, &inv).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(helpers::metric(&c, &inv, "consumer_dead_lettered").await, 0);
    assert_eq!(helpers::metric(&c, &inv, "consumer_processed").await, 0);
    assert_eq!(helpers::order(&c, &orders, &id).await["status"], "PLACED");
    let s = helpers::stock(&c, &inv, "MINIO-00").await;
    assert_eq!(s["reserved"].as_i64(), Some(0), "{s}");

    // MinIO back: the same event, fetched at last, applied once.
    minio.start_again();
    helpers::wait_status(&c, &orders, &id, "CONFIRMED", WAIT).await;
    let per_sku = (BULK_LINES / BULK_SKUS) as i64;
    for i in 0..BULK_SKUS {
        let s = helpers::stock(&c, &inv, &format!("MINIO-{i:02}")).await;
        assert_eq!(
            (s["available"].as_i64(), s["reserved"].as_i64()),
            (Some(BULK_STOCK - per_sku), Some(per_sku)),
            "MINIO-{i:02}: reserved exactly once"
        );
    }
    let retries = helpers::metric(&c, &inv, "consumer_retries").await;
    assert_eq!(helpers::metric(&c, &inv, "consumer_dead_lettered").await, 0);
    let dead = consume_all(
        &stack,
        &format!("{}.dlq", t.orders),
        0,
        WAIT,
        Duration::from_secs(2),
    )
    .await;
    assert!(dead.is_empty(), "an outage is not a poison record");
    eprintln!("MinIO stopped during consumption: {retries} retries, then reserved once");
    inv.stop().await;
    orders.stop().await;
}
