//! Pitfall 4 without object storage, under kill -9: a bulk order in chunks (`CLAIM_CHECK=chunk`,
//! 1 KiB chunks, so the set is thousands of records), with order-service's relay killed in the
//! middle of publishing the set (and sent-but-unmarked chunks republished) and
//! inventory-service killed in the middle of storing it. After
//! both restart, the order is reserved once and exactly: republished chunks are ignored, the
//! chunks stored before the kill are kept, nothing is left behind.

use std::time::Duration;

use eda_test_support::process::sibling_binary;
use eda_test_support::{
    ServiceProcess, Stack, TempDatabase, consume_all, create_topic, create_topic_named, header,
    unique,
};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{SECRET, bulk_order, set_stock_at, stock_at, token, wait_status_at};

const LINES: usize = 20_000;
const SKUS: usize = 50;
const PER_SKU: i64 = (LINES / SKUS) as i64;

struct Services {
    stack: Stack,
    orders_db: TempDatabase,
    inventory_db: TempDatabase,
    orders_topic: String,
    inventory_topic: String,
    tag: String,
}

impl Services {
    fn env(&self, db: &TempDatabase, group: &str) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", db.url.clone()),
            (
                "KAFKA_BOOTSTRAP_SERVERS",
                self.stack.kafka_bootstrap_servers.clone(),
            ),
            ("ORDER_EVENTS_TOPIC", self.orders_topic.clone()),
            ("INVENTORY_EVENTS_TOPIC", self.inventory_topic.clone()),
            ("CONSUMER_GROUP", format!("{group}-{}", self.tag)),
            ("JWT_SECRET", SECRET.to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("OTEL_SDK_DISABLED", "true".to_owned()),
            ("CLAIM_CHECK", "chunk".to_owned()),
            ("CLAIM_CHECK_THRESHOLD_BYTES", "1024".to_owned()),
            ("CLAIM_CHECK_CHUNK_BYTES", "1024".to_owned()),
            ("RELAY_POLL_INTERVAL_MS", "200".to_owned()),
        ]
    }

    async fn orders(&self) -> ServiceProcess {
        let binary = sibling_binary(env!("CARGO_BIN_EXE_inventory-service"), "order-service");
        ServiceProcess::start(
            &binary,
            "order-service",
            &self.env(&self.orders_db, "orders"),
        )
        .await
    }

    async fn inventory(&self) -> ServiceProcess {
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_inventory-service"));
        ServiceProcess::start(
            binary,
            "inventory-service",
            &self.env(&self.inventory_db, "inventory"),
        )
        .await
    }
}

async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Polls `sql` every few milliseconds until it is positive; returns the value.
async fn first_positive(pool: &PgPool, sql: &'static str, what: &str) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let n = scalar(pool, sql).await;
        if n > 0 {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn relay_and_consumer_killed_mid_chunk_set_reserve_the_bulk_order_once() {
    let stack = Stack::from_env();
    let orders_topic = create_topic(&stack, 6).await;
    let inventory_topic = create_topic(&stack, 6).await;
    for topic in [&orders_topic, &inventory_topic] {
        create_topic_named(&stack, &format!("{topic}.dlq"), 1).await;
    }
    let s = Services {
        orders_db: TempDatabase::create(&stack).await,
        inventory_db: TempDatabase::create(&stack).await,
        stack,
        orders_topic,
        inventory_topic,
        tag: unique("chunks"),
    };
    let (orders_pool, inventory_pool) = (s.orders_db.pool().await, s.inventory_db.pool().await);
    let c = reqwest::Client::new();
    let inventory = s.inventory().await;
    for i in 0..SKUS {
        let response = set_stock_at(&c, &inventory.address, &format!("BULK-{i:02}"), 1500).await;
        assert!(response.status().is_success());
    }
    let orders = s.orders().await;
    let body = bulk_order("BULK", LINES, SKUS);
    let response = c
        .post(format!("{}/orders", orders.address))
        .bearer_auth(token("alice", &[]))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let chunks = scalar(
        &orders_pool,
        "SELECT count(*) FROM outbox WHERE event_type = 'OrderPlaced'",
    )
    .await;
    assert!(chunks > 1000, "thousands of 1 KiB chunks: {chunks}");

    // kill -9 of order-service (its relay) once the first batch of chunks is marked published.
    let published = first_positive(
        &orders_pool,
        "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL",
        "publishing",
    )
    .await;
    drop(orders);
    // Where the kill lands is chance. To be sure of the worst case too, the first 300 published
    // chunks are made to look unmarked: the state a kill between Kafka's acknowledgement and the
    // marking commit leaves. The restarted relay publishes them again.
    let unmarked = sqlx::query(
        "UPDATE outbox SET published_at = NULL WHERE id IN (SELECT id FROM outbox \
         WHERE published_at IS NOT NULL ORDER BY id LIMIT 300)",
    )
    .execute(&orders_pool)
    .await
    .unwrap()
    .rows_affected() as i64;
    assert!(unmarked > 0);

    // kill -9 of inventory-service once it has stored some chunks, before the set is complete.
    let stored = first_positive(
        &inventory_pool,
        "SELECT count(*) FROM chunk_parts",
        "storing chunks",
    )
    .await;
    drop(inventory);
    let reserved = scalar(&inventory_pool, "SELECT count(*) FROM reservations").await;
    assert_eq!(reserved, 0, "nothing reserved before the set is complete");
    let kept = scalar(&inventory_pool, "SELECT count(*) FROM chunk_parts").await;
    assert!(kept >= stored, "the stored chunks survive the kill: {kept}");

    let (inventory, orders) = (s.inventory().await, s.orders().await);
    wait_status_at(
        &c,
        &orders.address,
        &id,
        "CONFIRMED",
        Duration::from_secs(240),
    )
    .await;
    for i in 0..SKUS {
        let stock = stock_at(&c, &inventory.address, &format!("BULK-{i:02}")).await;
        assert_eq!(
            (stock["available"].as_i64(), stock["reserved"].as_i64()),
            (Some(1500 - PER_SKU), Some(PER_SKU)),
            "BULK-{i:02}: every line reserved exactly once"
        );
    }
    assert_eq!(
        scalar(&inventory_pool, "SELECT count(*) FROM reservations").await,
        1
    );
    assert_eq!(
        scalar(&inventory_pool, "SELECT count(*) FROM chunk_parts").await,
        0,
        "nothing left behind"
    );

    // On the topic: the chunks the killed relay had sent but not marked went out again.
    let records = consume_all(
        &s.stack,
        &s.orders_topic,
        chunks as usize,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await;
    let sent = records
        .iter()
        .filter(|m| header(m, "event-type").as_deref() == Some("OrderPlaced"))
        .count();
    eprintln!(
        "chunk set of {chunks}: relay killed after {published} marked ({unmarked} unmarked), {} republished; consumer killed with {stored} stored",
        sent as i64 - chunks
    );
    assert!(
        sent as i64 >= chunks + unmarked,
        "every chunk, and the unmarked ones twice"
    );
    orders.stop().await;
    inventory.stop().await;
}
