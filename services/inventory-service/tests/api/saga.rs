use std::time::Duration;

use eda_idempotent_consumer::Dedupe;
use eda_test_support::Stack;
use serde_json::{Value, json};

use crate::helpers::{
    Running, set_stock, spawn_inventory, spawn_orders, stock, token, topics, wait_status,
};

async fn place(c: &reqwest::Client, orders: &Running, lines: Value) -> String {
    let body = json!({"customer": {"name": "Ada", "email": "ada@example.com"}, "currency": "EUR", "lines": lines});
    let order: Value = c
        .post(format!("{}/orders", orders.address))
        .bearer_auth(token("alice", &[]))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    order["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn orders_are_confirmed_with_stock_rejected_without_and_cancellation_releases_once() {
    let stack = Stack::from_env();
    let t = topics(&stack).await;
    let inv = spawn_inventory(&stack, &t, Dedupe::EventId).await;
    let orders = spawn_orders(&stack, &t).await;
    let c = reqwest::Client::new();
    set_stock(&c, &inv, "SKU-1", 10).await;
    set_stock(&c, &inv, "SKU-2", 1).await;

    let ok = place(&c, &orders, json!([{"sku": "SKU-1", "quantity": 3, "unit_price_cents": 100}, {"sku": "SKU-2", "quantity": 1, "unit_price_cents": 100}])).await;
    let confirmed = wait_status(&c, &orders, &ok, "CONFIRMED", Duration::from_secs(60)).await;
    assert_eq!(confirmed["revision"], 2, "PLACED (1) then CONFIRMED (2)");
    let s1 = stock(&c, &inv, "SKU-1").await;
    assert_eq!(
        (s1["available"].as_i64(), s1["reserved"].as_i64()),
        (Some(7), Some(3))
    );

    // SKU-2 is gone now: all lines or none, so SKU-1 is not touched either.
    let short = place(&c, &orders, json!([{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}, {"sku": "SKU-2", "quantity": 1, "unit_price_cents": 100}])).await;
    wait_status(&c, &orders, &short, "REJECTED", Duration::from_secs(60)).await;
    assert_eq!(
        stock(&c, &inv, "SKU-1").await["available"],
        7,
        "a rejected order reserves nothing"
    );
    let unknown = place(
        &c,
        &orders,
        json!([{"sku": "NO-SUCH-SKU", "quantity": 1, "unit_price_cents": 100}]),
    )
    .await;
    wait_status(&c, &orders, &unknown, "REJECTED", Duration::from_secs(60)).await;

    // Cancelling the confirmed order releases its stock, once, even if cancelled twice.
    for _ in 0..2 {
        c.post(format!("{}/orders/{ok}/cancel", orders.address))
            .bearer_auth(token("alice", &[]))
            .send()
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s1 = stock(&c, &inv, "SKU-1").await;
        if s1["available"] == 10 {
            assert_eq!(s1["reserved"], 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stock not released: {s1}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stock(&c, &inv, "SKU-1").await["available"],
        10,
        "released exactly once"
    );
    assert_eq!(stock(&c, &inv, "SKU-2").await["available"], 1);

    // The outcome events carry the flow's context: the order's user, a correlation id, and the
    // order event that caused them.
    let outcomes = eda_test_support::consume_all(
        &stack,
        &t.inventory,
        1,
        Duration::from_secs(30),
        Duration::ZERO,
    )
    .await;
    let first = &outcomes[0];
    assert_eq!(
        eda_test_support::header(first, "user-id").as_deref(),
        Some("alice")
    );
    assert!(eda_test_support::header(first, "correlation-id").is_some());
    let cause = eda_test_support::header(first, "causation-id").expect("causation-id");
    assert!(
        uuid::Uuid::parse_str(&cause).is_ok(),
        "the OrderPlaced event id: {cause}"
    );

    orders.stop().await;
    inv.stop().await;
}
