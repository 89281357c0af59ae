use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use eda_context::{BaggagePolicy, Propagation, sanitize, trace};
use opentelemetry::trace::TraceContextExt as _;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::headers::CONTRACT_HEADERS;
use crate::metrics::RelayMetrics;
use crate::{Error, OutboxTable, Result};

/// How the relay behaves. [`Default`] suits a service; every field says why it exists.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows read and produced per round trip. Bigger batches drain faster; each batch waits for
    /// its slowest delivery report.
    pub batch_size: i64,
    /// Fallback poll when no notification arrives (notifications are lost while the listener
    /// reconnects, and rows written by other tools may not notify).
    pub poll_interval: Duration,
    /// How often a standby relay tries to become the leader.
    pub lock_retry_interval: Duration,
    /// First pause after a failed batch; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest pause between retries while Kafka or the database is down.
    pub backoff_max: Duration,
    /// Published rows are kept this long (for audits and replays), then deleted.
    pub retention: Duration,
    /// How often the leader deletes expired published rows.
    pub cleanup_interval: Duration,
    /// PostgreSQL advisory lock key that elects the single active relay of a database.
    pub lock_key: i64,
    /// With [`Propagation::On`] (default), a row's `traceparent` becomes the parent of the
    /// publish span, and the publish span's context replaces it in the Kafka headers. With
    /// [`Propagation::Off`] the publish span starts its own trace and headers pass unchanged.
    pub propagation: Propagation,
    /// Which `baggage` entries of a row's trace context travel on (the others are dropped).
    pub baggage: BaggagePolicy,
    /// The outbox table this relay publishes (default `outbox`).
    pub table: OutboxTable,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            lock_retry_interval: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            retention: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(60),
            // "eda_outb" in ASCII: any constant works as long as every relay of a database agrees.
            lock_key: 0x6564_615f_6f75_7462,
            propagation: Propagation::On,
            baggage: BaggagePolicy::default(),
            table: OutboxTable::default(),
        }
    }
}

/// Producer settings the relay's guarantees rest on. [`Relay::new`] sets them, and refuses a
/// caller's setting that contradicts one (a typo'd override must not silently turn off
/// idempotence or ordering). Each entry lists the values that keep the guarantee.
pub const PRODUCER_GUARANTEES: &[(&str, &[&str])] = &[
    // No duplicates from the producer's own retries, and per-partition order kept across them.
    ("enable.idempotence", &["true"]),
    ("acks", &["all", "-1"]),
    // A failed message fails every later message of its partition instead of leaving a gap:
    // what reaches Kafka is always a prefix of the outbox order.
    ("enable.gapless.guarantee", &["true"]),
    // Java's partitioner (murmur2), as Kafka Connect (Debezium) and every Java producer use:
    // a key lands on the same partition whichever relay publishes it. librdkafka's default
    // (CRC32) would move 2 keys in 3 to another partition when a deployment switches relays.
    ("partitioner", &["murmur2_random", "murmur2"]),
];

/// Producer settings [`Relay::new`] uses unless the caller chose others. Compression is
/// broker-level `lz4`.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("compression.type", "lz4"),
    // The relay hands Kafka whole batches at once, so waiting for more records gains little;
    // each millisecond here is a millisecond of commit-to-consumer latency.
    ("linger.ms", "1"),
    // How long one delivery may take before the batch counts as failed and is retried.
    ("message.timeout.ms", "30000"),
    // The largest record, as the Java producer has it (`max.request.size`, 1 MiB): librdkafka's
    // own default (1,000,000) would park rows of 1,000,001-1,048,576 bytes that Debezium's Kafka
    // Connect producer publishes, so the two relays would disagree on what is too large. The
    // broker's default limit (1,048,588 per batch) stays the final word.
    ("message.max.bytes", "1048576"),
];

/// Applies [`PRODUCER_GUARANTEES`] and [`PRODUCER_DEFAULTS`] to `kafka`: a guarantee the caller
/// contradicts is an [`Error::Config`]; a default the caller set is kept.
pub fn producer_config(mut kafka: ClientConfig) -> Result<ClientConfig> {
    for (key, allowed) in PRODUCER_GUARANTEES {
        match kafka.get(key) {
            None => {
                kafka.set(*key, allowed[0]);
            }
            Some(value) if allowed.iter().any(|a| a.eq_ignore_ascii_case(value.trim())) => {}
            Some(value) => {
                return Err(Error::Config(format!(
                    "producer setting {key}={value:?} would break the relay's guarantees; \
                     it must be {} (or left unset)",
                    allowed.join(" or ")
                )));
            }
        }
    }
    for (key, value) in PRODUCER_DEFAULTS {
        if kafka.get(key).is_none() {
            kafka.set(*key, *value);
        }
    }
    Ok(kafka)
}

/// One outbox row, as the relay reads it.
#[derive(Debug)]
struct PendingRow {
    id: i64,
    topic: String,
    key: String,
    payload: String,
    /// Values of [`CONTRACT_HEADERS`], same order; `None` for unset optional headers.
    headers: Vec<Option<String>>,
}

/// Publishes committed outbox rows to Kafka, in `id` order, then marks them published.
///
/// # Gap safety
/// Transactions commit out of `id` order: a poller that remembers "the last id I published"
/// skips a row whose transaction took a lower id but committed later. This relay keeps no
/// cursor: every round reads *all* unpublished rows (`published_at IS NULL`, a small partial
/// index) except the batch in flight, so a late committer is simply picked up by the next round.
///
/// # Pipelined
/// Two batches move at once: a second connection waits for the delivery reports of the batch
/// in flight and marks it published, while the leader's connection reads the next batch
/// (leaving out the one in flight) and hands it to the producer. Reading, delivery and marking
/// overlap.
///
/// # Wake-ups
/// An idle relay sleeps on `LISTEN eda_outbox`. Writers notify only while it sleeps (an
/// advisory lock says so; see the migration `notify_while_asleep`): PostgreSQL serialises the
/// commits of notifying transactions, and a busy relay needs no wake-up.
///
/// # One leader
/// Several replicas may run a relay; a session-level PostgreSQL advisory lock lets exactly one
/// publish. The lock lives on the connection that reads rows, so a leader whose connection dies
/// can no longer read: a standby takes over within `lock_retry_interval` and republishes what was
/// sent but not marked (at-least-once). The second connection only ever marks rows Kafka has
/// confirmed, so a mark is right whichever relay makes it.
#[derive(Debug)]
pub struct Relay {
    pool: PgPool,
    kafka: ClientConfig,
    config: RelayConfig,
    metrics: Arc<RelayMetrics>,
    select_sql: String,
    mark_sql: String,
    park_sql: String,
    sleep_sql: String,
    wake_sql: String,
}

/// A batch handed to the producer, its delivery reports still to come.
struct InFlight {
    /// The rows' ids, in order.
    ids: Vec<i64>,
    rows: Vec<PendingRow>,
    /// Per row sent (index into `rows`): its delivery, and its publish span.
    deliveries: Vec<(usize, Result<DeliveryFuture, KafkaError>, Span)>,
    /// Keys whose row Kafka refused for good when it was handed over.
    refused: HashSet<(String, String)>,
}

/// A batch whose delivery reports are in.
struct Confirmed {
    /// The rows Kafka has: to be marked.
    delivered: Vec<i64>,
    /// The first delivery that failed for now (an outage, a timeout): the batch is retried.
    failed: Option<KafkaError>,
}

/// First pause before the relay looks again when a writer that did not notify is still open;
/// doubles up to [`RECHECK_MAX`].
const RECHECK_INITIAL: Duration = Duration::from_millis(1);
const RECHECK_MAX: Duration = Duration::from_millis(16);

/// Second key of the wake-up advisory lock (the first is the table's oid); "edaw" in ASCII.
/// The migration `notify_while_asleep` writes the same number.
const WAKE_UP_LOCK: i32 = 0x6564_6177;

impl Relay {
    /// A relay reading `pool`'s outbox table and producing with `kafka` (at least
    /// `bootstrap.servers`; see [`producer_config`] for the rest). Fails with
    /// [`Error::Config`] when `kafka` contradicts one of [`PRODUCER_GUARANTEES`].
    pub fn new(pool: PgPool, kafka: ClientConfig, config: RelayConfig) -> Result<Self> {
        let kafka = producer_config(kafka)?;
        let columns: Vec<String> = CONTRACT_HEADERS
            .iter()
            .map(|(_, column, _)| format!("{column}::text"))
            .collect();
        // Parked rows are skipped, and so is every later row of a parked row's key on its
        // topic: they wait behind it, in order, until it is released.
        let select_sql = format!(
            "SELECT id, topic, aggregate_id AS key, payload, {columns} FROM {table} o \
             WHERE published_at IS NULL AND parked_at IS NULL AND NOT EXISTS (\
               SELECT 1 FROM {table} p WHERE p.parked_at IS NOT NULL AND p.published_at IS NULL \
               AND p.topic = o.topic AND p.aggregate_id = o.aggregate_id AND p.id < o.id) \
             AND o.id NOT IN (SELECT unnest($2::bigint[])) \
             ORDER BY id LIMIT $1",
            columns = columns.join(", "),
            table = config.table,
        );
        let park_sql = format!(
            "UPDATE {} SET parked_at = now(), parked_reason = $2 WHERE id = $1",
            config.table
        );
        let mark_sql = format!(
            "UPDATE {} SET published_at = now() WHERE id = ANY($1)",
            config.table
        );
        let lock = format!("'{}'::regclass::oid::int4, {WAKE_UP_LOCK}", config.table);
        let sleep_sql = format!("SELECT pg_try_advisory_lock({lock})");
        let wake_sql = format!("SELECT pg_advisory_unlock({lock})");
        Ok(Self {
            pool,
            kafka,
            sleep_sql,
            wake_sql,
            metrics: Arc::new(RelayMetrics::for_table(config.table.clone())),
            config,
            select_sql,
            mark_sql,
            park_sql,
        })
    }

    /// Counters to expose on the service's `/metrics` (see [`RelayMetrics::render`]).
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until `shutdown` is cancelled. A batch in flight is finished (delivery reports
    /// awaited, rows marked) before returning, so a clean stop republishes nothing.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.config.backoff_initial;
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => backoff = self.config.backoff_initial,
                Err(err) => {
                    self.metrics.set_leader(false);
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "outbox relay lost its leadership or connection; retrying");
                    sleep_or_cancel(backoff, &shutdown).await;
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
        self.metrics.set_leader(false);
        tracing::info!("outbox relay stopped");
    }

    /// Waits for the advisory lock, then publishes until shutdown or a database error.
    async fn lead(&self, shutdown: &CancellationToken) -> Result<()> {
        let mut conn = self.pool.acquire().await?.detach();
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(self.config.lock_key)
                .fetch_one(&mut conn)
                .await?;
            if locked {
                break;
            }
            if sleep_or_cancel(self.config.lock_retry_interval, shutdown).await {
                return Ok(());
            }
        }
        // The pending read must walk the partial index in `id` order and stop after a batch.
        // With statistics that predate a burst (autovacuum analyses minutes later), the planner
        // believes in a few hundred pending rows and would read and sort the whole backlog for
        // every batch instead: measured 90-130 ms instead of 3-6 ms per 2,000 rows of a
        // 100,000-row backlog. This session only reads and updates through indexes.
        sqlx::raw_sql("SET enable_seqscan = off; SET enable_bitmapscan = off")
            .execute(&mut conn)
            .await?;
        self.metrics.set_leader(true);
        tracing::info!("outbox relay is the leader");
        let result = self.publish_while_leader(&mut conn, shutdown).await;
        self.metrics.set_leader(false);
        // Closing the session releases the lock; a standby takes over.
        let _ = conn.close().await;
        result
    }

    async fn publish_while_leader(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen("eda_outbox").await?;
        // Marks a batch while `conn` reads the next one.
        let mut marker = self.pool.acquire().await?;
        let mut producer: FutureProducer = self.kafka.create()?;
        let mut backoff = self.config.backoff_initial;
        let mut next_cleanup = tokio::time::Instant::now();
        // The batch handed to the producer, its delivery reports still to come.
        let mut in_flight: Option<InFlight> = None;
        // Whether this session holds the wake-up lock (see `try_fall_asleep`).
        let mut asleep = false;
        let mut recheck = RECHECK_INITIAL;

        let result = loop {
            if shutdown.is_cancelled() {
                break Ok(());
            }
            // Checked every round, not only when idle: under sustained load the relay is never
            // idle, and published rows would pile up without end.
            if tokio::time::Instant::now() >= next_cleanup {
                if let Err(err) = self.cleanup(conn).await {
                    break Err(err);
                }
                next_cleanup = tokio::time::Instant::now() + self.config.cleanup_interval;
            }
            // Two batches at once. The second connection takes the delivery reports of the batch
            // in flight, parks what Kafka refused for good and marks the rest published.
            // Meanwhile the leader's connection reads the next batch (leaving out the one in
            // flight) and hands it to the producer.
            let exclude: Vec<i64> = in_flight
                .iter()
                .flat_map(|b| b.ids.iter().copied())
                .collect();
            let blocked = in_flight
                .as_ref()
                .map(|b| b.refused.clone())
                .unwrap_or_default();
            let settling = async {
                let Some(batch) = in_flight.take() else {
                    return Ok(None);
                };
                let confirmed = self.confirm(&mut marker, batch).await?;
                if confirmed.failed.is_none() {
                    self.mark(&mut marker, &confirmed.delivered).await?;
                }
                Ok::<_, Error>(Some(confirmed))
            };
            let reading = async {
                let rows = self.read_batch(conn, &exclude).await?;
                Ok::<_, Error>(if rows.is_empty() {
                    None
                } else {
                    Some(self.send(&producer, rows, blocked).await)
                })
            };
            let (settled, next) = tokio::join!(settling, reading);
            let (settled, next) = match (settled, next) {
                (Ok(settled), Ok(next)) => (settled, next),
                (Err(err), _) | (_, Err(err)) => break Err(err),
            };
            if let Some(Confirmed {
                delivered,
                failed: Some(err),
                ..
            }) = &settled
            {
                // Kafka is down or refused the batch. What was delivered is marked, and so is
                // what Kafka has of the batch sent after it; then a fresh producer resets the
                // state the gapless guarantee may have made fatal. The other rows stay pending
                // and keep their order.
                let marked = async {
                    self.mark(conn, delivered).await?;
                    if let Some(next) = next {
                        let confirmed = self.confirm(conn, next).await?;
                        self.mark(conn, &confirmed.delivered).await?;
                    }
                    Ok::<_, Error>(())
                };
                if let Err(err) = marked.await {
                    break Err(err);
                }
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "outbox publish failed; will retry");
                if sleep_or_cancel(backoff, shutdown).await {
                    break Ok(());
                }
                backoff = (backoff * 2).min(self.config.backoff_max);
                producer = match self.kafka.create() {
                    Ok(producer) => producer,
                    Err(err) => break Err(err.into()),
                };
                continue;
            }
            if settled.is_some() {
                backoff = self.config.backoff_initial;
            }
            in_flight = next;
            if in_flight.is_some() {
                recheck = RECHECK_INITIAL;
                if asleep {
                    if let Err(err) = self.wake_up(conn).await {
                        break Err(err);
                    }
                    asleep = false;
                }
                continue; // drain: there may be more
            }
            // Nothing pending, nothing in flight.
            if !asleep {
                match self.try_fall_asleep(conn).await {
                    // One last look: every writer that skipped its NOTIFY has committed.
                    Ok(true) => asleep = true,
                    // A writer that skipped its NOTIFY is still open: look again shortly.
                    Ok(false) => {
                        if sleep_or_cancel(recheck, shutdown).await {
                            break Ok(());
                        }
                        recheck = (recheck * 2).min(RECHECK_MAX);
                    }
                    Err(err) => break Err(err),
                }
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                notification = listener.recv() => {
                    if let Err(err) = notification {
                        tracing::debug!(error = %err, "outbox listener interrupted; polling");
                    }
                }
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        };
        // A clean stop finishes the batch in flight: delivery reports awaited, rows marked.
        if let Some(last) = in_flight.take()
            && result.is_ok()
        {
            let finished = match self.confirm(conn, last).await {
                Ok(confirmed) => self.mark(conn, &confirmed.delivered).await,
                Err(err) => Err(err),
            };
            if let Err(err) = finished {
                tracing::warn!(error = %err, "outbox relay stopped before its last batch was marked; it is published again");
            }
        }
        let _ = producer.flush(Duration::from_secs(5));
        result
    }

    /// Takes the wake-up lock exclusively, without waiting: writers then notify (see the
    /// migration `notify_while_asleep`). `false` while a writer that did not notify is open.
    async fn try_fall_asleep(&self, conn: &mut PgConnection) -> Result<bool> {
        Ok(
            sqlx::query_scalar(sqlx::AssertSqlSafe(self.sleep_sql.as_str()))
                .fetch_one(&mut *conn)
                .await?,
        )
    }

    /// Releases the wake-up lock: writers stop notifying while this relay publishes.
    async fn wake_up(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(self.wake_sql.as_str()))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// The publish span of one row (OpenTelemetry messaging conventions, kind producer) and
    /// the trace headers that replace the row's: the span is the child of the row's
    /// `traceparent`, and the consumer's span becomes the child of this one.
    fn publish_span(&self, row: &PendingRow) -> (Span, Vec<(&'static str, String)>) {
        let header = |name: &str| {
            CONTRACT_HEADERS
                .iter()
                .position(|(h, _, _)| *h == name)
                .and_then(|i| row.headers[i].as_deref())
        };
        let span = tracing::info_span!(
            target: "eda_outbox::relay",
            parent: None,
            "publish",
            otel.name = %format!("send {}", row.topic),
            otel.kind = "producer",
            otel.status_code = Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = %row.topic,
            messaging.destination.partition.id = Empty,
            messaging.kafka.offset = Empty,
            messaging.kafka.message.key = sanitize::printable(&row.key, 256),
            messaging.message.id = header("event-id"),
            error.type = Empty,
            request_id = header("request-id").and_then(sanitize::id),
            user_id = header("user-id").and_then(sanitize::id),
        );
        if !self.config.propagation.is_on() {
            return (span, Vec::new());
        }
        let parent = trace::extract_with(header, &self.config.baggage);
        if !parent.span().span_context().is_valid() {
            // The writer had no trace: invent none (the row passes as written, like Debezium).
            return (span, Vec::new());
        }
        let _ = span.set_parent(parent);
        let ours = trace::inject(&span.context());
        // Without an exporting subscriber there is no span context: keep the row's values.
        if ours.iter().any(|(name, _)| *name == "traceparent") {
            (span, ours)
        } else {
            (span, Vec::new())
        }
    }

    /// Reads up to `batch_size` pending rows in `id` order, leaving out `exclude` (the batch
    /// in flight: sent, not yet marked).
    async fn read_batch(
        &self,
        conn: &mut PgConnection,
        exclude: &[i64],
    ) -> Result<Vec<PendingRow>> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(self.select_sql.as_str()))
            .bind(self.config.batch_size)
            .bind(exclude)
            .try_map(|row: PgRow| {
                let headers = (0..CONTRACT_HEADERS.len())
                    .map(|i| row.try_get::<Option<String>, _>(4 + i))
                    .collect::<Result<_, _>>()?;
                Ok(PendingRow {
                    id: row.try_get("id")?,
                    topic: row.try_get("topic")?,
                    key: row.try_get("key")?,
                    payload: row.try_get("payload")?,
                    headers,
                })
            })
            .fetch_all(&mut *conn)
            .await?)
    }

    /// Hands a batch to the producer. A key in `blocked` (its row was refused for good in the
    /// batch before, which is not parked yet), or whose row is refused here, sends none of its
    /// later rows: they stay pending, and wait behind the parked row from the next read on.
    async fn send(
        &self,
        producer: &FutureProducer,
        rows: Vec<PendingRow>,
        blocked: HashSet<(String, String)>,
    ) -> InFlight {
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut refused = HashSet::new();
        let key = |row: &PendingRow| (row.topic.clone(), row.key.clone());
        for (index, row) in rows.iter().enumerate() {
            if !(blocked.is_empty() && refused.is_empty()) {
                let key = key(row);
                if blocked.contains(&key) || refused.contains(&key) {
                    continue;
                }
            }
            let (span, trace_headers) = self.publish_span(row);
            let delivery = enqueue_record(producer, row, &trace_headers).await;
            if let Err(err) = &delivery
                && refused_for_good(err)
            {
                refused.insert(key(row));
            }
            deliveries.push((index, delivery, span));
        }
        InFlight {
            ids: rows.iter().map(|row| row.id).collect(),
            rows,
            deliveries,
            refused,
        }
    }

    /// Waits for every delivery report of a batch and parks what Kafka refused for good.
    #[tracing::instrument(
        level = "debug",
        name = "outbox relay batch",
        skip_all,
        fields(rows = batch.rows.len(), delivered)
    )]
    async fn confirm(&self, conn: &mut PgConnection, batch: InFlight) -> Result<Confirmed> {
        let mut delivered = Vec::with_capacity(batch.rows.len());
        let mut failed = None;
        for (index, delivery, span) in batch.deliveries {
            let row = &batch.rows[index];
            let outcome = match delivery {
                Ok(future) => match future.await {
                    Ok(Ok(delivery)) => Ok(delivery),
                    Ok(Err((err, _))) => Err(err),
                    Err(_canceled) => Err(KafkaError::Canceled),
                },
                Err(err) => Err(err),
            };
            match outcome {
                Ok(delivery) => {
                    span.record("messaging.destination.partition.id", delivery.partition);
                    span.record("messaging.kafka.offset", delivery.offset);
                    delivered.push(row.id);
                }
                Err(err) if refused_for_good(&err) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", tracing::field::display(&err));
                    self.park(conn, row, &err).await?;
                }
                Err(err) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", tracing::field::display(&err));
                    self.metrics.add_errors(1);
                    failed.get_or_insert(err);
                }
            }
        }
        tracing::Span::current().record("delivered", delivered.len());
        Ok(Confirmed { delivered, failed })
    }

    /// Marks delivered rows published.
    async fn mark(&self, conn: &mut PgConnection, delivered: &[i64]) -> Result<()> {
        if delivered.is_empty() {
            return Ok(());
        }
        sqlx::query(sqlx::AssertSqlSafe(self.mark_sql.as_str()))
            .bind(delivered)
            .execute(&mut *conn)
            .await?;
        self.metrics.add_published(delivered.len() as u64);
        Ok(())
    }

    /// Parks a row Kafka refused for good: kept, unpublished, with the reason; its key waits.
    async fn park(
        &self,
        conn: &mut PgConnection,
        row: &PendingRow,
        err: &KafkaError,
    ) -> Result<()> {
        let reason = format!("{err} ({} bytes)", row.payload.len());
        sqlx::query(sqlx::AssertSqlSafe(self.park_sql.as_str()))
            .bind(row.id)
            .bind(&reason)
            .execute(&mut *conn)
            .await?;
        self.metrics.add_parked(1);
        tracing::error!(
            outbox.id = row.id,
            topic = %row.topic,
            key = sanitize::printable(&row.key, 256),
            reason = %reason,
            "outbox row refused by Kafka for good: parked; later rows of its key wait behind it \
             (list and release them with `pitfall-lab outbox parked`)"
        );
        Ok(())
    }

    /// Deletes published rows older than the retention.
    async fn cleanup(&self, conn: &mut PgConnection) -> Result<()> {
        let deleted = delete_expired_from(
            conn,
            &self.config.table,
            Expiry::PublishedBefore(self.config.retention),
        )
        .await?;
        if deleted > 0 {
            tracing::debug!(deleted, "outbox clean-up");
        }
        Ok(())
    }
}

/// Which outbox rows [`delete_expired`] removes.
#[derive(Debug, Clone, Copy)]
pub enum Expiry {
    /// Rows the in-process relay published longer ago than this (what the relay itself uses).
    PublishedBefore(Duration),
    /// Rows written longer ago than this, published or not. For Debezium mode, where nothing
    /// marks rows: Debezium reads them from the WAL, so the table only has to keep them until
    /// the connector has streamed them. Choose an age well above the connector's worst lag.
    CreatedBefore(Duration),
}

/// Deletes expired rows of the default `outbox` table in chunks of 10,000 (short locks,
/// bounded WAL per statement) and returns how many went.
pub async fn delete_expired(conn: &mut PgConnection, expiry: Expiry) -> Result<u64> {
    delete_expired_from(conn, &OutboxTable::default(), expiry).await
}

/// [`delete_expired`] for the outbox table `table`.
pub async fn delete_expired_from(
    conn: &mut PgConnection,
    table: &OutboxTable,
    expiry: Expiry,
) -> Result<u64> {
    let (column, age) = match expiry {
        Expiry::PublishedBefore(age) => ("published_at", age),
        Expiry::CreatedBefore(age) => ("created_at", age),
    };
    let sql = format!(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} \
         WHERE {column} < now() - make_interval(secs => $1) LIMIT 10000)"
    );
    let mut total = 0;
    loop {
        let deleted = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(age.as_secs_f64())
            .execute(&mut *conn)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < 10_000 {
            return Ok(total);
        }
    }
}

/// Hands one row to the producer's queue, waiting while the local queue is full.
/// `trace_headers` (from [`Relay::publish_span`]) replace the row's trace context headers.
async fn enqueue_record(
    producer: &FutureProducer,
    row: &PendingRow,
    trace_headers: &[(&'static str, String)],
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        let mut headers = OwnedHeaders::new_with_capacity(CONTRACT_HEADERS.len());
        // Every contract header, null-valued when unset: exactly what Debezium's Outbox Event
        // Router does with a NULL column, so both relays produce identical messages.
        for ((name, _, _), value) in CONTRACT_HEADERS.iter().zip(&row.headers) {
            let value = match trace_headers.iter().find(|(n, _)| n == name) {
                Some((_, ours)) => Some(ours.as_str()),
                None => value.as_deref(),
            };
            headers = headers.insert(Header { key: name, value });
        }
        let record = FutureRecord::to(&row.topic)
            .key(&row.key)
            .payload(&row.payload)
            .headers(headers);
        match producer.send_result(record) {
            Ok(future) => return Ok(future),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((err, _)) => return Err(err),
        }
    }
}

/// Whether Kafka will refuse this record however often it is sent (too large, invalid), as
/// opposed to an outage or a timeout, which a retry fixes.
fn refused_for_good(err: &KafkaError) -> bool {
    matches!(
        err,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
        )
    )
}

/// A row parked by the relay.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ParkedRow {
    /// The row's id.
    pub id: i64,
    /// Its event id.
    pub event_id: uuid::Uuid,
    /// Destination topic.
    pub topic: String,
    /// Its key: later rows of this key on this topic wait behind it.
    pub aggregate_id: String,
    /// Its event type.
    pub event_type: String,
    /// Payload size in bytes.
    pub size: i32,
    /// When it was parked.
    pub parked_at: chrono::DateTime<chrono::Utc>,
    /// Why Kafka refused it.
    pub parked_reason: Option<String>,
}

/// The rows parked in `table`, oldest first.
pub async fn parked(conn: &mut PgConnection, table: &OutboxTable) -> Result<Vec<ParkedRow>> {
    let sql = format!(
        "SELECT id, event_id, topic, aggregate_id, event_type, octet_length(payload) AS size, \
         parked_at, parked_reason FROM {table} \
         WHERE parked_at IS NOT NULL AND published_at IS NULL ORDER BY id"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?)
}

/// Releases the parked row `id` (after the cause is fixed: limits raised, payload offloaded):
/// the relay sends it again, then the rows of its key that waited. Returns whether a parked row
/// had that id.
pub async fn release(conn: &mut PgConnection, table: &OutboxTable, id: i64) -> Result<bool> {
    let sql = format!(
        "UPDATE {table} SET parked_at = NULL, parked_reason = NULL \
         WHERE id = $1 AND parked_at IS NOT NULL AND published_at IS NULL"
    );
    let released = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if released > 0 {
        // Wake the relay now rather than at its next poll.
        sqlx::query("SELECT pg_notify('eda_outbox', '')")
            .execute(&mut *conn)
            .await?;
    }
    Ok(released > 0)
}

/// Sleeps, or returns `true` early when shutdown is requested.
async fn sleep_or_cancel(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in pairs {
            c.set(*k, *v);
        }
        c
    }

    #[test]
    fn guarantees_are_set_and_defaults_filled() {
        let c = producer_config(with(&[("bootstrap.servers", "x:9092")])).unwrap();
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.gapless.guarantee"), Some("true"));
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
    }

    #[test]
    fn an_override_that_breaks_a_guarantee_is_refused() {
        for (key, value) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("enable.gapless.guarantee", "false"),
            ("partitioner", "consistent_random"),
        ] {
            let err = producer_config(with(&[(key, value)])).unwrap_err();
            assert!(
                matches!(&err, Error::Config(m) if m.contains(key)),
                "{key}={value}: {err}"
            );
        }
    }

    #[test]
    fn compatible_overrides_and_chosen_defaults_are_kept() {
        let c = producer_config(with(&[
            ("acks", "-1"),
            ("partitioner", "murmur2"),
            ("compression.type", "zstd"),
        ]))
        .unwrap();
        assert_eq!(c.get("acks"), Some("-1"));
        assert_eq!(c.get("partitioner"), Some("murmur2"));
        assert_eq!(c.get("compression.type"), Some("zstd"));
    }
}
