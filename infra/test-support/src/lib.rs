//! What the workspace's tests share, and the stack's smoke tests.
//!
//! The library gives tests the stack's settings ([`Stack`], read from the same environment
//! variables `infra/stack.sh env` exports, defaulting to the native stack) and isolation:
//! a fresh database per test ([`TempDatabase`]) and a fresh topic per test ([`create_topic`]), so
//! tests run in parallel against one stack. What a shipped program needs too lives in
//! non-test crates and is re-exported here: the stack administration in eda-stack-admin (its
//! errors become panics here), the Jaeger query client in eda-jaeger-query ([`jaeger`]).
//!
//! `tests/stack/` proves, from Rust and with the libraries the services use, that each real
//! component works as the project expects (logical WAL in PostgreSQL, no topic auto-creation in
//! Kafka, the Debezium plugin in Connect, the claim-check bucket in MinIO), and checks
//! `docker-compose.yml` statically against `infra/env.sh`, since no Docker engine runs here.

pub mod process;

/// The Jaeger query client (eda-jaeger-query), under the name the tests have always used.
pub use eda_jaeger_query as jaeger;
pub use eda_jaeger_query::Jaeger;
/// The stack's settings and unique names (eda-stack-admin): the same as `pitfall-lab` uses.
pub use eda_stack_admin::{Stack, unique};
pub use process::ServiceProcess;

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};

/// Stops the test with the error and its causes on one line (a panic shows only `Display`).
fn fail(context: &str, error: &dyn std::error::Error) -> ! {
    let mut text = format!("{context}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    panic!("{text}")
}

/// A database created for one test and dropped (with `FORCE`) when the value is dropped.
#[derive(Debug)]
pub struct TempDatabase {
    stack: Stack,
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
        let name = eda_stack_admin::create_database(stack, "test")
            .await
            .unwrap_or_else(|e| fail("create test database", &e));
        Self {
            stack: stack.clone(),
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
        let (stack, name) = (self.stack.clone(), self.name.clone());
        // Drop may run inside or outside a runtime: a short-lived thread and runtime do the work.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let _ = rt.block_on(eda_stack_admin::drop_database(&stack, &name));
        })
        .join();
    }
}

/// A `ClientConfig` with the stack's bootstrap servers.
pub fn kafka_config(stack: &Stack) -> ClientConfig {
    stack.kafka_config()
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
    eda_stack_admin::create_topic(stack, topic, partitions)
        .await
        .unwrap_or_else(|e| fail("create topic", &e));
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
        stack.producer_config().create().expect("producer");
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

/// A Debezium outbox connector (the project's `infra/debezium/outbox-connector.json`) registered
/// for one test database, with its own replication slot; `remove` deletes it and drops the slot
/// (which must go before the database can be dropped).
#[derive(Debug)]
pub struct OutboxConnector(eda_stack_admin::OutboxConnector);

impl OutboxConnector {
    /// Registers the connector for `database` and waits until its task runs.
    ///
    /// # Panics
    /// When Kafka Connect refuses it or it does not start within two minutes.
    pub async fn register(stack: &Stack, database: &str) -> Self {
        eda_stack_admin::OutboxConnector::register(stack, "test", database)
            .await
            .map(Self)
            .unwrap_or_else(|e| fail("register the outbox connector", &e))
    }

    /// Deletes the connector and drops its replication slot.
    ///
    /// # Panics
    /// When the slot stays active for two minutes.
    pub async fn remove(self, pool: &sqlx::PgPool) {
        self.0
            .remove(pool)
            .await
            .unwrap_or_else(|e| fail("remove the outbox connector", &e));
    }
}

/// A Debezium table (CDC) connector (`infra/debezium/cdc-connector.json`) for `tables` of one
/// test database, with its own slot and a unique topic prefix; its topics
/// (`<prefix>.<schema>.<table>`, 6 partitions) and their `.dlq` are created first.
#[derive(Debug)]
pub struct CdcConnector {
    connector: eda_stack_admin::Connector,
    /// The topics of `tables`, in the same order.
    pub topics: Vec<String>,
}

impl CdcConnector {
    /// Creates the topics, registers the connector and waits until its task runs (it then
    /// snapshots the tables' rows and streams their changes).
    ///
    /// # Panics
    /// When a topic cannot be created, Kafka Connect refuses the connector or it does not
    /// start within two minutes.
    pub async fn register(stack: &Stack, database: &str, tables: &[&str]) -> Self {
        let prefix = unique("cdc");
        let mut topics = Vec::new();
        for table in tables {
            let topic = format!("{prefix}.{table}");
            create_topic_named(stack, &topic, 6).await;
            create_topic_named(stack, &format!("{topic}.dlq"), 1).await;
            topics.push(topic);
        }
        let connector =
            eda_stack_admin::Connector::register_cdc(stack, "test", database, tables, &prefix)
                .await
                .unwrap_or_else(|e| fail("register the CDC connector", &e));
        Self { connector, topics }
    }

    /// Deletes the connector and drops its replication slot.
    ///
    /// # Panics
    /// When the slot stays active for two minutes.
    pub async fn remove(self, pool: &sqlx::PgPool) {
        self.connector
            .remove(pool)
            .await
            .unwrap_or_else(|e| fail("remove the CDC connector", &e));
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
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("infra/env.sh").is_file());
    }
}
