//! projection-service's HTTP API on its own (own database, a change topic of its own with its
//! `.dlq`, no connectors): the generated `/openapi.json` matches the real router, and input
//! that schemathesis (`make fuzz`) found answering 500 is a 400 problem now.

use std::time::Duration;

use eda_http::config::ServiceSettings;
use eda_http::openapi::{NO_ROUTE_DETAIL, probes};
use eda_test_support::{Server, Stack, TempDatabase, create_topic, create_topic_named, unique};
use reqwest::StatusCode;
use serde_json::Value;

const SECRET: &str = "test-secret-0123456789abcdef";

fn token(user: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    eda_http::issue_token(SECRET, user, &roles, Duration::from_secs(600)).unwrap()
}

struct App {
    address: String,
    client: reqwest::Client,
    server: Server,
    _db: TempDatabase,
}

impl App {
    async fn spawn() -> Self {
        let stack = Stack::from_env();
        let db = TempDatabase::create(&stack).await;
        let topic = create_topic(&stack, 1).await;
        create_topic_named(&stack, &format!("{topic}.dlq"), 1).await;
        let settings = projection_service::configuration::Settings {
            service: ServiceSettings {
                http_host: [127, 0, 0, 1].into(),
                http_port: 0,
                database_url: db.url.clone().into(),
                kafka_bootstrap_servers: stack.kafka_bootstrap_servers.clone(),
                jwt_secret: SECRET.into(),
                max_body_bytes: 16 * 1024,
                shutdown_timeout: Duration::from_secs(10),
                propagation: eda_context::Propagation::On,
                baggage: Default::default(),
                consumer_stuck_after: Duration::from_secs(60),
            },
            cdc_topics: vec![topic],
            consumer_group: unique("projection"),
            max_wait: Duration::from_secs(1),
        };
        let app = projection_service::startup::Application::build(settings)
            .await
            .expect("projection-service builds");
        let server = Server::spawn(app.port(), |shutdown| app.run_until_stopped(shutdown));
        Self {
            address: server.address.clone(),
            client: reqwest::Client::new(),
            server,
            _db: db,
        }
    }

    /// `GET path` as `user` with `roles`: status, Content-Type and body.
    async fn get(&self, path: &str, user: &str, roles: &[&str]) -> (StatusCode, String, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .bearer_auth(token(user, roles))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (
            status,
            content_type,
            response.json().await.unwrap_or(Value::Null),
        )
    }
}

#[tokio::test]
async fn the_served_document_is_generated_and_matches_the_router() {
    let app = App::spawn().await;
    let generated = projection_service::routes::openapi();
    let (status, _, served) = app.get("/openapi.json", "alice", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, serde_json::to_value(&generated).unwrap());
    assert_eq!(eda_http::openapi::lint(&generated), Vec::<String>::new());

    for probe in probes(&generated) {
        // Without the admin role: the /admin/ routes answer 403 (or 415 before that, for the
        // POST without a body), so the check cannot start a rebuild.
        let response = app
            .client
            .request(
                probe.method.clone(),
                format!("{}{}", app.address, probe.path),
            )
            .bearer_auth(token("alice", &[]))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        if probe.documented {
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{probe:?}");
            assert!(!body.contains(NO_ROUTE_DETAIL), "{probe:?} hit no route");
        } else {
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{probe:?}: {body}");
        }
    }
    app.server.stop().await;
}

/// schemathesis found `GET /customers?cursor=%00` answering 500: PostgreSQL's `text` cannot
/// hold a NUL, so binding one failed the query. Every text key that reaches a query (cursors,
/// path keys, the `user_id` filter) is checked first, and such a request is a 400 problem.
#[tokio::test]
async fn a_nul_character_in_a_text_key_is_a_400_problem_not_a_500() {
    let app = App::spawn().await;
    for path in [
        "/customers?cursor=%00",
        "/customers?cursor=a%00b&limit=77",
        "/customers/%00",
        "/skus?cursor=%00",
        "/skus/SKU%001",
        "/orders?user_id=%00",
    ] {
        let (status, content_type, body) = app.get(path, "admin", &["admin"]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        assert_eq!(body["status"], 400, "{path}");
    }
    // The same lookups without the NUL are still answered as before.
    let (status, _, _) = app.get("/customers/alice", "admin", &["admin"]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = app.get("/skus?cursor=SKU-1", "alice", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.server.stop().await;
}
