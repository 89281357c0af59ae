//! `bench latency`: commit-to-consumer latency of the in-process relay at a steady write rate,
//! measured from each event's `occurred-at` header to the moment a consumer reads it.

use std::time::{Duration, Instant};

use eda_outbox::{OutboxEvent, Relay, RelayConfig, enqueue};
use eda_stack_admin::{Stack, unique};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::BoxError;
use super::common::{
    create_topic, delete_topic, drop_database, percentile, report, scratch_database,
};

/// Concurrent writers, each committing one event per transaction at `rate / WRITERS` per second.
const WRITERS: u64 = 8;

/// Writes at `rate` for `seconds` through the relay and reports commit-to-consumer latency.
pub(super) async fn run(stack: &Stack, rate: u64, seconds: u64) -> Result<(), BoxError> {
    let (db, pool) = scratch_database(stack).await?;
    let topic = create_topic(stack, 6).await?;
    let stop = CancellationToken::new();
    let relay = Relay::new(pool.clone(), stack.kafka_config(), RelayConfig::default())?;
    let relay_task = tokio::spawn(relay.run(stop.clone()));

    // Assigned partitions, not a group subscription: no join and rebalance delay at the start
    // that would show up as latency of the first events.
    let consumer: StreamConsumer = stack
        .kafka_config()
        .set("group.id", unique("bench"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in 0..6 {
        partitions.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    let total = rate * seconds;
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut warm_tx = Some(warm_tx);
        let mut latencies = Vec::with_capacity(total as usize);
        while (latencies.len() as u64) < total {
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await
            else {
                break;
            };
            if m.key() == Some(b"warmup".as_slice()) {
                if let Some(tx) = warm_tx.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            let occurred = m
                .headers()
                .and_then(|h| eda_context::kafka::header(h, "occurred-at"));
            if let Some(Ok(at)) = occurred.map(chrono::DateTime::parse_from_rfc3339) {
                let ms = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1000.0;
                latencies.push(ms);
            }
        }
        latencies
    });

    // Measure the steady state: start writing once one event went all the way through.
    let mut tx = pool.begin().await?;
    enqueue(
        &mut tx,
        &OutboxEvent::json(&topic, "Order", "warmup", "Warmup", 1, &1)?,
    )
    .await?;
    tx.commit().await?;
    tokio::time::timeout(Duration::from_secs(60), warm_rx)
        .await
        .map_err(|_| "warm-up event not consumed")??;

    let per_writer = total / WRITERS;
    let interval = Duration::from_secs_f64(WRITERS as f64 / rate as f64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (pool, topic) = (pool.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..per_writer {
                tick.tick().await;
                let e = OutboxEvent::json(
                    &topic,
                    "Order",
                    &format!("o-{w}-{}", i % 50),
                    "OrderPlaced",
                    i as i64 + 1,
                    &json!({"i": i}),
                )
                .expect("event");
                let mut tx = pool.begin().await.expect("begin");
                enqueue(&mut tx, &e).await.expect("enqueue");
                tx.commit().await.expect("commit");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let achieved = (per_writer * WRITERS) as f64 / started.elapsed().as_secs_f64();
    let mut latencies = reader.await?;
    stop.cancel();
    relay_task.await?;
    latencies.sort_by(f64::total_cmp);
    report(&[
        format!(
            "== commit-to-consumer latency, in-process relay (LISTEN/NOTIFY), target {rate} events/s for {seconds} s =="
        ),
        format!(
            "achieved rate    : {achieved:.0} events/s, {} events measured",
            latencies.len()
        ),
        format!(
            "latency (ms)     : p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN)
        ),
    ]);
    delete_topic(stack, &topic).await;
    drop_database(stack, &db, pool).await
}
