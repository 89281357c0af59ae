//! Issue 9's example, end to end: `OrderPlaced` is dead-lettered, the user cancels (inventory
//! has nothing to release), then the dead letter is redriven after a fix. With the revision
//! guard the late `OrderPlaced` (revision 1, after revision 2) is skipped: no stock is reserved
//! for a cancelled order. With `IDEMPOTENCY=off` (no guard, the pitfall) it is reserved forever.

use std::time::Duration;

use eda_idempotent_consumer::Dedupe;
use eda_test_support::{Stack, produce, unique};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Running, metric, set_stock, spawn_inventory, stock, topics};

async fn wait_for(c: &reqwest::Client, service: &Running, name: &str, at_least: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metric(c, service, name).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn order_event(stack: &Stack, topic: &str, order_id: Uuid, event_type: &str, revision: &str) {
    let (event_id, key) = (Uuid::now_v7().to_string(), order_id.to_string());
    let body = json!({"order_id": order_id, "lines": [{"sku": "SKU-1", "quantity": 3}]});
    produce(
        stack,
        topic,
        &key,
        &[
            ("event-id", &event_id),
            ("event-type", event_type),
            ("aggregate-type", "Order"),
            ("aggregate-id", &key),
            ("revision", revision),
        ],
        body.to_string().as_bytes(),
    )
    .await;
}

/// Places, dead-letters, cancels and redrives one order; returns the units reserved at the end.
async fn reserved_after_a_late_redrive(dedupe: Dedupe) -> i64 {
    let stack = Stack::from_env();
    let t = topics(&stack).await;
    let inv = spawn_inventory(&stack, &t, dedupe).await;
    let c = reqwest::Client::new();
    set_stock(&c, &inv, "SKU-1", 10).await;
    let db = PgPool::connect(inv.database_url()).await.unwrap();
    let order_id = Uuid::now_v7();

    // A bug: inventory cannot record this order's reservation (a check violation, SQLSTATE
    // 23514: permanent), so OrderPlaced goes to the dead-letter topic.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE reservations ADD CONSTRAINT the_bug CHECK (order_id <> '{order_id}')"
    )))
    .execute(&db)
    .await
    .unwrap();
    order_event(&stack, &t.orders, order_id, "OrderPlaced", "1").await;
    wait_for(&c, &inv, "consumer_dead_lettered_total", 1).await;
    assert_eq!(stock(&c, &inv, "SKU-1").await["reserved"], 0);

    // The user cancels: nothing to release.
    order_event(&stack, &t.orders, order_id, "OrderCancelled", "2").await;
    wait_for(&c, &inv, "consumer_processed_total", 1).await;

    // The fix ships, the dead letter is redriven.
    sqlx::query("ALTER TABLE reservations DROP CONSTRAINT the_bug")
        .execute(&db)
        .await
        .unwrap();
    let report = eda_idempotent_consumer::redrive(
        &stack.kafka_bootstrap_servers,
        &format!("{}.dlq", t.orders),
        &unique("redrive"),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(report.redriven, 1);
    let handled = if dedupe == Dedupe::Off {
        ("consumer_processed_total", 2)
    } else {
        ("consumer_stale_total", 1)
    };
    wait_for(&c, &inv, handled.0, handled.1).await;
    let reserved = stock(&c, &inv, "SKU-1").await["reserved"].as_i64().unwrap();
    let outcomes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE event_type = 'InventoryReserved' AND aggregate_id = $1",
    )
    .bind(order_id.to_string())
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        outcomes,
        reserved.signum(),
        "an InventoryReserved exactly when stock was reserved"
    );
    db.close().await;
    inv.stop().await;
    reserved
}

#[tokio::test]
async fn a_redriven_order_placed_never_reserves_stock_for_a_cancelled_order() {
    assert_eq!(
        reserved_after_a_late_redrive(Dedupe::EventId).await,
        0,
        "fixed: the late OrderPlaced (revision 1 after 2) is stale"
    );
    assert_eq!(
        reserved_after_a_late_redrive(Dedupe::Off).await,
        3,
        "IDEMPOTENCY=off: reserved for a cancelled order, forever (the pitfall)"
    );
}
