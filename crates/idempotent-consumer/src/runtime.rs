use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_context::{EventContext, Propagation};
use opentelemetry::context::FutureExt as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext, Message, Offset};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{Instrument as _, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::event::Event;
use crate::metrics::ConsumerMetrics;
use crate::{Error, HandlerError};

/// How the runtime recognises an event it already applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedupe {
    /// A `processed_events` row per event id, per consumer group, in the handler's transaction.
    /// Catches redeliveries and republished duplicates (same event id at a new offset: outbox
    /// relays and retrying producers do this). The default.
    EventId,
    /// The next offset per partition in `consumer_offsets`, in the handler's transaction; the
    /// consumer seeks there on assignment. Constant-size state and no retention, but a
    /// republished duplicate has a new offset and is applied again: use it when producers
    /// never republish (or the handler is idempotent by revision).
    Offsets,
    /// No dedupe, offsets committed after the handler: every delivery is applied. This is the
    /// pitfall, kept for the demonstrations.
    Off,
}

impl std::str::FromStr for Dedupe {
    type Err = String;

    /// `on` (or `event-id`), `offsets`, `off`: the values of the services' `IDEMPOTENCY`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" | "event-id" => Ok(Self::EventId),
            "offsets" => Ok(Self::Offsets),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?} is not one of on, offsets, off")),
        }
    }
}

/// Settings of one consumer.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// Consumer group; also the namespace of the dedupe records.
    pub group_id: String,
    /// Topics to consume. Dead letters go to `<topic>.dlq`, which must exist.
    pub topics: Vec<String>,
    /// Dedupe strategy.
    pub dedupe: Dedupe,
    /// First pause after a transient failure; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest pause between retries of one event.
    pub backoff_max: Duration,
    /// Extra librdkafka settings for the consumer (e.g. `session.timeout.ms`).
    pub kafka_overrides: Vec<(String, String)>,
    /// Processed-event records older than this are pruned (hourly, by the running consumer).
    /// Keep it longer than the topics' retention (Kafka's default: 7 days), or a replay of
    /// still-retained events applies them again. `None` turns pruning off.
    pub retention: Option<Duration>,
    /// [`Propagation::On`] (default): each event's span is the child of its `traceparent`, and
    /// [`Event::context`] holds its ids. [`Propagation::Off`] ignores them (the pitfall).
    pub propagation: Propagation,
}

impl ConsumerConfig {
    /// Defaults: dedupe by event id, backoff 100 ms to 10 s.
    pub fn new(bootstrap_servers: &str, group_id: &str, topics: &[&str]) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.to_owned(),
            group_id: group_id.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            dedupe: Dedupe::EventId,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            kafka_overrides: Vec::new(),
            retention: Some(Duration::from_secs(8 * 24 * 3600)),
            propagation: Propagation::On,
        }
    }
}

/// What a service implements: apply one event inside the given transaction. Return
/// [`HandlerError::Transient`] to have it retried, [`HandlerError::Permanent`] to dead-letter it.
/// Do not commit or roll back `tx`: the runtime does, together with the dedupe record.
pub trait Handler: Send + Sync + 'static {
    /// Applies `event`.
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

/// Partitions assigned since their last message; offsets mode seeks them to the stored offset.
type Fresh = Arc<Mutex<HashSet<(String, i32)>>>;

struct Context {
    fresh: Fresh,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            // Commit what was stored (applied) before the partitions move to another member.
            let _ = consumer.commit_consumer_state(CommitMode::Sync);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance
            && let Ok(mut fresh) = self.fresh.lock()
        {
            for p in partitions.elements() {
                fresh.insert((p.topic().to_owned(), p.partition()));
            }
        }
    }
}

enum Outcome {
    /// Applied, skipped as duplicate, or dead-lettered: the offset may move on.
    Done,
    /// Shutdown while retrying: leave the offset, the event will be redelivered.
    Abandoned,
}

enum Applied {
    Yes,
    Duplicate,
}

/// The consumer runtime. One task consumes all assigned partitions in order, one event at a
/// time: simple, ordered, and enough for thousands of events per second.
pub struct Consumer<H> {
    pool: PgPool,
    config: ConsumerConfig,
    handler: H,
    metrics: Arc<ConsumerMetrics>,
}

impl<H> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Consumer<H> {
    /// A consumer applying events with `handler` in transactions on `pool`. Run
    /// [`crate::migrate`] on the pool first.
    pub fn new(pool: PgPool, config: ConsumerConfig, handler: H) -> Self {
        Self {
            pool,
            config,
            handler,
            metrics: Arc::new(ConsumerMetrics::default()),
        }
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        Arc::clone(&self.metrics)
    }

    fn kafka_consumer(&self, fresh: Fresh) -> Result<StreamConsumer<Context>, Error> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.config.bootstrap_servers)
            .set("group.id", &self.config.group_id)
            .set("auto.offset.reset", "earliest")
            // Offsets are stored by the runtime after the database commit, and only then
            // committed to Kafka (periodically, on revoke and at shutdown).
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            // Never see events of an aborted producer transaction.
            .set("isolation.level", "read_committed");
        for (k, v) in &self.config.kafka_overrides {
            config.set(k, v);
        }
        let consumer: StreamConsumer<Context> = config.create_with_context(Context { fresh })?;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }

    /// Consumes until `shutdown` is cancelled. The event in flight is finished (or, if it is
    /// being retried, abandoned without storing its offset); stored offsets are committed before
    /// returning. Bounded by the handler's own duration.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let fresh: Fresh = Arc::default();
        let consumer = Arc::new(self.kafka_consumer(Arc::clone(&fresh))?);
        let dlq: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.config.bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        let lag_running = Arc::new(AtomicBool::new(false));
        let mut next_lag = tokio::time::Instant::now();
        let pruner = self.config.retention.filter(|_| self.config.dedupe == Dedupe::EventId).map(|age| {
            let (pool, stop) = (self.pool.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    match crate::prune_processed(&pool, age).await {
                        Ok(0) => {}
                        Ok(pruned) => tracing::info!(pruned, "processed-event records past retention deleted"),
                        Err(err) => tracing::warn!(error = %err, "pruning processed-event records failed; will retry"),
                    }
                    if sleep_or_cancel(Duration::from_secs(3600), &stop).await {
                        return;
                    }
                }
            })
        });
        tracing::info!(group = %self.config.group_id, topics = ?self.config.topics, dedupe = ?self.config.dedupe, "consumer started");

        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                m = consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(err) => {
                    tracing::warn!(error = %err, "kafka consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if self.config.dedupe == Dedupe::Offsets
                && self.seek_if_fresh(&consumer, &fresh, &message).await?
            {
                continue;
            }
            match self.process(&message, &dlq, &shutdown).await {
                Outcome::Done => {
                    if let Err(err) = consumer.store_offset_from_message(&message) {
                        // The partition was revoked meanwhile: the new owner redelivers, dedupe holds.
                        tracing::debug!(error = %err, "offset not stored");
                    }
                }
                Outcome::Abandoned => break,
            }
            if tokio::time::Instant::now() >= next_lag {
                self.refresh_lag(&consumer, &lag_running);
                next_lag = tokio::time::Instant::now() + Duration::from_secs(5);
            }
        }
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
        let _ = dlq.flush(Duration::from_secs(5));
        if let Some(pruner) = pruner {
            pruner.abort();
        }
        tracing::info!(group = %self.config.group_id, "consumer stopped");
        Ok(())
    }

    /// Offsets mode: on the first message of a newly assigned partition, seek to the offset the
    /// database says comes next. Returns true when the message was skipped.
    async fn seek_if_fresh(
        &self,
        consumer: &StreamConsumer<Context>,
        fresh: &Fresh,
        message: &BorrowedMessage<'_>,
    ) -> Result<bool, Error> {
        let key = (message.topic().to_owned(), message.partition());
        let was_fresh = fresh.lock().map(|mut f| f.remove(&key)).unwrap_or(false);
        if !was_fresh {
            return Ok(false);
        }
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT next_offset FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2 AND \"partition\" = $3",
        )
        .bind(&self.config.group_id)
        .bind(message.topic())
        .bind(message.partition())
        .fetch_optional(&self.pool)
        .await?;
        match next {
            Some(next) if next > message.offset() => {
                tracing::info!(
                    topic = message.topic(),
                    partition = message.partition(),
                    from = message.offset(),
                    to = next,
                    "seeking to the offset stored in the database"
                );
                consumer.seek(
                    message.topic(),
                    message.partition(),
                    Offset::Offset(next),
                    Timeout::After(Duration::from_secs(10)),
                )?;
                self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The span one event is handled in (OpenTelemetry messaging conventions, kind consumer):
    /// the child of the record's `traceparent` when propagation is on, a new trace otherwise.
    fn process_span(
        &self,
        message: &BorrowedMessage<'_>,
    ) -> (Span, EventContext, opentelemetry::Context) {
        let headers = message.headers();
        let (context, parent) = self
            .config
            .propagation
            .incoming(|name| headers.and_then(|h| eda_context::kafka::header(h, name)));
        let span = tracing::info_span!(
            target: "eda_idempotent_consumer",
            parent: None,
            "process",
            otel.name = %format!("process {}", message.topic()),
            otel.kind = "consumer",
            otel.status_code = Empty,
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = message.topic(),
            messaging.destination.partition.id = message.partition(),
            messaging.kafka.offset = message.offset(),
            // Keys come from whoever produced: shown only when short and printable.
            messaging.kafka.message.key = message
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| eda_context::sanitize::printable(k, 256)),
            messaging.consumer.group.name = %self.config.group_id,
            messaging.message.id = Empty,
            event.type = Empty,
            outcome = Empty,
            request_id = %context.request_id,
            user_id = context.user_id.as_deref(),
        );
        // A no-op when the span is not exported (no OpenTelemetry layer, or TRACE_FILTER): the
        // parent is also attached around the handler (see `process`), so the chain goes on.
        let _ = span.set_parent(parent.clone());
        (span, context, parent)
    }

    async fn process(
        &self,
        message: &BorrowedMessage<'_>,
        dlq: &FutureProducer,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let (span, context, parent) = self.process_span(message);
        // Attached first, entered second: inside, the current OpenTelemetry context is the
        // process span when it is exported, else the record's parent.
        let outcome = self
            .process_in_span(message, context, dlq, shutdown)
            .instrument(span.clone())
            .with_context(parent)
            .await;
        span.record("outcome", outcome.1);
        if outcome.1 == "dead-lettered" {
            span.record("otel.status_code", "ERROR");
        }
        outcome.0
    }

    async fn process_in_span(
        &self,
        message: &BorrowedMessage<'_>,
        context: EventContext,
        dlq: &FutureProducer,
        shutdown: &CancellationToken,
    ) -> (Outcome, &'static str) {
        let event = match Event::decode_with(message, context) {
            Ok(event) => event,
            Err(reason) => {
                return (
                    self.dead_letter(message, &reason.0, dlq, shutdown).await,
                    "dead-lettered",
                );
            }
        };
        let span = Span::current();
        span.record(
            "messaging.message.id",
            tracing::field::display(event.event_id),
        );
        span.record("event.type", event.event_type.as_str());
        let mut backoff = self.config.backoff_initial;
        loop {
            match self.apply(&event).await {
                Ok(Applied::Yes) => {
                    self.metrics.processed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event.id = %event.event_id, event.type = %event.event_type, "event applied");
                    return (Outcome::Done, "applied");
                }
                Ok(Applied::Duplicate) => {
                    self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event.id = %event.event_id, event.type = %event.event_type, "duplicate skipped");
                    return (Outcome::Done, "duplicate");
                }
                Err(HandlerError::Permanent(reason)) => {
                    return (
                        self.dead_letter(message, &reason, dlq, shutdown).await,
                        "dead-lettered",
                    );
                }
                Err(HandlerError::Transient(err)) => {
                    self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(event.id = %event.event_id, event.type = %event.event_type, error = %err, retry_in_ms = backoff.as_millis() as u64, "transient failure; retrying the same event");
                    if sleep_or_cancel(backoff, shutdown).await {
                        return (Outcome::Abandoned, "abandoned");
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    /// One attempt: dedupe record + handler (+ offset row) in one transaction.
    async fn apply(&self, event: &Event) -> Result<Applied, HandlerError> {
        let mut tx = self.pool.begin().await?;
        match self.config.dedupe {
            Dedupe::EventId => {
                let inserted = sqlx::query(
                    "INSERT INTO processed_events (consumer_group, event_id, topic, \"partition\", \"offset\") \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(&self.config.group_id)
                .bind(event.event_id)
                .bind(&event.topic)
                .bind(event.partition)
                .bind(event.offset)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    tx.rollback().await?;
                    return Ok(Applied::Duplicate);
                }
            }
            Dedupe::Offsets => {
                let next: Option<i64> = sqlx::query_scalar(
                    "SELECT next_offset FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2 AND \"partition\" = $3 FOR UPDATE",
                )
                .bind(&self.config.group_id)
                .bind(&event.topic)
                .bind(event.partition)
                .fetch_optional(&mut *tx)
                .await?;
                if next.is_some_and(|next| event.offset < next) {
                    tx.rollback().await?;
                    return Ok(Applied::Duplicate);
                }
            }
            Dedupe::Off => {}
        }
        self.handler.handle(event, &mut tx).await?;
        if self.config.dedupe == Dedupe::Offsets {
            sqlx::query(
                "INSERT INTO consumer_offsets (consumer_group, topic, \"partition\", next_offset) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (consumer_group, topic, \"partition\") DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            )
            .bind(&self.config.group_id)
            .bind(&event.topic)
            .bind(event.partition)
            .bind(event.offset + 1)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Applied::Yes)
    }

    /// Sends the original record to `<topic>.dlq` with the reason, retrying until Kafka takes
    /// it: a dead letter must not be lost either.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        dlq: &FutureProducer,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let topic = format!("{}.dlq", message.topic());
        tracing::warn!(dlq = %topic, reason, "dead-lettering a record");
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let (partition, offset, failed_at) = (
            message.partition().to_string(),
            message.offset().to_string(),
            chrono::Utc::now().to_rfc3339(),
        );
        for (key, value) in [
            ("dlq-reason", reason),
            ("dlq-original-topic", message.topic()),
            ("dlq-original-partition", partition.as_str()),
            ("dlq-original-offset", offset.as_str()),
            ("dlq-consumer-group", self.config.group_id.as_str()),
            ("dlq-failed-at", failed_at.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut backoff = self.config.backoff_initial;
        loop {
            let mut record = FutureRecord::to(&topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            match dlq
                .send(record, Timeout::After(Duration::from_secs(30)))
                .await
            {
                Ok(_) => {
                    self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Done;
                }
                Err((err, _)) => {
                    tracing::error!(dlq = %topic, error = %err, "cannot write the dead letter; retrying");
                    if sleep_or_cancel(backoff, shutdown).await {
                        return Outcome::Abandoned;
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    /// Updates the lag gauge off the async threads (watermark queries block).
    fn refresh_lag(&self, consumer: &Arc<StreamConsumer<Context>>, running: &Arc<AtomicBool>) {
        if running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (consumer, running, metrics) = (
            Arc::clone(consumer),
            Arc::clone(running),
            Arc::clone(&self.metrics),
        );
        tokio::task::spawn_blocking(move || {
            if let Ok(positions) = consumer.position() {
                let mut lag = 0u64;
                for p in positions.elements() {
                    if let (Offset::Offset(pos), Ok((_, high))) = (
                        p.offset(),
                        consumer.fetch_watermarks(p.topic(), p.partition(), Duration::from_secs(2)),
                    ) {
                        lag += u64::try_from(high - pos).unwrap_or(0);
                    }
                }
                metrics.lag.store(lag, Ordering::Relaxed);
            }
            running.store(false, Ordering::Release);
        });
    }
}

async fn sleep_or_cancel(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}
