//! Pitfall 2, the naive side, for measurement only: an order kept as an event stream in
//! PostgreSQL, its state rebuilt by replaying the stream, and a read model rebuilt by replaying
//! every stream. `pitfall-lab bench event-sourcing` measures it against a CRUD row read; the
//! project's own answer (CRUD tables, CDC into projections) lives in the services.
//!
//! # Tables ([`migrate`])
//! - `es_events(stream_id, version, event_type, payload, recorded_at)`, primary key
//!   `(stream_id, version)`: the version is unique per stream, which is the optimistic
//!   concurrency check. Two writers that read the same version both try to insert the next
//!   one; the second gets a unique violation (SQLSTATE 23505), reported as
//!   [`AppendError::Conflict`].
//! - `es_snapshots(stream_id, version, state)`: the latest folded state of a stream, written
//!   by [`EventStore::append`] in the append's transaction when the append crosses a multiple
//!   of [`EventStore::snapshot_every`].
//! - `es_order_view(order_id, user_id, status, total_cents, line_count, version)`: the read
//!   model [`rebuild_order_view`] replays every event into.
//!
//! # The aggregate
//! [`OrderEvent`]s (JSON with a `"type"` tag, the `event_type` column holds the same name)
//! fold into an [`OrderState`] with the pure [`apply`]; [`load`] folds a stream from version 1
//! or from its snapshot.

use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{Connection as _, PgConnection, PgPool, Postgres, Row as _, Transaction};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Rows of `es_order_view` per INSERT while [`rebuild_order_view`] writes.
pub const VIEW_BATCH: usize = 1_000;

/// The event store's tables, created if missing.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS es_events (
    stream_id   uuid        NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0),
    event_type  text        NOT NULL,
    payload     jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, version)
);
CREATE TABLE IF NOT EXISTS es_snapshots (
    stream_id uuid   PRIMARY KEY,
    version   bigint NOT NULL,
    state     jsonb  NOT NULL
);
CREATE TABLE IF NOT EXISTS es_order_view (
    order_id    uuid    PRIMARY KEY,
    user_id     text    NOT NULL,
    status      text    NOT NULL,
    total_cents bigint  NOT NULL,
    line_count  integer NOT NULL,
    version     bigint  NOT NULL
);
";

/// Creates the event store's tables (`es_events`, `es_snapshots`, `es_order_view`) if they are
/// missing.
///
/// # Errors
/// When PostgreSQL refuses.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    Ok(())
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Stock keeping unit.
    pub sku: String,
    /// Units ordered.
    pub quantity: i64,
    /// Price of one unit, in cents of the order's currency.
    pub unit_price_cents: i64,
}

impl OrderLine {
    /// Quantity times unit price.
    pub fn cents(&self) -> i64 {
        self.quantity * self.unit_price_cents
    }
}

/// What happened to an order: the facts its stream holds, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    /// The order was placed with its first lines.
    OrderPlaced {
        /// Who placed it.
        user_id: String,
        /// ISO currency of every price.
        currency: String,
        /// The lines placed.
        lines: Vec<OrderLine>,
        /// Their total, in cents.
        total_cents: i64,
    },
    /// A line was added (a new line, even when the SKU is already on the order).
    LineAdded {
        /// Stock keeping unit.
        sku: String,
        /// Units.
        quantity: i64,
        /// Price of one unit, in cents.
        unit_price_cents: i64,
    },
    /// Every line of a SKU was removed.
    LineRemoved {
        /// Stock keeping unit.
        sku: String,
    },
    /// Stock was reserved: the order is confirmed.
    OrderConfirmed,
    /// The order could not be fulfilled.
    OrderRejected {
        /// Why.
        reason: String,
    },
    /// The customer cancelled.
    OrderCancelled,
}

impl OrderEvent {
    /// The event's type: its `"type"` tag, and the `event_type` column.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::OrderPlaced { .. } => "OrderPlaced",
            Self::LineAdded { .. } => "LineAdded",
            Self::LineRemoved { .. } => "LineRemoved",
            Self::OrderConfirmed => "OrderConfirmed",
            Self::OrderRejected { .. } => "OrderRejected",
            Self::OrderCancelled => "OrderCancelled",
        }
    }
}

/// Where an order is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// No event yet (an empty stream).
    #[default]
    NotPlaced,
    /// Placed, waiting for stock.
    Placed,
    /// Confirmed.
    Confirmed,
    /// Rejected.
    Rejected,
    /// Cancelled.
    Cancelled,
}

impl OrderStatus {
    /// The status as `es_order_view` stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotPlaced => "not_placed",
            Self::Placed => "placed",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }
}

/// An order's state: the fold of its events (and what a snapshot stores).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// Where the order is.
    pub status: OrderStatus,
    /// Who placed it.
    pub user_id: String,
    /// ISO currency.
    pub currency: String,
    /// Its lines, in the order they were added.
    pub lines: Vec<OrderLine>,
    /// The total of the lines, in cents.
    pub total_cents: i64,
    /// Why it was rejected, when it was.
    pub rejection_reason: Option<String>,
    /// Events folded so far: the version of the stream this state is at.
    pub version: i64,
}

/// Folds one event into `state` (pure: events are facts, nothing is refused here). Each event
/// moves the version on by one.
pub fn apply(state: &mut OrderState, event: &OrderEvent) {
    match event {
        OrderEvent::OrderPlaced {
            user_id,
            currency,
            lines,
            total_cents,
        } => {
            state.status = OrderStatus::Placed;
            state.user_id.clone_from(user_id);
            state.currency.clone_from(currency);
            state.lines.clone_from(lines);
            state.total_cents = *total_cents;
        }
        OrderEvent::LineAdded {
            sku,
            quantity,
            unit_price_cents,
        } => {
            let line = OrderLine {
                sku: sku.clone(),
                quantity: *quantity,
                unit_price_cents: *unit_price_cents,
            };
            state.total_cents += line.cents();
            state.lines.push(line);
        }
        OrderEvent::LineRemoved { sku } => {
            let removed: i64 = state
                .lines
                .iter()
                .filter(|l| &l.sku == sku)
                .map(OrderLine::cents)
                .sum();
            state.lines.retain(|l| &l.sku != sku);
            state.total_cents -= removed;
        }
        OrderEvent::OrderConfirmed => state.status = OrderStatus::Confirmed,
        OrderEvent::OrderRejected { reason } => {
            state.status = OrderStatus::Rejected;
            state.rejection_reason = Some(reason.clone());
        }
        OrderEvent::OrderCancelled => state.status = OrderStatus::Cancelled,
    }
    state.version += 1;
}

/// Why an append did not happen.
#[derive(Debug)]
pub enum AppendError {
    /// The stream is not at the expected version: another writer appended first (or the
    /// caller's state is stale, or ahead of the stream). Reload and decide again.
    Conflict {
        /// The version the caller expected the stream at.
        expected: i64,
        /// The version it is at.
        actual: i64,
    },
    /// An event did not serialize.
    Encode(serde_json::Error),
    /// PostgreSQL failed or refused otherwise.
    Database(sqlx::Error),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conflict { expected, actual } => write!(
                f,
                "concurrency conflict: expected the stream at version {expected}, it is at {actual}"
            ),
            Self::Encode(e) => write!(f, "encode event: {e}"),
            Self::Database(e) => write!(f, "append events: {e}"),
        }
    }
}

impl std::error::Error for AppendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Conflict { .. } => None,
            Self::Encode(e) => Some(e),
            Self::Database(e) => Some(e),
        }
    }
}

impl From<sqlx::Error> for AppendError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

/// Whether `e` is a unique violation (SQLSTATE 23505).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// The version `stream_id` is at (0 when it has no event).
async fn current_version(conn: &mut PgConnection, stream_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM es_events WHERE stream_id = $1")
        .bind(stream_id)
        .fetch_one(conn)
        .await
}

/// Appends `events` to `stream_id` as versions `expected_version + 1 ..`, on `conn` (inside the
/// caller's transaction if it has one: the insert runs under a savepoint, so a conflict leaves
/// that transaction usable). Returns the stream's new version. No snapshot is written here
/// (see [`EventStore::append`]). Nothing to append returns `expected_version` and checks
/// nothing.
///
/// # Errors
/// [`AppendError::Conflict`] when the stream is not at `expected_version`: a concurrent writer
/// inserted the same version first (the unique violation, 23505), or the stream is behind it.
pub async fn append(
    conn: &mut PgConnection,
    stream_id: Uuid,
    expected_version: i64,
    events: &[OrderEvent],
) -> Result<i64, AppendError> {
    if events.is_empty() {
        return Ok(expected_version);
    }
    let mut types = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for event in events {
        types.push(event.event_type());
        payloads.push(serde_json::to_string(event).map_err(AppendError::Encode)?);
    }
    let mut savepoint = conn.begin().await?;
    // The EXISTS guard refuses an expected version the stream has not reached (which the
    // primary key alone would accept, leaving a gap); the primary key refuses one it is past.
    let inserted = sqlx::query(
        "INSERT INTO es_events (stream_id, version, event_type, payload) \
         SELECT $1, $2::bigint + e.ord, e.event_type, e.payload::jsonb \
         FROM UNNEST($3::text[], $4::text[]) WITH ORDINALITY AS e(event_type, payload, ord) \
         WHERE $2::bigint = 0 \
            OR EXISTS (SELECT 1 FROM es_events WHERE stream_id = $1 AND version = $2::bigint)",
    )
    .bind(stream_id)
    .bind(expected_version)
    .bind(&types)
    .bind(&payloads)
    .execute(&mut *savepoint)
    .await;
    match inserted {
        Ok(done) if done.rows_affected() == events.len() as u64 => {
            savepoint.commit().await?;
            Ok(expected_version + events.len() as i64)
        }
        Ok(_) => {
            savepoint.rollback().await?;
            let actual = current_version(conn, stream_id).await?;
            Err(AppendError::Conflict {
                expected: expected_version,
                actual,
            })
        }
        Err(e) if is_unique_violation(&e) => {
            savepoint.rollback().await?;
            // The winner has committed (the insert waited for it): its version is visible now.
            let actual = current_version(conn, stream_id).await?;
            Err(AppendError::Conflict {
                expected: expected_version,
                actual,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether going from version `from` to `to` crosses a multiple of `every`.
fn crosses_multiple(from: i64, to: i64, every: i64) -> bool {
    every > 0 && to.div_euclid(every) > from.div_euclid(every)
}

/// Folds the events of `stream_id` after `state.version` into `state`, streaming them.
///
/// # Errors
/// When a version is missing from the stream (a gap), or a payload does not decode.
async fn replay_tail(
    conn: &mut PgConnection,
    stream_id: Uuid,
    state: &mut OrderState,
) -> Result<(), sqlx::Error> {
    let mut rows = sqlx::query(
        "SELECT version, payload FROM es_events WHERE stream_id = $1 AND version > $2 \
         ORDER BY version",
    )
    .bind(stream_id)
    .bind(state.version)
    .fetch(conn);
    while let Some(row) = rows.try_next().await? {
        let version: i64 = row.try_get(0)?;
        let Json(event): Json<OrderEvent> = row.try_get(1)?;
        check_next(stream_id, state.version, version)?;
        apply(state, &event);
    }
    Ok(())
}

/// An error unless `version` follows `at` in `stream_id`.
fn check_next(stream_id: Uuid, at: i64, version: i64) -> Result<(), sqlx::Error> {
    if version == at + 1 {
        Ok(())
    } else {
        Err(sqlx::Error::Protocol(format!(
            "stream {stream_id}: version {version} follows {at}"
        )))
    }
}

/// [`load`] on a connection (inside a transaction, it sees that transaction's appends).
async fn load_on(
    conn: &mut PgConnection,
    stream_id: Uuid,
    snapshots: bool,
) -> Result<OrderState, sqlx::Error> {
    let mut state = OrderState::default();
    if snapshots {
        let snapshot: Option<Json<OrderState>> =
            sqlx::query_scalar("SELECT state FROM es_snapshots WHERE stream_id = $1")
                .bind(stream_id)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(Json(s)) = snapshot {
            state = s;
        }
    }
    replay_tail(conn, stream_id, &mut state).await?;
    Ok(state)
}

/// The state of order `stream_id`: its events folded from version 1, or with `snapshots` from
/// its latest snapshot on. A stream without events gives the default state (version 0).
///
/// # Errors
/// When PostgreSQL fails, a payload does not decode, or the stream has a gap.
pub async fn load(
    pool: &PgPool,
    stream_id: Uuid,
    snapshots: bool,
) -> Result<OrderState, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    load_on(&mut conn, stream_id, snapshots).await
}

/// Appends through a pool, one transaction per append, with snapshots when configured.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
    snapshot_every: Option<i64>,
}

impl EventStore {
    /// A store on `pool` that writes no snapshots.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            snapshot_every: None,
        }
    }

    /// Writes a snapshot after each append that crosses a multiple of `n` events (0: never).
    #[must_use]
    pub fn snapshot_every(mut self, n: i64) -> Self {
        self.snapshot_every = (n > 0).then_some(n);
        self
    }

    /// [`append`] in a transaction of its own; when the append crosses a multiple of
    /// [`snapshot_every`](Self::snapshot_every), the state at the new version (folded from
    /// the previous snapshot) is written as the stream's snapshot in the same transaction.
    ///
    /// # Errors
    /// As [`append`]; a failed snapshot rolls the append back too.
    pub async fn append(
        &self,
        stream_id: Uuid,
        expected_version: i64,
        events: &[OrderEvent],
    ) -> Result<i64, AppendError> {
        let mut tx = self.pool.begin().await?;
        let version = append(&mut tx, stream_id, expected_version, events).await?;
        if let Some(every) = self.snapshot_every
            && crosses_multiple(expected_version, version, every)
        {
            let state = load_on(&mut tx, stream_id, true).await?;
            write_snapshot(&mut tx, stream_id, &state).await?;
        }
        tx.commit().await?;
        Ok(version)
    }
}

/// Stores `state` as the snapshot of `stream_id`, unless a later one is there.
async fn write_snapshot(
    conn: &mut PgConnection,
    stream_id: Uuid,
    state: &OrderState,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO es_snapshots (stream_id, version, state) VALUES ($1, $2, $3) \
         ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state \
         WHERE es_snapshots.version < EXCLUDED.version",
    )
    .bind(stream_id)
    .bind(state.version)
    .bind(Json(state))
    .execute(conn)
    .await?;
    Ok(())
}

/// Rows of `es_order_view` on their way to one INSERT, column by column.
#[derive(Default)]
struct ViewBatch {
    order_id: Vec<Uuid>,
    user_id: Vec<String>,
    status: Vec<&'static str>,
    total_cents: Vec<i64>,
    line_count: Vec<i32>,
    version: Vec<i64>,
}

impl ViewBatch {
    fn push(&mut self, order_id: Uuid, state: OrderState) {
        self.order_id.push(order_id);
        self.user_id.push(state.user_id);
        self.status.push(state.status.as_str());
        self.total_cents.push(state.total_cents);
        self.line_count
            .push(i32::try_from(state.lines.len()).unwrap_or(i32::MAX));
        self.version.push(state.version);
    }

    fn len(&self) -> usize {
        self.order_id.len()
    }
}

/// Replays every event of every stream, in `(stream_id, version)` order and streamed from the
/// server (never all in memory), and sends the folded orders in batches of [`VIEW_BATCH`].
async fn replay_all(pool: &PgPool, batches: mpsc::Sender<ViewBatch>) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut rows = sqlx::query(
        "SELECT stream_id, version, payload FROM es_events ORDER BY stream_id, version",
    )
    .fetch(&mut *conn);
    let mut batch = ViewBatch::default();
    let closed = || sqlx::Error::Protocol("the view writer stopped".to_owned());
    // The stream being folded, and its state so far.
    let mut current: Option<Uuid> = None;
    let mut state = OrderState::default();
    while let Some(row) = rows.try_next().await? {
        let stream_id: Uuid = row.try_get(0)?;
        let version: i64 = row.try_get(1)?;
        let Json(event): Json<OrderEvent> = row.try_get(2)?;
        if current != Some(stream_id)
            && let Some(done) = current.replace(stream_id)
        {
            batch.push(done, std::mem::take(&mut state));
            if batch.len() >= VIEW_BATCH {
                let full = std::mem::take(&mut batch);
                batches.send(full).await.map_err(|_| closed())?;
            }
        }
        check_next(stream_id, state.version, version)?;
        apply(&mut state, &event);
    }
    if let Some(done) = current {
        batch.push(done, state);
    }
    if batch.len() > 0 {
        batches.send(batch).await.map_err(|_| closed())?;
    }
    Ok(())
}

/// Empties `es_order_view` and inserts every batch received, in one transaction it hands back
/// uncommitted with the count of rows.
async fn write_view(
    pool: &PgPool,
    mut batches: mpsc::Receiver<ViewBatch>,
) -> Result<(Transaction<'static, Postgres>, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("TRUNCATE es_order_view")
        .execute(&mut *tx)
        .await?;
    let mut written = 0;
    while let Some(b) = batches.recv().await {
        written += sqlx::query(
            "INSERT INTO es_order_view (order_id, user_id, status, total_cents, line_count, version) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::integer[], $6::bigint[])",
        )
        .bind(&b.order_id)
        .bind(&b.user_id)
        .bind(&b.status)
        .bind(&b.total_cents)
        .bind(&b.line_count)
        .bind(&b.version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    Ok((tx, written))
}

/// Rebuilds the read model `es_order_view` from nothing but the events: every stream replayed
/// from version 1 (snapshots ignored: a new read model cannot trust a state shaped for
/// another). Reading (one connection, rows streamed) and writing (another connection, batched
/// UNNEST inserts of [`VIEW_BATCH`] rows) overlap; the view is replaced in one transaction,
/// so readers see the old view or the new one. Returns the rows written (one per stream).
///
/// # Errors
/// When PostgreSQL fails, a payload does not decode or a stream has a gap; the old view is
/// then left as it was.
pub async fn rebuild_order_view(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let (sender, receiver) = mpsc::channel(4);
    let ((), (tx, written)) =
        futures::future::try_join(replay_all(pool, sender), write_view(pool, receiver)).await?;
    tx.commit().await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i64, unit_price_cents: i64) -> OrderLine {
        OrderLine {
            sku: sku.to_owned(),
            quantity,
            unit_price_cents,
        }
    }

    fn placed(user: &str) -> OrderEvent {
        OrderEvent::OrderPlaced {
            user_id: user.to_owned(),
            currency: "EUR".to_owned(),
            lines: vec![line("SKU-1", 2, 500), line("SKU-2", 1, 1_250)],
            total_cents: 2_250,
        }
    }

    fn added(sku: &str, quantity: i64, unit_price_cents: i64) -> OrderEvent {
        OrderEvent::LineAdded {
            sku: sku.to_owned(),
            quantity,
            unit_price_cents,
        }
    }

    fn removed(sku: &str) -> OrderEvent {
        OrderEvent::LineRemoved {
            sku: sku.to_owned(),
        }
    }

    fn fold(events: &[OrderEvent]) -> OrderState {
        let mut state = OrderState::default();
        for e in events {
            apply(&mut state, e);
        }
        state
    }

    #[test]
    fn placing_sets_the_order_and_version_one() {
        let state = fold(&[placed("alice")]);
        assert_eq!(state.status, OrderStatus::Placed);
        assert_eq!(state.user_id, "alice");
        assert_eq!(state.currency, "EUR");
        assert_eq!(state.lines.len(), 2);
        assert_eq!(state.total_cents, 2_250);
        assert_eq!(state.version, 1);
    }

    #[test]
    fn lines_added_and_removed_keep_the_total() {
        let state = fold(&[
            placed("alice"),
            added("SKU-3", 3, 100),
            added("SKU-1", 1, 600),
            removed("SKU-2"),
        ]);
        assert_eq!(
            state.lines,
            vec![
                line("SKU-1", 2, 500),
                line("SKU-3", 3, 100),
                line("SKU-1", 1, 600)
            ]
        );
        assert_eq!(state.total_cents, 1_000 + 300 + 600);
        assert_eq!(state.version, 4);

        // Removing a SKU removes all its lines; removing an absent one changes nothing else.
        let state = fold(&[
            placed("alice"),
            added("SKU-1", 1, 600),
            removed("SKU-1"),
            removed("SKU-9"),
        ]);
        assert_eq!(state.lines, vec![line("SKU-2", 1, 1_250)]);
        assert_eq!(state.total_cents, 1_250);
        assert_eq!(state.version, 4);
    }

    #[test]
    fn terminal_events_set_the_status() {
        let confirmed = fold(&[placed("a"), OrderEvent::OrderConfirmed]);
        assert_eq!(confirmed.status, OrderStatus::Confirmed);
        assert_eq!(confirmed.rejection_reason, None);
        let rejected = fold(&[
            placed("a"),
            OrderEvent::OrderRejected {
                reason: "out of stock".to_owned(),
            },
        ]);
        assert_eq!(rejected.status, OrderStatus::Rejected);
        assert_eq!(rejected.rejection_reason.as_deref(), Some("out of stock"));
        let cancelled = fold(&[placed("a"), OrderEvent::OrderCancelled]);
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(cancelled.version, 2);
        assert_eq!(cancelled.status.as_str(), "cancelled");
        assert_eq!(OrderState::default().status.as_str(), "not_placed");
    }

    #[test]
    fn folding_in_two_parts_equals_folding_at_once() {
        // What a snapshot relies on: the state after k events, folded on, is the full fold.
        let events = [
            placed("a"),
            added("SKU-3", 1, 10),
            removed("SKU-1"),
            OrderEvent::OrderConfirmed,
        ];
        let mut state = fold(&events[..2]);
        let json = serde_json::to_string(&state).unwrap();
        state = serde_json::from_str(&json).unwrap();
        for e in &events[2..] {
            apply(&mut state, e);
        }
        assert_eq!(state, fold(&events));
    }

    #[test]
    fn events_are_json_tagged_by_type() {
        let json = serde_json::to_value(added("SKU-1", 2, 300)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "LineAdded", "sku": "SKU-1", "quantity": 2, "unit_price_cents": 300})
        );
        assert_eq!(
            serde_json::to_value(OrderEvent::OrderConfirmed).unwrap(),
            serde_json::json!({"type": "OrderConfirmed"})
        );
        for e in [
            placed("a"),
            added("S", 1, 1),
            removed("S"),
            OrderEvent::OrderConfirmed,
            OrderEvent::OrderRejected {
                reason: "r".to_owned(),
            },
            OrderEvent::OrderCancelled,
        ] {
            let json = serde_json::to_value(&e).unwrap();
            assert_eq!(json["type"], e.event_type());
            assert_eq!(serde_json::from_value::<OrderEvent>(json).unwrap(), e);
        }
    }

    #[test]
    fn crossing_a_multiple_is_detected() {
        assert!(crosses_multiple(95, 100, 100));
        assert!(crosses_multiple(99, 205, 100));
        assert!(!crosses_multiple(100, 199, 100));
        assert!(!crosses_multiple(0, 99, 100));
        assert!(!crosses_multiple(0, 500, 0));
    }

    /// The real database: a scratch database on the stack the environment names
    /// (`infra/stack.sh env`), created through eda-stack-admin as the benchmarks do (the
    /// binary must not depend on eda-test-support), dropped when the guard goes.
    mod postgres {
        use super::*;
        use eda_stack_admin::Stack;

        struct Scratch {
            stack: Stack,
            name: String,
            pool: PgPool,
        }

        impl Scratch {
            async fn new() -> Self {
                let stack = Stack::from_env();
                let name = eda_stack_admin::create_database(&stack, "test")
                    .await
                    .expect("create a scratch database (is the stack up? `make infra-up`)");
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .connect(&stack.database_url(&name))
                    .await
                    .expect("connect to the scratch database");
                migrate(&pool).await.expect("migrate");
                migrate(&pool).await.expect("migrate twice");
                Self { stack, name, pool }
            }
        }

        impl Drop for Scratch {
            fn drop(&mut self) {
                let (stack, name) = (self.stack.clone(), self.name.clone());
                // Inside or outside a runtime: a thread with its own runtime drops the database.
                let _ = std::thread::spawn(move || {
                    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        let _ = rt.block_on(eda_stack_admin::drop_database(&stack, &name));
                    }
                })
                .join();
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn two_appends_at_the_same_version_one_wins_one_conflicts() {
            let db = Scratch::new().await;
            let store = EventStore::new(db.pool.clone());
            let id = Uuid::new_v4();
            assert_eq!(store.append(id, 0, &[placed("alice")]).await.unwrap(), 1);

            // Truly concurrent: both read version 1, both append.
            let one = [added("SKU-A", 1, 100)];
            let two = [added("SKU-B", 1, 200), added("SKU-C", 1, 300)];
            let (a, b) = tokio::join!(store.append(id, 1, &one), store.append(id, 1, &two));
            let (winner_len, conflict) = match (a, b) {
                (Ok(2), Err(e)) => (1, e),
                (Err(e), Ok(3)) => (2, e),
                (a, b) => panic!("expected one winner and one conflict, got {a:?} and {b:?}"),
            };
            match conflict {
                AppendError::Conflict { expected, actual } => {
                    assert_eq!(expected, 1);
                    assert_eq!(actual, 1 + winner_len);
                }
                other => panic!("expected a conflict, got {other}"),
            }
            let state = load(&db.pool, id, false).await.unwrap();
            assert_eq!(state.version, 1 + winner_len);
            assert_eq!(state.lines.len(), 2 + winner_len as usize);

            // Deterministic interleaving: the second writer blocks on the first's uncommitted
            // version, then gets the conflict once it commits.
            let mut first = db.pool.begin().await.unwrap();
            let at = state.version;
            append(&mut first, id, at, &[OrderEvent::OrderConfirmed])
                .await
                .unwrap();
            let second = tokio::spawn({
                let store = store.clone();
                async move { store.append(id, at, &[OrderEvent::OrderCancelled]).await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert!(
                !second.is_finished(),
                "the second append waits for the first"
            );
            first.commit().await.unwrap();
            match second.await.unwrap() {
                Err(AppendError::Conflict { expected, actual }) => {
                    assert_eq!((expected, actual), (at, at + 1));
                }
                other => panic!("expected a conflict, got {other:?}"),
            }
            assert_eq!(
                load(&db.pool, id, false).await.unwrap().status,
                OrderStatus::Confirmed
            );

            // A stale expectation and one ahead of the stream are conflicts too, and a conflict
            // inside a caller's transaction leaves that transaction usable.
            let mut tx = db.pool.begin().await.unwrap();
            let stale = append(&mut tx, id, 1, &[OrderEvent::OrderCancelled]).await;
            assert!(
                matches!(stale, Err(AppendError::Conflict { expected: 1, actual }) if actual == at + 1)
            );
            let ahead = append(&mut tx, id, at + 5, &[OrderEvent::OrderCancelled]).await;
            assert!(matches!(ahead, Err(AppendError::Conflict { actual, .. }) if actual == at + 1));
            assert_eq!(
                append(&mut tx, id, at + 1, &[OrderEvent::OrderCancelled])
                    .await
                    .unwrap(),
                at + 2
            );
            tx.commit().await.unwrap();
            let versions: Vec<i64> = sqlx::query_scalar(
                "SELECT version FROM es_events WHERE stream_id = $1 ORDER BY version",
            )
            .bind(id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
            assert_eq!(versions, (1..=at + 2).collect::<Vec<_>>());
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn load_with_and_without_snapshots_gives_the_same_state() {
            let db = Scratch::new().await;
            let store = EventStore::new(db.pool.clone()).snapshot_every(100);
            let id = Uuid::new_v4();
            let mut events = vec![placed("bob")];
            for i in 1..250 {
                events.push(if i % 3 == 0 {
                    removed(&format!("SKU-{}", i - 1))
                } else {
                    added(&format!("SKU-{i}"), i % 5 + 1, 100 + i)
                });
            }
            let mut version = 0;
            for chunk in events.chunks(7) {
                version = store.append(id, version, chunk).await.unwrap();
            }
            assert_eq!(version, 250);
            let expected = fold(&events);

            // Appends crossed 100 and 200: the snapshot is the state at the append that
            // crossed 200 (version 203 with chunks of 7), written in its transaction.
            let (snapshot_version, Json(snapshot)): (i64, Json<OrderState>) =
                sqlx::query_as("SELECT version, state FROM es_snapshots WHERE stream_id = $1")
                    .bind(id)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(snapshot_version, 203);
            assert_eq!(snapshot, fold(&events[..203]));

            let replayed = load(&db.pool, id, false).await.unwrap();
            let from_snapshot = load(&db.pool, id, true).await.unwrap();
            assert_eq!(replayed, expected);
            assert_eq!(from_snapshot, expected);
            assert_eq!(from_snapshot.version, 250);

            // The snapshot path really starts at the snapshot: without the events it covers,
            // it still loads, while a full replay finds the gap.
            sqlx::query("DELETE FROM es_events WHERE stream_id = $1 AND version <= 203")
                .bind(id)
                .execute(&db.pool)
                .await
                .unwrap();
            assert_eq!(load(&db.pool, id, true).await.unwrap(), expected);
            let gap = load(&db.pool, id, false).await.unwrap_err();
            assert!(gap.to_string().contains("version 204 follows 0"), "{gap}");

            // An unknown stream is the empty state; a store without snapshots writes none.
            assert_eq!(
                load(&db.pool, Uuid::new_v4(), true).await.unwrap(),
                OrderState::default()
            );
            let plain = EventStore::new(db.pool.clone());
            let other = Uuid::new_v4();
            plain.append(other, 0, &events).await.unwrap();
            let snapshots: i64 =
                sqlx::query_scalar("SELECT count(*) FROM es_snapshots WHERE stream_id = $1")
                    .bind(other)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(snapshots, 0);
            assert_eq!(load(&db.pool, other, true).await.unwrap(), expected);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn rebuild_writes_one_right_row_per_order() {
            let db = Scratch::new().await;
            let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
            let mut tx = db.pool.begin().await.unwrap();
            append(
                &mut tx,
                a,
                0,
                &[placed("alice"), OrderEvent::OrderConfirmed],
            )
            .await
            .unwrap();
            append(
                &mut tx,
                b,
                0,
                &[placed("bob"), added("SKU-9", 4, 25), removed("SKU-1")],
            )
            .await
            .unwrap();
            append(
                &mut tx,
                c,
                0,
                &[
                    placed("carol"),
                    OrderEvent::OrderRejected {
                        reason: "no stock".to_owned(),
                    },
                ],
            )
            .await
            .unwrap();
            // More orders than a batch, so several inserts run; each one event.
            let many: Vec<Uuid> = (0..2 * VIEW_BATCH + 17).map(|_| Uuid::new_v4()).collect();
            for id in &many {
                append(&mut tx, *id, 0, &[placed("dave")]).await.unwrap();
            }
            tx.commit().await.unwrap();
            // A stale row the rebuild must remove.
            sqlx::query(
                "INSERT INTO es_order_view VALUES (gen_random_uuid(), 'ghost', 'placed', 1, 1, 1)",
            )
            .execute(&db.pool)
            .await
            .unwrap();

            let expected_rows = (many.len() + 3) as u64;
            for _ in 0..2 {
                assert_eq!(rebuild_order_view(&db.pool).await.unwrap(), expected_rows);
                let count: i64 = sqlx::query_scalar("SELECT count(*) FROM es_order_view")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
                assert_eq!(count as u64, expected_rows);
            }

            type ViewRow = (String, String, i64, i32, i64);
            let row = |id: Uuid| {
                let pool = db.pool.clone();
                async move {
                    sqlx::query_as::<_, ViewRow>(
                        "SELECT user_id, status, total_cents, line_count, version \
                         FROM es_order_view WHERE order_id = $1",
                    )
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                }
            };
            assert_eq!(
                row(a).await,
                ("alice".into(), "confirmed".into(), 2_250, 2, 2)
            );
            assert_eq!(row(b).await, ("bob".into(), "placed".into(), 1_350, 2, 3));
            assert_eq!(
                row(c).await,
                ("carol".into(), "rejected".into(), 2_250, 2, 2)
            );
            assert_eq!(
                row(many[1_500]).await,
                ("dave".into(), "placed".into(), 2_250, 2, 1)
            );
            let ghosts: i64 =
                sqlx::query_scalar("SELECT count(*) FROM es_order_view WHERE user_id = 'ghost'")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(ghosts, 0);

            // A stream with a gap fails the rebuild and leaves the previous view in place.
            sqlx::query("DELETE FROM es_events WHERE stream_id = $1 AND version = 2")
                .bind(b)
                .execute(&db.pool)
                .await
                .unwrap();
            let err = rebuild_order_view(&db.pool).await.unwrap_err();
            assert!(err.to_string().contains("follows"), "{err}");
            assert_eq!(row(b).await.4, 3);
        }
    }
}
