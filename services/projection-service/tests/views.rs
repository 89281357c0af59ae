//! projection-service on the real stack: order-service and inventory-service write their CRUD
//! tables, Debezium table connectors capture them (snapshot, then changes), and the views
//! follow. Every check reads the views over HTTP, as a user would.

use std::time::Duration;

use eda_http::config::ServiceSettings;
use eda_test_support::{
    CdcConnector, Server, ServiceProcess, Stack, TempDatabase, produce, unique,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[path = "../../inventory-service/tests/api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use helpers::{Running, SECRET, set_stock, spawn_inventory, spawn_orders, token};

const WAIT: Duration = Duration::from_secs(90);

/// The database name at the end of a service's URL.
fn database_name(service: &Running) -> String {
    service
        .database_url()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

/// projection-service in the test's process, or as its own process (for kill -9).
enum Projection {
    InProcess(Server),
    Process(ServiceProcess),
}

/// order-service and inventory-service, their CDC connectors, and projection-service on them.
struct System {
    stack: Stack,
    client: reqwest::Client,
    orders: Running,
    inventory: Running,
    projection: Option<Projection>,
    projection_address: String,
    projection_db: TempDatabase,
    orders_cdc: Option<CdcConnector>,
    inventory_cdc: Option<CdcConnector>,
    group: String,
}

impl System {
    async fn start() -> Self {
        let stack = Stack::from_env();
        let topics = helpers::topics(&stack).await;
        let orders = spawn_orders(&stack, &topics).await;
        let inventory =
            spawn_inventory(&stack, &topics, eda_idempotent_consumer::Dedupe::EventId).await;
        // The services created their tables: the connectors can capture them.
        let orders_cdc = CdcConnector::register(
            &stack,
            &database_name(&orders),
            &["public.orders", "public.order_items"],
        )
        .await;
        let inventory_cdc = CdcConnector::register(
            &stack,
            &database_name(&inventory),
            &["public.stock", "public.reservations"],
        )
        .await;
        let mut system = Self {
            client: reqwest::Client::new(),
            projection_db: TempDatabase::create(&stack).await,
            stack,
            orders,
            inventory,
            projection: None,
            projection_address: String::new(),
            orders_cdc: Some(orders_cdc),
            inventory_cdc: Some(inventory_cdc),
            group: unique("projection"),
        };
        system.start_projection().await;
        system
    }

    fn topics(&self) -> Vec<String> {
        let mut topics = self.orders_cdc.as_ref().unwrap().topics.clone();
        topics.extend(self.inventory_cdc.as_ref().unwrap().topics.clone());
        topics
    }

    async fn start_projection(&mut self) {
        let settings = projection_service::configuration::Settings {
            service: ServiceSettings {
                http_host: [127, 0, 0, 1].into(),
                http_port: 0,
                database_url: self.projection_db.url.clone().into(),
                kafka_bootstrap_servers: self.stack.kafka_bootstrap_servers.clone(),
                jwt_secret: SECRET.into(),
                max_body_bytes: 16 * 1024,
                shutdown_timeout: Duration::from_secs(10),
                propagation: eda_context::Propagation::On,
                baggage: Default::default(),
                consumer_stuck_after: Duration::from_secs(60),
            },
            cdc_topics: self.topics(),
            consumer_group: self.group.clone(),
            max_wait: Duration::from_secs(10),
        };
        let app = projection_service::startup::Application::build(settings)
            .await
            .expect("projection-service builds");
        let server = Server::spawn(app.port(), |shutdown| app.run_until_stopped(shutdown));
        self.projection_address = server.address.clone();
        self.projection = Some(Projection::InProcess(server));
    }

    /// projection-service as its own process, same database and group.
    async fn start_projection_process(&mut self) {
        let env = vec![
            ("DATABASE_URL", self.projection_db.url.clone()),
            (
                "KAFKA_BOOTSTRAP_SERVERS",
                self.stack.kafka_bootstrap_servers.clone(),
            ),
            ("CDC_TOPICS", self.topics().join(",")),
            ("CONSUMER_GROUP", self.group.clone()),
            ("JWT_SECRET", SECRET.to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("OTEL_SDK_DISABLED", "true".to_owned()),
        ];
        let process = ServiceProcess::start(
            std::path::Path::new(env!("CARGO_BIN_EXE_projection-service")),
            "projection-service",
            &env,
        )
        .await;
        self.projection_address = process.address.clone();
        self.projection = Some(Projection::Process(process));
    }

    /// kill -9 of the projection process (dropping it kills it).
    fn kill_projection(&mut self) {
        match self.projection.take() {
            Some(Projection::Process(process)) => drop(process),
            _ => panic!("the projection does not run as a process"),
        }
    }

    async fn stop_projection(&mut self) {
        match self.projection.take() {
            Some(Projection::InProcess(server)) => server.stop().await,
            Some(Projection::Process(process)) => process.stop().await,
            None => {}
        }
    }

    async fn get(&self, path: &str, user: &str, roles: &[&str]) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.projection_address))
            .bearer_auth(token(user, roles))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn place(&self, user: &str, lines: &[(&str, i64)]) -> String {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(sku, q)| json!({"sku": sku, "quantity": q, "unit_price_cents": 250}))
            .collect();
        let response = self
            .client
            .post(format!("{}/orders", self.orders.address))
            .bearer_auth(token(user, &[]))
            .json(&json!({"customer": {"name": format!("{user} Example"), "email": format!("{user}@example.com")},
                          "currency": "EUR", "lines": lines}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits until `check` holds for the view at `path` (read as admin); returns it.
    async fn wait_view(&self, path: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = self.get(path, "admin", &["admin"]).await;
            if status == StatusCode::OK && check(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} did not get there: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A SKU of its own (`<prefix>-<random>`) with `available` units in stock.
    async fn stocked_sku(&self, prefix: &str, available: i64) -> String {
        let sku = format!("{prefix}-{}", &unique("s")[2..10].to_uppercase());
        let response = set_stock(&self.client, &self.inventory, &sku, available).await;
        assert!(response.status().is_success(), "{}", response.status());
        sku
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.projection_address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn stop(mut self) {
        self.stop_projection().await;
        let orders_pool = self.orders_cdc_pool().await;
        if let Some(c) = self.orders_cdc.take() {
            c.remove(&orders_pool).await;
        }
        if let Some(c) = self.inventory_cdc.take() {
            c.remove(&orders_pool).await;
        }
        self.orders.stop().await;
        self.inventory.stop().await;
    }

    async fn orders_cdc_pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(self.orders.database_url())
            .await
            .unwrap()
    }
}

/// Orders placed, confirmed, rejected and cancelled through the real services show up in every
/// view; `min_revision` waits for a revision and times out with 409; a replay from offset zero
/// and a stale change produced out of order change nothing.
#[tokio::test]
async fn the_views_follow_the_services_and_never_go_backwards() {
    let mut system = System::start().await;
    let sku_a = format!("A-{}", &unique("s")[2..10].to_uppercase());
    let sku_b = format!("B-{}", &unique("s")[2..10].to_uppercase());
    // Stock set before: the connector's snapshot or its stream carries it, either way.
    assert!(
        set_stock(&system.client, &system.inventory, &sku_a, 10)
            .await
            .status()
            .is_success()
    );
    assert!(
        set_stock(&system.client, &system.inventory, &sku_b, 1)
            .await
            .status()
            .is_success()
    );

    let confirmed = system.place("alice", &[(&sku_a, 2)]).await;
    let rejected = system.place("alice", &[(&sku_b, 5)]).await;
    let cancelled = system.place("bob", &[(&sku_a, 1)]).await;

    // Read-your-writes: revision 2 (the saga's outcome) is waited for, not reported missing.
    let (status, view) = system
        .get(
            &format!("/orders/{confirmed}?min_revision=2&wait_ms=10000"),
            "alice",
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "CONFIRMED");
    assert_eq!(view["revision"], 2);
    assert_eq!(view["total_cents"], 500);
    assert_eq!(view["user_id"], "alice");
    assert!(view["freshness"]["source_committed_at"].is_string());
    assert!(view["freshness"]["applied_at"].is_string());
    // A revision the order never reaches: a clear 409 after the wait asked for.
    let started = std::time::Instant::now();
    let (status, problem) = system
        .get(
            &format!("/orders/{confirmed}?min_revision=9&wait_ms=300"),
            "alice",
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("holds revision 2"),
        "{problem}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, _) = system
        .get(
            &format!("/orders/{confirmed}?min_revision=2&wait_ms=999999"),
            "alice",
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Lines and the reservation outcome.
    let view = system
        .wait_view(&format!("/orders/{confirmed}"), |v| {
            v["lines"].as_array().is_some_and(|l| l.len() == 1) && v["reservation"].is_object()
        })
        .await;
    assert_eq!(view["lines"][0]["sku"], sku_a.as_str());
    assert_eq!(view["units"], 2);
    assert_eq!(view["reservation"]["status"], "RESERVED");
    let view = system
        .wait_view(&format!("/orders/{rejected}"), |v| {
            v["status"] == "REJECTED" && v["reservation"].is_object()
        })
        .await;
    assert_eq!(view["reservation"]["status"], "REJECTED");
    assert!(view["reservation"]["reason"].is_string(), "{view}");

    // Cancel bob's order once it is confirmed.
    system
        .wait_view(&format!("/orders/{cancelled}"), |v| {
            v["status"] == "CONFIRMED"
        })
        .await;
    let response = system
        .client
        .post(format!(
            "{}/orders/{cancelled}/cancel",
            system.orders.address
        ))
        .bearer_auth(token("bob", &[]))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    system
        .wait_view(&format!("/orders/{cancelled}"), |v| {
            v["status"] == "CANCELLED" && v["reservation"]["status"] == "RELEASED"
        })
        .await;

    // Owners see their own; others get 404; admin sees all.
    assert_eq!(
        system
            .get(&format!("/orders/{cancelled}"), "alice", &[])
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (_, page) = system.get("/orders?limit=1", "alice", &[]).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = system
        .get(&format!("/orders?limit=1&cursor={cursor}"), "alice", &[])
        .await;
    assert_eq!(next["items"].as_array().unwrap().len(), 1);
    assert!(next["next_cursor"].is_null(), "{next}");
    assert_eq!(
        system.get("/orders?user_id=bob", "alice", &[]).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, bobs) = system.get("/orders?user_id=bob", "admin", &["admin"]).await;
    assert_eq!(bobs["items"].as_array().unwrap().len(), 1);

    // Customer summaries.
    let alice = system
        .wait_view("/customers/alice", |v| v["orders"] == 2 && v["placed"] == 0)
        .await;
    assert_eq!(alice["confirmed"], 1);
    assert_eq!(alice["rejected"], 1);
    assert_eq!(alice["spent_cents"], 500);
    let bob = system
        .wait_view("/customers/bob", |v| v["cancelled"] == 1)
        .await;
    assert_eq!(bob["spent_cents"], 0);
    assert_eq!(
        system.get("/customers/bob", "alice", &[]).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        system.get("/customers", "alice", &[]).await.0,
        StatusCode::FORBIDDEN
    );

    // SKU view: stock joined with units ordered (alice's 2 and bob's 1; bob's released).
    let a = system
        .wait_view(&format!("/skus/{sku_a}"), |v| {
            v["available"] == 8 && v["reserved"] == 2 && v["units_ordered"] == 3
        })
        .await;
    assert_eq!(a["order_lines"], 2);
    let b = system
        .wait_view(&format!("/skus/{sku_b}"), |v| v["units_ordered"] == 5)
        .await;
    assert_eq!(b["available"], 1);
    assert_eq!(b["reserved"], 0);

    // Replay: every change again from the beginning of the topics (a new consumer group has
    // no stored offsets). All of them are stale now.
    let before = system
        .get(&format!("/orders/{confirmed}"), "alice", &[])
        .await
        .1;
    let summary_before = system.get("/customers/alice", "alice", &[]).await.1;
    system.stop_projection().await;
    system.group = unique("projection-replay");
    system.start_projection().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while system.metric("projection_changes_total").await < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay did not run"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give the rest of the replay a moment, then compare.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        system
            .metric(r#"projection_changes_total{table="orders",outcome="applied"}"#)
            .await,
        0,
        "a replayed change was applied again"
    );
    let after = system
        .get(&format!("/orders/{confirmed}"), "alice", &[])
        .await
        .1;
    assert_eq!(after["revision"], before["revision"]);
    assert_eq!(after["status"], before["status"]);
    assert_eq!(
        system.get("/customers/alice", "alice", &[]).await.1["spent_cents"],
        summary_before["spent_cents"]
    );

    // A stale change produced out of order (revision 1 again, after 2): skipped.
    let topic = &system.orders_cdc.as_ref().unwrap().topics[0];
    let stale = json!({
        "before": null,
        "after": {"id": confirmed, "user_id": "alice", "customer_name": "Old", "customer_email": "old@example.com",
                  "currency": "EUR", "status": "PLACED", "total_cents": 500, "revision": 1,
                  "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"},
        "source": {"table": "orders", "ts_ms": 1_700_000_000_000_i64},
        "op": "u"
    });
    // Counted before it is produced: it may be handled at once.
    let stale_before = system
        .metric(r#"projection_changes_total{table="orders",outcome="stale"}"#)
        .await;
    produce(
        &system.stack,
        topic,
        &json!({"id": confirmed}).to_string(),
        &[],
        stale.to_string().as_bytes(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = system
            .metric(r#"projection_changes_total{table="orders",outcome="stale"}"#)
            .await;
        if now > stale_before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale change was not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = system
        .get(&format!("/orders/{confirmed}"), "alice", &[])
        .await
        .1;
    assert_eq!(view["status"], "CONFIRMED");
    assert_eq!(view["customer_name"], "alice Example");
    system.stop().await;
}

/// Deletes remove the rows from the views (and a replayed insert does not bring them back);
/// an unchanged TOASTed column keeps its value; a column added to a source table breaks
/// nothing; a malformed record is dead-lettered with its reason and a table the views do not
/// use is skipped and counted.
#[tokio::test]
async fn deletes_toast_new_columns_and_bad_records() {
    let system = System::start().await;
    let sku = system.stocked_sku("T", 100).await;
    let kept = system.place("carol", &[(&sku, 1)]).await;
    let gone = system.place("carol", &[(&sku, 2), (&sku, 3)]).await;
    for id in [&kept, &gone] {
        system
            .wait_view(&format!("/orders/{id}"), |v| v["status"] == "CONFIRMED")
            .await;
    }
    system
        .wait_view(&format!("/skus/{sku}"), |v| v["units_ordered"] == 6)
        .await;

    let source = system.orders_cdc_pool().await;
    // A column added while everything runs.
    sqlx::query("ALTER TABLE orders ADD COLUMN gift_note text")
        .execute(&source)
        .await
        .unwrap();
    // A customer name long and random enough to be stored out of line (TOAST), then an update
    // that leaves it unchanged: Debezium sends its placeholder, the view keeps the name.
    let long_name: String = (0..400)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    sqlx::query("UPDATE orders SET customer_name = $2, revision = revision + 1, gift_note = 'hi' WHERE id = $1::uuid")
        .bind(&kept)
        .bind(&long_name)
        .execute(&source)
        .await
        .unwrap();
    system
        .wait_view(&format!("/orders/{kept}"), |v| v["revision"] == 3)
        .await;
    // Stored out of line: what is stored is over the inline limit (about 2 KB) even compressed.
    let toasted: bool = sqlx::query_scalar(
        "SELECT pg_column_size(customer_name) > 2032 FROM orders WHERE id = $1::uuid",
    )
    .bind(&kept)
    .fetch_one(&source)
    .await
    .unwrap();
    assert!(
        toasted,
        "the test's name should be large enough to be TOASTed"
    );
    sqlx::query(
        "UPDATE orders SET status = 'CANCELLED', revision = revision + 1 WHERE id = $1::uuid",
    )
    .bind(&kept)
    .execute(&source)
    .await
    .unwrap();
    let view = system
        .wait_view(&format!("/orders/{kept}"), |v| v["revision"] == 4)
        .await;
    assert_eq!(view["status"], "CANCELLED");
    assert_eq!(
        view["customer_name"].as_str().unwrap(),
        long_name,
        "the TOAST placeholder must never reach the view"
    );

    // A delete (the lines go with it, by cascade): the rows leave the views, the summaries
    // subtract them.
    sqlx::query("DELETE FROM orders WHERE id = $1::uuid")
        .bind(&gone)
        .execute(&source)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while system
        .get(&format!("/orders/{gone}"), "admin", &["admin"])
        .await
        .0
        != StatusCode::NOT_FOUND
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted order stayed in the view"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    system
        .wait_view(&format!("/skus/{sku}"), |v| v["units_ordered"] == 1)
        .await;
    let carol = system
        .wait_view("/customers/carol", |v| v["orders"] == 1)
        .await;
    assert_eq!(carol["confirmed"], 0);
    assert_eq!(carol["cancelled"], 1);

    let topics = &system.orders_cdc.as_ref().unwrap().topics;
    // The old insert, replayed after the delete: the tombstone keeps it out.
    let insert = json!({
        "before": null,
        "after": {"id": gone, "user_id": "carol", "customer_name": "c", "customer_email": "c@example.com",
                  "currency": "EUR", "status": "PLACED", "total_cents": 1250, "revision": 1,
                  "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"},
        "source": {"table": "orders", "ts_ms": 1_700_000_000_000_i64},
        "op": "c"
    });
    produce(
        &system.stack,
        &topics[0],
        &gone,
        &[],
        insert.to_string().as_bytes(),
    )
    .await;
    // A table the views do not use, and a record that is not a change event.
    let unknown = json!({"before": null, "after": {"id": 1}, "source": {"table": "payments", "ts_ms": 1}, "op": "c"});
    produce(
        &system.stack,
        &topics[0],
        "p",
        &[],
        unknown.to_string().as_bytes(),
    )
    .await;
    produce(&system.stack, &topics[0], "x", &[], b"{not a change event").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while system
        .metric(r#"projection_records_skipped_total{reason="unknown-table"}"#)
        .await
        < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unknown table was not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letters = eda_test_support::consume_all(
        &system.stack,
        &format!("{}.dlq", topics[0]),
        1,
        WAIT,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(letters.len(), 1);
    let reason = eda_test_support::header(&letters[0], "dlq-reason").unwrap_or_default();
    assert!(reason.contains("not a Debezium change event"), "{reason}");
    assert_eq!(
        system
            .get(&format!("/orders/{gone}"), "admin", &["admin"])
            .await
            .0,
        StatusCode::NOT_FOUND,
        "a replayed insert brought a deleted order back"
    );
    // The service is still healthy and applying.
    let (status, _) = system.get(&format!("/orders/{kept}"), "carol", &[]).await;
    assert_eq!(status, StatusCode::OK);
    system.stop().await;
}

/// The views hold exactly the source rows: every order, line, stock and reservation row with
/// the same values and revisions, and the summaries are the sums over them.
async fn views_equal_sources(system: &System) -> Result<(), String> {
    let orders = system.orders_cdc_pool().await;
    let inventory = sqlx::PgPool::connect(system.inventory.database_url())
        .await
        .unwrap();
    let views = system.projection_db.pool().await;
    let rows = |pool: sqlx::PgPool, sql: &'static str| async move {
        sqlx::query_scalar::<_, String>(sql)
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let pairs = [
        (
            rows(orders.clone(), "SELECT concat_ws('|', id, user_id, status, revision, total_cents) FROM orders ORDER BY id").await,
            rows(views.clone(), "SELECT concat_ws('|', order_id, user_id, status, revision, total_cents) FROM order_view ORDER BY order_id").await,
            "orders",
        ),
        (
            rows(orders.clone(), "SELECT concat_ws('|', order_id, line_no, sku, quantity, unit_price_cents) FROM order_items ORDER BY order_id, line_no").await,
            rows(views.clone(), "SELECT concat_ws('|', order_id, line_no, sku, quantity, unit_price_cents) FROM order_line_view ORDER BY order_id, line_no").await,
            "order_items",
        ),
        (
            rows(inventory.clone(), "SELECT concat_ws('|', sku, available, reserved, revision) FROM stock ORDER BY sku").await,
            rows(views.clone(), "SELECT concat_ws('|', sku, available, reserved, revision) FROM stock_view ORDER BY sku").await,
            "stock",
        ),
        (
            rows(inventory.clone(), "SELECT concat_ws('|', order_id, status, revision) FROM reservations ORDER BY order_id").await,
            rows(views.clone(), "SELECT concat_ws('|', order_id, status, revision) FROM reservation_view ORDER BY order_id").await,
            "reservations",
        ),
        (
            rows(orders.clone(), "SELECT concat_ws('|', user_id, count(*), count(*) FILTER (WHERE status = 'CONFIRMED'), \
                 COALESCE(sum(total_cents) FILTER (WHERE status = 'CONFIRMED'), 0)) FROM orders GROUP BY user_id ORDER BY user_id").await,
            rows(views.clone(), "SELECT concat_ws('|', user_id, orders, confirmed, spent_cents) FROM customer_summary WHERE orders > 0 ORDER BY user_id").await,
            "customer summaries",
        ),
        (
            rows(orders.clone(), "SELECT concat_ws('|', sku, count(*), sum(quantity)) FROM order_items GROUP BY sku ORDER BY sku").await,
            rows(views.clone(), "SELECT concat_ws('|', sku, order_lines, units_ordered) FROM sku_orders WHERE order_lines > 0 ORDER BY sku").await,
            "units per SKU",
        ),
    ];
    for (source, view, what) in pairs {
        if source != view {
            let missing = source
                .iter()
                .filter(|r| !view.contains(r))
                .take(3)
                .collect::<Vec<_>>();
            let extra = view
                .iter()
                .filter(|r| !source.contains(r))
                .take(3)
                .collect::<Vec<_>>();
            return Err(format!(
                "{what}: {} source rows, {} view rows; e.g. not in the view {missing:?}, not in the source {extra:?}",
                source.len(),
                view.len()
            ));
        }
    }
    Ok(())
}

/// Waits (3 minutes at most) until no order is PLACED at the source any more and the views
/// equal the source tables.
async fn wait_settled_and_equal(system: &System) {
    let source = system.orders_cdc_pool().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PLACED'")
            .fetch_one(&source)
            .await
            .unwrap();
        let result = views_equal_sources(system).await;
        if placed == 0 && result.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{placed} orders still PLACED; views: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// kill -9 of projection-service in the middle of a burst of 500 orders, then a restart: the
/// views end up equal to the source tables, row by row.
#[tokio::test]
async fn after_kill_9_mid_burst_the_views_equal_the_sources() {
    const ORDERS: usize = 500;
    let mut system = System::start().await;
    // The in-process projection of `start` goes; a process takes over the same group.
    system.stop_projection().await;
    system.start_projection_process().await;
    let mut skus = Vec::new();
    for i in 0..5 {
        skus.push(system.stocked_sku(&format!("K{i}"), 100_000).await);
    }
    let placing = {
        let (client, address, skus) = (
            system.client.clone(),
            system.orders.address.clone(),
            skus.clone(),
        );
        tokio::spawn(async move {
            let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut writers = Vec::new();
            for _ in 0..8 {
                let (client, address, skus, next) =
                    (client.clone(), address.clone(), skus.clone(), next.clone());
                writers.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= ORDERS {
                            return;
                        }
                        let user = format!("burst-{}", i % 7);
                        let body = json!({"customer": {"name": "Burst", "email": "burst@example.com"}, "currency": "EUR",
                            "lines": [{"sku": skus[i % skus.len()], "quantity": 1 + (i % 3), "unit_price_cents": 100},
                                      {"sku": skus[(i + 1) % skus.len()], "quantity": 1, "unit_price_cents": 250}]});
                        // As a careful client: an Idempotency-Key, and a retry on 503.
                        let key = format!("burst-{i}");
                        let mut attempts = 0;
                        loop {
                            let response = client
                                .post(format!("{address}/orders"))
                                .bearer_auth(token(&user, &[]))
                                .header("Idempotency-Key", &key)
                                .json(&body)
                                .send()
                                .await
                                .unwrap();
                            let status = response.status();
                            if status == StatusCode::SERVICE_UNAVAILABLE && attempts < 10 {
                                attempts += 1;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                            assert_eq!(status, StatusCode::CREATED, "{}", response.text().await.unwrap_or_default());
                            break;
                        }
                    }
                }));
            }
            for w in writers {
                w.await.unwrap();
            }
        })
    };
    // Kill once the projection is well into the burst.
    let deadline = tokio::time::Instant::now() + WAIT;
    while system.metric("projection_changes_total").await < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projection did not get going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    system.kill_projection();
    tokio::time::sleep(Duration::from_secs(1)).await;
    system.start_projection_process().await;
    placing.await.unwrap();

    // Every order decided at the source, then the views caught up.
    wait_settled_and_equal(&system).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM order_view")
        .fetch_one(&system.projection_db.pool().await)
        .await
        .unwrap();
    assert_eq!(count, ORDERS as i64);
    system.stop().await;
}

/// `make projection-rebuild` (`pitfall-lab projection rebuild`) while orders keep coming: the
/// old views answer throughout, and after the switch the views equal the source tables.
#[tokio::test]
async fn a_rebuild_during_a_live_burst_ends_with_views_equal_to_the_sources() {
    let system = System::start().await;
    let sku = system.stocked_sku("R", 100_000).await;
    let first = system.place("dave", &[(&sku, 1)]).await;
    for _ in 0..20 {
        system.place("dave", &[(&sku, 2), (&sku, 1)]).await;
    }
    system
        .wait_view(&format!("/orders/{first}"), |v| v["status"] == "CONFIRMED")
        .await;

    // The burst, and reads of the live views, during the whole rebuild.
    let burst = {
        let (client, address, sku) = (
            system.client.clone(),
            system.orders.address.clone(),
            sku.clone(),
        );
        tokio::spawn(async move {
            for i in 0..150 {
                let response = client
                    .post(format!("{address}/orders"))
                    .bearer_auth(token(&format!("burst-{}", i % 5), &[]))
                    .json(&json!({"customer": {"name": "B", "email": "b@example.com"}, "currency": "EUR",
                                  "lines": [{"sku": sku, "quantity": 1, "unit_price_cents": 10}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let reads = {
        let (client, address, first) = (
            system.client.clone(),
            system.projection_address.clone(),
            first.clone(),
        );
        tokio::spawn(async move {
            let mut served = 0;
            for _ in 0..100 {
                let response = client
                    .get(format!("{address}/orders/{first}"))
                    .bearer_auth(token("dave", &[]))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    response.status(),
                    StatusCode::OK,
                    "the live view must answer during the rebuild"
                );
                served += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            served
        })
    };
    let lab = eda_test_support::process::sibling_binary(
        env!("CARGO_BIN_EXE_projection-service"),
        "pitfall-lab",
    );
    let out = tokio::process::Command::new(lab)
        .args([
            "projection",
            "rebuild",
            "--url",
            &system.projection_address,
            "--orders-db",
            &database_name(&system.orders),
            "--inventory-db",
            &database_name(&system.inventory),
            "--secret",
            SECRET,
            "--timeout-secs",
            "300",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "rebuild failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("switched in"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    burst.await.unwrap();
    assert_eq!(reads.await.unwrap(), 100);
    wait_settled_and_equal(&system).await;
    // The old generation was kept aside, the new one serves.
    let retired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'retired_%'")
            .fetch_one(&system.projection_db.pool().await)
            .await
            .unwrap();
    assert_eq!(retired, 1);
    system.stop().await;
}
