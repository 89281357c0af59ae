//! `bench large-rss`: the memory a consumer needs for very large payloads. A few events of
//! 50 MiB are written through the project's path (claim check: uploaded to MinIO, zstd; then
//! chunks: 512 KiB outbox rows) and published by the relay; then a **fresh process**
//! (`bench large-rss-consumer`, this binary) runs the consumer runtime with the claim-check
//! resolver over them and reports its own `VmRSS` before consuming and its peak (`VmHWM`, from
//! `/proc/self/status`) after: nothing the producing side allocated is counted.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eda_claim_check::{ClaimCheck, Policy, S3Settings};
use eda_idempotent_consumer::{Event, Handler, HandlerError};
use eda_stack_admin::Stack;
use sqlx::PgConnection;
use tokio::io::AsyncBufReadExt as _;
use tokio_util::sync::CancellationToken;

use super::BoxError;
use super::common::{report, status_kib, wait_topic_size};
use super::counted::counting_database;
use super::payloads::{
    MIB, Mode, bench_s3, enqueue_large, order_event, order_json, progress, relay, size_label,
    tear_down, topic_and_dlq,
};

/// How long writing, publishing or consuming may take before the benchmark gives up.
const TIMEOUT: Duration = Duration::from_secs(900);

/// What the consumer process reports, one line on stdout: `large-rss key=value ...`.
const MARK: &str = "large-rss";

/// The parent: writes and publishes the events, then runs and reads the consumer process, for
/// claim check and for chunks.
pub(super) async fn run(stack: &Stack, events: usize, megabytes: usize) -> Result<(), BoxError> {
    let bytes = megabytes * MIB;
    let mut out = vec![
        format!(
            "== consumer memory with {events} payloads of {}: consumer runtime in a fresh process, RSS from /proc/self/status ==",
            size_label(bytes)
        ),
        "mode          records   RSS before MiB   peak RSS (VmHWM) MiB   peak - before MiB   per payload   consume s".to_owned(),
    ];
    for mode in [Mode::ClaimCheck, Mode::Chunk] {
        progress(&format!(
            "large-rss: {events} x {}, {}",
            size_label(bytes),
            mode.label()
        ));
        let r = run_mode(stack, mode, events, bytes).await?;
        let (before, peak) = (r.before_kib as f64 / 1024.0, r.peak_kib as f64 / 1024.0);
        out.push(format!(
            "{:<12} {:>8} {:>16.1} {:>22.1} {:>19.1} {:>12.2}x {:>10.1}",
            mode.label(),
            r.records,
            before,
            peak,
            peak - before,
            (peak - before) / (bytes as f64 / MIB as f64),
            r.secs
        ));
    }
    out.push("   (per payload = peak - before, in payload sizes)".to_owned());
    report(&out);
    Ok(())
}

/// What one consumer process measured.
struct Measured {
    records: usize,
    before_kib: u64,
    peak_kib: u64,
    secs: f64,
}

async fn run_mode(
    stack: &Stack,
    mode: Mode,
    events: usize,
    bytes: usize,
) -> Result<Measured, BoxError> {
    let (db, pool) = counting_database(stack).await?;
    let (topic, dlq) = topic_and_dlq(stack, 6, None).await?;
    let s3 = bench_s3();
    let result = async {
        let large = mode.large_payloads(&s3);
        let mut records = 0;
        for i in 0..events {
            let key = uuid::Uuid::now_v7().to_string();
            let event = order_event(&topic, &key, "OrderPlaced", 1, order_json(bytes, i as u64))?;
            records += enqueue_large(&pool, &large, event).await?;
        }
        let stop = CancellationToken::new();
        let relay_task = tokio::spawn(relay(stack, &pool, None)?.run(stop.clone()));
        let published = wait_topic_size(stack, &topic, records as i64, TIMEOUT).await;
        stop.cancel();
        relay_task.await?;
        published?;
        let mut measured = consumer_child(stack, &db, &topic, &s3, events, bytes).await?;
        measured.records = records;
        Ok::<_, BoxError>(measured)
    }
    .await;
    tear_down(stack, [&topic, &dlq], &s3, &db, pool).await?;
    result
}

/// Runs `bench large-rss-consumer` on `topic` and reads its report.
async fn consumer_child(
    stack: &Stack,
    db: &str,
    topic: &str,
    s3: &S3Settings,
    events: usize,
    bytes: usize,
) -> Result<Measured, BoxError> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "large-rss-consumer",
            "--database-url",
            &stack.database_url(db),
            "--topic",
            topic,
            "--events",
            &events.to_string(),
            "--bytes",
            &bytes.to_string(),
        ])
        .env("KAFKA_BOOTSTRAP_SERVERS", &stack.kafka_bootstrap_servers)
        .env("CLAIM_CHECK_PREFIX", &s3.prefix)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or("no stdout from the consumer process")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut report_line = None;
    while let Some(line) = tokio::time::timeout(TIMEOUT, lines.next_line()).await?? {
        if line.starts_with(MARK) {
            report_line = Some(line);
        }
    }
    let status = child.wait().await?;
    let line =
        report_line.ok_or_else(|| format!("the consumer process reported nothing ({status})"))?;
    let value = |key: &str| -> Result<f64, BoxError> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {key} in {line:?}").into())
    };
    Ok(Measured {
        records: 0,
        before_kib: value("before_kib")? as u64,
        peak_kib: value("peak_kib")? as u64,
        secs: value("secs")?,
    })
}

/// Checks each payload's size and counts them (a payload refused goes to the dead-letter topic
/// and the benchmark times out naming how many were handled).
struct Sized {
    bytes: usize,
    seen: AtomicU64,
}

impl Handler for Sized {
    async fn handle(&self, event: &Event, _tx: &mut PgConnection) -> Result<(), HandlerError> {
        // `order_json` makes payloads of at least the size asked, a line and the tail over.
        let len = event.payload.len();
        if len < self.bytes || len > self.bytes + 1024 {
            return Err(HandlerError::Permanent(format!(
                "payload of {len} bytes, {} (+ at most 1 KiB) expected",
                self.bytes
            )));
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The consumer process: the consumer runtime with the claim-check resolver (the
/// environment's store and `CLAIM_CHECK_PREFIX`) until it handled `events` payloads of `bytes`;
/// prints `large-rss before_kib=… peak_kib=… secs=…`.
pub(super) async fn consumer_process(
    stack: &Stack,
    database_url: &str,
    topic: &str,
    events: usize,
    bytes: usize,
) -> Result<(), BoxError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await?;
    let handler = Arc::new(Sized {
        bytes,
        seen: AtomicU64::new(0),
    });
    let resolver = ClaimCheck::new(&S3Settings::from_env(), Policy::default());
    let consumer = super::payloads::consumer(stack, &pool, topic, resolver, Arc::clone(&handler))?;
    let status = || std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let before = status_kib(&status(), "VmRSS:").ok_or("no VmRSS in /proc/self/status")?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(consumer.run(stop.clone()));
    while handler.seen.load(Ordering::Relaxed) < events as u64 {
        if started.elapsed() > TIMEOUT || task.is_finished() {
            stop.cancel();
            task.await??;
            return Err(format!(
                "the consumer handled {} of {events} payloads",
                handler.seen.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    let peak = status_kib(&status(), "VmHWM:").ok_or("no VmHWM in /proc/self/status")?;
    report(&[format!(
        "{MARK} before_kib={before} peak_kib={peak} secs={secs:.2}"
    )]);
    Ok(())
}
