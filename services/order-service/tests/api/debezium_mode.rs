use std::time::Duration;

use eda_outbox::{OutboxEvent, enqueue};
use eda_test_support::{OutboxConnector, consume_all, header};
use order_service::configuration::{PublishMode, RelayMode};
use rdkafka::Message;
use serde_json::Value;

use crate::helpers::{order_body, spawn_app_configured};

#[tokio::test]
async fn with_relay_mode_debezium_the_connector_publishes_the_orders_events() {
    let app = spawn_app_configured(PublishMode::Outbox, RelayMode::Debezium).await;
    let pool = app.db.pool().await;
    let connector = OutboxConnector::register(&app.stack, &app.db.name).await;

    // Streaming starts once the slot exists: one event through proves it.
    let mut tx = pool.begin().await.unwrap();
    enqueue(
        &mut tx,
        &OutboxEvent::json(&app.topic, "Warmup", "warmup", "Warmup", 1, &1).unwrap(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    consume_all(
        &app.stack,
        &app.topic,
        1,
        Duration::from_secs(120),
        Duration::ZERO,
    )
    .await;

    let order: Value = app
        .post_order("alice", &order_body())
        .await
        .json()
        .await
        .unwrap();
    let id = order["id"].as_str().unwrap();
    app.post("alice", &format!("/orders/{id}/cancel")).await;

    let messages = consume_all(
        &app.stack,
        &app.topic,
        3,
        Duration::from_secs(120),
        Duration::from_secs(1),
    )
    .await;
    let ours: Vec<_> = messages
        .iter()
        .filter(|m| m.key() == Some(id.as_bytes()))
        .collect();
    let types: Vec<String> = ours
        .iter()
        .map(|m| header(m, "event-type").unwrap())
        .collect();
    assert_eq!(
        types,
        ["OrderPlaced", "OrderCancelled"],
        "Debezium published both, in order, once"
    );
    assert_eq!(header(ours[0], "user-id").as_deref(), Some("alice"));
    let payload: Value = serde_json::from_slice(ours[0].payload().unwrap()).unwrap();
    assert_eq!(payload["order_id"], id);

    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("outbox_relay_leader"),
        "no in-process relay runs in Debezium mode: {metrics}"
    );
    let marked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        marked, 0,
        "only Debezium published; nothing in the service marked rows"
    );

    connector.remove(&pool).await;
    pool.close().await;
    app.stop().await;
}
