use std::time::Duration;

use eda_http::config::ServiceSettings;
use eda_idempotent_consumer::Dedupe;
use eda_test_support::{Server, Stack, TempDatabase, create_topic, create_topic_named, unique};
use reqwest::Response;
use serde_json::Value;

pub const SECRET: &str = "test-secret-0123456789abcdef";

pub fn token(user: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    eda_http::issue_token(SECRET, user, &roles, Duration::from_secs(600)).unwrap()
}

/// The settings every service has, for a service on `db` with a free port and [`SECRET`].
fn service_settings(db: &TempDatabase, stack: &Stack, max_body_bytes: usize) -> ServiceSettings {
    ServiceSettings {
        http_host: [127, 0, 0, 1].into(),
        http_port: 0,
        database_url: db.url.clone().into(),
        kafka_bootstrap_servers: stack.kafka_bootstrap_servers.clone(),
        jwt_secret: SECRET.into(),
        max_body_bytes,
        shutdown_timeout: Duration::from_secs(10),
        propagation: eda_context::Propagation::On,
        baggage: Default::default(),
        consumer_stuck_after: std::time::Duration::from_secs(60),
    }
}

/// A running service, and the database it owns.
pub struct Running {
    pub address: String,
    server: Server,
    /// Kept alive for the service; dropped (and the database with it) at the end.
    _db: TempDatabase,
}

impl Running {
    /// The service's own database (for tests that inspect or break it).
    pub fn database_url(&self) -> &str {
        &self._db.url
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// Topics one test's services share.
pub struct Topics {
    pub orders: String,
    pub inventory: String,
}

pub async fn topics(stack: &Stack) -> Topics {
    let orders = create_topic(stack, 6).await;
    let inventory = create_topic(stack, 6).await;
    create_topic_named(stack, &format!("{orders}.dlq"), 1).await;
    create_topic_named(stack, &format!("{inventory}.dlq"), 1).await;
    Topics { orders, inventory }
}

pub async fn spawn_inventory(stack: &Stack, topics: &Topics, dedupe: Dedupe) -> Running {
    spawn_inventory_with(stack, topics, |s| s.dedupe = dedupe).await
}

/// inventory-service with the test defaults, changed by `tweak`.
pub async fn spawn_inventory_with(
    stack: &Stack,
    topics: &Topics,
    tweak: impl FnOnce(&mut inventory_service::configuration::Settings),
) -> Running {
    let db = TempDatabase::create(stack).await;
    let mut settings = inventory_service::configuration::Settings {
        service: service_settings(&db, stack, 16 * 1024),
        order_events_topic: topics.orders.clone(),
        inventory_events_topic: topics.inventory.clone(),
        consumer_group: unique("inventory"),
        dedupe: Dedupe::EventId,
        claim_check: eda_claim_check::Settings::from_env().expect("claim-check settings"),
    };
    tweak(&mut settings);
    let app = inventory_service::startup::Application::build(settings)
        .await
        .expect("inventory-service builds");
    let server = Server::spawn(app.port(), |shutdown| app.run_until_stopped(shutdown));
    Running {
        address: server.address.clone(),
        server,
        _db: db,
    }
}

pub async fn spawn_orders(stack: &Stack, topics: &Topics) -> Running {
    spawn_orders_with(stack, topics, |_| {}).await
}

/// order-service with the test defaults, changed by `tweak`.
pub async fn spawn_orders_with(
    stack: &Stack,
    topics: &Topics,
    tweak: impl FnOnce(&mut order_service::configuration::Settings),
) -> Running {
    use order_service::configuration::{PublishMode, RelayMode, Settings};
    let db = TempDatabase::create(stack).await;
    let mut settings = Settings {
        service: service_settings(&db, stack, 64 * 1024),
        order_events_topic: topics.orders.clone(),
        inventory_events_topic: topics.inventory.clone(),
        consumer_group: unique("orders"),
        dedupe: Dedupe::EventId,
        publish_mode: PublishMode::Outbox,
        relay_mode: RelayMode::InProcess,
        relay_poll_interval: Duration::from_millis(200),
        outbox_retention: Duration::from_secs(3600),
        claim_check: eda_claim_check::Settings::from_env().expect("claim-check settings"),
        max_order_body_bytes: 16 * 1024 * 1024,
    };
    tweak(&mut settings);
    let app = order_service::startup::Application::build(settings)
        .await
        .expect("order-service builds");
    let server = Server::spawn(app.port(), |shutdown| app.run_until_stopped(shutdown));
    Running {
        address: server.address.clone(),
        server,
        _db: db,
    }
}

pub async fn set_stock(
    client: &reqwest::Client,
    inventory: &Running,
    sku: &str,
    available: i64,
) -> Response {
    set_stock_at(client, &inventory.address, sku, available).await
}

/// [`set_stock`] on the inventory-service at `address` (a service process, say).
pub async fn set_stock_at(
    client: &reqwest::Client,
    address: &str,
    sku: &str,
    available: i64,
) -> Response {
    client
        .put(format!("{address}/inventory/{sku}"))
        .bearer_auth(token("admin", &["admin"]))
        .json(&serde_json::json!({ "available": available }))
        .send()
        .await
        .unwrap()
}

pub async fn stock(client: &reqwest::Client, inventory: &Running, sku: &str) -> Value {
    stock_at(client, &inventory.address, sku).await
}

/// [`stock`] from the inventory-service at `address`.
pub async fn stock_at(client: &reqwest::Client, address: &str, sku: &str) -> Value {
    client
        .get(format!("{address}/inventory/{sku}"))
        .bearer_auth(token("alice", &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET /orders/{id}` as alice.
pub async fn order(client: &reqwest::Client, orders: &Running, id: &str) -> Value {
    order_at(client, &orders.address, id).await
}

/// [`order`] from the order-service at `address`.
pub async fn order_at(client: &reqwest::Client, address: &str, id: &str) -> Value {
    client
        .get(format!("{address}/orders/{id}"))
        .bearer_auth(token("alice", &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (at most `within`) until alice's order `id` has `status`; returns it.
pub async fn wait_status(
    client: &reqwest::Client,
    orders: &Running,
    id: &str,
    status: &str,
    within: Duration,
) -> Value {
    wait_status_at(client, &orders.address, id, status, within).await
}

/// [`wait_status`] on the order-service at `address`.
pub async fn wait_status_at(
    client: &reqwest::Client,
    address: &str,
    id: &str,
    status: &str,
    within: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = order_at(client, address, id).await;
        if now["status"] == status {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "order {id} is {} not {status}",
            now["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A B2B order of `lines` lines of one unit each, over the SKUs `<prefix>-00` ..
/// `<prefix>-<skus - 1>` in turn: a multi-megabyte `OrderPlaced` at tens of thousands of lines.
pub fn bulk_order(prefix: &str, lines: usize, skus: usize) -> Value {
    let lines: Vec<Value> = (0..lines)
        .map(|i| serde_json::json!({"sku": format!("{prefix}-{:02}", i % skus), "quantity": 1, "unit_price_cents": 100}))
        .collect();
    serde_json::json!({"customer": {"name": "Bulk Buyer", "email": "b2b@example.com"}, "currency": "EUR", "lines": lines})
}

/// The service's `/metrics` text.
pub async fn metrics_text(client: &reqwest::Client, service: &Running) -> String {
    client
        .get(format!("{}/metrics", service.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of the samples of metric `name` (all label sets).
pub async fn metric(client: &reqwest::Client, service: &Running, name: &str) -> u64 {
    metrics_text(client, service)
        .await
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
