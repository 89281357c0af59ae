//! The consumer workload `bench consumer` and `bench propagation` share: the same `Counted`
//! events, produced once per run, counted into one row per aggregate by the consumer runtime.

use std::time::{Duration, Instant};

use eda_idempotent_consumer::{Consumer, Event, Handler, HandlerError};
use eda_outbox::{OutboxEvent, enqueue, enqueue_all};
use eda_stack_admin::Stack;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::BoxError;
use super::common::{create_topic, scratch_database};

/// How long a consumer may take to process every event before the benchmark gives up.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(1800);

/// The benchmark's handler: one counter row per aggregate, `n = n + 1` (not idempotent).
pub(super) struct Count;

impl Handler for Count {
    async fn handle(&self, event: &Event, tx: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO counters (key, n) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET n = counters.n + 1")
            .bind(event.key.as_deref().unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// Counts like [`Count`], and emits one event per event into the outbox with the context
/// headers `propagation` gives (the work a saga step does).
pub(super) struct CountAndEmit {
    /// Whether the emitted event carries the consumed event's context.
    pub(super) propagation: eda_context::Propagation,
}

impl CountAndEmit {
    /// The event emitted for `event`, with its context (call inside the event's span).
    fn emitted(&self, event: &Event) -> Result<OutboxEvent, HandlerError> {
        let key = event.key.as_deref().unwrap_or_default();
        OutboxEvent::json("bench.out", "Counter", key, "Counted", 1, &1)
            .and_then(|e| e.with_headers(event.outgoing_context(self.propagation)))
            .map_err(|e| HandlerError::Permanent(e.to_string()))
    }
}

impl Handler for CountAndEmit {
    async fn handle(&self, event: &Event, tx: &mut PgConnection) -> Result<(), HandlerError> {
        Count.handle(event, tx).await?;
        enqueue(tx, &self.emitted(event)?)
            .await
            .map_err(|e| HandlerError::Transient(Box::new(e)))
    }

    /// The same effects for a batch in two statements: one upsert adding each key's count,
    /// one insert of every emitted event (each with its own event's context).
    async fn handle_batch(
        &self,
        events: &[&Event],
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let keys: Vec<&str> = events
            .iter()
            .map(|e| e.key.as_deref().unwrap_or_default())
            .collect();
        sqlx::query(
            "INSERT INTO counters (key, n) SELECT key, count(*) FROM unnest($1::text[]) AS k(key) GROUP BY key \
             ON CONFLICT (key) DO UPDATE SET n = counters.n + EXCLUDED.n",
        )
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            out.push(event.in_span(async { self.emitted(event) }).await?);
        }
        enqueue_all(tx, &out)
            .await
            .map_err(|e| HandlerError::Transient(Box::new(e)))
    }
}

/// A scratch database for a consumer run: outbox, the consumer runtime's tables, `counters`.
pub(super) async fn counting_database(stack: &Stack) -> Result<(String, PgPool), BoxError> {
    let (db, pool) = scratch_database(stack).await?;
    eda_idempotent_consumer::migrate(&pool).await?;
    sqlx::query("CREATE TABLE counters (key text PRIMARY KEY, n bigint NOT NULL)")
        .execute(&pool)
        .await?;
    Ok((db, pool))
}

/// A fresh 6-partition topic and its `.dlq` companion (the consumer runtime needs it).
pub(super) async fn topic_with_dlq(stack: &Stack) -> Result<(String, String), BoxError> {
    let topic = create_topic(stack, 6).await?;
    let dlq = format!("{topic}.dlq");
    eda_stack_admin::create_topic(stack, &dlq, 1).await?;
    Ok((topic, dlq))
}

/// Writes `events` `Counted` events to `topic`: 1,000 aggregates, ~100-byte values, the
/// `event-id`/`event-type` headers plus `extra`. The same events feed every mode of a benchmark.
pub(super) async fn produce_counted(
    stack: &Stack,
    topic: &str,
    events: usize,
    extra: &[(&str, String)],
) -> Result<(), BoxError> {
    let producer: rdkafka::producer::FutureProducer = stack
        .producer_config()
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()?;
    let payload = json!({"pad": "x".repeat(80)}).to_string();
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..events {
        let key = format!("agg-{}", i % 1000);
        let ids = [
            ("event-id", uuid::Uuid::now_v7().to_string()),
            ("event-type", "Counted".to_owned()),
        ];
        let headers = eda_context::kafka::insert(rdkafka::message::OwnedHeaders::new(), &ids);
        let headers = eda_context::kafka::insert(headers, extra);
        let record = rdkafka::producer::FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        // send_result enqueues now (the record is copied), so the key need not outlive the loop.
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        if pending.len() >= 10_000 {
            while let Some(r) = futures::StreamExt::next(&mut pending).await {
                r?.map_err(|(e, _)| e)?;
            }
        }
    }
    while let Some(r) = futures::StreamExt::next(&mut pending).await {
        r?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Runs `consumer` until it has processed `events`, stops it, returns the seconds it took.
pub(super) async fn consume_all_events<H: Handler>(
    consumer: Consumer<H>,
    events: usize,
) -> Result<f64, BoxError> {
    let metrics = consumer.metrics();
    let stop = CancellationToken::new();
    let mut started = Instant::now();
    let task = tokio::spawn(consumer.run(stop.clone()));
    // The clock starts once the consumer has its partitions: the group join is not the work.
    while !metrics.in_group() && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started = Instant::now();
    while metrics.processed() < events as u64 {
        if started.elapsed() > CONSUME_TIMEOUT {
            stop.cancel();
            return Err("the consumer did not process every event within 30 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    Ok(secs)
}
