//! `pitfall-lab audit` on the real system: order-service and inventory-service on scratch
//! databases and topics, Debezium table connectors, projection-service on them. Real flows
//! leave the system clean (exit 0); then each kind of violation is made from outside, the way
//! a bug would leave it, and the audit names exactly that check (exit 1).

use std::collections::BTreeMap;
use std::time::Duration;

use eda_http::config::ServiceSettings;
use eda_test_support::{CdcConnector, Server, Stack, TempDatabase, produce, unique};
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "../../../inventory-service/tests/api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use helpers::{Running, SECRET, set_stock, spawn_inventory_with, spawn_orders_with, token};

const WAIT: Duration = Duration::from_secs(90);

/// The three services, their connectors and everything the audit is pointed at.
struct System {
    stack: Stack,
    client: reqwest::Client,
    topics: helpers::Topics,
    orders: Running,
    inventory: Running,
    orders_cdc: Option<CdcConnector>,
    inventory_cdc: Option<CdcConnector>,
    projection: Option<Server>,
    projection_settings: projection_service::configuration::Settings,
    projection_db: TempDatabase,
    groups: [String; 3],
}

/// What one audit run said.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    json: Value,
}

impl Outcome {
    /// Violations per check that ran.
    fn counts(&self) -> BTreeMap<String, u64> {
        self.json["checks"]
            .as_object()
            .map(|checks| {
                checks
                    .iter()
                    .map(|(name, c)| (name.clone(), c["violations"].as_u64().unwrap()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether an example of `check` names `what`.
    fn example_names(&self, check: &str, what: &str) -> bool {
        self.json["checks"][check]["examples"]
            .as_array()
            .is_some_and(|examples| {
                examples.iter().any(|e| {
                    e["subject"].as_str().unwrap_or("").contains(what)
                        || e["detail"].as_str().unwrap_or("").contains(what)
                })
            })
    }
}

impl System {
    async fn start() -> Self {
        let stack = Stack::from_env();
        let topics = helpers::topics(&stack).await;
        let groups = [unique("orders"), unique("inventory"), unique("projection")];
        let (order_group, inventory_group) = (groups[0].clone(), groups[1].clone());
        let orders = spawn_orders_with(&stack, &topics, |s| s.consumer_group = order_group).await;
        let inventory =
            spawn_inventory_with(&stack, &topics, |s| s.consumer_group = inventory_group).await;
        let name = |r: &Running| r.database_url().rsplit('/').next().unwrap().to_owned();
        let orders_cdc = CdcConnector::register(
            &stack,
            &name(&orders),
            &["public.orders", "public.order_items"],
        )
        .await;
        let inventory_cdc = CdcConnector::register(
            &stack,
            &name(&inventory),
            &["public.stock", "public.reservations"],
        )
        .await;
        let projection_db = TempDatabase::create(&stack).await;
        let mut cdc_topics = orders_cdc.topics.clone();
        cdc_topics.extend(inventory_cdc.topics.clone());
        let settings = projection_service::configuration::Settings {
            service: ServiceSettings {
                http_host: [127, 0, 0, 1].into(),
                http_port: 0,
                database_url: projection_db.url.clone().into(),
                kafka_bootstrap_servers: stack.kafka_bootstrap_servers.clone(),
                jwt_secret: SECRET.into(),
                max_body_bytes: 16 * 1024,
                shutdown_timeout: Duration::from_secs(10),
                propagation: eda_context::Propagation::On,
                baggage: Default::default(),
                consumer_stuck_after: Duration::from_secs(60),
            },
            cdc_topics,
            consumer_group: groups[2].clone(),
            max_wait: Duration::from_secs(10),
        };
        let projection = Self::spawn_projection(settings.clone()).await;
        Self {
            stack,
            client: reqwest::Client::new(),
            topics,
            orders,
            inventory,
            orders_cdc: Some(orders_cdc),
            inventory_cdc: Some(inventory_cdc),
            projection: Some(projection),
            projection_settings: settings,
            projection_db,
            groups,
        }
    }

    async fn spawn_projection(settings: projection_service::configuration::Settings) -> Server {
        let app = projection_service::startup::Application::build(settings)
            .await
            .expect("projection-service builds");
        Server::spawn(app.port(), |shutdown| app.run_until_stopped(shutdown))
    }

    fn cdc_topics(&self) -> String {
        let mut topics = self.orders_cdc.as_ref().unwrap().topics.clone();
        topics.extend(self.inventory_cdc.as_ref().unwrap().topics.clone());
        topics.join(",")
    }

    /// `pitfall-lab audit` pointed at this system, with `extra` arguments.
    async fn audit(&self, extra: &[&str]) -> Outcome {
        let json_path = std::env::temp_dir().join(format!("{}.json", unique("audit")));
        let cdc_topics = self.cdc_topics();
        let json_arg = json_path.display().to_string();
        let mut args = vec![
            "audit",
            "--orders-db",
            self.orders.database_url(),
            "--inventory-db",
            self.inventory.database_url(),
            "--projection-db",
            &self.projection_db.url,
            "--bootstrap",
            &self.stack.kafka_bootstrap_servers,
            "--order-topic",
            &self.topics.orders,
            "--inventory-topic",
            &self.topics.inventory,
            "--cdc-topics",
            &cdc_topics,
            "--order-group",
            &self.groups[0],
            "--inventory-group",
            &self.groups[1],
            "--projection-group",
            &self.groups[2],
            "--json",
            &json_arg,
        ];
        args.extend_from_slice(extra);
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pitfall-lab"))
            .args(&args)
            .output()
            .await
            .expect("pitfall-lab runs");
        let json = std::fs::read(&json_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let _ = std::fs::remove_file(&json_path);
        Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            json,
        }
    }

    /// `POST /orders` as `user`; the new order's id.
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
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn cancel(&self, user: &str, id: &str) {
        let response = self
            .client
            .post(format!("{}/orders/{id}/cancel", self.orders.address))
            .bearer_auth(token(user, &[]))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// Waits until `user`'s order `id` is `status`.
    async fn wait_status(&self, user: &str, id: &str, status: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let order: Value = self
                .client
                .get(format!("{}/orders/{id}", self.orders.address))
                .bearer_auth(token(user, &[]))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(Value::Null);
            if order["status"] == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {id} is {} not {status}",
                order["status"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sql(&self, url: &str, statement: &'static str, id: Option<Uuid>) {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let mut query = sqlx::query(statement);
        if let Some(id) = id {
            query = query.bind(id);
        }
        let done = query.execute(&pool).await.unwrap();
        assert!(done.rows_affected() > 0, "{statement} changed nothing");
        pool.close().await;
    }

    /// Produces an event with the contract's headers.
    async fn event(
        &self,
        topic: &str,
        aggregate: (&str, &str),
        revision: i64,
        event_type: &str,
        body: &Value,
    ) {
        let (aggregate_type, id) = aggregate;
        let event_id = Uuid::now_v7().to_string();
        let revision = revision.to_string();
        let occurred = chrono::Utc::now().to_rfc3339();
        produce(
            &self.stack,
            topic,
            id,
            &[
                ("event-id", &event_id),
                ("event-type", event_type),
                ("aggregate-type", aggregate_type),
                ("aggregate-id", id),
                ("revision", &revision),
                ("occurred-at", &occurred),
                ("content-type", "application/json"),
                ("schema-version", "1"),
            ],
            body.to_string().as_bytes(),
        )
        .await;
    }

    async fn stop(mut self) {
        if let Some(projection) = self.projection.take() {
            projection.stop().await;
        }
        let pool = sqlx::PgPool::connect(self.orders.database_url())
            .await
            .unwrap();
        for connector in [self.orders_cdc.take(), self.inventory_cdc.take()]
            .into_iter()
            .flatten()
        {
            connector.remove(&pool).await;
        }
        pool.close().await;
        self.orders.stop().await;
        self.inventory.stop().await;
    }
}

/// Asserts that the audit exited 1 and found exactly `expected` (per check), and that an
/// example of `check` names `what`.
fn assert_found(outcome: &Outcome, expected: &BTreeMap<String, u64>, check: &str, what: &str) {
    // Shown with --nocapture: what a user of `make audit` would read.
    eprintln!("{}", outcome.stdout);
    let context = format!("stdout:\n{}\nstderr:\n{}", outcome.stdout, outcome.stderr);
    assert_eq!(outcome.code, Some(1), "{context}");
    assert_eq!(&outcome.counts(), expected, "{context}");
    assert!(
        outcome.example_names(check, what),
        "no example of {check} names {what}: {context}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_flows_audit_clean_and_each_injected_violation_is_named() {
    let mut system = System::start().await;
    for (sku, available) in [("SKU-A", 100), ("SKU-B", 1), ("SKU-C", 10)] {
        let response = set_stock(&system.client, &system.inventory, sku, available).await;
        assert!(response.status().is_success(), "{}", response.status());
    }
    // Confirmed, rejected, cancelled after confirmation, cancelled at once.
    let o1 = system.place("alice", &[("SKU-A", 2)]).await;
    let o2 = system.place("alice", &[("SKU-A", 1), ("SKU-B", 1)]).await;
    let o3 = system.place("bob", &[("SKU-B", 5)]).await;
    let o4 = system.place("bob", &[("SKU-A", 3)]).await;
    let o5 = system.place("carol", &[("SKU-A", 1)]).await;
    system.cancel("carol", &o5).await;
    system.wait_status("alice", &o1, "CONFIRMED").await;
    system.wait_status("alice", &o2, "CONFIRMED").await;
    system.wait_status("bob", &o3, "REJECTED").await;
    system.wait_status("bob", &o4, "CONFIRMED").await;
    system.cancel("bob", &o4).await;
    system.wait_status("bob", &o4, "CANCELLED").await;

    let clean = system.audit(&["--settle", "90"]).await;
    eprintln!("{}", clean.stdout);
    let context = format!("stdout:\n{}\nstderr:\n{}", clean.stdout, clean.stderr);
    assert_eq!(clean.code, Some(0), "{context}");
    assert_eq!(clean.json["violations"], 0, "{context}");
    assert!(
        clean.stdout.starts_with("pitfall-lab audit: clean"),
        "{context}"
    );
    let mut expected: BTreeMap<String, u64> = [
        "missing-events",
        "orphan-events",
        "duplicate-effects",
        "order",
        "stock",
        "views",
    ]
    .into_iter()
    .map(|c| (c.to_owned(), 0))
    .collect();
    assert_eq!(clean.counts(), expected, "{context}");
    assert!(
        clean.json["sources"]["topics"][&system.topics.orders]["records"].as_u64() >= Some(8),
        "{context}"
    );
    let settle: &[&str] = &["--settle", "10"];

    // With projection-service stopped, a new order's rows wait on the CDC topics: in flight,
    // not a violation; but the system does not settle (exit code 3).
    system.projection.take().unwrap().stop().await;
    let o6 = system.place("alice", &[("SKU-A", 1)]).await;
    system.wait_status("alice", &o6, "CONFIRMED").await;
    let unsettled = system.audit(&["--settle", "3"]).await;
    eprintln!("{}", unsettled.stdout);
    assert_eq!(
        unsettled.code,
        Some(3),
        "{}\n{}",
        unsettled.stdout,
        unsettled.stderr
    );
    assert_eq!(unsettled.json["violations"], 0, "{}", unsettled.stdout);
    assert_eq!(unsettled.json["settled"], false);
    assert!(
        unsettled.json["in_flight"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains(&system.groups[2])),
        "{}",
        unsettled.stdout
    );
    system.projection = Some(System::spawn_projection(system.projection_settings.clone()).await);

    // 1. An order committed without its outbox row: its event never comes.
    let lost = Uuid::now_v7();
    system
        .sql(
            system.orders.database_url(),
            "WITH o AS (INSERT INTO orders (id, user_id, customer_name, customer_email, currency, \
               status, total_cents, revision) VALUES ($1, 'mallory', 'M', 'm@example.com', 'EUR', \
               'PLACED', 250, 1) RETURNING id) \
             INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_cents) \
             SELECT id, 1, 'SKU-A', 1, 250 FROM o",
            Some(lost),
        )
        .await;
    *expected.get_mut("missing-events").unwrap() += 1;
    let outcome = system.audit(settle).await;
    assert_found(&outcome, &expected, "missing-events", &lost.to_string());
    // The other checks can be run alone, and are clean.
    let others = system.audit(&["--checks", "2,3,4,stock,views"]).await;
    assert_eq!(others.code, Some(0), "{}\n{}", others.stdout, others.stderr);
    assert!(others.json["checks"].get("missing-events").is_none());

    // 2. An event for an order that does not exist.
    let ghost = Uuid::now_v7().to_string();
    system
        .event(
            &system.topics.orders,
            ("Order", &ghost),
            2,
            "OrderConfirmed",
            &json!({"order_id": ghost}),
        )
        .await;
    *expected.get_mut("orphan-events").unwrap() += 1;
    assert_found(
        &system.audit(settle).await,
        &expected,
        "orphan-events",
        &ghost,
    );

    // 3. A reservation recorded twice: its row changed again, and announced again.
    let o1_id = Uuid::parse_str(&o1).unwrap();
    system
        .sql(
            system.inventory.database_url(),
            "UPDATE reservations SET revision = revision + 1, updated_at = now() WHERE order_id = $1",
            Some(o1_id),
        )
        .await;
    system
        .event(
            &system.topics.inventory,
            ("Reservation", &o1),
            2,
            "InventoryReserved",
            &json!({"order_id": o1, "lines": [{"sku": "SKU-A", "quantity": 2}]}),
        )
        .await;
    *expected.get_mut("duplicate-effects").unwrap() += 1;
    assert_found(
        &system.audit(settle).await,
        &expected,
        "duplicate-effects",
        &o1,
    );

    // 4. An order's events out of revision order on its partition (3 then 2).
    let reordered = Uuid::now_v7();
    let id = reordered.to_string();
    system
        .sql(
            system.orders.database_url(),
            "WITH o AS (INSERT INTO orders (id, user_id, customer_name, customer_email, currency, \
               status, total_cents, revision) VALUES ($1, 'mallory', 'M', 'm@example.com', 'EUR', \
               'CANCELLED', 250, 3) RETURNING id) \
             INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_cents) \
             SELECT id, 1, 'SKU-A', 1, 250 FROM o",
            Some(reordered),
        )
        .await;
    let placed = json!({"order_id": id, "user_id": "mallory", "lines": [{"sku": "SKU-A", "quantity": 1, "unit_price_cents": 250}]});
    system
        .event(
            &system.topics.orders,
            ("Order", &id),
            1,
            "OrderPlaced",
            &placed,
        )
        .await;
    system
        .event(
            &system.topics.orders,
            ("Order", &id),
            3,
            "OrderCancelled",
            &json!({"order_id": id}),
        )
        .await;
    system
        .event(
            &system.topics.orders,
            ("Order", &id),
            2,
            "OrderConfirmed",
            &json!({"order_id": id}),
        )
        .await;
    *expected.get_mut("order").unwrap() += 1;
    assert_found(&system.audit(settle).await, &expected, "order", &id);

    // 5. A stock row tampered with: two units moved to reserved that no reservation holds.
    system
        .sql(
            system.inventory.database_url(),
            "UPDATE stock SET available = available - 2, reserved = reserved + 2, \
             revision = revision + 1, updated_at = now() WHERE sku = 'SKU-C'",
            None,
        )
        .await;
    *expected.get_mut("stock").unwrap() += 1;
    assert_found(&system.audit(settle).await, &expected, "stock", "SKU-C");

    // 6. A view row and a summary tampered with.
    let o2_id = Uuid::parse_str(&o2).unwrap();
    system
        .sql(
            &system.projection_db.url,
            "UPDATE order_view SET status = 'REJECTED' WHERE order_id = $1",
            Some(o2_id),
        )
        .await;
    system
        .sql(
            &system.projection_db.url,
            "UPDATE customer_summary SET spent_cents = spent_cents + 1 WHERE user_id = 'bob'",
            None,
        )
        .await;
    *expected.get_mut("views").unwrap() += 2;
    let outcome = system.audit(settle).await;
    assert_found(&outcome, &expected, "views", &o2);
    assert!(
        outcome.example_names("views", "customer_summary bob"),
        "{}",
        outcome.stdout
    );
    assert!(outcome.stdout.contains("[6] views"), "{}", outcome.stdout);

    // Restricted to some checks, the report holds only those.
    let some = system.audit(&["--checks", "4,views"]).await;
    assert_eq!(some.code, Some(1));
    let names: Vec<String> = some.counts().into_keys().collect();
    assert_eq!(names, ["order", "views"]);

    // A database that cannot be reached is not a verdict: exit code 2.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pitfall-lab"))
        .args([
            "audit",
            "--checks",
            "1",
            "--orders-db",
            "postgres://eda:eda@127.0.0.1:1/nowhere",
            "--inventory-db",
            "postgres://eda:eda@127.0.0.1:1/nowhere",
            "--bootstrap",
            &system.stack.kafka_bootstrap_servers,
            "--order-topic",
            &system.topics.orders,
            "--inventory-topic",
            &system.topics.inventory,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("database"));

    system.stop().await;
}
