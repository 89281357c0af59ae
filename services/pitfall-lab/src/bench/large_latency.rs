//! `bench large-latency`: the seed's claim that large events hurt everything around them.
//! Small events (1 KiB orders at a fixed rate) flow through the project's path (outbox, relay,
//! topic, consumer runtime) while 5 MiB events flow on the same topic and partitions, written
//! by the same service: inline, as claim checks, as chunks; and a baseline with no large
//! events. Measured per small event: from its `occurred-at` (set when the event is built, just
//! before its transaction) to the moment the consumer's handler runs for it.
//!
//! Each mode has its own database, topic (6 partitions), relay and consumer; the numbers of
//! the modes come from the same run on the same machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eda_idempotent_consumer::{Event, Handler, HandlerError};
use eda_stack_admin::Stack;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use super::BoxError;
use super::common::{percentile, report};
use super::counted::counting_database;
use super::payloads::{
    Mode, bench_s3, claim_check, enqueue_large, mib, order_event, order_json, progress, relay,
    size_label, tear_down, topic_and_dlq,
};

/// Concurrent writers of small events, each committing one event per transaction.
const WRITERS: u64 = 4;
/// How long the consumer may take to catch up after the writers stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// What the benchmark varies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    /// Small events per second.
    pub(super) rate: u64,
    /// Seconds of writing.
    pub(super) seconds: u64,
    /// Bytes of a small event.
    pub(super) small_bytes: usize,
    /// Bytes of a large event.
    pub(super) large_bytes: usize,
    /// Large events per second.
    pub(super) large_rate: f64,
}

/// Latency of the small events, counts of the large ones.
#[derive(Default)]
struct Seen {
    small_ms: Mutex<Vec<f64>>,
    large: AtomicU64,
    warm: AtomicU64,
}

impl Handler for Seen {
    async fn handle(&self, event: &Event, _tx: &mut PgConnection) -> Result<(), HandlerError> {
        match event.event_type.as_str() {
            "SmallOrder" => {
                let at = event
                    .header("occurred-at")
                    .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
                    .ok_or_else(|| HandlerError::Permanent("no occurred-at".to_owned()))?;
                let ms = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1000.0;
                if let Ok(mut v) = self.small_ms.lock() {
                    v.push(ms);
                }
            }
            "Warmup" => {
                self.warm.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.large.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// One mode's numbers.
struct Row {
    label: &'static str,
    achieved: f64,
    sorted_ms: Vec<f64>,
    large: u64,
    large_bytes: u64,
    secs: f64,
}

/// Runs the baseline, then every mode with large events.
pub(super) async fn run(stack: &Stack, load: Load) -> Result<(), BoxError> {
    let mut rows = Vec::new();
    for mode in [
        None,
        Some(Mode::Inline),
        Some(Mode::ClaimCheck),
        Some(Mode::Chunk),
    ] {
        progress(&format!(
            "large-latency: {} for {} s",
            mode.map_or("baseline (no large events)", Mode::label),
            load.seconds
        ));
        rows.push(run_mode(stack, mode, load).await?);
    }
    let mut out = vec![
        format!(
            "== small-event latency beside large events: {} orders at {}/s for {} s, {} orders at {}/s on the same topic (6 partitions) ==",
            size_label(load.small_bytes),
            load.rate,
            load.seconds,
            size_label(load.large_bytes),
            load.large_rate
        ),
        "   outbox -> relay -> Kafka -> consumer runtime; latency = small event's occurred-at -> its handler".to_owned(),
        "large events    small/s  measured   p50 ms   p90 ms   p99 ms   max ms   large delivered (MiB/s)".to_owned(),
    ];
    for r in rows {
        let p = |q| percentile(&r.sorted_ms, q);
        out.push(format!(
            "{:<14} {:>8.0} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>8.1}   {} ({:.1})",
            r.label,
            r.achieved,
            r.sorted_ms.len(),
            p(0.5),
            p(0.9),
            p(0.99),
            r.sorted_ms.last().copied().unwrap_or(f64::NAN),
            r.large,
            mib(r.large_bytes) / r.secs
        ));
    }
    report(&out);
    Ok(())
}

async fn run_mode(stack: &Stack, mode: Option<Mode>, load: Load) -> Result<Row, BoxError> {
    let limit = mode.and_then(|m| m.topic_limit(load.large_bytes));
    let (db, pool) = counting_database(stack).await?;
    let (topic, dlq) = topic_and_dlq(stack, 6, limit).await?;
    let s3 = bench_s3();
    let seen = Arc::new(Seen::default());
    let stop = CancellationToken::new();
    let relay_task = tokio::spawn(relay(stack, &pool, limit)?.run(stop.clone()));
    let consumer =
        super::payloads::consumer(stack, &pool, &topic, claim_check(&s3), Arc::clone(&seen))?;
    let consumer_task = tokio::spawn(consumer.run(stop.clone()));

    let result = async {
        let small_large = mode.unwrap_or(Mode::Inline).large_payloads(&s3);
        enqueue_large(
            &pool,
            &small_large,
            order_event(&topic, "warmup", "Warmup", 1, "{}".to_owned())?,
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while seen.warm.load(Ordering::Relaxed) == 0 {
            if Instant::now() > deadline {
                return Err::<Row, BoxError>("the warm-up event was not consumed".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let started = Instant::now();
        // The large events: one writer at `large_rate`, until the small writers are done.
        let writing = Arc::new(AtomicBool::new(true));
        let large_task = mode.map(|mode| {
            let (pool, topic, writing) = (pool.clone(), topic.clone(), Arc::clone(&writing));
            let large = mode.large_payloads(&s3);
            let payloads: Vec<String> = (0..4).map(|s| order_json(load.large_bytes, s)).collect();
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / load.large_rate));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let (mut sent, mut bytes) = (0u64, 0u64);
                while writing.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let payload = payloads[sent as usize % payloads.len()].clone();
                    bytes += payload.len() as u64;
                    let key = uuid::Uuid::now_v7().to_string();
                    let event = order_event(&topic, &key, "OrderPlaced", 1, payload)?;
                    enqueue_large(&pool, &large, event).await?;
                    sent += 1;
                }
                Ok::<_, BoxError>((sent, bytes))
            })
        });
        let per_writer = load.rate * load.seconds / WRITERS;
        let interval = Duration::from_secs_f64(WRITERS as f64 / load.rate as f64);
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (pool, topic) = (pool.clone(), topic.clone());
            let payload = order_json(load.small_bytes, 1000 + w);
            writers.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for i in 0..per_writer {
                    tick.tick().await;
                    let key = format!("small-{w}-{}", i % 50);
                    let event = order_event(&topic, &key, "SmallOrder", (i / 50) as i64 + 1, payload.clone())?;
                    let mut tx = pool.begin().await?;
                    eda_outbox::enqueue(&mut tx, &event).await?;
                    tx.commit().await?;
                }
                Ok::<_, BoxError>(())
            }));
        }
        for w in writers {
            w.await??;
        }
        let achieved = (per_writer * WRITERS) as f64 / started.elapsed().as_secs_f64();
        writing.store(false, Ordering::Relaxed);
        let (large, large_bytes) = match large_task {
            Some(t) => t.await??,
            None => (0, 0),
        };
        let small = per_writer * WRITERS;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let got = seen.small_ms.lock().map_or(0, |v| v.len()) as u64;
            if got >= small && seen.large.load(Ordering::Relaxed) >= large {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "consumer behind after {DRAIN_TIMEOUT:?}: {got} of {small} small, {} of {large} large events",
                    seen.large.load(Ordering::Relaxed)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let mut sorted_ms = seen
            .small_ms
            .lock()
            .map_err(|_| "latency lock poisoned")?
            .clone();
        sorted_ms.sort_by(f64::total_cmp);
        Ok(Row {
            label: mode.map_or("none", Mode::label),
            achieved,
            sorted_ms,
            large,
            large_bytes,
            secs,
        })
    }
    .await;

    stop.cancel();
    relay_task.await?;
    consumer_task.await??;
    tear_down(stack, [&topic, &dlq], &s3, &db, pool).await?;
    result
}
