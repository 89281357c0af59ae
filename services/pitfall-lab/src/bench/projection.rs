//! `bench projection`: pitfall 2's fix measured. A scratch database with order-service's own
//! schema is the source; a Debezium table connector (the project's
//! `infra/debezium/cdc-connector.json`) captures `orders` and `order_items`; projection-service's
//! change handler, in the consumer runtime exactly as the service runs it (`Dedupe::Offsets`,
//! `Records::Foreign`), keeps the views in a second scratch database.
//!
//! - Catch-up: `--orders` orders (two lines each) are written first; Debezium's snapshot puts
//!   them on the topics (timed), then the projection starts on the backlog and applies every
//!   change (timed: changes/s). Snapshot plus apply is the "rebuild from the CRUD tables"
//!   figure the event-sourced replay (`bench event-sourcing`) is compared with.
//! - Latency: orders committed at a fixed rate (`--rates`) while the projection runs. Per
//!   order: the source commit time (Debezium's `source.ts_ms`, kept as the view row's
//!   `source_committed_at`) to the view's `applied_at`, both the database server's clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eda_idempotent_consumer::{Consumer, ConsumerConfig, Dedupe, Records};
use eda_stack_admin::{Connector, Stack, unique};
use projection_service::consumers::{ChangeEvents, ProjectionMetrics};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::BoxError;
use super::common::{
    delete_topic, drop_database, percentile, report, scratch_database, wait_topic_size,
};
use super::payloads::progress;

/// order-service's schema, for the source database.
static SOURCE_SCHEMA: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/order-service");

/// How long a phase may take before the benchmark gives up.
const TIMEOUT: Duration = Duration::from_secs(1800);

/// What one run created, for the clean-up.
struct Scratch {
    source_db: String,
    source: PgPool,
    view_db: String,
    views: PgPool,
    topics: Vec<String>,
    connector: Option<Connector>,
}

impl Scratch {
    async fn new(stack: &Stack) -> Result<Self, BoxError> {
        let (source_db, source) = scratch_database(stack).await?;
        SOURCE_SCHEMA.run(&source).await?;
        let (view_db, views) = scratch_database(stack).await?;
        eda_idempotent_consumer::migrate(&views).await?;
        projection_service::migrations::MIGRATOR.run(&views).await?;
        Ok(Self {
            source_db,
            source,
            view_db,
            views,
            topics: Vec::new(),
            connector: None,
        })
    }

    /// Creates the topics and registers the connector (it snapshots what is there).
    async fn capture(&mut self, stack: &Stack) -> Result<(), BoxError> {
        let prefix = unique("bench_cdc");
        for table in ["public.orders", "public.order_items"] {
            let topic = format!("{prefix}.{table}");
            eda_stack_admin::create_topic(stack, &topic, 6).await?;
            eda_stack_admin::create_topic(stack, &format!("{topic}.dlq"), 1).await?;
            self.topics.push(topic);
        }
        self.connector = Some(
            Connector::register_cdc(
                stack,
                "bench",
                &self.source_db,
                &["public.orders", "public.order_items"],
                &prefix,
            )
            .await?,
        );
        Ok(())
    }

    /// The projection's consumer on the topics, as projection-service configures it.
    fn consumer(
        &self,
        stack: &Stack,
        metrics: &Arc<ProjectionMetrics>,
    ) -> Result<Consumer<ChangeEvents>, BoxError> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        let mut config =
            ConsumerConfig::new(&stack.kafka_bootstrap_servers, &unique("bench"), &topics);
        config.dedupe = Dedupe::Offsets;
        config.records = Records::Foreign;
        config.skip_stale = false;
        let handler = ChangeEvents {
            metrics: Arc::clone(metrics),
        };
        Ok(Consumer::new(self.views.clone(), config, handler)?)
    }

    async fn tear_down(self, stack: &Stack) -> Result<(), BoxError> {
        if let Some(connector) = self.connector {
            connector.remove(&self.source).await?;
        }
        for topic in &self.topics {
            delete_topic(stack, topic).await;
            delete_topic(stack, &format!("{topic}.dlq")).await;
        }
        drop_database(stack, &self.view_db, self.views).await?;
        drop_database(stack, &self.source_db, self.source).await
    }
}

/// Writes `orders` orders of two lines each, server-side, in transactions (statements) of
/// 10,000.
async fn write_orders(source: &PgPool, orders: usize) -> Result<(), BoxError> {
    let mut written = 0;
    while written < orders {
        let n = (orders - written).min(10_000) as i64;
        sqlx::query(
            "WITH o AS (INSERT INTO orders (id, user_id, customer_name, customer_email, currency, status, total_cents) \
               SELECT gen_random_uuid(), 'user-' || (i % 1000), 'Customer ' || i, 'c' || i || '@example.com', 'EUR', \
                      'CONFIRMED', 600 FROM generate_series(1, $1) AS i RETURNING id) \
             INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_cents) \
             SELECT o.id, l, 'SKU-' || (abs(hashtext(o.id::text)) % 500), l, 200 FROM o, generate_series(1, 2) AS l",
        )
        .bind(n)
        .execute(source)
        .await?;
        written += n as usize;
    }
    Ok(())
}

async fn view_count(views: &PgPool) -> Result<(i64, i64), BoxError> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM order_view), (SELECT count(*) FROM order_line_view)",
    )
    .fetch_one(views)
    .await?)
}

/// Runs the catch-up, then the latency at each rate.
pub(super) async fn run(
    stack: &Stack,
    orders: usize,
    rates: &[u64],
    seconds: u64,
) -> Result<(), BoxError> {
    let mut out = vec![
        "== pitfall 2, CRUD + CDC: Debezium table connector -> projection-service's change handler (Dedupe::Offsets) ==".to_owned(),
    ];
    progress(&format!("projection: catch-up of {orders} orders"));
    let mut scratch = Scratch::new(stack).await?;
    let result = catch_up(stack, &mut scratch, orders).await;
    scratch.tear_down(stack).await?;
    out.extend(result?);
    out.push(
        "-- commit at the source -> applied in the view (orders at a fixed rate, 2 lines each; source.ts_ms -> applied_at) --"
            .to_owned(),
    );
    out.push("rate/s   orders   p50 ms   p90 ms   p99 ms   max ms".to_owned());
    for &rate in rates {
        progress(&format!(
            "projection: latency at {rate} orders/s for {seconds} s"
        ));
        let mut scratch = Scratch::new(stack).await?;
        let result = latency(stack, &mut scratch, rate, seconds).await;
        scratch.tear_down(stack).await?;
        out.push(result?);
    }
    out.push("   Debezium tuned for latency: poll.interval.ms=50, producer linger.ms=5 (infra/debezium/cdc-connector.json)".to_owned());
    report(&out);
    Ok(())
}

async fn catch_up(
    stack: &Stack,
    scratch: &mut Scratch,
    orders: usize,
) -> Result<Vec<String>, BoxError> {
    let written = Instant::now();
    write_orders(&scratch.source, orders).await?;
    let write_secs = written.elapsed().as_secs_f64();
    let snapshot = Instant::now();
    scratch.capture(stack).await?;
    for (topic, rows) in scratch.topics.iter().zip([orders, orders * 2]) {
        wait_topic_size(stack, topic, rows as i64, TIMEOUT).await?;
    }
    let snapshot_secs = snapshot.elapsed().as_secs_f64();
    let metrics = Arc::new(ProjectionMetrics::default());
    let consumer = scratch.consumer(stack, &metrics)?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(consumer.run(stop.clone()));
    let deadline = started + TIMEOUT;
    loop {
        let (o, l) = view_count(&scratch.views).await?;
        if o >= orders as i64 && l >= 2 * orders as i64 {
            break;
        }
        if Instant::now() > deadline || task.is_finished() {
            stop.cancel();
            task.await??;
            return Err(format!("the views hold {o} orders, {l} lines of {orders}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let apply_secs = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    let changes = orders * 3;
    Ok(vec![
        format!(
            "-- catch-up: {orders} orders ({changes} change events: an order row and two lines each) --"
        ),
        format!("written to the CRUD tables            {write_secs:>7.1} s"),
        format!(
            "Debezium snapshot onto the topics     {snapshot_secs:>7.1} s   ({:.0} rows/s)",
            changes as f64 / snapshot_secs
        ),
        format!(
            "projection applied the backlog        {apply_secs:>7.1} s   ({:.0} changes/s, {:.0} orders/s)",
            changes as f64 / apply_secs,
            orders as f64 / apply_secs
        ),
        format!(
            "views rebuilt from the tables, total  {:>7.1} s   (snapshot + apply)",
            snapshot_secs + apply_secs
        ),
    ])
}

async fn latency(
    stack: &Stack,
    scratch: &mut Scratch,
    rate: u64,
    seconds: u64,
) -> Result<String, BoxError> {
    scratch.capture(stack).await?;
    let metrics = Arc::new(ProjectionMetrics::default());
    let consumer = scratch.consumer(stack, &metrics)?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    // Warm-up: one order through (connector streaming, group joined).
    write_orders(&scratch.source, 1).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while view_count(&scratch.views).await?.0 < 1 {
        if Instant::now() > deadline {
            return Err("the warm-up order did not reach the view".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warm: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT max(applied_at) FROM order_view")
            .fetch_one(&scratch.views)
            .await?;
    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Four writers share the ticks, so a slow commit does not hold the others.
    let (send, receive) = async_channel_like(total as usize);
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (source, receive) = (scratch.source.clone(), Arc::clone(&receive));
        writers.push(tokio::spawn(async move {
            while receive.lock().await.recv().await.is_some() {
                write_orders(&source, 1).await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for _ in 0..total {
        tick.tick().await;
        send.send(()).await?;
    }
    drop(send);
    for w in writers {
        w.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while view_count(&scratch.views).await?.0 < total as i64 + 1 {
        if Instant::now() > deadline {
            return Err("the views did not catch up with the writers".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await??;
    let mut ms: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM applied_at - source_committed_at) * 1000)::float8 \
         FROM order_view WHERE applied_at > $1",
    )
    .bind(warm)
    .fetch_all(&scratch.views)
    .await?;
    ms.sort_by(f64::total_cmp);
    Ok(format!(
        "{rate:>6} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.9),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    ))
}

/// A bounded multi-consumer queue from tokio's mpsc (one receiver behind a mutex).
fn async_channel_like(
    capacity: usize,
) -> (
    tokio::sync::mpsc::Sender<()>,
    Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<()>>>,
) {
    let (send, receive) = tokio::sync::mpsc::channel(capacity.max(1));
    (send, Arc::new(tokio::sync::Mutex::new(receive)))
}
