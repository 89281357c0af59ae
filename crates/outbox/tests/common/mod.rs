//! Helpers shared by this crate's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use eda_outbox::{OutboxEvent, enqueue};
use sqlx::PgPool;

/// An `OrderPlaced` event of `aggregate` at `revision`.
pub fn event(topic: &str, aggregate: &str, revision: i64) -> OutboxEvent {
    OutboxEvent::json(
        topic,
        "Order",
        aggregate,
        "OrderPlaced",
        revision,
        &serde_json::json!({"order": aggregate, "revision": revision}),
    )
    .unwrap()
}

/// Unpublished rows.
pub async fn pending(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until every row is published.
pub async fn wait_drained(pool: &PgPool, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while pending(pool).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox not drained within {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `aggregates` x `revisions` events, each aggregate's revisions in order (one
/// transaction each), all aggregates concurrently.
pub async fn burst(pool: &PgPool, topic: &str, aggregates: usize, revisions: i64) {
    let mut writers = Vec::new();
    for a in 0..aggregates {
        let (pool, topic) = (pool.clone(), topic.to_owned());
        writers.push(tokio::spawn(async move {
            for revision in 1..=revisions {
                let mut tx = pool.begin().await.unwrap();
                enqueue(&mut tx, &event(&topic, &format!("agg-{a}"), revision))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
}
