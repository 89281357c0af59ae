//! Pitfall 1, measured through the HTTP API: Kafka is stopped while orders are placed.
//! Outbox mode delivers every event once Kafka is back; direct mode loses the events of
//! orders that were committed. Its own test binary: it stops the shared broker, and cargo runs
//! test binaries one at a time.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::collections::HashSet;
use std::time::Duration;

use eda_test_support::{consume_all, header, stack_sh};
use order_service::configuration::PublishMode;
use reqwest::StatusCode;

use crate::helpers::{TestApp, order_body, spawn_app_with};

const ORDERS: usize = 200;

async fn place_orders(app: &TestApp) -> Vec<String> {
    let mut ids = Vec::new();
    let body = order_body();
    for chunk in 0..ORDERS / 20 {
        let user = format!("user-{chunk}");
        let mut batch = Vec::new();
        for _ in 0..20 {
            batch.push(app.post_order(&user, &body));
        }
        for response in futures::future::join_all(batch).await {
            assert_eq!(
                response.status(),
                StatusCode::CREATED,
                "the order is committed either way"
            );
            ids.push(
                response.json::<serde_json::Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    ids
}

/// Event keys that arrived on the app's topic.
async fn delivered(app: &TestApp, at_least: usize) -> HashSet<String> {
    let messages = consume_all(
        &app.stack,
        &app.topic,
        at_least,
        Duration::from_secs(120),
        Duration::from_secs(3),
    )
    .await;
    messages
        .iter()
        .map(|m| header(m, "aggregate-id").unwrap())
        .collect()
}

#[tokio::test]
async fn kafka_down_during_a_burst_outbox_loses_nothing_direct_loses_events() {
    let outbox = spawn_app_with(PublishMode::Outbox).await;
    let direct = spawn_app_with(PublishMode::Direct).await;

    stack_sh(&["down", "kafka"]);
    let outbox_ids = place_orders(&outbox).await;
    let direct_ids = place_orders(&direct).await;
    // Longer than the direct producer's 5 s delivery timeout: its messages expire.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stack_sh(&["up", "kafka"]);

    let outbox_keys = delivered(&outbox, ORDERS).await;
    let expected: HashSet<String> = outbox_ids.into_iter().collect();
    assert_eq!(
        outbox_keys, expected,
        "outbox mode: every committed order's event arrived"
    );

    let direct_keys = delivered(&direct, 0).await;
    let lost = direct_ids
        .iter()
        .filter(|id| !direct_keys.contains(*id))
        .count();
    eprintln!("kafka outage, {ORDERS} orders each: outbox lost 0, direct lost {lost}");
    assert!(
        lost > 0,
        "direct mode loses events of committed orders when Kafka is down"
    );
    assert_eq!(
        direct.count("SELECT count(*) FROM orders").await,
        ORDERS as i64,
        "all direct-mode orders are committed"
    );

    outbox.stop().await;
    direct.stop().await;
}
