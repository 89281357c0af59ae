//! Reading the three databases: each in one `REPEATABLE READ` read-only transaction (one
//! consistent snapshot per database), opened in a fixed order (projection, then inventory,
//! then orders) so that what a later snapshot holds can only be newer. Large tables are
//! streamed in key order and merged across databases, never loaded: `order_items` with
//! `order_line_view` and `reservations`, `orders` with `order_view`. What stays in memory is
//! one small state per aggregate (order, reservation, SKU, customer).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt as _;
use futures::stream::BoxStream;
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

use super::contract::{ORDER, RESERVATION, defaults};
use super::events::push_exact;
use super::report::Findings;
use super::rows::{
    LineRow, OrderRow, Pending, ReservationRow, ReservationViewRow, SkuOrders, State, StockRow,
    Summary,
};
use super::stock::Books;
use super::views::Views;

/// The three databases.
#[derive(Debug, Clone)]
pub struct Urls {
    /// order-service's.
    pub orders: String,
    /// inventory-service's.
    pub inventory: String,
    /// projection-service's.
    pub projection: String,
}

/// The consumer groups whose stored positions (`consumer_offsets`) the audit reads.
#[derive(Debug, Clone)]
pub struct Groups {
    /// order-service's (in the orders database).
    pub order: String,
    /// inventory-service's (in the inventory database).
    pub inventory: String,
    /// projection-service's (in the projection database).
    pub projection: String,
}

/// `(topic, partition)` → next offset to apply.
pub type Offsets = HashMap<(String, i32), i64>;

/// What the databases hold, as far as the checks need it.
#[derive(Debug, Default)]
pub struct DbFacts {
    /// Order id → state.
    pub orders: HashMap<Uuid, State>,
    /// Order id → its reservation's state.
    pub reservations: HashMap<Uuid, State>,
    /// Topic → aggregate id → unpublished outbox rows (both databases' outboxes).
    pub pending: HashMap<String, HashMap<String, Vec<Pending>>>,
    /// SKU → stock row.
    pub stock: HashMap<String, StockRow>,
    /// The view check, with its suspects to resolve on the CDC topics.
    pub views: Views,
    /// Positions stored by the groups, per database: order-service's, inventory-service's,
    /// projection-service's.
    pub offsets: (Offsets, Offsets, Offsets),
    /// `database.table` → rows read.
    pub rows: BTreeMap<String, u64>,
}

fn failed(what: &'static str) -> impl FnOnce(sqlx::Error) -> String {
    move |err| format!("{what}: {err}")
}

/// A read-only snapshot of one database.
struct Snapshot {
    name: &'static str,
    conn: PgConnection,
}

impl Snapshot {
    /// Connects and takes the snapshot (the first statement of a REPEATABLE READ transaction).
    async fn open(name: &'static str, url: &str) -> Result<Self, String> {
        let mut conn = PgConnection::connect(url)
            .await
            .map_err(|e| format!("the {name} database ({}): {e}", redact(url)))?;
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(|e| format!("the {name} database: starting a snapshot: {e}"))?;
        Ok(Self { name, conn })
    }

    async fn has_table(&mut self, table: &str) -> Result<bool, String> {
        sqlx::query_scalar("SELECT to_regclass($1::text) IS NOT NULL")
            .bind(table)
            .fetch_one(&mut self.conn)
            .await
            .map_err(failed("looking up a table"))
    }

    /// The positions `group` stored in `consumer_offsets` (Dedupe::Offsets), if the table is
    /// there.
    async fn offsets(&mut self, group: &str) -> Result<Offsets, String> {
        if !self.has_table("consumer_offsets").await? {
            return Ok(Offsets::new());
        }
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT topic, \"partition\", next_offset FROM consumer_offsets WHERE consumer_group = $1",
        )
        .bind(group)
        .fetch_all(&mut self.conn)
        .await
        .map_err(failed("reading consumer_offsets"))?;
        Ok(rows.into_iter().map(|(t, p, n)| ((t, p), n)).collect())
    }

    /// Unpublished outbox rows, into `pending`.
    async fn pending(
        &mut self,
        pending: &mut HashMap<String, HashMap<String, Vec<Pending>>>,
        rows: &mut BTreeMap<String, u64>,
    ) -> Result<(), String> {
        if !self.has_table(defaults::OUTBOX_TABLE).await? {
            return Ok(());
        }
        let mut stream = sqlx::query_as::<_, (String, String, String, String, bool)>(
            "SELECT topic, aggregate_id, revision, COALESCE(chunk_message_id, event_id::text), \
             parked_at IS NOT NULL FROM outbox WHERE published_at IS NULL",
        )
        .fetch(&mut self.conn);
        let mut n = 0;
        while let Some((topic, aggregate, revision, id, parked)) = stream
            .try_next()
            .await
            .map_err(failed("reading the outbox"))?
        {
            n += 1;
            let (Ok(revision), Ok(id)) = (revision.parse(), Uuid::parse_str(&id)) else {
                continue; // not the contract: the relay would refuse it too
            };
            let rows = pending
                .entry(topic)
                .or_default()
                .entry(aggregate)
                .or_default();
            push_exact(
                rows,
                Pending {
                    revision,
                    id,
                    parked,
                },
            );
        }
        rows.insert(format!("{}.outbox (unpublished)", self.name), n);
        Ok(())
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A stream of rows in key order with the next row at hand.
struct Cursor<'c, T> {
    stream: Option<BoxStream<'c, Result<T, sqlx::Error>>>,
    head: Option<T>,
    what: &'static str,
    read: u64,
}

impl<'c, T> Cursor<'c, T> {
    async fn open(
        what: &'static str,
        stream: BoxStream<'c, Result<T, sqlx::Error>>,
    ) -> Result<Self, String> {
        let mut cursor = Self {
            stream: Some(stream),
            head: None,
            what,
            read: 0,
        };
        cursor.advance().await?;
        Ok(cursor)
    }

    fn empty(what: &'static str) -> Self {
        Self {
            stream: None,
            head: None,
            what,
            read: 0,
        }
    }

    async fn advance(&mut self) -> Result<(), String> {
        self.head = match &mut self.stream {
            Some(stream) => stream
                .try_next()
                .await
                .map_err(|e| format!("reading {}: {e}", self.what))?,
            None => None,
        };
        if self.head.is_some() {
            self.read += 1;
        }
        Ok(())
    }

    async fn take(&mut self) -> Result<Option<T>, String> {
        let head = self.head.take();
        if head.is_some() {
            self.advance().await?;
        }
        Ok(head)
    }

    /// Every next row for which `same` holds.
    async fn take_while(&mut self, same: impl Fn(&T) -> bool) -> Result<Vec<T>, String> {
        let mut out = Vec::new();
        while self.head.as_ref().is_some_and(&same) {
            out.extend(self.take().await?);
        }
        Ok(out)
    }
}

/// Which of two sorted heads comes first (`Less`: only or first the left one).
fn first<K: Ord>(left: Option<K>, right: Option<K>) -> Option<Ordering> {
    match (left, right) {
        (None, None) => None,
        (Some(_), None) => Some(Ordering::Less),
        (None, Some(_)) => Some(Ordering::Greater),
        (Some(l), Some(r)) => Some(l.cmp(&r)),
    }
}

const ORDERS: &str = "SELECT id, user_id, customer_name, customer_email, currency, status, \
     total_cents, revision, created_at, updated_at FROM orders ORDER BY id";
const ORDER_VIEW: &str = "SELECT order_id AS id, user_id, customer_name, customer_email, currency, \
     status, total_cents, revision, created_at, updated_at FROM order_view ORDER BY order_id";
const ITEMS: &str = "SELECT order_id, line_no, sku, quantity, unit_price_cents FROM order_items \
     ORDER BY order_id, line_no";
const LINE_VIEW: &str = "SELECT order_id, line_no, sku, quantity, unit_price_cents FROM \
     order_line_view ORDER BY order_id, line_no";
const RESERVATIONS: &str = "SELECT order_id, status, lines, reason, revision, updated_at FROM \
     reservations ORDER BY order_id";

/// Reads the databases (the projection's only when `views`). Check 5's book-keeping and the
/// view comparisons that need no topic run while the rows go by.
pub async fn read(
    urls: &Urls,
    groups: &Groups,
    views: bool,
    findings: &mut Findings,
) -> Result<DbFacts, String> {
    let mut facts = DbFacts::default();
    // Snapshots in this order: a later one can only be newer.
    let mut projection = match views {
        true => Some(Snapshot::open("projection", &urls.projection).await?),
        false => None,
    };
    let mut inventory = Snapshot::open("inventory", &urls.inventory).await?;
    let mut orders = Snapshot::open("orders", &urls.orders).await?;

    let mut reservation_views: HashMap<Uuid, ReservationViewRow> = HashMap::new();
    let mut stock_views: HashMap<String, StockRow> = HashMap::new();
    let mut summaries: HashMap<String, Summary> = HashMap::new();
    let mut sku_orders: HashMap<String, SkuOrders> = HashMap::new();
    if let Some(p) = projection.as_mut() {
        if !p.has_table("order_view").await? {
            return Err(
                "the projection database has no views (has projection-service run its migrations?)"
                    .to_owned(),
            );
        }
        facts.offsets.2 = p.offsets(&groups.projection).await?;
        let tombstones: Vec<(String, String)> =
            sqlx::query_as("SELECT source, key FROM view_tombstones")
                .fetch_all(&mut p.conn)
                .await
                .map_err(failed("reading view_tombstones"))?;
        facts.views.tombstones = tombstones.into_iter().collect();
        let rows: Vec<ReservationViewRow> = sqlx::query_as(
            "SELECT order_id, status, reason, revision, updated_at FROM reservation_view",
        )
        .fetch_all(&mut p.conn)
        .await
        .map_err(failed("reading reservation_view"))?;
        reservation_views = rows.into_iter().map(|r| (r.order_id, r)).collect();
        let rows: Vec<StockRow> =
            sqlx::query_as("SELECT sku, available, reserved, revision, updated_at FROM stock_view")
                .fetch_all(&mut p.conn)
                .await
                .map_err(failed("reading stock_view"))?;
        stock_views = rows.into_iter().map(|r| (r.sku.clone(), r)).collect();
        let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT user_id, orders, placed, confirmed, rejected, cancelled, spent_cents FROM customer_summary",
        )
        .fetch_all(&mut p.conn)
        .await
        .map_err(failed("reading customer_summary"))?;
        summaries = rows
            .into_iter()
            .map(
                |(user, orders, placed, confirmed, rejected, cancelled, spent_cents)| {
                    (
                        user,
                        Summary {
                            orders,
                            placed,
                            confirmed,
                            rejected,
                            cancelled,
                            spent_cents,
                        },
                    )
                },
            )
            .collect();
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT sku, order_lines, units_ordered FROM sku_orders")
                .fetch_all(&mut p.conn)
                .await
                .map_err(failed("reading sku_orders"))?;
        sku_orders = rows
            .into_iter()
            .map(|(sku, order_lines, units_ordered)| {
                (
                    sku,
                    SkuOrders {
                        order_lines,
                        units_ordered,
                    },
                )
            })
            .collect();
        for (table, n) in [
            ("reservation_view", reservation_views.len()),
            ("stock_view", stock_views.len()),
            ("customer_summary", summaries.len()),
            ("sku_orders", sku_orders.len()),
        ] {
            facts.rows.insert(format!("projection.{table}"), n as u64);
        }
    }

    if !inventory.has_table("reservations").await? || !orders.has_table("orders").await? {
        return Err("the orders or inventory database has no tables (have the services run their migrations?)".to_owned());
    }
    facts.offsets.1 = inventory.offsets(&groups.inventory).await?;
    facts.offsets.0 = orders.offsets(&groups.order).await?;
    inventory
        .pending(&mut facts.pending, &mut facts.rows)
        .await?;
    orders.pending(&mut facts.pending, &mut facts.rows).await?;
    let stock: Vec<StockRow> =
        sqlx::query_as("SELECT sku, available, reserved, revision, updated_at FROM stock")
            .fetch_all(&mut inventory.conn)
            .await
            .map_err(failed("reading stock"))?;
    facts
        .rows
        .insert("inventory.stock".to_owned(), stock.len() as u64);
    facts.stock = stock.into_iter().map(|r| (r.sku.clone(), r)).collect();

    // orders ⋈ order_view
    {
        let mut source = Cursor::open(
            "orders",
            sqlx::query_as::<_, OrderRow>(ORDERS).fetch(&mut orders.conn),
        )
        .await?;
        let mut view = match projection.as_mut() {
            Some(p) => {
                Cursor::open(
                    "order_view",
                    sqlx::query_as::<_, OrderRow>(ORDER_VIEW).fetch(&mut p.conn),
                )
                .await?
            }
            None => Cursor::empty("order_view"),
        };
        while let Some(order) = first(
            source.head.as_ref().map(|r| r.id),
            view.head.as_ref().map(|r| r.id),
        ) {
            let s = if order != Ordering::Greater {
                source.take().await?
            } else {
                None
            };
            let v = if order != Ordering::Less {
                view.take().await?
            } else {
                None
            };
            if let Some(s) = &s {
                facts
                    .orders
                    .insert(s.id, State::of(&ORDER, &s.status, s.revision));
            }
            if views {
                facts.views.order(s.as_ref(), v.as_ref(), findings);
            }
        }
        facts.rows.insert("orders.orders".to_owned(), source.read);
        if views {
            facts
                .rows
                .insert("projection.order_view".to_owned(), view.read);
        }
    }

    // order_items ⋈ order_line_view ⋈ reservations, by order
    let mut books = Books::default();
    {
        let mut items = Cursor::open(
            "order_items",
            sqlx::query_as::<_, LineRow>(ITEMS).fetch(&mut orders.conn),
        )
        .await?;
        let mut reservations = Cursor::open(
            "reservations",
            sqlx::query_as::<_, ReservationRow>(RESERVATIONS).fetch(&mut inventory.conn),
        )
        .await?;
        let mut line_views = match projection.as_mut() {
            Some(p) => {
                Cursor::open(
                    "order_line_view",
                    sqlx::query_as::<_, LineRow>(LINE_VIEW).fetch(&mut p.conn),
                )
                .await?
            }
            None => Cursor::empty("order_line_view"),
        };
        loop {
            let next = [
                items.head.as_ref().map(|l| l.order_id),
                line_views.head.as_ref().map(|l| l.order_id),
                reservations.head.as_ref().map(|r| r.order_id),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(id) = next else { break };
            let source = items.take_while(|l| l.order_id == id).await?;
            let view = line_views.take_while(|l| l.order_id == id).await?;
            let reservation = match reservations.head.as_ref().is_some_and(|r| r.order_id == id) {
                true => reservations.take().await?,
                false => None,
            };
            if views {
                let (mut s, mut v) = (source.iter().peekable(), view.iter().peekable());
                while let Some(order) =
                    first(s.peek().map(|l| l.line_no), v.peek().map(|l| l.line_no))
                {
                    let a = if order != Ordering::Greater {
                        s.next()
                    } else {
                        None
                    };
                    let b = if order != Ordering::Less {
                        v.next()
                    } else {
                        None
                    };
                    facts.views.line(a, b, findings);
                }
            }
            if let Some(r) = &reservation {
                facts
                    .reservations
                    .insert(id, State::of(&RESERVATION, &r.status, r.revision));
                books.reservation(r, &source, facts.orders.contains_key(&id), findings);
                if views {
                    let held = reservation_views.remove(&id);
                    facts
                        .views
                        .reservation(Some(&r.into()), held.as_ref(), findings);
                }
            }
        }
        facts
            .rows
            .insert("orders.order_items".to_owned(), items.read);
        facts
            .rows
            .insert("inventory.reservations".to_owned(), reservations.read);
        if views {
            facts
                .rows
                .insert("projection.order_line_view".to_owned(), line_views.read);
        }
    }
    books.close(&facts.stock, findings);

    if views {
        for view in reservation_views.values() {
            facts.views.reservation(None, Some(view), findings);
        }
        let mut skus: Vec<&String> = facts.stock.keys().chain(stock_views.keys()).collect();
        skus.sort();
        skus.dedup();
        for sku in skus {
            facts
                .views
                .stock(facts.stock.get(sku), stock_views.get(sku), findings);
        }
        facts.views.summaries(&summaries, findings);
        facts.views.sku_orders(&sku_orders, findings);
    }
    // Read-only snapshots: closing the connections ends them.
    drop(orders);
    drop(inventory);
    drop(projection);
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://eda:secret@127.0.0.1:5432/orders"),
            "postgres://eda:***@127.0.0.1:5432/orders"
        );
        assert_eq!(
            redact("postgres://127.0.0.1/orders"),
            "postgres://127.0.0.1/orders"
        );
    }

    #[test]
    fn merge_order() {
        assert_eq!(first(Some(1), Some(2)), Some(Ordering::Less));
        assert_eq!(first(None, Some(2)), Some(Ordering::Greater));
        assert_eq!(first::<i32>(None, None), None);
    }
}
