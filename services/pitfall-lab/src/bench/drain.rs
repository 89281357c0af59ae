//! `bench drain`: how fast a backlog of outbox rows reaches Kafka, through the in-process relay
//! and then through Debezium, on the same rows and the same machine.

use std::time::{Duration, Instant};

use eda_outbox::{OutboxEvent, Relay, RelayConfig, enqueue};
use eda_stack_admin::{OutboxConnector, Stack};
use tokio_util::sync::CancellationToken;

use super::BoxError;
use super::common::{
    bulk_insert, create_topic, delete_topic, drop_database, report, scratch_database,
    wait_topic_size,
};

/// How long a drain may take before the benchmark gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1800);

/// Drains the same backlog twice: in-process relay, then Debezium.
pub(super) async fn run(stack: &Stack, rows: i64, payload_bytes: usize) -> Result<(), BoxError> {
    let mut out = vec![format!(
        "== relay drain: {rows} rows, {payload_bytes}-byte payloads, 6 partitions =="
    )];

    // In-process relay.
    let (db, pool) = scratch_database(stack).await?;
    let topic = create_topic(stack, 6).await?;
    bulk_insert(&pool, &topic, rows, payload_bytes).await?;
    let relay = Relay::new(
        pool.clone(),
        stack.kafka_config(),
        RelayConfig {
            batch_size: 2000,
            ..RelayConfig::default()
        },
    )?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(relay.run(stop.clone()));
    let done = wait_topic_size(stack, &topic, rows, DRAIN_TIMEOUT).await?;
    let secs = (done - started).as_secs_f64();
    stop.cancel();
    handle.await?;
    out.push(format!(
        "in-process relay : {:>9.0} rows/s ({secs:.1} s, batch 2000, lz4, acks=all, idempotent)",
        rows as f64 / secs
    ));
    delete_topic(stack, &topic).await;
    drop_database(stack, &db, pool).await?;

    // Debezium, same rows, same machine.
    let (db, pool) = scratch_database(stack).await?;
    let topic = create_topic(stack, 6).await?;
    let connector = OutboxConnector::register(stack, "bench", &db).await?;
    let warmup = OutboxEvent::json(&topic, "Order", "warmup", "Warmup", 1, &1)?;
    let mut tx = pool.begin().await?;
    enqueue(&mut tx, &warmup).await?;
    tx.commit().await?;
    wait_topic_size(stack, &topic, 1, Duration::from_secs(120)).await?;
    let started = Instant::now();
    bulk_insert(&pool, &topic, rows, payload_bytes).await?;
    let inserted = Instant::now();
    let done = wait_topic_size(stack, &topic, rows + 1, DRAIN_TIMEOUT).await?;
    let secs = (done - inserted).as_secs_f64();
    out.push(format!(
        "debezium         : {:>9.0} rows/s ({secs:.1} s after the insert committed; insert took {:.1} s)",
        rows as f64 / secs,
        (inserted - started).as_secs_f64()
    ));
    connector.remove(&pool).await?;
    delete_topic(stack, &topic).await;
    drop_database(stack, &db, pool).await?;
    out.push("ceiling          : see kafka-producer-perf-test below (same record size, same producer settings)".to_owned());
    report(&out);
    Ok(())
}
