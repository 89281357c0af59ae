//! `bench event-sourcing`: pitfall 2, the naive side measured. An order kept as an event
//! stream (`crate::event_store`) against the same order kept as a CRUD row.
//!
//! - Load: the state of one order with 10, 100, 1,000 and 10,000 events of history, replayed
//!   from version 1, and from its snapshot (one every 100 events, so at most 99 events are
//!   replayed after it; a 10,099-event order shows that worst tail), against reading the
//!   equivalent order from `orders_crud` (one row) and `orders_crud_lines` (its lines), two
//!   indexed SELECTs. Each history is appended through the event store in appends of 10
//!   events, snapshots written in the appends' transactions. p50 and p99 of `--loads` loads
//!   (fewer when a case passes [`CASE_BUDGET`]), after a few unmeasured ones.
//! - Rebuild: `--orders` orders of 3 to 5 events each, bulk-inserted, then the read model
//!   `es_order_view` rebuilt by replaying every event (`rebuild_order_view`); the view is
//!   checked against what the generator folded.
//!
//! Each part runs on a scratch database of its own, dropped afterwards.

use std::time::{Duration, Instant};

use eda_stack_admin::Stack;
use sqlx::PgPool;
use uuid::Uuid;

use super::BoxError;
use super::common::{drop_database, percentile, report, scratch_database};
use super::payloads::progress;
use crate::event_store::{self, EventStore, OrderEvent, OrderLine, OrderState, OrderStatus, apply};

/// Events per snapshot.
const SNAPSHOT_EVERY: i64 = 100;

/// Events per append while building a history.
const APPEND_BATCH: usize = 10;

/// Histories measured: the four sizes, then the worst tail after a snapshot.
const HISTORIES: [i64; 5] = [10, 100, 1_000, 10_000, 10_099];

/// Wall time after which a case stops taking samples (at least [`MIN_LOADS`] are taken).
const CASE_BUDGET: Duration = Duration::from_secs(30);

/// Fewest loads per case.
const MIN_LOADS: usize = 20;

/// Unmeasured loads before each case.
const WARMUP: usize = 5;

/// Orders per bulk insert while seeding the rebuild.
const SEED_BATCH: usize = 1_000;

/// The published EventStoreDB figure quoted beside the results.
const PUBLISHED: &str = "published EventStoreDB figure (another machine and store, for comparison): rehydrating 50 events took 1.2 ms, 10,000 events 847 ms";

/// Runs both parts and prints one block.
pub(super) async fn run(stack: &Stack, orders: usize, loads: usize) -> Result<(), BoxError> {
    let loads = loads.max(1);
    let mut out = vec![
        "== pitfall 2, event sourcing (naive side): load one order's state by replay; rebuild a read model by replay ==".to_owned(),
        format!(
            "   PostgreSQL es_events (jsonb payloads, PK (stream_id, version)); snapshot every {SNAPSHOT_EVERY} events; CRUD = orders_crud row + orders_crud_lines (2 indexed SELECTs); latency of a whole load from the pool, ms"
        ),
    ];
    let (db, pool) = scratch_database(stack).await?;
    let result = loads_part(&pool, loads).await;
    drop_database(stack, &db, pool).await?;
    out.extend(result?);
    out.push(format!("   {PUBLISHED}"));

    let (db, pool) = scratch_database(stack).await?;
    let result = rebuild_part(&pool, orders).await;
    drop_database(stack, &db, pool).await?;
    out.extend(result?);
    report(&out);
    Ok(())
}

/// A deterministic pseudo-random sequence (xorshift64*), the same every run.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    fn line(&mut self) -> OrderLine {
        OrderLine {
            sku: format!("SKU-{:05}", self.next() % 50_000),
            quantity: self.between(1, 20),
            unit_price_cents: self.between(100, 99_999),
        }
    }
}

/// An `OrderPlaced` with 1..=3 lines for user `user`.
fn placed(rng: &mut Rng, user: u64) -> OrderEvent {
    let n = rng.between(1, 3);
    let lines: Vec<OrderLine> = (0..n).map(|_| rng.line()).collect();
    OrderEvent::OrderPlaced {
        user_id: format!("user-{user:05}"),
        currency: "EUR".to_owned(),
        total_cents: lines.iter().map(OrderLine::cents).sum(),
        lines,
    }
}

/// A history of `len` events: placed, then lines added and removed in turn (the order keeps
/// a few lines however long its history), confirmed at the end.
pub(crate) fn history(rng: &mut Rng, len: i64) -> Vec<OrderEvent> {
    let mut events = vec![placed(rng, 7)];
    let mut last_added = String::new();
    for i in 2..=len {
        let event = if i == len {
            OrderEvent::OrderConfirmed
        } else if i % 2 == 0 {
            let line = rng.line();
            last_added.clone_from(&line.sku);
            OrderEvent::LineAdded {
                sku: line.sku,
                quantity: line.quantity,
                unit_price_cents: line.unit_price_cents,
            }
        } else {
            OrderEvent::LineRemoved {
                sku: last_added.clone(),
            }
        };
        events.push(event);
    }
    events
}

/// The CRUD tables of the comparison.
pub(crate) async fn crud_schema(pool: &PgPool) -> Result<(), BoxError> {
    sqlx::raw_sql(
        "CREATE TABLE orders_crud (id uuid PRIMARY KEY, user_id text NOT NULL, currency text NOT NULL, \
         status text NOT NULL, total_cents bigint NOT NULL, version bigint NOT NULL); \
         CREATE TABLE orders_crud_lines (order_id uuid NOT NULL REFERENCES orders_crud (id), \
         line_no integer NOT NULL, sku text NOT NULL, quantity bigint NOT NULL, \
         unit_price_cents bigint NOT NULL, PRIMARY KEY (order_id, line_no));",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores `state` as CRUD order `id`.
pub(crate) async fn crud_insert(
    pool: &PgPool,
    id: Uuid,
    state: &OrderState,
) -> Result<(), BoxError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO orders_crud (id, user_id, currency, status, total_cents, version) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(&state.user_id)
    .bind(&state.currency)
    .bind(state.status.as_str())
    .bind(state.total_cents)
    .bind(state.version)
    .execute(&mut *tx)
    .await?;
    for (n, l) in state.lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO orders_crud_lines (order_id, line_no, sku, quantity, unit_price_cents) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(n as i32)
        .bind(&l.sku)
        .bind(l.quantity)
        .bind(l.unit_price_cents)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Reads CRUD order `id` into the same state the event store would give.
pub(crate) async fn crud_load(pool: &PgPool, id: Uuid) -> Result<OrderState, BoxError> {
    let mut conn = pool.acquire().await?;
    let (user_id, currency, status, total_cents, version): (String, String, String, i64, i64) =
        sqlx::query_as(
            "SELECT user_id, currency, status, total_cents, version FROM orders_crud WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    let lines: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT sku, quantity, unit_price_cents FROM orders_crud_lines WHERE order_id = $1 \
         ORDER BY line_no",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let status = match status.as_str() {
        "placed" => OrderStatus::Placed,
        "confirmed" => OrderStatus::Confirmed,
        "rejected" => OrderStatus::Rejected,
        "cancelled" => OrderStatus::Cancelled,
        _ => OrderStatus::NotPlaced,
    };
    Ok(OrderState {
        status,
        user_id,
        currency,
        lines: lines
            .into_iter()
            .map(|(sku, quantity, unit_price_cents)| OrderLine {
                sku,
                quantity,
                unit_price_cents,
            })
            .collect(),
        total_cents,
        rejection_reason: None,
        version,
    })
}

/// How a case reads the order.
#[derive(Clone, Copy)]
enum Read {
    Replay,
    Snapshot,
    Crud,
}

/// p50, p99 (ms) and the number of loads of one case.
struct Sampled {
    p50: f64,
    p99: f64,
    n: usize,
}

/// Loads order `id` up to `loads` times the way `read` says and checks each result.
async fn sample(
    pool: &PgPool,
    id: Uuid,
    read: Read,
    loads: usize,
    expected: &OrderState,
) -> Result<Sampled, BoxError> {
    let once = || async move {
        match read {
            Read::Replay => Ok(event_store::load(pool, id, false).await?),
            Read::Snapshot => Ok(event_store::load(pool, id, true).await?),
            Read::Crud => crud_load(pool, id).await,
        }
    };
    for _ in 0..WARMUP {
        once().await?;
    }
    let started = Instant::now();
    let mut ms = Vec::with_capacity(loads);
    while ms.len() < loads && (ms.len() < MIN_LOADS || started.elapsed() < CASE_BUDGET) {
        let t = Instant::now();
        let state = once().await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        if state != *expected {
            return Err(format!("order {id}: a load gave another state than the fold").into());
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(Sampled {
        p50: percentile(&ms, 0.5),
        p99: percentile(&ms, 0.99),
        n: ms.len(),
    })
}

/// The load-latency part: one order per history length, event-sourced and CRUD.
async fn loads_part(pool: &PgPool, loads: usize) -> Result<Vec<String>, BoxError> {
    event_store::migrate(pool).await?;
    crud_schema(pool).await?;
    let store = EventStore::new(pool.clone()).snapshot_every(SNAPSHOT_EVERY);
    let mut rng = Rng::new(2);
    let mut orders = Vec::new();
    for len in HISTORIES {
        progress(&format!(
            "event-sourcing: appending a history of {len} events (appends of {APPEND_BATCH})"
        ));
        let events = history(&mut rng, len);
        let id = Uuid::new_v4();
        let mut version = 0;
        for chunk in events.chunks(APPEND_BATCH) {
            version = store.append(id, version, chunk).await?;
        }
        let mut state = OrderState::default();
        for e in &events {
            apply(&mut state, e);
        }
        let crud_id = Uuid::new_v4();
        crud_insert(pool, crud_id, &state).await?;
        orders.push((len, id, crud_id, state));
    }
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;

    let mut out = vec![
        "history   replay p50      p99   (n)   snapshot p50      p99  tail   (n)   CRUD p50      p99   (n)"
            .to_owned(),
    ];
    for (len, id, crud_id, state) in &orders {
        progress(&format!(
            "event-sourcing: loading the {len}-event order ({loads} loads per case)"
        ));
        let replay = sample(pool, *id, Read::Replay, loads, state).await?;
        let snapshot = sample(pool, *id, Read::Snapshot, loads, state).await?;
        let crud = sample(pool, *crud_id, Read::Crud, loads, state).await?;
        let snapshot_at: Option<i64> =
            sqlx::query_scalar("SELECT version FROM es_snapshots WHERE stream_id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
        let tail = len - snapshot_at.unwrap_or(0);
        out.push(format!(
            "{len:>7}   {:>10.3} {:>8.3} {:>5}   {:>12.3} {:>8.3} {tail:>5} {:>5}   {:>8.3} {:>8.3} {:>5}",
            replay.p50,
            replay.p99,
            replay.n,
            snapshot.p50,
            snapshot.p99,
            snapshot.n,
            crud.p50,
            crud.p99,
            crud.n
        ));
    }
    out.push(format!(
        "   tail = events replayed after the snapshot (10,099: the worst case, {} events); replay = every event from version 1",
        SNAPSHOT_EVERY - 1
    ));
    Ok(out)
}

/// Totals of a set of view rows, compared between the generator's fold and the rebuilt view.
#[derive(Debug, Default, PartialEq)]
struct Totals {
    rows: i64,
    total_cents: i64,
    lines: i64,
    versions: i64,
    confirmed: i64,
}

/// The rebuild part: `orders` orders of 3..=5 events, then `es_order_view` rebuilt by replay.
async fn rebuild_part(pool: &PgPool, orders: usize) -> Result<Vec<String>, BoxError> {
    event_store::migrate(pool).await?;
    let mut rng = Rng::new(5);
    let mut expected = Totals::default();
    let mut events_total: u64 = 0;
    let mut seeded = 0;
    let started = Instant::now();
    while seeded < orders {
        let n = (orders - seeded).min(SEED_BATCH);
        let (mut ids, mut versions, mut types, mut payloads) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in 0..n {
            let id = Uuid::new_v4();
            let events = order_events(&mut rng, (seeded + k) as u64);
            let mut state = OrderState::default();
            for e in &events {
                apply(&mut state, e);
                ids.push(id);
                versions.push(state.version);
                types.push(e.event_type());
                payloads.push(serde_json::to_string(e)?);
            }
            expected.rows += 1;
            expected.total_cents += state.total_cents;
            expected.lines += state.lines.len() as i64;
            expected.versions += state.version;
            expected.confirmed += i64::from(state.status == OrderStatus::Confirmed);
        }
        events_total += ids.len() as u64;
        sqlx::query(
            "INSERT INTO es_events (stream_id, version, event_type, payload) \
             SELECT s, v, t, p::jsonb FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[]) AS e(s, v, t, p)",
        )
        .bind(&ids)
        .bind(&versions)
        .bind(&types)
        .bind(&payloads)
        .execute(pool)
        .await?;
        seeded += n;
        if seeded % 20_000 == 0 || seeded == orders {
            progress(&format!(
                "event-sourcing: seeded {seeded}/{orders} orders ({events_total} events, {:.0} s)",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    sqlx::query("VACUUM ANALYZE es_events")
        .execute(pool)
        .await?;
    let table_mib: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('es_events')")
        .fetch_one(pool)
        .await?;

    progress(&format!(
        "event-sourcing: rebuilding es_order_view from {events_total} events"
    ));
    let t = Instant::now();
    let written = event_store::rebuild_order_view(pool).await?;
    let secs = t.elapsed().as_secs_f64();

    let (rows, total_cents, lines, versions, confirmed): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*), COALESCE(sum(total_cents), 0)::bigint, COALESCE(sum(line_count), 0)::bigint, \
             COALESCE(sum(version), 0)::bigint, count(*) FILTER (WHERE status = 'confirmed') FROM es_order_view",
        )
        .fetch_one(pool)
        .await?;
    let got = Totals {
        rows,
        total_cents,
        lines,
        versions,
        confirmed,
    };
    if got != expected || written != rows as u64 {
        return Err(format!(
            "the rebuilt view does not match the events: {got:?} (written {written}) vs {expected:?}"
        )
        .into());
    }
    Ok(vec![
        format!(
            "-- rebuild es_order_view by replaying the store: {orders} orders, {events_total} events ({:.0} MiB table) --",
            table_mib as f64 / 1_048_576.0
        ),
        format!(
            "rebuild: {secs:.2} s, {:.0} view rows/s, {:.0} events/s (streamed in (stream_id, version) order, inserts of {}); view checked against the fold: {rows} rows OK",
            rows as f64 / secs,
            events_total as f64 / secs,
            event_store::VIEW_BATCH
        ),
    ])
}

/// The 3..=5 events of seeded order `n`: placed, one to three line changes, then confirmed,
/// rejected or cancelled.
fn order_events(rng: &mut Rng, n: u64) -> Vec<OrderEvent> {
    let first = placed(rng, n % 100_000);
    let mut skus: Vec<String> = match &first {
        OrderEvent::OrderPlaced { lines, .. } => lines.iter().map(|l| l.sku.clone()).collect(),
        _ => Vec::new(),
    };
    let mut events = vec![first];
    for _ in 0..rng.between(1, 3) {
        if rng.next().is_multiple_of(3) && skus.len() > 1 {
            let sku = skus.remove(0);
            events.push(OrderEvent::LineRemoved { sku });
        } else {
            let line = rng.line();
            skus.push(line.sku.clone());
            events.push(OrderEvent::LineAdded {
                sku: line.sku,
                quantity: line.quantity,
                unit_price_cents: line.unit_price_cents,
            });
        }
    }
    events.push(match rng.next() % 10 {
        0 => OrderEvent::OrderCancelled,
        1 => OrderEvent::OrderRejected {
            reason: "insufficient stock".to_owned(),
        },
        _ => OrderEvent::OrderConfirmed,
    });
    events
}
