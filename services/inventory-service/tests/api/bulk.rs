//! Pitfall 4 through the saga: a B2B order of 50,000 lines makes an `OrderPlaced` of several
//! megabytes. order-service offloads it to MinIO before the commit (the record on the topic is
//! a small reference), inventory-service's consumer fetches and checks it, every line is
//! reserved, and the stock arithmetic is exact. The same in chunks (`CLAIM_CHECK=chunk`), for
//! places without object storage. With the object store down, the order is refused with a 503
//! and nothing is written.

use std::time::Duration;

use eda_claim_check::{Mode, chunk_headers, headers};
use eda_test_support::{Stack, consume_all, header};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde_json::{Value, json};

use crate::helpers::{
    self, Running, metrics_text, order, set_stock, spawn_inventory, spawn_orders_with, stock,
    token, topics, wait_status,
};

const SKUS: usize = 50;
const LINES: usize = 50_000;

fn bulk_order() -> Value {
    helpers::bulk_order("BULK", LINES, SKUS)
}

async fn post(c: &reqwest::Client, orders: &Running, body: &Value) -> (u16, Value) {
    let response = c
        .post(format!("{}/orders", orders.address))
        .bearer_auth(token("alice", &[]))
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Places the bulk order with `mode`, waits for the saga to confirm it, checks the stock
/// arithmetic, and returns the `OrderPlaced` records on the topic.
async fn bulk_order_through_the_saga(mode: Mode) -> Vec<OwnedMessage> {
    let stack = Stack::from_env();
    let t = topics(&stack).await;
    let inv = spawn_inventory(&stack, &t, eda_idempotent_consumer::Dedupe::EventId).await;
    let orders = spawn_orders_with(&stack, &t, |s| s.claim_check.mode = mode).await;
    let c = reqwest::Client::new();
    for i in 0..SKUS {
        set_stock(&c, &inv, &format!("BULK-{i:02}"), 1500).await;
    }

    let body = bulk_order();
    assert!(
        body.to_string().len() > 2_000_000,
        "a multi-megabyte request"
    );
    let (status, order) = post(&c, &orders, &body).await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let confirmed = wait_status(&c, &orders, &id, "CONFIRMED", Duration::from_secs(120)).await;
    assert_eq!(confirmed["lines"].as_array().map(Vec::len), Some(LINES));
    for i in 0..SKUS {
        let s = stock(&c, &inv, &format!("BULK-{i:02}")).await;
        assert_eq!(
            (s["available"].as_i64(), s["reserved"].as_i64()),
            (Some(500), Some(1000)),
            "BULK-{i:02}: every line reserved exactly once ({mode:?})"
        );
    }
    let records = consume_all(
        &stack,
        &t.orders,
        2,
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .await;
    orders.stop().await;
    inv.stop().await;
    records
        .into_iter()
        .filter(|m| header(m, "event-type").as_deref() == Some("OrderPlaced"))
        .collect()
}

#[tokio::test]
async fn a_50000_line_order_travels_as_a_claim_check_and_reserves_every_line() {
    let placed = bulk_order_through_the_saga(Mode::ClaimCheck).await;
    // On the topic: one small reference with the claim-check headers, not megabytes.
    assert_eq!(placed.len(), 1);
    let placed = &placed[0];
    assert!(
        placed.payload().unwrap().len() < 1024,
        "{} bytes",
        placed.payload().unwrap().len()
    );
    assert!(
        header(placed, headers::LOCATION)
            .unwrap()
            .starts_with("s3://")
    );
    let size: usize = header(placed, headers::SIZE).unwrap().parse().unwrap();
    assert!(size > 2_000_000, "the payload it stands for: {size} bytes");
}

#[tokio::test]
async fn a_50000_line_order_travels_in_chunks_and_reserves_every_line() {
    let placed = bulk_order_through_the_saga(Mode::Chunk).await;
    // On the topic: consecutive chunks of at most 512 KiB, same key and partition, one set.
    assert!(placed.len() >= 4, "{} chunks", placed.len());
    let whole: usize = placed.iter().map(|m| m.payload().unwrap().len()).sum();
    let message_id = header(&placed[0], chunk_headers::MESSAGE_ID).expect("chunk headers");
    for (i, m) in placed.iter().enumerate() {
        assert!(m.payload().unwrap().len() <= 512 * 1024);
        assert_eq!(m.key(), placed[0].key());
        assert_eq!(m.partition(), placed[0].partition());
        assert_eq!(header(m, chunk_headers::INDEX), Some(i.to_string()));
        assert_eq!(
            header(m, chunk_headers::COUNT),
            Some(placed.len().to_string())
        );
        assert_eq!(header(m, chunk_headers::SIZE), Some(whole.to_string()));
        assert_eq!(
            header(m, chunk_headers::MESSAGE_ID).as_deref(),
            Some(message_id.as_str())
        );
        assert_eq!(
            header(m, headers::LOCATION),
            None,
            "no object store involved"
        );
    }
}

#[tokio::test]
async fn with_the_object_store_down_a_large_order_is_refused_and_nothing_is_written() {
    let stack = Stack::from_env();
    let t = topics(&stack).await;
    let orders = spawn_orders_with(&stack, &t, |s| {
        s.claim_check.s3.endpoint = Some("http://127.0.0.1:9".to_owned()); // nothing listens
    })
    .await;
    let c = reqwest::Client::new();
    let (status, problem) = post(&c, &orders, &bulk_order()).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["status"], 503);
    let listed: Value = c
        .get(format!("{}/orders", orders.address))
        .bearer_auth(token("alice", &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    // A small order needs no object store.
    let small = json!({"customer": {"name": "Ada", "email": "ada@example.com"}, "currency": "EUR",
        "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}]});
    assert_eq!(post(&c, &orders, &small).await.0, 201);
    orders.stop().await;
}

#[tokio::test]
async fn without_the_claim_check_the_bulk_order_is_parked_and_blocks_nobody_else() {
    // CLAIM_CHECK=off, the pitfall: the multi-megabyte OrderPlaced goes to Kafka as it is, and
    // librdkafka refuses it before sending (over message.max.bytes, 1,048,576, checked against
    // the uncompressed size). The relay parks it; every other order keeps flowing.
    let stack = Stack::from_env();
    let t = topics(&stack).await;
    let inv = spawn_inventory(&stack, &t, eda_idempotent_consumer::Dedupe::EventId).await;
    let orders = spawn_orders_with(&stack, &t, |s| {
        s.claim_check.mode = eda_claim_check::Mode::Off;
    })
    .await;
    let c = reqwest::Client::new();
    set_stock(&c, &inv, "SKU-1", 10).await;

    let (status, big) = post(&c, &orders, &bulk_order()).await;
    assert_eq!(
        status, 201,
        "committed: the pitfall shows later, at publish time"
    );
    let small = json!({"customer": {"name": "Ada", "email": "ada@example.com"}, "currency": "EUR",
        "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 100}]});
    let (status, small) = post(&c, &orders, &small).await;
    assert_eq!(status, 201);
    wait_status(
        &c,
        &orders,
        small["id"].as_str().unwrap(),
        "CONFIRMED",
        Duration::from_secs(60),
    )
    .await;
    let metrics = metrics_text(&c, &orders).await;
    assert!(metrics.contains("outbox_parked_rows 1"), "{metrics}");
    let big_now = order(&c, &orders, big["id"].as_str().unwrap()).await;
    assert_eq!(big_now["status"], "PLACED", "its event never left: parked");
    orders.stop().await;
    inv.stop().await;
}
