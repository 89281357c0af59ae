use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_context::{BaggagePolicy, EventContext, Propagation};
use opentelemetry::context::FutureExt as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Semaphore, mpsc};
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
    /// Most events of one partition applied in one transaction (default 500). Each partition
    /// has its own worker; a batch is what its queue holds when the previous one committed,
    /// so under load batches grow and at low load an event goes alone. 1: one transaction
    /// per event.
    pub batch_max_events: usize,
    /// How long a worker waits for more events once it has one (default 0: it never waits,
    /// and low-load latency stays what it is). A batch also closes at `batch_max_bytes`.
    pub batch_linger: Duration,
    /// Most payload bytes in one batch (default 8 MiB; a larger single event goes alone).
    pub batch_max_bytes: usize,
    /// Payload bytes consumed but not yet applied, over all partitions (default 64 MiB; one
    /// partition may hold a quarter, and four batches or 2,048 records). A partition over its
    /// share is paused in Kafka until its worker has caught up by half: memory stays bounded
    /// and a stuck partition does not hold the others.
    pub buffer_max_bytes: usize,
    /// Most partitions applying a batch at the same time (default 4). Each holds a connection
    /// of the pool for its transaction: keep it well below the pool's size, so that the
    /// service's requests still find one.
    pub max_parallel: usize,
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
            batch_max_events: 500,
            batch_linger: Duration::ZERO,
            batch_max_bytes: 8 << 20,
            buffer_max_bytes: 64 << 20,
            max_parallel: 4,
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

    /// Applies `events` (one partition's, in offset order, none a duplicate or stale) in one
    /// transaction. The default calls [`handle`](Self::handle) for each, inside the event's
    /// span. Override it to apply a batch with fewer statements (one multi-row upsert, say);
    /// wrap per-event work in [`Event::in_span`] so logs and emitted events keep each event's
    /// trace. On an error the whole batch rolls back: a transient one retries the batch, a
    /// permanent one has the runtime apply the events one by one with [`handle`](Self::handle),
    /// so that only the poison event is dead-lettered.
    fn handle_batch<'a>(
        &'a self,
        events: &'a [&'a Event],
        tx: &'a mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a {
        async move {
            for event in events {
                event.in_span(self.handle(event, &mut *tx)).await?;
            }
            Ok(())
        }
    }
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

    fn handle_batch<'a>(
        &'a self,
        events: &'a [&'a Event],
        tx: &'a mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a {
        H::handle_batch(self, events, tx)
    }
}

/// Partitions assigned since their last message; offsets mode seeks them to the stored offset.
type Fresh = Arc<Mutex<HashSet<(String, i32)>>>;

/// Partitions revoked since the dispatcher last looked: their workers stop.
type Revoked = Arc<Mutex<Vec<(String, i32)>>>;

struct Context {
    fresh: Fresh,
    revoked: Revoked,
    metrics: Arc<ConsumerMetrics>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                self.metrics.left_group();
                if let Ok(mut revoked) = self.revoked.lock() {
                    revoked.extend(
                        partitions
                            .elements()
                            .iter()
                            .map(|p| (p.topic().to_owned(), p.partition())),
                    );
                }
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

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            self.metrics.joined_group();
            // A partition the dispatcher paused (its queue was full) before it was revoked
            // starts unpaused in its new assignment.
            let _ = consumer.resume(partitions);
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

#[derive(Debug, Clone, Copy)]
enum Applied {
    Yes,
    Duplicate,
    /// Not newer than the aggregate's last applied revision.
    Stale,
    /// A chunk stored; its set is not complete yet.
    Part,
}

impl Applied {
    /// The span's `outcome`.
    fn name(self) -> &'static str {
        match self {
            Self::Yes => "applied",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::Part => "chunk-stored",
        }
    }
}

/// A record's `process` span, its context and its trace parent, made when it is taken.
type Prepared = (Span, EventContext, opentelemetry::Context);

/// Records queued but not yet applied: of one partition, or of the whole consumer.
#[derive(Debug, Default)]
struct Queued {
    records: AtomicUsize,
    bytes: AtomicUsize,
}

/// A consumed record on its way to its partition's worker. It counts as queued (for its
/// partition and for the consumer) until it is dropped, after its batch is done.
struct Item {
    message: OwnedMessage,
    size: usize,
    lane: Arc<Queued>,
    all: Arc<Queued>,
}

impl Item {
    fn new(message: OwnedMessage, lane: &Arc<Queued>, all: &Arc<Queued>) -> Self {
        let size = size_of(&message);
        for q in [lane, all] {
            q.records.fetch_add(1, Ordering::Relaxed);
            q.bytes.fetch_add(size, Ordering::Relaxed);
        }
        Self {
            message,
            size,
            lane: Arc::clone(lane),
            all: Arc::clone(all),
        }
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        for q in [&self.lane, &self.all] {
            q.records.fetch_sub(1, Ordering::Relaxed);
            q.bytes.fetch_sub(self.size, Ordering::Relaxed);
        }
    }
}

/// A partition's worker as the dispatcher sees it.
struct Lane {
    queue: mpsc::UnboundedSender<Item>,
    stop: CancellationToken,
    queued: Arc<Queued>,
    /// Fetching of the partition is paused (its worker is too far behind).
    paused: bool,
}

/// The dispatcher's side of the workers: routes records to their partition's queue, pauses a
/// partition whose worker is too far behind (and resumes it once it has caught up), stops the
/// workers of revoked partitions.
///
/// Pausing is flow control with hysteresis, not a per-record decision: librdkafka drops what
/// it had prefetched for a paused partition and fetches it again on resume, so pausing at
/// every full queue would fetch the same records over and over (measured: 36 events/s).
struct Lanes<H> {
    consumer: Arc<Consumer<H>>,
    kafka: Arc<StreamConsumer<Context>>,
    dlq: FutureProducer,
    shutdown: CancellationToken,
    lanes: HashMap<(String, i32), Lane>,
    workers: tokio::task::JoinSet<()>,
    all: Arc<Queued>,
    /// Turns to apply a batch ([`ConsumerConfig::max_parallel`]).
    parallel: Arc<Semaphore>,
}

/// What a partition's queue holds compared with what it may hold.
#[derive(Debug, PartialEq, Eq)]
enum Level {
    /// Over: pause the partition.
    High,
    /// Under half: a paused partition may resume.
    Low,
    /// In between: leave it as it is.
    Between,
}

impl<H: Handler> Lanes<H> {
    fn new(
        consumer: &Arc<Consumer<H>>,
        kafka: &Arc<StreamConsumer<Context>>,
        dlq: &FutureProducer,
        shutdown: &CancellationToken,
    ) -> Self {
        Self {
            consumer: Arc::clone(consumer),
            kafka: Arc::clone(kafka),
            dlq: dlq.clone(),
            shutdown: shutdown.clone(),
            lanes: HashMap::new(),
            workers: tokio::task::JoinSet::new(),
            all: Arc::default(),
            parallel: Arc::new(Semaphore::new(consumer.config.max_parallel)),
        }
    }

    /// Where `q` (one partition's queue) stands. A partition may queue four batches (at least
    /// 2,048 records) and a quarter of `buffer_max_bytes`, so that a stuck one never starves
    /// the others; all together at most `buffer_max_bytes`.
    fn level(&self, q: &Queued) -> Level {
        let config = &self.consumer.config;
        let (budget, high) = (
            config.buffer_max_bytes,
            config.batch_max_events.saturating_mul(4).max(2048),
        );
        let (records, bytes) = (
            q.records.load(Ordering::Relaxed),
            q.bytes.load(Ordering::Relaxed),
        );
        let all = self.all.bytes.load(Ordering::Relaxed);
        if records >= high || bytes >= (budget / 4).max(1) || all >= budget {
            Level::High
        } else if records <= high / 2 && bytes <= budget / 8 && all <= budget / 2 {
            Level::Low
        } else {
            Level::Between
        }
    }

    fn lane(&mut self, key: &(String, i32)) -> &mut Lane {
        if !self.lanes.contains_key(key) {
            let (queue, rx) = mpsc::unbounded_channel();
            let stop = self.shutdown.child_token();
            self.workers.spawn(Arc::clone(&self.consumer).work(
                Arc::clone(&self.kafka),
                rx,
                self.dlq.clone(),
                stop.clone(),
                Arc::clone(&self.parallel),
            ));
            self.lanes.insert(
                key.clone(),
                Lane {
                    queue,
                    stop,
                    queued: Arc::default(),
                    paused: false,
                },
            );
        }
        self.lanes.get_mut(key).expect("inserted")
    }

    /// Hands `message` to its partition's worker; pauses the partition when it is behind.
    fn route(&mut self, message: OwnedMessage) {
        let key = (message.topic().to_owned(), message.partition());
        let all = Arc::clone(&self.all);
        let lane = self.lane(&key);
        let item = Item::new(message, &lane.queued, &all);
        // Closed only at shutdown (the worker stopped): the record is redelivered later.
        let _ = lane.queue.send(item);
        let (paused, queued) = (lane.paused, Arc::clone(&lane.queued));
        if !paused && self.level(&queued) == Level::High {
            pause(&self.kafka, &key.0, key.1, true);
            if let Some(lane) = self.lanes.get_mut(&key) {
                lane.paused = true;
            }
        }
    }

    fn paused(&self) -> bool {
        self.lanes.values().any(|lane| lane.paused)
    }

    /// Resumes the paused partitions whose workers have caught up.
    fn resume(&mut self) {
        let ready: Vec<(String, i32)> = self
            .lanes
            .iter()
            .filter(|(_, lane)| lane.paused && self.level(&lane.queued) == Level::Low)
            .map(|(key, _)| key.clone())
            .collect();
        for key in ready {
            pause(&self.kafka, &key.0, key.1, false);
            if let Some(lane) = self.lanes.get_mut(&key) {
                lane.paused = false;
            }
        }
    }

    /// Stops the workers of the partitions revoked since the last call (after the batch in
    /// flight; what they queued is dropped, the next owner consumes it from the committed
    /// offset).
    fn revoke(&mut self, revoked: &Revoked) {
        let gone = revoked
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        for key in gone {
            if let Some(lane) = self.lanes.remove(&key) {
                lane.stop.cancel();
            }
        }
    }

    /// Collects finished workers; a worker that panicked takes the consumer down with it
    /// (its partition cannot go on past an event that was neither applied nor dead-lettered).
    fn reap(&mut self) {
        while let Some(done) = self.workers.try_join_next() {
            rethrow(done);
        }
    }

    /// At shutdown: every worker finishes (or abandons) its batch in flight.
    async fn finish(mut self) {
        for lane in self.lanes.values() {
            lane.stop.cancel();
        }
        self.lanes.clear();
        while let Some(done) = self.workers.join_next().await {
            rethrow(done);
        }
    }
}

/// A worker's panic, raised again in the dispatcher.
fn rethrow(done: Result<(), tokio::task::JoinError>) {
    if let Err(err) = done
        && err.is_panic()
    {
        std::panic::resume_unwind(err.into_panic());
    }
}

/// What a record weighs in the buffer and in a batch: its value and key.
fn size_of(message: &OwnedMessage) -> usize {
    message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len)
}

/// Pauses (or resumes) fetching one partition.
fn pause(kafka: &StreamConsumer<Context>, topic: &str, partition: i32, paused: bool) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let result = if paused {
        kafka.pause(&tpl)
    } else {
        kafka.resume(&tpl)
    };
    if let Err(err) = result {
        tracing::debug!(topic, partition, paused, error = %err, "pause/resume refused (partition no longer assigned)");
    } else if paused {
        tracing::debug!(
            topic,
            partition,
            "partition queue full: fetching paused until its worker catches up"
        );
    } else {
        tracing::debug!(
            topic,
            partition,
            "partition queue drained: fetching resumed"
        );
    }
}

/// The runtime's SQL, written once for the configured table names.
#[derive(Debug)]
struct Statements {
    stored_offset: String,
    stored_offset_for_update: String,
    store_offset: String,
    record_processed: String,
    record_processed_batch: String,
    seen_revision: String,
    seen_revisions_batch: String,
    record_revision: String,
    record_revisions_batch: String,
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
            record_processed_batch: format!(
                "INSERT INTO {processed} (consumer_group, event_id, topic, \"partition\", \"offset\") \
                 SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::int4[], $5::int8[]) \
                 ON CONFLICT DO NOTHING RETURNING event_id"
            ),
            seen_revision: format!(
                "SELECT revision FROM {revisions} \
                 WHERE consumer_group = $1 AND aggregate_type = $2 AND aggregate_id = $3 FOR UPDATE"
            ),
            seen_revisions_batch: format!(
                "SELECT r.aggregate_type, r.aggregate_id, r.revision FROM {revisions} r \
                 JOIN unnest($2::text[], $3::text[]) AS k(aggregate_type, aggregate_id) USING (aggregate_type, aggregate_id) \
                 WHERE r.consumer_group = $1 FOR UPDATE OF r"
            ),
            record_revisions_batch: format!(
                "INSERT INTO {revisions} (consumer_group, aggregate_type, aggregate_id, revision) \
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int8[]) \
                 ON CONFLICT (consumer_group, aggregate_type, aggregate_id) \
                 DO UPDATE SET revision = GREATEST({revisions}.revision, EXCLUDED.revision), updated_at = now()"
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

/// The consumer runtime: one task reads Kafka, one worker per assigned partition applies its
/// events in order, in micro-batches of one transaction each (see the crate's README).
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
        for (name, value) in [
            ("batch_max_events", config.batch_max_events),
            ("batch_max_bytes", config.batch_max_bytes),
            ("buffer_max_bytes", config.buffer_max_bytes),
            ("max_parallel", config.max_parallel),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
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

    fn kafka_consumer(
        &self,
        fresh: Fresh,
        revoked: Revoked,
    ) -> Result<StreamConsumer<Context>, Error> {
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
            revoked,
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

    /// Consumes until `shutdown` is cancelled. Each assigned partition gets a worker that
    /// applies its events in order, in micro-batches (see [`ConsumerConfig::batch_max_events`]);
    /// partitions run in parallel. At shutdown the batch in flight is finished (or, if it is
    /// being retried, abandoned without storing its offset); stored offsets are committed before
    /// returning. Bounded by the handler's own duration.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        self.verify_topics().await?;
        let fresh: Fresh = Arc::default();
        let revoked: Revoked = Arc::default();
        let consumer = Arc::new(self.kafka_consumer(Arc::clone(&fresh), Arc::clone(&revoked))?);
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
        tracing::info!(group = %self.config.group_id, topics = ?self.config.topics, dedupe = ?self.config.dedupe, batch_max_events = self.config.batch_max_events, "consumer started");

        self.metrics.starting(self.config.stuck_after);
        let this = Arc::new(self);
        let mut lanes = Lanes::new(&this, &consumer, &dlq, &shutdown);
        let mut lag_tick = tokio::time::interval(Duration::from_secs(5));
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resume_tick = tokio::time::interval(Duration::from_millis(10));
        resume_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                // Also while nothing arrives: an idle consumer's lag is still news.
                _ = lag_tick.tick() => {
                    this.refresh_lag(&consumer, &lag_running);
                    lanes.revoke(&revoked);
                    continue;
                }
                _ = resume_tick.tick(), if lanes.paused() => {
                    lanes.resume();
                    continue;
                }
                m = consumer.recv() => m,
            };
            // Revocations are served inside `recv`: act on them before routing what it returned,
            // so a message of a partition assigned again goes to a new worker.
            lanes.revoke(&revoked);
            lanes.reap();
            let message = match message {
                Ok(m) => m.detach(),
                Err(err) => {
                    tracing::warn!(error = %err, "kafka consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if this.config.dedupe == Dedupe::Offsets {
                match this
                    .seek_if_fresh(&consumer, &fresh, &message, &shutdown)
                    .await
                {
                    Some(true) => continue,
                    Some(false) => {}
                    None => break, // shutdown while the database was unreachable
                }
            }
            lanes.route(message);
        }
        lanes.finish().await;
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
        this.metrics.left_group();
        let _ = dlq.flush(Duration::from_secs(5));
        if let Some(pruner) = pruner {
            pruner.abort();
        }
        // It stops at the shutdown signal; a set it was dead-lettering rolls back whole.
        let _ = tokio::time::timeout(Duration::from_secs(5), sweeper).await;
        tracing::info!(group = %this.config.group_id, "consumer stopped");
        Ok(())
    }

    /// One partition's worker: takes what its queue holds (up to the batch limits), applies
    /// it, stores the offset of the last event applied, and again, until its partition is
    /// revoked, the consumer stops, or a retry is abandoned.
    async fn work(
        self: Arc<Self>,
        consumer: Arc<StreamConsumer<Context>>,
        mut queue: mpsc::UnboundedReceiver<Item>,
        dlq: FutureProducer,
        stop: CancellationToken,
        parallel: Arc<Semaphore>,
    ) {
        let mut carry: Option<Item> = None;
        loop {
            let first = match carry.take() {
                Some(item) => item,
                None => tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    item = queue.recv() => match item {
                        Some(item) => item,
                        None => return,
                    },
                },
            };
            if stop.is_cancelled() {
                return;
            }
            let mut bytes = first.size;
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.config.batch_linger;
            while batch.len() < self.config.batch_max_events {
                let next = match queue.try_recv() {
                    Ok(item) => item,
                    Err(mpsc::error::TryRecvError::Empty)
                        if !self.config.batch_linger.is_zero() =>
                    {
                        match tokio::time::timeout_at(deadline, queue.recv()).await {
                            Ok(Some(item)) => item,
                            _ => break,
                        }
                    }
                    Err(_) => break,
                };
                if bytes + next.size > self.config.batch_max_bytes {
                    carry = Some(next);
                    break;
                }
                bytes += next.size;
                batch.push(next);
            }
            let Ok(_turn) = parallel.acquire().await else {
                return;
            };
            let (done, abandoned) = self.process_batch(&batch, &dlq, &stop).await;
            if let Some(offset) = done {
                let m = &batch[0].message;
                if let Err(err) = consumer.store_offset(m.topic(), m.partition(), offset) {
                    // The partition was revoked meanwhile: the new owner redelivers, dedupe holds.
                    tracing::debug!(error = %err, "offset not stored");
                }
            }
            // Dropping the batch gives its bytes back to the buffer.
            drop(batch);
            if abandoned {
                return;
            }
        }
    }

    /// Applies one partition's batch in order: runs of plain events in one transaction each,
    /// chunks, claim-checked and undecodable records one at a time. Returns the offset of the
    /// last record done (applied, skipped or dead-lettered) and whether a retry was abandoned.
    async fn process_batch(
        &self,
        batch: &[Item],
        dlq: &FutureProducer,
        stop: &CancellationToken,
    ) -> (Option<i64>, bool) {
        let mut done = None;
        let mut run: Vec<(&OwnedMessage, Prepared, Event)> = Vec::with_capacity(batch.len());
        for item in batch {
            let prepared = self.process_span(&item.message);
            match self.plain(&item.message, &prepared) {
                Some(event) => run.push((&item.message, prepared, event)),
                None => {
                    let (last, abandoned) =
                        self.apply_run(std::mem::take(&mut run), dlq, stop).await;
                    done = last.or(done);
                    if abandoned {
                        return (done, true);
                    }
                    match self.process(&item.message, prepared, dlq, stop).await {
                        Outcome::Done => done = Some(item.message.offset()),
                        Outcome::Abandoned => return (done, true),
                    }
                }
            }
        }
        let (last, abandoned) = self.apply_run(run, dlq, stop).await;
        (last.or(done), abandoned)
    }

    /// The record decoded, when it can join a batch: not poison, not a chunk, not
    /// claim-checked (those take the one-at-a-time path, which handles them).
    fn plain(&self, message: &OwnedMessage, (span, context, parent): &Prepared) -> Option<Event> {
        let event = Event::decode_with(message, context.clone(), self.config.records).ok()?;
        if event.header(CLAIM_CHECK_HEADER).is_some()
            || event.header(crate::chunk::headers::MESSAGE_ID).is_some()
        {
            return None;
        }
        Some(event.traced(span.clone(), parent.clone()))
    }

    /// Applies a run of plain events: one transaction for all of them, retried whole on a
    /// transient failure; on a permanent one, event by event so that only the poison event is
    /// dead-lettered. A run of one goes the one-at-a-time way.
    async fn apply_run(
        &self,
        run: Vec<(&OwnedMessage, Prepared, Event)>,
        dlq: &FutureProducer,
        stop: &CancellationToken,
    ) -> (Option<i64>, bool) {
        let Some((last, _, _)) = run.last() else {
            return (None, false);
        };
        let last = last.offset();
        if run.len() == 1 {
            let (message, prepared, _) = run.into_iter().next().expect("one");
            return match self.process(message, prepared, dlq, stop).await {
                Outcome::Done => (Some(last), false),
                Outcome::Abandoned => (None, true),
            };
        }
        let events: Vec<&Event> = run.iter().map(|(_, _, e)| e).collect();
        let mut backoff = self.config.backoff_initial;
        let first_failure = std::time::Instant::now();
        loop {
            match self.apply_batch(&events).await {
                Ok(applied) => {
                    self.metrics.batches.fetch_add(1, Ordering::Relaxed);
                    for ((_, (span, _, _), event), applied) in run.iter().zip(applied) {
                        self.applied(event, span, &applied);
                    }
                    self.metrics
                        .clear_stuck(&events[0].topic, events[0].partition);
                    return (Some(last), false);
                }
                Err(HandlerError::Permanent(reason)) => {
                    tracing::warn!(topic = %events[0].topic, partition = events[0].partition, events = events.len(), reason, "a batch failed permanently; applying its events one by one");
                    let mut done = None;
                    for (message, prepared, _) in run {
                        match self.process(message, prepared, dlq, stop).await {
                            Outcome::Done => done = Some(message.offset()),
                            Outcome::Abandoned => return (done, true),
                        }
                    }
                    return (done, false);
                }
                Err(HandlerError::Transient(err)) => {
                    self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    let stuck_for = first_failure.elapsed();
                    if stuck_for >= self.config.stuck_after {
                        self.report_stuck(events[0], stuck_for, &err);
                    } else {
                        tracing::warn!(topic = %events[0].topic, partition = events[0].partition, events = events.len(), error = %err, retry_in_ms = backoff.as_millis() as u64, "transient failure; retrying the same batch");
                    }
                    if sleep_or_cancel(backoff, stop).await {
                        self.metrics
                            .clear_stuck(&events[0].topic, events[0].partition);
                        return (None, true);
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    /// Counts, logs (in the event's span) and records the outcome of one event of a batch.
    fn applied(&self, event: &Event, span: &Span, applied: &Applied) {
        let _entered = span.enter();
        self.counted(event, *applied);
        span.record(
            "messaging.message.id",
            tracing::field::display(event.event_id),
        );
        span.record("event.type", event.event_type.as_str());
        span.record("outcome", applied.name());
    }

    /// Counts and logs (in the current span) an event applied or skipped, on either path. A
    /// stored chunk is counted where its chunk headers are known.
    fn counted(&self, event: &Event, applied: Applied) {
        match applied {
            Applied::Yes => {
                self.metrics.processed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event.id = %event.event_id, event.type = %event.event_type, "event applied");
            }
            Applied::Duplicate => {
                self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event.id = %event.event_id, event.type = %event.event_type, "duplicate skipped");
            }
            Applied::Stale => {
                self.metrics.stale.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event.id = %event.event_id, event.type = %event.event_type, revision = event.revision(), "stale event skipped: its aggregate has a newer revision applied");
            }
            Applied::Part => {}
        }
    }

    /// One transaction for a batch of plain events of one partition: the dedupe records of
    /// all (one statement), the revision guard (one read, one write), the handler's
    /// [`Handler::handle_batch`] for the events left, and the partition's offset row.
    async fn apply_batch(&self, events: &[&Event]) -> Result<Vec<Applied>, HandlerError> {
        let group = &self.config.group_id;
        let mut applied: Vec<Applied> = vec![Applied::Yes; events.len()];
        let mut tx = self.pool.begin().await?;
        match self.config.dedupe {
            Dedupe::EventId => {
                let mut first = HashSet::with_capacity(events.len());
                let mut rows = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for (i, e) in events.iter().enumerate() {
                    if first.insert(e.event_id) {
                        rows.0.push(e.event_id);
                        rows.1.push(e.topic.as_str());
                        rows.2.push(e.partition);
                        rows.3.push(e.offset);
                    } else {
                        applied[i] = Applied::Duplicate; // republished within the batch
                    }
                }
                let inserted: HashSet<uuid::Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(
                    self.sql.record_processed_batch.as_str(),
                ))
                .bind(group)
                .bind(&rows.0)
                .bind(&rows.1)
                .bind(&rows.2)
                .bind(&rows.3)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
                let mut taken = HashSet::with_capacity(inserted.len());
                for (i, e) in events.iter().enumerate() {
                    if matches!(applied[i], Applied::Yes)
                        && !(inserted.contains(&e.event_id) && taken.insert(e.event_id))
                    {
                        applied[i] = Applied::Duplicate;
                    }
                }
            }
            Dedupe::Offsets => {
                let next: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(
                    self.sql.stored_offset_for_update.as_str(),
                ))
                .bind(group)
                .bind(&events[0].topic)
                .bind(events[0].partition)
                .fetch_optional(&mut *tx)
                .await?;
                for (i, e) in events.iter().enumerate() {
                    if next.is_some_and(|next| e.offset < next) {
                        applied[i] = Applied::Duplicate;
                    }
                }
            }
            Dedupe::Off => {}
        }
        let mut newest: HashMap<(String, String), i64> = HashMap::new();
        if self.config.guards_revisions() {
            let guarded: Vec<(usize, (String, String, i64))> = events
                .iter()
                .enumerate()
                .filter(|(i, _)| matches!(applied[*i], Applied::Yes))
                .filter_map(|(i, e)| e.aggregate_revision().map(|r| (i, r)))
                .collect();
            if !guarded.is_empty() {
                let (kinds, ids): (Vec<&str>, Vec<&str>) = guarded
                    .iter()
                    .map(|(_, (kind, id, _))| (kind.as_str(), id.as_str()))
                    .unzip();
                let seen: Vec<(String, String, i64)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(self.sql.seen_revisions_batch.as_str()))
                        .bind(group)
                        .bind(&kinds)
                        .bind(&ids)
                        .fetch_all(&mut *tx)
                        .await?;
                let mut current: HashMap<(String, String), i64> = seen
                    .into_iter()
                    .map(|(kind, id, revision)| ((kind, id), revision))
                    .collect();
                for (i, (kind, id, revision)) in guarded {
                    let key = (kind, id);
                    if current.get(&key).is_some_and(|seen| revision <= *seen) {
                        applied[i] = Applied::Stale;
                    } else {
                        current.insert(key.clone(), revision);
                        newest.insert(key, revision);
                    }
                }
            }
        }
        let apply: Vec<&Event> = events
            .iter()
            .zip(&applied)
            .filter(|(_, a)| matches!(a, Applied::Yes))
            .map(|(e, _)| *e)
            .collect();
        if !apply.is_empty() {
            self.handler.handle_batch(&apply, &mut tx).await?;
        }
        if !newest.is_empty() {
            let mut rows = (Vec::new(), Vec::new(), Vec::new());
            for ((kind, id), revision) in &newest {
                rows.0.push(kind.as_str());
                rows.1.push(id.as_str());
                rows.2.push(*revision);
            }
            sqlx::query(sqlx::AssertSqlSafe(
                self.sql.record_revisions_batch.as_str(),
            ))
            .bind(group)
            .bind(&rows.0)
            .bind(&rows.1)
            .bind(&rows.2)
            .execute(&mut *tx)
            .await?;
        }
        // Offsets mode: duplicates are the events before the stored offset, which must not
        // move back.
        if let (Some(last), Some(Applied::Yes | Applied::Stale)) = (events.last(), applied.last()) {
            self.store_offset(&mut tx, last).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Offsets mode: on the first message of a newly assigned partition, seek to the offset the
    /// database says comes next. Returns `Some(true)` when the message was skipped, `None` on
    /// shutdown. Database and seek errors are retried with backoff: the in-transaction offset
    /// check keeps correctness meanwhile, so they are never fatal.
    async fn seek_if_fresh(
        &self,
        consumer: &StreamConsumer<Context>,
        fresh: &Fresh,
        message: &OwnedMessage,
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
        message: &OwnedMessage,
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
    fn process_span(&self, message: &OwnedMessage) -> Prepared {
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

    /// One record on its own (decoded here; poison, chunks and claim checks too), in the span
    /// made when it was taken.
    async fn process(
        &self,
        message: &OwnedMessage,
        (span, context, parent): Prepared,
        dlq: &FutureProducer,
        shutdown: &CancellationToken,
    ) -> Outcome {
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
        message: &OwnedMessage,
        context: EventContext,
        dlq: &FutureProducer,
        shutdown: &CancellationToken,
    ) -> (Outcome, &'static str) {
        let mut event = match Event::decode_with(message, context, self.config.records) {
            Ok(event) => event.traced(Span::current(), opentelemetry::Context::current()),
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
                Ok(applied @ (Applied::Yes | Applied::Duplicate | Applied::Stale)) => {
                    self.counted(&event, applied);
                    break (Outcome::Done, applied.name());
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
        message: &OwnedMessage,
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
