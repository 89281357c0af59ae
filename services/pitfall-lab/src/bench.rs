//! Benchmarks behind `make bench`. Each creates its own database and topics on the running
//! stack, prints one result block, and cleans up. Numbers depend on the machine: quote them
//! with its size (the project's reference machine has 2 cores).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use eda_outbox::{OutboxEvent, Relay, RelayConfig, enqueue};
use order_service::configuration::{PublishMode, RelayMode, Settings};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to measure.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Drain a backlog of N outbox rows to Kafka: in-process relay, then Debezium, same data.
    Drain {
        /// Rows in the backlog.
        #[arg(long, default_value_t = 100_000)]
        rows: i64,
        /// Size of each event's JSON payload.
        #[arg(long, default_value_t = 256)]
        payload_bytes: usize,
    },
    /// Commit-to-consumer latency of the in-process relay at a steady rate.
    Latency {
        /// Events per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Duration of the run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// POST /orders throughput and latency, outbox mode vs direct mode. By default without any
    /// tracing subscriber; `--export true` adds telemetry as the services run it (spans exported
    /// to Jaeger, logs at warn), with `--propagation on|off`, one process per setting.
    Http {
        /// Duration of each mode's run.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// `on` or `off` (`PROPAGATION` of the service).
        #[arg(long, default_value = "on")]
        propagation: eda_context::Propagation,
        /// Export spans over OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`, Jaeger in the stack).
        #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
        export: bool,
    },
    /// Peak RSS of a relay process draining a large backlog.
    Memory {
        /// Rows in the backlog.
        #[arg(long, default_value_t = 1_000_000)]
        rows: i64,
    },
    /// Consumer throughput on the same events: dedupe by event id, offsets in the database, none.
    Consumer {
        /// Events in the topic.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
    },
    /// Per-event cost of context propagation in a consumer that emits (extract, spans, inject,
    /// export): `--propagation on` vs `off`, each in its own process since telemetry is set up
    /// once per process. `--export false` runs without any tracing subscriber (the floor).
    Propagation {
        /// Events in the topic.
        #[arg(long, default_value_t = 50_000)]
        events: usize,
        /// `on` or `off` (`PROPAGATION` of the services).
        #[arg(long, default_value = "on")]
        propagation: eda_context::Propagation,
        /// Export spans over OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`, Jaeger in the stack).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        export: bool,
    },
    /// (internal) A relay process for the memory benchmark.
    #[command(hide = true)]
    RelayProcess {
        /// Database to drain.
        #[arg(long)]
        database_url: String,
    },
}

struct Env {
    admin_url: String,
    bootstrap: String,
    connect_url: String,
    pg_port: String,
    pg_user: String,
    pg_password: String,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Env {
    fn read() -> Self {
        let (pg_port, pg_user, pg_password) = (
            var("PG_PORT", "5432"),
            var("PG_USER", "eda"),
            var("PG_PASSWORD", "eda"),
        );
        Self {
            admin_url: var(
                "DATABASE_ADMIN_URL",
                &format!("postgres://{pg_user}:{pg_password}@127.0.0.1:{pg_port}/postgres"),
            ),
            bootstrap: var("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            connect_url: var("KAFKA_CONNECT_URL", "http://127.0.0.1:8083"),
            pg_port,
            pg_user,
            pg_password,
        }
    }

    fn kafka(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    fn database_url(&self, name: &str) -> String {
        let base = self
            .admin_url
            .rsplit_once('/')
            .map_or(self.admin_url.as_str(), |(b, _)| b);
        format!("{base}/{name}")
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A scratch database with the outbox schema, dropped by `drop_database`.
async fn scratch_database(env: &Env) -> Result<(String, PgPool), BoxError> {
    let name = unique("bench");
    let mut admin = PgConnection::connect(&env.admin_url).await?;
    sqlx::query(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&mut admin)
        .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect(&env.database_url(&name))
        .await?;
    eda_outbox::migrate(&pool).await?;
    Ok((name, pool))
}

async fn drop_database(env: &Env, name: &str, pool: PgPool) -> Result<(), BoxError> {
    pool.close().await;
    let mut admin = PgConnection::connect(&env.admin_url).await?;
    sqlx::query(AssertSqlSafe(format!(
        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}

async fn create_topic(env: &Env, partitions: i32) -> Result<String, BoxError> {
    let topic = unique("bench");
    let admin: AdminClient<DefaultClientContext> = env.kafka().create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
    }
    Ok(topic)
}

async fn delete_topic(env: &Env, topic: &str) {
    if let Ok(admin) = env.kafka().create::<AdminClient<DefaultClientContext>>() {
        let _ = admin.delete_topics(&[topic], &AdminOptions::new()).await;
    }
}

/// Messages in a topic: the sum of its partitions' high watermarks (cheap, no consuming).
fn topic_size(consumer: &BaseConsumer, topic: &str) -> Result<i64, BoxError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p as i32, Duration::from_secs(10))?;
        total += high - low;
    }
    Ok(total)
}

async fn wait_topic_size(
    env: &Env,
    topic: &str,
    at_least: i64,
    timeout: Duration,
) -> Result<Instant, BoxError> {
    let consumer: BaseConsumer = env.kafka().create()?;
    let deadline = Instant::now() + timeout;
    loop {
        let size = tokio::task::block_in_place(|| topic_size(&consumer, topic))?;
        if size >= at_least {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("{topic}: {size} of {at_least} messages after {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `rows` outbox rows server-side (generate_series), 1,000 aggregates, in chunks.
async fn bulk_insert(
    pool: &PgPool,
    topic: &str,
    rows: i64,
    payload_bytes: usize,
) -> Result<(), BoxError> {
    let payload = json!({ "pad": "x".repeat(payload_bytes.saturating_sub(10)) }).to_string();
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(100_000);
        sqlx::query(
            "INSERT INTO outbox (event_id, topic, aggregate_type, aggregate_id, event_type, revision, occurred_at, \
             content_type, schema_version, payload) \
             SELECT gen_random_uuid(), $1, 'Order', 'order-' || (g % 1000), 'OrderPlaced', ((g / 1000) + 1)::text, \
             to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'application/json', '1', $2 \
             FROM generate_series($3::bigint, $4::bigint) AS g",
        )
        .bind(topic)
        .bind(&payload)
        .bind(done + 1)
        .bind(done + n)
        .execute(pool)
        .await?;
        done += n;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[allow(clippy::print_stdout)] // results are the program's output
fn report(lines: &[String]) {
    for l in lines {
        println!("{l}");
    }
}

/// Runs one benchmark.
pub async fn run(what: Bench) -> Result<(), BoxError> {
    let env = Env::read();
    match what {
        Bench::Drain {
            rows,
            payload_bytes,
        } => drain(&env, rows, payload_bytes).await,
        Bench::Latency { rate, seconds } => latency(&env, rate, seconds).await,
        Bench::Http {
            seconds,
            concurrency,
            propagation,
            export,
        } => http(&env, seconds, concurrency, propagation, export).await,
        Bench::Memory { rows } => memory(&env, rows).await,
        Bench::Consumer { events } => consumer(&env, events).await,
        Bench::Propagation {
            events,
            propagation: mode,
            export,
        } => propagation(&env, events, mode, export).await,
        Bench::RelayProcess { database_url } => relay_process(&env, &database_url).await,
    }
}

async fn drain(env: &Env, rows: i64, payload_bytes: usize) -> Result<(), BoxError> {
    let mut out = vec![format!(
        "== relay drain: {rows} rows, {payload_bytes}-byte payloads, 6 partitions =="
    )];

    // In-process relay.
    let (db, pool) = scratch_database(env).await?;
    let topic = create_topic(env, 6).await?;
    bulk_insert(&pool, &topic, rows, payload_bytes).await?;
    let relay = Relay::new(
        pool.clone(),
        env.kafka(),
        RelayConfig {
            batch_size: 2000,
            ..RelayConfig::default()
        },
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(relay.run(stop.clone()));
    let done = wait_topic_size(env, &topic, rows, Duration::from_secs(1800)).await?;
    let secs = (done - started).as_secs_f64();
    stop.cancel();
    handle.await?;
    out.push(format!(
        "in-process relay : {:>9.0} rows/s ({secs:.1} s, batch 2000, lz4, acks=all, idempotent)",
        rows as f64 / secs
    ));
    delete_topic(env, &topic).await;
    drop_database(env, &db, pool).await?;

    // Debezium, same rows, same machine.
    let (db, pool) = scratch_database(env).await?;
    let topic = create_topic(env, 6).await?;
    let connector = register_connector(env, &db).await?;
    let warmup = OutboxEvent::json(&topic, "Order", "warmup", "Warmup", 1, &1)?;
    let mut tx = pool.begin().await?;
    enqueue(&mut tx, &warmup).await?;
    tx.commit().await?;
    wait_topic_size(env, &topic, 1, Duration::from_secs(120)).await?;
    let started = Instant::now();
    bulk_insert(&pool, &topic, rows, payload_bytes).await?;
    let inserted = Instant::now();
    let done = wait_topic_size(env, &topic, rows + 1, Duration::from_secs(1800)).await?;
    let secs = (done - inserted).as_secs_f64();
    out.push(format!(
        "debezium         : {:>9.0} rows/s ({secs:.1} s after the insert committed; insert took {:.1} s)",
        rows as f64 / secs,
        (inserted - started).as_secs_f64()
    ));
    remove_connector(env, &connector, &pool).await?;
    delete_topic(env, &topic).await;
    drop_database(env, &db, pool).await?;
    out.push("ceiling          : see kafka-producer-perf-test below (same record size, same producer settings)".to_owned());
    report(&out);
    Ok(())
}

const CONNECTOR_TEMPLATE: &str = include_str!("../../../infra/debezium/outbox-connector.json");

async fn register_connector(env: &Env, database: &str) -> Result<(String, String), BoxError> {
    let name = unique("bench-outbox").replace('_', "-");
    let slot = unique("bench_slot");
    let rendered = CONNECTOR_TEMPLATE
        .replace("@CONNECTOR_NAME@", &name)
        .replace("@DATABASE_HOST@", "127.0.0.1")
        .replace("@PG_PORT@", &env.pg_port)
        .replace("@PG_USER@", &env.pg_user)
        .replace("@PG_PASSWORD@", &env.pg_password)
        .replace("@DATABASE_NAME@", database)
        .replace("@SLOT_NAME@", &slot)
        .replace("@SLOT_DROP_ON_STOP@", "true");
    let config: Value = serde_json::from_str(&rendered)?;
    let url = format!("{}/connectors/{name}", env.connect_url);
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{url}/config"))
        .json(&config["config"])
        .send()
        .await?;
    if !r.status().is_success() {
        return Err(format!("register connector: {}", r.text().await?).into());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status: Value = client
            .get(format!("{url}/status"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or(Value::Null);
        if status["connector"]["state"] == "RUNNING" && status["tasks"][0]["state"] == "RUNNING" {
            return Ok((url, slot));
        }
        if status["tasks"][0]["state"] == "FAILED" || Instant::now() > deadline {
            return Err(format!("connector not running: {status}").into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn remove_connector(
    env: &Env,
    (url, slot): &(String, String),
    pool: &PgPool,
) -> Result<(), BoxError> {
    let _ = env;
    reqwest::Client::new().delete(url).send().await?;
    for _ in 0..200 {
        let active: Option<bool> =
            sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_optional(pool)
                .await?;
        match active {
            None => return Ok(()),
            Some(false) => {
                let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(slot)
                    .execute(pool)
                    .await;
            }
            Some(true) => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("replication slot {slot} still active").into())
}

async fn latency(env: &Env, rate: u64, seconds: u64) -> Result<(), BoxError> {
    let (db, pool) = scratch_database(env).await?;
    let topic = create_topic(env, 6).await?;
    let stop = CancellationToken::new();
    let relay = Relay::new(pool.clone(), env.kafka(), RelayConfig::default());
    let relay_task = tokio::spawn(relay.run(stop.clone()));

    // Assigned partitions, not a group subscription: no join and rebalance delay at the start
    // that would show up as latency of the first events.
    let consumer: StreamConsumer = env
        .kafka()
        .set("group.id", unique("bench"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in 0..6 {
        partitions.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    let total = rate * seconds;
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut warm_tx = Some(warm_tx);
        let mut latencies = Vec::with_capacity(total as usize);
        while (latencies.len() as u64) < total {
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await
            else {
                break;
            };
            if m.key() == Some(b"warmup".as_slice()) {
                if let Some(tx) = warm_tx.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            let occurred = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "occurred-at")
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            });
            if let Some(Ok(at)) = occurred.map(|s| chrono::DateTime::parse_from_rfc3339(&s)) {
                let ms = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1000.0;
                latencies.push(ms);
            }
        }
        latencies
    });

    // Measure the steady state: start writing once one event went all the way through.
    let mut tx = pool.begin().await?;
    enqueue(
        &mut tx,
        &OutboxEvent::json(&topic, "Order", "warmup", "Warmup", 1, &1)?,
    )
    .await?;
    tx.commit().await?;
    tokio::time::timeout(Duration::from_secs(60), warm_rx)
        .await
        .map_err(|_| "warm-up event not consumed")??;

    // Writers: 8 tasks, each committing one event per transaction at rate/8 per second.
    let writers = 8;
    let per_writer = total / writers;
    let interval = Duration::from_secs_f64(writers as f64 / rate as f64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (pool, topic) = (pool.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..per_writer {
                tick.tick().await;
                let e = OutboxEvent::json(
                    &topic,
                    "Order",
                    &format!("o-{w}-{}", i % 50),
                    "OrderPlaced",
                    i as i64 + 1,
                    &json!({"i": i}),
                )
                .expect("event");
                let mut tx = pool.begin().await.expect("begin");
                enqueue(&mut tx, &e).await.expect("enqueue");
                tx.commit().await.expect("commit");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let achieved = (per_writer * writers) as f64 / started.elapsed().as_secs_f64();
    let mut latencies = reader.await?;
    stop.cancel();
    relay_task.await?;
    latencies.sort_by(f64::total_cmp);
    report(&[
        format!(
            "== commit-to-consumer latency, in-process relay (LISTEN/NOTIFY), target {rate} events/s for {seconds} s =="
        ),
        format!(
            "achieved rate    : {achieved:.0} events/s, {} events measured",
            latencies.len()
        ),
        format!(
            "latency (ms)     : p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN)
        ),
    ]);
    delete_topic(env, &topic).await;
    drop_database(env, &db, pool).await
}

async fn http(
    env: &Env,
    seconds: u64,
    concurrency: usize,
    propagation: eda_context::Propagation,
    export: bool,
) -> Result<(), BoxError> {
    let _telemetry = bench_telemetry(export)?;
    let mut out = vec![format!(
        "== POST /orders, {concurrency} concurrent clients, {seconds} s per mode, propagation {propagation}, {} ==",
        if export {
            "spans exported"
        } else {
            "no tracing subscriber"
        }
    )];
    for mode in [PublishMode::Outbox, PublishMode::Direct] {
        let (db, pool) = scratch_database(env).await?;
        let topic = create_topic(env, 6).await?;
        let inventory_topic = create_topic(env, 6).await?;
        let secret = "bench-secret-0123456789abcdef".to_owned();
        let settings = Settings {
            http_host: [127, 0, 0, 1].into(),
            http_port: 0,
            database_url: env.database_url(&db),
            kafka_bootstrap_servers: env.bootstrap.clone(),
            order_events_topic: topic.clone(),
            inventory_events_topic: inventory_topic.clone(),
            consumer_group: unique("bench-order-service"),
            dedupe: eda_idempotent_consumer::Dedupe::EventId,
            jwt_secret: secret.clone(),
            publish_mode: mode,
            relay_mode: RelayMode::InProcess,
            max_body_bytes: 64 * 1024,
            relay_poll_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
            outbox_retention: Duration::from_secs(3600),
            propagation,
        };
        let app = order_service::startup::Application::build(settings).await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let (tx_stop, rx_stop) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx_stop.await;
        }));
        let token =
            order_service::auth::issue_token(&secret, "bench", &[], Duration::from_secs(3600))?;
        let body = Arc::new(
            json!({"customer": {"name": "Bench", "email": "bench@example.com"}, "currency": "EUR",
            "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}, {"sku": "SKU-2", "quantity": 1, "unit_price_cents": 500}]}),
        );
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (client, base, token, body) = (
                client.clone(),
                base.clone(),
                token.clone(),
                Arc::clone(&body),
            );
            workers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match client
                        .post(format!("{base}/orders"))
                        .bearer_auth(&token)
                        .json(&*body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 201 => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut latencies = Vec::new();
        let mut errors = 0;
        for w in futures::future::join_all(workers).await {
            let (l, e) = w?;
            latencies.extend(l);
            errors += e;
        }
        latencies.sort_by(f64::total_cmp);
        out.push(format!(
            "{:<7}: {:>6.0} orders/s  p50 {:.1} ms  p99 {:.1} ms  errors {errors}",
            if mode == PublishMode::Outbox {
                "outbox"
            } else {
                "direct"
            },
            latencies.len() as f64 / seconds as f64,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        ));
        let _ = tx_stop.send(());
        server.await??;
        delete_topic(env, &topic).await;
        delete_topic(env, &inventory_topic).await;
        drop_database(env, &db, pool).await?;
    }
    report(&out);
    Ok(())
}

async fn memory(env: &Env, rows: i64) -> Result<(), BoxError> {
    let (db, pool) = scratch_database(env).await?;
    let topic = create_topic(env, 6).await?;
    let t = Instant::now();
    bulk_insert(&pool, &topic, rows, 256).await?;
    let insert_secs = t.elapsed().as_secs_f64();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "relay-process",
            "--database-url",
            &env.database_url(&db),
        ])
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.bootstrap)
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id().ok_or("relay process has no pid")?;
    let started = Instant::now();
    let consumer: BaseConsumer = env.kafka().create()?;
    let mut samples = Vec::new();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        samples.push((started.elapsed().as_secs_f64(), kb("VmRSS:"), kb("VmHWM:")));
        if tokio::task::block_in_place(|| topic_size(&consumer, &topic))? >= rows {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    child.start_kill()?;
    child.wait().await?;
    let peak = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let quarter = |q: usize| samples.get(samples.len() * q / 4).map_or(0, |s| s.1);
    report(&[
        format!("== relay memory while draining {rows} rows (256-byte payloads) =="),
        format!("backlog insert   : {insert_secs:.1} s"),
        format!(
            "drain            : {secs:.1} s ({:.0} rows/s)",
            rows as f64 / secs
        ),
        format!(
            "relay RSS (MiB)  : at 25% {:.1}, 50% {:.1}, 75% {:.1}; peak (VmHWM) {:.1}",
            quarter(1) as f64 / 1024.0,
            quarter(2) as f64 / 1024.0,
            quarter(3) as f64 / 1024.0,
            peak as f64 / 1024.0
        ),
    ]);
    delete_topic(env, &topic).await;
    drop_database(env, &db, pool).await
}

async fn relay_process(env: &Env, database_url: &str) -> Result<(), BoxError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await?;
    let relay = Relay::new(
        pool,
        env.kafka(),
        RelayConfig {
            batch_size: 2000,
            ..RelayConfig::default()
        },
    );
    relay.run(CancellationToken::new()).await;
    Ok(())
}

/// The benchmark's handler: one counter row per aggregate, `n = n + 1` (not idempotent).
struct Count;

impl eda_idempotent_consumer::Handler for Count {
    async fn handle(
        &self,
        event: &eda_idempotent_consumer::Event,
        tx: &mut PgConnection,
    ) -> Result<(), eda_idempotent_consumer::HandlerError> {
        sqlx::query("INSERT INTO counters (key, n) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET n = counters.n + 1")
            .bind(event.key.as_deref().unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Writes `events` `Counted` events to `topic`: 1,000 aggregates, ~100-byte values, the
/// `event-id`/`event-type` headers plus `extra`. The same events feed every mode of a benchmark.
async fn produce_counted(
    env: &Env,
    topic: &str,
    events: usize,
    extra: &[(&str, String)],
) -> Result<(), BoxError> {
    let producer: rdkafka::producer::FutureProducer = env
        .kafka()
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()?;
    let payload = json!({"pad": "x".repeat(80)}).to_string();
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..events {
        let (key, id) = (
            format!("agg-{}", i % 1000),
            uuid::Uuid::now_v7().to_string(),
        );
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "event-id",
                value: Some(id.as_str()),
            })
            .insert(rdkafka::message::Header {
                key: "event-type",
                value: Some("Counted"),
            });
        let headers = extra.iter().fold(headers, |h, (key, value)| {
            h.insert(rdkafka::message::Header {
                key,
                value: Some(value.as_str()),
            })
        });
        let record = rdkafka::producer::FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        // send_result enqueues now (the record is copied), so the key need not outlive the loop.
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        if pending.len() >= 10_000 {
            while let Some(r) = futures::StreamExt::next(&mut pending).await {
                r?.map_err(|(e, _)| e)?;
            }
        }
    }
    while let Some(r) = futures::StreamExt::next(&mut pending).await {
        r?.map_err(|(e, _)| e)?;
    }

    Ok(())
}

/// A fresh 6-partition topic and its `.dlq` companion (the consumer runtime needs it).
async fn topic_with_dlq(env: &Env) -> Result<(String, String), BoxError> {
    let topic = create_topic(env, 6).await?;
    let dlq = format!("{topic}.dlq");
    let admin: AdminClient<DefaultClientContext> = env.kafka().create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(&dlq, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
    }
    Ok((topic, dlq))
}

/// Runs `consumer` until it has processed `events`, stops it, returns the seconds it took.
async fn consume_all_events<H: eda_idempotent_consumer::Handler>(
    consumer: eda_idempotent_consumer::Consumer<H>,
    events: usize,
) -> Result<f64, BoxError> {
    let metrics = consumer.metrics();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(consumer.run(stop.clone()));
    while metrics.processed() < events as u64 {
        if started.elapsed() > Duration::from_secs(1800) {
            stop.cancel();
            return Err("the consumer did not process every event within 30 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    Ok(secs)
}

/// Counts like [`Count`], and emits one event per event into the outbox with the context
/// headers `propagation` gives (the work a saga step does).
struct CountAndEmit {
    propagation: eda_context::Propagation,
}

impl eda_idempotent_consumer::Handler for CountAndEmit {
    async fn handle(
        &self,
        event: &eda_idempotent_consumer::Event,
        tx: &mut PgConnection,
    ) -> Result<(), eda_idempotent_consumer::HandlerError> {
        Count.handle(event, tx).await?;
        let key = event.key.as_deref().unwrap_or_default();
        let out = OutboxEvent::json("bench.out", "Counter", key, "Counted", 1, &1)
            .and_then(|e| e.with_headers(event.outgoing_context(self.propagation)))
            .map_err(|e| eda_idempotent_consumer::HandlerError::Permanent(e.to_string()))?;
        enqueue(tx, &out)
            .await
            .map_err(|e| eda_idempotent_consumer::HandlerError::Transient(Box::new(e)))
    }
}

/// Telemetry as a service sets it up (spans exported over OTLP) when `export`, else none at all.
/// Logs at warn: the benchmarks measure propagation and spans, not log lines.
fn bench_telemetry(export: bool) -> Result<Option<eda_telemetry::TelemetryGuard>, BoxError> {
    if !export {
        return Ok(None);
    }
    let mut config = eda_telemetry::TelemetryConfig::from_env("pitfall-lab-bench");
    config.log_filter = "warn".to_owned();
    Ok(Some(eda_telemetry::init(config)?))
}

async fn propagation(
    env: &Env,
    events: usize,
    propagation: eda_context::Propagation,
    export: bool,
) -> Result<(), BoxError> {
    use eda_idempotent_consumer::{Consumer, ConsumerConfig};
    let _telemetry = bench_telemetry(export)?;
    let (topic, dlq) = topic_with_dlq(env).await?;
    // What an upstream service writes: a sampled traceparent and the contract's ids.
    let context = [
        (
            "traceparent",
            // Its own trace per run: a fixed id would gather every run into one huge trace.
            format!(
                "00-{}-{}-01",
                uuid::Uuid::new_v4().simple(),
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            ),
        ),
        ("request-id", "bench-request".to_owned()),
        ("correlation-id", "bench-flow".to_owned()),
        ("user-id", "bench-user".to_owned()),
    ];
    produce_counted(env, &topic, events, &context).await?;

    let (db, pool) = scratch_database(env).await?;
    eda_idempotent_consumer::migrate(&pool).await?;
    eda_outbox::migrate(&pool).await?;
    sqlx::query("CREATE TABLE counters (key text PRIMARY KEY, n bigint NOT NULL)")
        .execute(&pool)
        .await?;
    let mut config = ConsumerConfig::new(&env.bootstrap, &unique("bench"), &[&topic]);
    config.propagation = propagation;
    let secs = consume_all_events(
        Consumer::new(pool.clone(), config, CountAndEmit { propagation }),
        events,
    )
    .await?;
    let with_trace: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE traceparent IS NOT NULL")
            .fetch_one(&pool)
            .await?;
    report(&[format!(
        "propagation={propagation:<3} span export={:<3}: {:>6.0} events/s ({events} events, {secs:.1} s; emitted rows with a traceparent: {with_trace})",
        if export { "on" } else { "off" },
        events as f64 / secs,
    )]);
    drop_database(env, &db, pool).await?;
    delete_topic(env, &topic).await;
    delete_topic(env, &dlq).await;
    Ok(())
}

async fn consumer(env: &Env, events: usize) -> Result<(), BoxError> {
    use eda_idempotent_consumer::{Consumer, ConsumerConfig, Dedupe};
    let (topic, dlq) = topic_with_dlq(env).await?;
    produce_counted(env, &topic, events, &[]).await?;

    let mut out = vec![format!(
        "== consumer throughput: {events} events, 6 partitions, one transaction per event =="
    )];
    for (name, dedupe) in [
        ("event-id dedupe", Dedupe::EventId),
        ("offsets in db", Dedupe::Offsets),
        ("no idempotency", Dedupe::Off),
    ] {
        let (db, pool) = scratch_database(env).await?;
        eda_idempotent_consumer::migrate(&pool).await?;
        sqlx::query("CREATE TABLE counters (key text PRIMARY KEY, n bigint NOT NULL)")
            .execute(&pool)
            .await?;
        let mut config = ConsumerConfig::new(&env.bootstrap, &unique("bench"), &[&topic]);
        config.dedupe = dedupe;
        let secs = consume_all_events(Consumer::new(pool.clone(), config, Count), events).await?;
        let mut line = format!(
            "{name:<16}: {:>6.0} events/s ({secs:.1} s), process peak RSS {:.1} MiB",
            events as f64 / secs,
            peak_rss_mib()
        );
        if dedupe == Dedupe::EventId {
            let (rows, bytes): (i64, i64) = sqlx::query_as(
                "SELECT count(*), pg_total_relation_size('processed_events') FROM processed_events",
            )
            .fetch_one(&pool)
            .await?;
            let pruned = eda_idempotent_consumer::prune_processed(&pool, Duration::ZERO).await?;
            sqlx::query("VACUUM FULL processed_events")
                .execute(&pool)
                .await?;
            let after: i64 =
                sqlx::query_scalar("SELECT pg_total_relation_size('processed_events')")
                    .fetch_one(&pool)
                    .await?;
            line.push_str(&format!(
                "; processed_events {rows} rows / {:.1} MiB, after retention (prune {pruned} rows + VACUUM FULL) {:.2} MiB",
                bytes as f64 / 1_048_576.0,
                after as f64 / 1_048_576.0
            ));
        }
        out.push(line);
        drop_database(env, &db, pool).await?;
    }
    report(&out);
    delete_topic(env, &topic).await;
    delete_topic(env, &dlq).await;
    Ok(())
}
