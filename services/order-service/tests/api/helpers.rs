use std::time::Duration;

use eda_test_support::{Server, Stack, TempDatabase, create_topic};
use order_service::configuration::{PublishMode, RelayMode, ServiceSettings, Settings};
use order_service::startup::Application;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

pub const SECRET: &str = "test-secret-0123456789abcdef";

pub struct TestApp {
    pub address: String,
    pub stack: Stack,
    pub topic: String,
    pub db: TempDatabase,
    pub client: reqwest::Client,
    server: Server,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(PublishMode::Outbox).await
}

pub async fn spawn_app_with(publish_mode: PublishMode) -> TestApp {
    spawn_app_configured(publish_mode, RelayMode::InProcess).await
}

pub async fn spawn_app_configured(publish_mode: PublishMode, relay_mode: RelayMode) -> TestApp {
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let topic = create_topic(&stack, 6).await;
    let inventory_topic = create_topic(&stack, 6).await;
    eda_test_support::create_topic_named(&stack, &format!("{inventory_topic}.dlq"), 1).await;
    let settings = Settings {
        service: ServiceSettings {
            http_host: [127, 0, 0, 1].into(),
            http_port: 0,
            database_url: db.url.clone().into(),
            kafka_bootstrap_servers: stack.kafka_bootstrap_servers.clone(),
            jwt_secret: SECRET.into(),
            max_body_bytes: 64 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            propagation: eda_context::Propagation::On,
            baggage: Default::default(),
            consumer_stuck_after: std::time::Duration::from_secs(60),
        },
        order_events_topic: topic.clone(),
        inventory_events_topic: inventory_topic.clone(),
        consumer_group: eda_test_support::unique("order-service"),
        dedupe: eda_idempotent_consumer::Dedupe::EventId,
        publish_mode,
        relay_mode,
        relay_poll_interval: Duration::from_millis(200),
        outbox_retention: Duration::from_secs(3600),
        claim_check: eda_claim_check::Settings::from_env().expect("claim-check settings"),
        max_order_body_bytes: 16 * 1024 * 1024,
    };
    let app = Application::build(settings).await.expect("the app builds");
    let server = Server::spawn(app.port(), |shutdown| app.run_until_stopped(shutdown));
    let address = server.address.clone();
    TestApp {
        address,
        stack,
        topic,
        db,
        client: reqwest::Client::new(),
        server,
    }
}

/// A valid bearer token for `user`.
pub fn token(user: &str) -> String {
    order_service::auth::issue_token(SECRET, user, &[], Duration::from_secs(600)).unwrap()
}

impl TestApp {
    pub async fn post_order(&self, user: &str, body: &Value) -> Response {
        self.client
            .post(format!("{}/orders", self.address))
            .bearer_auth(token(user))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, user: &str, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, user: &str, path: &str) -> Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let pool = self.db.pool().await;
        let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    }

    /// Graceful stop, bounded.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

pub fn order_body() -> Value {
    json!({
        "customer": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "currency": "EUR",
        "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}, {"sku": "SKU-2", "quantity": 1, "unit_price_cents": 500}]
    })
}

pub async fn problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    body
}
