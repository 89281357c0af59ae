//! A consumer that cannot move is not "ready": a schema change in progress (the `reservations`
//! table renamed away, SQLSTATE 42P01: transient) holds the partition; past
//! `CONSUMER_STUCK_AFTER_SECS` `/readyz` answers 503 naming the event, and once the table is
//! back the event is applied and the service is ready again. Nothing is lost or skipped.

use std::time::Duration;

use eda_test_support::{Stack, produce};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Running, set_stock, spawn_inventory_with, stock, topics};

async fn readyz(c: &reqwest::Client, service: &Running) -> (u16, Value) {
    let response = c
        .get(format!("{}/readyz", service.address))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn wait_readyz(c: &reqwest::Client, service: &Running, status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (got, body) = readyz(c, service).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {got}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_stuck_partition_makes_the_service_unready_until_it_moves() {
    let stack = Stack::from_env();
    let t = topics(&stack).await;
    let inv = spawn_inventory_with(&stack, &t, |s| {
        s.service.consumer_stuck_after = Duration::from_secs(1);
    })
    .await;
    let c = reqwest::Client::new();
    set_stock(&c, &inv, "SKU-1", 10).await;
    let body = wait_readyz(&c, &inv, 200).await;
    for check in ["database", "kafka", "workers"] {
        assert_eq!(body["checks"][check], "ok", "{body}");
    }
    let checks = body["checks"].as_object().unwrap();
    assert!(
        checks.keys().any(|k| k.starts_with("consumer ")),
        "a consumer check: {body}"
    );

    let db = PgPool::connect(inv.database_url()).await.unwrap();
    sqlx::query("ALTER TABLE reservations RENAME TO reservations_moving")
        .execute(&db)
        .await
        .unwrap();
    let (order_id, event_id) = (Uuid::now_v7(), Uuid::now_v7().to_string());
    let key = order_id.to_string();
    produce(
        &stack,
        &t.orders,
        &key,
        &[
            ("event-id", &event_id),
            ("event-type", "OrderPlaced"),
            ("aggregate-type", "Order"),
            ("aggregate-id", &key),
            ("revision", "1"),
        ],
        json!({"order_id": order_id, "lines": [{"sku": "SKU-1", "quantity": 3}]})
            .to_string()
            .as_bytes(),
    )
    .await;

    let problem = wait_readyz(&c, &inv, 503).await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("consumer") && detail.contains(&event_id),
        "names the stuck event: {problem}"
    );

    sqlx::query("ALTER TABLE reservations_moving RENAME TO reservations")
        .execute(&db)
        .await
        .unwrap();
    wait_readyz(&c, &inv, 200).await;
    assert_eq!(
        stock(&c, &inv, "SKU-1").await["reserved"],
        3,
        "applied once it could"
    );
    db.close().await;
    inv.stop().await;
}
