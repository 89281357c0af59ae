//! The same outbox rows, published once by Debezium's Outbox Event Router (with the connector
//! config the project ships, `infra/debezium/outbox-connector.json`) and once by the in-process
//! relay, must give the same topic, key, headers and value, field by field.

use std::collections::BTreeMap;
use std::time::Duration;

use eda_outbox::{OutboxEvent, Relay, RelayConfig, enqueue, migrate};
use eda_test_support::{
    OutboxConnector, Stack, TempDatabase, consume_all, create_topic, header, kafka_config,
};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(120);

fn all_headers(m: &OwnedMessage) -> Vec<(String, Option<String>)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn write(pool: &PgPool, event: &OutboxEvent) {
    let mut tx = pool.begin().await.unwrap();
    enqueue(&mut tx, event).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn debezium_and_the_in_process_relay_produce_identical_messages() {
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    migrate(&pool).await.unwrap();
    let debezium_topic = create_topic(&stack, 3).await;
    let relay_topic = create_topic(&stack, 3).await;
    let connector = OutboxConnector::register(&stack, &db.name).await;

    // Streaming starts when the slot exists; a first event proves it before the real ones.
    let warmup = OutboxEvent::json(&debezium_topic, "Order", "warmup", "Warmup", 1, &1).unwrap();
    write(&pool, &warmup).await;
    consume_all(&stack, &debezium_topic, 1, WAIT, Duration::ZERO).await;

    let events = vec![
        OutboxEvent::json(
            &debezium_topic,
            "Order",
            "order-1",
            "OrderPlaced",
            1,
            &serde_json::json!({"total_cents": 3000, "lines": [{"sku": "SKU-1"}]}),
        )
        .unwrap(),
        OutboxEvent::json(
            &debezium_topic,
            "Order",
            "order-1",
            "OrderCancelled",
            2,
            &serde_json::json!({"reason": "changed mind", "unicode": "größe ✓"}),
        )
        .unwrap()
        .with_header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap()
        .with_header("request-id", "req-42")
        .unwrap()
        .with_header("user-id", "alice")
        .unwrap(),
        OutboxEvent::json(
            &debezium_topic,
            "Order",
            "order-2",
            "OrderPlaced",
            1,
            &serde_json::json!({"claim": true}),
        )
        .unwrap()
        .with_header("claim-check-location", "s3://eda-claim-checks/x")
        .unwrap()
        .with_header("claim-check-size", "8388608")
        .unwrap(),
    ];
    // More keys, so that two partitioners agreeing by chance (1 in 3 per key) cannot pass.
    let mut events = events;
    for k in 3..=14 {
        events.push(
            OutboxEvent::json(
                &debezium_topic,
                "Order",
                &format!("order-{k}"),
                "OrderPlaced",
                1,
                &serde_json::json!({"k": k}),
            )
            .unwrap(),
        );
    }
    for e in &events {
        write(&pool, e).await;
    }
    let from_debezium = consume_all(
        &stack,
        &debezium_topic,
        events.len() + 1,
        WAIT,
        Duration::from_secs(2),
    )
    .await;
    connector.remove(&pool).await;

    // The same rows through the in-process relay, redirected to its own topic.
    sqlx::query("UPDATE outbox SET topic = $1 WHERE aggregate_id <> 'warmup'")
        .bind(&relay_topic)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM outbox WHERE aggregate_id = 'warmup'")
        .execute(&pool)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        pool.clone(),
        kafka_config(&stack),
        RelayConfig {
            poll_interval: Duration::from_millis(200),
            ..RelayConfig::default()
        },
    )
    .expect("relay settings");
    let handle = tokio::spawn(relay.run(shutdown.clone()));
    let from_relay = consume_all(
        &stack,
        &relay_topic,
        events.len(),
        WAIT,
        Duration::from_secs(1),
    )
    .await;
    shutdown.cancel();
    handle.await.unwrap();

    let by_id = |messages: &[OwnedMessage]| -> BTreeMap<String, OwnedMessage> {
        messages
            .iter()
            .filter(|m| header(m, "aggregate-id").as_deref() != Some("warmup"))
            .map(|m| (header(m, "event-id").unwrap(), m.clone()))
            .collect()
    };
    let (debezium, relay) = (by_id(&from_debezium), by_id(&from_relay));
    assert_eq!(
        debezium.len(),
        events.len(),
        "Debezium published each event once"
    );
    assert_eq!(relay.len(), events.len());
    for e in &events {
        let id = e.event_id().to_string();
        let (d, r) = (&debezium[&id], &relay[&id]);
        assert_eq!(d.key(), r.key(), "key of {id}");
        // Kafka Connect's Java producer partitions by murmur2; the relay must agree, or a key
        // changes partition (and loses its order) when a deployment switches relays.
        assert_eq!(d.partition(), r.partition(), "partition of {id}");
        assert_eq!(d.key(), Some(e.key().as_bytes()));
        assert_eq!(d.payload(), r.payload(), "value of {id}");
        assert_eq!(
            d.payload(),
            Some(e.payload().as_bytes()),
            "value is the payload byte for byte"
        );
        assert_eq!(
            all_headers(d),
            all_headers(r),
            "headers of {id}, names, values and order"
        );
        let set: BTreeMap<&str, String> = e.headers().into_iter().collect();
        let expected: Vec<(String, Option<String>)> = eda_outbox::headers::CONTRACT_HEADERS
            .iter()
            .map(|(name, _, _)| ((*name).to_owned(), set.get(name).cloned()))
            .collect();
        assert_eq!(
            all_headers(r),
            expected,
            "every contract header, in order, null when unset"
        );
    }
    // Same per-key order on both paths.
    let order = |messages: &[OwnedMessage]| -> Vec<String> {
        messages
            .iter()
            .filter(|m| m.key() == Some(b"order-1".as_slice()))
            .map(|m| header(m, "revision").unwrap())
            .collect()
    };
    assert_eq!(order(&from_debezium), ["1", "2"]);
    assert_eq!(order(&from_relay), ["1", "2"]);
}
