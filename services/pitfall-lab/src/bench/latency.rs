//! `bench latency`: commit-to-consumer latency of the in-process relay, open loop at fixed
//! write rates (see [`open_loop`](super::open_loop)): each event is written in its own
//! transaction at its scheduled time, and a consumer notes when it reads it.
//!
//! Two latencies per event, both in HDR histograms:
//! - **commit → consumer**: from the writer's `COMMIT` returning to the consumer reading the
//!   record (the relay's wake-up, read, produce, Kafka, the consumer's fetch);
//! - **scheduled → consumer**: from the event's scheduled write time, so a writer that had to
//!   wait (for a pooled connection, behind a slow commit) counts that wait too.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eda_outbox::{OutboxEvent, Relay, RelayConfig, enqueue};
use eda_stack_admin::{Stack, unique};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::BoxError;
use super::common::{
    create_topic, delete_topic, drop_database, report, save_result, scratch_database,
};
use super::open_loop::{self, curve, histogram, record, summary};

/// Runs each rate for `seconds` and reports both latencies per rate.
pub(super) async fn run(stack: &Stack, rates: &[u64], seconds: u64) -> Result<(), BoxError> {
    let mut out = vec![format!(
        "== commit-to-consumer latency, in-process relay, open loop, {seconds} s per rate after {} s of warm-up (HDR, corrected for coordinated omission) ==",
        open_loop::WARM_UP_SECONDS
    )];
    let mut results = Vec::new();
    for &rate in rates {
        let (line, result) = one_rate(stack, rate, seconds).await?;
        out.push(line);
        results.push(result);
    }
    report(&out);
    save_result("latency", &json!({ "seconds": seconds, "rates": results }));
    Ok(())
}

async fn one_rate(
    stack: &Stack,
    rate: u64,
    seconds: u64,
) -> Result<(String, serde_json::Value), BoxError> {
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
    let total = rate * (open_loop::WARM_UP_SECONDS + seconds);
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut warm_tx = Some(warm_tx);
        let mut read: Vec<Option<Instant>> = vec![None; total as usize];
        let mut seen = 0;
        while seen < total {
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await
            else {
                break;
            };
            let at = Instant::now();
            if m.key() == Some(b"warmup".as_slice()) {
                if let Some(tx) = warm_tx.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            let index = m
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .and_then(|v| v["i"].as_u64());
            if let Some(slot) = index.and_then(|i| read.get_mut(i as usize))
                && slot.is_none()
            {
                *slot = Some(at);
                seen += 1;
            }
        }
        read
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

    let committed: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![None; total as usize]));
    let label = format!("{rate} events/s");
    let outcome = open_loop::run(&label, rate, seconds, |i| {
        let (pool, topic, committed) = (pool.clone(), topic.clone(), Arc::clone(&committed));
        async move {
            let event = match OutboxEvent::json(
                &topic,
                "Order",
                &format!("o-{}", i % 50),
                "OrderPlaced",
                (i / 50) as i64 + 1,
                &json!({ "i": i }),
            ) {
                Ok(event) => event,
                Err(_) => return false,
            };
            let written = async {
                let mut tx = pool.begin().await?;
                enqueue(&mut tx, &event).await?;
                tx.commit().await?;
                Ok::<(), BoxError>(())
            };
            let ok = written.await.is_ok();
            if ok && let Ok(mut committed) = committed.lock() {
                committed[i as usize] = Some(Instant::now());
            }
            ok
        }
    })
    .await?;
    let read = reader.await?;
    stop.cancel();
    relay_task.await?;

    let committed = committed.lock().map_err(|_| "poisoned")?.clone();
    let (mut commit_to_consumer, mut scheduled_to_consumer) = (histogram(), histogram());
    let mut lost = 0;
    for (i, timing) in outcome
        .timings
        .iter()
        .enumerate()
        .skip(outcome.measured_from)
    {
        match (committed[i], read[i]) {
            (Some(c), Some(r)) => {
                record(&mut commit_to_consumer, r.saturating_duration_since(c));
                record(&mut scheduled_to_consumer, r - timing.scheduled);
            }
            (Some(_), None) => lost += 1,
            _ => {}
        }
    }
    let (write, _, write_errors) = outcome.histograms();
    let line = format!(
        "{rate:>5} events/s (achieved {:.0}; {} consumed, {lost} not seen, {write_errors} writes failed)\n\
         \x20   commit -> consumer    : {}\n\
         \x20   scheduled -> consumer : {}\n\
         \x20   scheduled -> commit   : {}",
        outcome.achieved_rate,
        commit_to_consumer.len(),
        summary(&commit_to_consumer),
        summary(&scheduled_to_consumer),
        summary(&write),
    );
    let result = json!({
        "rate": rate,
        "achieved_rate": outcome.achieved_rate,
        "consumed": commit_to_consumer.len(),
        "not_seen": lost,
        "write_errors": write_errors,
        "commit_to_consumer": curve(&commit_to_consumer),
        "scheduled_to_consumer": curve(&scheduled_to_consumer),
        "scheduled_to_commit": curve(&write),
    });
    delete_topic(stack, &topic).await;
    drop_database(stack, &db, pool).await?;
    Ok((line, result))
}
