//! What the workspace's tests share, and the stack's smoke tests.
//!
//! The library gives tests the stack's settings ([`Stack`], read from the same environment
//! variables `infra/stack.sh env` exports, defaulting to the native stack) and isolation:
//! a fresh database per test ([`TempDatabase`]) and a fresh topic per test ([`create_topic`]), so
//! tests run in parallel against one stack.
//!
//! `tests/stack/` proves, from Rust and with the libraries the services use, that each real
//! component works as the project expects (logical WAL in PostgreSQL, no topic auto-creation in
//! Kafka, the Debezium plugin in Connect, the claim-check bucket in MinIO), and checks
//! `docker-compose.yml` statically against `infra/env.sh`, since no Docker engine runs here.

pub mod jaeger;
pub mod process;

pub use jaeger::Jaeger;
pub use process::ServiceProcess;

use std::env;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// Where the stack's components listen, read from the environment (see `infra/env.sh`).
#[derive(Debug, Clone)]
pub struct Stack {
    /// A superuser connection to the `postgres` database, used to create per-test databases.
    pub database_admin_url: String,
    /// Kafka bootstrap servers.
    pub kafka_bootstrap_servers: String,
    /// Kafka Connect REST base URL.
    pub kafka_connect_url: String,
    /// S3 API of MinIO.
    pub s3_endpoint: String,
    /// Bucket created at start for claim-check payloads.
    pub s3_bucket: String,
    /// Region used for request signing (MinIO accepts any; the SDK requires one).
    pub aws_region: String,
    /// MinIO access key.
    pub s3_access_key: String,
    /// MinIO secret key.
    pub s3_secret_key: String,
    /// PostgreSQL port, as the native stack publishes it (Debezium's config needs host and port).
    pub pg_port: u16,
    /// PostgreSQL superuser name.
    pub pg_user: String,
    /// PostgreSQL superuser password.
    pub pg_password: String,
}

fn var(name: &str, default: &str) -> String {
    env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Stack {
    /// Reads the settings, defaulting to the native stack's ports and credentials.
    ///
    /// # Panics
    /// When `PG_PORT` is set to something that is not a port number: a misconfigured run should
    /// stop at once, not test the wrong server.
    pub fn from_env() -> Self {
        let pg_port = var("PG_PORT", "5432");
        let pg_user = var("PG_USER", "eda");
        let pg_password = var("PG_PASSWORD", "eda");
        Self {
            database_admin_url: var(
                "DATABASE_ADMIN_URL",
                &format!("postgres://{pg_user}:{pg_password}@127.0.0.1:{pg_port}/postgres"),
            ),
            kafka_bootstrap_servers: var("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            kafka_connect_url: var("KAFKA_CONNECT_URL", "http://127.0.0.1:8083"),
            s3_endpoint: var("S3_ENDPOINT", "http://127.0.0.1:9000"),
            s3_bucket: var("S3_BUCKET", "eda-claim-checks"),
            aws_region: var("AWS_REGION", "us-east-1"),
            s3_access_key: var("MINIO_ROOT_USER", "minioadmin"),
            s3_secret_key: var("MINIO_ROOT_PASSWORD", "minioadmin"),
            pg_port: pg_port
                .parse()
                .unwrap_or_else(|_| panic!("PG_PORT={pg_port:?} is not a port number")),
            pg_user,
            pg_password,
        }
    }

    /// The admin URL with another database name, for a database a test created.
    pub fn database_url(&self, database: &str) -> String {
        match self.database_admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{database}"),
            None => self.database_admin_url.clone(),
        }
    }
}

/// A database created for one test and dropped (with `FORCE`) when the value is dropped.
#[derive(Debug)]
pub struct TempDatabase {
    admin_url: String,
    /// The database's name.
    pub name: String,
    /// A connection URL for it.
    pub url: String,
}

impl TempDatabase {
    /// Creates an empty database with a unique name.
    ///
    /// # Panics
    /// When PostgreSQL is unreachable: the message says how to start the stack.
    pub async fn create(stack: &Stack) -> Self {
        let name = unique("test");
        let mut admin = PgConnection::connect(&stack.database_admin_url)
            .await
            .expect("connect to PostgreSQL (is the stack up? `make infra-up`)");
        // `name` comes from `unique`: [a-z0-9_] only.
        sqlx::query(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut admin)
            .await
            .expect("create test database");
        Self {
            admin_url: stack.database_admin_url.clone(),
            url: stack.database_url(&name),
            name,
        }
    }

    /// A pool on the database.
    ///
    /// # Panics
    /// When the database cannot be reached.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside or outside a runtime: a short-lived thread and runtime do the work.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&url).await {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A `ClientConfig` with the stack's bootstrap servers.
pub fn kafka_config(stack: &Stack) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &stack.kafka_bootstrap_servers);
    config
}

/// Creates a topic with a unique name (auto-creation is off on the broker) and returns the name.
///
/// # Panics
/// When the broker refuses or is unreachable.
pub async fn create_topic(stack: &Stack, partitions: i32) -> String {
    let topic = unique("test");
    create_topic_named(stack, &topic, partitions).await;
    topic
}

/// Creates `topic` (e.g. the `.dlq` companion of a test topic).
///
/// # Panics
/// When the broker refuses or is unreachable.
pub async fn create_topic_named(stack: &Stack, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        kafka_config(stack).create().expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics request (is Kafka up? `make infra-up`)");
    for result in results {
        result.expect("topic created");
    }
}

/// Reads `topic` from the beginning with a fresh consumer group until `expected` messages
/// arrived, then keeps reading for `settle` to catch duplicates, and returns everything read.
///
/// # Panics
/// When fewer than `expected` messages arrive within `timeout`.
pub async fn consume_all(
    stack: &Stack,
    topic: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = kafka_config(stack)
        .set("group.id", unique("test-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while messages.len() < expected {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => messages.push(message.detach()),
            Ok(Err(err)) => panic!("consuming {topic}: {err}"),
            Err(_) => panic!(
                "only {} of {expected} messages arrived on {topic} within {timeout:?}",
                messages.len()
            ),
        }
    }
    let settle_until = tokio::time::Instant::now() + settle;
    while let Ok(Ok(message)) = tokio::time::timeout_at(settle_until, consumer.recv()).await {
        messages.push(message.detach());
    }
    messages
}

/// Produces one record with string headers, waiting for its delivery.
///
/// # Panics
/// When Kafka does not take it within a minute.
pub async fn produce(
    stack: &Stack,
    topic: &str,
    key: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) {
    let producer: rdkafka::producer::FutureProducer =
        kafka_config(stack).create().expect("producer");
    let headers = headers
        .iter()
        .fold(rdkafka::message::OwnedHeaders::new(), |h, (key, value)| {
            h.insert(rdkafka::message::Header {
                key,
                value: Some(*value),
            })
        });
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(60),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
}

/// The value of header `name` as a string, if present.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

const CONNECT_WAIT: Duration = Duration::from_secs(120);

/// A Debezium outbox connector (the project's `infra/debezium/outbox-connector.json`) registered
/// for one test database, with its own replication slot; `remove` deletes it and drops the slot
/// (which must go before the database can be dropped).
#[derive(Debug)]
pub struct OutboxConnector {
    url: String,
    name: String,
    slot: String,
}

impl OutboxConnector {
    /// Registers the connector for `database` and waits until its task runs.
    ///
    /// # Panics
    /// When Kafka Connect refuses it or it does not start within two minutes.
    pub async fn register(stack: &Stack, database: &str) -> Self {
        let name = unique("outbox").replace('_', "-");
        let slot = unique("slot");
        let template =
            std::fs::read_to_string(workspace_root().join("infra/debezium/outbox-connector.json"))
                .unwrap();
        let rendered = template
            .replace("@CONNECTOR_NAME@", &name)
            .replace("@DATABASE_HOST@", "127.0.0.1")
            .replace("@PG_PORT@", &stack.pg_port.to_string())
            .replace("@PG_USER@", &stack.pg_user)
            .replace("@PG_PASSWORD@", &stack.pg_password)
            .replace("@DATABASE_NAME@", database)
            .replace("@SLOT_NAME@", &slot)
            .replace("@SLOT_DROP_ON_STOP@", "true");
        assert!(
            !rendered.contains('@'),
            "every placeholder of the connector template is filled"
        );
        let config: serde_json::Value = serde_json::from_str(&rendered).unwrap();
        let url = format!("{}/connectors/{name}", stack.kafka_connect_url);
        let response = reqwest::Client::new()
            .put(format!("{url}/config"))
            .json(&config["config"])
            .send()
            .await
            .expect("Kafka Connect REST");
        assert!(
            response.status().is_success(),
            "register: {}",
            response.text().await.unwrap()
        );
        let connector = Self { url, name, slot };
        connector.wait_running().await;
        connector
    }

    async fn wait_running(&self) {
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        loop {
            let status: serde_json::Value = reqwest::get(format!("{}/status", self.url))
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(serde_json::Value::Null);
            let task = &status["tasks"][0];
            if status["connector"]["state"] == "RUNNING" && task["state"] == "RUNNING" {
                return;
            }
            assert!(
                task["state"] != "FAILED",
                "connector {} failed: {}",
                self.name,
                task["trace"]
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "connector {} not running: {status}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Deletes the connector and drops its replication slot.
    ///
    /// # Panics
    /// When the slot stays active for two minutes.
    pub async fn remove(self, pool: &sqlx::PgPool) {
        reqwest::Client::new()
            .delete(&self.url)
            .send()
            .await
            .unwrap();
        // The slot must go before the database can be dropped.
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        loop {
            let active: Option<bool> =
                sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                    .bind(&self.slot)
                    .fetch_optional(pool)
                    .await
                    .unwrap();
            match active {
                None => return,
                Some(false) => {
                    let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
                        .bind(&self.slot)
                        .execute(pool)
                        .await;
                }
                Some(true) => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "slot {} still active",
                self.slot
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Runs `infra/stack.sh` with `args` (e.g. `["down", "kafka"]`), for fault tests that stop
/// and restart a real component.
///
/// # Panics
/// When the script fails; the message carries its output.
pub fn stack_sh(args: &[&str]) {
    let out = std::process::Command::new(workspace_root().join("infra/stack.sh"))
        .args(args)
        .output()
        .expect("run infra/stack.sh");
    assert!(
        out.status.success(),
        "infra/stack.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An application running in the test's runtime until [`Server::stop`]: the tests' way to run
/// a service the same way `main` does (`run_until_stopped(shutdown)`), on a free port.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Runs `run(shutdown)` in the background; `port` is what the application bound.
    ///
    /// # Panics
    /// (In the background task) when the application returns an error.
    pub fn spawn<Fut, E>(
        port: u16,
        run: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    ) -> Self
    where
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Debug,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = run(Box::pin(async move {
            let _ = stopped.await;
        }));
        let handle = tokio::spawn(async move { running.await.expect("the application runs") });
        Self {
            address: format!("http://127.0.0.1:{port}"),
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Graceful stop, waited for at most 30 s.
    ///
    /// # Panics
    /// When the application does not stop in time or panicked.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("stops within 30 s")
                .expect("the application task");
        }
    }
}

/// A name no other test run uses: tests isolate themselves by database, topic, group and key.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The workspace's root directory (where `docker-compose.yml` and `infra/` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_swaps_only_the_database_name() {
        let stack = Stack {
            database_admin_url: "postgres://u:p@h:1/postgres".into(),
            ..Stack::from_env()
        };
        assert_eq!(stack.database_url("x_1"), "postgres://u:p@h:1/x_1");
    }

    #[test]
    fn unique_names_differ_and_keep_the_prefix() {
        let (a, b) = (unique("smoke"), unique("smoke"));
        assert_ne!(a, b);
        assert!(a.starts_with("smoke_"));
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("infra/env.sh").is_file());
    }
}
