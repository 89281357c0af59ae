//! Pitfall 5 through the service: one `OrderPlaced` republished three times (same event id,
//! three offsets). Fixed: reserved once. `IDEMPOTENCY=off`: reserved three times.

use std::time::Duration;

use eda_idempotent_consumer::Dedupe;
use eda_test_support::{Stack, kafka_config};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{metric, set_stock, spawn_inventory, stock, topics};

async fn reserved_after_three_deliveries(dedupe: Dedupe) -> i64 {
    let stack = Stack::from_env();
    let t = topics(&stack).await;
    let inv = spawn_inventory(&stack, &t, dedupe).await;
    let c = reqwest::Client::new();
    set_stock(&c, &inv, "SKU-1", 100).await;

    let (order_id, event_id) = (Uuid::now_v7(), Uuid::now_v7().to_string());
    let payload =
        json!({"order_id": order_id, "lines": [{"sku": "SKU-1", "quantity": 4}]}).to_string();
    let producer: FutureProducer = kafka_config(&stack).create().unwrap();
    for _ in 0..3 {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event-id",
                value: Some(event_id.as_str()),
            })
            .insert(Header {
                key: "event-type",
                value: Some("OrderPlaced"),
            });
        producer
            .send(
                FutureRecord::to(&t.orders)
                    .key(&order_id.to_string())
                    .payload(&payload)
                    .headers(headers),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // Let all three deliveries be handled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let handled = metric(&c, &inv, "consumer_processed_total").await
            + metric(&c, &inv, "consumer_duplicates_total").await;
        if handled >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries not handled: {handled} of 3"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reserved = stock(&c, &inv, "SKU-1").await["reserved"].as_i64().unwrap();
    inv.stop().await;
    reserved
}

#[tokio::test]
async fn a_republished_order_reserves_stock_once_with_dedupe_and_three_times_without() {
    assert_eq!(
        reserved_after_three_deliveries(Dedupe::EventId).await,
        4,
        "fixed: once"
    );
    assert_eq!(
        reserved_after_three_deliveries(Dedupe::Off).await,
        12,
        "IDEMPOTENCY=off: three times (the pitfall)"
    );
}
