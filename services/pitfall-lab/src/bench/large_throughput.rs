//! `bench large-throughput`: large events end to end, through the project's own path: the
//! producer prepares each event as order-service does (`LargePayloads::prepare`: as it is,
//! uploaded to MinIO behind a claim check, or split into chunks), writes it to the outbox in a
//! transaction, the in-process relay publishes, and the consumer runtime
//! (eda-idempotent-consumer, dedupe by event id, claim-check resolver, chunk reassembly) hands
//! the handler the whole payload. Timed from the first write to the last payload the handler
//! saw, after one warm-up event went through (so the consumer's group join is not counted).
//!
//! Inline needs a topic whose `max.message.bytes` is raised and a producer whose
//! `message.max.bytes` is raised: both only for the run's own topic and relay (the broker's
//! default stays, so elsewhere such events are refused, as the pitfall says).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eda_idempotent_consumer::{Event, Handler, HandlerError};
use eda_stack_admin::Stack;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use super::BoxError;
use super::common::report;
use super::counted::counting_database;
use super::payloads::{
    MIB, Mode, bench_s3, enqueue_large, mib, order_event, order_json, progress, relay, size_label,
    tear_down, topic_and_dlq,
};

/// Concurrent producers (request handlers, in a service).
const WRITERS: usize = 4;
/// Distinct orders per size, sent in turn.
const DISTINCT: u64 = 4;
/// How long a run may take before the benchmark gives up.
const TIMEOUT: Duration = Duration::from_secs(900);

/// Counts the payloads the handler saw, and their bytes; refuses a payload of the wrong size.
struct Received {
    sizes: Vec<usize>,
    events: AtomicU64,
    bytes: AtomicU64,
}

impl Handler for Received {
    async fn handle(&self, event: &Event, _tx: &mut PgConnection) -> Result<(), HandlerError> {
        if event.event_type == "Warmup" {
            self.events.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if !self.sizes.contains(&event.payload.len()) {
            return Err(HandlerError::Permanent(format!(
                "payload of {} bytes, not one of those sent",
                event.payload.len()
            )));
        }
        self.bytes
            .fetch_add(event.payload.len() as u64, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One mode's numbers.
struct Row {
    mode: Mode,
    secs: f64,
    written_secs: f64,
    records: usize,
    bytes: u64,
}

/// Runs every mode on `events_5mb` events of 5 MiB, then `events_1mb` events of 1 MiB.
pub(super) async fn run(
    stack: &Stack,
    events_5mb: usize,
    events_1mb: usize,
) -> Result<(), BoxError> {
    let mut out = vec![
        "== large events end to end: outbox -> relay -> Kafka -> consumer runtime (handler gets the whole payload) ==".to_owned(),
        format!(
            "   {WRITERS} writers, relay and consumer with the services' defaults; inline on a topic with max.message.bytes raised; claim check = zstd to MinIO; chunks of 512 KiB"
        ),
    ];
    for (size, events) in [(5 * MIB, events_5mb), (MIB, events_1mb)] {
        if events == 0 {
            continue;
        }
        let payloads: Vec<String> = (0..DISTINCT).map(|s| order_json(size, s)).collect();
        let mut rows = Vec::new();
        for mode in [Mode::Inline, Mode::ClaimCheck, Mode::Chunk] {
            progress(&format!(
                "large-throughput: {events} x {}, {}",
                size_label(size),
                mode.label()
            ));
            rows.push(run_mode(stack, mode, size, events, &payloads).await?);
        }
        out.push(format!("-- {events} events of {} --", size_label(size)));
        out.push(
            "mode          events/s    MiB/s   total s   written after s   Kafka records"
                .to_owned(),
        );
        for r in rows {
            out.push(format!(
                "{:<12} {:>9.1} {:>8.1} {:>9.1} {:>17.1} {:>15}",
                r.mode.label(),
                events as f64 / r.secs,
                mib(r.bytes) / r.secs,
                r.secs,
                r.written_secs,
                r.records
            ));
        }
    }
    report(&out);
    Ok(())
}

async fn run_mode(
    stack: &Stack,
    mode: Mode,
    size: usize,
    events: usize,
    payloads: &[String],
) -> Result<Row, BoxError> {
    let (db, pool) = counting_database(stack).await?;
    let (topic, dlq) = topic_and_dlq(stack, 6, mode.topic_limit(size)).await?;
    let s3 = bench_s3();
    let large = Arc::new(mode.large_payloads(&s3));
    let received = Arc::new(Received {
        sizes: payloads.iter().map(String::len).collect(),
        events: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let relay = relay(stack, &pool, mode.topic_limit(size))?;
    let relay_metrics = relay.metrics();
    let relay_task = tokio::spawn(relay.run(stop.clone()));
    let consumer = super::payloads::consumer(
        stack,
        &pool,
        &topic,
        super::payloads::claim_check(&s3),
        Arc::clone(&received),
    )?;
    let consumer_task = tokio::spawn(consumer.run(stop.clone()));

    let result = async {
        // Warm-up: one small event all the way through (group join, connections).
        enqueue_large(
            &pool,
            &large,
            order_event(&topic, "warmup", "Warmup", 1, "{}".to_owned())?,
        )
        .await?;
        wait_for(&received, 1, Duration::from_secs(120)).await?;

        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let records = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for _ in 0..WRITERS {
            let (pool, large, next, records) = (
                pool.clone(),
                Arc::clone(&large),
                Arc::clone(&next),
                Arc::clone(&records),
            );
            let topic = topic.clone();
            let payloads = payloads.to_vec();
            writers.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events {
                        return Ok::<_, BoxError>(());
                    }
                    let payload = payloads[i % payloads.len()].clone();
                    let key = uuid::Uuid::now_v7().to_string();
                    let event = order_event(&topic, &key, "OrderPlaced", 1, payload)?;
                    let n = enqueue_large(&pool, &large, event).await?;
                    records.fetch_add(n, Ordering::Relaxed);
                }
            }));
        }
        for w in writers {
            w.await??;
        }
        let written_secs = started.elapsed().as_secs_f64();
        wait_for(&received, events as u64 + 1, TIMEOUT).await?;
        let secs = started.elapsed().as_secs_f64();
        if relay_metrics.parked_total() > 0 {
            return Err(format!(
                "{}: the relay parked {} rows (refused by Kafka)",
                mode.label(),
                relay_metrics.parked_total()
            )
            .into());
        }
        Ok::<_, BoxError>(Row {
            mode,
            secs,
            written_secs,
            records: records.load(Ordering::Relaxed),
            bytes: received.bytes.load(Ordering::Relaxed),
        })
    }
    .await;

    stop.cancel();
    relay_task.await?;
    consumer_task.await??;
    tear_down(stack, [&topic, &dlq], &s3, &db, pool).await?;
    result
}

/// Waits until the handler has seen `events` events.
async fn wait_for(received: &Received, events: u64, timeout: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    while received.events.load(Ordering::Relaxed) < events {
        if Instant::now() > deadline {
            return Err(format!(
                "the handler saw {} of {events} events after {timeout:?}",
                received.events.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
