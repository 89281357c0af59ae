use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_context::{BaggagePolicy, EventContext, Propagation};
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

use crate::chunk::{ChunkHeader, Chunking};
use crate::event::{Event, Records};
use crate::metrics::ConsumerMetrics;
use crate::resolve::{CLAIM_CHECK_HEADER, PayloadResolver};
use crate::{ConsumerTables, Error, HandlerError};

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
    /// Extra librdkafka settings for the consumer (e.g. `session.timeout.ms`, which starts from
    /// [`SESSION_DEFAULTS`]).
    pub kafka_overrides: Vec<(String, String)>,
    /// Processed-event records older than this are pruned (hourly, by the running consumer).
    /// Keep it longer than the topics' retention (Kafka's default: 7 days), or a replay of
    /// still-retained events applies them again. `None` turns pruning off.
    pub retention: Option<Duration>,
    /// [`Propagation::On`] (default): each event's span is the child of its `traceparent`, and
    /// [`Event::context`] holds its ids. [`Propagation::Off`] ignores them (the pitfall).
    pub propagation: Propagation,
    /// Which `baggage` entries of a record's trace context are kept (the others are dropped).
    pub baggage: BaggagePolicy,
    /// `true` (default): an event is applied only when its `revision` header is newer than the
    /// last revision this group applied for the same aggregate (`aggregate-type` +
    /// `aggregate-id` headers, else the key); older or equal ones are skipped as stale, so a
    /// late, reordered or redriven event can never undo a newer one. The last revision is kept
    /// in `aggregate_revisions`, in the handler's transaction. Events without a `revision`
    /// header are applied in arrival order. Off with [`Dedupe::Off`] whatever this says.
    pub skip_stale: bool,
    /// The runtime's table names (default `processed_events`, `consumer_offsets`,
    /// `aggregate_revisions`); migrate them with [`ConsumerTables::migrate`].
    pub tables: ConsumerTables,
    /// A partition retrying one event for longer than this is reported stuck: an ERROR log
    /// line, the `consumer_stuck` gauge, and [`ConsumerMetrics::stuck`] (for `/readyz`).
    pub stuck_after: Duration,
    /// Limits for reassembling chunked messages (records with `chunk-*` headers; see
    /// [`crate::chunk`]).
    pub chunking: Chunking,
    /// What the records on the topics look like: this project's contract (the default) or
    /// records of a producer that does not follow it, such as Debezium change events.
    pub records: Records,
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
            baggage: BaggagePolicy::default(),
            skip_stale: true,
            tables: ConsumerTables::default(),
            stuck_after: Duration::from_secs(60),
            chunking: Chunking::default(),
            records: Records::Contract,
        }
    }

    /// Whether the revision guard runs (see [`skip_stale`](Self::skip_stale)).
    fn guards_revisions(&self) -> bool {
        self.skip_stale && self.dedupe != Dedupe::Off
    }
}

/// Consumer settings the runtime's guarantees rest on, with the values that keep them: a
/// `kafka_overrides` entry that contradicts one is refused by [`Consumer::new`].
pub const CONSUMER_GUARANTEES: &[(&str, &str)] = &[
    // Offsets are stored by the runtime after the database commit, and only then committed to
    // Kafka (periodically, on revoke and at shutdown). Auto-store would commit offsets of
    // events whose transaction has not committed: a crash would then lose them.
    ("enable.auto.offset.store", "false"),
    // Never see events of an aborted producer transaction.
    ("isolation.level", "read_committed"),
];

/// Group-session settings the runtime starts from (a `kafka_overrides` entry replaces them).
///
/// Kafka's default session timeout is 45 s. When a broker (or a single-broker cluster) comes
/// back after an outage longer than the session, every consumer rejoins as a new member, and
/// the restarted coordinator holds the rebalance until the old members' sessions expire: one
/// more session timeout with nothing consumed (measured here: 42 s after the broker was back
/// with 45 s; 10 s gives about 10 s). Heartbeats run on librdkafka's own thread, so a slow
/// handler never misses one (`max.poll.interval.ms`, 5 minutes, bounds the handler instead).
pub const SESSION_DEFAULTS: &[(&str, &str)] = &[
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "3000"),
];

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

/// A shared handler is a handler (for a test, or one handler behind several consumers).
impl<H: Handler> Handler for Arc<H> {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a {
        H::handle(self, event, tx)
    }
}

/// Partitions assigned since their last message; offsets mode seeks them to the stored offset.
type Fresh = Arc<Mutex<HashSet<(String, i32)>>>;

struct Context {
    fresh: Fresh,
    metrics: Arc<ConsumerMetrics>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(_) => {
                self.metrics.left_group();
                // Commit what was stored (applied) before the partitions move to another
                // member; pointless (and refused) when the session was lost.
                if !consumer.assignment_lost() {
                    let _ = consumer.commit_consumer_state(CommitMode::Sync);
                }
            }
            Rebalance::Error(err) => {
                self.metrics.left_group();
                tracing::warn!(error = %err, "consumer group rebalance failed; rejoining");
            }
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            self.metrics.joined_group();
            tracing::info!(partitions = partitions.count(), "consumer group joined");
            if let Ok(mut fresh) = self.fresh.lock() {
                for p in partitions.elements() {
                    fresh.insert((p.topic().to_owned(), p.partition()));
                }
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
    /// Not newer than the aggregate's last applied revision.
    Stale,
    /// A chunk stored; its set is not complete yet.
    Part,
}

/// The runtime's SQL, written once for the configured table names.
#[derive(Debug)]
struct Statements {
    stored_offset: String,
    stored_offset_for_update: String,
    store_offset: String,
    record_processed: String,
    seen_revision: String,
    record_revision: String,
    processed_exists: String,
    store_part: String,
    part_stats: String,
    part_payload: String,
    delete_parts: String,
    parts_of: String,
    expired_sets: String,
}

impl Statements {
    fn new(t: &ConsumerTables) -> Self {
        let (processed, offsets, revisions, parts) = (
            t.processed_events(),
            t.consumer_offsets(),
            t.aggregate_revisions(),
            t.chunk_parts(),
        );
        let stored_offset = format!(
            "SELECT next_offset FROM {offsets} WHERE consumer_group = $1 AND topic = $2 AND \"partition\" = $3"
        );
        Self {
            stored_offset_for_update: format!("{stored_offset} FOR UPDATE"),
            stored_offset,
            store_offset: format!(
                "INSERT INTO {offsets} (consumer_group, topic, \"partition\", next_offset) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (consumer_group, topic, \"partition\") DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
            ),
            record_processed: format!(
                "INSERT INTO {processed} (consumer_group, event_id, topic, \"partition\", \"offset\") \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
            ),
            seen_revision: format!(
                "SELECT revision FROM {revisions} \
                 WHERE consumer_group = $1 AND aggregate_type = $2 AND aggregate_id = $3 FOR UPDATE"
            ),
            record_revision: format!(
                "INSERT INTO {revisions} (consumer_group, aggregate_type, aggregate_id, revision) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (consumer_group, aggregate_type, aggregate_id) \
                 DO UPDATE SET revision = GREATEST({revisions}.revision, EXCLUDED.revision), updated_at = now()"
            ),
            processed_exists: format!(
                "SELECT EXISTS (SELECT 1 FROM {processed} WHERE consumer_group = $1 AND event_id = $2)"
            ),
            store_part: format!(
                "INSERT INTO {parts} (consumer_group, message_id, chunk_index, chunk_count, total_size, sha256, \
                 topic, \"partition\", \"offset\", record_key, headers, payload) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12) ON CONFLICT DO NOTHING"
            ),
            part_stats: format!(
                "SELECT chunk_count, total_size, sha256, count(*) FROM {parts} \
                 WHERE consumer_group = $1 AND message_id = $2 GROUP BY chunk_count, total_size, sha256"
            ),
            part_payload: format!(
                "SELECT payload FROM {parts} WHERE consumer_group = $1 AND message_id = $2 AND chunk_index = $3"
            ),
            delete_parts: format!(
                "DELETE FROM {parts} WHERE consumer_group = $1 AND message_id = $2"
            ),
            parts_of: format!(
                "SELECT topic, \"partition\", \"offset\", record_key, headers::text, payload \
                 FROM {parts} WHERE consumer_group = $1 AND message_id = $2 ORDER BY chunk_index"
            ),
            expired_sets: format!(
                "SELECT message_id, count(*), min(chunk_count) FROM {parts} WHERE consumer_group = $1 GROUP BY message_id \
                 HAVING min(received_at) < now() - make_interval(secs => $2) LIMIT 100"
            ),
        }
    }
}

/// The consumer runtime. One task consumes all assigned partitions in order, one event at a
/// time: simple, ordered, and enough for thousands of events per second.
pub struct Consumer<H> {
    pool: PgPool,
    config: ConsumerConfig,
    handler: H,
    metrics: Arc<ConsumerMetrics>,
    sql: Statements,
    resolver: Option<Arc<dyn PayloadResolver>>,
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
    /// [`crate::migrate`] on the pool first. Fails with [`Error::Config`] when
    /// `config.kafka_overrides` contradicts [`CONSUMER_GUARANTEES`] or sets `group.id` /
    /// `bootstrap.servers` (they have fields of their own).
    pub fn new(pool: PgPool, config: ConsumerConfig, handler: H) -> Result<Self, Error> {
        for (key, value) in &config.kafka_overrides {
            if let Some((_, required)) = CONSUMER_GUARANTEES.iter().find(|(k, _)| k == key)
                && !value.trim().eq_ignore_ascii_case(required)
            {
                return Err(Error::Config(format!(
                    "consumer setting {key}={value:?} would break exactly-once effects; it must be {required} (or left unset)"
                )));
            }
            if key == "group.id" || key == "bootstrap.servers" {
                return Err(Error::Config(format!(
                    "set {key} through ConsumerConfig, not kafka_overrides"
                )));
            }
        }
        Ok(Self {
            pool,
            sql: Statements::new(&config.tables),
            config,
            handler,
            metrics: Arc::new(ConsumerMetrics::default()),
            resolver: None,
        })
    }

    /// Resolves records whose payload is stored elsewhere (a claim check, see
    /// [`PayloadResolver`]) before the handler sees them. Without one, such a record is
    /// dead-lettered: a handler must never mistake a reference for the payload.
    pub fn with_resolver(mut self, resolver: Arc<dyn PayloadResolver>) -> Self {
        self.resolver = Some(resolver);
        self
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
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000");
        for (k, v) in SESSION_DEFAULTS {
            config.set(*k, *v);
        }
        for (k, v) in &self.config.kafka_overrides {
            config.set(k, v);
        }
        for (k, v) in CONSUMER_GUARANTEES {
            config.set(*k, *v);
        }
        let consumer: StreamConsumer<Context> = config.create_with_context(Context {
            fresh,
            metrics: Arc::clone(&self.metrics),
        })?;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }

    /// Checks that every consumed topic and its `<topic>.dlq` exist (topic auto-creation is off
    /// on a careful broker): a missing dead-letter topic found at start-up, with its name,
    /// instead of a poison record retried forever later. [`run`](Self::run) calls it first;
    /// call it at start-up to fail before serving.
    pub async fn verify_topics(&self) -> Result<(), Error> {
        let wanted: Vec<String> = self
            .config
            .topics
            .iter()
            .flat_map(|t| [t.clone(), format!("{t}.dlq")])
            .collect();
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.config.bootstrap_servers)
            .create()?;
        let metadata = tokio::task::spawn_blocking(move || {
            probe.fetch_metadata(None, Duration::from_secs(10))
        })
        .await
        .map_err(|err| Error::Config(format!("topic check did not finish: {err}")))??;
        let known: HashSet<&str> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name())
            .collect();
        let missing: Vec<String> = wanted
            .into_iter()
            .filter(|t| !known.contains(t.as_str()))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::MissingTopics(missing))
        }
    }

    /// Consumes until `shutdown` is cancelled. The event in flight is finished (or, if it is
    /// being retried, abandoned without storing its offset); stored offsets are committed before
    /// returning. Bounded by the handler's own duration.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        self.verify_topics().await?;
        let fresh: Fresh = Arc::default();
        let consumer = Arc::new(self.kafka_consumer(Arc::clone(&fresh))?);
        let dlq: FutureProducer = dlq_producer(&self.config.bootstrap_servers).create()?;
        let lag_running = Arc::new(AtomicBool::new(false));
        let prunes = self.config.dedupe == Dedupe::EventId || self.config.guards_revisions();
        let pruner = self.config.retention.filter(|_| prunes).map(|age| {
            let (pool, stop, tables) = (self.pool.clone(), shutdown.clone(), self.config.tables.clone());
            tokio::spawn(async move {
                loop {
                    match tables.prune(&pool, age).await {
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
        let sweeper = tokio::spawn(self.sweeper(dlq.clone()).run(shutdown.clone()));
        tracing::info!(group = %self.config.group_id, topics = ?self.config.topics, dedupe = ?self.config.dedupe, "consumer started");

        self.metrics.starting(self.config.stuck_after);
        let mut lag_tick = tokio::time::interval(Duration::from_secs(5));
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                // Also while nothing arrives: an idle consumer's lag is still news.
                _ = lag_tick.tick() => {
                    self.refresh_lag(&consumer, &lag_running);
                    continue;
                }
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
            if self.config.dedupe == Dedupe::Offsets {
                match self
                    .seek_if_fresh(&consumer, &fresh, &message, &shutdown)
                    .await
                {
                    Some(true) => continue,
                    Some(false) => {}
                    None => break, // shutdown while the database was unreachable
                }
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
        }
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
        self.metrics.left_group();
        let _ = dlq.flush(Duration::from_secs(5));
        if let Some(pruner) = pruner {
            pruner.abort();
        }
        // It stops at the shutdown signal; a set it was dead-lettering rolls back whole.
        let _ = tokio::time::timeout(Duration::from_secs(5), sweeper).await;
        tracing::info!(group = %self.config.group_id, "consumer stopped");
        Ok(())
    }

    /// Offsets mode: on the first message of a newly assigned partition, seek to the offset the
    /// database says comes next. Returns `Some(true)` when the message was skipped, `None` on
    /// shutdown. Database and seek errors are retried with backoff: the in-transaction offset
    /// check keeps correctness meanwhile, so they are never fatal.
    async fn seek_if_fresh(
        &self,
        consumer: &StreamConsumer<Context>,
        fresh: &Fresh,
        message: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> Option<bool> {
        let key = (message.topic().to_owned(), message.partition());
        let was_fresh = fresh.lock().map(|mut f| f.remove(&key)).unwrap_or(false);
        if !was_fresh {
            return Some(false);
        }
        let mut backoff = self.config.backoff_initial;
        loop {
            match self.seek_to_stored(consumer, message).await {
                Ok(skipped) => return Some(skipped),
                Err(err) => {
                    tracing::warn!(topic = message.topic(), partition = message.partition(), error = %err, retry_in_ms = backoff.as_millis() as u64, "cannot read the stored offset; retrying");
                    if sleep_or_cancel(backoff, shutdown).await {
                        return None;
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    async fn seek_to_stored(
        &self,
        consumer: &StreamConsumer<Context>,
        message: &BorrowedMessage<'_>,
    ) -> Result<bool, Error> {
        let next: Option<i64> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql.stored_offset.as_str()))
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
        let (context, parent) = self.config.propagation.incoming_with(
            |name| headers.and_then(|h| eda_context::kafka::header(h, name)),
            &self.config.baggage,
        );
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
        let mut event = match Event::decode_with(message, context, self.config.records) {
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
        let mut unresolved = event.header(CLAIM_CHECK_HEADER).is_some();
        let chunk = match self.chunk_of(&event, unresolved) {
            Ok(chunk) => chunk,
            Err(reason) => {
                return (
                    self.dead_letter(message, &reason, dlq, shutdown).await,
                    "dead-lettered",
                );
            }
        };
        let mut backoff = self.config.backoff_initial;
        let first_failure = std::time::Instant::now();
        let result = loop {
            let attempt = if let Some(chunk) = &chunk {
                self.apply_chunk(&event, chunk).await
            } else if unresolved {
                match self.resolve(&event).await {
                    Ok(payload) => {
                        event.payload = payload;
                        unresolved = false;
                        self.apply(&event).await
                    }
                    Err(err) => Err(err),
                }
            } else {
                self.apply(&event).await
            };
            match attempt {
                Ok(Applied::Yes) => {
                    self.metrics.processed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event.id = %event.event_id, event.type = %event.event_type, "event applied");
                    break (Outcome::Done, "applied");
                }
                Ok(Applied::Duplicate) => {
                    self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event.id = %event.event_id, event.type = %event.event_type, "duplicate skipped");
                    break (Outcome::Done, "duplicate");
                }
                Ok(Applied::Stale) => {
                    self.metrics.stale.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event.id = %event.event_id, event.type = %event.event_type, revision = event.revision(), "stale event skipped: its aggregate has a newer revision applied");
                    break (Outcome::Done, "stale");
                }
                Ok(Applied::Part) => {
                    self.metrics.chunks_stored.fetch_add(1, Ordering::Relaxed);
                    if let Some(chunk) = &chunk {
                        tracing::info!(event.id = %event.event_id, event.type = %event.event_type, chunk.message_id = %chunk.message_id, chunk.index = chunk.index, chunk.count = chunk.count, "chunk stored; its set is not complete yet");
                    }
                    break (Outcome::Done, "chunk-stored");
                }
                Err(HandlerError::Permanent(reason)) => {
                    // A chunked message is poison as a whole: its stored chunks go first, so
                    // the dead-letter topic holds the complete set for a redrive.
                    if let Some(chunk) = &chunk
                        && let Outcome::Abandoned = self
                            .dead_letter_chunks(chunk.message_id, &reason, dlq, shutdown)
                            .await
                    {
                        break (Outcome::Abandoned, "abandoned");
                    }
                    break (
                        self.dead_letter(message, &reason, dlq, shutdown).await,
                        "dead-lettered",
                    );
                }
                Err(HandlerError::Transient(err)) => {
                    self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    let stuck_for = first_failure.elapsed();
                    if stuck_for >= self.config.stuck_after {
                        self.report_stuck(&event, stuck_for, &err);
                    } else {
                        tracing::warn!(event.id = %event.event_id, event.type = %event.event_type, error = %err, retry_in_ms = backoff.as_millis() as u64, "transient failure; retrying the same event");
                    }
                    if sleep_or_cancel(backoff, shutdown).await {
                        break (Outcome::Abandoned, "abandoned");
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        };
        self.metrics.clear_stuck(&event.topic, event.partition);
        result
    }

    /// A partition has been retrying one event for longer than `stuck_after`: say so loudly
    /// (ERROR, once per retry), and keep it visible to `/metrics` and `/readyz` until it moves.
    fn report_stuck(&self, event: &Event, stuck_for: Duration, err: &crate::BoxError) {
        let first = self.metrics.set_stuck(crate::metrics::Stuck {
            topic: event.topic.clone(),
            partition: event.partition,
            offset: event.offset,
            event_id: event.event_id,
            stuck_for,
            error: err.to_string(),
        });
        tracing::error!(
            event.id = %event.event_id,
            event.type = %event.event_type,
            topic = %event.topic,
            partition = event.partition,
            offset = event.offset,
            stuck_for_s = stuck_for.as_secs(),
            first,
            error = %err,
            "partition stuck: one event has failed transiently for longer than stuck_after; retrying"
        );
    }

    /// The payload a claim-checked record refers to, from the resolver.
    async fn resolve(&self, event: &Event) -> Result<Vec<u8>, HandlerError> {
        let Some(resolver) = &self.resolver else {
            return Err(HandlerError::Permanent(format!(
                "the record's payload is claim-checked ({CLAIM_CHECK_HEADER}) but this consumer has no payload resolver"
            )));
        };
        resolver.resolve(event).await
    }

    /// One attempt: dedupe record + revision guard + handler (+ offset row) in one transaction.
    async fn apply(&self, event: &Event) -> Result<Applied, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let applied = self.apply_in(&mut tx, event).await?;
        if let Applied::Duplicate = applied {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(applied)
    }

    /// The chunk headers of a record, if it is a chunk; an error is the dead letter's reason.
    fn chunk_of(&self, event: &Event, claim_checked: bool) -> Result<Option<ChunkHeader>, String> {
        if event.header(crate::chunk::headers::MESSAGE_ID).is_none() {
            return Ok(None);
        }
        if claim_checked {
            return Err(format!(
                "the record is both claim-checked ({CLAIM_CHECK_HEADER}) and a chunk ({})",
                crate::chunk::headers::MESSAGE_ID
            ));
        }
        ChunkHeader::parse(
            |name| event.header(name),
            event.payload.len(),
            &self.config.chunking,
        )
        .map(Some)
    }

    /// One attempt at a chunk: store it with the offset/dedupe records; when it completes its
    /// set, reassemble, check, apply the whole message and delete the set, all in one
    /// transaction. Serialised per message with the expiry sweep (an advisory lock).
    async fn apply_chunk(
        &self,
        event: &Event,
        chunk: &ChunkHeader,
    ) -> Result<Applied, HandlerError> {
        let group = &self.config.group_id;
        let mut tx = self.pool.begin().await?;
        lock_chunk_set(&mut tx, group, chunk.message_id).await?;
        let duplicate = match self.config.dedupe {
            // The whole message was applied already (its record outlives the chunk set).
            Dedupe::EventId => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql.processed_exists.as_str()))
                    .bind(group)
                    .bind(chunk.message_id)
                    .fetch_one(&mut *tx)
                    .await?
            }
            Dedupe::Offsets => {
                let next: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(
                    self.sql.stored_offset_for_update.as_str(),
                ))
                .bind(group)
                .bind(&event.topic)
                .bind(event.partition)
                .fetch_optional(&mut *tx)
                .await?;
                next.is_some_and(|next| event.offset < next)
            }
            Dedupe::Off => false,
        };
        if duplicate {
            tx.rollback().await?;
            return Ok(Applied::Duplicate);
        }
        let headers = serde_json::to_string(&event.headers)
            .map_err(|err| HandlerError::Permanent(format!("headers not storable: {err}")))?;
        let inserted = sqlx::query(sqlx::AssertSqlSafe(self.sql.store_part.as_str()))
            .bind(group)
            .bind(chunk.message_id)
            .bind(chunk.index as i32)
            .bind(chunk.count as i32)
            .bind(chunk.total_size as i64)
            .bind(&chunk.sha256)
            .bind(&event.topic)
            .bind(event.partition)
            .bind(event.offset)
            .bind(event.key.as_deref().map(str::as_bytes))
            .bind(headers)
            .bind(event.payload.as_slice())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Counted, not summed: every chunk would otherwise read all stored payloads again.
        let sets: Vec<(i32, i64, String, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(self.sql.part_stats.as_str()))
                .bind(group)
                .bind(chunk.message_id)
                .fetch_all(&mut *tx)
                .await?;
        let [(count, size, sha256, stored)] = sets.as_slice() else {
            return Err(HandlerError::Permanent(format!(
                "the chunks of message {} disagree on their count, size or checksum",
                chunk.message_id
            )));
        };
        if *stored < i64::from(*count) {
            if inserted == 0 && self.config.dedupe != Dedupe::Offsets {
                tx.rollback().await?;
                return Ok(Applied::Duplicate);
            }
            self.store_offset(&mut tx, event).await?;
            tx.commit().await?;
            return Ok(if inserted == 0 {
                Applied::Duplicate
            } else {
                Applied::Part
            });
        }
        // At most the announced size (itself at most `max_message_size`, checked at the first
        // chunk), read chunk by chunk: a set holding more is refused before it is all read.
        let size = usize::try_from(*size).unwrap_or(usize::MAX);
        let mut payload = Vec::with_capacity(size);
        for index in 0..*count {
            let part: Vec<u8> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql.part_payload.as_str()))
                    .bind(group)
                    .bind(chunk.message_id)
                    .bind(index)
                    .fetch_one(&mut *tx)
                    .await?;
            if payload.len() + part.len() > size {
                return Err(HandlerError::Permanent(format!(
                    "the {count} chunks of message {} hold more than the {size} bytes the set announces",
                    chunk.message_id
                )));
            }
            payload.extend_from_slice(&part);
        }
        if payload.len() != size {
            return Err(HandlerError::Permanent(format!(
                "the {count} chunks of message {} hold {} bytes; the set announces {size}",
                chunk.message_id,
                payload.len()
            )));
        }
        // Hashing megabytes is CPU work: off the async threads.
        let (payload, got) = tokio::task::spawn_blocking(move || {
            let got = crate::chunk::sha256_hex(&payload);
            (payload, got)
        })
        .await
        .map_err(|err| HandlerError::Transient(Box::new(err)))?;
        if got != *sha256 {
            return Err(HandlerError::Permanent(format!(
                "reassembled message {} has sha256 {got}; its chunks announce {sha256}",
                chunk.message_id
            )));
        }
        let whole = event.reassembled(chunk.message_id, payload);
        let applied = self.apply_in(&mut tx, &whole).await?;
        if let Applied::Duplicate = applied {
            tx.rollback().await?;
            return Ok(applied);
        }
        sqlx::query(sqlx::AssertSqlSafe(self.sql.delete_parts.as_str()))
            .bind(group)
            .bind(chunk.message_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Offsets mode: the partition's next offset, in the transaction.
    async fn store_offset(&self, tx: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        if self.config.dedupe == Dedupe::Offsets {
            sqlx::query(sqlx::AssertSqlSafe(self.sql.store_offset.as_str()))
                .bind(&self.config.group_id)
                .bind(&event.topic)
                .bind(event.partition)
                .bind(event.offset + 1)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// Sends every stored chunk of `message_id` to its dead-letter topic with `reason`, then
    /// deletes them. Retries until Kafka and the database take it (or shutdown).
    async fn dead_letter_chunks(
        &self,
        message_id: uuid::Uuid,
        reason: &str,
        dlq: &FutureProducer,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let sweeper = self.sweeper(dlq.clone());
        let mut backoff = self.config.backoff_initial;
        loop {
            match sweeper.dead_letter_set(message_id, reason, shutdown).await {
                Ok(outcome) => return outcome,
                Err(err) => {
                    tracing::error!(chunk.message_id = %message_id, error = %err, "cannot dead-letter the stored chunks; retrying");
                    if sleep_or_cancel(backoff, shutdown).await {
                        return Outcome::Abandoned;
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    fn sweeper(&self, dlq: FutureProducer) -> ChunkSweeper {
        ChunkSweeper {
            pool: self.pool.clone(),
            group: self.config.group_id.clone(),
            parts_of: self.sql.parts_of.clone(),
            delete_parts: self.sql.delete_parts.clone(),
            expired_sets: self.sql.expired_sets.clone(),
            timeout: self.config.chunking.timeout,
            dlq,
            metrics: Arc::clone(&self.metrics),
            backoff: (self.config.backoff_initial, self.config.backoff_max),
        }
    }

    /// The body of one attempt, inside `tx`; the caller commits, or rolls back a duplicate.
    async fn apply_in(
        &self,
        tx: &mut PgConnection,
        event: &Event,
    ) -> Result<Applied, HandlerError> {
        match self.config.dedupe {
            Dedupe::EventId => {
                let inserted = sqlx::query(sqlx::AssertSqlSafe(self.sql.record_processed.as_str()))
                    .bind(&self.config.group_id)
                    .bind(event.event_id)
                    .bind(&event.topic)
                    .bind(event.partition)
                    .bind(event.offset)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if inserted == 0 {
                    return Ok(Applied::Duplicate);
                }
            }
            Dedupe::Offsets => {
                let next: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(
                    self.sql.stored_offset_for_update.as_str(),
                ))
                .bind(&self.config.group_id)
                .bind(&event.topic)
                .bind(event.partition)
                .fetch_optional(&mut *tx)
                .await?;
                if next.is_some_and(|next| event.offset < next) {
                    return Ok(Applied::Duplicate);
                }
            }
            Dedupe::Off => {}
        }
        let guard = self
            .config
            .guards_revisions()
            .then(|| event.aggregate_revision())
            .flatten();
        let stale = match &guard {
            Some((kind, id, revision)) => {
                let seen: Option<i64> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql.seen_revision.as_str()))
                        .bind(&self.config.group_id)
                        .bind(kind)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                seen.is_some_and(|seen| *revision <= seen)
            }
            None => false,
        };
        if stale {
            // Skipped, but recorded as handled: the dedupe/offset records commit below.
        } else {
            self.handler.handle(event, &mut *tx).await?;
            if let Some((kind, id, revision)) = &guard {
                sqlx::query(sqlx::AssertSqlSafe(self.sql.record_revision.as_str()))
                    .bind(&self.config.group_id)
                    .bind(kind)
                    .bind(id)
                    .bind(revision)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        self.store_offset(tx, event).await?;
        Ok(if stale { Applied::Stale } else { Applied::Yes })
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
        let letter = Letter {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            payload: message.payload(),
            headers: message
                .headers()
                .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default(),
        };
        send_letter(
            dlq,
            &letter,
            reason,
            &self.config.group_id,
            &self.metrics,
            (self.config.backoff_initial, self.config.backoff_max),
            shutdown,
        )
        .await
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

/// One record for a dead-letter topic: a consumed record, or a stored chunk.
struct Letter<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// Sends `letter` to `<topic>.dlq` with its original headers plus the `dlq-*` ones, retrying
/// until Kafka takes it (or shutdown: [`Outcome::Abandoned`]).
async fn send_letter(
    dlq: &FutureProducer,
    letter: &Letter<'_>,
    reason: &str,
    group: &str,
    metrics: &ConsumerMetrics,
    (backoff_initial, backoff_max): (Duration, Duration),
    shutdown: &CancellationToken,
) -> Outcome {
    let topic = format!("{}.dlq", letter.topic);
    tracing::warn!(dlq = %topic, reason, "dead-lettering a record");
    let mut headers = OwnedHeaders::new();
    for (key, value) in &letter.headers {
        headers = headers.insert(Header { key, value: *value });
    }
    let (partition, offset, failed_at) = (
        letter.partition.to_string(),
        letter.offset.to_string(),
        chrono::Utc::now().to_rfc3339(),
    );
    for (key, value) in [
        ("dlq-reason", reason),
        ("dlq-original-topic", letter.topic),
        ("dlq-original-partition", partition.as_str()),
        ("dlq-original-offset", offset.as_str()),
        ("dlq-consumer-group", group),
        ("dlq-failed-at", failed_at.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    let mut backoff = backoff_initial;
    loop {
        let mut record = FutureRecord::to(&topic).headers(headers.clone());
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        if let Some(payload) = letter.payload {
            record = record.payload(payload);
        }
        match dlq
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => {
                metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                return Outcome::Done;
            }
            Err((err, _)) => {
                tracing::error!(dlq = %topic, error = %err, "cannot write the dead letter; retrying");
                if sleep_or_cancel(backoff, shutdown).await {
                    return Outcome::Abandoned;
                }
                backoff = (backoff * 2).min(backoff_max);
            }
        }
    }
}

/// Serialises the transactions that touch one chunk set (storing a chunk, completing the set,
/// expiring it) for the length of the caller's transaction.
async fn lock_chunk_set(
    tx: &mut PgConnection,
    group: &str,
    message_id: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("eda-chunk/{group}/{message_id}"))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Dead-letters chunk sets: incomplete ones past the chunk timeout (a background task of
/// [`Consumer::run`]), and sets whose message turned out to be poison.
struct ChunkSweeper {
    pool: PgPool,
    group: String,
    parts_of: String,
    delete_parts: String,
    expired_sets: String,
    timeout: Duration,
    dlq: FutureProducer,
    metrics: Arc<ConsumerMetrics>,
    backoff: (Duration, Duration),
}

impl ChunkSweeper {
    /// Every `timeout / 4` (at most a minute), until shutdown.
    async fn run(self, shutdown: CancellationToken) {
        let every = (self.timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
        loop {
            if sleep_or_cancel(every, &shutdown).await {
                return;
            }
            match self.sweep(&shutdown).await {
                Ok(0) => {}
                Ok(sets) => {
                    tracing::warn!(
                        sets,
                        "incomplete chunk sets dead-lettered after the chunk timeout"
                    );
                }
                Err(err) => {
                    tracing::warn!(error = %err, "expiring incomplete chunk sets failed; will retry");
                }
            }
        }
    }

    /// Dead-letters the incomplete sets whose first chunk is older than the timeout.
    async fn sweep(&self, shutdown: &CancellationToken) -> Result<u64, sqlx::Error> {
        let expired: Vec<(uuid::Uuid, i64, i32)> =
            sqlx::query_as(sqlx::AssertSqlSafe(self.expired_sets.as_str()))
                .bind(&self.group)
                .bind(self.timeout.as_secs_f64())
                .fetch_all(&self.pool)
                .await?;
        let mut done = 0;
        for (message_id, stored, count) in expired {
            let reason = format!(
                "incomplete chunk set: {stored} of {count} chunks of message {message_id} arrived; \
                 the rest did not come within the chunk timeout ({} s)",
                self.timeout.as_secs()
            );
            if let Outcome::Abandoned = self.dead_letter_set(message_id, &reason, shutdown).await? {
                break;
            }
            self.metrics
                .chunk_sets_expired
                .fetch_add(1, Ordering::Relaxed);
            done += 1;
        }
        Ok(done)
    }

    /// Sends every stored chunk of `message_id` to the dead-letter topic, then deletes them, in
    /// one transaction holding the set's lock (a chunk arriving meanwhile waits, then starts a
    /// new set).
    async fn dead_letter_set(
        &self,
        message_id: uuid::Uuid,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, sqlx::Error> {
        type Part = (String, i32, i64, Option<Vec<u8>>, String, Vec<u8>);
        let mut tx = self.pool.begin().await?;
        lock_chunk_set(&mut tx, &self.group, message_id).await?;
        let parts: Vec<Part> = sqlx::query_as(sqlx::AssertSqlSafe(self.parts_of.as_str()))
            .bind(&self.group)
            .bind(message_id)
            .fetch_all(&mut *tx)
            .await?;
        for (topic, partition, offset, key, headers, payload) in &parts {
            let headers: Vec<(String, Option<String>)> =
                serde_json::from_str(headers).unwrap_or_default();
            let letter = Letter {
                topic,
                partition: *partition,
                offset: *offset,
                key: key.as_deref(),
                payload: Some(payload),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref().map(str::as_bytes)))
                    .collect(),
            };
            let outcome = send_letter(
                &self.dlq,
                &letter,
                reason,
                &self.group,
                &self.metrics,
                self.backoff,
                shutdown,
            )
            .await;
            if let Outcome::Abandoned = outcome {
                tx.rollback().await?;
                return Ok(Outcome::Abandoned);
            }
        }
        sqlx::query(sqlx::AssertSqlSafe(self.delete_parts.as_str()))
            .bind(&self.group)
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Outcome::Done)
    }
}

/// The producer of dead letters (and redriven records): idempotent, `acks=all`, and Java's
/// partitioner, so a key lands on the partition every other producer of the project uses.
pub(crate) fn dlq_producer(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random");
    config
}

async fn sleep_or_cancel(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}
