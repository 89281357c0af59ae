//! `bench memory`: the peak RSS of a relay process (this binary, `bench relay-process`)
//! draining a large backlog, sampled from /proc while it drains.

use std::process::Stdio;
use std::time::{Duration, Instant};

use eda_outbox::{Relay, RelayConfig};
use eda_stack_admin::Stack;
use rdkafka::consumer::BaseConsumer;
use tokio_util::sync::CancellationToken;

use super::BoxError;
use super::common::{
    bulk_insert, create_topic, delete_topic, drop_database, report, scratch_database, status_kib,
    topic_size,
};

/// Inserts the backlog, starts the relay process, samples its memory until the topic is full.
pub(super) async fn run(stack: &Stack, rows: i64) -> Result<(), BoxError> {
    let (db, pool) = scratch_database(stack).await?;
    let topic = create_topic(stack, 6).await?;
    let t = Instant::now();
    bulk_insert(&pool, &topic, rows, 256).await?;
    let insert_secs = t.elapsed().as_secs_f64();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "relay-process",
            "--database-url",
            &stack.database_url(&db),
        ])
        .env("KAFKA_BOOTSTRAP_SERVERS", &stack.kafka_bootstrap_servers)
        .stdout(Stdio::null())
        // An error while sampling must not leave the relay draining on its own.
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("relay process has no pid")?;
    let started = Instant::now();
    let consumer: BaseConsumer = stack.kafka_config().create()?;
    let mut samples = Vec::new();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = |key: &str| status_kib(&status, key).unwrap_or(0);
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
    delete_topic(stack, &topic).await;
    drop_database(stack, &db, pool).await
}

/// The relay process that `run` starts and watches: drains `database_url`, then idles until
/// killed.
pub(super) async fn relay_process(stack: &Stack, database_url: &str) -> Result<(), BoxError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await?;
    let relay = Relay::new(
        pool,
        stack.kafka_config(),
        RelayConfig {
            batch_size: 2000,
            ..RelayConfig::default()
        },
    )?;
    relay.run(CancellationToken::new()).await;
    Ok(())
}
