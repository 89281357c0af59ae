//! `bench drain`: how fast a backlog of outbox rows reaches Kafka, through the in-process relay
//! and then through Debezium, on the same rows and the same machine.

use std::time::{Duration, Instant};

use eda_outbox::{OutboxEvent, Relay, RelayConfig, enqueue};
use eda_stack_admin::{OutboxConnector, Stack};
use tokio_util::sync::CancellationToken;

use super::BoxError;
use super::common::{
    bulk_insert, create_topic, delete_topic, drop_database, report, save_result, scratch_database,
    wait_topic_size,
};

/// How long a drain may take before the benchmark gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1800);

/// Drains the same backlog twice: in-process relay, then Debezium.
pub(super) async fn run(stack: &Stack, rows: i64, payload_bytes: usize) -> Result<(), BoxError> {
    let batch_size: i64 = std::env::var("BENCH_RELAY_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut out = vec![format!(
        "== relay drain: {rows} rows, {payload_bytes}-byte payloads, 6 partitions =="
    )];

    // In-process relay. Measured as Debezium is below: the relay runs and has published one
    // event, then the backlog commits (one transaction) and the clock starts.
    let (db, pool) = scratch_database(stack).await?;
    let topic = create_topic(stack, 6).await?;
    let relay = Relay::new(
        pool.clone(),
        stack.kafka_config(),
        RelayConfig {
            batch_size,
            ..RelayConfig::default()
        },
    )?;
    let stop = CancellationToken::new();
    let handle = tokio::spawn(relay.run(stop.clone()));
    warm_up(&pool, stack, &topic).await?;
    let started = Instant::now();
    bulk_insert(&pool, &topic, rows, payload_bytes).await?;
    let inserted = Instant::now();
    let done = wait_topic_size(stack, &topic, rows + 1, DRAIN_TIMEOUT).await?;
    let secs = (done - inserted).as_secs_f64();
    stop.cancel();
    handle.await?;
    let relay_rate = rows as f64 / secs;
    out.push(format!(
        "in-process relay : {:>9.0} rows/s ({secs:.1} s after the insert committed; insert took {:.1} s; batch {batch_size})",
        rows as f64 / secs,
        (inserted - started).as_secs_f64()
    ));
    delete_topic(stack, &topic).await;
    drop_database(stack, &db, pool).await?;

    // Debezium, same rows, same machine.
    let (db, pool) = scratch_database(stack).await?;
    let topic = create_topic(stack, 6).await?;
    let connector = OutboxConnector::register(stack, "bench", &db).await?;
    warm_up(&pool, stack, &topic).await?;
    let started = Instant::now();
    bulk_insert(&pool, &topic, rows, payload_bytes).await?;
    let inserted = Instant::now();
    let done = wait_topic_size(stack, &topic, rows + 1, DRAIN_TIMEOUT).await?;
    let secs = (done - inserted).as_secs_f64();
    let debezium_rate = rows as f64 / secs;
    out.push(format!(
        "debezium         : {:>9.0} rows/s ({secs:.1} s after the insert committed; insert took {:.1} s)",
        rows as f64 / secs,
        (inserted - started).as_secs_f64()
    ));
    connector.remove(&pool).await?;
    delete_topic(stack, &topic).await;
    drop_database(stack, &db, pool).await?;
    out.push("ceiling          : see kafka-producer-perf-test below (same record size, same producer settings)".to_owned());
    out.push(format!(
        "relay / debezium = {:.1}x (goal >= 3x)",
        relay_rate / debezium_rate
    ));
    report(&out);
    save_result(
        "drain",
        &serde_json::json!({
            "rows": rows, "payload_bytes": payload_bytes, "batch_size": batch_size,
            "relay_rows_per_second": relay_rate, "debezium_rows_per_second": debezium_rate,
        }),
    );
    Ok(())
}

/// Publishes one event through whichever relay runs and waits until it is in the topic.
async fn warm_up(pool: &sqlx::PgPool, stack: &Stack, topic: &str) -> Result<(), BoxError> {
    let warmup = OutboxEvent::json(topic, "Order", "warmup", "Warmup", 1, &1)?;
    let mut tx = pool.begin().await?;
    enqueue(&mut tx, &warmup).await?;
    tx.commit().await?;
    wait_topic_size(stack, topic, 1, Duration::from_secs(120)).await?;
    Ok(())
}
